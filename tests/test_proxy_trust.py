"""A client behind a trusted proxy cannot pick its own IP, cookie domain or page URL (issue 10,
item 2).

The proxy (127.0.0.1 here) appends the client's address to X-Forwarded-For and sets
X-Forwarded-Proto, as nginx, uvicorn and gunicorn setups do; whatever else the client sent
(``Forwarded``, ``X-Forwarded-Host``) passes through it untouched. Only the configured family is
believed, and the host only on opt-in, inside the cookie domain.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from capi_middleware import CAPIConfig, CAPIMiddleware

pytestmark = pytest.mark.anyio

CLIENT = "8.8.8.8"
HOSTILE = {
    # The client's own claims, passed through by the proxy.
    "forwarded": "for=1.1.1.1;proto=https;host=evil.com",
    "x-forwarded-host": "evil.com",
    # What the proxy itself wrote.
    "x-forwarded-for": f"1.1.1.1, {CLIENT}",
    "x-forwarded-proto": "https",
}


async def page(request: Request) -> Response:
    ctx = request.state.capi
    return JSONResponse({"client_ip": ctx.client_ip, "url": ctx.event_source_url})


async def visit(headers: dict[str, str], **options: Any) -> httpx.Response:
    app = CAPIMiddleware(
        Starlette(routes=[Route("/", page)]),
        trusted_proxies=("127.0.0.1",),
        consent=True,
        dry_run=True,
        **options,
    )
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport) as client:
        # A browser's page load: a request no browser made gets no minted cookie.
        return await client.get(
            "http://www.shop.example/", headers={"accept": "text/html", **headers}
        )


def cookie_domains(response: httpx.Response) -> set[str]:
    return {
        part.strip().split("=", 1)[1]
        for cookie in response.headers.get_list("set-cookie")
        for part in cookie.split(";")
        if part.strip().lower().startswith("domain=")
    }


async def test_by_default_only_x_forwarded_for_and_proto_are_believed() -> None:
    response = await visit(HOSTILE)
    assert response.json() == {"client_ip": CLIENT, "url": "https://www.shop.example/"}
    assert cookie_domains(response) == {"shop.example"}


async def test_forwarded_is_read_only_when_configured_and_then_x_forwarded_is_not() -> None:
    headers = {**HOSTILE, "forwarded": f"for=1.1.1.1, for={CLIENT};proto=https"}
    response = await visit(headers, forwarded_headers="forwarded")
    assert response.json() == {"client_ip": CLIENT, "url": "https://www.shop.example/"}
    response = await visit({"x-forwarded-for": CLIENT}, forwarded_headers="forwarded")
    assert response.json()["client_ip"] is None  # the proxy itself is no public client


async def test_the_forwarded_host_needs_the_opt_in_and_stays_inside_the_cookie_domain() -> None:
    options = {"trust_forwarded_host": True, "cookie_domain": "shop.example"}
    response = await visit(HOSTILE, **options)
    assert response.json()["url"] == "https://www.shop.example/"
    assert cookie_domains(response) == {"shop.example"}

    ours = {**HOSTILE, "x-forwarded-host": "checkout.shop.example"}
    response = await visit(ours, **options)
    assert response.json()["url"] == "https://checkout.shop.example/"
    assert cookie_domains(response) == {"shop.example"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"forwarded_headers": "both"}, "forwarded_headers [META_FORWARDED_HEADERS]"),
        ({"forwarded_headers": None}, "forwarded_headers [META_FORWARDED_HEADERS]"),
        ({"trust_forwarded_host": "yes"}, "trust_forwarded_host [META_TRUST_FORWARDED_HOST]"),
    ],
)
def test_the_options_are_validated_and_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        CAPIConfig(**options)


def test_the_options_come_from_the_environment() -> None:
    config = CAPIConfig.from_env(
        {"META_FORWARDED_HEADERS": " Forwarded ", "META_TRUST_FORWARDED_HOST": "true"}
    )
    assert (config.forwarded_headers, config.trust_forwarded_host) == ("forwarded", True)
    assert CAPIConfig().forwarded_headers == "x-forwarded"
    assert CAPIConfig().trust_forwarded_host is False
    with pytest.raises(ValueError, match="META_TRUST_FORWARDED_HOST"):
        CAPIConfig.from_env({"META_TRUST_FORWARDED_HOST": "maybe"})
