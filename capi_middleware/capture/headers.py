"""Which request headers capture reads, and how much of each a client can make it hold.

The adapters decode the `CAPTURED_HEADERS` eagerly and cap every header value with `cap_header`
(Cookie and the forwarding headers by their own rules); `RequestContext.header` reads any other
header on demand under the same caps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import AnyStr

from capi_middleware.rules.trusted_proxies import MAX_FORWARDED_HEADER

__all__ = [
    "CAPTURED_HEADERS",
    "MAX_COOKIE_HEADER_CHARS",
    "MAX_HEADER_CHARS",
    "cap_header",
    "header_reader",
]

# Caps on what a client can make us hold or forward. Browsers send far less; past these a
# value is junk or an attack, and capping keeps capture's cost flat.
MAX_HEADER_CHARS = 8192
MAX_COOKIE_HEADER_CHARS = 16384
# Forwarding headers go to rules/trusted_proxies.py, which deals with an oversized one itself: it
# reads only the right end of X-Forwarded-For (the hops our proxies added) and ignores an oversized
# Forwarded. Capping must keep that meaning, so these keep their right end / stay visibly oversized.
_FORWARDING_CAP = MAX_FORWARDED_HEADER + 1


def cap_header(name: str, value: AnyStr) -> AnyStr:
    """A header value capped for capture: Cookie and forwarding headers by their own rules."""
    if name == "cookie":
        return value[:MAX_COOKIE_HEADER_CHARS]
    if name == "x-forwarded-for":
        return value[-_FORWARDING_CAP:] if len(value) > _FORWARDING_CAP else value
    if name == "forwarded":
        return value[:_FORWARDING_CAP]
    return value[:MAX_HEADER_CHARS]


CAPTURED_HEADERS = frozenset(
    (
        "host",
        "user-agent",
        "cookie",
        "referer",
        "sec-gpc",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    )
)
"""The headers capture and the built-in consent policies read; adapters decode these eagerly."""


def header_reader(
    raw_map: Mapping[bytes, bytes] | None, headers: Mapping[str, str]
) -> Callable[[str], str | None]:
    """A lookup of one request header by lowercase name, over either adapter's headers."""
    if raw_map is None:
        return headers.get
    get = raw_map.get

    def header(name: str) -> str | None:
        value = get(name.encode("latin-1"))
        return None if value is None else cap_header(name, value).decode("latin-1")

    return header
