"""A one-file Django shop that reports its purchases to Meta's Conversions API.

Run:   python examples/django_shop/app.py runserver
       (WSGI: gunicorn examples.django_shop.app; ASGI: uvicorn examples.django_shop.app:asgi)
Env:   META_PIXEL_ID, META_ACCESS_TOKEN (unset: events are dropped and a warning is logged),
       META_GRAPH_URL (e.g. the fake Graph API of `capi-middleware demo`), META_TEST_EVENT_CODE.

In a real project the settings go in settings.py: add the middleware to MIDDLEWARE and the
options to a CAPI dict. Open /?fbclid=test123, accept cookies, buy the tee: the thank-you page
fires the pixel's Purchase with the event id the server sent (deduplication).
"""

from __future__ import annotations

import json
import os
import sys
import uuid

from django.conf import settings

settings.configure(
    DEBUG=os.environ.get("DJANGO_DEBUG") == "1",
    SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret"),
    ALLOWED_HOSTS=["localhost", "127.0.0.1", "[::1]"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "capi_middleware.django.CAPIDjangoMiddleware",
    ],
    # CAPIConfig options; those left out come from the META_* environment variables.
    CAPI={"consent": None},  # None: the default policy (the visitor's opt-in is required)
)

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect  # noqa: E402
from django.middleware.csrf import get_token  # noqa: E402
from django.urls import path  # noqa: E402
from django.utils.html import escape, format_html  # noqa: E402
from django.views.decorators.http import require_POST  # noqa: E402

from capi_middleware import TrackResult  # noqa: E402

PIXEL_ID = os.environ.get("META_PIXEL_ID", "")
PRODUCTS = {"tee": ("Organic cotton tee", 29.0), "mug": ("Enamel camp mug", 18.5)}

PIXEL = """<script>
!function(f,b,e,v,n,t,s){if(f.fbq)return;n=f.fbq=function(){n.callMethod?
n.callMethod.apply(n,arguments):n.queue.push(arguments)};if(!f._fbq)f._fbq=n;n.push=n;
n.loaded=!0;n.version='2.0';n.queue=[];t=b.createElement(e);t.async=!0;t.src=v;
s=b.getElementsByTagName(e)[0];s.parentNode.insertBefore(t,s)}(window,document,'script',
'https://connect.facebook.net/en_US/fbevents.js');
fbq('consent', '%(consent)s');
fbq('init', %(pixel)s);
fbq('track', 'PageView');
%(track)s
</script>"""


def page(
    request: HttpRequest, title: str, body: str, result: TrackResult | None = None
) -> HttpResponse:
    """A page with Meta's pixel; with ``result``, the browser half of the server's event."""
    pixel = PIXEL % {
        "consent": "grant" if request.capi.consent.granted else "revoke",
        "pixel": json.dumps(PIXEL_ID),
        # fbq() output is already safe inside <script> (JSON with <, >, & escaped).
        "track": result.fbq() if result is not None and result.ok else "",
    }
    return HttpResponse(
        f"<!doctype html><title>{escape(title)}</title>{pixel}<h1>{escape(title)}</h1>{body}"
    )


def home(request: HttpRequest) -> HttpResponse:
    csrf = format_html(
        '<input type="hidden" name="csrfmiddlewaretoken" value="{}">', get_token(request)
    )
    buttons = "".join(
        f'<form method="post" action="/checkout?sku={sku}">{csrf}<button>Buy the {name}, '
        f"${price:.2f}</button></form>"
        for sku, (name, price) in PRODUCTS.items()
    )
    consent = (
        f'<form method="post" action="/accept-cookies">{csrf}<button>Accept cookies</button></form>'
    )
    return page(request, "Shop", consent + buttons)


@require_POST
def checkout(request: HttpRequest) -> HttpResponse:
    sku = request.GET.get("sku", "")
    if sku not in PRODUCTS:
        return HttpResponseRedirect("/")
    name, price = PRODUCTS[sku]
    result = request.capi.track(
        "Purchase",
        value=price,
        currency="USD",
        contents=[{"id": sku, "quantity": 1, "item_price": price}],
        order_id=uuid.uuid4().hex,
        user_data={"email": "jane@example.com", "external_id": "customer-42"},  # request.user's
    )
    return page(request, "Thank you!", f"<p>Your {escape(name)} is on its way.</p>", result)


@require_POST
def accept_cookies(request: HttpRequest) -> HttpResponse:
    # The default consent policy waits for this opt-in before any cookie or event (GDPR).
    response = HttpResponseRedirect("/")
    response.set_cookie("cookie_consent", "granted", max_age=180 * 86400, samesite="Lax")
    return response


urlpatterns = [
    path("", home),
    path("checkout", checkout),
    path("accept-cookies", accept_cookies),
]

application = get_wsgi_application()
asgi = get_asgi_application()

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
