"""Django integration: ``capi_middleware.django.CAPIDjangoMiddleware``, configured from settings.

::

    MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "capi_middleware.django.CAPIDjangoMiddleware",
        ...
    ]
    CAPI = {"consent": None, "trusted_proxies": ["10.0.0.0/8"]}   # CAPIConfig options

Add ``"capi_middleware.django.CAPIAppConfig"`` to ``INSTALLED_APPS`` so that ``manage.py check``
validates ``settings.CAPI`` (`check_settings`).

Options missing from ``settings.CAPI`` come from the ``META_*`` environment variables. Views read
``request.capi`` (the same `RequestContext` as everywhere else) or `capi_middleware.current()`.
Works under WSGI and ASGI Django (sync and async capable). Imported only by Django users.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from http.cookies import SimpleCookie
from typing import Any

import anyio.to_thread
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase
from django.utils.encoding import escape_uri_path

from capi_middleware.capture.context import RequestContext, activate, deactivate
from capi_middleware.capture.pipeline import CapturePipeline
from capi_middleware.capture.set_cookies import is_shared_cacheable
from capi_middleware.client import CAPIClient, log_internal_error
from capi_middleware.config import CAPIConfig
from capi_middleware.results import CaptureStats
from capi_middleware.wsgi import capture_environ

__all__ = ["CAPIAppConfig", "CAPIDjangoMiddleware", "check_settings", "get_client", "get_pipeline"]

GetResponse = Callable[[HttpRequest], Any]

logger = logging.getLogger("capi_middleware")

# One pipeline (and so one sender) per process and settings value: Django builds a middleware
# instance per handler, and tests or ASGI + WSGI in one process may build several.
_pipelines: dict[str, CapturePipeline] = {}
_pipelines_lock = threading.Lock()


def _config_from_settings() -> CAPIConfig:
    options = getattr(settings, "CAPI", None)
    if options is None:
        options = {}
    if isinstance(options, CAPIConfig):
        return options
    if not isinstance(options, Mapping):
        raise ImproperlyConfigured("settings.CAPI: must be a dict of CAPIConfig options")
    try:
        return CAPIConfig.from_options("settings.CAPI", None, dict(options))
    except TypeError as exc:  # an unknown key: "settings.CAPI: unknown option(s) ..."
        raise ImproperlyConfigured(str(exc)) from None
    except ValueError as exc:  # CAPIConfig's message names the option
        raise ImproperlyConfigured(f"settings.CAPI: {exc}") from None


def get_pipeline(config: CAPIConfig | None = None) -> CapturePipeline:
    """The process's pipeline for ``config`` (default: from ``settings.CAPI``)."""
    config = config if config is not None else _config_from_settings()
    key = repr(config)  # the repr covers every option (secrets masked; pixel ids differ)
    with _pipelines_lock:
        pipeline = _pipelines.get(key)
        if pipeline is None or pipeline.config != config:
            pipeline = CapturePipeline(CAPIClient(config))
            _pipelines[key] = pipeline
        return pipeline


def get_client() -> CAPIClient:
    """The `CAPIClient` the middleware uses in this process, from ``settings.CAPI``.

    For events outside a request in a Django project (a webhook view's helper, a management
    command, a Celery task): ``get_client().track("Purchase", visitor=v, ...)`` shares the
    middleware's config, counters and sender. Raises ``ImproperlyConfigured`` for bad settings.
    """
    return get_pipeline().client


_told_config_errors: set[str] = set()


def _tell_config_error_once(error: str) -> None:
    # Django builds a middleware instance per handler (WSGI, ASGI, test clients): once each.
    with _pipelines_lock:
        if error in _told_config_errors:
            return
        _told_config_errors.add(error)
    logger.error(
        "capi_middleware: configuration error: %s; tracking is off and requests pass through "
        "untouched",
        error,
    )


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Django system check: ``settings.CAPI`` with the middleware's own messages.

    Registered when this module is imported; add `CAPIAppConfig` to ``INSTALLED_APPS`` so it
    is imported before ``manage.py check`` (and ``runserver``, ``migrate``) run the checks.
    """
    try:
        config = _config_from_settings()
    except ImproperlyConfigured as exc:
        return [
            checks.Error(
                str(exc),
                hint="Until it is fixed, CAPIDjangoMiddleware passes requests through with "
                "tracking off.",
                id="capi_middleware.E001",
            )
        ]
    found: list[checks.CheckMessage] = []
    if not config.destinations() and not config.dry_run:
        found.append(
            checks.Warning(
                "settings.CAPI: no pixel_id [META_PIXEL_ID] / access_token [META_ACCESS_TOKEN]; "
                "events will be dropped",
                hint='Set both, or "dry_run": True to build and log events without sending.',
                id="capi_middleware.W001",
            )
        )
    if config.test_event_code:
        found.append(
            checks.Warning(
                "settings.CAPI: test_event_code [META_TEST_EVENT_CODE] is set; events go to "
                "Test Events only",
                hint="Remove it in production.",
                id="capi_middleware.W002",
            )
        )
    return found


checks.register(check_settings)


class CAPIAppConfig(AppConfig):  # type: ignore[misc]  # django ships no type hints
    """``INSTALLED_APPS`` entry ``"capi_middleware.django.CAPIAppConfig"``: system checks."""

    name = "capi_middleware"
    label = "capi_middleware"
    verbose_name = "Meta Conversions API"
    default_auto_field = "django.db.models.AutoField"


class CAPIDjangoMiddleware:
    """Capture Meta's match keys on every request; views send events from ``request.capi``.

    Parameters:
        get_response: the next middleware or view (Django passes it).

    Configured from ``settings.CAPI`` (a dict of `CAPIConfig` options). A bad option never
    fails a request: ``manage.py check`` (and ``runserver``, ``migrate``) reports it with the
    same message (`check_settings`), and the middleware logs it once and passes every request
    through untouched with tracking off (``request.capi.track()`` returns status ``"error"``
    naming it). Sync and async capable: under ASGI with an async chain no thread is spent on it.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        try:
            self.pipeline = get_pipeline()
            self._config_error: str | None = None
        except ImproperlyConfigured as exc:
            self._config_error = str(exc)
            self.pipeline = CapturePipeline(CAPIClient.disabled(self._config_error))
            _tell_config_error_once(self._config_error)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __repr__(self) -> str:
        return f"CAPIDjangoMiddleware(config={self.pipeline.config!r})"

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        ctx = self._capture(request)
        token = activate(ctx)
        events = self.pipeline.client.request_events()  # None unless serverless
        try:
            response = self.get_response(request)
        finally:
            deactivate(token)
            if events is not None:
                events.leave()
                events.deliver()  # serverless: before the response is handed back
        self._set_cookies(ctx, response)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        ctx = self._capture(request)
        token = activate(ctx)
        events = self.pipeline.client.request_events()  # None unless serverless
        try:
            get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
            response = await get_response(request)
        finally:
            deactivate(token)
            if events is not None:
                events.leave()
                if events.queued:  # serverless: off the event loop, before the response
                    await anyio.to_thread.run_sync(events.deliver)
        self._set_cookies(ctx, response)
        return response

    def _capture(self, request: HttpRequest) -> RequestContext:
        pipeline = self.pipeline
        if self._config_error is not None:
            # Untouched: no capture, no cookies; track() reports the configuration error.
            ctx = request.capi = RequestContext(pipeline.client)
            return ctx
        try:
            ctx = capture_environ(
                pipeline,
                request.META,
                # request.scheme honours SECURE_PROXY_SSL_HEADER, Django's own proxy setting.
                scheme=request.scheme,
                raw_path=escape_uri_path(request.path),
            )
        except Exception as exc:
            pipeline.count("capture_errors")
            log_internal_error("request capture", exc)
            ctx = pipeline.failed_context("capture")
        request.capi = ctx
        return ctx

    def _set_cookies(self, ctx: RequestContext, response: HttpResponseBase) -> None:
        try:
            cookies = ctx.response_cookies.take()
            if not cookies or is_shared_cacheable(response.headers.get("Cache-Control")):
                return
            for header in cookies:
                parsed: SimpleCookie = SimpleCookie()
                parsed.load(header)
                for name, morsel in parsed.items():
                    # The view's own cookie of the same name wins.
                    if name not in response.cookies:
                        response.cookies[name] = morsel
        except Exception as exc:
            self.pipeline.count("capture_errors")
            log_internal_error("setting cookies", exc)

    def stats(self) -> CaptureStats:
        """The middleware's counters and, once an event was tracked, the sender's stats."""
        return self.pipeline.client.stats()

    def match_quality(self) -> dict[str, dict[str, Any]]:
        """Per event name, the match keys of the events sent and the values dropped (the
        client's `CAPIClient.match_quality`)."""
        return self.pipeline.client.match_quality()

    def flush(self, timeout: float | None = None) -> bool:
        """Block until queued events are delivered or given up on."""
        return self.pipeline.client.flush(timeout)
