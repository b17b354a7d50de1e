"""``dry_run="debug"`` (``META_DRY_RUN=debug``) shows what would be sent (issue 12, point 6): each
built event's match keys, hashes shortened and clear values masked, and its custom_data.
"""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest
from apps import quickstart

EMAIL = "jane@example.com"
UA = "Mozilla/5.0 (X11; Linux x86_64) DryRun/1.0"


def _checkout(app: object) -> dict[str, object]:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("8.8.4.4", 1234))  # type: ignore[arg-type]
        async with httpx.AsyncClient(
            transport=transport,
            base_url="https://shop.test",
            cookies={"_fbp": "fb.1.1700000000000.1234567890"},
        ) as c:
            return await c.post("/checkout", headers={"user-agent": UA})

    body: dict[str, object] = asyncio.run(go()).json()
    return body


def test_debug_prints_match_keys_and_custom_data(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("META_DRY_RUN", "debug")
    body = _checkout(quickstart.create_app(consent=True))
    assert body["status"] == "dry_run"
    err = capsys.readouterr().err
    em = hashlib.sha256(EMAIL.encode()).hexdigest()
    ph = hashlib.sha256(b"16169547888").hexdigest()  # +1 616 954 7888, digits only
    assert err.splitlines() == [
        f"capi_middleware dry_run: Purchase event_id={body['event_id']} action_source=website "
        "(not sent)",
        "    match keys: client_ip_address=8.8.4.0/24, client_user_agent=Mozilla/5.0 …, "
        f"em={em[:10]}…, fbp=fb.1.1700000000000.…, ph={ph[:10]}…",
        "    event_source_url: https://shop.test/checkout",
        '    custom_data: {"currency": "USD", "value": 79.99}',
    ]
    for secret in (EMAIL, em, ph, "8.8.4.4", UA, "1234567890", "6169547888"):
        assert secret not in err


def test_plain_dry_run_prints_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("META_DRY_RUN", "true")
    assert _checkout(quickstart.create_app(consent=True))["status"] == "dry_run"
    assert capsys.readouterr().err == ""
