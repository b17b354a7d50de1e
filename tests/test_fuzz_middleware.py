"""Hostile requests through both adapters, generated (issue 10, "Done when").

Headers, cookies, query strings and raw bytes a client chooses, sent through CAPIMiddleware and
CAPIWSGIMiddleware around an app with its own headers and cookies. Whatever arrives: no exception
escapes, the status is the app's (never a 5xx of ours), every Set-Cookie we add has Meta's format
(or is one of our own two kinds) and a Domain that is the registrable domain of the request's own
host (never a forwarded one, never a public suffix), and the app's headers and cookies come out
untouched, first and in order.

Bounded for the normal suite; ``CAPI_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_middleware.py``
runs a longer search.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from publicsuffixlist import PublicSuffixList

from capi_middleware import CAPIMiddleware, CAPIWSGIMiddleware

EXAMPLES = int(os.environ.get("CAPI_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PSL = PublicSuffixList()

APP_HEADERS = [
    (b"content-type", b"text/plain"),
    (b"set-cookie", b"session=abc123; HttpOnly; Path=/"),
    (b"x-app", b"kept"),
]
# One prebuilt start message for every response: it must never change.
START = {"type": "http.response.start", "status": 200, "headers": list(APP_HEADERS)}
START_SNAPSHOT = copy.deepcopy(START)

# Meta's cookie formats (META_CAPI_REFERENCE §4), each with its optional fifth segment, then the
# attributes we write; an expiry after a withdrawal; our signed enhancement cookie.
_APPENDIX = r"(?:\.[A-Za-z0-9_-]{8}|\.[A-Za-z0-9_-]{2})?"
_ATTRS = (
    r"; Path=/(?:; Domain=(?P<domain>[a-z0-9.-]+))?; Max-Age=(?:7776000|0); SameSite=Lax"
    r"(?:; Secure)?"
)
OURS = [
    re.compile(r"_fbc=fb\.\d{1,2}\.\d{13}\.[A-Za-z0-9_~-]{1,1000}" + _APPENDIX + _ATTRS),
    re.compile(r"_fbp=fb\.\d{1,2}\.\d{13}\.\d{1,10}" + _APPENDIX + _ATTRS),
    re.compile(r"_fb[cp]=" + _ATTRS),
    re.compile(
        r"_capi_ud=(?:[A-Za-z0-9_.-]+; Path=/; Max-Age=7776000|; Path=/; Max-Age=0)"
        r"; HttpOnly; SameSite=Lax(?:; Secure)?"
    ),
]

INTERESTING = [
    b"host", b"cookie", b"referer", b"user-agent", b"accept", b"sec-fetch-dest",
    b"sec-fetch-mode", b"sec-gpc", b"x-forwarded-for", b"x-forwarded-proto",
    b"x-forwarded-host", b"forwarded", b"Host", b"COOKIE",
]  # fmt: skip
PIECES = [
    b"fbclid=", b"_fbc=", b"_fbp=", b"_capi_ud=", b"cookie_consent=", b"yes", b"no",
    b"fb.1.1700000000000.", b"fb.2.1700000000000.123", b"evil.com", b"shop.example.co.uk",
    b"www.example.com", b"localhost", b"[::1]", b"127.0.0.1", b"for=1.1.1.1", b";", b",",
    b"=", b" ", b"\r\n", b"\x00", b"\xff", b"%0d%0a", b"http://", b"https://", b"document",
    b"navigate", b"text/html", b"a" * 300, b"1",
]  # fmt: skip

raw = st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=20)), max_size=12).map(
    b"".join
)
header_name = st.one_of(st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=12))
COOKIE_PAIRS = [
    b"cookie_consent=yes", b"cookie_consent=no", b"_fbp=fb.1.1700000000000.123",
    b"_fbc=fb.1.1700000000000.AbC", b"_fbp=fb.1.1700000000000.123.AQ", b"_fbc=fb.x", b"_fbp=",
    b"_capi_ud=forged.value.sig", b"euconsent-v2=CP", b"_fbi=8.8.8.8",
    b"cookie_consent=no; _fbp=fb.1.1700000000000.123; _fbc=fb.1.1700000000000.AbC",
]  # fmt: skip
cookie_header = st.lists(st.one_of(st.sampled_from(COOKIE_PAIRS), raw), max_size=5).map(b"; ".join)
navigation = st.sampled_from(
    [
        [],
        [(b"sec-fetch-dest", b"document"), (b"sec-fetch-mode", b"navigate")],
        [(b"accept", b"text/html")],
        [(b"sec-fetch-dest", b"empty")],
    ]
)
# What a client sends through a proxy that passes it on: claims about itself.
forwarding = st.sampled_from(
    [
        [],
        [(b"x-forwarded-host", b"evil.com"), (b"x-forwarded-for", b"1.1.1.1")],
        [(b"forwarded", b"for=1.1.1.1;host=evil.com;proto=https")],
        [(b"x-forwarded-host", b"checkout.example.com"), (b"x-forwarded-proto", b"https")],
        [(b"x-forwarded-host", b"co.uk")],
    ]
)
request = st.fixed_dictionaries(
    {
        "headers": st.builds(
            lambda own, cookie, nav, fwd, host: [
                *own,
                *nav,
                *fwd,
                *([(b"cookie", cookie)] if cookie else []),
                *([(b"host", host)] if host else []),
            ],
            st.lists(st.tuples(header_name, raw), max_size=6),
            cookie_header,
            navigation,
            forwarding,
            st.sampled_from(
                [
                    b"",
                    b"www.example.com",
                    b"shop.example.co.uk:8443",
                    b"localhost",
                    b"co.uk",
                    b"github.io",
                    b"evil.com",
                    b"1.2.3.4",
                    b"[::1]",
                ]
            ),
        ),
        "query": raw,
        "path": raw,
        "peer": st.sampled_from(["8.8.8.8", "127.0.0.1", "::1", "10.0.0.5", "garbage"]),
        "scheme": st.sampled_from(["http", "https", "HTTPS", "ws", ""]),
        "track": st.booleans(),
    }
)
OPTIONS = [
    {},
    {"set_fbp": False, "cookie_domain": "example.com"},
    {"consent": True},
    {"consent": True, "trusted_proxies": ("127.0.0.1", "::1")},
    {"consent": True, "trusted_proxies": ("127.0.0.1",), "forwarded_headers": "forwarded"},
    {
        "consent": True,
        "trusted_proxies": ("127.0.0.1",),
        "trust_forwarded_host": True,
        "cookie_domain": "example.com",
    },
]
options = st.sampled_from(range(len(OPTIONS)))


def _middleware_options(index: int) -> dict[str, Any]:
    return {"dry_run": True, "enhancement_secret": "fuzz-secret", **OPTIONS[index]}


# One middleware per configuration for the whole run, as in production: its memos see every
# example, so a hostile request can also meet what earlier ones left there.
_ASGI: dict[int, CAPIMiddleware] = {}
_WSGI: dict[int, CAPIWSGIMiddleware] = {}


def _hosts_of(headers: list[tuple[bytes, bytes]]) -> set[str]:
    """The host names the request itself names: each Host header's, any case, any repeat."""
    hosts = set()
    for name, value in headers:
        if name.lower() == b"host":
            for part in value.decode("latin-1").lower().split(","):
                part = part.strip()
                if part and not part.startswith("["):
                    hosts.add(part.rsplit(":", 1)[0] if ":" in part else part)
    return hosts


SERVER_NAME = "shop.internal"


def check_added(
    added: list[tuple[bytes, bytes]], hosts: set[str], cookie_domain: str | None
) -> None:
    """Each header we added is one of our Set-Cookie kinds, with an allowed Domain."""
    # The request's own host, or the server's name when the Host header is missing or junk;
    # never a forwarded host (no option here believes one outside cookie_domain).
    allowed = {PSL.privatesuffix(h) for h in (*hosts, SERVER_NAME)} | {cookie_domain}
    for name, value in added:
        assert name.lower() == b"set-cookie", name
        text = value.decode("latin-1")
        matches = [m for m in (p.fullmatch(text) for p in OURS) if m is not None]
        assert matches, text
        domain = matches[0].groupdict().get("domain")
        if domain is not None:
            assert not PSL.is_public(domain), text
            assert domain in allowed, (hosts, text)


def check_app_headers(
    headers: list[tuple[bytes, bytes]], app_headers: list[tuple[Any, Any]]
) -> list[Any]:
    """The app's headers first and unchanged; what we added after them."""
    assert headers[: len(app_headers)] == app_headers
    return headers[len(app_headers) :]


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    ctx = scope["state"]["capi"]
    if scope.get("_track"):
        ctx.track("Lead", user_data={"email": "fuzz@example.com"})
    await send(START)
    await send({"type": "http.response.body", "body": b"ok"})


@FUZZ
@given(request, options)
def test_asgi_survives_hostile_requests(req: dict[str, Any], option: int) -> None:
    middleware = _ASGI.get(option)
    if middleware is None:
        middleware = _ASGI[option] = CAPIMiddleware(_app, **_middleware_options(option))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": req["scheme"],
        "path": req["path"].decode("latin-1"),
        "raw_path": req["path"],
        "query_string": req["query"],
        "headers": req["headers"],
        "client": (req["peer"], 1234),
        "server": (SERVER_NAME, 8000),
        "_track": req["track"],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    assert START == START_SNAPSHOT
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200
    added = check_app_headers(list(sent[0]["headers"]), APP_HEADERS)
    check_added(added, _hosts_of(req["headers"]), OPTIONS[option].get("cookie_domain"))


WSGI_APP_HEADERS = [(k.decode(), v.decode()) for k, v in APP_HEADERS]


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ["fuzz.track"]:
        environ["capi"].track("Lead", user_data={"email": "fuzz@example.com"})
    start_response("200 OK", list(WSGI_APP_HEADERS))
    return [b"ok"]


@FUZZ
@given(request, options)
def test_wsgi_survives_hostile_requests(req: dict[str, Any], option: int) -> None:
    middleware = _WSGI.get(option)
    if middleware is None:
        middleware = _WSGI[option] = CAPIWSGIMiddleware(_wsgi_app, **_middleware_options(option))
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": req["path"].decode("latin-1"),
        "QUERY_STRING": req["query"].decode("latin-1"),
        "SERVER_NAME": SERVER_NAME,
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": req["peer"],
        "wsgi.url_scheme": req["scheme"],
        "fuzz.track": req["track"],
    }
    joined: dict[str, list[str]] = {}
    for name, value in req["headers"]:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        joined.setdefault(key, []).append(value.decode("latin-1"))
    environ.update({k: ", ".join(v) for k, v in joined.items()})
    seen: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append((status, headers))
        return lambda data: None

    body = b"".join(middleware(environ, start_response))
    assert body == b"ok"
    ((status, headers),) = seen
    assert status == "200 OK"
    added = check_app_headers(headers, WSGI_APP_HEADERS)
    hosts = _hosts_of([(b"host", v.encode("latin-1")) for v in joined.get("HTTP_HOST", [])])
    check_added(
        [(k.encode(), v.encode("latin-1")) for k, v in added],
        hosts,
        OPTIONS[option].get("cookie_domain"),
    )
