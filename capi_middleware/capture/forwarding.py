"""The once-per-process warning about forwarding headers from a peer that is not trusted.

Behind a proxy missing from ``trusted_proxies`` the forwarding headers are ignored, as they must
be, and the visitor's IP, scheme and host never reach Meta: `check_forwarding_trust` says so
once, and names the option. Capture calls it only until the question is settled.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from typing import Any

from capi_middleware.client import log_internal_error
from capi_middleware.rules.trusted_proxies import ProxyTrust

__all__ = ["check_forwarding_trust"]

logger = logging.getLogger("capi_middleware")

# Trusted peers remembered by the caller (so that a trusted proxy costs one set lookup).
_TRUSTED_SEEN_MAX = 256

_FORWARDING_LABELS = {
    "x-forwarded-for": "X-Forwarded-For",
    "forwarded": "Forwarded",
    "x-forwarded-proto": "X-Forwarded-Proto",
    "x-forwarded-host": "X-Forwarded-Host",
}


def check_forwarding_trust(
    peer: str | None,
    headers: Mapping[Any, Any],
    trust: ProxyTrust,
    trusted_seen: set[str | None],
) -> bool:
    """Warn once per process when forwarding headers arrive from a peer that is not trusted.

    Behind a proxy that is not in ``trusted_proxies`` the headers are ignored, as they must be
    (uvicorn's proxy_headers model), so no visitor IP reaches Meta (a private proxy) or the
    proxy's own IP does (a public CDN), and the page URL has the proxy's scheme and host. The
    warning names the header, the peer (a public address only to its /24 or /48: it may be a
    visitor's) and the option. Not said when the peer is an entry of X-Forwarded-For: the
    server already put the client there from the header it trusts (uvicorn
    ``--forwarded-allow-ips``). Called only while a request carries X-Forwarded-For or
    Forwarded (the headers that carry an address) from a peer not yet in ``trusted_seen``,
    where trusted peers are remembered (bounded) so that a trusted proxy costs one set lookup
    per request.

    Returns True once the question is settled for this process (warned, or the server itself
    resolves forwarding headers): the caller need not ask again. Never raises.
    """
    try:
        if peer is None or trust.is_trusted(peer):
            if len(trusted_seen) < _TRUSTED_SEEN_MAX:
                trusted_seen.add(peer)
            return False
        raw = isinstance(next(iter(headers), ""), bytes)  # ASGI's byte names, or WSGI's text

        def header(name: str) -> str | None:
            value = headers.get(name.encode("latin-1") if raw else name)
            return value.decode("latin-1") if isinstance(value, bytes) else value

        present = [label for name, label in _FORWARDING_LABELS.items() if header(name) is not None]
        xff = header("x-forwarded-for")
        if xff is not None and peer in (part.strip() for part in xff.split(",")):
            return True  # the server resolved it (its own trusted proxy)
        shown = _peer_for_log(peer)
        setting = "is not set" if not trust.networks else f"does not include {shown}"
        logger.warning(
            "capi_middleware: a request from %s carries %s, but trusted_proxies "
            "[META_TRUSTED_PROXIES] %s, so the header is ignored: the IP sent to Meta is the "
            "peer's, and the page URL's scheme and host are what the peer asked for. If %s is "
            "your proxy or CDN, add its addresses to trusted_proxies (docs/proxies.md). "
            "(Said once per process.)",
            shown,
            " and ".join(present),
            setting,
            shown,
        )
        return True
    except Exception as exc:  # a diagnostic must never cost the request
        log_internal_error("checking forwarding headers", exc)
        return True


def _peer_for_log(peer: str) -> str:
    """A peer address fit for a log line: a private one in full (a proxy, never a visitor on
    the Internet), a public one only to its /24 (IPv4) or /48 (IPv6) network, which is also
    the form a CDN's range takes in trusted_proxies."""
    try:
        ip = ipaddress.ip_address(peer.strip("[]"))
    except ValueError:
        return "a peer with an unreadable address"
    if ip.is_private or ip.is_loopback or ip.is_link_local:
        return str(ip)
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
