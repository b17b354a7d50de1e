"""CAPIWSGIMiddleware: the WSGI adapter (Flask, Django under WSGI, Pyramid, Bottle, any WSGI app).

The same `CapturePipeline` as the ASGI adapter does the work; this module only reads a WSGI
environ (PEP 3333) and writes cookies through ``start_response``. The context is at
``environ["capi"]`` and `capi_middleware.current()` during the app call. Our own failures are
logged and counted, never raised into the request; the app's exceptions pass through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

from capi_middleware.capture.context import RequestContext, activate, deactivate
from capi_middleware.capture.headers import cap_header
from capi_middleware.capture.pipeline import CapturePipeline
from capi_middleware.capture.set_cookies import cookies_not_set_by_app, is_shared_cacheable
from capi_middleware.client import CAPIClient, log_internal_error, usable_client
from capi_middleware.config import CAPIConfig
from capi_middleware.results import CaptureStats

__all__ = ["CAPIWSGIMiddleware", "capture_environ"]


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

logger = logging.getLogger("capi_middleware")

# Characters a browser leaves unescaped in a path (as Django's escape_uri_path keeps them).
_PATH_SAFE = "/:@&+$,-_.!~*'();="


class CAPIWSGIMiddleware:
    """Capture Meta's match keys on every request and send events from ``environ["capi"]``.

    ``app.wsgi_app = CAPIWSGIMiddleware(app.wsgi_app, pixel_id="123", access_token="EAAB...")``
    (Flask) or ``application = CAPIWSGIMiddleware(application, ...)`` (any WSGI app).

    Parameters:
        app: the WSGI app to wrap.
        config: a ready `CAPIConfig`; keyword options given too override its fields.
        client: a `CAPIClient` to share with jobs and webhooks (its config is used; give
            either ``client`` or options, not both). ``middleware.client`` is the one in use.
        **options: `CAPIConfig` fields (``pixel_id``, ``access_token``, ``consent``,
            ``trusted_proxies``, ``dry_run``, ...). Without ``config``, options left unset come
            from the ``META_*`` environment variables (`CAPIConfig.from_env`).

    The background sender (a daemon thread, one per process, fork-safe) is created on the first
    ``track()``, or with ``outbox`` on the first request (in the worker process, after any
    fork), so that events an earlier process left in the outbox are delivered without waiting
    for a ``track()``. WSGI has no shutdown hook, so it is flushed by `close` and at interpreter
    exit (gunicorn's workers exit through it on SIGTERM).

    A bad configuration never fails a request: the error is logged once, when the middleware
    is built, and every request passes through untouched with tracking off (``track()``
    returns status ``"error"`` naming the problem; ``middleware.client.config_error`` holds it).
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        config: CAPIConfig | None = None,
        client: CAPIClient | None = None,
        **options: Any,
    ) -> None:
        self.client = client = usable_client("CAPIWSGIMiddleware", client, config, options)
        self._config_error = client.config_error
        if self._config_error is not None:
            logger.error(
                "capi_middleware: configuration error: %s; tracking is off and requests pass "
                "through untouched",
                self._config_error,
            )
        config = client.config
        self.app = app
        self.config = config
        self._pipeline = CapturePipeline(client)
        # With a durable outbox the sender starts before any track() (see the class docstring).
        self._sender_due = bool(config.outbox) and not config.dry_run
        self._serverless = config.serverless

    def __repr__(self) -> str:
        return f"CAPIWSGIMiddleware(app={self.app!r}, config={self.config!r})"

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self._config_error is not None:
            return self._pass_through(environ, start_response)
        pipeline = self._pipeline
        if self._sender_due:
            self._start_sender()
        ctx = self._capture(environ)
        added: list[str] | None = None

        def start_response_with_cookies(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            nonlocal added
            try:
                if added is None:
                    added = _cookies_for(ctx, headers)
                if added:
                    # Append, never replace: the app's own Set-Cookie headers stay.
                    headers = [*headers, *(("Set-Cookie", cookie) for cookie in added)]
            except Exception as exc:
                pipeline.count("capture_errors")
                log_internal_error("setting cookies", exc)
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        token = activate(ctx)
        events = self.client.request_events() if self._serverless else None
        try:
            return self.app(environ, start_response_with_cookies)
        finally:
            deactivate(token)
            if events is not None:
                # serverless: the events the app tracked are delivered before the server
                # writes the body (and before a Lambda/Cloud Run request ends). Events tracked
                # while a streamed body is iterated are not waited for.
                events.leave()
                events.deliver()

    def _pass_through(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        """A request under a rejected configuration: untouched; its track() reports why."""
        ctx = environ["capi"] = RequestContext(self.client)
        token = activate(ctx)
        try:
            return self.app(environ, start_response)
        finally:
            deactivate(token)

    def _start_sender(self) -> None:
        """Obtain the sender (opening the outbox) once; never raises into the request."""
        self._sender_due = False
        try:
            self.client.sender()
        except Exception as exc:  # an unusable outbox: track() will try again and report it
            log_internal_error("starting the sender", exc)

    def _capture(self, environ: dict[str, Any]) -> RequestContext:
        pipeline = self._pipeline
        try:
            ctx = capture_environ(pipeline, environ)
        except Exception as exc:
            pipeline.count("capture_errors")
            log_internal_error("request capture", exc)
            ctx = pipeline.failed_context("capture")
        environ["capi"] = ctx
        return ctx

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


def _cookies_for(ctx: RequestContext, headers: Iterable[tuple[str, str]]) -> list[str]:
    """The Set-Cookie values to add to this response head (none for a shared-cacheable one)."""
    cookies = ctx.response_cookies.take()
    if not cookies:
        return cookies
    cache_control = ", ".join(v for k, v in headers if k.lower() == "cache-control")
    if is_shared_cacheable(cache_control):
        # A CDN or proxy would hand this visitor's _fbp/_fbc to everyone else.
        return []
    app_cookies = [v for k, v in headers if k.lower() == "set-cookie"]
    return cookies_not_set_by_app(cookies, app_cookies) if app_cookies else cookies


def environ_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    """Request headers from a WSGI environ: lowercase names -> latin-1 values, capped.

    PEP 3333 keeps headers as ``HTTP_*`` keys (latin-1 text, repeats already joined by the
    server) plus ``CONTENT_TYPE`` / ``CONTENT_LENGTH``.
    """
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if not isinstance(value, str):
            continue
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower()
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key.replace("_", "-").lower()
        else:
            continue
        headers[name] = cap_header(name, value)
    return headers


def environ_raw_path(environ: Mapping[str, Any]) -> str:
    """The path as the browser sent it: the server's raw request URI when it gives one."""
    for key in ("RAW_URI", "REQUEST_URI"):  # gunicorn, werkzeug; uWSGI, mod_wsgi
        raw = environ.get(key)
        if isinstance(raw, str) and raw.startswith("/"):
            return raw.split("?", 1)[0]
    path = f"{environ.get('SCRIPT_NAME') or ''}{environ.get('PATH_INFO') or ''}"
    # PATH_INFO is percent-decoded bytes as latin-1 text (PEP 3333): encode it back.
    return quote(path.encode("latin-1", "replace"), safe=_PATH_SAFE) or "/"


def capture_environ(
    pipeline: CapturePipeline,
    environ: Mapping[str, Any],
    *,
    scheme: str | None = None,
    raw_path: str | None = None,
) -> RequestContext:
    """Build a RequestContext from a WSGI environ (or Django's ``request.META``).

    ``scheme`` and ``raw_path`` override what the environ says (Django knows them better under
    ASGI, where ``META`` has no ``wsgi.url_scheme``). Raises on a broken environ; callers guard.
    """
    port = environ.get("SERVER_PORT")
    name = environ.get("SERVER_NAME")
    server = (str(name), int(port) if port and str(port).isdigit() else None) if name else None
    query = environ.get("QUERY_STRING")
    peer = environ.get("REMOTE_ADDR")
    return pipeline.capture(
        peer=peer if isinstance(peer, str) and peer else None,
        scheme=scheme or str(environ.get("wsgi.url_scheme") or "http"),
        server=server,
        raw_path=raw_path if raw_path is not None else environ_raw_path(environ),
        query_string=query if isinstance(query, str) else "",
        headers=environ_headers(environ),
    )
