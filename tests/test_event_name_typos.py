"""A misspelled standard event name is warned about once per name, from every adapter and from
CAPIClient.track (issue 12, point 8). Each test uses its own misspelling: the warning is once
per process and name.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from flask import Flask
from flask import request as flask_request

from capi_middleware import CAPIClient, CAPIMiddleware, CAPIWSGIMiddleware

OPTIONS: dict[str, Any] = {"dry_run": True, "consent": True}


def _typo_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "did you mean" in r.getMessage()
    ]


def test_asgi_warns_once_per_name(caplog: pytest.LogCaptureFixture) -> None:
    statuses: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        result = scope["state"]["capi"].track("Purchse", value=1, currency="USD")
        statuses.append(result.status)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    wrapped = CAPIMiddleware(app, **OPTIONS)

    async def go() -> None:
        transport = httpx.ASGITransport(app=wrapped, client=("8.8.8.8", 1))
        async with httpx.AsyncClient(transport=transport, base_url="https://shop.test") as c:
            for _ in range(3):
                await c.get("/", headers={"user-agent": "Typo/1.0"})

    with caplog.at_level(logging.WARNING, logger="capi_middleware"):
        asyncio.run(go())
    assert statuses == ["dry_run"] * 3  # still sent, as the custom event it is
    assert _typo_warnings(caplog) == [
        "capi_middleware: event name 'Purchse' is not a standard event, so Meta counts it as a "
        "custom event; did you mean 'Purchase'? (said once per name)"
    ]


def test_wsgi_warns_once_per_name(caplog: pytest.LogCaptureFixture) -> None:
    flask = Flask(__name__)

    @flask.get("/")
    def home() -> dict[str, str]:
        return {"status": flask_request.environ["capi"].track("AddToCard").status}

    flask.wsgi_app = CAPIWSGIMiddleware(flask.wsgi_app, **OPTIONS)  # type: ignore[method-assign]
    transport = httpx.WSGITransport(app=flask, remote_addr="8.8.8.8")
    with (
        caplog.at_level(logging.WARNING, logger="capi_middleware"),
        httpx.Client(transport=transport, base_url="https://shop.test") as c,
    ):
        for _ in range(2):
            c.get("/", headers={"user-agent": "Typo/1.0"})
    (said,) = _typo_warnings(caplog)
    assert "'AddToCard'" in said
    assert "did you mean 'AddToCart'?" in said


def test_client_track_warns_once_per_name(caplog: pytest.LogCaptureFixture) -> None:
    client = CAPIClient(dry_run=True, consent=True)
    with caplog.at_level(logging.WARNING, logger="capi_middleware"):
        for _ in range(2):
            client.track("ViewConent", user_data={"email": "a@b.co"}, action_source="email")
        client.track("MyOwnEvent", user_data={"email": "a@b.co"}, action_source="email")
    (said,) = _typo_warnings(caplog)
    assert "did you mean 'ViewContent'?" in said
