"""CAPIMiddleware around the app: construction, the app's exceptions, current(), websockets,
lifespan shutdown flushing, the sender obtained lazily, and with an outbox at startup."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from capi_middleware.asgi import CAPIMiddleware
from capi_middleware.capture.context import RequestContext, current
from capi_middleware.config import CAPIConfig
from capi_middleware.testing.fake import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID, FakeGraphAPI

pytestmark = pytest.mark.anyio

UA = {"user-agent": "Mozilla/5.0"}


def fake_options(fake: FakeGraphAPI, **extra: Any) -> dict[str, Any]:
    return {
        "pixel_id": FAKE_PIXEL_ID,
        "access_token": FAKE_ACCESS_TOKEN,
        "graph_url": fake.url,
        "consent": True,
        **extra,
    }


async def get(app: Any, url: str = "https://example.com/", **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=("8.8.8.8", 1))
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.get(url, headers=UA, **kwargs)


# -- construction -----------------------------------------------------------------------------


def noop_app() -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    return app


def test_keyword_options_and_config() -> None:
    mw = CAPIMiddleware(noop_app(), pixel_id="123", access_token="tok-XYZ-secret", dry_run=True)
    assert mw.config.pixel_id == "123"
    base = CAPIConfig(pixel_id="123", access_token="tok-XYZ-secret")
    mw = CAPIMiddleware(noop_app(), config=base)
    assert mw.config is base
    mw = CAPIMiddleware(noop_app(), config=base, strict=True)
    assert mw.config.strict is True
    assert mw.config.pixel_id == "123"
    assert "XYZ" not in repr(mw)


def test_unset_options_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("META_PIXEL_ID", "555")
    monkeypatch.setenv("META_ACCESS_TOKEN", "env-token")
    monkeypatch.setenv("META_DRY_RUN", "true")
    mw = CAPIMiddleware(noop_app(), trusted_proxies=("10.0.0.0/8",))
    assert (mw.config.pixel_id, mw.config.access_token, mw.config.dry_run) == (
        "555",
        "env-token",
        True,
    )
    mw = CAPIMiddleware(noop_app(), pixel_id="777", access_token="kw")
    assert mw.config.pixel_id == "777"


def test_an_unknown_option_turns_tracking_off_naming_it() -> None:
    # Never raised: under add_middleware the constructor runs inside the first request
    # (tests/test_config_errors.py has the whole story).
    mw = CAPIMiddleware(noop_app(), pixle_id="1")
    assert mw.client.config_error == (
        "CAPIMiddleware: unknown option(s) pixle_id (did you mean pixel_id?)"
    )


def test_a_bad_option_turns_tracking_off_naming_it() -> None:
    mw = CAPIMiddleware(noop_app(), dry_run=True, trusted_proxies=("not-an-ip",))
    assert mw.client.config_error is not None
    assert mw.client.config_error.startswith("trusted_proxies [META_TRUSTED_PROXIES]: ")


def test_starlette_add_middleware_with_config() -> None:
    app = Starlette()
    app.add_middleware(CAPIMiddleware, config=CAPIConfig(dry_run=True))
    app.build_middleware_stack()


# -- the app's exceptions pass through unchanged ---------------------------------------------------


class AppError(Exception):
    pass


async def test_bare_app_exception_is_the_same_object() -> None:
    raised = AppError("boom")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["state"]["capi"].track("Lead")
        raise raised

    mw = CAPIMiddleware(app, dry_run=True, consent=True)
    with pytest.raises(AppError) as info:
        await get(mw)
    assert info.value is raised
    assert current() is None  # reset even when the app raised


async def test_starlette_app_exception_propagates() -> None:
    raised = AppError("boom")

    async def boom(request: Request) -> Response:
        raise raised

    app = Starlette(routes=[Route("/", boom)])
    app.add_middleware(CAPIMiddleware, dry_run=True, consent=True)
    with pytest.raises(AppError) as info:
        await get(app)
    assert info.value is raised
    # Without raise_app_exceptions the server's 500 comes out as usual.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get("https://example.com/")
    assert response.status_code == 500


async def test_exception_after_response_start_keeps_our_cookies() -> None:
    raised = AppError("late")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise raised

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http",
        "scheme": "https",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [(b"host", b"example.com"), (b"accept", b"text/html")],
        "client": ("8.8.8.8", 1),
        "server": ("example.com", 443),
    }
    mw = CAPIMiddleware(app, dry_run=True, consent=True)
    with pytest.raises(AppError) as info:
        await mw(scope, receive, send)
    assert info.value is raised
    assert any(name == b"set-cookie" for name, _ in sent[0]["headers"])


# -- current() ----------------------------------------------------------------------------------


async def test_current_is_the_request_context_during_the_request() -> None:
    seen: dict[str, Any] = {}

    def deep_in_the_app() -> RequestContext | None:
        return current()

    async def page(request: Request) -> Response:
        seen["state"] = request.state.capi
        seen["current"] = deep_in_the_app()
        return JSONResponse({})

    app = Starlette(routes=[Route("/", page)])
    app.add_middleware(CAPIMiddleware, dry_run=True, consent=True)
    assert current() is None
    await get(app)
    assert isinstance(seen["state"], RequestContext)
    assert seen["current"] is seen["state"]
    assert current() is None


async def test_concurrent_requests_see_their_own_context() -> None:
    seen: dict[str, Any] = {}

    async def page(request: Request) -> Response:
        name = request.query_params["n"]
        await anyio.sleep(0)  # interleave the two requests
        ctx = current()
        assert ctx is not None
        seen[name] = ctx.event_source_url
        return JSONResponse({})

    app = Starlette(routes=[Route("/", page)])
    app.add_middleware(CAPIMiddleware, dry_run=True, consent=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(get, app, "https://example.com/?n=a")
        tg.start_soon(get, app, "https://example.com/?n=b")
    assert seen == {"a": "https://example.com/?n=a", "b": "https://example.com/?n=b"}


# -- websockets and other scopes pass through ---------------------------------------------------


async def test_websocket_scope_passes_straight_through() -> None:
    received: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.update(scope=scope, receive=receive, send=send)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    scope: dict[str, Any] = {"type": "websocket", "path": "/ws", "headers": []}
    mw = CAPIMiddleware(app, dry_run=True, consent=True)
    await mw(scope, receive, send)
    assert received["scope"] is scope
    assert received["receive"] is receive
    assert received["send"] is send
    assert "state" not in scope
    assert mw.stats().requests == 0


# -- lifespan -------------------------------------------------------------------------------------


async def run_lifespan(app: Any, between: Any) -> list[str]:
    """Drive startup, run ``between()``, then shutdown; return the messages the app sent."""
    to_app: list[dict[str, Any]] = [{"type": "lifespan.startup"}]
    sent: list[str] = []
    started = anyio.Event()
    go_on = anyio.Event()

    async def receive() -> dict[str, Any]:
        if to_app:
            return to_app.pop(0)
        await go_on.wait()
        return {"type": "lifespan.shutdown"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            started.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(app, {"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        await started.wait()
        await between()
        go_on.set()
    return sent


async def test_lifespan_shutdown_flushes_before_the_app_completes(fake: FakeGraphAPI) -> None:
    # A long flush_interval: only the shutdown flush can deliver the event in time.
    events_at_app_shutdown: list[int] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        events_at_app_shutdown.append(len(fake.events))

    async def buy(request: Request) -> Response:
        return JSONResponse({"status": request.state.capi.track("Lead").status})

    app = Starlette(routes=[Route("/", buy)], lifespan=lifespan)
    app.add_middleware(CAPIMiddleware, **fake_options(fake, flush_interval=60))

    async def between() -> None:
        response = await get(app)
        assert response.json() == {"status": "queued"}

    sent = await run_lifespan(app, between)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert events_at_app_shutdown == [1]


def noop_lifespan_app() -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    return app


async def test_lifespan_without_any_event_is_harmless() -> None:
    async def nothing() -> None:
        pass

    mw = CAPIMiddleware(noop_lifespan_app(), dry_run=True)
    sent = await run_lifespan(mw, nothing)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# -- the sender -------------------------------------------------------------------------------------


async def test_sender_is_obtained_lazily(fake: FakeGraphAPI) -> None:
    async def page(request: Request) -> Response:
        ctx = request.state.capi
        status = ctx.track("Lead").status if "track" in request.query_params else "none"
        return JSONResponse({"status": status})

    app = Starlette(routes=[Route("/", page)])
    mw = CAPIMiddleware(app, **fake_options(fake, flush_interval=0.01))
    assert mw.stats().delivery is None
    assert mw.flush(0.1) is True  # nothing to flush
    await get(mw)  # a request that tracks nothing starts no sender
    assert mw.stats().delivery is None
    assert (await get(mw, "https://example.com/?track=1")).json() == {"status": "queued"}
    assert mw.stats().delivery is not None
    assert mw.close(5) is True
    assert len(fake.events) == 1
    assert mw.stats().delivery.delivered == 1
    # After close, a later track() obtains a fresh sender.
    assert (await get(mw, "https://example.com/?track=1")).json() == {"status": "queued"}
    assert mw.close(5) is True
    assert len(fake.events) == 2


async def test_no_pixel_configured_drops_and_says_so() -> None:
    async def page(request: Request) -> Response:
        result = request.state.capi.track("Lead")
        return JSONResponse(
            {"status": result.status, "problems": [str(p) for p in result.problems]}
        )

    mw = CAPIMiddleware(Starlette(routes=[Route("/", page)]), consent=True)
    body = (await get(mw)).json()
    assert body["status"] == "dropped"
    assert any("no_destination" in p for p in body["problems"])
    mw.close(1)


# -- the outbox: events left by an earlier process -------------------------------------------------


def outbox_rows(path: Any) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


async def leave_events_in_outbox(fake: FakeGraphAPI, outbox: Any, n: int) -> list[str]:
    """A first middleware tracks ``n`` purchases while Meta is down, then stops."""

    async def buy(request: Request) -> Response:
        result = request.state.capi.track("Purchase", value=5, currency="EUR", durable=True)
        return JSONResponse({"status": result.status, "event_id": result.event_id})

    first = CAPIMiddleware(
        Starlette(routes=[Route("/", buy)]), **fake_options(fake, outbox=str(outbox))
    )
    fake.down = True
    event_ids = []
    for _ in range(n):
        body = (await get(first)).json()
        assert body["status"] == "queued"
        event_ids.append(body["event_id"])
    first.close(0.2)  # Meta still down: the events stay in the outbox
    assert outbox_rows(outbox) == n
    assert fake.events == []
    fake.down = False
    return event_ids


async def test_lifespan_startup_alone_delivers_what_an_earlier_run_left(
    fake: FakeGraphAPI, tmp_path: Any
) -> None:
    outbox = tmp_path / "outbox.db"
    event_ids = await leave_events_in_outbox(fake, outbox, 3)

    second = CAPIMiddleware(noop_lifespan_app(), **fake_options(fake, outbox=str(outbox)))
    assert second.stats().delivery is None  # constructing it opens nothing

    async def no_traffic() -> None:
        # No request, no track(): only lifespan startup ran.
        assert second.stats().delivery is not None
        assert await anyio.to_thread.run_sync(fake.wait_for_events, 3)

    sent = await run_lifespan(second, no_traffic)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert sorted(fake.event_ids) == sorted(event_ids)
    assert outbox_rows(outbox) == 0
    assert second.stats().delivery.delivered == 3


async def test_without_lifespan_the_first_request_starts_the_sender(
    fake: FakeGraphAPI, tmp_path: Any
) -> None:
    outbox = tmp_path / "outbox.db"
    event_ids = await leave_events_in_outbox(fake, outbox, 2)

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})  # tracks nothing

    second = CAPIMiddleware(
        Starlette(routes=[Route("/", health)]), **fake_options(fake, outbox=str(outbox))
    )
    assert (await get(second)).json() == {"ok": True}
    assert await anyio.to_thread.run_sync(fake.wait_for_events, 2)
    assert sorted(fake.event_ids) == sorted(event_ids)
    assert second.close(5) is True


async def test_an_unusable_outbox_at_startup_never_fails_the_startup(
    fake: FakeGraphAPI, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    mw = CAPIMiddleware(
        noop_lifespan_app(), **fake_options(fake, outbox=str(not_a_dir / "outbox.db"))
    )

    async def nothing() -> None:
        assert mw.stats().delivery is not None

    sent = await run_lifespan(mw, nothing)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert "open failed" in caplog.text  # the store says so, once, and keeps events in memory


async def test_without_an_outbox_startup_creates_no_sender(fake: FakeGraphAPI) -> None:
    mw = CAPIMiddleware(noop_lifespan_app(), **fake_options(fake))

    async def check() -> None:
        assert mw.stats().delivery is None  # created lazily, on the first track()

    await run_lifespan(mw, check)
