"""Which client address Meta may receive (pure).

Meta must never receive a private, loopback, link-local or reserved address
(META_CAPI_REFERENCE.md §3): `sendable_ip` gives an address's canonical public form, or None. It
checks the connecting peer, the hop the trust model chooses (rules/trusted_proxies.py) and a
stored Visitor's address. Nothing here raises on what a visitor sends.

Meta's Parameter Builder script keeps the visitor's public address (IPv6 preferred) in a one-day
``_fbi`` cookie (§4). `fbi_address` reads it; `client_ip_with_fbi` decides when it is believed:
only a public address, and only to give an IPv6 the request could not (an IPv4-only proxy or
network in between) or an address where the request had none. docs/match-quality.md gives the
reasons.
"""

from __future__ import annotations

import functools
import ipaddress
import re

__all__ = [
    "FBI_COOKIE",
    "MAX_ADDRESS_LENGTH",
    "client_ip_with_fbi",
    "fbi_address",
    "parse_ip",
    "sendable_ip",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# The longest address form we parse: "[" IPv6 with an embedded IPv4 and a zone id "]:65535".
MAX_ADDRESS_LENGTH = 100

FBI_COOKIE = "_fbi"
# The longest _fbi we read: an IPv6 with an embedded IPv4 (45), percent-encoded colons (x3),
# and Parameter Builder's appendix.
_MAX_FBI_LENGTH = 160
# Parameter Builder's appendix after the address: 8 base64url characters or a legacy language
# token (as on _fbc/_fbp, §4). It says which builder wrote the cookie, nothing about the address.
_FBI_APPENDIX_RE = re.compile(r"[A-Za-z0-9_-]{8}|AQ|Ag|Aw|BA|BQ|Bg")
_FBI_ADDRESS_RE = re.compile(r"[0-9A-Fa-f:.]{2,45}")

_PORT_RE = re.compile(r"[0-9]{1,5}|_[A-Za-z0-9._-]{1,64}")  # RFC 7239 node-port incl. obfport

# Not globally routable, yet `is_global` is True for them in some Python versions (the special-
# purpose registries were only applied fully in 3.11.10 / 3.12.4 / 3.13): documentation, CGNAT,
# benchmarking, IETF protocol assignments, 6to4 relay anycast, NAT64, 3fff::/20 (RFC 9637).
_NOT_SENDABLE = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "100.64.0.0/10",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "240.0.0.0/4",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "2002::/16",
        "3fff::/20",
        "fc00::/7",
        "fe80::/10",
    )
)


def _split_host_port(value: str) -> str | None:
    """The address part of ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``; None for junk."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        rest = value[end + 1 :]
        if rest and not (rest[0] == ":" and _PORT_RE.fullmatch(rest, 1)):
            return None
        return value[1:end]
    if value.count(":") == 1:  # IPv4 with a port; a bare IPv6 has at least two colons
        host, _, port = value.partition(":")
        return host if _PORT_RE.fullmatch(port) else None
    return value


def parse_ip(value: str) -> IPAddress | None:
    """An address from a peer or header value, IPv4-mapped IPv6 unwrapped; None for junk."""
    if not value or len(value) > MAX_ADDRESS_LENGTH:
        return None
    host = _split_host_port(value.strip())
    if not host:
        return None
    host = host.partition("%")[0]  # IPv6 zone id: meaningful only on the proxy's own link
    try:
        ip: IPAddress = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d.
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=8192)
def _sendable(value: str) -> str | None:
    ip = parse_ip(value)
    if ip is None:
        return None
    if (
        not ip.is_global
        or ip.is_multicast  # is_global is True for most multicast ranges
        or ip.is_reserved
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_private
        or any(ip in net for net in _NOT_SENDABLE)
    ):
        return None
    return str(ip)


def sendable_ip(value: str) -> str | None:
    """``value`` as an address Meta may receive (``client_ip_address``), or None.

    Strips a port (``1.2.3.4:5678``), IPv6 brackets (``[2001:db8::1]:443``), a zone id, and
    unwraps IPv4-mapped IPv6 (``::ffff:1.2.3.4`` -> ``1.2.3.4``); returns the canonical form.
    None for private, loopback, link-local, reserved, multicast, unspecified, CGNAT
    (100.64/10), documentation and benchmarking ranges, and anything that is not an address.
    Meta §3: never send a private or reserved address. Never raises.
    """
    if not isinstance(value, str) or len(value) > MAX_ADDRESS_LENGTH:
        return None
    return _sendable(value)


def fbi_address(value: object) -> str | None:
    """The public address in an ``_fbi`` cookie value, canonical, or None.

    The value is the bare address (no port, brackets or zone), optionally followed by ``.``
    and Parameter Builder's appendix, which is dropped; percent-encoded colons are read. An
    IPv4-mapped IPv6 is its IPv4. None for anything else, and for every address `sendable_ip`
    refuses (private, loopback, link-local, reserved, documentation, CGNAT ...). Never raises.
    """
    if not isinstance(value, str) or not 2 <= len(value) <= _MAX_FBI_LENGTH:
        return None
    if "%" in value:
        value = value.replace("%3A", ":").replace("%3a", ":")
    head, dot, tail = value.rpartition(".")
    if dot and _FBI_APPENDIX_RE.fullmatch(tail):
        value = head
    if _FBI_ADDRESS_RE.fullmatch(value) is None or value.count(":") == 1:
        return None  # also refuses ports, brackets, zone ids and whitespace
    return sendable_ip(value)


def client_ip_with_fbi(request_ip: str | None, fbi: str | None) -> str | None:
    """The ``client_ip_address`` to send, given the request's own and the ``_fbi`` cookie's.

    ``request_ip`` is what `resolve_client` found (already public, or None); ``fbi`` is the raw
    cookie value (read only with consent). The cookie's public IPv6 wins over a request's
    IPv4, and the cookie's address is used when the request has none. Otherwise the request's
    address stands: it comes from the connection and the trusted proxies, while the cookie is
    the visitor's claim, up to a day old, so it never replaces an address of its own family.
    """
    if fbi is None:
        return request_ip
    claimed = fbi_address(fbi)
    if claimed is None:
        return request_ip
    if request_ip is None or (":" in claimed and ":" not in request_ip):
        return claimed
    return request_ip
