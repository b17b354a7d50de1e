"""What the adapters do to the app's response head (issue 10: item 1, "Also seen" 1 and 2).

The app's own message is never changed (an app may send one prebuilt start message for every
response), the app's return value passes through, and a cookie the app's response sets itself is
not set a second time by us.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import httpx
import pytest

from capi_middleware.asgi import CAPIMiddleware
from capi_middleware.consent.policies import ConsentSignals
from capi_middleware.wsgi import CAPIWSGIMiddleware

pytestmark = pytest.mark.anyio

# One start message for every response, as a plain ASGI app (or a cached response) keeps it.
START: dict[str, Any] = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain")],
}
START_SNAPSHOT = copy.deepcopy(START)
BODY = {"type": "http.response.body", "body": b"ok"}


async def prebuilt_app(scope: Any, receive: Any, send: Any) -> None:
    await send(START)
    await send(BODY)


def by_header(signals: ConsentSignals) -> bool:
    return signals.header("x-consent") == "yes"


async def visit(app: Any, *, consent: bool, path: str = "/") -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=("8.8.8.8", 1))
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.get(
            f"https://shop.example.com{path}",
            headers={"x-consent": "yes" if consent else "no", "accept": "text/html"},
        )


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


async def test_a_prebuilt_start_message_is_never_changed_and_no_cookie_reaches_another_visitor() -> (
    None
):
    app = CAPIMiddleware(prebuilt_app, dry_run=True, consent=by_header)

    first = await visit(app, consent=True)
    assert any(c.startswith("_fbp=") for c in set_cookies(first))
    assert START == START_SNAPSHOT

    # A visitor who did not consent gets no cookie, in particular not the first visitor's.
    second = await visit(app, consent=False)
    assert set_cookies(second) == []

    # Consenting visitors each get their own _fbp, and the shared message does not grow.
    third = await visit(app, consent=True)
    fbps = [c for c in set_cookies(third) if c.startswith("_fbp=")]
    assert len(fbps) == 1
    assert fbps != [c for c in set_cookies(first) if c.startswith("_fbp=")]
    assert START == START_SNAPSHOT


async def test_the_apps_return_value_is_returned() -> None:
    marker = object()

    async def app(scope: Any, receive: Any, send: Any) -> Any:
        if scope["type"] == "http":
            await send(START)
            await send(BODY)
        return marker

    middleware = CAPIMiddleware(app, dry_run=True, consent=True)
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [(b"host", b"example.com"), (b"accept", b"text/html")],  # a browser's
        "client": ("8.8.8.8", 1),
        "scheme": "https",
    }
    assert await middleware(scope, receive, send) is marker
    assert await middleware({"type": "websocket"}, receive, send) is marker
    assert sent
    assert sent[0] is not START


def app_setting(cookie: str) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"set-cookie", cookie.encode()), (b"set-cookie", b"theme=dark")],
            }
        )
        await send(BODY)

    return app


@pytest.mark.parametrize("name", ["_fbp", "_fbc"])
async def test_a_cookie_the_apps_response_sets_is_not_set_again(name: str) -> None:
    own = f"{name}=fb.1.1700000000000.ownvalue; Path=/; Domain=example.com"
    app = CAPIMiddleware(app_setting(own), dry_run=True, consent=True)
    response = await visit(app, consent=True, path="/?fbclid=Click1")
    cookies = set_cookies(response)
    assert [c for c in cookies if c.startswith(f"{name}=")] == [own]
    assert "theme=dark" in cookies
    other = "_fbc" if name == "_fbp" else "_fbp"
    assert len([c for c in cookies if c.startswith(f"{other}=")]) == 1  # ours, still set


@pytest.mark.parametrize("name", ["_fbp", "_fbc"])
def test_wsgi_a_cookie_the_apps_response_sets_is_not_set_again(name: str) -> None:
    own = f"{name}=fb.1.1700000000000.ownvalue; Path=/"

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Set-Cookie", own), ("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = CAPIWSGIMiddleware(app, dry_run=True, consent=True)
    with httpx.Client(
        transport=httpx.WSGITransport(app=middleware), base_url="https://shop.example.com"
    ) as client:
        response = client.get("/?fbclid=Click1", headers={"accept": "text/html"})
    cookies = set_cookies(response)
    assert [c for c in cookies if c.startswith(f"{name}=")] == [own]
    other = "_fbc" if name == "_fbp" else "_fbp"
    assert len([c for c in cookies if c.startswith(f"{other}=")]) == 1
