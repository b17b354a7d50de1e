"""The framework matrix: one visit with an fbclid and one purchase on every framework we support.

Each app captures the client IP, user agent and fbclid, sets ``_fbc`` from the fbclid, and its
Purchase reaches the fake Graph API (real HTTP on 127.0.0.1) with that same ``_fbc``. ASGI apps go
through ``httpx.ASGITransport``, WSGI apps through ``httpx.WSGITransport`` (no Starlette
TestClient: it warns on Starlette >= 1.3).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from apps import django_site, frameworks

from capi_middleware.config import CAPIConfig
from capi_middleware.delivery.sender import get_sender
from capi_middleware.testing.fake import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID, FakeGraphAPI

CLIENT_IP = "8.8.8.8"
UA = "Mozilla/5.0 (Macintosh) FrameworkMatrix/1.0"
FBCLID = "IwAR0matrix_Click-id42"  # real click ids: [A-Za-z0-9_-]
BASE = "https://shop.example.com"


def django_wsgi(**options: Any) -> Any:
    django_site.configure()
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import override_settings

    with override_settings(CAPI=options):
        return WSGIHandler()


def django_asgi(**options: Any) -> Any:
    django_site.configure()
    from django.core.handlers.asgi import ASGIHandler
    from django.test import override_settings

    with override_settings(CAPI=options):
        return ASGIHandler()


# name -> (factory, "asgi" | "wsgi", landing path, buy path, buy method)
FRAMEWORKS: dict[str, tuple[Callable[..., Any], str, str, str, str]] = {
    "starlette": (frameworks.starlette_app, "asgi", "/landing", "/buy", "POST"),
    "fastapi": (frameworks.fastapi_app, "asgi", "/landing", "/buy", "POST"),
    "litestar": (frameworks.litestar_app, "asgi", "/landing", "/buy", "POST"),
    "quart": (frameworks.quart_app, "asgi", "/landing", "/buy", "POST"),
    "flask": (frameworks.flask_app, "wsgi", "/landing", "/buy", "POST"),
    "django-wsgi": (django_wsgi, "wsgi", "/landing", "/buy", "GET"),
    "django-asgi": (django_asgi, "asgi", "/landing", "/async-buy", "GET"),
}


def visit_and_buy(app: Any, kind: str, landing: str, buy: str, method: str) -> tuple[Any, ...]:
    """Land with an fbclid, then buy, as one browser (the cookie jar carries _fbc)."""
    headers = {"user-agent": UA}
    if kind == "wsgi":
        transport = httpx.WSGITransport(app=app, remote_addr=CLIENT_IP)
        with httpx.Client(transport=transport, base_url=BASE, headers=headers) as c:
            first = c.get(f"{landing}?fbclid={FBCLID}")
            jar_fbc = c.cookies.get("_fbc")
            second = c.request(method, buy)
        return first, jar_fbc, second

    async def go() -> tuple[Any, ...]:
        transport = httpx.ASGITransport(app=app, client=(CLIENT_IP, 1234))
        async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as c:
            first = await c.get(f"{landing}?fbclid={FBCLID}")
            jar_fbc = c.cookies.get("_fbc")
            second = await c.request(method, buy)
        return first, jar_fbc, second

    return asyncio.run(go())


@pytest.mark.parametrize("name", list(FRAMEWORKS))
def test_capture_cookie_and_delivery(name: str, fake: FakeGraphAPI) -> None:
    factory, kind, landing, buy, method = FRAMEWORKS[name]
    options = {
        "pixel_id": FAKE_PIXEL_ID,
        "access_token": FAKE_ACCESS_TOKEN,
        "graph_url": fake.url,
        "consent": True,
        "flush_interval": 0.05,
    }
    app = factory(**options)
    sender = get_sender(CAPIConfig(**options))  # the process's sender for this config
    try:
        first, jar_fbc, second = visit_and_buy(app, kind, landing, buy, method)

        assert first.status_code == 200, first.text
        seen = first.json()
        assert seen["client_ip"] == CLIENT_IP
        assert seen["user_agent"] == UA
        assert seen["fbclid"] == FBCLID
        assert seen["event_source_url"] == f"{BASE}{landing}?fbclid={FBCLID}"
        assert re.fullmatch(rf"fb\.1\.\d{{13}}\.{re.escape(FBCLID)}", seen["fbc"])
        assert jar_fbc == seen["fbc"]  # Set-Cookie reached the browser

        assert second.status_code in (200, 201), second.text
        bought = second.json()
        assert bought["status"] == "queued"
        assert sender.flush(10)
    finally:
        sender.close(5)

    purchases = [e for e in fake.events if e["event_name"] == "Purchase"]
    assert len(purchases) == 1
    event = purchases[0]
    assert event["event_id"] == bought["event_id"]
    assert event["user_data"]["fbc"] == jar_fbc
    assert event["user_data"]["client_ip_address"] == CLIENT_IP
    assert event["user_data"]["client_user_agent"] == UA
    assert event["custom_data"]["value"] == frameworks.PRICE
    assert event["custom_data"]["currency"] == frameworks.CURRENCY
    assert event["action_source"] == "website"
    assert event["event_source_url"] == f"{BASE}{buy}"


@pytest.mark.parametrize("name", ["starlette", "fastapi", "litestar", "quart", "flask"])
def test_current_is_the_request_context(name: str) -> None:
    factory, kind, landing, buy, method = FRAMEWORKS[name]
    app = factory(consent=True, dry_run=True)
    first, _, _ = visit_and_buy(app, kind, landing, buy, method)
    # Sync endpoints run in a worker thread (FastAPI): the context travels with them.
    assert first.json()["current"] is True
