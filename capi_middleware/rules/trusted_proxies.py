"""Which hop of a proxied request is the client: the trusted-proxy model (pure).

The trust model is uvicorn's ``middleware/proxy_headers.py``: the connecting peer is the client
unless the peer is a trusted proxy. Then the forwarding headers are believed, walked right to left
(each proxy appends the address it received the request from), and the first hop that is not a
trusted proxy is the client. Everything left of it is the client's own claim and may be forged.

One header family is believed, chosen by configuration (issue 10): ``X-Forwarded-For`` and
``X-Forwarded-Proto`` by default, as uvicorn, gunicorn and most proxies set them, or RFC 7239
``Forwarded`` when the user says their proxy writes it. The other family is ignored whole: a
client can send either, and a proxy that writes one passes the other through untouched. The host
(``X-Forwarded-Host`` / ``Forwarded: host=``) is believed only when the user opts in, and then
only inside the allowed site (the cookie domain, when one is set). Meta must never receive a
private, loopback, link-local or reserved address (META_CAPI_REFERENCE.md §3), so the answer
passes through `sendable_ip` (rules/client_ip.py). Nothing here raises on what a visitor sends.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from capi_middleware.rules.client_ip import MAX_ADDRESS_LENGTH, parse_ip, sendable_ip

__all__ = [
    "FORWARDED_HEADER_FAMILIES",
    "ForwardedInfo",
    "ProxyTrust",
    "resolve_client",
]

# The header families a trusted proxy's answer may come in (CAPIConfig.forwarded_headers), and
# the request headers each reads: the address, the scheme, the host (the host only on opt-in).
FORWARDED_HEADER_FAMILIES: dict[str, tuple[str, ...]] = {
    "x-forwarded": ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"),
    "forwarded": ("forwarded",),
}

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A forwarding header past this is hostile or broken. X-Forwarded-For is read from its right end
# (where trusted proxies append), Forwarded is not read at all.
MAX_FORWARDED_HEADER = 8 * 1024
# Hops read from a forwarding header, from its right end (where trusted proxies append). A real
# chain has a handful; past this a header is hostile, and walking it costs Python work per entry.
MAX_FORWARDED_HOPS = 64

_SCHEMES = frozenset({"http", "https", "ws", "wss"})
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}\.?(?::([0-9]{{1,5}}))?")
_BRACKET_HOST_RE = re.compile(r"\[([0-9a-f:.]{2,45})\](?::([0-9]{1,5}))?")
# One Forwarded pair: token "=" (token / quoted-string), then an optional separator.
_FORWARDED_PAIR_RE = re.compile(
    r'[ \t]*([A-Za-z][A-Za-z0-9_.-]*)[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^;,"\s]*)[ \t]*([;,]?)'
)
_QUOTED_PAIR_RE = re.compile(r"\\(.)")
_SEPARATOR_RE = re.compile(r"[;,]")


class ProxyTrust:
    """The proxies whose forwarding headers are believed, and which headers those are.

    Parameters:
        networks: addresses and CIDR networks, from `CAPIConfig.trusted_networks()`. An empty
            sequence trusts nobody: the peer is always the client.
        headers: the one header family believed from a trusted proxy (a key of
            `FORWARDED_HEADER_FAMILIES`): ``"x-forwarded"`` (default) or ``"forwarded"``.
        trust_host: believe the forwarded host (``X-Forwarded-Host`` / ``Forwarded: host=``);
            off by default, since many proxies pass a client's own value through.
        site: with ``trust_host``, the domain a forwarded host must be or be inside (the
            cookie domain); None accepts any well-formed host.

    Membership answers are cached (bounded), since the same few proxies ask on every request.
    """

    def __init__(
        self,
        networks: Sequence[IPNetwork],
        *,
        headers: str = "x-forwarded",
        trust_host: bool = False,
        site: str | None = None,
    ) -> None:
        if headers not in FORWARDED_HEADER_FAMILIES:
            raise ValueError(
                f"forwarded_headers: must be one of {', '.join(FORWARDED_HEADER_FAMILIES)}"
            )
        self.networks: tuple[IPNetwork, ...] = tuple(networks)
        self.headers = headers
        self.trust_host = trust_host
        self.site = site.lower().strip(".") if site else None
        # The request headers capture needs to hand over (the host's only when believed).
        names = FORWARDED_HEADER_FAMILIES[headers]
        self.header_names: tuple[str, ...] = (
            names if trust_host or headers == "forwarded" else names[:2]
        )
        # Single addresses go in a set (one lookup); networks are scanned.
        self._hosts = frozenset(n.network_address for n in self.networks if n.num_addresses == 1)
        self._ranges = tuple(n for n in self.networks if n.num_addresses > 1)
        self._cached: Callable[[str], bool] = functools.lru_cache(maxsize=4096)(self._compute)

    def __repr__(self) -> str:
        return (
            f"ProxyTrust({[str(n) for n in self.networks]!r}, headers={self.headers!r}, "
            f"trust_host={self.trust_host!r}, site={self.site!r})"
        )

    def _compute(self, value: str) -> bool:
        ip = parse_ip(value)
        if ip is None:
            return False
        return ip in self._hosts or any(ip in net for net in self._ranges)

    def is_trusted(self, ip: str) -> bool:
        """True when ``ip`` (bare, or with a port / brackets) is one of the trusted proxies."""
        if not self.networks or not isinstance(ip, str) or len(ip) > MAX_ADDRESS_LENGTH:
            return False
        return self._cached(ip)


@dataclass(frozen=True)
class ForwardedInfo:
    """What a request says about its client, once the trust model has been applied.

    Parameters:
        client_ip: the client's public address (`sendable_ip`), or None.
        scheme: ``http``/``https``/``ws``/``wss`` from a trusted proxy, else None.
        host: ``host[:port]`` from a trusted proxy (lowercase, validated), else None.
    """

    client_ip: str | None
    scheme: str | None
    host: str | None


_NOTHING = ForwardedInfo(None, None, None)


def _list_entries(value: str | None) -> list[str]:
    """Comma-separated header entries, stripped, empties dropped (they carry no claim).

    At most the rightmost `MAX_FORWARDED_HOPS` (split at C speed from the right end).
    """
    if not value:
        return []
    parts = value.rsplit(",", MAX_FORWARDED_HOPS)
    if len(parts) > MAX_FORWARDED_HOPS:
        del parts[0]
    return [e for e in (part.strip() for part in parts) if e]


def _unquote(raw: str) -> str:
    if raw.startswith('"'):
        return _QUOTED_PAIR_RE.sub(r"\1", raw[1:-1])
    return raw


def _parse_forwarded(value: str) -> list[dict[str, str]]:
    """RFC 7239 elements, each ``{param: value}`` (lowercase names, first occurrence wins).

    Tolerant: a pair that does not parse is skipped up to the next ``;`` or ``,``.
    """
    elements: list[dict[str, str]] = [{}]
    pos, end = 0, len(value)
    while pos < end:
        match = _FORWARDED_PAIR_RE.match(value, pos)
        if match is not None and match.end() > pos:
            elements[-1].setdefault(match[1].lower(), _unquote(match[2]))
            pos = match.end()
            separator = match[3]
            if separator or pos >= end:
                if separator == ",":
                    elements.append({})
                continue
        # Junk: resume after the next separator (one search, which stops there: linear work
        # over the whole header however many junk pairs it holds).
        cut = _SEPARATOR_RE.search(value, pos)
        if cut is None:
            break
        pos = cut.start()
        if value[pos] == ",":
            elements.append({})
        pos += 1
    return [e for e in elements if e]


def _forwarded_node(element: Mapping[str, str]) -> str | None:
    """The ``for=`` node of an element; None when absent, ``unknown`` or obfuscated (``_x``)."""
    node = element.get("for")
    if not node or node.lower() == "unknown" or node.startswith("_"):
        return None
    return node


def _choose_hop(nodes: Sequence[str | None], trust: ProxyTrust) -> tuple[int, str | None]:
    """(index, node) of the client: the first untrusted hop from the right.

    An unresolvable hop stops the walk (we cannot tell who is behind it). When every hop is a
    trusted proxy, the leftmost is the client (uvicorn#1068: the client is itself a proxy).
    """
    for index in range(len(nodes) - 1, -1, -1):
        node = nodes[index]
        if node is None or not trust.is_trusted(node):
            return index, node
    return 0, nodes[0]


def _scheme(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    return value if value in _SCHEMES else None


def _host(value: str | None) -> str | None:
    """A forwarded ``host[:port]``, lowercase, when it is a well-formed host; else None."""
    if value is None:
        return None
    value = value.strip().lower()
    if not value or len(value) > 260:
        return None
    if value.startswith("["):
        match = _BRACKET_HOST_RE.fullmatch(value)
        if match is None:
            return None
        try:
            ipaddress.IPv6Address(match[1])
        except ValueError:
            return None
        port = match[2]
    else:
        match = _HOST_RE.fullmatch(value)
        if match is None:
            return None
        port = match[1]
    if port is not None and int(port) > 65535:
        return None
    return value


def _pick(values: Sequence[str], index: int | None, hops: int) -> str | None:
    """The entry for the chosen hop when the list lines up with the hops, else the last."""
    if not values:
        return None
    if index is not None and len(values) == hops:
        return values[index]
    return values[-1]


def _from_elements(
    elements: Sequence[Mapping[str, str]], index: int | None, key: str
) -> str | None:
    """The chosen element's ``key``, else the rightmost element that has one."""
    if index is not None and key in elements[index]:
        return elements[index][key]
    for element in reversed(elements):
        if key in element:
            return element[key]
    return None


def resolve_client(
    peer: str | None, headers: Mapping[str, str], trust: ProxyTrust
) -> ForwardedInfo:
    """The client's address, scheme and host for one request.

    ``peer`` is the connecting address (ASGI ``scope["client"][0]``, WSGI ``REMOTE_ADDR``);
    ``headers`` maps lowercase names to values (repeated headers joined with ``", "``).
    Only when the peer is trusted is the configured family read (``trust.headers``): its
    address list walked right to left, its scheme and (with ``trust.trust_host``, inside
    ``trust.site``) its host taken from the chosen hop's entry, else the last. Never raises:
    junk gives None fields.
    """
    try:
        return _resolve(peer, headers, trust)
    except Exception:  # pragma: no cover - defensive: this runs inside the host app's request
        return _NOTHING


def _resolve(peer: str | None, headers: Mapping[str, str], trust: ProxyTrust) -> ForwardedInfo:
    if peer is None or not trust.is_trusted(peer):
        return ForwardedInfo(sendable_ip(peer) if peer else None, None, None)
    if trust.headers == "forwarded":
        client, scheme_value, host_value = _from_forwarded(peer, headers.get("forwarded"), trust)
    else:
        client, scheme_value, host_value = _from_x_forwarded(peer, headers, trust)
    host = _host(host_value) if trust.trust_host else None
    if host is not None and not _inside(host, trust.site):
        host = None  # a host outside the site: the request's own Host header stands
    return ForwardedInfo(client, _scheme(scheme_value), host)


def _from_x_forwarded(
    peer: str, headers: Mapping[str, str], trust: ProxyTrust
) -> tuple[str | None, str | None, str | None]:
    """(client, proto, host) from X-Forwarded-For / -Proto / -Host; Forwarded is ignored."""
    xff = headers.get("x-forwarded-for")
    xff_truncated = False
    if xff and len(xff) > MAX_FORWARDED_HEADER:
        # Trusted proxies append on the right, so the right end is what can be believed; the
        # first entry of the cut is dropped, since it may be a fragment.
        xff = xff[-MAX_FORWARDED_HEADER:].partition(",")[2]
        xff_truncated = True
    if xff and xff.count(",") >= MAX_FORWARDED_HOPS:
        xff_truncated = True  # only the rightmost hops are read (_list_entries)
    xff_entries = _list_entries(xff)
    chosen: int | None = None
    if xff_entries:
        chosen, node = _choose_hop(xff_entries, trust)
        if xff_truncated and chosen == 0 and trust.is_trusted(xff_entries[0]):
            node = None  # all trusted, but the real leftmost entry was cut off
        client = sendable_ip(node) if node is not None else None
    else:
        client = sendable_ip(peer)
    hops = len(xff_entries)
    scheme = _pick(_list_entries(headers.get("x-forwarded-proto")), chosen, hops)
    host = _pick(_list_entries(headers.get("x-forwarded-host")), chosen, hops)
    return client, scheme, host


def _from_forwarded(
    peer: str, forwarded: str | None, trust: ProxyTrust
) -> tuple[str | None, str | None, str | None]:
    """(client, proto, host) from RFC 7239 Forwarded; the X-Forwarded-* headers are ignored."""
    if forwarded and (
        len(forwarded) > MAX_FORWARDED_HEADER
        # more hops, or more pairs than 4 a hop (for, by, proto, host), than any real chain
        or forwarded.count(",") >= MAX_FORWARDED_HOPS
        or forwarded.count(";") >= 4 * MAX_FORWARDED_HOPS
    ):
        return None, None, None  # hostile or broken: nothing in it is believed
    elements = _parse_forwarded(forwarded) if forwarded else []
    if not any("for" in e for e in elements):
        # No hop named: the peer is the client, as without the header.
        return (
            sendable_ip(peer),
            _from_elements(elements, None, "proto"),
            _from_elements(elements, None, "host"),
        )
    index, node = _choose_hop([_forwarded_node(e) for e in elements], trust)
    client = sendable_ip(node) if node is not None else None
    return client, _from_elements(elements, index, "proto"), _from_elements(elements, index, "host")


def _inside(host: str, site: str | None) -> bool:
    """True when ``host[:port]`` is ``site`` or a name inside it (any host when site is None)."""
    if site is None:
        return True
    if host.startswith("["):
        return False  # an IP literal is no name inside a site
    name = host.rsplit(":", 1)[0] if ":" in host else host
    name = name.rstrip(".")
    return name == site or name.endswith("." + site)
