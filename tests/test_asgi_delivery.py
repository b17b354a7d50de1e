"""An event tracked in a request arrives at the fake Graph API (real HTTP on 127.0.0.1) with every
match key the request carried, and the ids and cookie values the page was given."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from capi_middleware.asgi import CAPIMiddleware
from capi_middleware.normalize import sha256_hex
from capi_middleware.testing.fake import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID, FakeGraphAPI

pytestmark = pytest.mark.anyio

EMAIL = " John_Smith@Gmail.com "
EMAIL_HASH = "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
PHONE = "+1 (616) 954-78 88"
PHONE_HASH = sha256_hex("16169547888")
UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15"


def options(fake: FakeGraphAPI, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "pixel_id": FAKE_PIXEL_ID,
        "access_token": FAKE_ACCESS_TOKEN,
        "graph_url": fake.url,
        "flush_interval": 0.01,
        "consent": True,
    }
    base.update(extra)
    return base


def track_purchase(ctx: Any) -> dict[str, Any]:
    result = ctx.track(
        "purchase",
        user_data={"email": EMAIL, "phone": PHONE},
        value=79.99,
        currency="USD",
    )
    return {"event_id": result.event_id, "status": result.status, "fbq": result.fbq()}


def starlette_app(**opts: Any) -> Any:
    async def buy(request: Request) -> Response:
        return JSONResponse(track_purchase(request.state.capi))

    app = Starlette(routes=[Route("/buy", buy)])
    app.add_middleware(CAPIMiddleware, **opts)
    return app


def fastapi_app(**opts: Any) -> Any:
    app = FastAPI()

    @app.get("/buy")
    async def buy(request: FastAPIRequest) -> dict[str, Any]:
        return track_purchase(request.state.capi)

    app.add_middleware(CAPIMiddleware, **opts)
    return app


def middleware_of(app: Any) -> CAPIMiddleware:
    """The CAPIMiddleware instance inside a Starlette app's built stack."""
    node = app.middleware_stack
    while node is not None and not isinstance(node, CAPIMiddleware):
        node = getattr(node, "app", None)
    assert isinstance(node, CAPIMiddleware)
    return node


async def get(app: Any, url: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=("2001:4860:4860::8888", 50000))
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.get(url, **kwargs)


@pytest.mark.parametrize("factory", [starlette_app, fastapi_app])
async def test_event_arrives_with_every_match_key(fake: FakeGraphAPI, factory: Any) -> None:
    app = factory(**options(fake))
    response = await get(
        app,
        "https://www.shop.example.com/buy?sku=9&fbclid=IwAR-Click_1",
        headers={
            "user-agent": UA,
            "referer": "https://l.facebook.com/",
            "cookie": "_fbp=fb.2.1700000000000.987654",
        },
    )
    body = response.json()
    assert body["status"] == "queued"
    assert fake.wait_for_events(1, timeout=10)
    middleware = middleware_of(app)
    assert middleware.close(5)
    [event] = fake.events
    user = event["user_data"]
    assert user["em"] == [EMAIL_HASH]
    assert user["ph"] == [PHONE_HASH]
    assert user["client_ip_address"] == "2001:4860:4860::8888"
    assert user["client_user_agent"] == UA
    assert user["fbp"] == "fb.2.1700000000000.987654"
    set_cookie = {h.split("=", 1)[0]: h for h in response.headers.get_list("set-cookie")}
    minted_fbc = set_cookie["_fbc"].split(";", 1)[0].split("=", 1)[1]
    assert user["fbc"] == minted_fbc  # the cookie the browser got is the one Meta got
    assert user["fbc"].endswith(".IwAR-Click_1")
    assert event["event_name"] == "Purchase"
    assert event["event_id"] == body["event_id"]
    assert f'"eventID": "{body["event_id"]}"' in body["fbq"]
    assert event["action_source"] == "website"
    assert event["event_source_url"] == "https://www.shop.example.com/buy?sku=9&fbclid=IwAR-Click_1"
    assert event["referrer_url"] == "https://l.facebook.com/"
    assert event["custom_data"] == {"value": 79.99, "currency": "USD"}
    assert abs(event["event_time"] - time.time()) < 600
    assert "data_processing_options" not in event or event["data_processing_options"] == []
    stats = middleware.stats()
    assert stats.requests == 1
    assert stats.delivery is not None
    assert stats.delivery.delivered == 1


async def test_gpc_sends_limited_data_use(fake: FakeGraphAPI) -> None:
    app = starlette_app(**options(fake, consent=None))
    response = await get(
        app,
        "https://example.com/buy",
        headers={"user-agent": UA, "cookie": "cookie_consent=accept", "sec-gpc": "1"},
    )
    assert response.json()["status"] == "queued"
    assert fake.wait_for_events(1, timeout=10)
    middleware_of(app).close(5)
    [event] = fake.events
    assert event["data_processing_options"] == ["LDU"]
    assert event["data_processing_options_country"] == 0
    assert event["data_processing_options_state"] == 0


async def test_denied_consent_sends_nothing(fake: FakeGraphAPI) -> None:
    app = starlette_app(**options(fake, consent=None))
    response = await get(
        app,
        "https://example.com/buy",
        headers={"user-agent": UA, "cookie": "cookie_consent=reject"},
    )
    assert response.json()["status"] == "denied"
    middleware = middleware_of(app)
    assert middleware.flush(2)
    assert fake.events == []
    assert fake.attempts == 0
    assert middleware.stats().consent_denied == 1


async def test_enhancement_cookie_enriches_a_later_event(fake: FakeGraphAPI) -> None:
    async def page(request: Request) -> Response:
        ctx = request.state.capi
        user_data = dict(request.query_params)  # ?email=... on the first visit only
        result = ctx.track("Lead", user_data=user_data)
        return JSONResponse({"status": result.status})

    app = Starlette(routes=[Route("/", page)])
    app.add_middleware(CAPIMiddleware, **options(fake, enhancement_secret="test-secret"))
    first = await get(
        app, "https://example.com/?email=john_smith@gmail.com", headers={"user-agent": UA}
    )
    assert first.json()["status"] == "queued"
    remembered = [h for h in first.headers.get_list("set-cookie") if h.startswith("_capi_ud=")]
    assert len(remembered) == 1
    assert "john_smith" not in remembered[0]
    value = remembered[0].split(";", 1)[0].split("=", 1)[1]
    second = await get(
        app, "https://example.com/", headers={"user-agent": UA, "cookie": f"_capi_ud={value}"}
    )
    assert second.json()["status"] == "queued"
    # A forged cookie is ignored: that event goes out without em.
    third = await get(
        app,
        "https://example.com/",
        headers={"user-agent": UA, "cookie": f"_capi_ud={value[:-2]}xx"},
    )
    assert third.json()["status"] == "queued"
    assert fake.wait_for_events(3, timeout=10)
    middleware_of(app).close(5)
    by_time = fake.events
    assert [e["user_data"].get("em") for e in by_time] == [[EMAIL_HASH], [EMAIL_HASH], None]
