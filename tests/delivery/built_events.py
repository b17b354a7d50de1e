"""A built, Meta-shaped event for the delivery tests (what `build_event` hands the sender)."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

EMAIL_HASH = hashlib.sha256(b"john_smith@gmail.com").hexdigest()


def make_event(
    event_id: str | None = None,
    *,
    age: float = 0,
    name: str = "Purchase",
    action_source: str = "website",
) -> dict[str, Any]:
    """A valid Purchase (``age`` seconds old), with a fresh event id unless one is given."""
    return {
        "event_name": name,
        "event_time": int(time.time() - age),
        "event_id": event_id or uuid.uuid4().hex,
        "action_source": action_source,
        "event_source_url": "https://shop.example/checkout",
        "user_data": {"em": [EMAIL_HASH], "client_user_agent": "pytest"},
        "custom_data": {"value": 12.5, "currency": "USD"},
    }
