"""The demo: a tiny shop wired to the middleware, and the built-in fake Graph API.

``capi-middleware demo`` starts both on 127.0.0.1 and prints, as they are sent, each event with its
match keys (hashed values shortened) and the fake Meta's answer. No Meta account is needed.
``--smoke`` drives one consented visit with an ``fbclid`` and one purchase through the shop, checks
that the Purchase reached the fake with the ``_fbc`` the shop set, and exits (used by CI).
"""

from __future__ import annotations

import html
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, TextIO
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from capi_middleware.asgi import CAPIMiddleware

__all__ = ["create_shop", "run_demo"]

DEMO_PIXEL_ID = "1234567890"
DEMO_TOKEN = "demo-access-token"  # noqa: S105 - only ever sent to the local fake

PRODUCTS = {
    "tee": {"title": "Organic cotton tee", "price": 29.0},
    "mug": {"title": "Enamel camp mug", "price": 18.5},
    "cap": {"title": "Six-panel cap", "price": 24.0},
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · demo shop</title>
<style>body{{font:16px system-ui;max-width:42rem;margin:2rem auto;padding:0 1rem}}
.banner{{background:#fff3cd;padding:1rem;border-radius:.5rem}}code{{background:#eee}}</style>
<script>
!function(f,b,e,v,n,t,s){{if(f.fbq)return;n=f.fbq=function(){{n.callMethod?
n.callMethod.apply(n,arguments):n.queue.push(arguments)}};if(!f._fbq)f._fbq=n;
n.push=n;n.loaded=!0;n.version='2.0';n.queue=[]}}(window,document,'script');
/* The real snippet loads https://connect.facebook.net/en_US/fbevents.js here; the demo
   keeps the calls in fbq.queue so you can inspect them offline. */
fbq('consent', {consent_js});
fbq('init', {pixel_json});
{track_js}
</script></head><body>
<h1><a href="/">Demo shop</a></h1>
{banner}
{body}
<p><small>Server event id: <code id="event-id">{event_id}</code> · consent:
<code id="consent">{consent}</code></small></p>
</body></html>"""

_BANNER = """<div class="banner">We use cookies and Meta's pixel to measure our ads.
<form method="post" action="/consent" style="display:inline">
<button name="choice" value="granted">Accept</button>
<button name="choice" value="denied">Decline</button></form></div>"""


def _page(request: Request, title: str, body: str, result: Any) -> HTMLResponse:
    ctx = request.state.capi
    granted = bool(ctx.consent.granted)
    event_id = getattr(result, "event_id", "") or ""
    track_js = ""
    if result is not None and getattr(result, "status", "") in ("queued", "dry_run"):
        track_js = result.fbq()
    return HTMLResponse(
        _PAGE.format(
            title=html.escape(title),
            consent_js="'grant'" if granted else "'revoke'",
            pixel_json=json.dumps(DEMO_PIXEL_ID),
            track_js=track_js,
            banner="" if "cookie_consent" in ctx.cookies else _BANNER,
            body=body,
            event_id=html.escape(event_id),
            consent=html.escape(ctx.consent.reason or str(granted)),
        )
    )


async def home(request: Request) -> Response:
    result = request.state.capi.track("PageView")
    items = "".join(
        f'<li><a href="/product/{key}">{html.escape(str(p["title"]))}</a> — ${p["price"]:.2f}</li>'
        for key, p in PRODUCTS.items()
    )
    return _page(request, "Home", f"<ul>{items}</ul>", result)


async def product(request: Request) -> Response:
    key = request.path_params["key"]
    item = PRODUCTS.get(key)
    if item is None:
        return HTMLResponse("<h1>Not found</h1>", status_code=404)
    result = request.state.capi.track(
        "view_item",
        currency="USD",
        value=item["price"],
        items=[{"item_id": key, "item_name": item["title"], "price": item["price"]}],
    )
    form = f"""<h2>{html.escape(str(item["title"]))}</h2><p>${item["price"]:.2f}</p>
<form method="post" action="/checkout"><input type="hidden" name="sku" value="{key}">
<label>Email <input name="email" type="email" value="john_smith@gmail.com"></label>
<label>Phone <input name="phone" value="+1 (616) 954-78 88"></label>
<button>Buy now</button></form>"""
    return _page(request, str(item["title"]), form, result)


async def _form(request: Request) -> dict[str, str]:
    # A tiny urlencoded parser, so the demo needs no python-multipart.
    body = (await request.body())[:65536].decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body).items()}


async def checkout(request: Request) -> Response:
    form = await _form(request)
    sku = str(form.get("sku", ""))
    item = PRODUCTS.get(sku)
    if item is None:
        return RedirectResponse("/", status_code=303)
    result = request.state.capi.track(
        "Purchase",
        value=item["price"],
        currency="USD",
        contents=[{"id": sku, "quantity": 1, "item_price": item["price"]}],
        content_type="product",
        # An empty form field is no value: None leaves the key out instead of reporting a drop.
        user_data={"email": form.get("email") or None, "phone": form.get("phone") or None},
    )
    body = f"<h2>Thank you!</h2><p>Order for {html.escape(str(item['title']))} placed.</p>"
    return _page(request, "Thank you", body, result)


async def consent(request: Request) -> Response:
    form = await _form(request)
    choice = "granted" if form.get("choice") == "granted" else "denied"
    response = RedirectResponse(request.headers.get("referer") or "/", status_code=303)
    response.set_cookie("cookie_consent", choice, max_age=180 * 86400, samesite="lax")
    return response


def create_shop(**options: Any) -> CAPIMiddleware:
    """The demo shop as an ASGI app, wrapped in CAPIMiddleware configured by ``options``."""
    app = Starlette(
        routes=[
            Route("/", home),
            Route("/product/{key}", product),
            Route("/checkout", checkout, methods=["POST"]),
            Route("/consent", consent, methods=["POST"]),
        ]
    )
    return CAPIMiddleware(app, **options)


# -- the demo command ---------------------------------------------------------------------


def _short(value: Any) -> str:
    text = value[0] if isinstance(value, list) and value else value
    text = str(text)
    return text[:10] + "…" if len(text) == 64 else text


def describe_request(pixel_id: str, body: Mapping[str, Any], answer: Mapping[str, Any]) -> str:
    """One block of demo output: each event with its match keys, then Meta's answer."""
    lines = []
    for event in body.get("data", []):
        keys = ", ".join(
            f"{key}={_short(value)}" for key, value in sorted(event.get("user_data", {}).items())
        )
        lines.append(
            f"→ pixel {pixel_id}: {event.get('event_name')} event_id={event.get('event_id')}\n"
            f"    match keys: {keys}"
        )
        if event.get("custom_data"):
            lines.append(f"    custom_data: {json.dumps(event['custom_data'], sort_keys=True)}")
    lines.append(f"← Meta (fake): {json.dumps(dict(answer), sort_keys=True)}")
    return "\n".join(lines)


def describe_match_quality(report: Mapping[str, Mapping[str, Any]]) -> str:
    """The client's match-quality report, one line per event name (docs/match-quality.md)."""
    lines = ["match quality (share of events carrying each key Meta matches on):"]
    for name, entry in sorted(report.items()):
        keys = ", ".join(f"{key} {share:.0%}" for key, share in entry["keys"].items() if share > 0)
        missing = [key for key, share in entry["keys"].items() if share == 0]
        line = f"  {name}: {entry['events']} event(s); {keys}"
        if missing:
            line += f"; never: {', '.join(missing)}"
        drops = [
            f"{key} {reason} x{count}"
            for key, reasons in sorted(entry["dropped"].items())
            for reason, count in sorted(reasons.items())
        ]
        if drops:
            line += f"; dropped: {', '.join(drops)}"
        lines.append(line)
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_demo(*, port: int = 8000, smoke: bool = False, out: TextIO | None = None) -> int:
    """Start the fake Graph API and the shop; print events as they go out."""
    import uvicorn

    from capi_middleware.testing.fake import FakeGraphAPI

    stream = out or sys.stdout
    lock = threading.Lock()

    def on_request(pixel_id: str, body: Mapping[str, Any], answer: Mapping[str, Any]) -> None:
        with lock:
            print(describe_request(pixel_id, body, answer), file=stream, flush=True)
            names = [e.get("event_name") for e in body.get("data", []) if isinstance(e, dict)]
            if "Purchase" in names:  # after a purchase: what Meta can match the events on
                print(describe_match_quality(shop.match_quality()), file=stream, flush=True)

    fake = FakeGraphAPI(access_token=DEMO_TOKEN, on_request=on_request)
    fake.start()
    shop = create_shop(
        pixel_id=DEMO_PIXEL_ID,
        access_token=DEMO_TOKEN,
        graph_url=fake.url,
        flush_interval=0.2,
        set_fbp=True,
        trusted_proxies=(),
    )
    if port == 0 or smoke:
        port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(shop, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="capi-demo-shop", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        print("demo: the shop did not start (is the port free?)", file=sys.stderr)
        fake.stop()
        return 1
    url = f"http://127.0.0.1:{port}/"
    print(f"Demo shop:        {url}?fbclid=IwAR_demo_click_id", file=stream)
    print(f"Fake Graph API:   {fake.url}  (pixel {DEMO_PIXEL_ID})", file=stream)
    print("Accept the cookie banner, open a product, buy it; events print below.\n", file=stream)
    stream.flush()
    try:
        if smoke:
            return _smoke(url, shop, fake, stream)
        while thread.is_alive():
            thread.join(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        server.should_exit = True
        thread.join(10)
        shop.close(5)
        fake.stop()


def _smoke(url: str, shop: CAPIMiddleware, fake: Any, stream: TextIO) -> int:
    import httpx

    fbclid = "IwAR_Demo-click_ID-42"
    with httpx.Client(base_url=url, timeout=10, cookies={"cookie_consent": "granted"}) as client:
        home = client.get(f"/?fbclid={fbclid}")
        fbc = client.cookies.get("_fbc")
        buy = client.post("/checkout", data={"sku": "tee", "email": " John_Smith@gmail.com "})
    shop.flush(10)
    purchases = [e for e in fake.events if e.get("event_name") == "Purchase"]
    ok = (
        home.status_code == 200
        and buy.status_code == 200
        and fbc is not None
        and fbc.endswith("." + fbclid)
        and len(purchases) == 1
        and purchases[0]["user_data"].get("fbc") == fbc
        and f'"eventID":"{purchases[0]["event_id"]}"' in buy.text.replace(" ", "")
    )
    ok = ok and shop.match_quality().get("Purchase", {}).get("events") == 1
    verdict = "ok" if ok else "FAILED"
    print(f"\nsmoke: {verdict} (_fbc={fbc}, purchases={len(purchases)})", file=stream)
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(run_demo(port=int(os.environ.get("PORT", "8000"))))
