"""events.py: GA4 mapping, build_event, validate_event, Event.to_dict (pure, table-driven)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import threading
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from capi_middleware.errors import Problem
from capi_middleware.rules.events import (
    ACTION_SOURCES,
    GA4_EVENT_NAMES,
    MAX_EVENT_BYTES,
    STANDARD_EVENTS,
    BuildResult,
    Event,
    build_event,
    encode_json,
    is_too_old,
    map_custom_data,
    map_event_name,
    new_event_id,
    validate_event,
)

NOW = 1_760_000_000.0
DAY = 86_400
EMAIL_HASH = (
    "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"  # Meta's doc example
)
US_HASH = "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"
H = "a" * 64  # any SHA-256 hex
URL = "https://shop.example.com/checkout/done"
UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"


def web_user(**extra: Any) -> dict[str, Any]:
    return {"client_ip_address": "203.0.113.9", "client_user_agent": UA, **extra}


def build(name: str = "Purchase", **kwargs: Any) -> BuildResult:
    kwargs.setdefault("user_data", web_user(email="john_smith@gmail.com"))
    kwargs.setdefault("custom_data", {"value": 10, "currency": "USD"})
    kwargs.setdefault("event_source_url", URL)
    kwargs.setdefault("now", NOW)
    return build_event(name, **kwargs)


def meta_event(**changes: Any) -> dict[str, Any]:
    """A valid Meta-shaped Purchase; `changes` replaces top-level keys (None deletes)."""
    event: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": int(NOW) - 10,
        "event_id": "evt-1",
        "action_source": "website",
        "event_source_url": URL,
        "user_data": {"em": [H], "client_ip_address": "203.0.113.9", "client_user_agent": UA},
        "custom_data": {"value": 10.5, "currency": "USD"},
    }
    for key, value in changes.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return event


def fatal(problems: Any) -> list[Problem]:
    return [p for p in problems if p.fatal]


def only_problem(problems: Any) -> Problem:
    found = fatal(problems)
    assert len(found) == 1, found
    return found[0]


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ga4", "meta"),
    [
        ("page_view", "PageView"),
        ("view_item", "ViewContent"),
        ("add_to_cart", "AddToCart"),
        ("add_to_wishlist", "AddToWishlist"),
        ("begin_checkout", "InitiateCheckout"),
        ("add_payment_info", "AddPaymentInfo"),
        ("purchase", "Purchase"),
        ("generate_lead", "Lead"),
        ("sign_up", "CompleteRegistration"),
        ("search", "Search"),
    ],
)
def test_ga4_names_map_to_meta(ga4: str, meta: str) -> None:
    assert map_event_name(ga4) == meta
    assert meta in STANDARD_EVENTS
    result = build(ga4, custom_data={"value": 1, "currency": "EUR"})
    assert result.event is not None
    assert result.event.event_name == meta


def test_ga4_table_is_exactly_the_reference_table() -> None:
    assert len(GA4_EVENT_NAMES) == 10
    assert set(GA4_EVENT_NAMES.values()) <= STANDARD_EVENTS


@pytest.mark.parametrize(
    "name", ["Purchase", "Lead", "view_item_list", "refund", "MyCustomEvent", "Page_View"]
)
def test_other_names_pass_through(name: str) -> None:
    assert map_event_name(name) == name


def test_standard_events_and_action_sources_are_metas_lists() -> None:
    assert len(STANDARD_EVENTS) == 18
    assert {"Donate", "FindLocation", "SubmitApplication"} <= STANDARD_EVENTS
    expected = {
        "website", "email", "app", "phone_call", "chat", "physical_store",
        "system_generated", "business_messaging", "other",
    }  # fmt: skip
    assert set(ACTION_SOURCES) == expected


def test_custom_event_is_built_with_its_own_name() -> None:
    result = build("PlayedDemo", custom_data={"level": 3})
    assert result.event is not None
    assert result.event.event_name == "PlayedDemo"
    assert result.event.custom_data == {"level": 3}


# -- GA4 ecommerce -> custom_data -----------------------------------------------------------


GA4_PURCHASE = {
    "transaction_id": "T_12345",
    "value": 72.05,
    "currency": "usd",
    "coupon": "SUMMER",
    "items": [
        {
            "item_id": "SKU_1",
            "item_name": "Stan and Friends Tee",
            "item_brand": "Google",
            "item_category": "Apparel",
            "price": 10.01,
            "quantity": 3,
            "item_variant": "green",
        },
        {"item_id": 42, "price": 21.01, "quantity": 2},
        {"item_id": "SKU_3", "price": 0},  # GA4: quantity defaults to 1
    ],
}


def test_ga4_ecommerce_maps_to_meta_custom_data() -> None:
    mapped, problems = map_custom_data(GA4_PURCHASE)
    assert problems == []
    assert mapped == {
        "order_id": "T_12345",
        "value": 72.05,
        "currency": "USD",
        "coupon": "SUMMER",  # unknown keys pass through as custom properties
        "contents": [
            {
                "id": "SKU_1",
                "quantity": 3,
                "item_price": 10.01,
                "title": "Stan and Friends Tee",
                "brand": "Google",
                "category": "Apparel",
            },
            {"id": "42", "quantity": 2, "item_price": 21.01},
            {"id": "SKU_3", "quantity": 1, "item_price": 0},
        ],
        "content_ids": ["SKU_1", "42", "SKU_3"],
        "num_items": 6,
        "content_type": "product",
    }


def test_ga4_search_term_and_meta_fields_win() -> None:
    mapped, _ = map_custom_data(
        {"search_term": "red shoes", "transaction_id": "T1", "order_id": "O1", "x": None}
    )
    assert mapped == {"search_string": "red shoes", "order_id": "O1"}


def test_ga4_items_keep_explicit_meta_summary_fields() -> None:
    mapped, _ = map_custom_data(
        {
            "items": [{"item_id": "A", "quantity": 2}],
            "content_type": "product_group",
            "num_items": 9,
        }
    )
    assert mapped["content_type"] == "product_group"
    assert mapped["num_items"] == 9


def test_items_ignored_when_contents_given() -> None:
    mapped, problems = map_custom_data(
        {"items": [{"item_id": "A"}], "contents": [{"id": "B", "quantity": 1}]}
    )
    assert mapped == {"contents": [{"id": "B", "quantity": 1}]}
    assert [(p.field, p.fatal) for p in problems] == [("custom_data.items", False)]


@pytest.mark.parametrize(
    ("items", "field"),
    [
        (
            [{"item_id": "A"}, {"item_id": "B"}, {"item_name": "no id"}],
            "custom_data.items[2].item_id",
        ),
        ([{"item_id": ""}], "custom_data.items[0].item_id"),
        ([{"item_id": "   "}], "custom_data.items[0].item_id"),
        ([{"item_id": None}], "custom_data.items[0].item_id"),
        ([{"item_id": True}], "custom_data.items[0].item_id"),
        ([{"item_id": ["A"]}], "custom_data.items[0].item_id"),
        (["SKU"], "custom_data.items[0]"),
    ],
)
def test_item_without_id_is_fatal(items: list[Any], field: str) -> None:
    result = build(custom_data={"value": 1, "currency": "USD", "items": items})
    assert result.event is None
    problem = only_problem(result.problems)
    assert problem.field == field
    assert problem.meta_subcode == 2804019


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"item_id": "A", "quantity": "2"}, "custom_data.items[0].quantity"),
        ({"item_id": "A", "quantity": 1.5}, "custom_data.items[0].quantity"),
        ({"item_id": "A", "quantity": True}, "custom_data.items[0].quantity"),
        ({"item_id": "A", "price": "9.99"}, "custom_data.items[0].price"),
        ({"item_id": "A", "price": True}, "custom_data.items[0].price"),
    ],
)
def test_bad_item_fields_are_fatal(item: dict[str, Any], field: str) -> None:
    result = build(custom_data={"value": 1, "currency": "USD", "items": [item]})
    assert result.event is None
    assert only_problem(result.problems).field == field


@pytest.mark.parametrize(
    "price", [float("nan"), float("inf"), Decimal("NaN"), Decimal("-Infinity")]
)
def test_item_price_nan_is_fatal(price: Any) -> None:
    result = build(
        custom_data={"value": 1, "currency": "USD", "items": [{"item_id": "A", "price": price}]}
    )
    assert result.event is None
    assert only_problem(result.problems).field == "custom_data.items[0].price"


def test_items_not_a_list_is_fatal() -> None:
    result = build(custom_data={"value": 1, "currency": "USD", "items": {"item_id": "A"}})
    assert only_problem(result.problems).field == "custom_data.items"


def test_integral_float_quantity_and_decimal_price_are_accepted() -> None:
    mapped, problems = map_custom_data(
        {"items": [{"item_id": "A", "quantity": 2.0, "price": Decimal("9.99")}]}
    )
    assert problems == []
    assert mapped["contents"] == [{"id": "A", "quantity": 2, "item_price": 9.99}]


def test_meta_fields_are_coerced() -> None:
    mapped, problems = map_custom_data(
        {
            "currency": " eur ",
            "value": Decimal("19.90"),
            "content_ids": [1, "B"],
            "contents": [{"id": 7, "quantity": 1}],
            "order_id": 991,
            "tags": ("a", "b"),
        }
    )
    assert problems == []
    assert mapped == {
        "currency": "EUR",
        "value": 19.9,
        "content_ids": ["1", "B"],
        "contents": [{"id": "7", "quantity": 1}],
        "order_id": "991",
        "tags": ["a", "b"],
    }


def test_mapping_is_idempotent() -> None:
    # the pixel may be handed custom_data that the server already mapped
    once, _ = map_custom_data(GA4_PURCHASE)
    twice, problems = map_custom_data(once)
    assert problems == []
    assert twice == once


def test_single_content_id_becomes_a_list() -> None:
    mapped, _ = map_custom_data({"content_ids": "SKU"})
    assert mapped["content_ids"] == ["SKU"]


def test_meta_contents_without_id_is_fatal_2804019() -> None:
    result = build(
        custom_data={
            "value": 1,
            "currency": "USD",
            "contents": [{"id": "A", "quantity": 1}, {"quantity": 2, "item_price": 3.0}],
        }
    )
    assert result.event is None
    problem = only_problem(result.problems)
    assert (problem.field, problem.meta_subcode) == ("custom_data.contents[1].id", 2804019)


# -- build_event: defaults and coercion -----------------------------------------------------


def test_event_id_generated_when_absent_and_unique() -> None:
    ids = {new_event_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    first, second = build(), build()
    assert first.event is not None
    assert second.event is not None
    assert len(first.event.event_id) == 32
    assert first.event.event_id != second.event.event_id


def test_generated_event_id_is_a_uuid4_hex() -> None:
    for _ in range(200):
        value = new_event_id()
        parsed = uuid.UUID(hex=value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert parsed.hex == value


def test_event_ids_stay_unique_across_threads() -> None:
    # Ids come from a shared buffer of random bytes (events._RandomBytes): no two callers may
    # be handed the same slice.
    results: list[list[str]] = [[] for _ in range(8)]

    def draw(out: list[str]) -> None:
        out.extend(new_event_id() for _ in range(2000))

    threads = [threading.Thread(target=draw, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [i for out in results for i in out]
    assert len(set(ids)) == len(ids) == 16000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_never_repeats_its_parents_event_ids() -> None:
    new_event_id()  # the parent's buffer of random bytes is now filled
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        try:
            os.close(read_fd)
            os.write(write_fd, " ".join(new_event_id() for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as pipe:
        child_ids = set(pipe.read().decode().split())
    parent_ids = {new_event_id() for _ in range(50)}
    assert len(child_ids) == 50
    assert not child_ids & parent_ids


def test_event_id_given_is_kept() -> None:
    result = build(event_id="order-991-purchase")
    assert result.event is not None
    assert result.event.event_id == "order-991-purchase"


@pytest.mark.parametrize("event_id", ["", "   ", ["x"]])
def test_bad_event_id_is_fatal(event_id: Any) -> None:
    result = build(event_id=event_id)
    assert result.event is None
    assert only_problem(result.problems).field == "event_id"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, int(NOW)),
        (int(NOW) - 100, int(NOW) - 100),
        (NOW - 100.9, int(NOW) - 101),
        (datetime.fromtimestamp(NOW - 30, tz=timezone.utc), int(NOW) - 30),
        (datetime.fromtimestamp(NOW - 30, tz=timezone(timedelta(hours=5))), int(NOW) - 30),
        # naive datetimes are UTC, not the server's local zone
        (datetime.fromtimestamp(NOW - 30, tz=timezone.utc).replace(tzinfo=None), int(NOW) - 30),
    ],
)
def test_event_time_accepted_forms(given: Any, expected: int) -> None:
    result = build(event_time=given)
    assert result.event is not None, result.problems
    assert result.event.event_time == expected
    assert isinstance(result.event.event_time, int)


def test_event_time_in_milliseconds_is_fatal() -> None:
    result = build(event_time=int(NOW * 1000))
    assert result.event is None
    problem = only_problem(result.problems)
    assert problem.field == "event_time"
    assert "seconds, not milliseconds" in problem.message


@pytest.mark.parametrize("given", [True, "1760000000", float("nan"), float("inf"), [1]])
def test_event_time_wrong_type_is_fatal(given: Any) -> None:
    result = build(event_time=given)
    assert result.event is None
    assert only_problem(result.problems).field == "event_time"


def test_action_source_defaults_to_website() -> None:
    result = build()
    assert result.event is not None
    assert result.event.action_source == "website"


@pytest.mark.parametrize("source", ["web", "Website", "", 3])
def test_unknown_action_source_is_fatal(source: Any) -> None:
    result = build(action_source=source)
    assert result.event is None
    assert "action_source" in [p.field for p in fatal(result.problems)]


def test_physical_store_needs_no_url_or_user_agent() -> None:
    result = build(
        action_source="physical_store",
        event_source_url=None,
        user_data={"email": "john_smith@gmail.com"},
    )
    assert result.ok, result.problems


def test_website_without_event_source_url_is_fatal() -> None:
    result = build(event_source_url=None)
    assert result.event is None
    assert only_problem(result.problems).field == "event_source_url"


def test_ldu_sets_processing_options() -> None:
    result = build(ldu=True, ldu_country=1, ldu_state=1000)
    assert result.event is not None
    body = result.event.to_dict()
    assert body["data_processing_options"] == ["LDU"]
    assert body["data_processing_options_country"] == 1
    assert body["data_processing_options_state"] == 1000


def test_ldu_geolocate_defaults() -> None:
    result = build(ldu=True)
    assert result.event is not None
    assert result.event.data_processing_options == ("LDU",)
    assert result.event.to_dict()["data_processing_options_country"] == 0
    assert result.event.to_dict()["data_processing_options_state"] == 0


@pytest.mark.parametrize(("country", "state"), [(2, 0), (0, 1), (1, 999), (-1, 0)])
def test_ldu_bad_codes_are_fatal(country: int, state: int) -> None:
    result = build(ldu=True, ldu_country=country, ldu_state=state)
    assert result.event is None
    assert {p.field for p in fatal(result.problems)} <= {
        "data_processing_options_country",
        "data_processing_options_state",
    }


def test_no_ldu_sends_no_processing_options() -> None:
    result = build()
    assert result.event is not None
    assert "data_processing_options" not in result.event.to_dict()


# -- user data through normalize ------------------------------------------------------------


def test_built_purchase_carries_metas_doc_example_hashes() -> None:
    result = build(user_data=web_user(email="  John_Smith@gmail.com ", country="US"))
    assert result.event is not None, result.problems
    assert result.event.user_data["em"] == [EMAIL_HASH]
    assert result.event.user_data["country"] == [US_HASH]
    assert result.event.to_dict()["user_data"]["em"] == [EMAIL_HASH]
    assert hashlib.sha256(b"john_smith@gmail.com").hexdigest() == EMAIL_HASH


def test_already_hashed_values_are_not_hashed_again() -> None:
    result = build(user_data=web_user(em=EMAIL_HASH.upper(), external_id=[H, H]))
    assert result.event is not None, result.problems
    assert result.event.user_data["em"] == [EMAIL_HASH]
    assert result.event.user_data["external_id"] == [H]


def test_clear_keys_are_sent_as_given() -> None:
    result = build(user_data=web_user(fbp="fb.1.1700000000000.123456789"))
    assert result.event is not None
    assert result.event.user_data["client_user_agent"] == UA
    assert result.event.user_data["fbp"] == "fb.1.1700000000000.123456789"


def test_dropped_user_data_value_is_a_nonfatal_problem_without_the_value() -> None:
    result = build(user_data=web_user(email="john.smith@", phone="+1 (616) 954-7888"))
    assert result.event is not None, result.problems
    dropped = [p for p in result.problems if not p.fatal]
    assert dropped, "the unusable email must be reported"
    assert all(p.field.startswith("user_data.") for p in dropped)
    assert "em" not in result.event.user_data
    assert "john.smith" not in " ".join(str(p) for p in result.problems)


def test_user_data_not_a_mapping_is_fatal() -> None:
    result = build(user_data=["john_smith@gmail.com"])
    assert result.event is None
    assert "user_data" in [p.field for p in fatal(result.problems)]
    assert "john_smith" not in " ".join(str(p) for p in result.problems)


def test_no_user_data_is_fatal_2804050() -> None:
    result = build(user_data=None, action_source="system_generated", event_source_url=None)
    problem = only_problem(result.problems)
    assert (problem.field, problem.meta_subcode) == ("user_data", 2804050)


# -- validate_event: one rule per row -------------------------------------------------------


def test_meta_event_baseline_is_valid() -> None:
    assert validate_event(meta_event(), now=NOW) == []


CASES: list[tuple[str, dict[str, Any], str, int | None]] = [
    ("name missing", {"event_name": None}, "event_name", None),
    ("name empty", {"event_name": "  "}, "event_name", None),
    ("name not str", {"event_name": 5}, "event_name", None),
    ("name too long", {"event_name": "X" * 51}, "event_name", None),
    ("time missing", {"event_time": None}, "event_time", None),
    ("time float", {"event_time": NOW}, "event_time", None),
    ("time bool", {"event_time": True}, "event_time", None),
    ("time ms", {"event_time": int(NOW * 1000)}, "event_time", None),
    ("time negative", {"event_time": -5}, "event_time", None),
    ("too old", {"event_time": int(NOW) - 7 * DAY - 1}, "event_time", 2804003),
    (
        "too old store",
        {"event_time": int(NOW) - 62 * DAY - 1, "action_source": "physical_store"},
        "event_time",
        2804003,
    ),
    ("future", {"event_time": int(NOW) + 61}, "event_time", None),
    ("source missing", {"action_source": None}, "action_source", None),
    ("source unknown", {"action_source": "web"}, "action_source", None),
    ("event_id empty", {"event_id": ""}, "event_id", None),
    ("event_id int", {"event_id": 5}, "event_id", None),
    ("url missing", {"event_source_url": None}, "event_source_url", None),
    ("url relative", {"event_source_url": "/checkout"}, "event_source_url", None),
    ("url not str", {"event_source_url": ["https://x"]}, "event_source_url", None),
    ("referrer not str", {"referrer_url": 5}, "referrer_url", None),
    ("opt_out not bool", {"opt_out": "yes"}, "opt_out", None),
    ("dpo bad", {"data_processing_options": ["GDPR"]}, "data_processing_options", None),
    ("dpo str", {"data_processing_options": "LDU"}, "data_processing_options", None),
    (
        "dpo country",
        {"data_processing_options_country": 2},
        "data_processing_options_country",
        None,
    ),
    ("dpo state", {"data_processing_options_state": 6}, "data_processing_options_state", None),
    ("user_data missing", {"user_data": None}, "user_data", 2804050),
    ("user_data list", {"user_data": [H]}, "user_data", None),
    (
        "em unhashed",
        {"user_data": {"em": ["john_smith@gmail.com"], "client_user_agent": UA}},
        "user_data.em[0]",
        2804016,
    ),
    (
        "ph unhashed str",
        {"user_data": {"ph": "16169547888", "client_user_agent": UA}},
        "user_data.ph",
        2804016,
    ),
    (
        "clear key not str",
        {"user_data": {"em": [H], "client_user_agent": UA, "client_ip_address": ["1.2.3.4"]}},
        "user_data.client_ip_address",
        None,
    ),
    (
        "website without UA",
        {"user_data": {"em": [H], "client_ip_address": "203.0.113.9"}},
        "user_data.client_user_agent",
        None,
    ),
    ("custom_data list", {"custom_data": [1]}, "custom_data", None),
    ("purchase no value", {"custom_data": {"currency": "USD"}}, "custom_data.value", None),
    ("purchase no currency", {"custom_data": {"value": 5}}, "custom_data.currency", 2804010),
    ("value str", {"custom_data": {"value": "5", "currency": "USD"}}, "custom_data.value", None),
    ("value bool", {"custom_data": {"value": True, "currency": "USD"}}, "custom_data.value", None),
    ("currency 2", {"custom_data": {"value": 5, "currency": "US"}}, "custom_data.currency", None),
    (
        "currency sym",
        {"custom_data": {"value": 5, "currency": "U$D"}},
        "custom_data.currency",
        None,
    ),
    (
        "currency uni",
        {"custom_data": {"value": 5, "currency": "ÜSD"}},
        "custom_data.currency",
        None,
    ),
    ("currency int", {"custom_data": {"value": 5, "currency": 840}}, "custom_data.currency", None),
    (
        "currency fake",
        {"custom_data": {"value": 5, "currency": "XYZ"}},
        "custom_data.currency",
        None,
    ),
    (
        "content_ids str",
        {"custom_data": {"value": 5, "currency": "USD", "content_ids": "A"}},
        "custom_data.content_ids",
        None,
    ),
    (
        "content_ids ints",
        {"custom_data": {"value": 5, "currency": "USD", "content_ids": [1, 2]}},
        "custom_data.content_ids",
        None,
    ),
    (
        "contents dict",
        {"custom_data": {"value": 5, "currency": "USD", "contents": {"id": "A"}}},
        "custom_data.contents",
        2804019,
    ),
    (
        "contents entry str",
        {"custom_data": {"value": 5, "currency": "USD", "contents": ["A"]}},
        "custom_data.contents[0]",
        2804019,
    ),
    (
        "contents no id",
        {"custom_data": {"value": 5, "currency": "USD", "contents": [{"quantity": 1}]}},
        "custom_data.contents[0].id",
        2804019,
    ),
    (
        "contents id list",
        {"custom_data": {"value": 5, "currency": "USD", "contents": [{"id": ["A"]}]}},
        "custom_data.contents[0].id",
        2804019,
    ),
    (
        "contents quantity",
        {
            "custom_data": {
                "value": 5,
                "currency": "USD",
                "contents": [{"id": "A", "quantity": 1.5}],
            }
        },
        "custom_data.contents[0].quantity",
        2804019,
    ),
    (
        "contents price",
        {
            "custom_data": {
                "value": 5,
                "currency": "USD",
                "contents": [{"id": "A", "item_price": "1"}],
            }
        },
        "custom_data.contents[0].item_price",
        2804019,
    ),
    (
        "contents delivery",
        {
            "custom_data": {
                "value": 5,
                "currency": "USD",
                "contents": [{"id": "A", "delivery_category": "drone"}],
            }
        },
        "custom_data.contents[0].delivery_category",
        2804019,
    ),
    (
        "num_items float",
        {"custom_data": {"value": 5, "currency": "USD", "num_items": 2.0}},
        "custom_data.num_items",
        None,
    ),
    (
        "predicted_ltv str",
        {"custom_data": {"value": 5, "currency": "USD", "predicted_ltv": "9"}},
        "custom_data.predicted_ltv",
        None,
    ),
    (
        "content_type",
        {"custom_data": {"value": 5, "currency": "USD", "content_type": "products"}},
        "custom_data.content_type",
        None,
    ),
    (
        "delivery_category",
        {"custom_data": {"value": 5, "currency": "USD", "delivery_category": "post"}},
        "custom_data.delivery_category",
        None,
    ),
    (
        "custom key set",
        {"custom_data": {"value": 5, "currency": "USD", "tags": {"a"}}},
        "custom_data.tags",
        None,
    ),
]


@pytest.mark.parametrize(
    ("changes", "field", "subcode"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_rule(changes: dict[str, Any], field: str, subcode: int | None) -> None:
    problems = validate_event(meta_event(**changes), now=NOW)
    matching = [p for p in fatal(problems) if p.field == field]
    assert matching, problems
    assert matching[0].meta_subcode == subcode
    assert matching[0].message


@pytest.mark.parametrize(
    ("path", "custom_data"),
    [
        ("custom_data.value", {"value": float("nan"), "currency": "USD"}),
        ("custom_data.value", {"value": float("-inf"), "currency": "USD"}),
        (
            "custom_data.extra.deep[1]",
            {"value": 1, "currency": "USD", "extra": {"deep": [1, math.inf]}},
        ),
        (
            "custom_data.contents[0].item_price",
            {"value": 1, "currency": "USD", "contents": [{"id": "A", "item_price": float("nan")}]},
        ),
    ],
)
def test_nan_and_infinity_anywhere_are_fatal(path: str, custom_data: dict[str, Any]) -> None:
    problems = validate_event(meta_event(custom_data=custom_data), now=NOW)
    assert path in [p.field for p in fatal(problems)]


@pytest.mark.parametrize(
    ("path", "custom_data"),
    [
        ("custom_data.value", {"value": float("nan"), "currency": "USD"}),
        (
            "custom_data.extra.deep[1]",
            {"value": 1, "currency": "USD", "extra": {"deep": [1, math.inf]}},
        ),
        ("custom_data.ltv", {"value": 1, "currency": "USD", "ltv": Decimal("NaN")}),
    ],
)
def test_build_never_lets_nan_reach_json(path: str, custom_data: dict[str, Any]) -> None:
    result = build(custom_data=custom_data)
    assert result.event is None
    assert path in [p.field for p in fatal(result.problems)]


def test_too_deep_custom_data_is_fatal() -> None:
    deep: Any = 1
    for _ in range(30):
        deep = {"x": deep}
    result = build(custom_data={"value": 1, "currency": "USD", "deep": deep})
    assert result.event is None
    assert "nested" in only_problem(result.problems).message


@pytest.mark.parametrize(
    ("action_source", "age", "expected"),
    [
        ("website", 7 * DAY, False),
        ("website", 7 * DAY + 1, True),
        ("app", 7 * DAY + 1, True),
        ("physical_store", 7 * DAY + 1, False),
        ("physical_store", 62 * DAY, False),
        ("physical_store", 62 * DAY + 1, True),
        ("website", -30, False),
    ],
)
def test_is_too_old(action_source: str, age: int, expected: bool) -> None:
    assert is_too_old(int(NOW) - age, action_source, NOW) is expected


def test_event_just_inside_future_tolerance_is_valid() -> None:
    assert validate_event(meta_event(event_time=int(NOW) + 60), now=NOW) == []


@pytest.mark.parametrize("currency", ["USD", "usd", "EUR", "JPY", "GBP"])
def test_known_currencies_pass(currency: str) -> None:
    event = meta_event(custom_data={"value": 5, "currency": currency})
    assert validate_event(event, now=NOW) == []


def test_build_uppercases_currency() -> None:
    result = build(custom_data={"value": 5, "currency": "usd"})
    assert result.event is not None
    assert result.event.custom_data["currency"] == "USD"


def test_currency_problem_for_unknown_code_on_build() -> None:
    result = build(custom_data={"value": 5, "currency": "xyz"})
    assert result.event is None
    assert only_problem(result.problems).field == "custom_data.currency"


@pytest.mark.parametrize("event_name", ["Lead", "AddToCart", "PageView", "MyEvent"])
def test_value_and_currency_optional_outside_purchase(event_name: str) -> None:
    assert validate_event(meta_event(event_name=event_name, custom_data=None), now=NOW) == []


# user_data match-key strength (META_CAPI_REFERENCE §2, subcode 2804050)
WEAK = [
    {},
    {"client_user_agent": UA},
    {"ct": [H], "country": [H], "st": [H], "zp": [H], "ge": [H], "client_user_agent": UA},
    {"country": [H], "client_user_agent": UA},
    {"db": [H], "client_user_agent": UA},
    {"fn": [H], "ge": [H]},
    {"ln": [H], "ge": [H]},
    {"fn": [H]},
    {"em": [], "client_user_agent": UA},
    {"em": "", "client_user_agent": UA},
]
STRONG = [
    {"em": [H], "client_user_agent": UA},
    {"ph": [H], "client_user_agent": UA},
    {"external_id": [H], "client_user_agent": UA},
    {"client_ip_address": "203.0.113.9", "client_user_agent": UA},
    {"fbp": "fb.1.1700000000000.1", "client_user_agent": UA},
    {"fbc": "fb.1.1700000000000.AbC", "client_user_agent": UA},
    {"fn": [H], "ln": [H], "client_user_agent": UA},
    {"db": [H], "zp": [H], "client_user_agent": UA},
]


@pytest.mark.parametrize("user_data", WEAK)
def test_weak_user_data_is_2804050(user_data: dict[str, Any]) -> None:
    problems = validate_event(meta_event(user_data=user_data, action_source="app"), now=NOW)
    assert [(p.field, p.meta_subcode) for p in fatal(problems)] == [("user_data", 2804050)]


@pytest.mark.parametrize("user_data", STRONG)
def test_enough_user_data_passes(user_data: dict[str, Any]) -> None:
    assert validate_event(meta_event(user_data=user_data), now=NOW) == []


def test_unknown_user_data_key_is_a_warning() -> None:
    user_data = {"em": [H], "client_user_agent": UA, "favourite_colour": "blue"}
    problems = validate_event(meta_event(user_data=user_data), now=NOW)
    # Named by its shape, not its text: a key may be a personal value (issue 10).
    assert [(p.field, p.fatal) for p in problems] == [("user_data[?]", False)]
    assert "unknown key of 16 characters" in problems[0].message
    near = validate_event(meta_event(user_data={"em": [H], "client_user_agnt": UA}), now=NOW)
    assert ("user_data.client_user_agnt", False) in [(p.field, p.fatal) for p in near]


def test_missing_event_id_is_a_warning() -> None:
    problems = validate_event(meta_event(event_id=None), now=NOW)
    assert [(p.field, p.fatal) for p in problems] == [("event_id", False)]


def test_event_over_64kb_is_fatal() -> None:
    big = meta_event(custom_data={"value": 5, "currency": "USD", "blob": "x" * MAX_EVENT_BYTES})
    problem = only_problem(validate_event(big, now=NOW))
    assert problem.field == "event"
    assert str(MAX_EVENT_BYTES) in problem.message


def test_build_refuses_event_over_64kb() -> None:
    result = build(custom_data={"value": 5, "currency": "USD", "note": "é" * 40_000})
    assert result.event is None  # 80,000 bytes in UTF-8
    assert only_problem(result.problems).field == "event"


def test_built_event_carries_its_json_for_the_sender() -> None:
    result = build(custom_data={"value": 5, "currency": "USD"})
    assert result.event is not None
    assert result.payload == encode_json(result.event.to_dict())
    refused = build(custom_data={"value": "five", "currency": "USD"})
    assert refused.event is None
    assert refused.payload is None


def test_event_just_under_64kb_is_accepted() -> None:
    # Close to the limit: the exact size of the encoded event decides.
    result = build(custom_data={"value": 5, "currency": "USD", "note": "x" * 60_000})
    assert result.ok, result.problems
    assert result.event is not None
    assert len(encode_json(result.event.to_dict())) <= MAX_EVENT_BYTES


@pytest.mark.parametrize(
    "kwargs",
    [
        {"event_source_url": "https://shop.example.com/?q=" + "x" * 70_000},
        {"referrer_url": "https://google.com/?q=" + "\x01" * 12_000},  # 6 bytes each
        {
            "hash_external_id": False,
            "user_data": web_user(external_id=[f"{i:04d}" + "x" * 1000 for i in range(70)]),
        },
    ],
)
def test_build_refuses_oversized_event_from_any_part(kwargs: dict[str, Any]) -> None:
    result = build(**kwargs)
    assert result.event is None
    problem = only_problem(result.problems)
    assert problem.field == "event"


class BrokenMapping(dict):  # type: ignore[type-arg]
    def get(self, *args: Any) -> Any:
        raise RuntimeError("broken")


@pytest.mark.parametrize(
    "junk",
    [
        None,
        [],
        "Purchase",
        42,
        {},
        {"event_name": ["Purchase"]},
        {"user_data": "em"},
        {"user_data": {"em": None, "ph": [None, 5], "fbc": {}}},
        {"user_data": {5: "x"}},
        {"custom_data": {"contents": [None, {"id": None}, 5]}},
        {"custom_data": {"value": [], "currency": [], "content_ids": {}}},
        {"custom_data": {1: float("nan")}},
        {"data_processing_options": [None, 5], "data_processing_options_country": "US"},
        {"event_time": "yesterday", "action_source": ["website"]},
        meta_event(custom_data={"contents": [{"id": "A", "quantity": float("nan")}]}),
        BrokenMapping(meta_event()),
    ],
)
def test_validate_never_raises_on_junk(junk: Any) -> None:
    problems = validate_event(junk, now=NOW)
    assert isinstance(problems, list)
    assert fatal(problems)
    assert all(isinstance(p, Problem) for p in problems)


def test_validate_does_not_change_its_input() -> None:
    event = meta_event(custom_data={"value": 5, "currency": "usd", "content_ids": [1]})
    before = copy.deepcopy(event)
    validate_event(event, now=NOW)
    assert event == before


def test_validate_uses_the_clock_when_now_is_not_given() -> None:
    old = meta_event(event_time=1_000_000)  # 1970
    assert only_problem(validate_event(old)).meta_subcode == 2804003


# -- build_event collects every problem, not just the first ---------------------------------


def test_all_problems_are_reported_together() -> None:
    result = build_event(
        "",
        user_data={"client_user_agent": UA},
        custom_data={"value": float("nan"), "currency": "usd!"},
        event_time=int(NOW * 1000),
        now=NOW,
    )
    assert result.event is None
    assert not result.ok
    fields = {p.field for p in fatal(result.problems)}
    assert {
        "event_name",
        "event_time",
        "event_source_url",
        "user_data",
        "custom_data.value",
        "custom_data.currency",
    } <= fields


def test_build_event_does_not_mutate_its_input() -> None:
    custom = copy.deepcopy(GA4_PURCHASE)
    user = web_user(email="john_smith@gmail.com")
    before = (copy.deepcopy(custom), copy.deepcopy(user))
    result = build(custom_data=custom, user_data=user)
    assert result.ok, result.problems
    assert (custom, user) == before


# -- Event.to_dict ----------------------------------------------------------------------------


def test_to_dict_is_exactly_metas_shape() -> None:
    result = build(
        "purchase",
        event_id="e1",
        event_time=int(NOW) - 5,
        referrer_url="https://google.com/",
        opt_out=False,
        custom_data=GA4_PURCHASE,
        user_data=web_user(email="john_smith@gmail.com"),
    )
    assert result.event is not None
    body = result.event.to_dict()
    assert list(body) == [
        "event_name",
        "event_time",
        "event_id",
        "action_source",
        "event_source_url",
        "referrer_url",
        "opt_out",
        "user_data",
        "custom_data",
    ]
    assert body["event_name"] == "Purchase"
    assert body["event_time"] == int(NOW) - 5
    assert body["user_data"] == {
        "client_ip_address": "203.0.113.9",
        "client_user_agent": UA,
        "em": [EMAIL_HASH],
    }
    assert type(body["user_data"]) is dict
    assert type(body["custom_data"]) is dict
    assert body["custom_data"]["order_id"] == "T_12345"
    assert json.loads(encode_json(body)) == body
    assert validate_event(body, now=NOW) == []


def test_to_dict_has_no_none_and_no_empty_custom_data() -> None:
    result = build("PageView", custom_data=None)
    assert result.event is not None
    body = result.event.to_dict()
    assert None not in body.values()
    assert "custom_data" not in body
    assert set(body) == {
        "event_name",
        "event_time",
        "event_id",
        "action_source",
        "event_source_url",
        "user_data",
    }


def test_to_dict_returns_a_fresh_dict() -> None:
    result = build()
    assert result.event is not None
    body = result.event.to_dict()
    body["user_data"]["em"] = "tampered"
    body["custom_data"]["value"] = 0
    assert result.event.to_dict()["user_data"]["em"] == [EMAIL_HASH]
    assert result.event.to_dict()["custom_data"]["value"] == 10


def test_event_is_frozen() -> None:
    event = Event("Lead", 1, "e", "website", {}, {})
    with pytest.raises(AttributeError):
        event.event_name = "Purchase"  # type: ignore[misc]


def test_ldu_and_urls_reach_the_event() -> None:
    built = build_event(
        "Lead",
        user_data={
            "email": "a@example.com",
            "client_ip_address": "203.0.113.7",
            "client_user_agent": "t",
        },
        event_source_url="https://shop.example.com/",
        referrer_url="https://www.google.com/",
        ldu=True,
    )
    assert built.event is not None
    assert built.event.data_processing_options == ("LDU",)
    body = built.event.to_dict()
    assert body["data_processing_options_country"] == 0
    assert body["referrer_url"] == "https://www.google.com/"
    assert body["event_source_url"] == "https://shop.example.com/"
