"""Per-key normalization of Meta ``user_data`` values before hashing (pure functions).

Meta matches hashed customer information only when it was normalized exactly as its
"Customer Information Parameters" page says before SHA-256 (META_CAPI_REFERENCE.md §3); a
value normalized differently hashes differently and silently never matches. Each
``normalize_*`` function returns the normalized string *before* hashing, or ``None`` when the
value cannot be normalized; `capi_middleware.normalize` re-exports them as public API and
applies the rules (`HASHED_RULES`, `clear_value`) to a whole mapping.

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
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import re
import unicodedata
from collections.abc import Callable

from capi_middleware.rules.countries import country_code, state_code
from capi_middleware.rules.drops import (
    CONTROL_CHARACTERS,
    DATE_OUT_OF_RANGE,
    EMPTY,
    NO_LETTERS,
    NOT_A_DATE,
    NOT_A_US_ZIP,
    NOT_AN_EMAIL,
    NOT_TEXT,
    TOO_LONG,
    TOO_SHORT,
    UNKNOWN_COUNTRY,
    UNKNOWN_GENDER,
    Reject,
)
from capi_middleware.rules.phones import phone_digits

__all__ = [
    "HASHED_RULES",
    "HEX64",
    "MAX_HASHED_DEFAULT",
    "SHA256_LEN",
    "Rule",
    "clear_value",
    "external_id_rule",
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
    "normalize_zip",
    "sha256_hex",
]

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
MAX_HASHED_DEFAULT = 256
_MAX_CLEAR_DEFAULT = 1024
SHA256_LEN = 64
_MAX_INT = 10**30  # ints (phones, ZIPs, ids) are accepted up to 30 digits

HEX64 = re.compile(r"[0-9a-fA-F]{64}")
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
    return len(value) == SHA256_LEN and HEX64.fullmatch(value) is not None


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
    kept = _letters(_text(value, MAX_HASHED_DEFAULT), digits=True)
    if not kept:
        raise Reject(NO_LETTERS, "has no letters or digits")
    return kept


def _city(value: object, cc: str | None = None) -> str:
    if isinstance(value, str) and value.isascii() and value.isalpha() and len(value) <= 64:
        return value.lower()  # the common case ("Paris"): nothing to strip
    letters = _letters(_text(value, MAX_HASHED_DEFAULT))
    if not letters:
        raise Reject(NO_LETTERS, "has no letters")
    return letters


def _state(value: object, cc: str | None = None) -> str:
    text = _text(value, MAX_HASHED_DEFAULT)
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
    text = _text(value, MAX_HASHED_DEFAULT, allow_int=True)
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
    code = country_code(_text(value, MAX_HASHED_DEFAULT))
    if code is None:
        raise Reject(UNKNOWN_COUNTRY, "not a known country (use ISO 3166-1 alpha-2, e.g. 'us')")
    return code


def _dob(value: object, cc: str | None = None) -> str:
    if isinstance(value, _dt.date):
        day = value.date() if isinstance(value, _dt.datetime) else value
    else:
        day = _parse_dob(_text(value, MAX_HASHED_DEFAULT, allow_int=True))
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
    found = _GENDERS.get(_text(value, MAX_HASHED_DEFAULT).lower())
    if found is None:
        raise Reject(UNKNOWN_GENDER, "not a gender Meta accepts (f, m, female, male)")
    return found


def external_id_rule(value: object, cc: str | None = None, *, lowercase: bool = True) -> str:
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


def clear_value(key: str, value: object) -> str:
    """A clear key's value as sent (never hashed): one stripped string within the key's
    length limit and without control characters; an int only for the numeric-id keys."""
    if isinstance(value, (list, tuple)):
        raise Reject(NOT_TEXT, "expected a single string, got a list")
    limit = _MAX_LEN.get(key, _MAX_CLEAR_DEFAULT)
    text = _text(value, limit, allow_int=key in _NUMERIC_ID_CLEAR_KEYS)
    if not text.isprintable() and _CONTROL.search(text) is not None:
        raise Reject(CONTROL_CHARACTERS, "contains control characters")
    return text


Rule = Callable[[object, "str | None"], str]
# A hashed Meta key -> its rule; a key not here is a clear key (`clear_value`).
HASHED_RULES: dict[str, Rule] = {
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
    "external_id": external_id_rule,
}


# -- public per-key functions ------------------------------------------------------------------


def _apply(rule: Rule, value: object, country: object = None) -> str | None:
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
    return _apply(external_id_rule, value)
