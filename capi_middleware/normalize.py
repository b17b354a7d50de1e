"""Normalize and hash a whole Meta ``user_data`` mapping; the public normalizers (pure).

`normalize_user_data` applies the per-key rules of `capi_middleware.rules.user_fields`
(META_CAPI_REFERENCE.md §3) to a whole mapping, hashes, deduplicates and reports every dropped
value as a `DroppedValue` (a non-fatal `Problem`) that names its Meta key and one reason from
`DROP_REASONS`, and never contains the raw value. It is also the public module of the per-key
``normalize_*`` functions (a shop hashing a CRM list uses them), the key tables and the SHA-256
helpers, re-exported from their homes in ``capi_middleware.rules``: ``user_fields`` (the
per-key rules), ``user_keys`` (the keys and their spellings), ``countries`` (country and state
names to codes), ``phones`` (calling codes) and ``drops`` (the reasons and `DroppedValue`).

A hashed key's value that is already a SHA-256 hex digest (64 hex characters, any case,
surrounding whitespace allowed) is only lowercased, whatever its length limit.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from capi_middleware.errors import Problem, unknown_key_field
from capi_middleware.rules.countries import country_code
from capi_middleware.rules.drops import (
    DROP_REASONS,
    INTERNAL_ERROR,
    NO_COUNTRY_CODE,
    DroppedValue,
    Reject,
)
from capi_middleware.rules.user_fields import (
    HASHED_RULES,
    HEX64,
    MAX_HASHED_DEFAULT,
    SHA256_LEN,
    Rule,
    clear_value,
    external_id_rule,
    is_sha256_hex,
    normalize_city,
    normalize_country,
    normalize_date_of_birth,
    normalize_email,
    normalize_external_id,
    normalize_gender,
    normalize_name,
    normalize_phone,
    normalize_state,
    normalize_zip,
    sha256_hex,
)
from capi_middleware.rules.user_keys import CLEAR_KEYS, FRIENDLY_KEYS, HASHED_KEYS, KEY_TO_META

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


def _unknown_key(key: object) -> Problem:
    # Described by its shape, never its text, unless a near miss of our names (issue 10).
    field, what, hint = unknown_key_field("user_data", key, KEY_TO_META)
    return Problem(field, f"{what}, dropped; {hint}" if hint else f"{what}, dropped", fatal=False)


# An already-hashed value may come padded with whitespace; allow it through the length check.
_HASH_SLACK = SHA256_LEN + 16

# Low-cardinality keys (a few hundred countries, states, cities, ZIPs seen over and over) keep
# their hash in a small memo: one dict look-up instead of normalizing and hashing again. Emails,
# phones, names and dates are personal and unique per visitor: never memoized.
_MEMO_KEYS = frozenset({"ge", "ct", "st", "zp", "country"})
_MEMO_MAX_ENTRIES = 4096
_MEMO_MAX_VALUE_LEN = 64
_memo: dict[tuple[str, str | None, str], str] = {}


def _hash_value(meta: str, rule: Rule, item: object, cc: str | None) -> str:
    """The lowercase hex SHA-256 to send for one value, or raise `Reject`."""
    if isinstance(item, str):
        size = len(item)
        if SHA256_LEN <= size <= _HASH_SLACK:
            stripped = item.strip()
            if len(stripped) == SHA256_LEN and HEX64.fullmatch(stripped):
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
    rule: Rule,
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
            external_id_rule(item, lowercase=False)
            if as_clear
            else _hash_value(meta, rule, item, cc)
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
            if isinstance(candidate, str) and len(candidate) <= MAX_HASHED_DEFAULT:
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
        meta = KEY_TO_META.get(given)
        if meta is None and isinstance(given, str) and len(given) <= 64:
            meta = KEY_TO_META.get(given.strip().lower())
        if meta is None:
            problems.append(_unknown_key(given))
            continue
        if value is None:
            continue
        rule = HASHED_RULES.get(meta)
        if rule is None:  # a clear key: sent as given, never hashed
            try:
                clear[meta] = clear_value(meta, value)
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
