"""What a newcomer's first track() tells them (issue 12, points 2 and 3).

- Denied by the default policy for want of any consent signal: one problem on the result, and
  one INFO line per process saying what the default is and where the consent section is. A
  visitor who said no is not reported: that is consent working.
- ``result.fbq()`` renders the parameters the server event carries, whatever the status (the
  pixel's own consent state decides), except for ``invalid``, which renders nothing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from apps import quickstart

from capi_middleware.testing import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID, FakeGraphAPI, find_client

TESTS = Path(__file__).resolve().parent
PIXEL_CALL = '{"value": 79.99, "currency": "USD"}'


def _post(app: Any, path: str, cookies: dict[str, str] | None = None) -> dict[str, Any]:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("8.8.8.8", 1234))
        async with httpx.AsyncClient(
            transport=transport, base_url="https://shop.test", cookies=cookies
        ) as c:
            return await c.post(path, headers={"user-agent": "Feedback/1.0"})

    response = asyncio.run(go())
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def _options(fake: FakeGraphAPI, **more: Any) -> dict[str, Any]:
    return {
        "pixel_id": FAKE_PIXEL_ID,
        "access_token": FAKE_ACCESS_TOKEN,
        "graph_url": fake.url,
        "flush_interval": 0.05,
        **more,
    }


def test_a_default_denial_says_why_on_the_result(fake: FakeGraphAPI) -> None:
    body = _post(quickstart.create_app(**_options(fake)), "/checkout")
    assert body["status"] == "denied"
    (problem,) = body["problems"]
    assert problem.startswith("consent: denied: the request carries no consent signal")
    assert "default policy is EU opt-in" in problem
    assert "consent=True" in problem
    assert "docs/consent.md" in problem


def test_a_visitor_who_said_no_is_not_reported_as_a_problem(fake: FakeGraphAPI) -> None:
    app = quickstart.create_app(**_options(fake))
    body = _post(app, "/checkout", cookies={"cookie_consent": "denied"})
    assert body["status"] == "denied"
    assert body["problems"] == []


SCRIPT = """
import asyncio, logging, httpx, sys
sys.path.insert(0, {tests!r})
from apps import quickstart
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(levelname)s %(message)s", force=True)
app = quickstart.create_app(pixel_id="1", access_token="t", graph_url="http://127.0.0.1:9")
async def go():
    transport = httpx.ASGITransport(app=app, client=("8.8.8.8", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="https://shop.test") as c:
        for _ in range(3):
            await c.post("/checkout")
asyncio.run(go())
"""


def test_the_default_denial_is_logged_once_per_process_at_info() -> None:
    # A fresh process: "once per process" is a fact about the process, not about a test.
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(tests=str(TESTS))],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = [line for line in out.splitlines() if "no consent signal" in line]
    assert len(lines) == 1, out
    assert lines[0].startswith("INFO capi_middleware: Purchase event not sent: denied")
    assert "consent=True" in lines[0]
    assert "docs/consent.md" in lines[0]
    assert "jane@example.com" not in out


# -- fbq() whatever the status ------------------------------------------------------------------


def test_fbq_renders_the_server_events_parameters_when_queued(fake: FakeGraphAPI) -> None:
    app = quickstart.create_app(**_options(fake, consent=True))
    body = _post(app, "/checkout")
    assert body["status"] == "queued"
    assert find_client(app).flush(10)
    assert [e["custom_data"] for e in fake.events] == [json.loads(PIXEL_CALL)]
    assert body["pixel"] == (
        f"fbq('track', \"Purchase\", {PIXEL_CALL}, {json.dumps({'eventID': body['event_id']})});"
    )


def test_fbq_renders_the_same_parameters_when_denied(fake: FakeGraphAPI) -> None:
    body = _post(quickstart.create_app(**_options(fake)), "/checkout")
    assert body["status"] == "denied"
    assert body["pixel"] == (
        f"fbq('track', \"Purchase\", {PIXEL_CALL}, {json.dumps({'eventID': body['event_id']})});"
    )


def test_fbq_renders_the_same_parameters_when_tracking_is_off(fake: FakeGraphAPI) -> None:
    body = _post(quickstart.create_app(pixel_id="abc", access_token="t"), "/checkout")
    assert body["status"] == "error"
    assert PIXEL_CALL in body["pixel"]


def test_fbq_renders_nothing_for_an_invalid_event(fake: FakeGraphAPI) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from capi_middleware import CAPIMiddleware

    async def checkout(request: Request) -> JSONResponse:
        result = request.state.capi.track("Purchase", value=79.99)  # no currency: invalid
        return JSONResponse(
            {"status": result.status, "pixel": result.fbq(), "snippet": result.pixel_snippet()}
        )

    app = CAPIMiddleware(
        Starlette(routes=[Route("/checkout", checkout, methods=["POST"])]),
        **_options(fake, consent=True),
    )
    body = _post(app, "/checkout")
    assert body == {"status": "invalid", "pixel": "", "snippet": ""}


def test_a_configured_policy_without_a_signal_is_not_called_the_default(
    fake: FakeGraphAPI,
) -> None:
    from capi_middleware.consent import site_cookie

    app = quickstart.create_app(**_options(fake, consent=site_cookie("cc_cookie")))
    body = _post(app, "/checkout")
    assert body["status"] == "denied"
    assert body["problems"] == [
        "consent: denied: the request carries none of the consent signals your consent policy reads"
    ]


def test_a_denied_event_with_unsendable_custom_data_renders_nothing(fake: FakeGraphAPI) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from capi_middleware import CAPIMiddleware

    async def checkout(request: Request) -> JSONResponse:
        denied = request.state.capi.track("Purchase", value=float("nan"), currency="USD")
        fine = request.state.capi.track("Purchase", value=5, currency="USD")
        return JSONResponse(
            {"status": denied.status, "pixel": denied.fbq(), "fine": fine.pixel_snippet()}
        )

    app = CAPIMiddleware(
        Starlette(routes=[Route("/checkout", checkout, methods=["POST"])]), **_options(fake)
    )
    body = _post(app, "/checkout")
    assert body["status"] == "denied"
    assert body["pixel"] == ""  # NaN: Meta would reject it, so the pixel gets nothing either
    assert body["fine"].startswith('<script>fbq(\'track\', "Purchase", {"value": 5, "currency"')
