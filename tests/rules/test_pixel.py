"""pixel.py: the fbq() call that pairs the page's event with the server's (deduplication)."""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

import pytest

from capi_middleware.errors import CAPIValidationError
from capi_middleware.rules.events import build_event
from capi_middleware.rules.pixel import render_fbq_track, script_safe_json

CALL = re.compile(r"^fbq\('(track|trackCustom)', (.*)\);$", re.DOTALL)


def parse(call: str) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """Split a rendered call into (method, name, params, options), decoding the JSON parts."""
    match = CALL.match(call)
    assert match, call
    decoder = json.JSONDecoder()
    rest = match.group(2)
    parts: list[Any] = []
    pos = 0
    for _ in range(3):
        value, end = decoder.raw_decode(rest, pos)
        parts.append(value)
        pos = end + 2 if end < len(rest) else end  # skip ", "
    assert pos >= len(rest)
    return match.group(1), parts[0], parts[1], parts[2]


def test_standard_event_uses_track_with_event_id() -> None:
    call = render_fbq_track("Purchase", {"value": 79.99, "currency": "USD"}, "evt-1")
    assert call == (
        'fbq(\'track\', "Purchase", {"value": 79.99, "currency": "USD"}, {"eventID": "evt-1"});'
    )


@pytest.mark.parametrize(
    ("name", "method", "meta_name"),
    [
        ("purchase", "track", "Purchase"),
        ("page_view", "track", "PageView"),
        ("sign_up", "track", "CompleteRegistration"),
        ("Lead", "track", "Lead"),
        ("SubmitApplication", "track", "SubmitApplication"),
        ("PlayedDemo", "trackCustom", "PlayedDemo"),
        ("view_item_list", "trackCustom", "view_item_list"),
        (" Purchase ", "track", "Purchase"),
    ],
)
def test_names_and_methods(name: str, method: str, meta_name: str) -> None:
    got_method, got_name, params, options = parse(render_fbq_track(name, None, "e1"))
    assert (got_method, got_name, params, options) == (method, meta_name, {}, {"eventID": "e1"})


def test_page_and_server_carry_the_same_mapped_custom_data() -> None:
    ga4 = {
        "transaction_id": "T_1",
        "value": Decimal("30.02"),
        "currency": "eur",
        "items": [
            {"item_id": "SKU_1", "item_name": "Tee", "price": 10.01, "quantity": 2},
            {"item_id": 7, "price": 10},
        ],
    }
    server = build_event(
        "purchase",
        custom_data=ga4,
        event_id="shared-id",
        user_data={"client_ip_address": "203.0.113.9", "client_user_agent": "UA/1"},
        event_source_url="https://shop.example.com/done",
    )
    assert server.event is not None, server.problems
    method, name, params, options = parse(render_fbq_track("purchase", ga4, "shared-id"))
    assert method == "track"
    assert name == server.event.event_name == "Purchase"
    assert params == server.event.to_dict()["custom_data"]
    assert params["contents"][1] == {"id": "7", "quantity": 1, "item_price": 10}
    assert options == {"eventID": server.event.event_id}


INJECTIONS = [
    "</script><script>alert(1)</script>",
    "</SCRIPT >",
    "<!--<script>",
    "]]>&amp;&lt;",
    "line\u2028separator\u2029paragraph",
    "'); alert(1); ('",
    '"}); alert(1); ({"',
    "\\u003c/script\\u003e",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_script_breakouts_are_escaped_everywhere(payload: str) -> None:
    call = render_fbq_track(
        "Custom" + payload, {payload: payload, "nested": [{"id": payload}]}, "id" + payload
    )
    for raw in ("<", ">", "&", "\u2028", "\u2029"):
        assert raw not in call
    # and the values survive the round trip unchanged
    _, name, params, options = parse(call)
    assert name == "Custom" + payload
    assert params == {payload: payload, "nested": [{"id": payload}]}
    assert options == {"eventID": "id" + payload}


def test_escapes_are_json_unicode_escapes() -> None:
    assert script_safe_json("</script>&\u2028") == '"\\u003c/script\\u003e\\u0026\\u2028"'


def test_non_ascii_text_is_kept_readable() -> None:
    assert script_safe_json({"title": "Café · ☕"}) == '{"title": "Café · ☕"}'


@pytest.mark.parametrize(
    "custom_data",
    [
        {"value": math.nan},
        {"value": math.inf, "currency": "USD"},
        {"deep": {"x": [1, -math.inf]}},
        {"value": Decimal("NaN")},
        {"items": [{"item_id": "A"}, {"item_name": "no id"}]},
        {"when": object()},
    ],
)
def test_unsendable_custom_data_raises_value_error(custom_data: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as info:
        render_fbq_track("Purchase", custom_data, "e1")
    assert isinstance(info.value, CAPIValidationError)
    assert info.value.problems


def test_script_safe_json_refuses_nan() -> None:
    with pytest.raises(ValueError):
        script_safe_json({"value": math.nan})


@pytest.mark.parametrize(
    ("name", "event_id"), [("", "e1"), ("  ", "e1"), ("Lead", ""), ("Lead", None)]
)
def test_empty_name_or_id_raises(name: str, event_id: Any) -> None:
    with pytest.raises(ValueError):
        render_fbq_track(name, {}, event_id)
