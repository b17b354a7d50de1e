"""events.build_request_body / appsecret_proof / encode_json: the bytes Graph receives."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from typing import Any

import pytest

from capi_middleware.rules.events import (
    MAX_EVENTS_PER_REQUEST,
    appsecret_proof,
    build_request_body,
    encode_json,
)

TOKEN = "EAABsbCS1iHgBAtoken"
SECRET = "0123456789abcdef0123456789abcdef"
EVENT = {"event_name": "Lead", "event_time": 1_760_000_000, "action_source": "website"}


def test_minimal_body() -> None:
    body = build_request_body([EVENT], access_token=TOKEN)
    assert body == {"data": [EVENT], "access_token": TOKEN}


def test_full_body_with_appsecret_proof() -> None:
    body = build_request_body(
        [EVENT, EVENT],
        access_token=TOKEN,
        app_secret=SECRET,
        test_event_code="TEST123",
        partner_agent="capi-middleware",
    )
    expected_proof = hmac.new(SECRET.encode(), TOKEN.encode(), hashlib.sha256).hexdigest()
    assert body == {
        "data": [EVENT, EVENT],
        "access_token": TOKEN,
        "test_event_code": "TEST123",
        "partner_agent": "capi-middleware",
        "appsecret_proof": expected_proof,
    }


@pytest.mark.parametrize(
    ("token", "secret"),
    [(TOKEN, SECRET), ("tøken-ü", "sécret"), ("t", "s" * 200)],
)
def test_appsecret_proof_is_hmac_sha256_of_token_keyed_by_secret(token: str, secret: str) -> None:
    proof = appsecret_proof(token, secret)
    assert proof == hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()
    assert len(proof) == 64
    assert proof != appsecret_proof(secret, token)  # the key is the secret, not the token


def test_no_proof_without_secret() -> None:
    assert "appsecret_proof" not in build_request_body([EVENT], access_token=TOKEN, app_secret=None)


def test_mappings_become_dicts() -> None:
    from types import MappingProxyType

    body = build_request_body([MappingProxyType(EVENT)], access_token=TOKEN)
    assert body["data"] == [EVENT]
    assert type(body["data"][0]) is dict
    assert json.loads(encode_json(body))["data"] == [EVENT]


def test_exactly_1000_events_is_allowed() -> None:
    body = build_request_body([EVENT] * MAX_EVENTS_PER_REQUEST, access_token=TOKEN)
    assert len(body["data"]) == 1000


@pytest.mark.parametrize("count", [0, MAX_EVENTS_PER_REQUEST + 1, 5000])
def test_event_count_outside_1_to_1000_raises(count: int) -> None:
    with pytest.raises(ValueError, match="events"):
        build_request_body([EVENT] * count, access_token=TOKEN)


def test_empty_token_raises_without_echoing_secrets() -> None:
    with pytest.raises(ValueError, match="access_token") as info:
        build_request_body([EVENT], access_token="", app_secret=SECRET)
    assert SECRET not in str(info.value)


def test_encode_json_is_compact_utf8() -> None:
    data: dict[str, Any] = {"a": [1, 2.5], "b": "Café ☕", "c": None, "d": True}
    encoded = encode_json(data)
    assert encoded == '{"a":[1,2.5],"b":"Café ☕","c":null,"d":true}'.encode()
    assert json.loads(encoded) == data


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_encode_json_refuses_nan_and_infinity(bad: float) -> None:
    with pytest.raises(ValueError):
        encode_json({"data": [{"custom_data": {"value": bad}}]})


def test_body_round_trips_through_encode_json() -> None:
    body = build_request_body([EVENT], access_token=TOKEN, app_secret=SECRET)
    assert json.loads(encode_json(body)) == body


@pytest.mark.parametrize(
    "value",
    [
        {"event_name": "Purchase", "custom_data": {"value": 1e-7, "contents": [{"id": "é\u2028"}]}},
        [1, -0.0, 10**30, "</script>", {"nested": [None, False, {}]}],
        {"int_key_is_text": {1: "one"}},
        "just a string",
    ],
)
def test_encode_json_matches_the_standard_encoder(value: Any) -> None:
    # encode_json calls json's C encoder directly; its bytes must be what json.dumps gives.
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    assert encode_json(value) == expected.encode("utf-8")


def test_encode_json_refuses_what_json_cannot_encode() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_json({"custom_data": {"when": object()}})
    circular: dict[str, Any] = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular"):
        encode_json(circular)
