"""The whole proxy table of tests/rules/test_trusted_proxies.py (100+ rows of IPv4, IPv6 and
proxy cases), driven through CAPIMiddleware on a Starlette app with httpx.ASGITransport: what the
pure resolver decides is what a request's context carries, and what reaches ``track()``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from test_trusted_proxies import (
    CASES,
    CDN,
    LOCAL,
    LOCAL_FWD,
    LOCAL_FWD_HOST,
    LOCAL_HOST,
    LOCAL_HOST_SITE,
    NOBODY,
    PRIVATE,
    PRIVATE_FWD,
)

from capi_middleware import CAPIMiddleware

pytestmark = pytest.mark.anyio

_LOCAL = ("127.0.0.1", "::1")
_PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8")
# The ProxyTrust objects of the pure table, as the options a user would write.
OPTIONS: dict[int, dict[str, Any]] = {
    id(NOBODY): {"trusted_proxies": ()},
    id(LOCAL): {"trusted_proxies": _LOCAL},
    id(PRIVATE): {"trusted_proxies": _PRIVATE},
    id(CDN): {"trusted_proxies": ("173.245.48.0/20", "2400:cb00::/32")},
    id(LOCAL_FWD): {"trusted_proxies": _LOCAL, "forwarded_headers": "forwarded"},
    id(PRIVATE_FWD): {"trusted_proxies": _PRIVATE, "forwarded_headers": "forwarded"},
    id(LOCAL_HOST): {"trusted_proxies": _LOCAL, "trust_forwarded_host": True},
    id(LOCAL_FWD_HOST): {
        "trusted_proxies": _LOCAL,
        "forwarded_headers": "forwarded",
        "trust_forwarded_host": True,
    },
    id(LOCAL_HOST_SITE): {
        "trusted_proxies": _LOCAL,
        "trust_forwarded_host": True,
        "cookie_domain": "example.com",
    },
}
ROWS = [
    pytest.param(OPTIONS[id(trust)], peer, headers, ip, scheme, host, id=name)
    for name, trust, peer, headers, ip, scheme, host in CASES
    if peer is not None  # an ASGI server always reports some peer; None is covered purely
]


async def page(request: Request) -> Response:
    ctx = request.state.capi
    result = ctx.track("PageView")
    return JSONResponse(
        {"client_ip": ctx.client_ip, "url": ctx.event_source_url, "status": result.status}
    )


def make_app(options: dict[str, Any]) -> Any:
    app = Starlette(routes=[Route("/", page)])
    app.add_middleware(CAPIMiddleware, **options, consent=True, dry_run=True)
    return app


def test_the_table_is_large() -> None:
    assert len(ROWS) >= 60


@pytest.mark.parametrize(("options", "peer", "headers", "ip", "scheme", "host"), ROWS)
async def test_proxy_table_through_the_middleware(
    options: dict[str, Any],
    peer: str,
    headers: dict[str, str],
    ip: str | None,
    scheme: str | None,
    host: str | None,
) -> None:
    transport = httpx.ASGITransport(app=make_app(options), client=(peer, 40000))
    # Non-ASCII rows go over the wire as UTF-8 bytes, as a client would send them.
    raw = [(k.encode(), v.encode("utf-8")) for k, v in headers.items()]
    raw.append((b"user-agent", b"Mozilla/5.0 (behind proxies)"))  # a browser: its _fbp matches
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get("http://app.internal/", headers=raw)
    assert response.status_code == 200
    body = response.json()
    assert body["client_ip"] == ip
    assert body["status"] == "dry_run"  # a bad or missing IP never stops an event
    # A page URL is http(s): a proxy's ws/wss proto means the same transport security.
    page_scheme = {"ws": "http", "wss": "https"}.get(scheme or "http", scheme or "http")
    expected_url = f"{page_scheme}://{(host or 'app.internal').lower()}/"
    assert body["url"] == expected_url


def test_oversized_forwarding_headers_under_wsgi_keep_their_meaning() -> None:
    from capi_middleware import CAPIWSGIMiddleware

    seen: list[str | None] = []

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["capi"].client_ip)
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    spoofed = ", ".join(["9.9.9.9"] * 1200)  # ~10 KB of forged hops, then the real client
    for family, headers in (
        ("x-forwarded", {"x-forwarded-for": f"{spoofed}, 1.1.1.1"}),
        ("forwarded", {"forwarded": "for=1.1.1.1, " * 1500}),
    ):
        app = CAPIWSGIMiddleware(
            wsgi_app,
            trusted_proxies=("127.0.0.1",),
            forwarded_headers=family,
            consent=True,
            dry_run=True,
        )
        transport = httpx.WSGITransport(app=app, remote_addr="127.0.0.1")
        with httpx.Client(transport=transport, base_url="http://app.internal") as client:
            client.get("/", headers=headers)
    assert seen == ["1.1.1.1", None]
