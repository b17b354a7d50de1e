"""Per-key normalization and hashing of Meta ``user_data`` (pure functions).

Meta matches hashed customer information only when it was normalized exactly as its
"Customer Information Parameters" page says before SHA-256 (META_CAPI_REFERENCE.md §3); a
value normalized differently hashes differently and silently never matches. Each
``normalize_*`` function returns the normalized string *before* hashing, or ``None`` when the
value cannot be normalized. `normalize_user_data` applies them to a whole mapping, hashes,
deduplicates and reports every dropped value as a `DroppedValue` (a non-fatal `Problem`) that
names its Meta key and one reason from `DROP_REASONS`, and never contains the raw value.
Three parts live in ``capi_middleware.rules``: ``countries`` (country and state names to codes),
``phones`` (calling codes) and ``drops`` (the reasons and `DroppedValue`).

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
import hashlib
import logging
import math
import re
import threading
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from capi_middleware.errors import Problem, unknown_key_field
from capi_middleware.rules.countries import country_code, state_code
from capi_middleware.rules.drops import (
    CONTROL_CHARACTERS,
    DATE_OUT_OF_RANGE,
    DROP_REASONS,
    EMPTY,
    INTERNAL_ERROR,
    NO_COUNTRY_CODE,
    NO_LETTERS,
    NOT_A_DATE,
    NOT_A_US_ZIP,
    NOT_AN_EMAIL,
    NOT_TEXT,
    TOO_LONG,
    TOO_SHORT,
    UNKNOWN_COUNTRY,
    UNKNOWN_GENDER,
    DroppedValue,
    Reject,
)
from capi_middleware.rules.phones import phone_digits

_logger = logging.getLogger("capi_middleware")

__all__ = [
    "CLEAR_KEYS",
    "DROP_REASONS",
    "FRIENDLY_KEYS",
    "HASHED_KEYS",
    "DroppedValue",
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
_NOT_ASCII_ALNUM = re.compile(r"[^a-z0-9]+")
# An emoji keycap: a digit, # or * with an optional variation selector and U+20E3.
_KEYCAP = re.compile("[0-9#*]\ufe0f?\u20e3")
# Marks by category (Mn), yet never part of a letter: they pick a glyph's presentation
# (U+FE0F turns ❤ into an emoji).
_VARIATION_SELECTORS = frozenset(
    [chr(c) for c in range(0xFE00, 0xFE10)] + [chr(c) for c in range(0xE0100, 0xE01F0)]
)

# A sane email: one @, a local part without spaces or control characters, a domain of at least
# two dot-separated labels (letters, digits, inner hyphens; at most 63 each) and a top-level
# label that starts with a letter. Not RFC 5322 in full: Meta only needs "looks like an email",
# and a stricter rule would drop real addresses. ASCII (nearly every address) takes the faster
# pattern; labels starting or ending with "-" are refused separately (cheaper than in the regex).
_EMAIL_ASCII = re.compile(r"[\x21-\x3f\x41-\x7e]{1,64}@(?:[a-z0-9-]{1,63}\.)+[a-z][a-z0-9-]{0,62}")
_EMAIL_UNICODE = re.compile(
    r"[^\s@\x00-\x1f\x7f]{1,64}@(?:[^\W_]|-){1,63}(?:\.(?:[^\W_]|-){1,63})*\.[^\W\d_](?:[^\W_]|-){0,62}"
)

_US_ZIP = re.compile(r"([0-9]{5})(?:[0-9]{4})?")
_MAX_POSTAL_LEN = 16  # longest real postal codes are ~10 characters
_MIN_POSTAL_LEN = 2  # §3: fewer characters after normalization is no postal code

_DB_ISO = re.compile(r"([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})(?:[T ][0-9:.+\-Z ]*)?", re.ASCII)
_DB_YMD_SLASH = re.compile(r"([0-9]{4})/([0-9]{1,2})/([0-9]{1,2})")
_DB_COMPACT = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})")
_DB_US = re.compile(r"([0-9]{1,2})[/-]([0-9]{1,2})[/-]([0-9]{4})")
_DB_DOTTED = re.compile(r"([0-9]{1,2})\.([0-9]{1,2})\.([0-9]{4})")
_DB_MIN_YEAR = 1900

_GENDERS = {"f": "f", "m": "m", "female": "f", "male": "m"}


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
    """Coerce to a stripped string or raise `Reject`; the length is checked first."""
    if isinstance(value, str):
        if len(value) > limit:
            raise Reject(TOO_LONG, f"longer than {limit} characters")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise Reject(NOT_TEXT, "not valid Unicode text (unpaired surrogate)") from None
        text = value.strip()
        if not text:
            raise Reject(EMPTY, "empty or whitespace only")
        return text
    if isinstance(value, bool):
        raise Reject(NOT_TEXT, "expected a string, got bool")
    if allow_int and isinstance(value, int):
        if not 0 <= value < _MAX_INT:
            raise Reject(NOT_TEXT, "expected a non-negative number below 10**30")
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        raise Reject(NOT_TEXT, "expected a string, got float NaN")
    raise Reject(NOT_TEXT, f"expected a string, got {_type_name(value)}")


def _letters(text: str, digits: bool = False) -> str:
    """Lowercase letters of any script (Unicode L*, with their marks M*), after NFC; with
    ``digits``, decimal digits (Nd) too.

    Meta: "lowercase, no punctuation, no special characters, no white space; UTF-8". NFC keeps
    ``é`` typed as e + U+0301 hashing the same as a precomposed ``é``. Emoji go whole (§3): a
    mark is kept only after a kept letter or digit, so the variation selector that follows ❤
    goes with it, and a keycap (1 + U+FE0F + U+20E3) takes its digit along.
    """
    if text.isascii():
        return (_NOT_ASCII_ALNUM if digits else _NOT_ASCII_LETTER).sub("", text.lower())
    text = unicodedata.normalize("NFC", text.lower())
    if text.isalpha():
        return text  # "josé", "李": nothing to filter (isalpha implies categories L*)
    if "\u20e3" in text:
        text = _KEYCAP.sub("", text)
    category = unicodedata.category
    kept: list[str] = []
    after_kept = False  # whether the last base character was kept: its marks go with it
    for ch in text:
        group = category(ch)
        if group[0] == "M":
            if after_kept and ch not in _VARIATION_SELECTORS:
                kept.append(ch)
        elif group[0] == "L" or (digits and group == "Nd"):
            kept.append(ch)
            after_kept = True
        else:
            after_kept = False
    return "".join(kept)


# -- per-key rules ---------------------------------------------------------------------------


# Each rule takes the value and the event's country (lowercase alpha-2, or None when unknown)
# and returns the normalized string, or raises `Reject` with a reason that holds no value.


def _email(value: object, cc: str | None = None) -> str:
    text = _text(value, _MAX_LEN["em"]).lower()
    if text.isascii():
        ok = _EMAIL_ASCII.fullmatch(text) is not None
    else:
        text = unicodedata.normalize("NFC", text)
        ok = _EMAIL_UNICODE.fullmatch(text) is not None
    if not ok or "@-" in text or ".-" in text or "-." in text or text.endswith("-"):
        raise Reject(NOT_AN_EMAIL, "not a valid email address")
    return text


def _phone(value: object, cc: str | None = None) -> str:
    return phone_digits(_text(value, _MAX_LEN["ph"], allow_int=True), cc)


def _name(value: object, cc: str | None = None) -> str:
    """fn, ln: letters and digits (§3: ``John2`` is ``john2``; only the city drops digits)."""
    if isinstance(value, str) and value.isascii() and value.isalnum() and len(value) <= 64:
        return value.lower()  # the common case ("John"): nothing to strip
    kept = _letters(_text(value, _MAX_HASHED_DEFAULT), digits=True)
    if not kept:
        raise Reject(NO_LETTERS, "has no letters or digits")
    return kept


def _city(value: object, cc: str | None = None) -> str:
    if isinstance(value, str) and value.isascii() and value.isalpha() and len(value) <= 64:
        return value.lower()  # the common case ("Paris"): nothing to strip
    letters = _letters(_text(value, _MAX_HASHED_DEFAULT))
    if not letters:
        raise Reject(NO_LETTERS, "has no letters")
    return letters


def _state(value: object, cc: str | None = None) -> str:
    text = _text(value, _MAX_HASHED_DEFAULT)
    found = state_code(text, cc)
    if found is not None:
        return found
    letters = _letters(text)
    if not letters:
        raise Reject(NO_LETTERS, "has no letters")
    return letters


def _zip(value: object, cc: str | None = None) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and cc == "us" and value < 10**5:
        # An int cannot hold a leading zero: 2134 was ZIP 02134.
        value = f"{value:05d}"
    text = _text(value, _MAX_HASHED_DEFAULT, allow_int=True)
    compact = _NOT_ASCII_ALNUM.sub("", text.lower())
    if not compact:
        raise Reject(EMPTY, "has no letters or digits")
    if len(compact) > _MAX_POSTAL_LEN:
        raise Reject(TOO_LONG, f"longer than {_MAX_POSTAL_LEN} characters for a postal code")
    if len(compact) < _MIN_POSTAL_LEN:
        raise Reject(TOO_SHORT, f"shorter than {_MIN_POSTAL_LEN} characters: not a postal code")
    us = _US_ZIP.fullmatch(compact)
    if cc == "us":
        if us is None:
            raise Reject(NOT_A_US_ZIP, "not a US ZIP code (5 digits, or ZIP+4)")
        return us.group(1)  # Meta: US ZIP codes use the first 5 digits only
    if cc is None and us is not None:
        return us.group(1)
    return compact


def _country(value: object, cc: str | None = None) -> str:
    code = country_code(_text(value, _MAX_HASHED_DEFAULT))
    if code is None:
        raise Reject(UNKNOWN_COUNTRY, "not a known country (use ISO 3166-1 alpha-2, e.g. 'us')")
    return code


def _dob(value: object, cc: str | None = None) -> str:
    if isinstance(value, _dt.date):
        day = value.date() if isinstance(value, _dt.datetime) else value
    else:
        day = _parse_dob(_text(value, _MAX_HASHED_DEFAULT, allow_int=True))
    if day.year < _DB_MIN_YEAR:
        raise Reject(DATE_OUT_OF_RANGE, f"year before {_DB_MIN_YEAR}")
    if day > _dt.date.today():
        raise Reject(DATE_OUT_OF_RANGE, "date is in the future")
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
        raise Reject(NOT_A_DATE, "not a date (use YYYY-MM-DD, YYYYMMDD or M/D/YYYY)")
    try:
        return _dt.date(year, month, day)
    except ValueError:
        raise Reject(NOT_A_DATE, "not a real calendar date") from None


def _gender(value: object, cc: str | None = None) -> str:
    found = _GENDERS.get(_text(value, _MAX_HASHED_DEFAULT).lower())
    if found is None:
        raise Reject(UNKNOWN_GENDER, "not a gender Meta accepts (f, m, female, male)")
    return found


def _external_id(value: object, cc: str | None = None, *, lowercase: bool = True) -> str:
    text = _text(value, _MAX_LEN["external_id"], allow_int=True)
    if not text.isprintable() and _CONTROL.search(text) is not None:
        raise Reject(CONTROL_CHARACTERS, "contains control characters")
    if not lowercase:
        return text  # sent in clear (hash_external_id=False): trimmed only
    # Lowercased and without any whitespace inside, as the pixel and Meta's builders do
    # ("user 123 id" -> "user123id", §3), so server and browser hashes agree.
    if " " in text or not text.isprintable():
        text = "".join(text.split())
    return text.lower()


_Rule = Callable[[object, "str | None"], str]
_RULES: dict[str, _Rule] = {
    "em": _email,
    "ph": _phone,
    "fn": _name,
    "ln": _name,
    "ge": _gender,
    "db": _dob,
    "ct": _city,
    "st": _state,
    "zp": _zip,
    "country": _country,
    "external_id": _external_id,
}


# -- public per-key functions ------------------------------------------------------------------


def _apply(rule: _Rule, value: object, country: object = None) -> str | None:
    try:
        cc = country_code(country) if isinstance(country, str) and country else None
        return rule(value, cc)
    except Reject:
        return None


def normalize_email(value: object) -> str | None:
    """Trim, lowercase; ``None`` unless it looks like an email (``a@b`` does not)."""
    return _apply(_email, value)


def normalize_phone(value: object, country: str | None = None) -> str | None:
    """Digits only with the country calling code (E.164 without ``+``).

    ``+`` followed by zeros is an international call prefix: ``+0044 20 7946 0958`` →
    ``442079460958``. A number written without ``+`` or an international prefix is read as a
    national number of ``country`` (any spelling `normalize_country` accepts) when one is
    given, so the calling code is added and a trunk prefix handled: UK ``07700 900123`` →
    ``447700900123``. Without a country such a number keeps its digits only when they read as
    a valid number with a calling code (``16169547888``); a national one (``(616) 954-7888``,
    ``07700 900123``) is ``None``: it cannot match. ``None`` too when fewer than 7 or more than
    15 digits remain.
    """
    return _apply(_phone, value, country)


def normalize_name(value: object) -> str | None:
    """First or last name: lowercase letters of any script and digits; no spaces, punctuation
    or emoji (``Mary-Jane`` → ``maryjane``, ``John2`` → ``john2``)."""
    return _apply(_name, value)


def normalize_city(value: object) -> str | None:
    """City: lowercase letters only, no spaces/punctuation/digits/emoji (``New York`` →
    ``newyork``)."""
    return _apply(_city, value)


def normalize_state(value: object, country: str | None = None) -> str | None:
    """US state / Canadian province → 2-letter code lowercase (``N.Y.`` → ``ny``).

    Applies when ``country`` is US, CA or unknown; elsewhere (and for a name not in the
    tables) lowercase letters only.
    """
    return _apply(_state, value, country)


def normalize_zip(value: object, country: str | None = None) -> str | None:
    """Postal code: lowercase, no spaces or dashes; US: the first 5 digits. ``None`` when
    fewer than 2 characters remain.

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
    """Lowercased, without any whitespace (``user 123 id`` → ``user123id``; ints accepted),
    ready to hash."""
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


def _dropped(meta: str, given: str, index: int | None, reject: Reject) -> DroppedValue:
    where = f"user_data.{meta}" if index is None else f"user_data.{meta}[{index}]"
    note = "" if given == meta else f" (given as '{given}')"
    return DroppedValue(where, f"{reject.detail}{note}; dropped", None, False, meta, reject.reason)


def _clear_value(key: str, value: object) -> str:
    if isinstance(value, (list, tuple)):
        raise Reject(NOT_TEXT, "expected a single string, got a list")
    limit = _MAX_LEN.get(key, _MAX_CLEAR_DEFAULT)
    text = _text(value, limit, allow_int=key in _NUMERIC_ID_CLEAR_KEYS)
    if not text.isprintable() and _CONTROL.search(text) is not None:
        raise Reject(CONTROL_CHARACTERS, "contains control characters")
    return text


def _unknown_key(key: object) -> Problem:
    # Described by its shape, never its text, unless a near miss of our names (issue 10).
    field, what, hint = unknown_key_field("user_data", key, _KEY_TO_META)
    return Problem(field, f"{what}, dropped; {hint}" if hint else f"{what}, dropped", fatal=False)


# Low-cardinality keys (a few hundred countries, states, cities, ZIPs seen over and over) keep
# their hash in a small memo: one dict look-up instead of normalizing and hashing again. Emails,
# phones, names and dates are personal and unique per visitor: never memoized.
_MEMO_KEYS = frozenset({"ge", "ct", "st", "zp", "country"})
_MEMO_MAX_ENTRIES = 4096
_MEMO_MAX_VALUE_LEN = 64
_memo: dict[tuple[str, str | None, str], str] = {}


def _hash_value(meta: str, rule: _Rule, item: object, cc: str | None) -> str:
    """The lowercase hex SHA-256 to send for one value, or raise `Reject`."""
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
    except Reject as exc:
        problems.append(_dropped(meta, given, index, exc))
    except Exception:  # a bug of ours must not break the host's request
        reject = Reject(INTERNAL_ERROR, "could not be normalized")
        problems.append(_dropped(meta, given, index, reject))


def _event_country(raw: object, default_country: str | None) -> str | None:
    """The country that decides how phones, states and ZIPs are read: the event's own first
    readable ``country`` value, else ``default_country``."""
    if raw is not None:
        for candidate in raw if isinstance(raw, (list, tuple)) else (raw,):
            if isinstance(candidate, str) and len(candidate) <= _MAX_HASHED_DEFAULT:
                code = country_code(candidate.strip())
                if code is not None:
                    return code
    if isinstance(default_country, str) and default_country:
        return country_code(default_country.strip())
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
            except Reject as exc:
                problems.append(_dropped(meta, given, None, exc))
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
    if (
        problems
        and default_country is None
        and not _no_country_code_logged
        and any(getattr(p, "reason", None) == NO_COUNTRY_CODE for p in problems)
    ):
        _log_no_country_code_once()
    return NormalizedUserData(data, tuple(problems))


_no_country_code_logged = False
_no_country_code_lock = threading.Lock()


def _log_no_country_code_once() -> None:
    """One warning per process: without default_country, every national number is lost."""
    global _no_country_code_logged
    with _no_country_code_lock:
        if _no_country_code_logged:
            return
        _no_country_code_logged = True
    _logger.warning(
        "capi_middleware: a phone number without a country code was dropped (it cannot match); "
        "set default_country, or pass the event's country, so national numbers are completed. "
        "Logged once per process."
    )
