"""The signed enhancement cookie is bound to its site (issue 10, item 4).

Two sites that share an ``enhancement_secret`` (one agency, one config template) must not accept
each other's cookies: it would carry one site's visitor's hashed email into another site's events.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from capi_middleware.asgi import CAPIMiddleware
from capi_middleware.normalize import sha256_hex

pytestmark = pytest.mark.anyio

SECRET = "one-secret-shared-by-two-sites"
EMAIL = "jane.doe@example.com"


def site(**options: Any) -> Any:
    async def signup(request: Request) -> Response:
        request.state.capi.track("Lead", user_data={"email": EMAIL})
        return JSONResponse({})

    async def page(request: Request) -> Response:
        remembered = request.state.capi.remembered()
        return JSONResponse({key: list(values) for key, values in remembered.items()})

    app = Starlette(routes=[Route("/signup", signup), Route("/", page)])
    return CAPIMiddleware(app, dry_run=True, consent=True, enhancement_secret=SECRET, **options)


async def get(app: Any, url: str, cookie: str | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=("8.8.8.8", 1))
    headers = {"user-agent": "UA"} if cookie is None else {"user-agent": "UA", "cookie": cookie}
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.get(url, headers=headers)


async def signed_cookie(app: Any, url: str) -> str:
    response = await get(app, url)
    (cookie,) = [c for c in response.headers.get_list("set-cookie") if c.startswith("_capi_ud=")]
    return cookie.split(";", 1)[0]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"pixel_id": "111", "access_token": "A"}, {"pixel_id": "222", "access_token": "B"}),
        ({"cookie_domain": "shop-a.com"}, {"cookie_domain": "shop-b.com"}),
    ],
)
async def test_a_cookie_signed_for_one_site_is_refused_by_another(
    a: dict[str, Any], b: dict[str, Any]
) -> None:
    site_a, site_b = site(**a), site(**b)
    host_a = f"https://www.{a.get('cookie_domain', 'shop-a.com')}"
    host_b = f"https://www.{b.get('cookie_domain', 'shop-b.com')}"
    cookie = await signed_cookie(site_a, f"{host_a}/signup")
    # Its own site reads it back...
    assert (await get(site_a, f"{host_a}/", cookie)).json() == {"em": [sha256_hex(EMAIL)]}
    # ...the other site, with the same secret, ignores it.
    assert (await get(site_b, f"{host_b}/", cookie)).json() == {}
