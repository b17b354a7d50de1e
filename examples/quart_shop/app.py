"""A Quart shop that reports its purchases to Meta's Conversions API.

Run:   hypercorn examples.quart_shop.app:app
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

from quart import Quart, abort, redirect, request
from quart.typing import ResponseReturnValue

from capi_middleware import CAPIMiddleware, RequestContext, TrackResult

PIXEL_ID = os.environ.get("META_PIXEL_ID", "")
PRODUCTS = {"tee": ("Organic cotton tee", 29.0), "mug": ("Enamel camp mug", 18.5)}

app = Quart(__name__)
# Options not given here come from the META_* environment variables.
app.asgi_app = CAPIMiddleware(app.asgi_app)  # type: ignore[method-assign]


def capi() -> RequestContext:
    """This request's context: the middleware keeps it in the ASGI scope's state."""
    ctx: RequestContext = request.scope["state"]["capi"]
    return ctx


def page(title: str, body: str, result: TrackResult | None = None) -> str:
    """A page with Meta's pixel; with ``result``, the browser half of the server's event."""
    consent = "grant" if capi().consent.granted else "revoke"
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


@app.get("/")
async def home() -> str:
    buttons = "".join(
        f'<form method="post" action="/checkout?sku={sku}"><button>Buy the {name}, '
        f"${price:.2f}</button></form>"
        for sku, (name, price) in PRODUCTS.items()
    )
    consent = '<form method="post" action="/accept-cookies"><button>Accept cookies</button></form>'
    return page("Shop", consent + buttons)


@app.post("/checkout")
async def checkout() -> str:
    sku = request.args.get("sku", "")
    if sku not in PRODUCTS:
        abort(404)
    name, price = PRODUCTS[sku]
    result = capi().track(
        "Purchase",
        value=price,
        currency="USD",
        contents=[{"id": sku, "quantity": 1, "item_price": price}],
        order_id=uuid.uuid4().hex,
        user_data={"email": "jane@example.com", "external_id": "customer-42"},  # the signed-in user
    )
    return page("Thank you!", f"<p>Your {html.escape(name)} is on its way.</p>", result)


@app.post("/accept-cookies")
async def accept_cookies() -> ResponseReturnValue:
    # The default consent policy waits for this opt-in before any cookie or event (GDPR).
    response = redirect("/", code=303)
    response.set_cookie("cookie_consent", "granted", max_age=180 * 86400, samesite="Lax")
    return response


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
