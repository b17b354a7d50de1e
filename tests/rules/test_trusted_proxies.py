"""trusted_proxies: which hop of a proxied request is the client (uvicorn's trust model)."""

from __future__ import annotations

import ipaddress
import random
import sys
from typing import Any

import pytest

from capi_middleware.config import CAPIConfig
from capi_middleware.rules.client_ip import sendable_ip
from capi_middleware.rules.trusted_proxies import (
    MAX_FORWARDED_HEADER,
    ForwardedInfo,
    ProxyTrust,
    resolve_client,
)


def trust(*entries: str, **options: Any) -> ProxyTrust:
    return ProxyTrust([ipaddress.ip_network(e, strict=False) for e in entries], **options)


_LOCAL = ("127.0.0.1", "::1")
_PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8")
NOBODY = trust()
LOCAL = trust(*_LOCAL)
PRIVATE = trust(*_PRIVATE)
CDN = trust("173.245.48.0/20", "2400:cb00::/32")
# The other trust models (issue 10): RFC 7239 Forwarded instead of X-Forwarded-*, and the
# forwarded host believed (only on opt-in; with a site, only inside it).
LOCAL_FWD = trust(*_LOCAL, headers="forwarded")
PRIVATE_FWD = trust(*_PRIVATE, headers="forwarded")
LOCAL_HOST = trust(*_LOCAL, trust_host=True)
LOCAL_FWD_HOST = trust(*_LOCAL, headers="forwarded", trust_host=True)
LOCAL_HOST_SITE = trust(*_LOCAL, trust_host=True, site="example.com")

G4 = "8.8.8.8"
C4 = "1.1.1.1"
G6 = "2606:4700:4700::1111"
FB6 = "2a03:2880:f10d:83:face:b00c:0:25de"

SPOOF_PAD = ", ".join(["9.9.9.9"] * 1200)  # ~10 KB of forged entries
TRUSTED_PAD = ", ".join(["10.0.0.9"] * 1200)

# (id, trust, peer, headers, expected client_ip, expected scheme, expected host)
CASES = [
    # -- untrusted peer: the peer is the client, every forwarding header is ignored --------------
    ("peer-public-v4", NOBODY, G4, {}, G4, None, None),
    ("peer-spoofed-xff-ignored", NOBODY, G4, {"x-forwarded-for": C4}, G4, None, None),
    ("peer-spoofed-fwd-ignored", NOBODY, G4, {"forwarded": f"for={C4}"}, G4, None, None),
    ("peer-not-in-trust", PRIVATE, G4, {"x-forwarded-for": C4}, G4, None, None),
    ("peer-private-untrusted", NOBODY, "192.168.1.5", {}, None, None, None),
    ("peer-loopback-untrusted", NOBODY, "127.0.0.1", {"x-forwarded-for": C4}, None, None, None),
    ("peer-public-v6", NOBODY, G6, {}, G6, None, None),
    ("peer-v6-uncompressed", NOBODY, "2606:4700:4700:0:0:0:0:1111", {}, G6, None, None),
    ("peer-v6-uppercase", NOBODY, "2606:4700:4700::1111".upper(), {}, G6, None, None),
    ("peer-none", LOCAL, None, {"x-forwarded-for": C4}, None, None, None),
    ("peer-unix-socket", LOCAL, "/tmp/app.sock", {"x-forwarded-for": C4}, None, None, None),
    ("peer-mapped-v4", NOBODY, "::ffff:8.8.8.8", {}, G4, None, None),
    ("peer-untrusted-proto", NOBODY, G4, {"x-forwarded-proto": "https"}, G4, None, None),
    ("peer-untrusted-host", NOBODY, G4, {"x-forwarded-host": "example.com"}, G4, None, None),
    # -- trusted peer, X-Forwarded-For ------------------------------------------------------------
    ("xff-single", LOCAL, "127.0.0.1", {"x-forwarded-for": C4}, C4, None, None),
    (
        "xff-leftmost-is-claim",
        LOCAL,
        "127.0.0.1",
        {"x-forwarded-for": f"{G4}, {C4}"},
        C4,
        None,
        None,
    ),
    (
        "xff-trusted-hops",
        PRIVATE,
        "10.0.0.1",
        {"x-forwarded-for": f"{G4}, {C4}, 10.0.0.2, 192.168.0.3"},
        C4,
        None,
        None,
    ),
    ("xff-cidr-172", PRIVATE, "172.20.1.1", {"x-forwarded-for": C4}, C4, None, None),
    # 172.32.0.1 is just outside 172.16/12: an untrusted public peer, so it is the client.
    (
        "xff-cidr-edge-outside",
        PRIVATE,
        "172.32.0.1",
        {"x-forwarded-for": C4},
        "172.32.0.1",
        None,
        None,
    ),
    (
        "xff-all-trusted-private",
        PRIVATE,
        "10.0.0.1",
        {"x-forwarded-for": "10.1.1.1, 10.2.2.2"},
        None,
        None,
        None,
    ),
    (
        "xff-all-trusted-public",
        CDN,
        "173.245.48.1",
        {"x-forwarded-for": "173.245.48.7"},
        "173.245.48.7",
        None,
        None,
    ),
    (
        "xff-private-client",
        LOCAL,
        "127.0.0.1",
        {"x-forwarded-for": "192.168.1.20"},
        None,
        None,
        None,
    ),
    ("xff-private-client-v6", LOCAL, "::1", {"x-forwarded-for": "fd12:3456::1"}, None, None, None),
    ("xff-port-v4", LOCAL, "127.0.0.1", {"x-forwarded-for": "8.8.8.8:5678"}, G4, None, None),
    ("xff-bracket-port-v6", LOCAL, "127.0.0.1", {"x-forwarded-for": f"[{G6}]:443"}, G6, None, None),
    ("xff-bracket-v6", LOCAL, "127.0.0.1", {"x-forwarded-for": f"[{G6}]"}, G6, None, None),
    ("xff-bare-v6", LOCAL, "127.0.0.1", {"x-forwarded-for": FB6}, FB6, None, None),
    ("xff-zone-public", LOCAL, "127.0.0.1", {"x-forwarded-for": f"{G6}%eth0"}, G6, None, None),
    (
        "xff-zone-link-local",
        LOCAL,
        "127.0.0.1",
        {"x-forwarded-for": "fe80::1%eth0"},
        None,
        None,
        None,
    ),
    ("xff-mapped", LOCAL, "127.0.0.1", {"x-forwarded-for": "::ffff:1.1.1.1"}, C4, None, None),
    (
        "xff-mapped-private",
        LOCAL,
        "127.0.0.1",
        {"x-forwarded-for": "::ffff:10.0.0.1"},
        None,
        None,
        None,
    ),
    (
        "xff-junk-rightmost",
        LOCAL,
        "127.0.0.1",
        {"x-forwarded-for": f"{C4}, garbage"},
        None,
        None,
        None,
    ),
    ("xff-unknown", LOCAL, "127.0.0.1", {"x-forwarded-for": f"{C4}, unknown"}, None, None, None),
    ("xff-bad-port", LOCAL, "127.0.0.1", {"x-forwarded-for": "1.1.1.1:abc"}, None, None, None),
    (
        "xff-empty-trusted-private-peer",
        PRIVATE,
        "10.0.0.1",
        {"x-forwarded-for": ""},
        None,
        None,
        None,
    ),
    (
        "xff-empty-trusted-public-peer",
        CDN,
        "173.245.48.1",
        {"x-forwarded-for": ""},
        "173.245.48.1",
        None,
        None,
    ),
    ("xff-only-commas", LOCAL, "127.0.0.1", {"x-forwarded-for": " , ,"}, None, None, None),
    ("xff-trailing-comma", LOCAL, "127.0.0.1", {"x-forwarded-for": f"{C4},"}, C4, None, None),
    ("xff-whitespace", LOCAL, "127.0.0.1", {"x-forwarded-for": f" \t{C4}  "}, C4, None, None),
    (
        "xff-repeated-headers",
        LOCAL,
        "127.0.0.1",
        {"x-forwarded-for": f"{G4}, {C4}"},
        C4,
        None,
        None,
    ),
    (
        "xff-10kb-spoofed-left",
        LOCAL,
        "127.0.0.1",
        {"x-forwarded-for": f"{SPOOF_PAD}, {C4}"},
        C4,
        None,
        None,
    ),
    (
        "xff-10kb-all-trusted",
        PRIVATE,
        "10.0.0.1",
        {"x-forwarded-for": f"{G4}, {TRUSTED_PAD}"},
        None,
        None,
        None,
    ),
    ("xff-10kb-one-entry", LOCAL, "127.0.0.1", {"x-forwarded-for": "x" * 10_240}, None, None, None),
    (
        "xff-fullwidth-digits",
        LOCAL,
        "127.0.0.1",
        {"x-forwarded-for": "\uff18.\uff18.\uff18.\uff18"},
        None,
        None,
        None,
    ),
    ("xff-unicode-junk", LOCAL, "127.0.0.1", {"x-forwarded-for": "🙂, \u2028"}, None, None, None),
    ("xff-cgnat", LOCAL, "127.0.0.1", {"x-forwarded-for": "100.64.1.1"}, None, None, None),
    ("xff-doc-v4", LOCAL, "127.0.0.1", {"x-forwarded-for": "192.0.2.1"}, None, None, None),
    ("xff-doc-v6", LOCAL, "127.0.0.1", {"x-forwarded-for": "2001:db8::1"}, None, None, None),
    ("xff-multicast-v4", LOCAL, "127.0.0.1", {"x-forwarded-for": "224.0.0.1"}, None, None, None),
    ("xff-multicast-v6", LOCAL, "127.0.0.1", {"x-forwarded-for": "ff02::1"}, None, None, None),
    ("xff-unspecified", LOCAL, "127.0.0.1", {"x-forwarded-for": "0.0.0.0"}, None, None, None),
    ("xff-broadcast", LOCAL, "127.0.0.1", {"x-forwarded-for": "255.255.255.255"}, None, None, None),
    ("xff-link-local", LOCAL, "127.0.0.1", {"x-forwarded-for": "169.254.1.1"}, None, None, None),
    ("xff-v6-loopback-peer", LOCAL, "::1", {"x-forwarded-for": FB6}, FB6, None, None),
    ("xff-v6-cidr-hops", PRIVATE, "fd00::5", {"x-forwarded-for": f"{G6}, fd00::7"}, G6, None, None),
    ("xff-v6-cdn-range", CDN, "2400:cb00:2048::1", {"x-forwarded-for": C4}, C4, None, None),
    (
        "xff-mapped-peer-trusted",
        PRIVATE,
        "::ffff:10.0.0.1",
        {"x-forwarded-for": C4},
        C4,
        None,
        None,
    ),
    # -- trusted peer, RFC 7239 Forwarded -----------------------------------------------------------
    ("fwd-single", LOCAL_FWD, "127.0.0.1", {"forwarded": f"for={C4}"}, C4, None, None),
    (
        "fwd-case-insensitive-name",
        LOCAL_FWD,
        "127.0.0.1",
        {"forwarded": f"For={C4}"},
        C4,
        None,
        None,
    ),
    (
        "fwd-quoted-v6-port",
        LOCAL_FWD,
        "127.0.0.1",
        {"forwarded": f'for="[{G6}]:4711"'},
        G6,
        None,
        None,
    ),
    (
        "fwd-quoted-v4-port",
        LOCAL_FWD,
        "127.0.0.1",
        {"forwarded": f'for="{C4}:4711"'},
        C4,
        None,
        None,
    ),
    (
        "fwd-obfuscated-port",
        LOCAL_FWD,
        "127.0.0.1",
        {"forwarded": f'for="[{G6}]:_p1"'},
        G6,
        None,
        None,
    ),
    ("fwd-chain", LOCAL_FWD, "127.0.0.1", {"forwarded": f"for={G4}, for={C4}"}, C4, None, None),
    (
        "fwd-trusted-hops",
        PRIVATE_FWD,
        "10.0.0.1",
        {"forwarded": f"for={C4}, for=10.0.0.2"},
        C4,
        None,
        None,
    ),
    ("fwd-obfuscated", LOCAL_FWD, "127.0.0.1", {"forwarded": "for=_hidden"}, None, None, None),
    ("fwd-unknown", LOCAL_FWD, "127.0.0.1", {"forwarded": "for=unknown"}, None, None, None),
    (
        "fwd-obfuscated-stops-walk",
        PRIVATE_FWD,
        "10.0.0.1",
        {"forwarded": f"for={C4}, for=_abc, for=10.0.0.2"},
        None,
        None,
        None,
    ),
    (
        "fwd-obfuscated-left-of-client",
        LOCAL_FWD,
        "127.0.0.1",
        {"forwarded": f"for=_abc, for={C4}"},
        C4,
        None,
        None,
    ),
    # One family only: the other is a client's claim that a proxy passed through (issue 10).
    (
        "fwd-ignored-by-default",
        LOCAL,
        "127.0.0.1",
        {"forwarded": f"for={C4};proto=https;host=evil.com", "x-forwarded-for": G4},
        G4,
        None,
        None,
    ),
    (
        "fwd-alone-ignored-by-default",
        LOCAL,
        "127.0.0.1",
        {"forwarded": f"for={C4}"},
        None,
        None,
        None,
    ),
    (
        "xff-ignored-in-forwarded-mode",
        LOCAL_FWD,
        "127.0.0.1",
        {"forwarded": f"for={C4}", "x-forwarded-for": G4, "x-forwarded-proto": "https"},
        C4,
        None,
        None,
    ),
    (
        "fwd-without-for-is-the-peer",
        LOCAL_FWD,
        "127.0.0.1",
        {"forwarded": "proto=https", "x-forwarded-for": G4},
        None,
        "https",
        None,
    ),
    (
        "fwd-junk-is-the-peer",
        PRIVATE_FWD,
        "10.0.0.1",
        {"forwarded": "garbage", "x-forwarded-for": G4},
        None,
        None,
        None,
    ),
    (
        "fwd-params",
        LOCAL_FWD_HOST,
        "127.0.0.1",
        {"forwarded": f"for={C4}; proto=https; by=10.0.0.1; host=Shop.Example.com"},
        C4,
        "https",
        "shop.example.com",
    ),
    (
        "fwd-host-ignored-without-opt-in",
        LOCAL_FWD,
        "127.0.0.1",
        {"forwarded": f"for={C4}; proto=https; host=evil.com"},
        C4,
        "https",
        None,
    ),
    (
        "fwd-escaped-quote-junk",
        LOCAL_FWD,
        "127.0.0.1",
        {"forwarded": 'for="\\"1.1.1.1"'},
        None,
        None,
        None,
    ),
    ("fwd-unclosed-quote", LOCAL_FWD, "127.0.0.1", {"forwarded": f'for="{C4}'}, None, None, None),
    ("fwd-empty-for", LOCAL_FWD, "127.0.0.1", {"forwarded": "for="}, None, None, None),
    (
        "fwd-duplicate-param",
        LOCAL_FWD,
        "127.0.0.1",
        {"forwarded": f"for={C4};for={G4}"},
        C4,
        None,
        None,
    ),
    (
        "fwd-private-client",
        LOCAL_FWD,
        "127.0.0.1",
        {"forwarded": "for=192.168.0.10"},
        None,
        None,
        None,
    ),
    (
        "fwd-from-untrusted-peer",
        LOCAL_FWD,
        G4,
        {"forwarded": f"for={C4};proto=https"},
        G4,
        None,
        None,
    ),
    ("fwd-10kb", LOCAL_FWD, "127.0.0.1", {"forwarded": f"for={C4}, " * 1500}, None, None, None),
    ("fwd-trailing-comma", LOCAL_FWD, "127.0.0.1", {"forwarded": f"for={C4},"}, C4, None, None),
    # -- scheme and host ----------------------------------------------------------------------------
    (
        "proto-https",
        LOCAL,
        "127.0.0.1",
        {"x-forwarded-for": C4, "x-forwarded-proto": "https"},
        C4,
        "https",
        None,
    ),
    ("proto-case", LOCAL, "127.0.0.1", {"x-forwarded-proto": " HTTPS "}, None, "https", None),
    ("proto-ws", LOCAL, "127.0.0.1", {"x-forwarded-proto": "wss"}, None, "wss", None),
    ("proto-ftp-rejected", LOCAL, "127.0.0.1", {"x-forwarded-proto": "ftp"}, None, None, None),
    (
        "proto-junk-rejected",
        LOCAL,
        "127.0.0.1",
        {"x-forwarded-proto": "https\r\nx: y"},
        None,
        None,
        None,
    ),
    (
        "proto-aligned-with-hop",
        PRIVATE,
        "10.0.0.1",
        {"x-forwarded-for": f"{C4}, 10.0.0.2", "x-forwarded-proto": "https, http"},
        C4,
        "https",
        None,
    ),
    (
        "proto-misaligned-takes-last",
        LOCAL,
        "127.0.0.1",
        {"x-forwarded-for": C4, "x-forwarded-proto": "http, https"},
        C4,
        "https",
        None,
    ),
    (
        "fwd-proto-of-chosen-hop",
        PRIVATE_FWD,
        "10.0.0.1",
        {"forwarded": f"for={C4};proto=https, for=10.0.0.2;proto=http"},
        C4,
        "https",
        None,
    ),
    (
        "fwd-proto-falls-back-to-rightmost",
        PRIVATE_FWD,
        "10.0.0.1",
        {"forwarded": f"for={C4}, for=10.0.0.2;proto=http"},
        C4,
        "http",
        None,
    ),
    (
        "host-lowercased",
        LOCAL_HOST,
        "127.0.0.1",
        {"x-forwarded-host": "Shop.Example.COM"},
        None,
        None,
        "shop.example.com",
    ),
    (
        "host-port",
        LOCAL_HOST,
        "127.0.0.1",
        {"x-forwarded-host": "example.com:8443"},
        None,
        None,
        "example.com:8443",
    ),
    (
        "host-v6",
        LOCAL_HOST,
        "127.0.0.1",
        {"x-forwarded-host": "[::1]:8080"},
        None,
        None,
        "[::1]:8080",
    ),
    ("host-bad-v6", LOCAL_HOST, "127.0.0.1", {"x-forwarded-host": "[::zz]"}, None, None, None),
    (
        "host-path-rejected",
        LOCAL_HOST,
        "127.0.0.1",
        {"x-forwarded-host": "evil.com/path"},
        None,
        None,
        None,
    ),
    (
        "host-space-rejected",
        LOCAL_HOST,
        "127.0.0.1",
        {"x-forwarded-host": "exa mple.com"},
        None,
        None,
        None,
    ),
    (
        "host-port-too-big",
        LOCAL_HOST,
        "127.0.0.1",
        {"x-forwarded-host": "example.com:99999"},
        None,
        None,
        None,
    ),
    (
        "host-underscore-rejected",
        LOCAL_HOST,
        "127.0.0.1",
        {"x-forwarded-host": "ex_ample.com"},
        None,
        None,
        None,
    ),
    (
        "host-crlf-rejected",
        LOCAL_HOST,
        "127.0.0.1",
        {"x-forwarded-host": "a.com\r\nSet-Cookie: x=1"},
        None,
        None,
        None,
    ),
    (
        "host-list-takes-last",
        LOCAL_HOST,
        "127.0.0.1",
        {"x-forwarded-host": "a.example, b.example"},
        None,
        None,
        "b.example",
    ),
    (
        "host-fwd-quoted",
        LOCAL_FWD_HOST,
        "127.0.0.1",
        {"forwarded": f'for={C4};host="example.com:443"'},
        C4,
        None,
        "example.com:443",
    ),
    (
        "host-too-long",
        LOCAL_HOST,
        "127.0.0.1",
        {"x-forwarded-host": "a." * 200 + "com"},
        None,
        None,
        None,
    ),
    (
        "host-ignored-without-opt-in",
        LOCAL,
        "127.0.0.1",
        {"x-forwarded-for": C4, "x-forwarded-host": "evil.com"},
        C4,
        None,
        None,
    ),
    (
        "host-outside-the-site",
        LOCAL_HOST_SITE,
        "127.0.0.1",
        {"x-forwarded-host": "evil.com"},
        None,
        None,
        None,
    ),
    (
        "host-suffix-is-not-inside",
        LOCAL_HOST_SITE,
        "127.0.0.1",
        {"x-forwarded-host": "notexample.com"},
        None,
        None,
        None,
    ),
    (
        "host-the-site-itself",
        LOCAL_HOST_SITE,
        "127.0.0.1",
        {"x-forwarded-host": "Example.com:8443"},
        None,
        None,
        "example.com:8443",
    ),
    (
        "host-inside-the-site",
        LOCAL_HOST_SITE,
        "127.0.0.1",
        {"x-forwarded-host": "shop.example.com"},
        None,
        None,
        "shop.example.com",
    ),
    (
        "host-ip-outside-the-site",
        LOCAL_HOST_SITE,
        "127.0.0.1",
        {"x-forwarded-host": "[::1]:8080"},
        None,
        None,
        None,
    ),
]


@pytest.mark.parametrize(
    ("trust_", "peer", "headers", "client_ip", "scheme", "host"),
    [pytest.param(*row[1:], id=row[0]) for row in CASES],
)
def test_resolve_client(
    trust_: ProxyTrust,
    peer: str | None,
    headers: dict[str, str],
    client_ip: str | None,
    scheme: str | None,
    host: str | None,
) -> None:
    assert resolve_client(peer, headers, trust_) == ForwardedInfo(client_ip, scheme, host)


def test_table_is_large_and_ids_unique() -> None:
    assert len(CASES) >= 60
    assert len({row[0] for row in CASES}) == len(CASES)


def test_oversized_forwarded_still_reads_proto_from_xfp() -> None:
    headers = {"forwarded": "for=1.1.1.1, " * 1000, "x-forwarded-proto": "https"}
    assert len(headers["forwarded"]) > MAX_FORWARDED_HEADER
    assert resolve_client("127.0.0.1", headers, LOCAL) == ForwardedInfo(None, "https", None)


@pytest.mark.parametrize(
    ("value", "trusted"),
    [
        ("10.0.0.1", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("172.31.255.255", True),
        ("172.32.0.0", False),
        ("192.168.0.1:8080", True),
        ("::ffff:192.168.0.1", True),
        ("fd00::1", True),
        ("[fd00::1]:443", True),
        ("fe80::1", False),
        ("", False),
        ("garbage", False),
        ("x" * 1000, False),
    ],
)
def test_proxy_trust_membership(value: str, trusted: bool) -> None:
    assert PRIVATE.is_trusted(value) is trusted


def test_proxy_trust_single_addresses_and_empty() -> None:
    assert LOCAL.is_trusted("127.0.0.1")
    assert not LOCAL.is_trusted("127.0.0.2")
    assert LOCAL.is_trusted("0:0:0:0:0:0:0:1")  # another spelling of ::1
    assert not NOBODY.is_trusted("127.0.0.1")


def test_proxy_trust_from_config() -> None:
    config = CAPIConfig(trusted_proxies=("10.0.0.0/8", "::1"))
    proxies = ProxyTrust(config.trusted_networks())
    assert proxies.is_trusted("10.9.8.7")
    assert proxies.is_trusted("::1")
    assert resolve_client("10.0.0.1", {"x-forwarded-for": C4}, proxies).client_ip == C4
    assert "10.0.0.0/8" in repr(proxies)


JUNK_MODELS = [LOCAL, LOCAL_FWD, LOCAL_HOST, LOCAL_FWD_HOST, LOCAL_HOST_SITE]


def test_proxy_trust_takes_one_header_family() -> None:
    with pytest.raises(ValueError, match="forwarded_headers"):
        trust(*_LOCAL, headers="both")
    assert LOCAL.header_names == ("x-forwarded-for", "x-forwarded-proto")
    assert LOCAL_HOST.header_names == ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host")
    assert LOCAL_FWD.header_names == ("forwarded",)


def test_never_raises_on_random_junk() -> None:
    rng = random.Random(7239)
    alphabet = 'abcf0189:.[]%,;="_ \t\\\r\n\x00é🙂fortprotohost'
    for _ in range(2000):
        junk = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        headers = {
            "forwarded": junk,
            "x-forwarded-for": junk[::-1],
            "x-forwarded-proto": junk,
            "x-forwarded-host": junk,
        }
        info = resolve_client("127.0.0.1", headers, rng.choice(JUNK_MODELS))
        assert info.scheme in (None, "http", "https", "ws", "wss")
        if info.client_ip is not None:
            assert sendable_ip(info.client_ip) == info.client_ip
        if info.host is not None:
            assert info.host == info.host.strip().lower()
            assert not any(c in info.host for c in "\r\n\t \x00/;,")
        assert sendable_ip(junk) is None or ipaddress.ip_address(sendable_ip(junk) or "")


# -- bounded work on hostile forwarding headers (issue 10) ------------------------------------


@pytest.mark.parametrize(
    ("trust_", "headers", "client_ip"),
    [
        # More hops than any real chain: a Forwarded header is ignored whole...
        (LOCAL_FWD, {"forwarded": ", ".join([f"for={C4}"] * 100)}, None),
        (LOCAL_FWD, {"forwarded": f"for={C4}" + ";a=b" * 300}, None),
        # ...and X-Forwarded-For is read from its right end, where trusted proxies append.
        (LOCAL, {"x-forwarded-for": ", ".join(["junk"] * 100 + [C4])}, C4),
        (LOCAL, {"x-forwarded-for": ", ".join([G4] + ["127.0.0.1"] * 100)}, None),
    ],
)
def test_a_chain_longer_than_any_real_one(
    trust_: ProxyTrust, headers: dict[str, str], client_ip: str | None
) -> None:
    assert resolve_client("127.0.0.1", headers, trust_).client_ip == client_ip


def _python_steps(headers: dict[str, str], trust_: ProxyTrust) -> int:
    """Lines of Python run to resolve one request (C-speed string work is one step a call)."""
    steps = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal steps
        if event == "line":
            steps += 1
        return tracer

    sys.settrace(tracer)
    try:
        resolve_client("127.0.0.1", headers, trust_)
    finally:
        sys.settrace(None)
    return steps


@pytest.mark.parametrize(
    ("trust_", "name", "junk"),
    [
        (LOCAL_FWD, "forwarded", "a,"),
        (LOCAL_FWD, "forwarded", "a;"),
        (LOCAL_FWD, "forwarded", "for=1.1.1.1,"),
        (LOCAL_HOST, "x-forwarded-for", "a,"),
        (LOCAL_HOST, "x-forwarded-host", "a,"),
        (LOCAL_HOST, "x-forwarded-proto", "a,"),
    ],
)
def test_the_work_does_not_grow_with_a_hostile_header(
    trust_: ProxyTrust, name: str, junk: str
) -> None:
    small = _python_steps({name: (junk * 600)[:1024]}, trust_)
    large = _python_steps({name: (junk * 3000)[:8192]}, trust_)
    assert large <= small + 50, (small, large)
