"""Per-key normalization and hashing of Meta ``user_data`` (pure functions).

Meta matches hashed customer information only when it was normalized exactly as its
"Customer Information Parameters" page says before SHA-256 (META_CAPI_REFERENCE.md §3); a
value normalized differently hashes differently and silently never matches. Each
``normalize_*`` function returns the normalized string *before* hashing, or ``None`` when the
value cannot be normalized. `normalize_user_data` applies them to a whole mapping, hashes,
deduplicates and reports every dropped value as a non-fatal `Problem` that never contains the
raw value.

Input length limits (characters of the string as given, checked before any other work, so a
hostile 30 KB value costs one ``len()``). A longer value is dropped, never truncated, because a
truncated email or id would hash to a different person:

====================  =====  ===================================================
key                   limit  why
====================  =====  ===================================================
em                      320  64 local + ``@`` + 255 domain (RFC 5321)
ph                       64  E.164 is 15 digits; room for separators/extension
external_id            1024  opaque ids (UUIDs, CRM keys) are far shorter
other hashed keys       256  names, cities, states, zips, countries, dates, gender
client_user_agent      2048  real user agents stay well under 1 KB
other clear keys       1024  fbc/fbp/ids are under 300 characters
====================  =====  ===================================================

A hashed key's value that is already a SHA-256 hex digest (64 hex characters, any case,
surrounding whitespace allowed) is only lowercased, whatever its length limit.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import functools
import hashlib
import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import phonenumbers
import pycountry

from capi_middleware.errors import Problem

__all__ = [
    "CLEAR_KEYS",
    "FRIENDLY_KEYS",
    "HASHED_KEYS",
    "NormalizedUserData",
    "is_sha256_hex",
    "normalize_city",
    "normalize_country",
    "normalize_date_of_birth",
    "normalize_email",
    "normalize_external_id",
    "normalize_gender",
    "normalize_name",
    "normalize_phone",
    "normalize_state",
    "normalize_user_data",
    "normalize_zip",
    "sha256_hex",
]

HASHED_KEYS: tuple[str, ...] = (
    "em",
    "ph",
    "fn",
    "ln",
    "ge",
    "db",
    "ct",
    "st",
    "zp",
    "country",
    "external_id",
)
CLEAR_KEYS: tuple[str, ...] = (
    "client_ip_address",
    "client_user_agent",
    "fbc",
    "fbp",
    "subscription_id",
    "fb_login_id",
    "lead_id",
    "anon_id",
    "madid",
    "page_id",
    "page_scoped_user_id",
    "ctwa_clid",
    "ig_account_id",
    "ig_sid",
)
FRIENDLY_KEYS: Mapping[str, str] = {
    "email": "em",
    "phone": "ph",
    "first_name": "fn",
    "last_name": "ln",
    "gender": "ge",
    "date_of_birth": "db",
    "city": "ct",
    "state": "st",
    "zip": "zp",
    "zip_code": "zp",
    "postal_code": "zp",
    "country": "country",
    "external_id": "external_id",
}

# Every accepted spelling -> its Meta key.
_KEY_TO_META: dict[str, str] = {
    **{k: k for k in HASHED_KEYS},
    **{k: k for k in CLEAR_KEYS},
    **FRIENDLY_KEYS,
}
_HASHED_SET = frozenset(HASHED_KEYS)

# Clear keys that hold numeric ids Meta documents as numbers (a Lead Ads lead_id, a page id):
# an int is accepted and sent as its decimal string.
_NUMERIC_ID_CLEAR_KEYS = frozenset(
    {
        "subscription_id",
        "fb_login_id",
        "lead_id",
        "page_id",
        "page_scoped_user_id",
        "ig_account_id",
        "ig_sid",
    }
)

# Length limits: see the module docstring.
_MAX_LEN: dict[str, int] = {
    "em": 320,
    "ph": 64,
    "external_id": 1024,
    "client_user_agent": 2048,
}
_MAX_HASHED_DEFAULT = 256
_MAX_CLEAR_DEFAULT = 1024
_SHA256_LEN = 64
_MAX_INT = 10**30  # ints (phones, ZIPs, ids) are accepted up to 30 digits
# An already-hashed value may come padded with whitespace; allow it through the length check.
_HASH_SLACK = _SHA256_LEN + 16

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOT_ASCII_LETTER = re.compile(r"[^a-z]+")
_NOT_DIGIT = re.compile(r"[^0-9]+")
_NOT_ASCII_ALNUM = re.compile(r"[^a-z0-9]+")

# A sane email: one @, a local part without spaces or control characters, a domain of at least
# two dot-separated labels (letters, digits, inner hyphens; at most 63 each) and a top-level
# label that starts with a letter. Not RFC 5322 in full: Meta only needs "looks like an email",
# and a stricter rule would drop real addresses. ASCII (nearly every address) takes the faster
# pattern; labels starting or ending with "-" are refused separately (cheaper than in the regex).
_EMAIL_ASCII = re.compile(r"[\x21-\x3f\x41-\x7e]{1,64}@(?:[a-z0-9-]{1,63}\.)+[a-z][a-z0-9-]{0,62}")
_EMAIL_UNICODE = re.compile(
    r"[^\s@\x00-\x1f\x7f]{1,64}@(?:[^\W_]|-){1,63}(?:\.(?:[^\W_]|-){1,63})*\.[^\W\d_](?:[^\W_]|-){0,62}"
)

# Phone input that is only digits and the separators people type: safe to reduce to digits.
_PLAIN_PHONE = re.compile(r"\+?[0-9 ()./-]+")
# A trailing extension ("ext. 12", "x12", "#12") is not part of the number Meta matches on.
_PHONE_EXTENSION = re.compile(r"\s*(?:ext\.?|extension|x|#)\s*[0-9]{1,7}\s*$", re.IGNORECASE)
_PHONE_MIN_DIGITS = 7
_PHONE_MAX_DIGITS = 15  # E.164

_US_ZIP = re.compile(r"([0-9]{5})(?:[0-9]{4})?")
_MAX_POSTAL_LEN = 16  # longest real postal codes are ~10 characters

_DB_ISO = re.compile(r"([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})(?:[T ][0-9:.+\-Z ]*)?", re.ASCII)
_DB_YMD_SLASH = re.compile(r"([0-9]{4})/([0-9]{1,2})/([0-9]{1,2})")
_DB_COMPACT = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})")
_DB_US = re.compile(r"([0-9]{1,2})[/-]([0-9]{1,2})[/-]([0-9]{4})")
_DB_DOTTED = re.compile(r"([0-9]{1,2})\.([0-9]{1,2})\.([0-9]{4})")
_DB_MIN_YEAR = 1900

_GENDERS = {"f": "f", "m": "m", "female": "f", "male": "m"}


def _pairs(text: str) -> dict[str, str]:
    """``"a=b c=d"`` -> ``{"a": "b", "c": "d"}``: keeps long alias tables compact."""
    return {k: v for k, _, v in (pair.partition("=") for pair in text.split())}


# Country spellings pycountry does not carry (its names are ISO's English short names).
_COUNTRY_ALIASES: dict[str, str] = _pairs(
    "uk=gb england=gb scotland=gb wales=gb northernireland=gb greatbritain=gb britain=gb "
    "usa=us america=us unitedstatesofamerica=us theunitedstates=us unitedstates=us "
    "southkorea=kr korea=kr northkorea=kp russia=ru vietnam=vn czechrepublic=cz holland=nl "
    "thenetherlands=nl turkey=tr ivorycoast=ci macedonia=mk uae=ae burma=mm swaziland=sz "
    "capeverde=cv easttimor=tl vatican=va palestine=ps laos=la syria=sy moldova=md bolivia=bo "
    "venezuela=ve tanzania=tz iran=ir deutschland=de espana=es brasil=br italia=it "
    "nederland=nl schweiz=ch suisse=ch osterreich=at polska=pl sverige=se norge=no danmark=dk "
    "suomi=fi belgie=be belgique=be "
)

# US/Canada state spellings pycountry lacks.
_STATE_ALIASES: dict[str, dict[str, str]] = {
    "US": {"washingtondc": "dc", "dc": "dc", "usvirginislands": "vi", "virginislands": "vi"},
    "CA": {"newfoundland": "nl", "labrador": "nl", "pei": "pe", "yukonterritory": "yt"},
}


class _Reject(Exception):
    """Internal: a value cannot be normalized; ``reason`` never holds the value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- hashing ---------------------------------------------------------------------------------


def sha256_hex(value: str) -> str:
    """Lowercase hex SHA-256 of the UTF-8 bytes of ``value`` (Meta's hashing rule)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def is_sha256_hex(value: str) -> bool:
    """True when ``value`` is exactly 64 hex characters (any case): already hashed."""
    return len(value) == _SHA256_LEN and _HEX64.fullmatch(value) is not None


# -- shared helpers --------------------------------------------------------------------------


def _type_name(value: object) -> str:
    return type(value).__name__


def _text(value: object, limit: int, *, allow_int: bool = False) -> str:
    """Coerce to a stripped string or raise `_Reject`; the length is checked first."""
    if isinstance(value, str):
        if len(value) > limit:
            raise _Reject(f"longer than {limit} characters")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _Reject("not valid Unicode text (unpaired surrogate)") from None
        text = value.strip()
        if not text:
            raise _Reject("empty or whitespace only")
        return text
    if isinstance(value, bool):
        raise _Reject("expected a string, got bool")
    if allow_int and isinstance(value, int):
        if not 0 <= value < _MAX_INT:
            raise _Reject("expected a non-negative number below 10**30")
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        raise _Reject("expected a string, got float NaN")
    raise _Reject(f"expected a string, got {_type_name(value)}")


def _letters(text: str) -> str:
    """Lowercase, letters of any script only (Unicode categories L* and M*, after NFC).

    Meta: "lowercase, no punctuation, no special characters, no white space; UTF-8". NFC keeps
    ``é`` typed as e + U+0301 hashing the same as a precomposed ``é``.
    """
    if text.isascii():
        return _NOT_ASCII_LETTER.sub("", text.lower())
    text = unicodedata.normalize("NFC", text.lower())
    if text.isalpha():
        return text  # "josé", "李": nothing to filter (isalpha implies categories L*)
    category = unicodedata.category
    return "".join(ch for ch in text if category(ch)[0] in "LM")


def _lookup_key(text: str) -> str:
    """ASCII a-z only, accents folded: the key of the country and state tables."""
    if not text.isascii():
        decomposed = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _NOT_ASCII_LETTER.sub("", text.lower())


# -- lookup tables (built once, on first use) --------------------------------------------------


@functools.lru_cache(maxsize=1)
def _country_table() -> dict[str, str]:
    """Alpha-2, alpha-3, ISO names and aliases (as `_lookup_key`) -> lowercase alpha-2."""
    table: dict[str, str] = {}
    for country in pycountry.countries:
        alpha2 = country.alpha_2.lower()
        for attr in ("name", "official_name", "common_name"):
            name = getattr(country, attr, None)
            if name:
                table[_lookup_key(name)] = alpha2
        table[country.alpha_3.lower()] = alpha2
    # Codes last, so no name can shadow a code.
    for country in pycountry.countries:
        table[country.alpha_2.lower()] = country.alpha_2.lower()
    table.update(_COUNTRY_ALIASES)
    return table


@functools.lru_cache(maxsize=4)
def _state_table(country: str) -> dict[str, str]:
    """Subdivision codes and names of one country (``"US"``/``"CA"``) -> lowercase code."""
    table: dict[str, str] = {}
    subdivisions: Any = pycountry.subdivisions  # untyped library
    for sub in subdivisions.get(country_code=country) or ():
        code = sub.code.split("-", 1)[1].lower()
        table[_lookup_key(sub.name)] = code
        table[code] = code
    table.update(_STATE_ALIASES.get(country, {}))
    return table


@functools.lru_cache(maxsize=1)
def _us_ca_state_table() -> dict[str, str]:
    # US and Canadian codes and names do not collide, so one table serves an unknown country.
    return {**_state_table("CA"), **_state_table("US")}


# -- per-key rules ---------------------------------------------------------------------------


# Each rule takes the value and the event's country (lowercase alpha-2, or None when unknown)
# and returns the normalized string, or raises `_Reject` with a reason that holds no value.


def _email(value: object, cc: str | None = None) -> str:
    text = _text(value, _MAX_LEN["em"]).lower()
    if text.isascii():
        ok = _EMAIL_ASCII.fullmatch(text) is not None
    else:
        text = unicodedata.normalize("NFC", text)
        ok = _EMAIL_UNICODE.fullmatch(text) is not None
    if not ok or "@-" in text or ".-" in text or "-." in text or text.endswith("-"):
        raise _Reject("not a valid email address")
    return text


def _phone(value: object, cc: str | None = None) -> str:
    text = _text(value, _MAX_LEN["ph"], allow_int=True)
    plain = _PLAIN_PHONE.fullmatch(text) is not None
    if not plain:
        text = _PHONE_EXTENSION.sub("", text)
        plain = _PLAIN_PHONE.fullmatch(text) is not None
    digits: str | None = None
    if text.startswith("+"):
        # International format: the digits already carry the calling code. "+44 (0)..." keeps a
        # national trunk 0 that must go, and letters need a keypad map: phonenumbers for those.
        if plain and "(0" not in text:
            digits = _NOT_DIGIT.sub("", text)
        else:
            digits = _parse_phone(text, None)
    elif cc is not None:
        digits = _national_phone(text, cc, plain)
    if digits is None:
        # Meta's rule when nothing better is known: digits only, leading zeros dropped (an
        # international "00" prefix goes with them).
        digits = _NOT_DIGIT.sub("", text).lstrip("0")
    if not digits:
        raise _Reject("no digits")
    if len(digits) < _PHONE_MIN_DIGITS:
        raise _Reject(f"too short for a phone number (fewer than {_PHONE_MIN_DIGITS} digits)")
    if len(digits) > _PHONE_MAX_DIGITS:
        raise _Reject(f"too long for a phone number (more than {_PHONE_MAX_DIGITS} digits)")
    return digits


def _national_phone(text: str, cc: str, plain: bool) -> str | None:
    if plain and (cc == "us" or cc == "ca"):
        # North American Numbering Plan: 10 digits with an area code 2-9, optionally after the
        # trunk/calling code 1. This is what libphonenumber does for US/CA, ~20x faster.
        digits = _NOT_DIGIT.sub("", text)
        if len(digits) == 10 and digits[0] in "23456789":
            return "1" + digits
        if len(digits) == 11 and digits[0] == "1" and digits[1] in "23456789":
            return digits
    # libphonenumber adds the calling code, drops a national trunk prefix (UK 07... -> 447...),
    # keeps Italy's leading 0, and recognises a calling code typed without "+".
    return _parse_phone(text, cc.upper())


def _parse_phone(text: str, region: str | None) -> str | None:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None  # parse() does not validate: "123456" in US would become "1123456"
    e164: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164.lstrip("+")


def _name(value: object, cc: str | None = None) -> str:
    if isinstance(value, str) and value.isascii() and value.isalpha() and len(value) <= 64:
        return value.lower()  # the common case ("John"): nothing to strip
    letters = _letters(_text(value, _MAX_HASHED_DEFAULT))
    if not letters:
        raise _Reject("has no letters")
    return letters


def _state(value: object, cc: str | None = None) -> str:
    text = _text(value, _MAX_HASHED_DEFAULT)
    table: dict[str, str] | None = None
    if cc is None:
        table = _us_ca_state_table()
    elif cc == "us" or cc == "ca":
        table = _state_table(cc.upper())
    if table is not None:
        short = len(text) == 2 and text.isascii()
        found = table.get(text.lower() if short else _lookup_key(text))
        if found is not None:
            return found
    letters = _letters(text)
    if not letters:
        raise _Reject("has no letters")
    return letters


def _zip(value: object, cc: str | None = None) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and cc == "us" and value < 10**5:
        # An int cannot hold a leading zero: 2134 was ZIP 02134.
        value = f"{value:05d}"
    text = _text(value, _MAX_HASHED_DEFAULT, allow_int=True)
    compact = _NOT_ASCII_ALNUM.sub("", text.lower())
    if not compact:
        raise _Reject("has no letters or digits")
    if len(compact) > _MAX_POSTAL_LEN:
        raise _Reject(f"longer than {_MAX_POSTAL_LEN} characters for a postal code")
    us = _US_ZIP.fullmatch(compact)
    if cc == "us":
        if us is None:
            raise _Reject("not a US ZIP code (5 digits, or ZIP+4)")
        return us.group(1)  # Meta: US ZIP codes use the first 5 digits only
    if cc is None and us is not None:
        return us.group(1)
    return compact


def _country_code(value: str) -> str | None:
    if len(value) == 2 and value.isascii():
        return _country_table().get(value.lower())  # the common case: an alpha-2 code
    return _country_table().get(_lookup_key(value))


def _country(value: object, cc: str | None = None) -> str:
    code = _country_code(_text(value, _MAX_HASHED_DEFAULT))
    if code is None:
        raise _Reject("not a known country (use ISO 3166-1 alpha-2, e.g. 'us')")
    return code


def _dob(value: object, cc: str | None = None) -> str:
    if isinstance(value, _dt.date):
        day = value.date() if isinstance(value, _dt.datetime) else value
    else:
        day = _parse_dob(_text(value, _MAX_HASHED_DEFAULT, allow_int=True))
    if day.year < _DB_MIN_YEAR:
        raise _Reject(f"year before {_DB_MIN_YEAR}")
    if day > _dt.date.today():
        raise _Reject("date is in the future")
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def _parse_dob(text: str) -> _dt.date:
    match = _DB_ISO.fullmatch(text) or _DB_YMD_SLASH.fullmatch(text) or _DB_COMPACT.fullmatch(text)
    if match is not None:
        year, month, day = (int(g) for g in match.groups())
    elif (match := _DB_US.fullmatch(text)) is not None:
        first, second, year = (int(g) for g in match.groups())
        # US order (M/D/YYYY) when ambiguous; a first number above 12 can only be a day.
        month, day = (second, first) if first > 12 else (first, second)
    elif (match := _DB_DOTTED.fullmatch(text)) is not None:
        # Dotted dates (16.02.1997) are day-first wherever they are written.
        day, month, year = (int(g) for g in match.groups())
    else:
        raise _Reject("not a date (use YYYY-MM-DD, YYYYMMDD or M/D/YYYY)")
    try:
        return _dt.date(year, month, day)
    except ValueError:
        raise _Reject("not a real calendar date") from None


def _gender(value: object, cc: str | None = None) -> str:
    found = _GENDERS.get(_text(value, _MAX_HASHED_DEFAULT).lower())
    if found is None:
        raise _Reject("not a gender Meta accepts (f, m, female, male)")
    return found


def _external_id(value: object, cc: str | None = None, *, lowercase: bool = True) -> str:
    text = _text(value, _MAX_LEN["external_id"], allow_int=True)
    if not text.isprintable() and _CONTROL.search(text) is not None:
        raise _Reject("contains control characters")
    # Lowercased as Meta's Node SDK and the pixel do, so server and browser hashes agree.
    return text.lower() if lowercase else text


_Rule = Callable[[object, "str | None"], str]
_RULES: dict[str, _Rule] = {
    "em": _email,
    "ph": _phone,
    "fn": _name,
    "ln": _name,
    "ge": _gender,
    "db": _dob,
    "ct": _name,
    "st": _state,
    "zp": _zip,
    "country": _country,
    "external_id": _external_id,
}


# -- public per-key functions ------------------------------------------------------------------


def _apply(rule: _Rule, value: object, country: object = None) -> str | None:
    try:
        cc = _country_code(country) if isinstance(country, str) and country else None
        return rule(value, cc)
    except _Reject:
        return None


def normalize_email(value: object) -> str | None:
    """Trim, lowercase; ``None`` unless it looks like an email (``a@b`` does not)."""
    return _apply(_email, value)


def normalize_phone(value: object, country: str | None = None) -> str | None:
    """Digits only with the country calling code (E.164 without ``+``).

    A number written without ``+`` or an international prefix is read as a national number
    of ``country`` (any spelling `normalize_country` accepts) when one is given, so the calling
    code is added and a trunk prefix handled: UK ``07700 900123`` → ``447700900123``. Without a
    country, Meta's rule: digits only, leading zeros dropped. ``None`` when fewer than 7 or
    more than 15 digits remain.
    """
    return _apply(_phone, value, country)


def normalize_name(value: object) -> str | None:
    """First or last name: lowercase, letters of any script only (``Mary-Jane`` → ``maryjane``)."""
    return _apply(_name, value)


def normalize_city(value: object) -> str | None:
    """City: lowercase letters only, no spaces/punctuation/digits (``New York`` → ``newyork``)."""
    return _apply(_name, value)


def normalize_state(value: object, country: str | None = None) -> str | None:
    """US state / Canadian province → 2-letter code lowercase (``N.Y.`` → ``ny``).

    Applies when ``country`` is US, CA or unknown; elsewhere (and for a name not in the
    tables) lowercase letters only.
    """
    return _apply(_state, value, country)


def normalize_zip(value: object, country: str | None = None) -> str | None:
    """Postal code: lowercase, no spaces or dashes; US: the first 5 digits.

    The US rule applies when ``country`` is US, or unknown and the value is 5 or 5+4 digits.
    """
    return _apply(_zip, value, country)


def normalize_country(value: object) -> str | None:
    """ISO 3166-1 alpha-2, lowercase, from a code (alpha-2/alpha-3, any case) or a name."""
    return _apply(_country, value)


def normalize_date_of_birth(value: object) -> str | None:
    """``YYYYMMDD`` from a date, ``YYYY-MM-DD``, ``YYYYMMDD`` or ``M/D/YYYY`` (US order).

    ``None`` for impossible dates, years before 1900 and dates in the future.
    """
    return _apply(_dob, value)


def normalize_gender(value: object) -> str | None:
    """``f`` or ``m`` from ``f``/``m``/``female``/``male`` in any case."""
    return _apply(_gender, value)


def normalize_external_id(value: object) -> str | None:
    """Trimmed and lowercased (ints accepted), ready to hash."""
    return _apply(_external_id, value)


# -- the whole user_data mapping ---------------------------------------------------------------


@dataclass(frozen=True)
class NormalizedUserData:
    """Meta-ready ``user_data`` and what was dropped on the way.

    Parameters:
        data: Meta keys only. Hashed keys map to a list of lowercase SHA-256 hex strings
            (deduplicated, order kept); clear keys map to the stripped string.
        problems: one non-fatal `Problem` per dropped value or unknown key; never holds a
            raw value.
    """

    data: dict[str, Any]
    problems: tuple[Problem, ...]


def _dropped(meta: str, given: str, index: int | None, reason: str) -> Problem:
    where = f"user_data.{meta}" if index is None else f"user_data.{meta}[{index}]"
    note = "" if given == meta else f" (given as '{given}')"
    return Problem(where, f"{reason}{note}; dropped", fatal=False)


def _clear_value(key: str, value: object) -> str:
    if isinstance(value, (list, tuple)):
        raise _Reject("expected a single string, got a list")
    limit = _MAX_LEN.get(key, _MAX_CLEAR_DEFAULT)
    text = _text(value, limit, allow_int=key in _NUMERIC_ID_CLEAR_KEYS)
    if not text.isprintable() and _CONTROL.search(text) is not None:
        raise _Reject("contains control characters")
    return text


def _unknown_key(key: object) -> Problem:
    if not isinstance(key, str):
        return Problem(
            "user_data[?]", f"unknown key of type {_type_name(key)}; dropped", None, False
        )
    shown = key
    if len(key) > 64 or not key.isprintable() or not key.isascii():
        shown = key[:48].encode("ascii", "backslashreplace").decode("ascii") + "..."
    hint = difflib.get_close_matches(key.lower()[:64], _KEY_TO_META, n=1)
    suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
    return Problem(f"user_data.{shown}", f"unknown key, dropped{suggestion}", fatal=False)


# Low-cardinality keys (a few hundred countries, states, cities, ZIPs seen over and over) keep
# their hash in a small memo: one dict look-up instead of normalizing and hashing again. Emails,
# phones, names and dates are personal and unique per visitor: never memoized.
_MEMO_KEYS = frozenset({"ge", "ct", "st", "zp", "country"})
_MEMO_MAX_ENTRIES = 4096
_MEMO_MAX_VALUE_LEN = 64
_memo: dict[tuple[str, str | None, str], str] = {}


def _hash_value(meta: str, rule: _Rule, item: object, cc: str | None) -> str:
    """The lowercase hex SHA-256 to send for one value, or raise `_Reject`."""
    if isinstance(item, str):
        size = len(item)
        if _SHA256_LEN <= size <= _HASH_SLACK:
            stripped = item.strip()
            if len(stripped) == _SHA256_LEN and _HEX64.fullmatch(stripped):
                return stripped.lower()  # already hashed by the caller: never hash twice (§3)
        if size <= _MEMO_MAX_VALUE_LEN and meta in _MEMO_KEYS:
            memo_key = (meta, cc, item)
            digest = _memo.get(memo_key)
            if digest is None:
                digest = hashlib.sha256(rule(item, cc).encode()).hexdigest()
                if len(_memo) >= _MEMO_MAX_ENTRIES:
                    _memo.clear()  # crude but bounded; refills with the common values
                _memo[memo_key] = digest
            return digest
    return hashlib.sha256(rule(item, cc).encode()).hexdigest()


def _add(
    out: dict[str, None],
    meta: str,
    rule: _Rule,
    item: object,
    cc: str | None,
    as_clear: bool,
    given: str,
    index: int | None,
    problems: list[Problem],
) -> None:
    """Normalize one value into ``out`` (an ordered set), or record why it was dropped."""
    try:
        out[
            _external_id(item, lowercase=False) if as_clear else _hash_value(meta, rule, item, cc)
        ] = None
    except _Reject as exc:
        problems.append(_dropped(meta, given, index, exc.reason))
    except Exception:  # a bug of ours must not break the host's request
        problems.append(_dropped(meta, given, index, "could not be normalized"))


def _event_country(raw: object, default_country: str | None) -> str | None:
    """The country that decides how phones, states and ZIPs are read: the event's own first
    readable ``country`` value, else ``default_country``."""
    if raw is not None:
        for candidate in raw if isinstance(raw, (list, tuple)) else (raw,):
            if isinstance(candidate, str) and len(candidate) <= _MAX_HASHED_DEFAULT:
                code = _country_code(candidate.strip())
                if code is not None:
                    return code
    if isinstance(default_country, str) and default_country:
        return _country_code(default_country.strip())
    return None


def normalize_user_data(
    user_data: Mapping[str, Any],
    *,
    default_country: str | None = None,
    hash_external_id: bool = True,
) -> NormalizedUserData:
    """Normalize and hash a ``user_data`` mapping for Meta; never raises on bad values.

    Keys may be Meta's (``em``, ``ph``, ...), friendly names (``email``, ``phone``,
    ``first_name``, ``zip_code``, ...; see `FRIENDLY_KEYS`) or clear keys (``fbc``,
    ``client_ip_address``, ...). A hashed key's value may be one value or a list/tuple of
    them; ``None`` means absent and is skipped silently. The mapping's own ``country`` (else
    ``default_country``) is the country used to complete phone numbers and to read states and
    ZIP codes. With ``hash_external_id=False`` external ids are sent trimmed, unhashed.
    """
    problems: list[Problem] = []
    try:
        items = list(user_data.items())
        cc = _event_country(user_data.get("country"), default_country)
    except Exception:  # a broken Mapping: report, never raise into the request
        unreadable = Problem("user_data", "not a readable mapping", fatal=False)
        return NormalizedUserData({}, (unreadable,))

    hashed: dict[str, dict[str, None]] = {}  # Meta key -> ordered set of values to send
    clear: dict[str, str] = {}
    for given, value in items:
        meta = _KEY_TO_META.get(given)
        if meta is None and isinstance(given, str) and len(given) <= 64:
            meta = _KEY_TO_META.get(given.strip().lower())
        if meta is None:
            problems.append(_unknown_key(given))
            continue
        if value is None:
            continue
        rule = _RULES.get(meta)
        if rule is None:  # a clear key: sent as given, never hashed
            try:
                clear[meta] = _clear_value(meta, value)
            except _Reject as exc:
                problems.append(_dropped(meta, given, None, exc.reason))
            continue
        out = hashed.get(meta)
        if out is None:
            out = hashed[meta] = {}
        as_clear = meta == "external_id" and not hash_external_id
        if isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                if item is not None:
                    _add(out, meta, rule, item, cc, as_clear, given, index, problems)
        else:
            _add(out, meta, rule, value, cc, as_clear, given, None, problems)
    data: dict[str, Any] = {key: list(values) for key, values in hashed.items() if values}
    data.update(clear)
    return NormalizedUserData(data, tuple(problems))
