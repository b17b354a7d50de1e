"""The _fbi cookie through the middleware (issue 14 item 8, META_CAPI_REFERENCE.md §4): with
consent, its public IPv6 is the event's client_ip_address over the request's IPv4.

The rule's full table lives in tests/rules/test_client_ip.py; this checks the wiring.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from capi_middleware.asgi import CAPIMiddleware
from capi_middleware.wsgi import CAPIWSGIMiddleware

pytestmark = pytest.mark.anyio

V4 = "93.184.216.34"
V6 = "2606:4700:4700::1111"
OWN_V6 = "2a03:2880:f10d:83:face:b00c:0:25de"
APPENDIX = "AQIBAQAB"


async def page(request: Request) -> Response:
    ctx = request.state.capi
    return JSONResponse(
        {
            "client_ip": ctx.client_ip,
            "visitor_ip": ctx.visitor().client_ip,
            "granted": ctx.consent.granted,
        }
    )


def shop(**options: Any) -> Any:
    options.setdefault("dry_run", True)
    options.setdefault("consent", True)
    app = Starlette(routes=[Route("/{path:path}", page)])
    app.add_middleware(CAPIMiddleware, **options)
    return app


async def fetch(app: Any, cookie: str | None, *, peer: str = V4, **headers: str) -> Any:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    if cookie is not None:
        headers["cookie"] = cookie
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get("https://shop.example.com/", headers=headers)
    return response.json()


@pytest.mark.parametrize(
    ("peer", "cookie", "expected"),
    [
        (V4, f"_fbi={V6}", V6),  # the cookie's IPv6 over the request's IPv4
        (V4, f"_fbi={V6}.{APPENDIX}", V6),
        (V4, f"_ga=GA1.1.2; _fbi={V6}.AQ; _fbp=fb.1.1700000000000.123", V6),
        (V4, "_fbi=2606%3A4700%3A4700%3A%3A1111", V6),
        (OWN_V6, f"_fbi={V6}", OWN_V6),  # never replaces the request's own IPv6
        (V4, "_fbi=1.1.1.1", V4),  # nor its own IPv4
        ("127.0.0.1", "_fbi=1.1.1.1", "1.1.1.1"),  # fills in where the request has none
        (V4, "_fbi=fd00::1", V4),  # never a private or reserved address
        (V4, "_fbi=fe80::1", V4),
        (V4, "_fbi=::1", V4),
        ("127.0.0.1", "_fbi=10.0.0.1", None),
        (V4, "_fbi=junk", V4),
        (V4, f"_fbi=[{V6}]:443", V4),
        (V4, "_fbiX=" + V6, V4),  # another cookie's name
        (V4, None, V4),
    ],
)
async def test_fbi_with_consent(peer: str, cookie: str | None, expected: str | None) -> None:
    app = shop()
    for _ in range(2):  # the second request replays the first one's memoized outcome
        body = await fetch(app, cookie, peer=peer)
        assert body == {"client_ip": expected, "visitor_ip": expected, "granted": True}


async def test_fbi_is_not_read_without_consent() -> None:
    app = shop(consent=False)
    for _ in range(2):
        body = await fetch(app, f"_fbi={V6}")
        assert body["granted"] is False
        assert body["client_ip"] == V4


async def test_fbi_behind_a_trusted_proxy() -> None:
    app = shop(trusted_proxies=["10.0.0.0/8"])
    body = await fetch(app, f"_fbi={V6}", peer="10.0.0.1", **{"x-forwarded-for": V4})
    assert body["client_ip"] == V6
    body = await fetch(app, f"_fbi={V6}", peer="10.0.0.1", **{"x-forwarded-for": OWN_V6})
    assert body["client_ip"] == OWN_V6


def test_fbi_through_the_wsgi_adapter() -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("content-type", "application/json")])
        return [json.dumps({"client_ip": environ["capi"].client_ip}).encode()]

    wrapped = CAPIWSGIMiddleware(app, dry_run=True, consent=True)
    transport = httpx.WSGITransport(app=wrapped, remote_addr=V4)
    with httpx.Client(transport=transport, base_url="https://shop.example.com") as client:
        assert client.get("/", headers={"cookie": f"_fbi={V6}"}).json() == {"client_ip": V6}
        assert client.get("/", headers={"cookie": "_fbi=fd00::1"}).json() == {"client_ip": V4}
        assert client.get("/").json() == {"client_ip": V4}
