"""Meta's request: the JSON body of one ``POST /{pixel_id}/events`` and its bytes (pure).

`build_request_body` puts already built, validated events into the body (token, optional
``appsecret_proof``, ``test_event_code``, ``partner_agent``); `encode_json` is the one JSON
encoding used for what Graph receives and for Meta's size limit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import json.encoder
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "MAX_EVENTS_PER_REQUEST",
    "appsecret_proof",
    "build_request_body",
    "encode_json",
]

# Meta accepts at most 1,000 events in one request (META_CAPI_REFERENCE §1).
MAX_EVENTS_PER_REQUEST = 1000


def appsecret_proof(access_token: str, app_secret: str) -> str:
    """Hex HMAC-SHA256 of the access token keyed by the app secret (Graph's appsecret_proof)."""
    return hmac.new(
        app_secret.encode("utf-8"), access_token.encode("utf-8"), hashlib.sha256
    ).hexdigest()


def build_request_body(
    events: Sequence[Mapping[str, Any]],
    *,
    access_token: str,
    app_secret: str | None = None,
    test_event_code: str | None = None,
    partner_agent: str | None = None,
) -> dict[str, Any]:
    """The JSON body of one ``POST /{pixel_id}/events``; the token goes here, never in the URL.

    Raises ValueError for no events or more than `MAX_EVENTS_PER_REQUEST` (Meta's limit).
    """
    count = len(events)
    if count == 0:
        raise ValueError("events: a request needs at least one event")
    if count > MAX_EVENTS_PER_REQUEST:
        raise ValueError(
            f"events: {count} events; Meta accepts at most {MAX_EVENTS_PER_REQUEST} per request"
        )
    if not access_token:
        raise ValueError("access_token: must not be empty")
    body: dict[str, Any] = {
        "data": [e if isinstance(e, dict) else dict(e) for e in events],
        "access_token": access_token,
    }
    if test_event_code:
        body["test_event_code"] = test_event_code
    if partner_agent:
        body["partner_agent"] = partner_agent
    if app_secret:
        body["appsecret_proof"] = appsecret_proof(access_token, app_secret)
    return body


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _not_serializable(obj: object) -> object:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# json's C encoder, made once. ``JSONEncoder.encode`` builds one per call (with a fresh dict of
# seen containers for its circular-reference check): half the cost of encoding one event, which
# track() pays on the request path. Without that check a circular structure ends in
# RecursionError, which `encode_json` turns into the ValueError callers already handle.
# Same output as ``_ENCODER`` (tests/test_request_body.py compares them).
_C_ENCODE: Any = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, _not_serializable, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    if json.encoder.c_make_encoder is not None  # type: ignore[attr-defined]
    else None
)


def encode_json(obj: object) -> bytes:
    """Compact UTF-8 JSON; NaN and Infinity raise ValueError (Meta refuses them)."""
    if _C_ENCODE is None:  # pragma: no cover - CPython has _json
        return _ENCODER.encode(obj).encode("utf-8")
    try:
        return "".join(_C_ENCODE(obj, 0)).encode("utf-8")
    except RecursionError:
        raise ValueError("Circular reference detected") from None
