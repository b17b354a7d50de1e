"""Every example app runs, and shows deduplication end to end.

A visitor lands with an fbclid, has accepted cookies, and buys the tee. The thank-you page's
``fbq('track', "Purchase", {...}, {"eventID": ...})`` must carry the event id and custom data of the
Purchase that reached the (fake) Graph API, and that event must carry the ``_fbc`` cookie the
visitor was given. The examples read META_* variables, as users would run them.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from live import free_port, wait_until_serving

from capi_middleware.config import CAPIConfig
from capi_middleware.delivery.sender import get_sender
from capi_middleware.testing.fake import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID, FakeGraphAPI

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FBCLID = "IwAR_example-Click_9"
TRACK_PREFIX = "fbq('track', \"Purchase\", "


@pytest.fixture(autouse=True)
def meta_env(fake: FakeGraphAPI, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The examples read META_* as users run them: point those at the fake."""
    monkeypatch.setenv("META_PIXEL_ID", FAKE_PIXEL_ID)
    monkeypatch.setenv("META_ACCESS_TOKEN", FAKE_ACCESS_TOKEN)
    monkeypatch.setenv("META_GRAPH_URL", fake.url)
    yield
    get_sender(CAPIConfig.from_env()).close(5)


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / name / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Litestar resolves annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def pixel_purchase(page: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The custom data and options of the page's fbq Purchase call."""
    start = page.index(TRACK_PREFIX) + len(TRACK_PREFIX)
    decoder = json.JSONDecoder()
    params, end = decoder.raw_decode(page, start)
    assert page[end : end + 2] == ", "
    options, _ = decoder.raw_decode(page, end + 2)
    return params, options


def assert_deduplicated(fake: FakeGraphAPI, landing: str, thanks: str, fbc: str | None) -> None:
    assert f"fbq('init', \"{FAKE_PIXEL_ID}\")" in landing
    assert "fbq('consent', 'grant')" in landing
    assert fbc is not None
    assert re.fullmatch(rf"fb\.\d\.\d{{13}}\.{FBCLID}", fbc)
    params, options = pixel_purchase(thanks)
    assert fake.wait_for_events(1, timeout=10)
    [event] = [e for e in fake.events if e["event_name"] == "Purchase"]
    assert options == {"eventID": event["event_id"]}
    assert params["value"] == event["custom_data"]["value"] == 29.0
    assert params["currency"] == event["custom_data"]["currency"] == "USD"
    assert params["contents"] == event["custom_data"]["contents"]
    assert event["user_data"]["fbc"] == fbc
    assert event["user_data"]["em"] == [hashlib.sha256(b"jane@example.com").hexdigest()]


def browse_asgi(app: Any) -> tuple[str, str, str | None]:
    async def go() -> tuple[str, str, str | None]:
        transport = httpx.ASGITransport(app=app, client=("8.8.8.8", 1234))
        async with httpx.AsyncClient(
            transport=transport,
            base_url="https://shop.example.com",
            cookies={"cookie_consent": "granted"},
        ) as c:
            landing = await c.get(f"/?fbclid={FBCLID}")
            assert landing.status_code == 200, landing.text
            thanks = await c.post("/checkout?sku=tee")
            assert thanks.status_code == 200, thanks.text
            return landing.text, thanks.text, c.cookies.get("_fbc")

    return asyncio.run(go())


@pytest.mark.parametrize("name", ["starlette_shop", "fastapi_shop", "litestar_app", "quart_shop"])
def test_asgi_example(name: str, fake: FakeGraphAPI) -> None:
    module = load_example(name)
    landing, thanks, fbc = browse_asgi(module.app)
    assert_deduplicated(fake, landing, thanks, fbc)


def test_flask_example(fake: FakeGraphAPI) -> None:
    module = load_example("flask_shop")
    transport = httpx.WSGITransport(app=module.app, remote_addr="8.8.8.8")
    with httpx.Client(
        transport=transport,
        base_url="https://shop.example.com",
        cookies={"cookie_consent": "granted"},
    ) as c:
        landing = c.get(f"/?fbclid={FBCLID}")
        thanks = c.post("/checkout?sku=tee")
        fbc = c.cookies.get("_fbc")
    assert thanks.status_code == 200, thanks.text
    assert_deduplicated(fake, landing.text, thanks.text, fbc)


def test_without_consent_the_page_revokes_and_nothing_is_sent(fake: FakeGraphAPI) -> None:
    module = load_example("starlette_shop")

    async def go() -> tuple[str, httpx.Cookies]:
        transport = httpx.ASGITransport(app=module.app, client=("8.8.8.8", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="https://shop.example.com") as c:
            await c.get(f"/?fbclid={FBCLID}")
            thanks = await c.post("/checkout?sku=tee")
            return thanks.text, c.cookies

    thanks, cookies = asyncio.run(go())
    assert "fbq('consent', 'revoke')" in thanks
    assert TRACK_PREFIX not in thanks
    assert "_fbc" not in cookies
    get_sender(CAPIConfig.from_env()).flush(5)
    assert fake.events == []


def test_django_example_with_its_one_command(fake: FakeGraphAPI) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "django_shop" / "app.py"),
            "runserver",
            f"127.0.0.1:{port}",
            "--noreload",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/", proc, logs=lambda: proc.communicate()[1])
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", cookies={"cookie_consent": "granted"}, timeout=10
        ) as c:
            landing = c.get(f"/?fbclid={FBCLID}")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', landing.text)
            assert token is not None, landing.text
            thanks = c.post("/checkout?sku=tee", data={"csrfmiddlewaretoken": token.group(1)})
            fbc = c.cookies.get("_fbc")
        assert thanks.status_code == 200, thanks.text
        assert_deduplicated(fake, landing.text, thanks.text, fbc)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
