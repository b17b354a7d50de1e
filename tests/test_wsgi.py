"""CAPIWSGIMiddleware: capture from the environ, cookies through start_response, never in the way."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest

from capi_middleware.capture.context import RequestContext, current
from capi_middleware.config import CAPIConfig
from capi_middleware.testing.fake import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID, FakeGraphAPI
from capi_middleware.wsgi import CAPIWSGIMiddleware, environ_raw_path

FBCLID = "IwAR2_Ab-cD~ef"
UA = "Mozilla/5.0 (X11; Linux x86_64) Test/1.0"

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


def describe(ctx: RequestContext) -> dict[str, Any]:
    return {
        "client_ip": ctx.client_ip,
        "user_agent": ctx.user_agent,
        "fbclid": ctx.fbclid,
        "fbc": ctx.fbc,
        "fbp": ctx.fbp,
        "event_source_url": ctx.event_source_url,
        "referrer_url": ctx.referrer_url,
        "consent": ctx.consent.granted,
    }


def json_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """A plain WSGI app: reports what it sees, tracks on /buy, sets its own cookie."""
    import json

    ctx = environ["capi"]
    body: dict[str, Any] = describe(ctx)
    body["current_is_environ"] = current() is ctx
    if environ["PATH_INFO"] == "/buy":
        result = ctx.track("Purchase", value=12.5, currency="USD")
        body["status"] = result.status
        body["event_id"] = result.event_id
    headers = [("Content-Type", "application/json"), ("Set-Cookie", "session=abc; Path=/")]
    if environ["PATH_INFO"] == "/cached":
        headers.append(("Cache-Control", "public, max-age=600"))
    start_response("200 OK", headers)
    return [json.dumps(body).encode()]


def client(
    app: Any, *, ip: str = "8.8.8.8", base: str = "https://shop.example.com"
) -> httpx.Client:
    return httpx.Client(
        transport=httpx.WSGITransport(app=app, remote_addr=ip),
        base_url=base,
        headers={"user-agent": UA},
    )


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def test_capture_from_the_environ() -> None:
    app = CAPIWSGIMiddleware(json_app, consent=True, dry_run=True)
    with client(app) as c:
        body = c.get(
            f"/landing?fbclid={FBCLID}&utm=1", headers={"referer": "https://news.example.org/a"}
        ).json()
    assert body["client_ip"] == "8.8.8.8"
    assert body["user_agent"] == UA
    assert body["fbclid"] == FBCLID
    assert body["event_source_url"] == f"https://shop.example.com/landing?fbclid={FBCLID}&utm=1"
    assert body["referrer_url"] == "https://news.example.org/a"
    assert body["current_is_environ"] is True
    assert re.fullmatch(rf"fb\.1\.\d{{13}}\.{re.escape(FBCLID)}", body["fbc"])


def test_fbc_and_fbp_cookies_are_appended_and_the_apps_own_cookie_survives() -> None:
    app = CAPIWSGIMiddleware(json_app, consent=True, dry_run=True)
    with client(app) as c:
        response = c.get(f"/?fbclid={FBCLID}")
    cookies = set_cookies(response)
    assert "session=abc; Path=/" in cookies
    fbc = [v for v in cookies if v.startswith("_fbc=")]
    fbp = [v for v in cookies if v.startswith("_fbp=")]
    assert len(fbc) == 1
    assert len(fbp) == 1
    assert fbc[0].startswith(f"_fbc={response.json()['fbc']};")
    assert "Domain=example.com" in fbc[0]
    assert "Secure" in fbc[0]
    assert "HttpOnly" not in fbc[0]  # the pixel's JavaScript reads it


def test_plain_http_cookies_are_not_secure() -> None:
    app = CAPIWSGIMiddleware(json_app, consent=True, dry_run=True)
    with client(app, base="http://shop.example.com") as c:
        response = c.get(f"/?fbclid={FBCLID}")
    fbc = next(v for v in set_cookies(response) if v.startswith("_fbc="))
    assert "Secure" not in fbc


def test_an_existing_fbc_with_the_same_click_is_kept() -> None:
    app = CAPIWSGIMiddleware(json_app, consent=True, dry_run=True)
    existing = f"fb.1.1700000000000.{FBCLID}"
    with client(app) as c:
        body = c.get(f"/?fbclid={FBCLID}", headers={"cookie": f"_fbc={existing}"}).json()
    assert body["fbc"] == existing


def test_without_consent_no_cookies_and_no_events() -> None:
    app = CAPIWSGIMiddleware(json_app, dry_run=True)  # default policy: opt-in required
    with client(app) as c:
        response = c.get(f"/buy?fbclid={FBCLID}")
    assert set_cookies(response) == ["session=abc; Path=/"]
    assert response.json()["status"] == "denied"
    assert response.json()["consent"] is False


def test_the_sites_consent_cookie_grants() -> None:
    app = CAPIWSGIMiddleware(json_app, dry_run=True)
    with client(app) as c:
        response = c.get(f"/buy?fbclid={FBCLID}", headers={"cookie": "cookie_consent=granted"})
    assert response.json()["status"] == "dry_run"
    assert any(v.startswith("_fbc=") for v in set_cookies(response))


def test_a_shared_cacheable_response_gets_no_visitor_cookies() -> None:
    app = CAPIWSGIMiddleware(json_app, consent=True, dry_run=True)
    with client(app) as c:
        response = c.get(f"/cached?fbclid={FBCLID}")
    assert set_cookies(response) == ["session=abc; Path=/"]


def test_a_lazy_app_that_starts_the_response_while_iterating_still_gets_cookies() -> None:
    def lazy_app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"streamed"

    app = CAPIWSGIMiddleware(lazy_app, consent=True, dry_run=True)
    with client(app) as c:
        response = c.get(f"/?fbclid={FBCLID}")
    assert response.text == "streamed"
    assert any(v.startswith("_fbc=") for v in set_cookies(response))


def test_a_second_start_response_with_exc_info_keeps_the_cookies() -> None:
    seen: list[list[tuple[str, str]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append(headers)
        return lambda data: None

    def app(environ: Environ, start: StartResponse) -> Iterable[bytes]:
        start("200 OK", [])
        try:
            raise RuntimeError("late failure")
        except RuntimeError:
            import sys

            start("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"oops"]

    wrapped = CAPIWSGIMiddleware(app, consent=True, dry_run=True)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "QUERY_STRING": f"fbclid={FBCLID}",
        "SERVER_NAME": "shop.example.com",
        "SERVER_PORT": "443",
        "wsgi.url_scheme": "https",
        "REMOTE_ADDR": "8.8.8.8",
        "HTTP_ACCEPT": "text/html",
    }
    assert list(wrapped(environ, start_response)) == [b"oops"]
    assert len(seen) == 2
    for headers in seen:
        assert sum(1 for k, v in headers if k == "Set-Cookie" and v.startswith("_fbc=")) == 1


class ShopError(Exception):
    pass


def test_the_apps_exception_propagates_unchanged_and_current_is_reset() -> None:
    error = ShopError("the app's own failure")

    def failing_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        raise error

    app = CAPIWSGIMiddleware(failing_app, consent=True, dry_run=True)
    with client(app) as c, pytest.raises(ShopError) as raised:
        c.get("/")
    assert raised.value is error
    assert current() is None


class BrokenEnviron(dict):  # type: ignore[type-arg]
    """A host whose environ cannot be read the way PEP 3333 promises."""

    def items(self) -> Any:
        raise RuntimeError("broken environ")


def test_our_capture_failure_never_breaks_the_request(caplog: pytest.LogCaptureFixture) -> None:
    app = CAPIWSGIMiddleware(json_app, consent=True, dry_run=True)
    environ = BrokenEnviron(
        REQUEST_METHOD="GET", PATH_INFO="/buy", QUERY_STRING="", wsgi_url_scheme="http"
    )
    statuses: list[str] = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses == ["200 OK"]
    assert b'"status": "error"' in body
    assert app.stats().capture_errors == 1
    assert "internal error in request capture" in caplog.text


@pytest.mark.parametrize(
    ("environ", "client_ip", "url"),
    [
        ({"REMOTE_ADDR": "not-an-ip"}, None, "http://shop.example.com/p"),
        ({"REMOTE_ADDR": "10.0.0.7"}, None, "http://shop.example.com/p"),  # private: never sent
        (
            {"REMOTE_ADDR": "2001:4860:4860::8888"},
            "2001:4860:4860::8888",
            "http://shop.example.com/p",
        ),
        ({"HTTP_HOST": "bad host!"}, "8.8.8.8", "http://server.example.com:8080/p"),
        ({"HTTP_HOST": ""}, "8.8.8.8", "http://server.example.com:8080/p"),
        ({"SERVER_PORT": "junk", "HTTP_HOST": ""}, "8.8.8.8", "http://server.example.com/p"),
        (
            {"wsgi.url_scheme": "https", "HTTP_HOST": "shop.example.com:443"},
            "8.8.8.8",
            "https://shop.example.com/p",
        ),
        ({"QUERY_STRING": None}, "8.8.8.8", "http://shop.example.com/p"),
        ({"HTTP_USER_AGENT": "x" * 100_000}, "8.8.8.8", "http://shop.example.com/p"),
    ],
)
def test_junk_in_the_environ_is_tolerated(
    environ: dict[str, Any], client_ip: str | None, url: str
) -> None:
    seen: list[RequestContext] = []

    def app(env: Environ, start_response: StartResponse) -> Iterable[bytes]:
        seen.append(env["capi"])
        start_response("204 No Content", [])
        return []

    base = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/p",
        "QUERY_STRING": "",
        "SERVER_NAME": "server.example.com",
        "SERVER_PORT": "8080",
        "HTTP_HOST": "shop.example.com",
        "REMOTE_ADDR": "8.8.8.8",
        "wsgi.url_scheme": "http",
    }
    base.update(environ)
    statuses: list[str] = []
    CAPIWSGIMiddleware(app, consent=True, dry_run=True)(
        base, lambda status, headers, exc_info=None: statuses.append(status)
    )
    assert statuses == ["204 No Content"]
    assert seen[0].client_ip == client_ip
    assert seen[0].event_source_url == url
    assert seen[0].user_agent is None or len(seen[0].user_agent) <= 1024


@pytest.mark.parametrize(
    ("environ", "path"),
    [
        ({"PATH_INFO": "/a b"}, "/a%20b"),
        ({"SCRIPT_NAME": "/shop", "PATH_INFO": "/cart"}, "/shop/cart"),
        # PEP 3333: PATH_INFO holds the decoded bytes as latin-1 text; é is C3 A9 in UTF-8.
        ({"PATH_INFO": "/caf\u00c3\u00a9"}, "/caf%C3%A9"),
        ({"PATH_INFO": "/x", "RAW_URI": "/x%2Fy?q=1"}, "/x%2Fy"),  # gunicorn keeps the raw URI
        ({"PATH_INFO": "/x", "REQUEST_URI": "/%7Euser"}, "/%7Euser"),
        ({"PATH_INFO": "/x", "RAW_URI": "http://proxy.example/x"}, "/x"),  # absolute form: skip
        ({}, "/"),
    ],
)
def test_the_raw_path(environ: dict[str, Any], path: str) -> None:
    assert environ_raw_path(environ) == path


def test_each_thread_sees_its_own_request() -> None:
    barrier = threading.Barrier(4)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        barrier.wait(timeout=10)  # all four requests are inside the app at once
        ctx = current()
        start_response("200 OK", [])
        return [(ctx.fbclid or "").encode() if ctx is environ["capi"] else b"mixed up"]

    wrapped = CAPIWSGIMiddleware(app, consent=True, dry_run=True)
    results: dict[str, str] = {}

    def visit(click: str) -> None:
        with client(wrapped) as c:
            results[click] = c.get(f"/?fbclid={click}").text

    threads = [threading.Thread(target=visit, args=(f"click{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {f"click{i}": f"click{i}" for i in range(4)}


def test_options_config_and_env() -> None:
    # Never raised into a request, nor at start (tests/test_config_errors.py): tracking is off.
    rejected = CAPIWSGIMiddleware(json_app, pixle_id="1")
    assert rejected.client.config_error == (
        "CAPIWSGIMiddleware: unknown option(s) pixle_id (did you mean pixel_id?)"
    )
    base = CAPIConfig(pixel_id="123", access_token="secret-token-value", dry_run=True)
    app = CAPIWSGIMiddleware(json_app, config=base, consent=True)
    assert app.config.pixel_id == "123"
    assert app.config.consent is True
    assert "secret-token-value" not in repr(app)


def test_env_vars_fill_unset_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("META_PIXEL_ID", "555")
    monkeypatch.setenv("META_ACCESS_TOKEN", "env-token")
    monkeypatch.setenv("META_GRAPH_URL", "http://127.0.0.1:9")
    app = CAPIWSGIMiddleware(json_app, dry_run=True)
    assert app.config.pixel_id == "555"
    assert app.config.graph_url == "http://127.0.0.1:9"


# -- delivery ---------------------------------------------------------------------------------


def test_a_purchase_reaches_meta_with_the_visitors_match_keys(fake: FakeGraphAPI) -> None:
    app = CAPIWSGIMiddleware(
        json_app,
        pixel_id=FAKE_PIXEL_ID,
        access_token=FAKE_ACCESS_TOKEN,
        graph_url=fake.url,
        consent=True,
        flush_interval=0.05,
    )
    try:
        with client(app) as c:
            body = c.get("/buy?fbclid=IwAR_wsgi-Click").json()
        assert body["status"] == "queued"
        assert app.flush(10)
        stats = app.stats()
    finally:
        app.close(5)
    [event] = fake.events
    assert event["event_id"] == body["event_id"]
    assert event["user_data"]["fbc"] == body["fbc"]
    assert event["user_data"]["client_ip_address"] == "8.8.8.8"
    assert event["user_data"]["client_user_agent"] == UA
    assert stats.requests == 1
    assert stats.delivery is not None
    assert stats.delivery.delivered == 1
    assert stats.delivery.balanced


EXITING_APP = """
import sys, httpx
from capi_middleware.wsgi import CAPIWSGIMiddleware

def app(environ, start_response):
    result = environ["capi"].track("Purchase", value=5, currency="USD")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [result.status.encode()]

wrapped = CAPIWSGIMiddleware(app, consent=True, flush_interval=30)
transport = httpx.WSGITransport(app=wrapped, remote_addr="8.8.8.8")
with httpx.Client(transport=transport, base_url="https://shop.example.com") as c:
    print(c.get("/thanks").text, flush=True)
# No close(), no flush(): a WSGI app has no shutdown hook; the exit handler must deliver.
"""


def test_events_still_queued_at_interpreter_exit_are_delivered(fake: FakeGraphAPI) -> None:
    env = {
        **os.environ,
        "META_PIXEL_ID": FAKE_PIXEL_ID,
        "META_ACCESS_TOKEN": FAKE_ACCESS_TOKEN,
        "META_GRAPH_URL": fake.url,
    }
    proc = subprocess.run(
        [sys.executable, "-c", EXITING_APP], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "queued"
    assert [e["event_name"] for e in fake.events] == ["Purchase"]


def test_prometheus_reads_the_middlewares_counters(fake: FakeGraphAPI) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from capi_middleware.prometheus import register_collector

    app = CAPIWSGIMiddleware(
        json_app,
        pixel_id=FAKE_PIXEL_ID,
        access_token=FAKE_ACCESS_TOKEN,
        graph_url=fake.url,
        consent=True,
        flush_interval=0.05,
    )
    registry = CollectorRegistry()
    register_collector(app, registry=registry)
    try:
        with client(app) as c:
            c.get("/buy")
            c.get("/")
        assert app.flush(10)
    finally:
        app.close(5)
    text = generate_latest(registry).decode()
    assert "capi_requests_total 2.0" in text
    assert "capi_events_enqueued_total 1.0" in text
    assert "capi_events_delivered_total 1.0" in text
    assert "capi_backlog 0.0" in text


def test_kept_cookies_are_resent_on_page_loads_only() -> None:
    fbp = "fb.1.1700000000000.42"
    app = CAPIWSGIMiddleware(json_app, dry_run=True, consent=True)
    with client(app) as http:
        page = http.get("/", headers={"cookie": f"_fbp={fbp}", "sec-fetch-dest": "document"})
        api = http.get("/", headers={"cookie": f"_fbp={fbp}", "sec-fetch-dest": "empty"})
    assert [v for v in set_cookies(page) if v.startswith("_fbp=")] == [
        f"_fbp={fbp}; Path=/; Domain=example.com; Max-Age=7776000; SameSite=Lax; Secure"
    ]
    assert set_cookies(api) == ["session=abc; Path=/"]
    assert api.json()["fbp"] == fbp


def test_an_outbox_left_by_an_earlier_process_is_sent_from_the_first_request(
    tmp_path: Any,
) -> None:
    outbox = str(tmp_path / "outbox.db")
    with FakeGraphAPI() as fake:
        options = {
            "pixel_id": FAKE_PIXEL_ID,
            "access_token": FAKE_ACCESS_TOKEN,
            "graph_url": fake.url,
            "consent": True,
            "outbox": outbox,
        }
        fake.down = True
        first = CAPIWSGIMiddleware(json_app, **options)
        with client(first) as http:
            event_id = http.get("/buy").json()["event_id"]
        first.close(0.2)
        assert fake.events == []
        fake.down = False
        second = CAPIWSGIMiddleware(json_app, **options)
        with client(second) as http:
            http.get("/")  # tracks nothing
        assert fake.wait_for_events(1)
        assert fake.event_ids == [event_id]
        assert second.close(5) is True
