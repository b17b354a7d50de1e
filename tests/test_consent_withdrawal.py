"""Withdrawn consent removes what we set (issue 10, item 3).

A visitor who had consented and now says no gets, on their next page load, a ``Max-Age=0``
Set-Cookie for each of our cookies they still carry: ``_fbc``, ``_fbp`` (where we mint it) and
the signed enhancement cookie, with the Domain they were set with. Once: the browser drops them,
so the next request carries none and gets nothing. No signal at all is not a "no".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from capi_middleware import CAPIMiddleware, CAPIWSGIMiddleware
from capi_middleware.consent import site_cookie

pytestmark = pytest.mark.anyio

PAGE = {"sec-fetch-dest": "document", "sec-fetch-mode": "navigate"}
API = {"sec-fetch-dest": "empty", "sec-fetch-mode": "cors"}


async def signup(request: Request) -> Response:
    request.state.capi.track("Lead", user_data={"email": "jane@example.com"})
    return JSONResponse({})


def shop(**options: Any) -> Any:
    options.setdefault("consent", site_cookie())
    app = Starlette(routes=[Route("/", signup)])
    return CAPIMiddleware(app, dry_run=True, enhancement_secret="s3cret", **options)


async def get(app: Any, url: str, cookies: dict[str, str], headers: dict[str, str]) -> Any:
    transport = httpx.ASGITransport(app=app, client=("8.8.8.8", 1))
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(url, headers={**headers, "cookie": cookie})
    return response.headers.get_list("set-cookie")


def jar(set_cookies: Iterable[str]) -> dict[str, str]:
    return {c.split("=", 1)[0]: c.split(";", 1)[0].split("=", 1)[1] for c in set_cookies}


def expired(set_cookies: Iterable[str]) -> dict[str, str]:
    """name -> the attributes of each Set-Cookie that removes a cookie."""
    return {c.split("=", 1)[0]: c.split(";", 1)[1].strip() for c in set_cookies if "Max-Age=0" in c}


async def consented_visit(app: Any) -> dict[str, str]:
    url = "https://www.shop.example/?fbclid=Click-1"
    cookies = jar(await get(app, url, {"cookie_consent": "yes"}, PAGE))
    assert set(cookies) == {"_fbc", "_fbp", "_capi_ud"}
    return cookies


async def test_a_withdrawal_expires_our_cookies_on_the_next_page_load_once() -> None:
    app = shop()
    ours = await consented_visit(app)
    withdrawn = {**ours, "cookie_consent": "no"}
    url = "https://www.shop.example/"

    first = await get(app, url, withdrawn, PAGE)
    assert expired(first) == {
        "_fbc": "Path=/; Domain=shop.example; Max-Age=0; SameSite=Lax; Secure",
        "_fbp": "Path=/; Domain=shop.example; Max-Age=0; SameSite=Lax; Secure",
        "_capi_ud": "Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure",
    }
    assert len(first) == 3  # nothing else: no cookie is set without consent
    # The same request again (a memoized capture) says the same.
    assert sorted(await get(app, url, withdrawn, PAGE)) == sorted(first)
    # The browser has dropped them: nothing more is said.
    assert await get(app, url, {"cookie_consent": "no"}, PAGE) == []


async def test_only_on_a_page_load() -> None:
    app = shop()
    ours = await consented_visit(app)
    assert (
        await get(app, "https://www.shop.example/api", {**ours, "cookie_consent": "no"}, API) == []
    )


async def test_no_signal_is_not_a_withdrawal() -> None:
    app = shop()
    ours = await consented_visit(app)
    # The consent cookie gone (expired, cleared): no answer, so nothing of ours is touched.
    assert await get(app, "https://www.shop.example/", ours, PAGE) == []


async def test_fbp_is_left_alone_where_we_do_not_mint_it() -> None:
    app = shop(set_fbp=False)
    url = "https://www.shop.example/?fbclid=Click-1"
    pixel_fbp = "fb.2.1700000000000.12345"
    ours = jar(await get(app, url, {"cookie_consent": "yes", "_fbp": pixel_fbp}, PAGE))
    withdrawn = {**ours, "_fbp": pixel_fbp, "cookie_consent": "no"}
    assert set(expired(await get(app, "https://www.shop.example/", withdrawn, PAGE))) == {
        "_fbc",
        "_capi_ud",
    }


async def test_a_user_policy_that_says_no_withdraws_too() -> None:
    def policy(signals: Any) -> bool | None:
        answer = signals.header("x-consent")
        return None if answer is None else answer == "yes"

    app = shop(consent=policy, cookie_domain="shop.example")
    transport = httpx.ASGITransport(app=app, client=("8.8.8.8", 1))
    async with httpx.AsyncClient(transport=transport) as client:
        given = await client.get(
            "http://www.shop.example/?fbclid=C", headers={**PAGE, "x-consent": "yes"}
        )
        cookie = "; ".join(c.split(";", 1)[0] for c in given.headers.get_list("set-cookie"))
        refused = await client.get(
            "http://www.shop.example/", headers={**PAGE, "x-consent": "no", "cookie": cookie}
        )
    assert set(expired(refused.headers.get_list("set-cookie"))) == {"_fbc", "_fbp", "_capi_ud"}
    assert all("Secure" not in c for c in refused.headers.get_list("set-cookie"))


def test_wsgi_expires_them_too() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["capi"].track("Lead", user_data={"email": "jane@example.com"})
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    wrapped = CAPIWSGIMiddleware(
        app, dry_run=True, consent=site_cookie(), enhancement_secret="s3cret"
    )
    transport = httpx.WSGITransport(app=wrapped, remote_addr="8.8.8.8")
    with httpx.Client(transport=transport, base_url="https://www.shop.example") as client:
        given = client.get("/?fbclid=C", headers={**PAGE, "cookie": "cookie_consent=yes"})
        ours = "; ".join(c.split(";", 1)[0] for c in given.headers.get_list("set-cookie"))
        refused = client.get("/", headers={**PAGE, "cookie": f"{ours}; cookie_consent=no"})
    assert set(expired(refused.headers.get_list("set-cookie"))) == {"_fbc", "_fbp", "_capi_ud"}
