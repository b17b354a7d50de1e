"""The signed enhancement cookie: a visitor's hashed email / phone / external_id, remembered.

When a visitor gives their email or phone in one request (a sign-up, a checkout), Meta can match
that browser's later events too if they carry the same hashed keys. This module keeps those
*hashed* values (SHA-256 hex, never the raw value) in a first-party cookie, signed with
itsdangerous so a client cannot forge or alter it, bound to the site (`site_binding`: a cookie
signed for another site that shares the secret is refused), and with a timestamp so it expires.

Off by default: it is enabled by ``CAPIConfig.enhancement_secret`` and, like every cookie this
package sets, only with the visitor's consent. The cookie is HttpOnly (no script needs it),
SameSite=Lax, host-only, and Secure on https. A tampered, expired or malformed cookie is ignored.

Limitation: the cookie can only be set while the response has not started. ``track()`` called
from a streaming body or a background task after the response head went out still sends the
event (enriched from the cookie the request carried) but cannot update the cookie.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from itsdangerous import BadData, URLSafeTimedSerializer

__all__ = [
    "ENHANCEMENT_COOKIE",
    "ENHANCEMENT_MAX_AGE",
    "REMEMBERED_KEYS",
    "EnhancementCookie",
    "site_binding",
]

logger = logging.getLogger("capi_middleware")

ENHANCEMENT_COOKIE = "_capi_ud"
# 90 days, the lifetime Meta gives _fbc/_fbp (META_CAPI_REFERENCE §4).
ENHANCEMENT_MAX_AGE = 7_776_000
# Only keys that identify a person across visits; the rest (city, zip...) add little and
# would make the cookie bigger.
REMEMBERED_KEYS: tuple[str, ...] = ("em", "ph", "external_id")
# A few values per key keep the cookie far below the 4 KB browsers allow per cookie
# (3 keys x 3 hashes x 67 bytes ~ 600 bytes before base64).
MAX_VALUES_PER_KEY = 3
# Signed values longer than this were not written by us; don't spend time verifying them.
_MAX_COOKIE_CHARS = 2048
_SALT = "capi-middleware.enhancement.v1"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

Remembered = dict[str, tuple[str, ...]]


class EnhancementCookie:
    """Sign, verify and render the enhancement cookie.

    Parameters:
        secret: the signing key (``CAPIConfig.enhancement_secret``); rotate it to forget every
            visitor at once.
        max_age: seconds a cookie stays valid, both as its ``Max-Age`` and as the signature's
            age limit.
        cookie_name: the cookie's name.
        site: what binds a cookie to one site (`site_binding`): a cookie signed for another
            site is refused even when the two share the secret (issue 10).
    """

    __slots__ = ("_serializer", "cookie_name", "max_age")

    def __init__(
        self,
        secret: str,
        *,
        max_age: int = ENHANCEMENT_MAX_AGE,
        cookie_name: str = ENHANCEMENT_COOKIE,
        site: str = "",
    ) -> None:
        if not secret:
            raise ValueError("enhancement_secret: must not be empty")
        # The site goes into the key derivation (itsdangerous' salt), not into the cookie.
        self._serializer = URLSafeTimedSerializer(secret, salt=f"{_SALT}|{site}")
        self.max_age = max_age
        self.cookie_name = cookie_name

    def __repr__(self) -> str:
        return f"EnhancementCookie(cookie_name={self.cookie_name!r}, max_age={self.max_age})"

    def load(self, value: str | None) -> Remembered:
        """The hashed keys a cookie holds; empty when absent, tampered, expired or malformed."""
        if not value or len(value) > _MAX_COOKIE_CHARS:
            return {}
        try:
            data = self._serializer.loads(value, max_age=self.max_age)
        except BadData:
            # Forged, altered, expired or not ours: ignore it, as a browser without it.
            return {}
        except Exception:  # a broken payload must never break a request
            logger.debug("capi_middleware: unreadable enhancement cookie ignored")
            return {}
        return _clean(data)

    def dump(self, remembered: Mapping[str, Sequence[str]]) -> str:
        """Sign ``remembered`` (hashed values only) into a cookie value."""
        return str(self._serializer.dumps(_clean(remembered)))

    def render_set_cookie(self, value: str, *, secure: bool) -> str:
        """The Set-Cookie header value: host-only, HttpOnly, SameSite=Lax, Secure on https."""
        parts = [
            f"{self.cookie_name}={value}",
            "Path=/",
            f"Max-Age={self.max_age}",
            "HttpOnly",
            "SameSite=Lax",
        ]
        if secure:
            parts.append("Secure")
        return "; ".join(parts)

    def render_expiry(self, *, secure: bool) -> str:
        """The Set-Cookie header value that removes the cookie (``Max-Age=0``, same attributes)."""
        parts = [f"{self.cookie_name}=", "Path=/", "Max-Age=0", "HttpOnly", "SameSite=Lax"]
        if secure:
            parts.append("Secure")
        return "; ".join(parts)


def site_binding(pixel_id: str | None, cookie_domain: str | None) -> str:
    """What binds the enhancement cookie to one site: the pixel id and the cookie domain.

    Two sites that share an ``enhancement_secret`` differ in at least one of them unless they
    are one site for Meta too (one pixel, one cookie domain).
    """
    return f"pixel={pixel_id or ''}|domain={cookie_domain or ''}"


def remembered_from_user_data(user_data: Mapping[str, Any]) -> Remembered:
    """The hashed em / ph / external_id of a built event's ``user_data``.

    Values that are not SHA-256 hex (``external_id`` with ``hash_external_id=False``) are not
    remembered: the cookie never holds a raw value.
    """
    return _clean(user_data)


def _clean(data: object) -> Remembered:
    """Keep only the remembered keys, each a short tuple of lowercase SHA-256 hex strings."""
    if not isinstance(data, Mapping):
        return {}
    out: Remembered = {}
    for key in REMEMBERED_KEYS:
        raw = data.get(key)
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, (list, tuple)):
            continue
        values: list[str] = []
        for item in raw:
            if isinstance(item, str) and _SHA256_HEX.fullmatch(item) and item not in values:
                values.append(item)
            if len(values) == MAX_VALUES_PER_KEY:
                break
        if values:
            out[key] = tuple(values)
    return out
