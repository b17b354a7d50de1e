"""client_ip: which addresses Meta may receive, and the _fbi cookie's address."""

from __future__ import annotations

import pytest

from capi_middleware.rules.client_ip import (
    FBI_COOKIE,
    client_ip_with_fbi,
    fbi_address,
    sendable_ip,
)

G4 = "8.8.8.8"
C4 = "1.1.1.1"
G6 = "2606:4700:4700::1111"
FB6 = "2a03:2880:f10d:83:face:b00c:0:25de"

SENDABLE = [
    (G4, G4),
    (C4, C4),
    (G6, G6),
    (FB6, FB6),
    ("2001:4860:4860::8888", "2001:4860:4860::8888"),
    ("8.8.8.8:5678", G4),
    (f"[{G6}]:443", G6),
    (f"[{G6}]", G6),
    (f"{G6}%eth0", G6),
    (f"[{G6}%25eth0]:80", G6),  # RFC 6874 URL form of a zone id: still dropped
    ("::ffff:1.2.3.4", "1.2.3.4"),
    ("::ffff:8.8.8.8", G4),
    (" 8.8.8.8 ", G4),
    ("10.1.2.3", None),
    ("172.16.0.1", None),
    ("192.168.1.1", None),
    ("127.0.0.1", None),
    ("::1", None),
    ("169.254.10.10", None),
    ("fe80::1", None),
    ("fc00::1", None),
    ("fd12:3456::1", None),
    ("100.64.0.1", None),
    ("100.127.255.254", None),
    ("192.0.2.1", None),
    ("198.51.100.7", None),
    ("203.0.113.9", None),
    ("198.18.0.1", None),
    ("2001:db8::1", None),
    ("3fff::1", None),
    ("224.0.0.1", None),
    ("239.255.255.250", None),
    ("ff02::1", None),
    ("0.0.0.0", None),
    ("::", None),
    ("240.0.0.1", None),
    ("255.255.255.255", None),
    ("64:ff9b::808:808", None),
    ("2002:808:808::1", None),
    ("::ffff:10.0.0.1", None),
    ("", None),
    ("unknown", None),
    ("_hidden", None),
    ("8.8.8", None),
    ("8.8.8.8.8", None),
    ("08.8.8.8", None),
    ("8.8.8.8:", None),
    ("8.8.8.8:99x", None),
    ("[8.8.8.8", None),
    (f"[{G6}]x", None),
    ("1" * 10_000, None),
    ("\uff18.\uff18.\uff18.\uff18", None),
    ("\x00", None),
]


@pytest.mark.parametrize(("value", "expected"), SENDABLE)
def test_sendable_ip(value: str, expected: str | None) -> None:
    assert sendable_ip(value) == expected


@pytest.mark.parametrize("value", [None, 42, b"8.8.8.8", ["8.8.8.8"]])
def test_sendable_ip_non_strings(value: object) -> None:
    assert sendable_ip(value) is None  # type: ignore[arg-type]


# -- _fbi: the Parameter Builder's cookie with the visitor's public address (§4) -------------

W4 = "93.184.216.34"
APPENDIX = "AQIBAQAB"

FBI_VALUES = [
    # (cookie value, the address believed from it)
    (G6, G6),
    (G4, G4),
    (FB6, FB6),
    ("2606:4700:4700:0000:0000:0000:0000:1111", G6),  # canonical form
    ("2606:4700:4700::1111".upper(), G6),
    (f"{G6}.{APPENDIX}", G6),  # Parameter Builder's appendix is not part of the address
    (f"{G4}.{APPENDIX}", G4),
    (f"{G6}.AQ", G6),
    (f"{G4}.Bg", G4),
    (f"{G6}.A-_zA-_z", G6),
    ("2606%3A4700%3A4700%3A%3A1111", G6),  # percent-encoded by a cookie library
    ("2606%3a4700%3a4700%3a%3a1111.AQ", G6),
    ("::ffff:1.1.1.1", C4),  # IPv4-mapped: its IPv4
    # never a private, reserved or otherwise unroutable address (§3, §4)
    ("10.0.0.1", None),
    ("172.16.5.4", None),
    ("192.168.1.1", None),
    ("127.0.0.1", None),
    ("169.254.1.1", None),
    ("100.64.0.1", None),  # CGNAT
    ("192.0.2.1", None),  # documentation
    ("0.0.0.0", None),
    ("255.255.255.255", None),
    ("224.0.0.1", None),
    ("::1", None),
    ("::", None),
    ("fe80::1", None),
    ("fd12:3456::1", None),
    ("fc00::1", None),
    ("2001:db8::1", None),  # documentation
    ("ff02::1", None),
    ("::ffff:10.0.0.1", None),
    ("64:ff9b::808:808", None),  # NAT64
    (f"10.0.0.1.{APPENDIX}", None),
    # not an address as Parameter Builder writes it
    ("", None),
    ("8", None),
    ("not-an-ip", None),
    ("999.1.1.1", None),
    ("8.8.8", None),
    (f"{G4}:443", None),
    (f"[{G6}]", None),
    (f"[{G6}]:443", None),
    (f"{G6}%eth0", None),
    (f" {G4}", None),
    (f"{G4} ", None),
    (f"{G4}.AB", None),  # not a token Meta writes
    (f"{G4}.AQIBAQA", None),  # 7 characters
    (f"{G6}.{APPENDIX}.{APPENDIX}", None),
    (f"{G4};{G6}", None),
    (f"{G4},{G6}", None),
    ("%3A%3A1", None),
    ("1" * 200, None),
    (G6 + ":" + "1" * 150, None),
]


@pytest.mark.parametrize(("value", "expected"), FBI_VALUES)
def test_fbi_address(value: str, expected: str | None) -> None:
    assert fbi_address(value) == expected


@pytest.mark.parametrize("value", [None, 42, b"8.8.8.8", [G6], {"ip": G6}])
def test_fbi_address_of_non_strings(value: object) -> None:
    assert fbi_address(value) is None


@pytest.mark.parametrize(
    ("request_ip", "fbi", "expected"),
    [
        # the cookie's public IPv6 wins over the request's IPv4 (an IPv4-only hop in between)
        (W4, G6, G6),
        (W4, f"{G6}.{APPENDIX}", G6),
        (W4, "2606%3A4700%3A4700%3A%3A1111", G6),
        (G4, FB6, FB6),
        # it never replaces an address of the request's own family: that one is observed
        (FB6, G6, FB6),
        (W4, G4, W4),
        (W4, f"{G4}.AQ", W4),
        (FB6, G4, FB6),  # an IPv4 claim never displaces a request's IPv6
        (W4, "::ffff:1.1.1.1", W4),
        # with no usable request address, the cookie's public one is used
        (None, G4, G4),
        (None, G6, G6),
        (None, "::ffff:1.1.1.1", C4),
        # a private, reserved or malformed claim is never believed
        (W4, "fd00::1", W4),
        (W4, "fe80::1", W4),
        (W4, "::1", W4),
        (W4, "2001:db8::1", W4),
        (W4, "garbage", W4),
        (W4, f"[{G6}]:443", W4),
        (None, "10.0.0.1", None),
        (None, "192.168.1.1", None),
        (None, "", None),
        # no cookie: the request decides
        (W4, None, W4),
        (FB6, None, FB6),
        (None, None, None),
    ],
)
def test_client_ip_with_fbi(request_ip: str | None, fbi: str | None, expected: str | None) -> None:
    assert client_ip_with_fbi(request_ip, fbi) == expected


def test_the_fbi_cookie_name() -> None:
    assert FBI_COOKIE == "_fbi"
