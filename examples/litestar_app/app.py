"""A Litestar app that reports its purchases to Meta's Conversions API.

Run:   uvicorn examples.litestar_app.app:app
Env:   META_PIXEL_ID, META_ACCESS_TOKEN (unset: events are dropped and a warning is logged),
       META_GRAPH_URL (e.g. the fake Graph API of `capi-middleware demo`), META_TEST_EVENT_CODE.

Open /?fbclid=test123, accept cookies, buy the tee: the thank-you page fires the pixel's Purchase
with the event id the server sent, so Meta counts the purchase once (deduplication).
"""

from __future__ import annotations

import html
import json
import os
import uuid
from typing import Any

from litestar import Litestar, MediaType, Request, get, post
from litestar.datastructures import Cookie
from litestar.exceptions import NotFoundException
from litestar.middleware import DefineMiddleware
from litestar.response import Redirect

from capi_middleware import CAPIMiddleware, RequestContext, TrackResult

PIXEL_ID = os.environ.get("META_PIXEL_ID", "")
PRODUCTS = {"tee": ("Organic cotton tee", 29.0), "mug": ("Enamel camp mug", 18.5)}


def page(ctx: RequestContext, title: str, body: str, result: TrackResult | None = None) -> str:
    """A page with Meta's pixel; with ``result``, the browser half of the server's event."""
    consent = "grant" if ctx.consent.granted else "revoke"
    track = result.fbq() if result is not None and result.ok else ""
    return f"""<!doctype html><title>{html.escape(title)}</title>
<script>
!function(f,b,e,v,n,t,s){{if(f.fbq)return;n=f.fbq=function(){{n.callMethod?
n.callMethod.apply(n,arguments):n.queue.push(arguments)}};if(!f._fbq)f._fbq=n;n.push=n;
n.loaded=!0;n.version='2.0';n.queue=[];t=b.createElement(e);t.async=!0;t.src=v;
s=b.getElementsByTagName(e)[0];s.parentNode.insertBefore(t,s)}}(window,document,'script',
'https://connect.facebook.net/en_US/fbevents.js');
fbq('consent', '{consent}');
fbq('init', {json.dumps(PIXEL_ID)});
fbq('track', 'PageView');
{track}
</script>
<h1>{html.escape(title)}</h1>{body}"""


@get("/", media_type=MediaType.HTML, sync_to_thread=False)
def home(request: Request[Any, Any, Any]) -> str:
    buttons = "".join(
        f'<form method="post" action="/checkout?sku={sku}"><button>Buy the {name}, '
        f"${price:.2f}</button></form>"
        for sku, (name, price) in PRODUCTS.items()
    )
    consent = '<form method="post" action="/accept-cookies"><button>Accept cookies</button></form>'
    return page(request.state.capi, "Shop", consent + buttons)


@post("/checkout", media_type=MediaType.HTML, status_code=200, sync_to_thread=False)
def checkout(request: Request[Any, Any, Any]) -> str:
    sku = request.query_params.get("sku", "")
    if sku not in PRODUCTS:
        raise NotFoundException("no such product")
    name, price = PRODUCTS[sku]
    ctx: RequestContext = request.state.capi
    result = ctx.track(
        "Purchase",
        value=price,
        currency="USD",
        contents=[{"id": sku, "quantity": 1, "item_price": price}],
        order_id=uuid.uuid4().hex,
        user_data={"email": "jane@example.com", "external_id": "customer-42"},  # the signed-in user
    )
    return page(ctx, "Thank you!", f"<p>Your {html.escape(name)} is on its way.</p>", result)


@post("/accept-cookies", sync_to_thread=False)
def accept_cookies() -> Redirect:
    # The default consent policy waits for this opt-in before any cookie or event (GDPR).
    cookie = Cookie(key="cookie_consent", value="granted", max_age=180 * 86400, samesite="lax")
    return Redirect("/", status_code=303, cookies=[cookie])


# Options not given to DefineMiddleware come from the META_* environment variables.
app = Litestar(
    route_handlers=[home, checkout, accept_cookies],
    middleware=[DefineMiddleware(CAPIMiddleware)],
)
