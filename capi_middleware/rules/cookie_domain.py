"""The cookie domain: the registrable domain (eTLD+1) a host's first-party cookies are set on.

Pure. The Public Suffix List (ICANN and private sections, as browsers apply them) decides what
is registrable, never "drop the first label" (which yields ``co.uk``). META_CAPI_REFERENCE.md §4:
the subdomain index in ``_fbc``/``_fbp`` counts the labels of the domain the cookie is set on.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

__all__ = ["cookie_domain_for", "is_domain_name", "subdomain_index"]

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_LABEL_RE = re.compile(_LABEL)
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")


def is_domain_name(value: str) -> bool:
    """True for a lowercase DNS name of two or more labels (what a cookie Domain may be)."""
    return _DOMAIN_RE.fullmatch(value) is not None


@functools.lru_cache(maxsize=1)
def _public_suffix_list() -> Any:
    # Built once, lazily (~40 ms): the package bundles the full list, ICANN and private sections.
    # Browsers apply the private section too (github.io, appspot.com), so a cookie for
    # example.github.io must not be set on github.io.
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def _host_name(host: str) -> tuple[str, bool] | None:
    """(lowercase host name without port, is_ip) for a Host header value, or None for junk."""
    if not isinstance(host, str):
        return None
    host = host.strip().lower()
    if not host or len(host) > 260:
        return None
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isascii() and rest[1:].isdigit())):
            return None
        return (host[1:end], True)
    if host.count(":") > 1:  # an unbracketed IPv6 literal
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        return (host, True)
    name, _, port = host.partition(":")
    if port and not (port.isascii() and port.isdigit()):
        return None
    if not name or len(name) > 253:
        return None
    labels = name.split(".")
    # A numeric last label makes a browser parse the whole host as IPv4 (WHATWG URL: "1.2.3"
    # is 1.2.0.3), so treat it as an IP host.
    if labels[-1].isascii() and labels[-1].isdigit():
        return (name, True)
    if not all(_LABEL_RE.fullmatch(label) for label in labels):
        return None  # junk, non-ASCII (not punycode), or a trailing dot: host-only is safest
    return (name, False)


def _registrable_domain(name: str) -> str | None:
    if "." not in name:
        return None  # localhost and other single-label hosts
    result = _public_suffix_list().privatesuffix(name)
    return result if isinstance(result, str) else None


@functools.lru_cache(maxsize=1024)
def _cookie_domain_cached(host: str, override: str | None) -> str | None:
    parsed = _host_name(host)
    if parsed is None or parsed[1]:
        return None
    name = parsed[0]
    if override is not None:
        override = override.strip().lstrip(".").lower()
        if not _DOMAIN_RE.fullmatch(override):
            return None
        if name != override and not name.endswith("." + override):
            # A Domain the request's host is not inside would be rejected by the browser.
            return None
        # Nor will a browser accept a public suffix (co.uk, github.io) as Domain.
        return override if _registrable_domain(override) is not None else None
    return _registrable_domain(name)


def cookie_domain_for(host: str, override: str | None) -> str | None:
    """The ``Domain`` attribute for ``_fbc``/``_fbp`` on a request to ``host``; None = host-only.

    Default: the registrable domain (eTLD+1) by the Public Suffix List, ICANN and private
    sections: ``www.example.co.uk`` -> ``example.co.uk``, never ``co.uk``. None for localhost and
    other single-label hosts, IP hosts, hosts that are themselves a public suffix, and junk.
    ``override`` (the ``cookie_domain`` option) wins when the host is that domain or inside it;
    otherwise the cookie is host-only. The port is ignored. Cached per host (bounded LRU).
    """
    if not isinstance(host, str) or len(host) > 260:
        return None
    try:
        return _cookie_domain_cached(host, override)
    except Exception:  # pragma: no cover - defensive: this runs inside the host app's request
        return None


def subdomain_index(domain: str | None, host: str) -> int:
    """The second segment of a minted cookie: labels in the cookie's domain minus 1.

    ``com`` = 0, ``example.com`` = 1, ``www.example.com`` = 2 (Meta). For a host-only cookie
    (``domain`` None) the cookie's domain is the host itself, so its labels count; an IP host, or a
    host we cannot read, is 0 -- as Meta's capi-param-builder does for IP hosts, and as its count
    gives for ``localhost``.
    """
    if domain:
        return domain.count(".")
    parsed = _host_name(host)
    if parsed is None or parsed[1]:
        return 0
    return min(parsed[0].count("."), 99)
