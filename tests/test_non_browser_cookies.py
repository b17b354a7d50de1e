"""No cookie is minted for a request no browser made (a webhook, a health check, curl).

A browser is told apart by what every browser sends: a Cookie header, Fetch Metadata
(``Sec-Fetch-*``), an ``Accept`` asking for text/html, or a User-Agent starting ``Mozilla/``.
``no_cookie_paths`` lists paths (webhooks) where no cookie is ever set, whatever the request says.
Both capture paths are covered: the full rule set and the replay of a memoized outcome.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from capi_middleware import CAPIConfig, CAPIMiddleware, CAPIWSGIMiddleware

pytestmark = pytest.mark.anyio

STRIPE = {"user-agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)", "accept": "*/*"}
FBP = "fb.1.1700000000000.42"


async def context(request: Request) -> JSONResponse:
    ctx = request.state.capi
    return JSONResponse({"fbp": ctx.fbp, "fbc": ctx.fbc})


def app(**options: Any) -> Any:
    routes = [Route("/{path:path}", context, methods=["GET", "POST"])]
    return CAPIMiddleware(Starlette(routes=routes), consent=True, dry_run=True, **options)


async def call(
    asgi_app: Any, headers: dict[str, str], url: str = "/", method: str = "GET"
) -> httpx.Response:
    transport = httpx.ASGITransport(app=asgi_app, client=("54.187.174.169", 443))
    async with httpx.AsyncClient(transport=transport, base_url="https://shop.example.com") as c:
        return await c.request(method, url, headers=headers)


def minted(response: httpx.Response) -> list[str]:
    return [v.split("=", 1)[0] for v in response.headers.get_list("set-cookie")]


async def test_a_webhook_gets_no_cookie_and_no_browser_id() -> None:
    response = await call(app(), STRIPE, "/webhooks/stripe?fbclid=AbC", "POST")
    assert minted(response) == []
    assert response.json() == {"fbp": None, "fbc": None}


@pytest.mark.parametrize(
    "headers",
    [
        {"user-agent": "curl/8.5.0", "accept": "*/*"},
        {"user-agent": "ELB-HealthChecker/2.0"},
        {"user-agent": "python-httpx/0.27", "accept": "application/json"},
        {},
    ],
    ids=["curl", "health-check", "http-library", "nothing"],
)
async def test_servers_and_scripts_get_no_cookie(headers: dict[str, str]) -> None:
    assert minted(await call(app(), headers)) == []


@pytest.mark.parametrize(
    "headers",
    [
        {"user-agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/121.0", "accept": "*/*"},
        {"user-agent": "x", "sec-fetch-mode": "cors", "sec-fetch-site": "same-origin"},
        {"user-agent": "x", "accept": "text/html,application/xhtml+xml"},
        {"user-agent": "x", "cookie": "sessionid=abc"},
    ],
    ids=["mozilla-user-agent", "fetch-metadata", "html-accept", "cookie-header"],
)
async def test_each_browser_signal_alone_gets_the_cookie(headers: dict[str, str]) -> None:
    response = await call(app(), headers, "/?fbclid=AbC")
    assert sorted(minted(response)) == ["_fbc", "_fbp"]
    assert response.json()["fbc"].endswith(".AbC")


async def test_the_memoized_outcome_does_not_mint_for_a_server_either() -> None:
    # Same Cookie (none), Host and scheme: the second and later requests replay the first's
    # memoized outcome (`capture.memo.replay`), which must still tell the two apart; a server's
    # request first must not leave a plan without the browser's _fbp for the key.
    shop = app()
    browser = {"accept": "*/*", "user-agent": "Mozilla/5.0"}
    server = {"accept": "*/*", "user-agent": "Go-http-client/1.1"}
    assert minted(await call(shop, browser)) == ["_fbp"]
    for _ in range(3):
        assert minted(await call(shop, server)) == []
        assert minted(await call(shop, browser)) == ["_fbp"]
    # And the other way round: a server's request first.
    shop = app()
    assert minted(await call(shop, server)) == []
    assert minted(await call(shop, browser)) == ["_fbp"]
    assert minted(await call(shop, server)) == []


async def test_no_cookie_paths_set_nothing_even_for_a_browser() -> None:
    shop = app(no_cookie_paths=("/webhooks/", "/healthz"))
    page = {"user-agent": "Mozilla/5.0", "accept": "text/html", "sec-fetch-mode": "navigate"}
    for _ in range(2):  # the second one would replay a memoized outcome
        assert minted(await call(shop, page, "/webhooks/paypal")) == []
        assert minted(await call(shop, page, "/healthz")) == []
        assert minted(await call(shop, page, "/")) == ["_fbp"]
    # A returning visitor's own valid cookie is still read there (never re-sent).
    returning = {**page, "cookie": f"_fbp={FBP}"}
    response = await call(shop, returning, "/webhooks/paypal")
    assert minted(response) == []
    assert response.json()["fbp"] == FBP
    assert minted(await call(shop, returning, "/")) == ["_fbp"]  # re-sent on a page load


def test_wsgi_follows_the_same_rule() -> None:
    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(environ["capi"].fbp).encode()]

    shop = CAPIWSGIMiddleware(wsgi_app, consent=True, dry_run=True, no_cookie_paths="/hooks/")

    def get(path: str, **headers: str) -> tuple[list[str], bytes]:
        seen: list[str] = []

        def start_response(
            status: str, headers_out: list[tuple[str, str]], exc: Any = None
        ) -> None:
            seen.extend(v.split("=", 1)[0] for k, v in headers_out if k.lower() == "set-cookie")

        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "shop.example.com",
            "SERVER_PORT": "443",
            "wsgi.url_scheme": "https",
            "REMOTE_ADDR": "54.187.174.169",
            **{f"HTTP_{k.upper()}": v for k, v in headers.items()},
        }
        body = b"".join(shop(environ, start_response))
        return seen, body

    assert get("/", USER_AGENT="Adyen HttpClient 1.0") == ([], b"None")
    cookies, body = get("/", USER_AGENT="Mozilla/5.0")
    assert cookies == ["_fbp"]
    assert body.startswith(b"fb.1.")
    assert get("/hooks/adyen", USER_AGENT="Mozilla/5.0", ACCEPT="text/html") == ([], b"None")


def test_no_cookie_paths_are_validated() -> None:
    with pytest.raises(ValueError, match=r"^no_cookie_paths: "):
        CAPIConfig(no_cookie_paths=("webhooks/",))
    assert CAPIConfig(no_cookie_paths="/hooks/").no_cookie_paths == ("/hooks/",)
