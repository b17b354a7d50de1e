"""A shop whose payment is confirmed by a payment provider's signed webhook.

The Purchase happens in a request the shopper never makes: the provider POSTs ``payment.paid``
from its own servers, with its own IP and user agent. The shop therefore keeps the shopper's
match context from checkout (``ctx.visitor()``) and sends the Purchase from the webhook with it:

1. ``POST /checkout``: the order is created with its Purchase event id (made now, used twice) and
   the visitor, which also travels as a signed token in the provider's metadata (≤ 500 chars);
2. ``POST /webhooks/provider``: the provider's signature is checked (an HMAC of the body, like
   Stripe's ``t=...,v1=...``), the visitor is read back, and the Purchase goes to Meta with the
   shopper's IP, user agent, ``_fbc``, ``_fbp``, page URL and consent, the order's event id and
   the time the payment was made;
3. ``GET /thanks/{order}``: the pixel fires the same Purchase with the same ``eventID``, so Meta
   counts it once whichever arrives first.

Run:   uvicorn examples.webhook_shop.app:app
Env:   META_PIXEL_ID, META_ACCESS_TOKEN, META_GRAPH_URL (e.g. the fake of `capi-middleware demo`),
       SHOP_SECRET (signs visitor tokens), PROVIDER_WEBHOOK_SECRET (the provider's signing secret).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from capi_middleware import CAPIClient, CAPIMiddleware, Visitor

SHOP_SECRET = os.environ.get("SHOP_SECRET", "change-me: signs the visitor tokens")
WEBHOOK_SECRET = os.environ.get("PROVIDER_WEBHOOK_SECRET", "whsec_example")
PIXEL_ID = os.environ.get("META_PIXEL_ID", "")
SIGNATURE_TOLERANCE = 300  # seconds: a replayed webhook older than this is refused


@dataclass
class Order:
    id: str
    email: str
    amount: float
    currency: str
    # Made at checkout and used twice: by the thank-you page's pixel and by the webhook's event.
    purchase_event_id: str
    visitor: dict[str, Any]  # Visitor.to_dict(): stored with the order, like any column
    paid_at: int | None = None
    events: list[str] = field(default_factory=list)


ORDERS: dict[str, Order] = {}  # the shop's database
# One client for the web app and for anything outside a request (a job, a script). No browser
# calls the webhook: no cookie is ever set there (a server's request gets none anyway; the path
# also covers a provider that sends a browser-like User-Agent).
client = CAPIClient.from_env(no_cookie_paths=("/webhooks/",))


async def home(request: Request) -> HTMLResponse:
    # Capture has already kept the visitor's _fbc/_fbp alive (with consent) on this response.
    return HTMLResponse(
        "<!doctype html><title>Shop</title><h1>Organic cotton tee, 29 EUR</h1>"
        "<button onclick=\"fetch('/checkout', {method: 'POST', body: JSON.stringify("
        "{email: 'me@example.com', amount: 29})})\">Buy</button>"
    )


async def checkout(request: Request) -> JSONResponse:
    ctx = request.state.capi
    form = await request.json()
    visitor = ctx.visitor()  # the shopper's IP, user agent, cookies, page URL and consent
    order = Order(
        id=uuid.uuid4().hex[:12],
        email=form["email"],
        amount=float(form["amount"]),
        currency=form.get("currency", "EUR"),
        purchase_event_id=f"purchase-{uuid.uuid4().hex}",
        visitor=visitor.to_dict(),
    )
    ORDERS[order.id] = order
    # What the shop hands the provider when it creates the payment: the order id, and the
    # visitor as a signed token for a shop that keeps no order rows (either is enough).
    payment = {
        "amount": order.amount,
        "currency": order.currency,
        "metadata": {"order_id": order.id, "capi_visitor": visitor.to_token(SHOP_SECRET)},
        "success_url": f"/thanks/{order.id}",
    }
    return JSONResponse({"order_id": order.id, "payment": payment})


def verify_signature(body: bytes, header: str | None, now: float | None = None) -> bool:
    """The provider's ``t=<unix>,v1=<hex hmac-sha256 of "t.body">`` header (Stripe's scheme)."""
    if not header:
        return False
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        stamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - stamp) > SIGNATURE_TOLERANCE:
        return False
    expected = hmac.new(
        WEBHOOK_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


async def provider_webhook(request: Request) -> Response:
    body = await request.body()
    if not verify_signature(body, request.headers.get("provider-signature")):
        return JSONResponse({"error": "bad signature"}, status_code=400)
    event = json.loads(body)
    if event.get("type") != "payment.paid":
        return JSONResponse({"ignored": event.get("type")})
    payment = event["data"]
    order = ORDERS.get(payment["metadata"]["order_id"])
    if order is None:
        return JSONResponse({"error": "unknown order"}, status_code=404)
    if order.paid_at is not None:
        return JSONResponse({"duplicate": True})  # providers retry: one Purchase per order
    order.paid_at = int(payment["paid_at"])
    # The row's visitor (or, without one, the token from the provider's metadata).
    try:
        visitor = Visitor.from_dict(order.visitor)
    except ValueError:
        visitor = Visitor.from_token(payment["metadata"]["capi_visitor"], SHOP_SECRET)
    result = request.state.capi.track(
        "Purchase",
        visitor=visitor,  # the shopper's context, not this request's (the provider's)
        event_id=order.purchase_event_id,
        event_time=order.paid_at,  # when the payment was made (within Meta's 7 days)
        user_data={"email": order.email, "external_id": order.id},
        value=order.amount,
        currency=order.currency,
        order_id=order.id,
    )
    order.events.append(result.status)
    return JSONResponse({"status": result.status, "event_id": result.event_id})


async def thanks(request: Request) -> HTMLResponse:
    order = ORDERS[request.path_params["order_id"]]
    custom = {"value": order.amount, "currency": order.currency}
    fbq = (
        f"fbq('track', 'Purchase', {json.dumps(custom)}, "
        f"{json.dumps({'eventID': order.purchase_event_id})});"
    )
    return HTMLResponse(
        f"<!doctype html><title>Thank you</title><script>fbq('init', {json.dumps(PIXEL_ID)});"
        f"\n{fbq}</script><h1>Thank you, order {html.escape(order.id)}</h1>"
    )


app = CAPIMiddleware(
    Starlette(
        routes=[
            Route("/", home),
            Route("/checkout", checkout, methods=["POST"]),
            Route("/webhooks/provider", provider_webhook, methods=["POST"]),
            Route("/thanks/{order_id}", thanks),
        ]
    ),
    client=client,
)
