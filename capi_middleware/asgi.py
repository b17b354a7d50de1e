"""CAPIMiddleware: the pure ASGI adapter (Starlette, FastAPI, Litestar, Quart, any ASGI app).

Modelled on Starlette's ``middleware/cors.py`` and ``sessions.py``: everything derived from the
config is built once in ``__init__``; per request, capture runs before the app, the context goes
to ``scope["state"]["capi"]`` (``request.state.capi``), and cookies are appended to the response
head in the ``send`` wrapper. Our own failures are logged and counted, never raised into the
request; the app's exceptions pass through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import anyio.to_thread

from capi_middleware.capture.context import RequestContext, activate, deactivate
from capi_middleware.capture.headers import MAX_COOKIE_HEADER_CHARS, cap_header
from capi_middleware.capture.pipeline import CapturePipeline
from capi_middleware.capture.set_cookies import cookies_not_set_by_app, is_shared_cacheable
from capi_middleware.client import CAPIClient, RequestEvents, log_internal_error, usable_client
from capi_middleware.config import CAPIConfig
from capi_middleware.results import CaptureStats

__all__ = ["CAPIMiddleware"]

logger = logging.getLogger("capi_middleware")


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class CAPIMiddleware:
    """Capture Meta's match keys on every request and send events from ``request.state.capi``.

    ``app.add_middleware(CAPIMiddleware, pixel_id="123", access_token="EAAB...")`` or
    ``app = CAPIMiddleware(app, pixel_id=..., access_token=...)``.

    Parameters:
        app: the ASGI app to wrap.
        config: a ready `CAPIConfig`; keyword options given too override its fields.
        client: a `CAPIClient` to share with jobs and webhooks (its config is used; give
            either ``client`` or options, not both). ``middleware.client`` is the one in use.
        **options: `CAPIConfig` fields (``pixel_id``, ``access_token``, ``consent``,
            ``trusted_proxies``, ``dry_run``, ...). Without ``config``, options left unset come
            from the ``META_*`` environment variables (`CAPIConfig.from_env`).

    The background sender is created on the first ``track()``, or with ``outbox`` at ASGI
    ``lifespan.startup`` (else on the first request), so that events an earlier process left
    in the outbox are delivered without waiting for traffic. It is flushed and closed on
    ``lifespan.shutdown``, by `close`, and at interpreter exit.

    A bad configuration never fails a request: where the server runs the ASGI lifespan,
    startup fails with one line naming the option and its variable (uvicorn refuses to
    start); where it does not, the error is logged once and every request passes through
    untouched with tracking off (``track()`` returns status ``"error"`` naming the problem;
    ``middleware.client.config_error`` holds it).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: CAPIConfig | None = None,
        client: CAPIClient | None = None,
        **options: Any,
    ) -> None:
        self.client = client = usable_client("CAPIMiddleware", client, config, options)
        # Said once, by the lifespan (startup fails) or else by the first request.
        self._config_error = client.config_error
        self._config_error_told = False
        config = client.config
        self.app = app
        self.config = config
        self._pipeline = CapturePipeline(client)
        # With a durable outbox the sender starts before any track(): it owes the events an
        # earlier process left there (DESIGN: "what is left at exit is sent at the next start").
        # Under dry_run the outbox is never opened, so there is nothing to start.
        self._sender_due = bool(config.outbox) and not config.dry_run
        # Without the enhancement cookie, cookies are known when capture ends: a request that
        # sets none needs no send wrapper at all.
        self._cookies_only_at_capture = config.enhancement_secret is None
        # serverless: each request's events are delivered before its call returns.
        self._serverless = config.serverless

    def __repr__(self) -> str:
        return f"CAPIMiddleware(app={self.app!r}, config={self.config!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Whatever the app returns is returned (issue 10): a wrapper hides nothing.
        if self._config_error is not None:
            return await self._pass_through(scope, receive, send)
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                return await self.app(scope, self._lifespan_receive(receive), send)
            return await self.app(scope, receive, send)  # websocket and the rest: untouched

        if self._sender_due:
            await self._start_sender()  # no lifespan support: the first request does it
        ctx = self._capture(scope)
        token = activate(ctx)
        try:
            if self._serverless:
                return await self._serverless_call(ctx, scope, receive, send)
            if not ctx.response_cookies and self._cookies_only_at_capture:
                return await self.app(scope, receive, send)

            async def send_with_cookies(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message = _with_cookies(ctx, message, self._pipeline)
                await send(message)

            return await self.app(scope, receive, send_with_cookies)
        finally:
            deactivate(token)

    async def _serverless_call(
        self, ctx: RequestContext, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """The app call with ``serverless``: the request's events are delivered before it ends.

        Before the response's last body message goes out (Cloud Run gives CPU only until the
        response is complete), and again when the app returns (for events tracked after the
        response, e.g. in a background task), each time only when events were queued.
        """
        events = self.client.request_events()
        assert events is not None  # the client is serverless

        async def send_then_deliver(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                message = _with_cookies(ctx, message, self._pipeline)
            elif kind == "http.response.body" and events.queued and not message.get("more_body"):
                await _deliver(events)
            await send(message)

        try:
            return await self.app(scope, receive, send_then_deliver)
        finally:
            events.leave()
            if events.queued:
                await _deliver(events)

    # -- capture ----------------------------------------------------------------------------

    def _capture(self, scope: Scope) -> RequestContext:
        pipeline = self._pipeline
        try:
            # What capture needs from the scope; the rest is decoded on first use.
            raw_path = scope.get("raw_path")
            if not isinstance(raw_path, bytes):
                raw_path = _raw_path_of(scope)
            client = scope.get("client")
            query = scope.get("query_string") or b""
            ctx = pipeline.capture_raw(
                peer=client[0] if client else None,
                scheme=scope.get("scheme") or "http",
                server=scope.get("server"),
                raw_path=raw_path,
                query_string=query if isinstance(query, bytes) else str(query),
                header_map=asgi_header_map(scope.get("headers") or ()),
            )
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

    # -- a rejected configuration -----------------------------------------------------------

    async def _pass_through(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Fail the lifespan startup, or let a request through untouched with tracking off."""
        message = f"capi_middleware: configuration error: {self._config_error}"
        if scope["type"] == "lifespan":
            # The server refuses to start, printing this one line (uvicorn, hypercorn).
            while True:
                event = await receive()
                if event.get("type") == "lifespan.startup":
                    await send({"type": "lifespan.startup.failed", "message": message})
                    return
                if event.get("type") == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self._config_error_told:
            self._config_error_told = True
            logger.error("%s; tracking is off and requests pass through untouched", message)
        ctx = RequestContext(self.client)  # its track() reports the configuration error
        try:
            scope.setdefault("state", {})["capi"] = ctx
        except Exception as exc:  # a scope["state"] that is not a mapping: the app's business
            log_internal_error("storing the request context", exc)
        token = activate(ctx)
        try:
            return await self.app(scope, receive, send)
        finally:
            deactivate(token)

    # -- lifespan ---------------------------------------------------------------------------

    async def _start_sender(self) -> None:
        """Obtain the sender (opening the outbox) off the event loop; once; never raises."""
        self._sender_due = False
        try:
            await anyio.to_thread.run_sync(self.client.sender)
        except Exception as exc:  # an unusable outbox: track() will try again and report it
            log_internal_error("starting the sender", exc)

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def receive_and_flush() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.startup" and self._sender_due:
                await self._start_sender()
            if message.get("type") == "lifespan.shutdown":
                # Deliver what is queued before the app reports shutdown.complete and the
                # server exits; off the event loop, since flushing waits on the sender thread.
                try:
                    await anyio.to_thread.run_sync(self.client.close)
                except Exception as exc:
                    log_internal_error("flush at lifespan shutdown", exc)
            return message

        return receive_and_flush

    # -- control ----------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Block until queued events are delivered or given up on; True when the queue drained."""
        return self.client.flush(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush (up to ``timeout``, default ``shutdown_timeout``) and stop the sender."""
        return self.client.close(timeout)

    def stats(self) -> CaptureStats:
        """The middleware's counters and, once an event was tracked, the sender's stats."""
        return self.client.stats()

    def match_quality(self) -> dict[str, dict[str, Any]]:
        """Per event name, the match keys of the events sent and the values dropped (the
        client's `CAPIClient.match_quality`)."""
        return self.client.match_quality()


async def _deliver(events: RequestEvents) -> None:
    """`RequestEvents.deliver` off the event loop, even when the request is being cancelled."""
    with anyio.CancelScope(shield=True):
        try:
            await anyio.to_thread.run_sync(events.deliver)
        except Exception as exc:
            log_internal_error("serverless delivery", exc)


def asgi_header_map(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """An ASGI header list as lowercase name -> value, each name once, for `capture_raw`.

    Servers send lowercase names, and repeats are rare: then ``dict()`` does it at C speed.
    Otherwise names are lowercased and repeats joined (``"; "`` for Cookie, which HTTP/2
    splits into several fields; ``", "`` for the rest), each capped as capture caps them.

    A lowercase ``host`` (every HTTP/1.1 request has one; HTTP/2 servers map ``:authority`` to
    it) is taken as the sign of a server that lowercases every name, as ASGI asks and uvicorn,
    hypercorn, daphne and granian do; without it every name is checked. A server that kept a
    client's case shows it on Host too (browsers, curl and HTTP libraries send ``Host``). The
    full check would cost a seventh of capture on a memoized request (docs/overhead.md).
    """
    if not isinstance(raw_headers, (list, tuple)):
        raw_headers = list(raw_headers)
    try:
        header_map = dict(raw_headers)
        if len(header_map) == len(raw_headers) and (
            b"host" in header_map or b"".join(header_map).islower()
        ):
            return header_map
    except (TypeError, ValueError):
        pass
    parts: dict[bytes, list[bytes]] = {}
    sizes: dict[bytes, int] = {}
    for raw_name, raw_value in raw_headers:
        name = raw_name if raw_name.islower() else raw_name.lower()
        size = sizes.get(name, 0)
        if size >= _JOIN_LIMIT:
            continue  # a flood of repeats: later ones are not looked at
        parts.setdefault(name, []).append(raw_value[:_JOIN_LIMIT])
        sizes[name] = size + len(raw_value) + 2
    # Each joined value is capped by capture's own rule (cap_header), which for forwarding
    # headers keeps the right end rather than the left.
    return {
        name: cap_header(
            name.decode("latin-1"), (b"; " if name == b"cookie" else b", ").join(values)
        )
        for name, values in parts.items()
    }


# How much of one header's repeats is joined before capping (a bound on a hostile flood).
_JOIN_LIMIT = 4 * MAX_COOKIE_HEADER_CHARS


def _raw_path_of(scope: Scope) -> str:
    """The request path when the server gives no ``raw_path``: rebuilt from ``path``."""
    path: str = scope.get("path") or "/"
    root = scope.get("root_path") or ""
    if root and not path.startswith(root):  # servers differ on whether path has it
        path = root + path
    # Latin-1 text of the UTF-8 bytes, percent-encoded later like the browser does.
    return path.encode("utf-8").decode("latin-1")


def _with_cookies(ctx: RequestContext, message: Message, pipeline: CapturePipeline) -> Message:
    """The response head with this request's Set-Cookie values appended; never the app's dict.

    A new message, never the app's own (issue 10): an app may send one prebuilt start message
    for every response, and a cookie stored into it would reach every later visitor. Appended,
    never replacing the app's cookies, and none that the app's response sets itself (the
    browser would keep two). The same as Starlette's ``MutableHeaders.append`` on a copy,
    written out because it runs on every response.
    """
    try:
        cookies = ctx.response_cookies.take()
        if not cookies:
            return message
        headers = list(message.get("headers") or ())
        app_cookies: list[bytes] | None = None
        for name, value in headers:
            size = len(name)  # most names are ruled out by their length
            if size == 13 and name.lower() == b"cache-control":
                if is_shared_cacheable(value.decode("latin-1")):
                    # A shared cache would hand this visitor's _fbp/_fbc to everyone else.
                    return message
            elif size == 10 and name.lower() == b"set-cookie":
                app_cookies = [] if app_cookies is None else app_cookies
                app_cookies.append(value)
        if app_cookies is not None:
            cookies = cookies_not_set_by_app(cookies, (v.decode("latin-1") for v in app_cookies))
        headers.extend([(b"set-cookie", cookie.encode("latin-1")) for cookie in cookies])
        new = dict(message)
        new["headers"] = headers
        return new
    except Exception as exc:
        pipeline.count("capture_errors")
        log_internal_error("setting cookies", exc)
        return message
