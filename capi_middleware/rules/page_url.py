"""Pure rules for the page a request is for, as Meta is told about it.

The page host (validated, default port dropped), the page URL as the browser asked for it,
the referrer and user agent as they are passed on, and whether a request is a page load
(`is_navigation`). No knowledge of ASGI or WSGI: callers hand in text, bytes and mappings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = [
    "DEFAULT_PORTS",
    "MAX_HOST_CHARS",
    "MAX_URL_CHARS",
    "MAX_USER_AGENT_CHARS",
    "HeaderSource",
    "build_page_url",
    "clean_referrer",
    "clean_user_agent",
    "host_from_server",
    "hostname",
    "is_navigation",
    "is_raw_navigation",
    "latin1_text",
    "page_host",
]


class HeaderSource(Protocol):
    """Anything that answers a request header by name (`RequestContext` does)."""

    def header(self, name: str) -> str | None: ...


MAX_USER_AGENT_CHARS = 1024
MAX_URL_CHARS = 4096
MAX_HOST_CHARS = 261  # a 255-character name (RFC 1035), ':' and a 5-digit port

# RFC 1123 host names (underscores tolerated, as some internal names have them), an IPv4
# literal, or a bracketed IPv6 literal; then an optional port. Anything else in Host is junk.
_HOST = re.compile(
    r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\.?"
    r"|\[[0-9a-f:.]{2,45}\])(?::[0-9]{1,5})?"
)
DEFAULT_PORTS = {"http": "80", "https": "443"}
_NOT_URL_SAFE = re.compile(r"[^\x21-\x7e]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_host_cache: dict[tuple[str | bytes, str], str | None] = {}


def page_host(value: str | bytes | None, scheme: str) -> str | None:
    """The Host header as it goes in the page URL (validated, lowercased, default port dropped).

    ``value`` may be the raw ASGI bytes. Memoized: a site answers to a handful of hosts.
    Bounded, since clients choose the value.
    """
    if not value:
        return None
    key = (value, scheme)
    try:
        return _host_cache[key]
    except KeyError:
        pass
    if len(value) > MAX_HOST_CHARS:
        return None  # junk, and never a memo key: clients choose its size
    host = _valid_host(value if isinstance(value, str) else value.decode("latin-1"))
    if host is not None and scheme in DEFAULT_PORTS:
        host = _strip_default_port(host, scheme)
    if len(_host_cache) >= 1024:
        _host_cache.clear()
    _host_cache[key] = host
    return host


def _valid_host(value: str | None) -> str | None:
    """The Host header, lowercased, when it is a host name or IP literal with an optional port."""
    if not value or len(value) > MAX_HOST_CHARS:
        return None
    value = value.lower()
    return value if _HOST.fullmatch(value) else None


def _strip_default_port(host: str, scheme: str) -> str:
    # Browsers omit the scheme's default port from the page URL.
    default = DEFAULT_PORTS[scheme]
    if host.endswith(default) and host[: -len(default)].endswith(":"):
        return host[: -len(default) - 1]
    return host


def host_from_server(server: Sequence[Any], scheme: str) -> str | None:
    """The page host from the server's ``(host, port)``, for a request without a usable Host."""
    host, port = server[0], server[1] if len(server) > 1 else None
    if not isinstance(host, str) or not host:
        return None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if port is not None and str(port) != DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    return _valid_host(host)


def latin1_text(value: str | bytes) -> str:
    """A raw ASGI value as latin-1 text (every byte decodes)."""
    return value.decode("latin-1") if isinstance(value, bytes) else value


def hostname(host: str) -> str:
    """``host[:port]`` -> host; ``[::1]:8000`` -> ``::1``."""
    if host.startswith("["):
        return host[1 : host.index("]")]
    return host.rsplit(":", 1)[0] if ":" in host else host


def build_page_url(scheme: str, host: str | None, raw_path: str, query_string: str) -> str | None:
    """scheme://host + the path and query as the browser sent them (capped, never invalid)."""
    if host is None:
        return None
    path = raw_path if raw_path.startswith("/") else "/" + raw_path
    if _NOT_URL_SAFE.search(path):
        path = _escape(path)
    url = f"{scheme}://{host}{path}"
    if query_string:
        if _NOT_URL_SAFE.search(query_string):
            query_string = _escape(query_string)
        url = f"{url}?{query_string}"
    if len(url) > MAX_URL_CHARS:
        # Keep the page, lose the tail: the query goes first (tracking parameters, mostly).
        base = f"{scheme}://{host}{path}"
        url = base if len(base) <= MAX_URL_CHARS else base[:MAX_URL_CHARS]
        if url[-1:] == "%" or url[-2:-1] == "%":
            url = url[: url.rindex("%")]  # never end inside a %XX escape
    return url


def _escape(text: str) -> str:
    """Percent-encode bytes a browser would have encoded (spaces, controls, non-ASCII)."""
    return "".join(
        c if "\x21" <= c <= "\x7e" else "".join(f"%{b:02X}" for b in c.encode("latin-1", "replace"))
        for c in text
    )


def clean_user_agent(value: str | None) -> str | None:
    """The User-Agent as it is passed on: capped, control characters removed; None when empty."""
    if not value:
        return None
    if len(value) > MAX_USER_AGENT_CHARS:
        value = value[:MAX_USER_AGENT_CHARS]
    if not value.isprintable():  # C-speed check; the regex only when something is off
        value = _CONTROL.sub("", value)
    value = value.strip()
    return value or None


def clean_referrer(value: str | None) -> str | None:
    """The Referer when it is a whole http(s) URL of visible ASCII, else None.

    Visible ASCII only (browsers percent-encode the rest), ``http://`` or ``https://`` in any
    case, then a host (at least one character before any ``/``, ``?`` or ``#``). Plain checks,
    each one pass over at most `MAX_URL_CHARS` characters: the pattern this replaced
    backtracked quadratically on a long value that fails at its end (issue 10).
    """
    if not value or len(value) > MAX_URL_CHARS:
        return None  # a cut URL would point elsewhere; better none
    if not (value.isascii() and value.isprintable()) or " " in value:
        return None
    head = value[:8].lower()
    start = 8 if head == "https://" else 7 if head.startswith("http://") else 0
    if start == 0 or start == len(value) or value[start] in "/?#":
        return None
    return value


def is_navigation(signals: HeaderSource) -> bool:
    """True when the request is a page load (a document navigation), not an API call or asset.

    Fetch Metadata first: ``Sec-Fetch-Dest: document`` or ``Sec-Fetch-Mode: navigate``. A
    client that sends neither (older browsers) counts when its ``Accept`` asks for
    ``text/html``. Kept cookies are re-sent only on these (see `CapturePipeline._plan`).
    """
    dest = signals.header("sec-fetch-dest")
    mode = signals.header("sec-fetch-mode")
    if dest is None and mode is None:
        accept = signals.header("accept")
        return accept is not None and "text/html" in accept.lower()
    return (dest is not None and dest.strip(_WHITESPACE).lower() == "document") or (
        mode is not None and mode.strip(_WHITESPACE).lower() == "navigate"
    )


_WHITESPACE = " \t\r\n\x0b\x0c"  # what bytes.strip() strips: both rules strip the same


def is_raw_navigation(header_map: Mapping[bytes, bytes]) -> bool:
    """`is_navigation` for raw headers: lowercase byte names -> byte values (an ASGI map)."""
    dest = header_map.get(b"sec-fetch-dest")
    mode = header_map.get(b"sec-fetch-mode")
    if dest is None and mode is None:
        accept = header_map.get(b"accept")
        return accept is not None and b"text/html" in accept.lower()
    return (dest is not None and dest.strip().lower() == b"document") or (
        mode is not None and mode.strip().lower() == b"navigate"
    )
