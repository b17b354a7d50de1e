"""The keys of Meta's ``user_data`` and how an app may spell them (pure).

META_CAPI_REFERENCE.md §3: `HASHED_KEYS` carry customer information Meta matches only after
normalization and SHA-256 (the rules live in `capi_middleware.rules.user_fields`); `CLEAR_KEYS`
are sent as given. An app may also use the `FRIENDLY_KEYS` spellings (``email``, ``zip_code``,
...). `capi_middleware.normalize` re-exports the three tables as public API.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["CLEAR_KEYS", "FRIENDLY_KEYS", "HASHED_KEYS", "KEY_TO_META"]

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
KEY_TO_META: dict[str, str] = {
    **{k: k for k in HASHED_KEYS},
    **{k: k for k in CLEAR_KEYS},
    **FRIENDLY_KEYS,
}
