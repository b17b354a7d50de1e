"""What CAPIMiddleware captures from each request: client IP behind proxies, page URL, and
hostile input (CR/LF, 10 KB values, invalid UTF-8) that must never break a request or leak out.

The full proxy table lives in tests/rules/test_trusted_proxies.py; this one checks the wiring end
to end.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from capi_middleware.asgi import CAPIMiddleware
from capi_middleware.capture.context import RequestContext

pytestmark = pytest.mark.anyio

FIELDS = ("client_ip", "user_agent", "fbp", "fbc", "fbclid", "event_source_url", "referrer_url")


def snapshot(ctx: RequestContext) -> dict[str, Any]:
    out: dict[str, Any] = {name: getattr(ctx, name) for name in FIELDS}
    out["secure"] = ctx.secure
    out["track"] = ctx.track("ViewContent").status
    return out


async def page(request: Request) -> Response:
    return JSONResponse(snapshot(request.state.capi))


def app(**options: Any) -> Any:
    options.setdefault("dry_run", True)
    options.setdefault("consent", True)
    starlette = Starlette(routes=[Route("/{path:path}", page)])
    starlette.add_middleware(CAPIMiddleware, **options)
    return starlette


async def fetch(
    asgi_app: Any,
    url: str = "https://shop.example.com/",
    *,
    peer: str = "8.8.8.8",
    headers: list[tuple[bytes, bytes]] | dict[str, str] | None = None,
) -> httpx.Response:
    transport = httpx.ASGITransport(app=asgi_app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.get(url, headers=headers)


# peer, trusted_proxies, headers, client_ip, scheme/host of event_source_url
IP_TABLE: list[tuple[str, tuple[str, ...] | dict[str, Any], dict[str, str], str | None, str]] = [
    ("8.8.8.8", (), {}, "8.8.8.8", "https://shop.example.com/"),
    # Untrusted peer: forwarding headers are the client's own claim, ignored.
    ("8.8.8.8", (), {"x-forwarded-for": "1.1.1.1"}, "8.8.8.8", "https://shop.example.com/"),
    (
        "8.8.8.8",
        ("10.0.0.0/8",),
        {"x-forwarded-for": "1.1.1.1", "x-forwarded-host": "evil.example"},
        "8.8.8.8",
        "https://shop.example.com/",
    ),
    # Trusted proxy: the rightmost untrusted hop is the client.
    (
        "10.0.0.1",
        ("10.0.0.0/8",),
        {"x-forwarded-for": "9.9.9.9"},
        "9.9.9.9",
        "https://shop.example.com/",
    ),
    (
        "10.0.0.1",
        ("10.0.0.0/8",),
        {"x-forwarded-for": "6.6.6.6, 9.9.9.9, 10.0.0.9"},
        "9.9.9.9",
        "https://shop.example.com/",
    ),
    # A private client address is never sent.
    (
        "10.0.0.1",
        ("10.0.0.0/8",),
        {"x-forwarded-for": "192.168.1.5"},
        None,
        "https://shop.example.com/",
    ),
    ("10.0.0.1", ("10.0.0.0/8",), {}, None, "https://shop.example.com/"),
    (
        "10.0.0.1",
        ("10.0.0.0/8",),
        {"x-forwarded-for": "junk, ;;"},
        None,
        "https://shop.example.com/",
    ),
    # RFC 7239 Forwarded with IPv6, proto and host from the trusted proxy, when configured.
    (
        "10.0.0.1",
        {
            "trusted_proxies": ("10.0.0.1",),
            "forwarded_headers": "forwarded",
            "trust_forwarded_host": True,
        },
        {"forwarded": 'for="[2001:4860::1]:443";proto=http;host=www.example.org'},
        "2001:4860::1",
        "http://www.example.org/",
    ),
    (
        "10.0.0.1",
        {"trusted_proxies": ("10.0.0.0/8",), "trust_forwarded_host": True},
        {
            "x-forwarded-for": "9.9.9.9",
            "x-forwarded-proto": "http",
            "x-forwarded-host": "a.example.net",
        },
        "9.9.9.9",
        "http://a.example.net/",
    ),
    # Loopback peer without trust: nothing sendable.
    ("127.0.0.1", (), {"x-forwarded-for": "9.9.9.9"}, None, "https://shop.example.com/"),
]


@pytest.mark.parametrize(("peer", "trusted", "headers", "ip", "url"), IP_TABLE)
async def test_client_ip_through_the_middleware(
    peer: str,
    trusted: tuple[str, ...] | dict[str, Any],
    headers: dict[str, str],
    ip: str | None,
    url: str,
) -> None:
    options = trusted if isinstance(trusted, dict) else {"trusted_proxies": trusted}
    response = await fetch(app(**options), peer=peer, headers=headers)
    body = response.json()
    assert body["client_ip"] == ip
    assert body["event_source_url"] == url
    assert body["secure"] is url.startswith("https:")


async def test_trusted_proxy_scheme_decides_secure_cookie() -> None:
    response = await fetch(
        app(trusted_proxies=("10.0.0.1",), trust_forwarded_host=True),
        "http://internal:8000/",
        peer="10.0.0.1",
        headers={
            "x-forwarded-for": "9.9.9.9",
            "x-forwarded-proto": "https",
            "x-forwarded-host": "example.com",
            "accept": "text/html",
        },
    )
    [fbp] = response.headers.get_list("set-cookie")
    assert "Secure" in fbp
    assert "Domain=example.com" in fbp


async def test_page_url_query_and_referrer() -> None:
    response = await fetch(
        app(),
        "https://Shop.Example.com/caf%C3%A9/item?id=7&fbclid=AbC-xYz_9&q=a%20b",
        headers={"referer": "https://l.facebook.com/l.php?u=1", "user-agent": "Mozilla/5.0 Test"},
    )
    body = response.json()
    assert (
        body["event_source_url"]
        == "https://shop.example.com/caf%C3%A9/item?id=7&fbclid=AbC-xYz_9&q=a%20b"
    )
    assert body["fbclid"] == "AbC-xYz_9"
    assert body["referrer_url"] == "https://l.facebook.com/l.php?u=1"
    assert body["user_agent"] == "Mozilla/5.0 Test"
    assert body["track"] == "dry_run"


HOSTILE: list[tuple[bytes, bytes]] = [
    (b"user-agent", b"Mozilla\r\nSet-Cookie: pwned=1"),
    (b"referer", b"https://a.com/\r\nSet-Cookie: pwned=1?fbclid=x\r\ny"),
    (b"cookie", b"_fbc=fb.1.1700000000000.A\r\nSet-Cookie: pwned=1; _fbp=\xff\xfe\xc3("),
    (b"x-forwarded-for", b"\xff\xfe, 1.1.1.1\r\n"),
    (b"host", b"example.com\r\nSet-Cookie: pwned=1"),
    (b"sec-gpc", b"\x00\x01"),
    (b"x-long", b"A" * 10_240),
    (b"user-agent", b"U" * 10_240),
    (b"cookie", b"big=" + b"B" * 10_240),
    (b"referer", b"https://example.com/" + b"R" * 10_240),
]


@pytest.mark.parametrize(("name", "value"), HOSTILE)
@pytest.mark.parametrize("trusted", [(), ("8.8.8.8",)])
async def test_hostile_header_never_breaks_or_leaks(
    name: bytes, value: bytes, trusted: tuple[str, ...]
) -> None:
    response = await fetch(
        app(trusted_proxies=trusted),
        "https://example.com/?fbclid=Ab%0D%0ASet-Cookie:x",
        headers=[(name, value)],
    )
    assert response.status_code == 200
    body = response.json()
    assert body["track"] == "dry_run"
    for header in response.headers.get_list("set-cookie"):
        assert "pwned" not in header
        assert "\r" not in header
        assert "\n" not in header
        assert header.startswith("_fbp=")  # the %0D%0A fbclid mints no _fbc
    for key in ("user_agent", "referrer_url", "event_source_url"):
        text = body[key] or ""
        assert "\r" not in text
        assert "\n" not in text
        assert len(text) <= 4096


async def test_hostile_cookie_header_of_many_pairs() -> None:
    cookie = "; ".join(f"c{i}=v{i}" for i in range(2000)).encode()
    response = await fetch(app(), headers=[(b"cookie", cookie + b"; _fbp=fb.1.1700000000000.5")])
    assert response.status_code == 200
    assert response.json()["track"] == "dry_run"


# -- the raw ASGI interface: what httpx will not send -----------------------------------------


UA = (b"user-agent", b"Mozilla/5.0")


def http_scope(**changes: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"example.com"), UA],
        "client": ("8.8.8.8", 1234),
        "server": ("example.com", 443),
    }
    scope.update(changes)
    return scope


async def call(asgi_app: Any, scope: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asgi_app(scope, receive, send)
    return sent, scope.get("state", {}).get("capi")


def bare(**options: Any) -> Any:
    options.setdefault("dry_run", True)
    options.setdefault("consent", True)

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        ctx = scope["state"]["capi"]
        body = json.dumps({"track": ctx.track("Lead").status, "failed": ctx.failed}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return CAPIMiddleware(inner, **options)


@pytest.mark.parametrize(
    "changes",
    [
        {"headers": [(b"host", b"ex\xffample.com"), (b"user-agent", b"\xc3\x28\xa0\xa1")]},
        {"headers": [(b"HOST", b"example.com"), (b"Cookie", b"\xff=\xfe; _fbp=\x80"), UA]},
        {"raw_path": b"/\xff\xfe/\r\n", "query_string": b"a=\xff&fbclid=\xc3\x28"},
        {"raw_path": None, "path": "/caf\u00e9 x"},
        {"raw_path": b"/a?b=c"},
        {"client": None, "server": None},
        {"client": ("not an ip", 0)},
        {"scheme": "gopher"},
        {"headers": [(b"host", b"example.com"), UA] * 50 + [(b"x-a", b"1")] * 2000},
    ],
)
async def test_raw_scopes_with_invalid_bytes(changes: dict[str, Any]) -> None:
    sent, ctx = await call(bare(), http_scope(**changes))
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"]) == {"track": "dry_run", "failed": False}
    assert isinstance(ctx, RequestContext)
    url = ctx.event_source_url
    if url is not None:
        assert all("\x21" <= c <= "\x7e" for c in url)
    for name, value in sent[0]["headers"]:
        if name == b"set-cookie":
            assert b"\xff" not in value
            assert b"\r" not in value


async def test_raw_path_with_query_and_missing_raw_path() -> None:
    _, ctx = await call(bare(), http_scope(raw_path=b"/a?b=c", query_string=b"b=c"))
    assert ctx.event_source_url == "https://example.com/a?b=c"
    _, ctx = await call(bare(), http_scope(raw_path=None, path="/caf\u00e9 x"))
    assert ctx.event_source_url == "https://example.com/caf%C3%A9%20x"
    _, ctx = await call(bare(), http_scope(raw_path=None, path="/app/x", root_path="/app"))
    assert ctx.event_source_url == "https://example.com/app/x"


async def test_header_names_any_case_and_repeats_joined() -> None:
    _, ctx = await call(
        bare(),
        http_scope(
            headers=[
                (b"Host", b"example.com"),
                (b"Cookie", b"a=1"),
                (b"cookie", b"_fbp=fb.1.1700000000000.77"),
                (b"X-Thing", b"one"),
                UA,
                (b"x-thing", b"two"),
            ]
        ),
    )
    assert ctx.cookies["a"] == "1"
    assert ctx.fbp == "fb.1.1700000000000.77"
    assert ctx.header("x-thing") == "one, two"
    assert ctx.header("X-THING") == "one, two"


async def test_a_server_that_keeps_the_clients_header_case() -> None:
    # No repeats, so only the case tells: "Host" as a browser sends it over HTTP/1.1 is the sign
    # that names were not lowercased (asgi_header_map), and every name is then lowercased.
    _, ctx = await call(
        bare(),
        http_scope(
            headers=[
                (b"Host", b"shop.example.com"),
                (b"User-Agent", b"Mozilla/5.0 (X11) Firefox/130.0"),
                (b"Cookie", b"_fbp=fb.1.1700000000000.77; a=1"),
                (b"Referer", b"https://www.google.com/"),
            ]
        ),
    )
    assert ctx.fbp == "fb.1.1700000000000.77"
    assert ctx.cookies["a"] == "1"
    assert ctx.user_agent == "Mozilla/5.0 (X11) Firefox/130.0"
    assert ctx.referrer_url == "https://www.google.com/"
    assert ctx.event_source_url is not None
    assert ctx.event_source_url.startswith("https://shop.example.com/")


async def test_broken_scope_still_reaches_the_app_with_an_error_context() -> None:
    # Headers that are not a list of pairs: our capture fails, the app still runs.
    middleware = bare()
    sent, ctx = await call(middleware, http_scope(headers=5))
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"]) == {"track": "error", "failed": True}
    assert ctx.failed
    assert middleware.stats().capture_errors == 1
    assert middleware.stats().requests == 0
