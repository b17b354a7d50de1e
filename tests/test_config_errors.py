"""A bad configuration never turns a page into a 500 (issue 12, point 1).

Where the server runs the ASGI lifespan, startup fails with one line naming the option and its
environment variable, and the process refuses to start (a real uvicorn). Where it does not (an
``httpx`` transport, ``--lifespan off``, WSGI, Django), the error is logged once and every request
passes through untouched with tracking off; ``track()`` says why on its result.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from apps import quickstart
from flask import Flask
from flask import request as flask_request
from live import free_port, wait_until_serving

from capi_middleware import CAPIMiddleware, CAPIWSGIMiddleware

TESTS = Path(__file__).resolve().parent

NO_TOKEN = {"META_PIXEL_ID": "1234567890"}
BAD_PIXEL = {"META_PIXEL_ID": "abc", "META_ACCESS_TOKEN": "EAAB-test-token"}
MESSAGES = {
    "no token": (NO_TOKEN, "access_token [META_ACCESS_TOKEN]: not set, but pixel_id"),
    "bad pixel": (BAD_PIXEL, "pixel_id [META_PIXEL_ID]: must be the pixel's numeric id"),
}


def _server_env(meta: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("META_")}
    return {**env, **meta, "PYTHONPATH": str(TESTS), "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(MESSAGES))
def test_uvicorn_refuses_to_start_and_says_why_in_one_line(case: str) -> None:
    meta, message = MESSAGES[case]
    proc = subprocess.run(
        [sys.executable, "-m", "uvicorn", "apps.quickstart:app", "--port", str(free_port())],
        cwd=TESTS,
        env=_server_env(meta),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0, proc.stderr
    ours = [line for line in proc.stderr.splitlines() if "capi_middleware" in line]
    assert len(ours) == 1, proc.stderr
    assert "capi_middleware: configuration error: " + message in ours[0]
    assert "Application startup failed" in proc.stderr
    assert "lifespan' protocol appears unsupported" not in proc.stderr
    assert "EAAB-test-token" not in proc.stderr


@pytest.mark.slow
def test_uvicorn_without_lifespan_serves_every_page_untouched() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "apps.quickstart:app",
            "--port",
            str(port),
            "--lifespan",
            "off",
        ],
        cwd=TESTS,
        env=_server_env(NO_TOKEN),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(f"{base}/docs", proc, logs=lambda: proc.communicate()[1])
        assert httpx.get(f"{base}/docs", timeout=1).status_code == 200
        assert httpx.get(f"{base}/nowhere").status_code == 404
        body = httpx.post(f"{base}/checkout").json()
        assert httpx.post(f"{base}/checkout").status_code == 200
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert body["status"] == "error"
    assert "access_token [META_ACCESS_TOKEN]" in body["problems"][0]
    said = [line for line in stderr.splitlines() if "capi_middleware: configuration error" in line]
    assert len(said) == 1, stderr
    assert "tracking is off" in said[0]


# -- in process: no lifespan ----------------------------------------------------------------------


def _asgi_requests(app: Any, calls: list[tuple[str, str]]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("8.8.8.8", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="https://shop.test") as c:
            return [await c.request(method, path) for method, path in calls]

    return asyncio.run(go())


CALLS = [("GET", "/docs"), ("GET", "/nowhere"), ("POST", "/checkout"), ("POST", "/checkout")]


def _config_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "capi_middleware" and "configuration error" in r.getMessage()
    ]


@pytest.mark.parametrize("case", list(MESSAGES))
def test_add_middleware_without_lifespan_passes_every_request_through(
    case: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    meta, message = MESSAGES[case]
    monkeypatch.delenv("META_ACCESS_TOKEN", raising=False)
    for name, value in meta.items():
        monkeypatch.setenv(name, value)
    app = quickstart.create_app()
    with caplog.at_level(logging.INFO, logger="capi_middleware"):
        docs, missing, first, second = _asgi_requests(app, CALLS)
    assert (docs.status_code, missing.status_code, first.status_code) == (200, 404, 200)
    body = first.json()
    assert body["status"] == "error"
    assert len(body["problems"]) == 1
    assert body["problems"][0].startswith(f"config: tracking is off: {message}")
    assert second.json()["status"] == "error"
    said = _config_errors(caplog)
    assert len(said) == 1
    assert message in said[0]
    assert "tracking is off" in said[0]
    assert "EAAB-test-token" not in caplog.text


def test_a_direct_wrap_with_a_bad_option_keeps_the_app_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        ctx = scope["state"]["capi"]
        seen.append(ctx.track("Lead"))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with caplog.at_level(logging.INFO, logger="capi_middleware"):
        wrapped = CAPIMiddleware(app, pixel_id="1", access_token="t", pixle_id="2")
        (response,) = _asgi_requests(wrapped, [("GET", "/")])
    assert response.status_code == 204
    assert seen[0].status == "error"
    assert "unknown option(s) pixle_id" in str(seen[0].problems[0])
    assert wrapped.client.config_error == (
        "CAPIMiddleware: unknown option(s) pixle_id (did you mean pixel_id?)"
    )
    assert len(_config_errors(caplog)) == 1


def test_the_lifespan_startup_fails_with_the_message() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("the app's lifespan does not run under a rejected config")

    wrapped = CAPIMiddleware(app, pixel_id="abc", access_token="t")
    sent: list[dict[str, Any]] = []
    inbox = [{"type": "lifespan.startup"}]

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(wrapped({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    assert sent == [
        {
            "type": "lifespan.startup.failed",
            "message": "capi_middleware: configuration error: pixel_id [META_PIXEL_ID]: must be "
            "the pixel's numeric id, e.g. '1234567890'",
        }
    ]


# -- WSGI -------------------------------------------------------------------------------------


def test_wsgi_logs_once_at_start_and_passes_every_request_through(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("META_ACCESS_TOKEN", raising=False)
    monkeypatch.setenv("META_PIXEL_ID", "1234567890")
    flask = Flask(__name__)

    @flask.post("/checkout")
    def checkout() -> dict[str, Any]:
        result = flask_request.environ["capi"].track("Purchase", value=5, currency="USD")
        return {"status": result.status, "problems": [str(p) for p in result.problems]}

    with caplog.at_level(logging.INFO, logger="capi_middleware"):
        flask.wsgi_app = CAPIWSGIMiddleware(flask.wsgi_app)  # type: ignore[method-assign]
        assert len(_config_errors(caplog)) == 1  # at start, before any request
        transport = httpx.WSGITransport(app=flask, remote_addr="8.8.8.8")
        with httpx.Client(transport=transport, base_url="https://shop.test") as c:
            missing = c.get("/nowhere")
            bought = c.post("/checkout")
            c.post("/checkout")
    assert missing.status_code == 404
    assert bought.status_code == 200
    assert bought.json()["status"] == "error"
    assert "access_token [META_ACCESS_TOKEN]: not set" in bought.json()["problems"][0]
    assert bought.headers.get_list("set-cookie") == []
    assert len(_config_errors(caplog)) == 1


def test_a_misspelled_variable_is_named_in_the_no_pixel_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in [n for n in os.environ if n.startswith("META_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("META_PIXELID", "1234567890")
    monkeypatch.setenv("META_ACESS_TOKEN", "EAAB-test-token")
    with caplog.at_level(logging.WARNING, logger="capi_middleware"):
        CAPIWSGIMiddleware(lambda environ, start_response: [])
    (said,) = [r.getMessage() for r in caplog.records if "events will be dropped" in r.getMessage()]
    assert "META_ACESS_TOKEN is set but not read: did you mean META_ACCESS_TOKEN?" in said
    assert "META_PIXELID is set but not read: did you mean META_PIXEL_ID?" in said
    assert "EAAB-test-token" not in said
