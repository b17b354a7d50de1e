"""A real browser: headless Chromium (Debian's ``chromium``) against the middleware on uvicorn.

Opt-in (``pytest -m browser``; ``bash .ci/browser`` installs Chromium and runs it): the page opened
with ``?fbclid=...`` must be able to read ``_fbc`` from ``document.cookie`` (so the cookie is
first-party, not HttpOnly), and the Purchase the page then triggers must reach the fake Graph API
carrying that same ``_fbc``.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator

import pytest
import uvicorn
from live import free_port, wait_until
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from capi_middleware.asgi import CAPIMiddleware
from capi_middleware.testing.fake import FAKE_ACCESS_TOKEN, FakeGraphAPI

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FBCLID = "IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk"

PAGE = """<!doctype html><html><head><meta charset="utf-8"></head><body>
<pre id="cookies"></pre><pre id="purchase">pending</pre>
<script>
document.getElementById('cookies').textContent = document.cookie;
fetch('/purchase', {method: 'POST', credentials: 'same-origin'})
  .then(r => r.json())
  .then(j => { document.getElementById('purchase').textContent = 'event_id=' + j.event_id; })
  .catch(e => { document.getElementById('purchase').textContent = 'error ' + e; });
</script></body></html>"""


async def landing(request: Request) -> HTMLResponse:
    request.state.capi.track("PageView")
    return HTMLResponse(PAGE)


async def purchase(request: Request) -> JSONResponse:
    result = request.state.capi.track(
        "Purchase", value=42.0, currency="EUR", user_data={"email": "john_smith@gmail.com"}
    )
    return JSONResponse({"event_id": result.event_id, "status": result.status})


@pytest.fixture
def shop(fake: FakeGraphAPI) -> Iterator[tuple[str, CAPIMiddleware]]:
    app = Starlette(routes=[Route("/", landing), Route("/purchase", purchase, methods=["POST"])])
    middleware = CAPIMiddleware(
        app,
        pixel_id="111",
        access_token=FAKE_ACCESS_TOKEN,
        graph_url=fake.url,
        consent=True,
        flush_interval=0.05,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(middleware, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, timeout=10)
    try:
        yield f"http://127.0.0.1:{port}", middleware
    finally:
        server.should_exit = True
        thread.join(10)
        middleware.close(5)


def test_fbc_cookie_readable_by_page_and_purchase_carries_it(
    shop: tuple[str, CAPIMiddleware], fake: FakeGraphAPI, tmp_path: object
) -> None:
    base, middleware = shop
    assert CHROMIUM is not None, "needs Debian's chromium: run bash .ci/browser"
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            f"{base}/?fbclid={FBCLID}",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    dom = proc.stdout
    assert "_fbc=fb.0." in dom, proc.stderr[-2000:]
    fbc = dom.split("_fbc=", 1)[1].split(";", 1)[0].split("<", 1)[0].strip()
    assert fbc.endswith("." + FBCLID)  # byte for byte, case kept
    assert "_fbp=fb.0." in dom
    assert "event_id=" in dom

    middleware.flush(10)
    assert fake.wait_for_events(2, timeout=10)
    purchases = [e for e in fake.events if e["event_name"] == "Purchase"]
    assert len(purchases) == 1
    assert purchases[0]["user_data"]["fbc"] == fbc
    assert purchases[0]["event_id"] in dom
