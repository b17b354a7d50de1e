"""Visitor: a request's match context as a value, its dict and signed token, and bad input."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from capi_middleware import CAPIMiddleware, ConsentDecision, Visitor

SECRET = "visitor-test-secret"
NOW_MS = int(time.time() * 1000)
FBCLID = "IwAR2F4-dbP0l7Mn1IYjFwTJDnxkX6BvZn6tS1Jb5Ey8KQhXvq3Hz0LmNcQ9pR7sT2uV4wX6yZ8aB0cD1eF3gH5iJ7kL9mN"
# Long user agents as Facebook's and Instagram's in-app browsers send them: the visitors
# who click an ad.
LONG_USER_AGENTS = [
    "Mozilla/5.0 (Linux; Android 14; SM-S918B Build/UP1A.231005.007; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.144 Mobile Safari/537.36 "
    "[FB_IAB/FB4A;FBAV/445.0.0.34.118;FBBV/571234567;FBDM/{density=2.625,width=1080,"
    "height=2340};FBLC/en_US;FBRV/0;FBCR/Verizon;FBMF/samsung;FBBD/samsung;"
    "FBPN/com.facebook.katana;FBDV/SM-S918B;FBSV/14;FBOP/1;FBCA/arm64-v8a:;]",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/21B101 [FBAN/FBIOS;FBAV/444.0.0.37.107;FBBV/553279010;FBDV/iPhone15,3;"
    "FBMD/iPhone;FBSN/iOS;FBSV/17.1.2;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5;FBRV/555306063]",
    "Mozilla/5.0 (Linux; Android 13; Pixel 7 Pro Build/TQ3A.230901.001; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/119.0.6045.163 Mobile Safari/537.36 Instagram "
    "309.1.0.41.113 Android (33/13; 560dpi; 1440x3120; Google/google; Pixel 7 Pro; cheetah; "
    "cheetah; en_GB; 541635863)",
]


def shopper(**changes: Any) -> Visitor:
    values: dict[str, Any] = {
        "client_ip": "2a03:2880:f12c:83:face:b00c:0:25de",
        "user_agent": LONG_USER_AGENTS[0],
        "fbc": f"fb.1.{NOW_MS}.{FBCLID}",
        "fbp": f"fb.1.{NOW_MS}.1234567890",
        "event_source_url": "https://shop.example.com/checkout?utm_source=facebook"
        f"&utm_medium=paid&utm_campaign=winter_sale_2026&fbclid={FBCLID}",
        "referrer_url": "https://l.facebook.com/",
        "consent": ConsentDecision(granted=True, reason="site_cookie"),
        "captured_at": int(time.time()),
    }
    values.update(changes)
    return Visitor(**values)


# -- the two stored forms ------------------------------------------------------------------------


def test_dict_is_json_safe_and_round_trips() -> None:
    visitor = shopper()
    data = json.loads(json.dumps(visitor.to_dict()))
    assert Visitor.from_dict(data) == visitor
    assert data["consent"] == "granted"
    assert data["client_ip"] == "2a03:2880:f12c:83:face:b00c:0:25de"


@pytest.mark.parametrize("user_agent", LONG_USER_AGENTS)
def test_token_round_trips_and_fits_a_payment_metadata_value(user_agent: str) -> None:
    visitor = shopper(user_agent=user_agent)
    token = visitor.to_token(SECRET)
    assert len(token) <= 500, len(token)
    assert token.isascii()
    assert " " not in token
    assert Visitor.from_token(token, SECRET) == visitor  # nothing trimmed: all of it fits


def test_a_token_too_long_for_max_length_loses_the_queries_then_the_referrer() -> None:
    long_query = "&".join(f"utm_param{i}=value{i}x{i * 7919}" for i in range(60))
    visitor = shopper(
        event_source_url=f"https://shop.example.com/checkout?{long_query}",
        referrer_url=f"https://news.example.org/article?{long_query}",
    )
    full = visitor.to_token(SECRET, max_length=None)
    assert len(full) > 500
    token = visitor.to_token(SECRET)
    assert len(token) <= 500
    back = Visitor.from_token(token, SECRET)
    assert back.event_source_url == "https://shop.example.com/checkout"
    assert back.user_agent == visitor.user_agent
    assert back.fbc == visitor.fbc
    assert Visitor.from_token(full, SECRET) == visitor
    with pytest.raises(ValueError, match="max_length=40"):
        visitor.to_token(SECRET, max_length=40)


def test_ldu_and_denied_round_trip() -> None:
    ldu = shopper(consent=ConsentDecision(granted=True, ldu=True, reason="site_cookie+gpc"))
    ldu = Visitor.from_token(ldu.to_token(SECRET), SECRET)
    assert ldu.consent == ConsentDecision(granted=True, ldu=True, reason="site_cookie+gpc")
    assert (ldu.ldu_country, ldu.ldu_state) == (0, 0)
    us = Visitor.from_dict(
        {**shopper().to_dict(), "consent": "ldu", "ldu_country": 1, "ldu_state": 1000}
    )
    assert (us.ldu_country, us.ldu_state) == (1, 1000)
    denied = shopper(consent=ConsentDecision(granted=False, reason="no_signal"))
    # A denied visitor keeps nothing personal: there is nothing it may send.
    assert denied.client_ip is None
    assert denied.user_agent is None
    assert denied.fbp is None
    assert Visitor.from_dict(denied.to_dict()) == denied


def test_repr_names_fields_without_values() -> None:
    text = repr(shopper())
    assert "2a03" not in text
    assert "Mozilla" not in text
    assert FBCLID not in text
    assert "client_ip" in text
    assert "granted" in text


# -- bad input: a ValueError that names what is wrong --------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("client_ip", "10.0.0.7"),  # private: never sent to Meta
        ("client_ip", "not an address"),
        ("client_ip", 1234),
        ("user_agent", "Mozilla\x00/5.0"),
        ("user_agent", "x" * 2000),
        ("fbc", "fb.1.junk"),
        ("fbc", f"fb.1.{NOW_MS + 30 * 86_400_000}.abc"),  # created a month from now
        ("fbp", "fb.1.1700000000000.01234"),
        ("event_source_url", "javascript:alert(1)"),
        ("event_source_url", "https://shop.example.com/a b"),
        ("referrer_url", ["https://l.facebook.com/"]),
        ("consent", "maybe"),
        ("consent_reason", "<script>"),
        ("captured_at", "yesterday"),
        ("captured_at", int(time.time()) + 30 * 86_400),
        ("ldu_country", 44),
        ("ldu_state", 6),
        ("version", 2),
        ("surprise", "field"),
    ],
)
def test_from_dict_names_the_bad_field(field: str, value: Any) -> None:
    data = {**shopper().to_dict(), field: value}
    with pytest.raises(ValueError, match=rf"^{field}: "):
        Visitor.from_dict(data)


def test_from_dict_refuses_what_is_not_a_dict_or_lacks_a_field() -> None:
    with pytest.raises(ValueError, match=r"^visitor: must be a mapping"):
        Visitor.from_dict("{}")  # type: ignore[arg-type]
    data = shopper().to_dict()
    del data["consent"]
    with pytest.raises(ValueError, match=r"^consent: missing"):
        Visitor.from_dict(data)


def test_the_constructor_validates_too() -> None:
    with pytest.raises(ValueError, match=r"^client_ip: "):
        shopper(client_ip="192.168.1.10")
    # Canonical forms: an IPv4-mapped IPv6 address is the IPv4 address.
    assert shopper(client_ip="::ffff:81.2.69.160").client_ip == "81.2.69.160"


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "not a visitor token"),
        ("garbage", "bad signature"),
        ("é" * 10, "non-ASCII"),
        ("x" * 10_000, "too long"),
        (12345, "must be a string"),
    ],
)
def test_from_token_refuses_garbage(token: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"^token: .*{message}"):
        Visitor.from_token(token, SECRET)


def test_from_token_refuses_another_secret_and_any_tampering() -> None:
    token = shopper().to_token(SECRET)
    with pytest.raises(ValueError, match="bad signature"):
        Visitor.from_token(token, "another-secret")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i in (0, len(token) // 2, len(token) - 1):
        # Flip the character's top bit: its low bits may be base64 padding (the last one's are),
        # which decode to the same bytes.
        swapped = alphabet[alphabet.index(token[i]) ^ 32] if token[i] in alphabet else "A"
        with pytest.raises(ValueError, match="bad signature"):
            Visitor.from_token(token[:i] + swapped + token[i + 1 :], SECRET)
    with pytest.raises(ValueError, match="bad signature"):
        Visitor.from_token(token[:-5], SECRET)


def test_from_token_refuses_an_expired_token(monkeypatch: pytest.MonkeyPatch) -> None:
    eight_days_ago = time.time() - 8 * 86_400
    visitor = shopper(captured_at=int(eight_days_ago))
    with monkeypatch.context() as patch:
        patch.setattr(time, "time", lambda: eight_days_ago)
        token = visitor.to_token(SECRET)
    with pytest.raises(ValueError, match=r"^token: expired \(older than max_age=604800"):
        Visitor.from_token(token, SECRET)
    with pytest.raises(ValueError, match="max_age=3600"):
        Visitor.from_token(token, SECRET, max_age=3600)
    assert Visitor.from_token(token, SECRET, max_age=None) == visitor


def test_signing_needs_a_secret() -> None:
    with pytest.raises(ValueError, match=r"^secret: "):
        shopper().to_token("")


# -- ctx.visitor() in a real request -------------------------------------------------------------


async def visitor_of(request: Request) -> JSONResponse:
    return JSONResponse(request.state.capi.visitor().to_dict())


def app(**options: Any) -> Any:
    return CAPIMiddleware(
        Starlette(routes=[Route("/checkout", visitor_of)]), dry_run=True, **options
    )


async def get(asgi_app: Any, headers: dict[str, str], query: str = "") -> dict[str, Any]:
    transport = httpx.ASGITransport(app=asgi_app, client=("81.2.69.160", 50123))
    async with httpx.AsyncClient(transport=transport, base_url="https://shop.example.com") as c:
        response = await c.get(f"/checkout{query}", headers=headers)
    data: dict[str, Any] = response.json()
    return data


@pytest.mark.anyio
async def test_ctx_visitor_holds_the_requests_match_context() -> None:
    fbp = f"fb.1.{NOW_MS}.987654321"
    data = await get(
        app(consent=True),
        {
            "user-agent": LONG_USER_AGENTS[1],
            "cookie": f"_fbp={fbp}",
            "referer": "https://l.facebook.com/",
            "accept": "text/html",
        },
        query=f"?fbclid={FBCLID}",
    )
    visitor = Visitor.from_dict(data)
    assert visitor.client_ip == "81.2.69.160"
    assert visitor.user_agent == LONG_USER_AGENTS[1]
    assert visitor.fbp == fbp
    assert visitor.fbc is not None
    assert visitor.fbc.endswith(f".{FBCLID}")
    assert visitor.event_source_url == f"https://shop.example.com/checkout?fbclid={FBCLID}"
    assert visitor.referrer_url == "https://l.facebook.com/"
    assert visitor.consent.granted
    assert abs(visitor.captured_at - time.time()) < 60


@pytest.mark.anyio
async def test_a_denied_requests_visitor_is_denied_and_empty() -> None:
    data = await get(app(), {"user-agent": "Mozilla/5.0", "accept": "text/html"})
    visitor = Visitor.from_dict(data)
    assert not visitor.consent.granted
    assert visitor.consent.reason == "no_signal"
    assert visitor.client_ip is None
    assert visitor.user_agent is None
