"""A one-module Django site for the tests: settings, views and URLs.

Django's settings are global to a process, so every test module that uses Django calls
`configure()` (idempotent) and swaps the ``CAPI`` setting with ``override_settings`` before it
builds a handler: middleware is instantiated when the handler is built.
"""

from __future__ import annotations

import json

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from apps.frameworks import buy as track_purchase
from apps.frameworks import describe
from capi_middleware.capture.context import current

MIDDLEWARE = ["capi_middleware.django.CAPIDjangoMiddleware"]


def configure() -> None:
    """Configure Django once for this test process."""
    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests-only-not-secret",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=MIDDLEWARE,
        INSTALLED_APPS=[],
        USE_TZ=True,
        CAPI={},
        LOGGING_CONFIG=None,
    )
    django.setup()


def landing(request: HttpRequest) -> HttpResponse:
    return JsonResponse(describe(request.capi))


def buy(request: HttpRequest) -> HttpResponse:
    return JsonResponse(track_purchase(request.capi))


async def async_buy(request: HttpRequest) -> HttpResponse:
    ctx = current()  # set by the middleware around the async view too
    assert ctx is request.capi
    return JsonResponse(track_purchase(ctx))


def own_cookie(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(json.dumps({"ok": True}), content_type="application/json")
    response.set_cookie("session", "s1")
    return response


class ShopError(RuntimeError):
    pass


def boom(request: HttpRequest) -> HttpResponse:
    raise ShopError("the app's own failure")


urlpatterns = [
    path("landing", landing),
    path("buy", buy),
    path("async-buy", async_buy),
    path("own-cookie", own_cookie),
    path("boom", boom),
]
