"""CAPIMiddleware: the pure ASGI adapter (Starlette, FastAPI, Litestar, Quart, any ASGI app).

Modelled on Starlette's ``middleware/cors.py`` and ``sessions.py``: everything derived from the
config is built once in ``__init__``; per request, capture runs before the app, the context goes
to ``scope["state"]["capi"]`` (``request.state.capi``), and cookies are appended to the response
head in the ``send`` wrapper. Our own failures are logged and counted, never raised into the
request; the app's exceptions pass through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import fields
from typing import Any

import anyio.to_thread

from capi_middleware.config import CAPIConfig
from capi_middleware.context import (
    CAPTURED_HEADERS,
    MAX_COOKIE_HEADER_CHARS,
    MAX_HEADER_CHARS,
    CapturePipeline,
    CaptureStats,
    RequestContext,
    activate,
    deactivate,
    is_shared_cacheable,
    log_internal_error,
)

__all__ = ["CAPIMiddleware"]

logger = logging.getLogger("capi_middleware")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_OPTIONS = frozenset(f.name for f in fields(CAPIConfig))


class CAPIMiddleware:
    """Capture Meta's match keys on every request and send events from ``request.state.capi``.

    ``app.add_middleware(CAPIMiddleware, pixel_id="123", access_token="EAAB...")`` or
    ``app = CAPIMiddleware(app, pixel_id=..., access_token=...)``.

    Parameters:
        app: the ASGI app to wrap.
        config: a ready `CAPIConfig`; keyword options given too override its fields.
        **options: `CAPIConfig` fields (``pixel_id``, ``access_token``, ``consent``,
            ``trusted_proxies``, ``dry_run``, ...). Without ``config``, options left unset come
            from the ``META_*`` environment variables (`CAPIConfig.from_env`).

    The background sender is created on the first ``track()``; it is flushed and closed on ASGI
    ``lifespan.shutdown``, by `close`, and at interpreter exit.
    """

    def __init__(self, app: ASGIApp, *, config: CAPIConfig | None = None, **options: Any) -> None:
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise TypeError(f"CAPIMiddleware: unknown option(s) {', '.join(unknown)}")
        if config is None:
            config = CAPIConfig.from_env(**options)
        elif options:
            config = config.replace(**options)
        self.app = app
        self.config = config
        self._pipeline = CapturePipeline(config)
        if config.test_event_code:
            logger.warning(
                "capi_middleware: test_event_code is set; events go to Test Events only "
                "(remove it in production)"
            )

    def __repr__(self) -> str:
        return f"CAPIMiddleware(app={self.app!r}, config={self.config!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, self._lifespan_receive(receive), send)
                return
            await self.app(scope, receive, send)  # websocket and anything else: untouched
            return

        ctx = self._capture(scope)
        token = activate(ctx)

        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start":
                _add_cookies(ctx, message, self._pipeline)
            await send(message)

        try:
            await self.app(scope, receive, send_with_cookies)
        finally:
            deactivate(token)

    # -- capture ----------------------------------------------------------------------------

    def _capture(self, scope: Scope) -> RequestContext:
        pipeline = self._pipeline
        try:
            ctx = _capture_scope(pipeline, scope)
        except Exception as exc:
            pipeline.count("capture_errors")
            log_internal_error("request capture", exc)
            ctx = pipeline.failed_context("capture")
        try:
            scope.setdefault("state", {})["capi"] = ctx
        except Exception as exc:  # a scope["state"] that is not a mapping: the app's business
            pipeline.count("capture_errors")
            log_internal_error("storing the request context", exc)
        return ctx

    # -- lifespan ---------------------------------------------------------------------------

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def receive_and_flush() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                # Deliver what is queued before the app reports shutdown.complete and the
                # server exits; off the event loop, since flushing waits on the sender thread.
                try:
                    await anyio.to_thread.run_sync(self._pipeline.close)
                except Exception as exc:
                    log_internal_error("flush at lifespan shutdown", exc)
            return message

        return receive_and_flush

    # -- control ----------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Block until queued events are delivered or given up on; True when the queue drained."""
        return self._pipeline.flush(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush (up to ``timeout``, default ``shutdown_timeout``) and stop the sender."""
        return self._pipeline.close(timeout)

    def stats(self) -> CaptureStats:
        """The middleware's counters and, once an event was tracked, the sender's stats."""
        return self._pipeline.stats()


_CAPTURED = {name.encode("latin-1"): name for name in CAPTURED_HEADERS}


def _capture_scope(pipeline: CapturePipeline, scope: Scope) -> RequestContext:
    """Read what capture needs from an ASGI http scope.

    Only the `CAPTURED_HEADERS` are decoded here; ``ctx.header()`` finds any other on demand.
    """
    headers: dict[str, str] = {}
    raw_headers = scope.get("headers") or ()
    wanted = _CAPTURED.get
    for raw_name, raw_value in raw_headers:
        name = wanted(raw_name)
        # ASGI servers lowercase names; tolerate an app or test that did not.
        if name is None and (raw_name.islower() or (name := wanted(raw_name.lower())) is None):
            continue
        limit = MAX_COOKIE_HEADER_CHARS if name == "cookie" else MAX_HEADER_CHARS
        # latin-1 decodes any byte: invalid UTF-8 from a client can never raise here.
        value = raw_value[:limit].decode("latin-1")
        previous = headers.get(name)
        if previous is None:
            headers[name] = value
        elif len(previous) < limit:
            # HTTP/2 splits Cookie into several fields; other repeats join with ", ".
            joined = f"{previous}{'; ' if name == 'cookie' else ', '}{value}"
            headers[name] = joined[:limit]
    client = scope.get("client")
    raw_path = scope.get("raw_path")
    if isinstance(raw_path, bytes):
        path = raw_path.decode("latin-1")
        if "?" in path:  # some servers include the query in raw_path
            path = path.split("?", 1)[0]
    else:
        path = scope.get("path") or "/"
        root = scope.get("root_path") or ""
        if root and not path.startswith(root):  # servers differ on whether path has it
            path = root + path
        path = path.encode("utf-8").decode("latin-1")  # percent-encoded below, like the browser
    query = scope.get("query_string") or b""
    server = scope.get("server")
    return pipeline.capture(
        peer=client[0] if client else None,
        scheme=scope.get("scheme") or "http",
        server=(server[0], server[1]) if server else None,
        raw_path=path,
        query_string=query.decode("latin-1") if isinstance(query, bytes) else str(query),
        headers=headers,
        raw_headers=raw_headers,
    )


def _add_cookies(ctx: RequestContext, message: Message, pipeline: CapturePipeline) -> None:
    """Append the request's Set-Cookie values to the response head; never replace the app's.

    The same as ``MutableHeaders(scope=message).append("set-cookie", ...)`` (Starlette's
    cors.py), written out because it runs on every response.
    """
    try:
        cookies = ctx.take_set_cookies()
        if not cookies:
            return
        headers = list(message.get("headers") or ())
        for name, value in headers:
            if name.lower() == b"cache-control" and is_shared_cacheable(value.decode("latin-1")):
                # A shared cache would hand this visitor's _fbp/_fbc to everyone else.
                return
        for cookie in cookies:
            headers.append((b"set-cookie", cookie.encode("latin-1")))
        message["headers"] = headers
    except Exception as exc:
        pipeline.count("capture_errors")
        log_internal_error("setting cookies", exc)
