"""_fbc / _fbp cookies end to end through CAPIMiddleware on Starlette, FastAPI and a bare ASGI app.

Meta's cookie rules are META_CAPI_REFERENCE §4: mint _fbc from fbclid, keep a valid one with the
same click id, mint _fbp only when missing, re-send both, Path=/, Max-Age=90 days, SameSite=Lax,
Secure on https, never HttpOnly, Domain = registrable domain (none for localhost / IPs), only with
consent, and never replace the app's own Set-Cookie headers. Kept cookies are re-sent on document
navigations only (one refresh per page view extends Safari's cap); minting happens on any request.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
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
from capi_middleware.capture.context import RequestContext

FBC = re.compile(r"fb\.(\d+)\.(\d{13})\.(.+)")
FBP = re.compile(r"fb\.(\d+)\.(\d{13})\.(\d+)")
NOW_MS = int(time.time() * 1000)

pytestmark = pytest.mark.anyio


def describe(ctx: RequestContext) -> dict[str, Any]:
    result = ctx.track("Purchase", value=1, currency="USD")
    return {
        "fbc": ctx.fbc,
        "fbp": ctx.fbp,
        "fbclid": ctx.fbclid,
        "granted": ctx.consent.granted,
        "status": result.status,
    }


def add_own_cookies(response: Response) -> None:
    response.set_cookie("session", "abc123", httponly=True)
    response.set_cookie("theme", "dark")


def starlette_app(**options: Any) -> Any:
    async def page(request: Request) -> Response:
        return JSONResponse(describe(request.state.capi))

    async def own(request: Request) -> Response:
        response = JSONResponse(describe(request.state.capi))
        add_own_cookies(response)
        return response

    async def cached(request: Request) -> Response:
        return JSONResponse(
            describe(request.state.capi), headers={"cache-control": "public, max-age=600"}
        )

    app = Starlette(routes=[Route("/", page), Route("/own", own), Route("/cached", cached)])
    app.add_middleware(CAPIMiddleware, **options)
    return app


def fastapi_app(**options: Any) -> Any:
    app = FastAPI()

    @app.get("/")
    async def page(request: FastAPIRequest) -> dict[str, Any]:
        return describe(request.state.capi)

    @app.get("/own")
    async def own(request: FastAPIRequest) -> Response:
        response = JSONResponse(describe(request.state.capi))
        add_own_cookies(response)
        return response

    @app.get("/cached")
    async def cached(request: FastAPIRequest, response: Response) -> dict[str, Any]:
        response.headers["cache-control"] = "public, max-age=600"
        return describe(request.state.capi)

    app.add_middleware(CAPIMiddleware, **options)
    return app


Send = Callable[[dict[str, Any]], Awaitable[None]]


def bare_app(**options: Any) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Send) -> None:
        assert scope["type"] == "http"
        body = json.dumps(describe(scope["state"]["capi"])).encode()
        headers = [(b"content-type", b"application/json")]
        if scope["path"] == "/own":
            headers += [
                (b"set-cookie", b"session=abc123; HttpOnly; Path=/"),
                (b"set-cookie", b"theme=dark; Path=/"),
            ]
        if scope["path"] == "/cached":
            headers.append((b"cache-control", b"public, max-age=600"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return CAPIMiddleware(app, **options)


APPS = {"starlette": starlette_app, "fastapi": fastapi_app, "bare": bare_app}


@pytest.fixture(params=sorted(APPS))
def make_app(request: pytest.FixtureRequest) -> Callable[..., Any]:
    factory = APPS[request.param]

    def make(**options: Any) -> Any:
        options.setdefault("dry_run", True)
        options.setdefault("consent", True)
        return factory(**options)

    return make


async def get(
    app: Any,
    url: str = "https://shop.example.com/",
    *,
    cookies: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=("8.8.8.8", 51000))
    # A browser's page load (a request no browser made gets no minted cookie).
    all_headers = {"user-agent": "Mozilla/5.0", **(headers or {})}
    if cookies is not None:
        all_headers["cookie"] = cookies
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.get(url, headers=all_headers)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Set-Cookie headers by cookie name (full header value)."""
    out: dict[str, str] = {}
    for header in response.headers.get_list("set-cookie"):
        name = header.split("=", 1)[0]
        assert name not in out, f"{name} set twice"
        out[name] = header
    return out


# What a browser sends when it loads a page, and when a page's script calls fetch().
NAVIGATION = {
    "sec-fetch-dest": "document",
    "sec-fetch-mode": "navigate",
    "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
}
FETCH = {"sec-fetch-dest": "empty", "sec-fetch-mode": "cors", "accept": "application/json"}


def cookie_value(header: str) -> str:
    return header.split(";", 1)[0].split("=", 1)[1]


def attributes(header: str) -> list[str]:
    return [part.strip() for part in header.split(";")[1:]]


async def test_fresh_visitor_gets_fbp_with_meta_attributes(make_app: Any) -> None:
    response = await get(make_app())
    assert response.status_code == 200
    cookies = set_cookies(response)
    assert set(cookies) == {"_fbp"}
    value = cookie_value(cookies["_fbp"])
    match = FBP.fullmatch(value)
    assert match is not None
    assert match[1] == "1"  # Domain=example.com: 2 labels - 1
    assert abs(int(match[2]) - NOW_MS) < 3_600_000
    assert 0 <= int(match[3]) <= 2_147_483_647
    assert attributes(cookies["_fbp"]) == [
        "Path=/",
        "Domain=example.com",
        "Max-Age=7776000",
        "SameSite=Lax",
        "Secure",
    ]
    # The value minted for the response is the one the request's events use.
    assert response.json()["fbp"] == value


async def test_fbclid_in_query_mints_fbc_byte_for_byte(make_app: Any) -> None:
    response = await get(make_app(), "https://www.shop.example.co.uk/?x=1&fbclid=IwAR2xYz_Ab-C9")
    cookies = set_cookies(response)
    fbc = cookie_value(cookies["_fbc"])
    match = FBC.fullmatch(fbc)
    assert match is not None
    assert match[3] == "IwAR2xYz_Ab-C9"
    assert match[1] == "2"  # example.co.uk (eTLD+1 by the Public Suffix List): 3 labels - 1
    assert "Domain=example.co.uk" in attributes(cookies["_fbc"])
    assert "HttpOnly" not in cookies["_fbc"]
    body = response.json()
    assert body["fbc"] == fbc
    assert body["fbclid"] == "IwAR2xYz_Ab-C9"
    assert body["status"] == "dry_run"


async def test_fbclid_from_referer(make_app: Any) -> None:
    response = await get(
        make_app(),
        "https://example.com/",
        headers={"referer": "https://example.com/ad?fbclid=FromReferer123"},
    )
    fbc = cookie_value(set_cookies(response)["_fbc"])
    assert fbc.endswith(".FromReferer123")


async def test_query_fbclid_wins_over_referer(make_app: Any) -> None:
    response = await get(
        make_app(),
        "https://example.com/?fbclid=Query1",
        headers={"referer": "https://example.com/?fbclid=Referer2"},
    )
    assert cookie_value(set_cookies(response)["_fbc"]).endswith(".Query1")


async def test_same_fbclid_keeps_cookie_and_creation_time(make_app: Any) -> None:
    existing = f"fb.1.{NOW_MS - 86_400_000}.SameClick"
    response = await get(
        make_app(),
        "https://example.com/?fbclid=SameClick",
        cookies=f"_fbc={existing}",
        headers=NAVIGATION,
    )
    # Re-sent unchanged, which extends its life past Safari's 7-day cap.
    assert cookie_value(set_cookies(response)["_fbc"]) == existing
    assert response.json()["fbc"] == existing


async def test_new_fbclid_replaces_fbc(make_app: Any) -> None:
    existing = f"fb.1.{NOW_MS - 86_400_000}.OldClick"
    response = await get(
        make_app(), "https://example.com/?fbclid=NewClick", cookies=f"_fbc={existing}"
    )
    fbc = cookie_value(set_cookies(response)["_fbc"])
    assert fbc != existing
    assert fbc.endswith(".NewClick")


async def test_valid_cookies_are_never_replaced_but_resent(make_app: Any) -> None:
    fbp = f"fb.1.{NOW_MS - 5_000}.1234567"
    fbc = f"fb.1.{NOW_MS - 5_000}.Click.AbCdEfGh"  # Parameter Builder's 5th segment kept
    response = await get(make_app(), cookies=f"_fbp={fbp}; _fbc={fbc}", headers=NAVIGATION)
    cookies = set_cookies(response)
    assert cookie_value(cookies["_fbp"]) == fbp
    assert cookie_value(cookies["_fbc"]) == fbc
    assert attributes(cookies["_fbp"]) == [
        "Path=/",
        "Domain=example.com",
        "Max-Age=7776000",
        "SameSite=Lax",
        "Secure",
    ]


@pytest.mark.parametrize(
    ("headers", "resent"),
    [
        (NAVIGATION, True),
        ({"sec-fetch-dest": "document"}, True),
        ({"sec-fetch-mode": "navigate", "sec-fetch-dest": "iframe"}, True),
        ({"Sec-Fetch-Dest": " Document "}, True),
        # No Fetch Metadata (older browsers): an Accept that asks for HTML is a page load.
        ({"accept": "text/html,*/*;q=0.8"}, True),
        ({"accept": "TEXT/HTML"}, True),
        # Sub-resources, fetch() and XHR: the page load already refreshed the cookies.
        (FETCH, False),
        ({"sec-fetch-dest": "image", "sec-fetch-mode": "no-cors", "accept": "text/html"}, False),
        ({"sec-fetch-dest": "script", "accept": "text/html"}, False),
        ({"sec-fetch-mode": "cors", "accept": "text/html"}, False),
        ({"accept": "application/json"}, False),
        ({"accept": "*/*"}, False),
        ({}, False),
    ],
)
async def test_kept_cookies_are_resent_on_navigations_only(
    make_app: Any, headers: dict[str, str], resent: bool
) -> None:
    fbp = f"fb.1.{NOW_MS - 5_000}.1234567"
    fbc = f"fb.1.{NOW_MS - 5_000}.Click"
    response = await get(make_app(), cookies=f"_fbp={fbp}; _fbc={fbc}", headers=headers)
    cookies = set_cookies(response)
    assert set(cookies) == ({"_fbc", "_fbp"} if resent else set())
    # Either way the request's events carry the visitor's cookies.
    body = response.json()
    assert (body["fbp"], body["fbc"]) == (fbp, fbc)


async def test_minting_happens_on_any_request(make_app: Any) -> None:
    # An API call is the first request a new visitor makes: _fbp is minted there.
    response = await get(make_app(), headers=FETCH)
    assert set(set_cookies(response)) == {"_fbp"}
    # A new click id on a fetch: the new _fbc goes out, the kept _fbp waits for a page load.
    fbp = f"fb.1.{NOW_MS - 5_000}.1234567"
    response = await get(
        make_app(),
        "https://example.com/?fbclid=NewClick",
        cookies=f"_fbp={fbp}; _fbc=fb.1.{NOW_MS - 5_000}.OldClick",
        headers=FETCH,
    )
    cookies = set_cookies(response)
    assert set(cookies) == {"_fbc"}
    assert cookie_value(cookies["_fbc"]).endswith(".NewClick")
    assert response.json()["fbp"] == fbp


async def test_repeated_visits_resend_the_same_headers(make_app: Any) -> None:
    # The second request reuses the memoized validation: same answer as the first.
    app = make_app()
    fbp = f"fb.1.{NOW_MS - 5_000}.99"
    first = await get(app, cookies=f"_fbp={fbp}", headers=NAVIGATION)
    second = await get(app, cookies=f"_fbp={fbp}", headers=NAVIGATION)
    assert set_cookies(first) == set_cookies(second)
    assert cookie_value(set_cookies(second)["_fbp"]) == fbp
    other_scheme = await get(app, "http://example.com/", cookies=f"_fbp={fbp}", headers=NAVIGATION)
    assert "Secure" not in attributes(set_cookies(other_scheme)["_fbp"])


@pytest.mark.parametrize(
    "bad",
    [
        "fb.1.123.456",
        "garbage",
        "fb.1.1700000000000.1,Domain=evil.com",
        "fb.1.1700000000000.1\r\nSet-Cookie: x=1",
        "fb.1." + "9" * 13 + ".1",  # a creation time in the far future
    ],
)
async def test_malformed_cookies_are_ignored_never_echoed(make_app: Any, bad: str) -> None:
    response = await get(make_app(), cookies=f'_fbp="{bad}"; _fbc={bad}')
    cookies = set_cookies(response)
    assert "_fbc" not in cookies
    assert FBP.fullmatch(cookie_value(cookies["_fbp"]))
    for header in response.headers.get_list("set-cookie"):
        assert bad not in header
        assert "evil" not in header


async def test_http_has_no_secure_attribute(make_app: Any) -> None:
    response = await get(make_app(), "http://example.com/")
    assert "Secure" not in attributes(set_cookies(response)["_fbp"])


@pytest.mark.parametrize(
    ("url", "index"),
    [
        ("http://localhost:8000/", "0"),
        ("http://127.0.0.1:8000/", "0"),
        ("http://[::1]:8000/", "0"),
    ],
)
async def test_localhost_and_ip_hosts_get_host_only_cookies(
    make_app: Any, url: str, index: str
) -> None:
    response = await get(make_app(), url)
    header = set_cookies(response)["_fbp"]
    assert not any(a.startswith("Domain=") for a in attributes(header))
    match = FBP.fullmatch(cookie_value(header))
    assert match is not None
    assert match[1] == index


async def test_cookie_domain_option(make_app: Any) -> None:
    response = await get(make_app(cookie_domain="shop.example.com"), "https://a.shop.example.com/")
    header = set_cookies(response)["_fbp"]
    assert "Domain=shop.example.com" in attributes(header)
    assert cookie_value(header).startswith("fb.2.")


async def test_set_fbp_off(make_app: Any) -> None:
    response = await get(make_app(set_fbp=False), "https://example.com/?fbclid=Abc")
    assert set(set_cookies(response)) == {"_fbc"}


async def test_apps_own_cookies_are_preserved(make_app: Any) -> None:
    response = await get(make_app(), "https://example.com/own?fbclid=Abc")
    cookies = set_cookies(response)
    assert set(cookies) == {"session", "theme", "_fbc", "_fbp"}
    assert cookie_value(cookies["session"]) == "abc123"
    assert "httponly" in cookies["session"].lower()
    assert cookie_value(cookies["theme"]) == "dark"


async def test_no_cookies_without_consent(make_app: Any) -> None:
    app = make_app(consent=None)  # the default policy: opt-in required, no signal here
    response = await get(app, "https://example.com/own?fbclid=Abc")
    cookies = set_cookies(response)
    assert set(cookies) == {"session", "theme"}
    body = response.json()
    assert body == {
        "fbc": None,
        "fbp": None,
        "fbclid": "Abc",
        "granted": False,
        "status": "denied",
    }


async def test_existing_cookies_not_resent_without_consent(make_app: Any) -> None:
    fbp = f"fb.1.{NOW_MS}.42"
    response = await get(make_app(consent=False), cookies=f"_fbp={fbp}")
    assert response.headers.get_list("set-cookie") == []
    # The visitor's own cookie is still read; it is just not extended or sent.
    assert response.json()["fbp"] == fbp
    assert response.json()["status"] == "denied"


async def test_consent_cookie_grants(make_app: Any) -> None:
    response = await get(make_app(consent=None), cookies="cookie_consent=accept")
    assert "_fbp" in set_cookies(response)
    assert response.json()["granted"] is True


async def test_shared_cacheable_response_gets_no_cookies(make_app: Any) -> None:
    # A CDN would hand this visitor's minted _fbp to everyone after them.
    response = await get(make_app(), "https://example.com/cached?fbclid=Abc")
    assert response.headers.get_list("set-cookie") == []
    assert response.json()["status"] == "dry_run"


async def test_each_request_mints_its_own_fbp(make_app: Any) -> None:
    app = make_app()
    first = cookie_value(set_cookies(await get(app))["_fbp"])
    second = cookie_value(set_cookies(await get(app))["_fbp"])
    assert first != second
