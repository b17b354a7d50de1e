"""Structured log records: names, pixel, counts and fbtrace_id on ``record.capi``; never secrets."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from typing import Any

import pytest

from capi_middleware.config import CAPIConfig
from capi_middleware.delivery.sender import Sender
from capi_middleware.testing.fake import FakeGraphAPI

TOKEN = "structured-log-token"
EMAIL_HASH = hashlib.sha256(b"john_smith@gmail.com").hexdigest()


def _event(event_id: str, name: str = "Purchase") -> dict[str, Any]:
    return {
        "event_name": name,
        "event_time": int(time.time()),
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout",
        "user_data": {"em": [EMAIL_HASH], "client_user_agent": "pytest"},
        "custom_data": {"value": 12.5, "currency": "USD"},
    }


def test_delivered_and_dead_lettered_records_carry_structured_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="capi_middleware")
    with FakeGraphAPI(access_token=TOKEN) as fake:
        sender = Sender(
            CAPIConfig(pixel_id="555", access_token=TOKEN, graph_url=fake.url, flush_interval=0.01)
        )
        try:
            bad = uuid.uuid4().hex
            fake.poison(bad, subcode=2804019)
            ids = [uuid.uuid4().hex for _ in range(3)]
            for event_id in [*ids, bad]:
                assert sender.submit(_event(event_id)).ok
            assert sender.flush(10)
        finally:
            sender.close(5)
        assert sorted(fake.event_ids) == sorted(ids)

    records = [r for r in caplog.records if hasattr(r, "capi")]
    delivered = [r for r in records if r.levelno == logging.DEBUG]
    dead = [r for r in records if r.capi.get("reason") == "invalid_event" and "event_ids" in r.capi]
    assert delivered, "no structured 'delivered' record"
    assert sum(r.capi["count"] for r in delivered) == 3
    assert all(r.capi["pixel_id"] == "555" for r in delivered)
    assert all(r.capi["event_names"] == {"Purchase": r.capi["count"]} for r in delivered)
    assert all(r.capi["fbtrace_id"] for r in delivered)
    (letter,) = dead
    assert letter.capi["subcode"] == 2804019
    assert letter.capi["code"] == 100
    assert letter.capi["event_ids"] == [bad]
    for record in caplog.records:
        text = record.getMessage() + repr(getattr(record, "capi", ""))
        assert TOKEN not in text
        assert EMAIL_HASH not in text  # not even hashed personal data
