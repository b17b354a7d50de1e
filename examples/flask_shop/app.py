"""A Flask shop that reports its purchases to Meta's Conversions API.

Run:   python examples/flask_shop/app.py          (production: gunicorn examples.flask_shop.app:app)
Env:   META_PIXEL_ID, META_ACCESS_TOKEN (unset: events are dropped and a warning is logged),
       META_GRAPH_URL (e.g. the fake Graph API of `capi-middleware demo`), META_TEST_EVENT_CODE,
       PORT (default 5000).

Open /?fbclid=test123, accept cookies, buy the tee: the thank-you page fires the pixel's Purchase
with the event id the server sent, so Meta counts the purchase once (deduplication).
"""

from __future__ import annotations

import json
import os
import uuid

from flask import Flask, redirect, render_template_string, request
from markupsafe import Markup
from werkzeug.wrappers import Response

from capi_middleware import CAPIWSGIMiddleware, RequestContext, TrackResult

PIXEL_ID = os.environ.get("META_PIXEL_ID", "")
PRODUCTS = {"tee": ("Organic cotton tee", 29.0), "mug": ("Enamel camp mug", 18.5)}

app = Flask(__name__)
# Options not given here come from the META_* environment variables.
app.wsgi_app = CAPIWSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]

PAGE = """<!doctype html><title>{{ title }}</title>
<script>
!function(f,b,e,v,n,t,s){if(f.fbq)return;n=f.fbq=function(){n.callMethod?
n.callMethod.apply(n,arguments):n.queue.push(arguments)};if(!f._fbq)f._fbq=n;n.push=n;
n.loaded=!0;n.version='2.0';n.queue=[];t=b.createElement(e);t.async=!0;t.src=v;
s=b.getElementsByTagName(e)[0];s.parentNode.insertBefore(t,s)}(window,document,'script',
'https://connect.facebook.net/en_US/fbevents.js');
fbq('consent', '{{ "grant" if ctx.consent.granted else "revoke" }}');
fbq('init', {{ pixel_id }});
fbq('track', 'PageView');
{{ track }}
</script>
<h1>{{ title }}</h1>{{ body }}"""


def page(title: str, body: str, result: TrackResult | None = None) -> str:
    """A page with Meta's pixel; with ``result``, the browser half of the server's event."""
    # fbq() output is already safe inside <script> (JSON with <, >, & escaped).
    track = Markup(result.fbq()) if result is not None and result.ok else ""
    return render_template_string(
        PAGE,
        title=title,
        body=Markup(body),
        ctx=request.environ["capi"],
        pixel_id=Markup(json.dumps(PIXEL_ID)),
        track=track,
    )


@app.get("/")
def home() -> str:
    buttons = "".join(
        f'<form method="post" action="/checkout?sku={sku}"><button>Buy the {name}, '
        f"${price:.2f}</button></form>"
        for sku, (name, price) in PRODUCTS.items()
    )
    consent = '<form method="post" action="/accept-cookies"><button>Accept cookies</button></form>'
    return page("Shop", consent + buttons)


@app.post("/checkout")
def checkout() -> str | Response:
    sku = request.args.get("sku", "")
    if sku not in PRODUCTS:
        return redirect("/", code=303)
    name, price = PRODUCTS[sku]
    ctx: RequestContext = request.environ["capi"]
    result = ctx.track(
        "Purchase",
        value=price,
        currency="USD",
        contents=[{"id": sku, "quantity": 1, "item_price": price}],
        order_id=uuid.uuid4().hex,
        user_data={"email": "jane@example.com", "external_id": "customer-42"},  # the signed-in user
    )
    return page("Thank you!", f"<p>Your {Markup.escape(name)} is on its way.</p>", result)


@app.post("/accept-cookies")
def accept_cookies() -> Response:
    # The default consent policy waits for this opt-in before any cookie or event (GDPR).
    response = redirect("/", code=303)
    response.set_cookie("cookie_consent", "granted", max_age=180 * 86400, samesite="Lax")
    return response


if __name__ == "__main__":
    # Queued events are flushed when the process exits (Ctrl-C included).
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
