"""The event model: GA4 mapping, validation against Meta's rules, and Meta's JSON payload (pure).

`build_event` turns what an app hands ``track()`` (Meta or GA4 names, friendly user-data keys,
GA4 ecommerce ``items``) into an `Event` whose `Event.to_dict` is exactly one element of Meta's
``data`` array. `validate_event` checks a Meta-shaped dict against every rule of
META_CAPI_REFERENCE §2, so the ``check`` CLI and the sender reuse the same rules. Nothing here
does I/O; nothing here raises on bad input: it comes back as `Problem` objects.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any

from capi_middleware.errors import Problem
from capi_middleware.normalize import (
    CLEAR_KEYS,
    HASHED_KEYS,
    is_sha256_hex,
    normalize_user_data,
)

__all__ = [
    "ACTION_SOURCES",
    "GA4_EVENT_NAMES",
    "MAX_EVENTS_PER_REQUEST",
    "MAX_EVENT_BYTES",
    "STANDARD_EVENTS",
    "BuildResult",
    "Event",
    "appsecret_proof",
    "build_event",
    "build_request_body",
    "encode_json",
    "is_too_old",
    "map_custom_data",
    "map_event_name",
    "new_event_id",
    "validate_event",
]

STANDARD_EVENTS: frozenset[str] = frozenset(
    {
        "AddPaymentInfo",
        "AddToCart",
        "AddToWishlist",
        "CompleteRegistration",
        "Contact",
        "CustomizeProduct",
        "Donate",
        "FindLocation",
        "InitiateCheckout",
        "Lead",
        "PageView",
        "Purchase",
        "Schedule",
        "Search",
        "StartTrial",
        "SubmitApplication",
        "Subscribe",
        "ViewContent",
    }
)
ACTION_SOURCES: frozenset[str] = frozenset(
    {
        "website",
        "email",
        "app",
        "phone_call",
        "chat",
        "physical_store",
        "system_generated",
        "business_messaging",
        "other",
    }
)
GA4_EVENT_NAMES: Mapping[str, str] = {
    "page_view": "PageView",
    "view_item": "ViewContent",
    "add_to_cart": "AddToCart",
    "add_to_wishlist": "AddToWishlist",
    "begin_checkout": "InitiateCheckout",
    "add_payment_info": "AddPaymentInfo",
    "purchase": "Purchase",
    "generate_lead": "Lead",
    "sign_up": "CompleteRegistration",
    "search": "Search",
}

MAX_EVENTS_PER_REQUEST = 1000
MAX_EVENT_BYTES = 64 * 1024
# The pixel refuses custom event names past 50 characters; the server event must carry the
# same name to deduplicate with it, so the same limit holds here.
MAX_EVENT_NAME_LENGTH = 50
# Meta rejects the whole request when one event is older than this (subcode 2804003).
MAX_AGE_SECONDS = 7 * 86_400
MAX_AGE_PHYSICAL_STORE_SECONDS = 62 * 86_400
# Ours: a clock a minute ahead is tolerated; more is a bug (often milliseconds or a bad zone).
MAX_FUTURE_SECONDS = 60
# Anything above this as Unix seconds is year 33658: it is milliseconds.
_MILLISECONDS_THRESHOLD = 1e12
_MAX_DEPTH = 20

CONTENT_TYPES = frozenset(("product", "product_group"))
DELIVERY_CATEGORIES = frozenset(("in_store", "curbside", "home_delivery"))
LDU_COUNTRIES = frozenset((0, 1))  # 0 = geolocate, 1 = United States
LDU_STATES = frozenset((0, 1000))  # 0 = geolocate, 1000 = California

SUBCODE_TOO_OLD = 2804003
SUBCODE_PURCHASE_CURRENCY = 2804010
SUBCODE_NOT_HASHED = 2804016
SUBCODE_BAD_CONTENTS = 2804019
SUBCODE_TOO_LITTLE_USER_DATA = 2804050

# user_data made only of keys within one of these sets is refused by Meta (subcode 2804050).
_WEAK_USER_DATA: tuple[frozenset[str], ...] = (
    frozenset(("ct", "country", "st", "zp", "ge", "client_user_agent")),
    frozenset(("db", "client_user_agent")),
    frozenset(("fn", "ge")),
    frozenset(("ln", "ge")),
)
_HASHED = frozenset(HASHED_KEYS)
_CLEAR = frozenset(CLEAR_KEYS)

# GA4 item fields -> Meta `contents` fields (META_CAPI_REFERENCE §2).
_GA4_ITEM_FIELDS = (
    ("item_name", "title"),
    ("item_brand", "brand"),
    ("item_category", "category"),
    ("delivery_category", "delivery_category"),
)


def new_event_id() -> str:
    """A fresh event id (uuid4 hex): unique per occurrence, as deduplication needs."""
    # uuid.uuid4().hex, without building a UUID object (a quarter of the cost).
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


def map_event_name(name: str) -> str:
    """GA4 event name -> Meta's standard name (``purchase`` -> ``Purchase``); others unchanged."""
    return GA4_EVENT_NAMES.get(name, name)


@lru_cache(maxsize=1)
def _iso_currencies() -> frozenset[str]:
    import pycountry

    return frozenset(c.alpha_3 for c in pycountry.currencies)


def _is_number(value: object) -> bool:
    # bool is an int to Python, never an amount to Meta.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return _is_int(value)


def _show(value: object) -> str:
    """A short repr of a code-like value (never used for personal data)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One built, validated server event.

    Parameters:
        event_name: Meta's name (standard or custom).
        event_time: Unix seconds.
        event_id: deduplication key, shared with the pixel's ``eventID``.
        action_source: where the conversion happened (``website``, ...).
        user_data: Meta keys; hashed keys hold lists of lowercase SHA-256 hex.
        custom_data: Meta's custom_data fields (GA4 ecommerce already mapped).
        event_source_url: the page's URL (required for ``website``).
        referrer_url: the page's Referer.
        opt_out: True keeps the event out of ads optimization (attribution only).
        data_processing_options: ``("LDU",)`` under Limited Data Use.
        data_processing_options_country: 0 (geolocate) or 1 (US), with LDU.
        data_processing_options_state: 0 (geolocate) or 1000 (California), with LDU.
    """

    event_name: str
    event_time: int
    event_id: str
    action_source: str
    user_data: Mapping[str, Any]
    custom_data: Mapping[str, Any]
    event_source_url: str | None = None
    referrer_url: str | None = None
    opt_out: bool | None = None
    data_processing_options: tuple[str, ...] | None = None
    data_processing_options_country: int | None = None
    data_processing_options_state: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Exactly Meta's JSON shape for one event: no None values, no empty custom_data.

        ``user_data`` and ``custom_data`` are fresh top-level dicts; nested lists are shared.
        """
        out: dict[str, Any] = {
            "event_name": self.event_name,
            "event_time": self.event_time,
            "event_id": self.event_id,
            "action_source": self.action_source,
        }
        if self.event_source_url is not None:
            out["event_source_url"] = self.event_source_url
        if self.referrer_url is not None:
            out["referrer_url"] = self.referrer_url
        if self.opt_out is not None:
            out["opt_out"] = self.opt_out
        if self.data_processing_options is not None:
            out["data_processing_options"] = list(self.data_processing_options)
            if self.data_processing_options_country is not None:
                out["data_processing_options_country"] = self.data_processing_options_country
            if self.data_processing_options_state is not None:
                out["data_processing_options_state"] = self.data_processing_options_state
        out["user_data"] = dict(self.user_data)
        if self.custom_data:
            out["custom_data"] = dict(self.custom_data)
        return out


@dataclass(frozen=True)
class BuildResult:
    """What `build_event` made of its input.

    Parameters:
        event: the event, or None when a fatal problem was found.
        problems: every problem, fatal (event refused) and not (a user-data value dropped).
    """

    event: Event | None
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        """True when an event was built (non-fatal problems may still be listed)."""
        return self.event is not None


# -- custom_data: clean and map GA4 ecommerce -----------------------------------------------


def _clean_json(value: Any, path: str, problems: list[Problem], depth: int = 0) -> Any:
    """Copy ``value`` into plain JSON types; NaN/Infinity and non-JSON values become Problems.

    Decimal (common for money) becomes float; tuples become lists. Returns None for a value
    that was refused (its Problem is recorded).
    """
    if isinstance(value, (str, int)) or value is None:  # bool is an int
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        problems.append(Problem(path, "must be a finite number, not NaN or Infinity"))
        return None
    if isinstance(value, Decimal):
        if value.is_finite():
            return float(value)
        problems.append(Problem(path, "must be a finite number, not NaN or Infinity"))
        return None
    if depth >= _MAX_DEPTH:
        problems.append(Problem(path, f"nested more than {_MAX_DEPTH} levels deep"))
        return None
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(Problem(path, "object keys must be strings"))
                continue
            out[key] = _clean_json(item, f"{path}.{key}", problems, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [
            _clean_json(item, f"{path}[{i}]", problems, depth + 1) for i, item in enumerate(value)
        ]
    problems.append(
        Problem(path, f"a {type(value).__name__} cannot be sent as JSON; use str, number or list")
    )
    return None


def _check_json_values(value: Any, path: str, problems: list[Problem], depth: int = 0) -> None:
    """Like `_clean_json` but only reports (no copy): for dicts that are already Meta-shaped."""
    if isinstance(value, (str, bool, int)) or value is None:
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            problems.append(Problem(path, "must be a finite number, not NaN or Infinity"))
        return
    if depth >= _MAX_DEPTH:
        problems.append(Problem(path, f"nested more than {_MAX_DEPTH} levels deep"))
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(Problem(path, "object keys must be strings"))
            else:
                _check_json_values(item, f"{path}.{key}", problems, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_values(item, f"{path}[{i}]", problems, depth + 1)
    else:
        problems.append(
            Problem(path, f"a {type(value).__name__} cannot be sent as JSON; use str, number, list")
        )


def _as_id(value: object) -> str | None:
    """A content id as Meta wants it: a non-empty string (ints are coerced)."""
    if _is_int(value):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def _map_items(items: object, out: dict[str, Any], problems: list[Problem]) -> None:
    """GA4 ``items[]`` -> ``contents``, ``content_ids``, ``num_items``, ``content_type``."""
    if not isinstance(items, list):
        problems.append(Problem("custom_data.items", "must be a list of item objects"))
        return
    contents: list[dict[str, Any]] = []
    ids: list[str] = []
    total = 0
    for i, item in enumerate(items):
        path = f"custom_data.items[{i}]"
        if not isinstance(item, dict):
            problems.append(Problem(path, "must be an object", SUBCODE_BAD_CONTENTS))
            continue
        item_id = _as_id(item.get("item_id", item.get("id")))
        if item_id is None:
            # Since April 2026 Meta refuses `contents` entries without `id`: an item without
            # an id is an error here, never an entry sent without one.
            problems.append(
                Problem(f"{path}.item_id", "is required (a non-empty string)", SUBCODE_BAD_CONTENTS)
            )
            continue
        # GA4: "If not set, quantity is set to 1."
        quantity = item.get("quantity", 1)
        if isinstance(quantity, float) and quantity.is_integer():
            quantity = int(quantity)
        if not _is_int(quantity):
            problems.append(Problem(f"{path}.quantity", "must be an integer"))
            continue
        entry: dict[str, Any] = {"id": item_id, "quantity": quantity}
        price = item.get("price")
        if price is not None:
            if not _is_finite_number(price):
                problems.append(Problem(f"{path}.price", "must be a finite number"))
                continue
            entry["item_price"] = price
        for ga4_key, meta_key in _GA4_ITEM_FIELDS:
            field_value = item.get(ga4_key)
            if field_value is not None:
                entry[meta_key] = field_value
        contents.append(entry)
        if item_id not in ids:
            ids.append(item_id)
        total += quantity
    if contents:
        out["contents"] = contents
        out.setdefault("content_ids", ids)
        out.setdefault("num_items", total)
        out.setdefault("content_type", "product")


def map_custom_data(
    custom_data: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], list[Problem]]:
    """GA4 ecommerce or Meta fields -> Meta's ``custom_data``, and the problems found.

    ``transaction_id`` -> ``order_id``, ``search_term`` -> ``search_string``, ``items[]`` ->
    ``contents[]`` / ``content_ids`` / ``num_items`` / ``content_type``; ``currency`` is
    uppercased, ids become strings, None values are left out, Decimal becomes float. The
    pixel (`capi_middleware.pixel`) uses the same mapping, so page and server agree.
    """
    problems: list[Problem] = []
    if custom_data is None:
        return {}, problems
    if not isinstance(custom_data, Mapping):
        problems.append(Problem("custom_data", "must be an object (a mapping of fields)"))
        return {}, problems
    out: dict[str, Any] = {}
    for key, raw in custom_data.items():
        if raw is None:
            continue
        if not isinstance(key, str):
            problems.append(Problem("custom_data", "field names must be strings"))
            continue
        out[key] = _clean_json(raw, f"custom_data.{key}", problems)

    if "transaction_id" in out:
        transaction_id = out.pop("transaction_id")
        out.setdefault("order_id", transaction_id)
    if "search_term" in out:
        search_term = out.pop("search_term")
        out.setdefault("search_string", search_term)
    if "items" in out:
        items = out.pop("items")
        if "contents" in out:
            problems.append(
                Problem("custom_data.items", "ignored: contents was given too", fatal=False)
            )
        else:
            _map_items(items, out, problems)

    currency = out.get("currency")
    if isinstance(currency, str):
        out["currency"] = currency.strip().upper()
    order_id = out.get("order_id")
    if _is_int(order_id):
        out["order_id"] = str(order_id)
    content_ids = out.get("content_ids")
    if isinstance(content_ids, (str, int)) and not isinstance(content_ids, bool):
        content_ids = [content_ids]
    if isinstance(content_ids, list):
        out["content_ids"] = [str(c) if _is_int(c) else c for c in content_ids]
    contents = out.get("contents")
    if isinstance(contents, list):
        for entry in contents:
            if isinstance(entry, dict) and _is_int(entry.get("id")):
                entry["id"] = str(entry["id"])
    return out, problems


# -- event_time -----------------------------------------------------------------------------


def _coerce_event_time(value: object, now: float) -> tuple[int | None, Problem | None]:
    if value is None:
        return int(now), None
    if isinstance(value, datetime):
        # A naive datetime is taken as UTC: servers should not guess the host's zone.
        aware = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
        return int(aware.timestamp()), None
    if not _is_number(value) or not math.isfinite(value):  # type: ignore[arg-type]
        return None, Problem("event_time", "must be Unix seconds (int or float) or a datetime")
    assert isinstance(value, (int, float))
    if value > _MILLISECONDS_THRESHOLD:
        return None, Problem(
            "event_time", "looks like milliseconds: Meta wants Unix seconds, not milliseconds"
        )
    return int(value), None


# -- validation -----------------------------------------------------------------------------


def is_too_old(event_time: int, action_source: str, now: float) -> bool:
    """True when Meta would refuse the event for age: 7 days, 62 for ``physical_store``."""
    limit = MAX_AGE_PHYSICAL_STORE_SECONDS if action_source == "physical_store" else MAX_AGE_SECONDS
    return now - event_time > limit


def _check_event_name(event: Mapping[str, Any], problems: list[Problem]) -> str | None:
    name = event.get("event_name")
    if not isinstance(name, str):
        problems.append(Problem("event_name", "is required (a string)"))
        return None
    if not name.strip():
        problems.append(Problem("event_name", "must not be empty"))
        return None
    if len(name) > MAX_EVENT_NAME_LENGTH:
        problems.append(
            Problem("event_name", f"must be at most {MAX_EVENT_NAME_LENGTH} characters")
        )
    return name


def _check_event_time(
    event: Mapping[str, Any], action_source: str, now: float, problems: list[Problem]
) -> None:
    event_time = event.get("event_time")
    if not _is_int(event_time):
        problems.append(Problem("event_time", "is required: an integer of Unix seconds"))
        return
    assert isinstance(event_time, int)
    if event_time > _MILLISECONDS_THRESHOLD:
        problems.append(
            Problem("event_time", "looks like milliseconds: Meta wants seconds, not milliseconds")
        )
    elif event_time < 0:
        problems.append(Problem("event_time", "must not be negative"))
    elif is_too_old(event_time, action_source, now):
        days = 62 if action_source == "physical_store" else 7
        problems.append(
            Problem(
                "event_time",
                f"is more than {days} days old; Meta refuses the whole request",
                SUBCODE_TOO_OLD,
            )
        )
    elif event_time > now + MAX_FUTURE_SECONDS:
        problems.append(
            Problem("event_time", f"is more than {MAX_FUTURE_SECONDS} seconds in the future")
        )


def _check_top_level(event: Mapping[str, Any], action_source: str, problems: list[Problem]) -> None:
    event_id = event.get("event_id")
    if event_id is None:
        problems.append(
            Problem("event_id", "missing: the pixel's copy cannot be deduplicated", fatal=False)
        )
    elif not isinstance(event_id, str) or not event_id.strip():
        problems.append(Problem("event_id", "must be a non-empty string"))

    url = event.get("event_source_url")
    if url is None:
        if action_source == "website":
            problems.append(Problem("event_source_url", "is required for website events"))
    elif not isinstance(url, str) or not url.startswith(("http://", "https://")):
        problems.append(Problem("event_source_url", "must be the page's full http(s) URL"))
    referrer = event.get("referrer_url")
    if referrer is not None and not isinstance(referrer, str):
        problems.append(Problem("referrer_url", "must be a string"))
    opt_out = event.get("opt_out")
    if opt_out is not None and not isinstance(opt_out, bool):
        problems.append(Problem("opt_out", "must be true or false"))

    options = event.get("data_processing_options")
    if options is not None and (not isinstance(options, list) or any(o != "LDU" for o in options)):
        problems.append(Problem("data_processing_options", 'must be [] or ["LDU"]'))
    for key, allowed in (
        ("data_processing_options_country", LDU_COUNTRIES),
        ("data_processing_options_state", LDU_STATES),
    ):
        value = event.get(key)
        if value is not None and (not _is_int(value) or value not in allowed):
            problems.append(Problem(key, f"must be one of {sorted(allowed)}"))


def _present(value: object) -> bool:
    if isinstance(value, list):
        return any(v not in (None, "") for v in value)
    return value not in (None, "")


def _check_user_data(event: Mapping[str, Any], action_source: str, problems: list[Problem]) -> None:
    user_data = event.get("user_data")
    if user_data is None:
        problems.append(
            Problem(
                "user_data", "is required: at least one match key", SUBCODE_TOO_LITTLE_USER_DATA
            )
        )
        return
    if not isinstance(user_data, Mapping):
        problems.append(Problem("user_data", "must be an object"))
        return
    keys: set[str] = set()
    for key, value in user_data.items():
        path = f"user_data.{key}"
        if key in _HASHED:
            values = value if isinstance(value, list) else [value]
            for i, item in enumerate(values):
                if item is None or item == "":
                    continue  # absent, not unhashed
                if not isinstance(item, str) or not is_sha256_hex(item):
                    where = f"{path}[{i}]" if isinstance(value, list) else path
                    # Meta's answer to a value sent unhashed (never echo the value itself).
                    problems.append(
                        Problem(where, "must be a SHA-256 hex digest", SUBCODE_NOT_HASHED)
                    )
        elif key in _CLEAR:
            if not (isinstance(value, str) or _is_int(value)):
                problems.append(Problem(path, "must be a string"))
        else:
            problems.append(
                Problem(path, "is not a user_data key Meta knows; it is ignored", fatal=False)
            )
            continue
        if _present(value):
            keys.add(key)
    _check_match_keys(keys, action_source, problems)


def _check_match_keys(keys: set[str], action_source: str, problems: list[Problem]) -> None:
    """Enough customer information to match (subcode 2804050), and a UA for website events."""
    if not keys or any(keys <= weak for weak in _WEAK_USER_DATA):
        problems.append(
            Problem(
                "user_data",
                "too little customer information to match: add email, phone, external_id, "
                "client IP with user agent, fbp or fbc",
                SUBCODE_TOO_LITTLE_USER_DATA,
            )
        )
    if action_source == "website" and "client_user_agent" not in keys:
        problems.append(Problem("user_data.client_user_agent", "is required for website events"))


def _check_contents(contents: object, problems: list[Problem]) -> None:
    if not isinstance(contents, list):
        problems.append(
            Problem("custom_data.contents", "must be a list of objects", SUBCODE_BAD_CONTENTS)
        )
        return
    for i, entry in enumerate(contents):
        path = f"custom_data.contents[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(Problem(path, "must be an object", SUBCODE_BAD_CONTENTS))
            continue
        entry_id = entry.get("id")
        if entry_id is None or (isinstance(entry_id, str) and not entry_id.strip()):
            problems.append(
                Problem(f"{path}.id", "is required in every contents entry", SUBCODE_BAD_CONTENTS)
            )
        elif not (isinstance(entry_id, str) or _is_int(entry_id)):
            problems.append(Problem(f"{path}.id", "must be a string", SUBCODE_BAD_CONTENTS))
        quantity = entry.get("quantity")
        if quantity is not None and not _is_int(quantity):
            problems.append(Problem(f"{path}.quantity", "must be an integer", SUBCODE_BAD_CONTENTS))
        price = entry.get("item_price")
        if price is not None and not _is_finite_number(price):
            problems.append(
                Problem(f"{path}.item_price", "must be a finite number", SUBCODE_BAD_CONTENTS)
            )
        category = entry.get("delivery_category")
        if category is not None and category not in DELIVERY_CATEGORIES:
            problems.append(
                Problem(
                    f"{path}.delivery_category",
                    f"must be one of {sorted(DELIVERY_CATEGORIES)}",
                    SUBCODE_BAD_CONTENTS,
                )
            )


def _check_currency(currency: object, problems: list[Problem]) -> None:
    if (
        not isinstance(currency, str)
        or len(currency) != 3
        or not currency.isascii()
        or not currency.isalpha()
    ):
        problems.append(
            Problem("custom_data.currency", "must be a 3-letter ISO 4217 code such as 'USD'")
        )
    elif currency.upper() not in _iso_currencies():
        problems.append(
            Problem("custom_data.currency", f"{_show(currency)} is not an ISO 4217 currency")
        )


def _check_custom_data(
    event: Mapping[str, Any], event_name: str | None, problems: list[Problem], *, walk: bool = True
) -> None:
    custom_data = event.get("custom_data")
    if custom_data is None:
        custom_data = {}
    elif not isinstance(custom_data, Mapping):
        problems.append(Problem("custom_data", "must be an object"))
        return
    # NaN / Infinity / non-JSON values anywhere: json with allow_nan=False would refuse the
    # batch, and Meta refuses NaN. (`map_custom_data` output was already cleaned: walk=False.)
    for key, item in custom_data.items() if walk else ():
        if not isinstance(key, str):
            problems.append(Problem("custom_data", "field names must be strings"))
        else:
            _check_json_values(item, f"custom_data.{key}", problems)

    value = custom_data.get("value")
    currency = custom_data.get("currency")
    if value is not None and not _is_finite_number(value):
        problems.append(Problem("custom_data.value", "must be a finite number"))
    if currency is not None:
        _check_currency(currency, problems)
    if event_name == "Purchase":
        if value is None:
            problems.append(Problem("custom_data.value", "is required on Purchase"))
        if currency is None:
            problems.append(
                Problem(
                    "custom_data.currency",
                    "is required with value on Purchase",
                    SUBCODE_PURCHASE_CURRENCY,
                )
            )
    if "contents" in custom_data:
        _check_contents(custom_data["contents"], problems)
    content_ids = custom_data.get("content_ids")
    if content_ids is not None and (
        not isinstance(content_ids, list) or not all(isinstance(c, str) for c in content_ids)
    ):
        problems.append(Problem("custom_data.content_ids", "must be a list of strings"))
    num_items = custom_data.get("num_items")
    if num_items is not None and not _is_int(num_items):
        problems.append(Problem("custom_data.num_items", "must be an integer"))
    predicted_ltv = custom_data.get("predicted_ltv")
    if predicted_ltv is not None and not _is_finite_number(predicted_ltv):
        problems.append(Problem("custom_data.predicted_ltv", "must be a finite number"))
    content_type = custom_data.get("content_type")
    if content_type is not None and content_type not in CONTENT_TYPES:
        problems.append(
            Problem("custom_data.content_type", f"must be one of {sorted(CONTENT_TYPES)}")
        )
    delivery = custom_data.get("delivery_category")
    if delivery is not None and delivery not in DELIVERY_CATEGORIES:
        problems.append(
            Problem(
                "custom_data.delivery_category", f"must be one of {sorted(DELIVERY_CATEGORIES)}"
            )
        )


def validate_event(event: Mapping[str, Any], *, now: float | None = None) -> list[Problem]:
    """Every rule of META_CAPI_REFERENCE §2 on a Meta-shaped event dict (user_data hashed).

    Returns all problems found (fatal and not); never raises, whatever ``event`` is. Used by
    `build_event`, the ``check`` CLI and the sender's "too old at send time" test.
    """
    if not isinstance(event, Mapping):
        return [Problem("event", "must be an object")]
    return _validate(event, time.time() if now is None else now, built=False)


def _validate(event: Mapping[str, Any], now: float, *, built: bool) -> list[Problem]:
    """The rules; ``built=True`` trusts what `build_event` itself produced (hashes from
    normalize, custom_data cleaned by `map_custom_data`), so the request path does not check
    the same values twice."""
    problems: list[Problem] = []
    try:
        name = _check_event_name(event, problems)
        action_source = event.get("action_source")
        if not isinstance(action_source, str) or action_source not in ACTION_SOURCES:
            problems.append(
                Problem("action_source", f"must be one of {', '.join(sorted(ACTION_SOURCES))}")
            )
            action_source = ""
        _check_event_time(event, action_source, now, problems)
        _check_top_level(event, action_source, problems)
        if built:
            # normalize_user_data emits Meta keys only, hashed or stripped, never empty.
            _check_match_keys(set(event["user_data"]), action_source, problems)
        else:
            _check_user_data(event, action_source, problems)
        _check_custom_data(event, name, problems, walk=not built)
        if not any(p.fatal for p in problems):
            if built and _built_size_bound(event) <= MAX_EVENT_BYTES:
                return problems  # the common case: far below the limit, no need to encode
            size = len(encode_json(event))
            if size > MAX_EVENT_BYTES:
                problems.append(
                    Problem("event", f"is {size} bytes as JSON; Meta's limit is {MAX_EVENT_BYTES}")
                )
    except Exception as exc:  # junk we did not foresee (a broken Mapping): report, never raise
        problems.append(Problem("event", f"could not be validated ({type(exc).__name__})"))
    return problems


# One character costs at most 6 bytes of our JSON (a \\uXXXX escape; UTF-8 needs at most 4).
_MAX_BYTES_PER_CHAR = 6
_BOUND_OVERHEAD = 1024  # every key name, quote, comma and number of a built event, generously
_BOUNDED_STRING_FIELDS = ("event_name", "event_id", "event_source_url", "referrer_url")


def _built_size_bound(event: Mapping[str, Any]) -> int:
    """An upper bound of a built event's JSON size, cheaper than encoding it all.

    Built user_data holds only strings and lists of strings (normalize's contract): count
    their characters. custom_data, shaped freely by the app, is encoded (it is usually small).
    Returns a number over the limit when unsure, so the caller encodes for the exact size.
    """
    chars = 0
    for value in event["user_data"].values():
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, list):
            for item in value:
                chars += len(item) + 3 if isinstance(item, str) else MAX_EVENT_BYTES
        else:
            return MAX_EVENT_BYTES + 1
    for key in _BOUNDED_STRING_FIELDS:
        value = event.get(key)
        if isinstance(value, str):
            chars += len(value)
    total = _BOUND_OVERHEAD + _MAX_BYTES_PER_CHAR * chars
    custom_data = event.get("custom_data")
    if custom_data and total <= MAX_EVENT_BYTES:
        total += _flat_size_bound(custom_data)
    return total


def _flat_size_bound(custom_data: Mapping[str, Any]) -> int:
    """Bound a flat custom_data (value, currency, ...) by counting; encode anything nested."""
    chars = 0
    for key, value in custom_data.items():
        if isinstance(value, str):
            chars += len(key) + len(value)
        elif isinstance(value, (int, float)) or value is None:
            chars += len(key) + 8  # 8 chars = 48 bytes: more than any number takes (24)
        else:
            return len(encode_json(custom_data))
    return _MAX_BYTES_PER_CHAR * chars + 4 * len(custom_data) + 2


# -- building -------------------------------------------------------------------------------


def build_event(
    event_name: str,
    *,
    user_data: Mapping[str, Any] | None = None,
    custom_data: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    event_time: int | float | datetime | None = None,
    action_source: str | None = None,
    event_source_url: str | None = None,
    referrer_url: str | None = None,
    opt_out: bool | None = None,
    ldu: bool = False,
    ldu_country: int = 0,
    ldu_state: int = 0,
    default_country: str | None = None,
    hash_external_id: bool = True,
    now: float | None = None,
) -> BuildResult:
    """Build one server event: map GA4 names and ecommerce, normalize + hash user data, validate.

    ``user_data`` may mix friendly names (email, phone, ...), Meta keys and clear keys
    (client_ip_address, fbc, ...). ``custom_data`` may be GA4 ecommerce (items,
    transaction_id, search_term) or Meta's fields. Never raises on bad input: the result
    lists every problem, and ``event`` is None when one of them is fatal.
    """
    current = time.time() if now is None else now
    problems: list[Problem] = []

    name = map_event_name(event_name.strip()) if isinstance(event_name, str) else event_name

    seconds, time_problem = _coerce_event_time(event_time, current)
    if time_problem is not None:
        problems.append(time_problem)

    if event_id is None:
        event_id = new_event_id()
    elif _is_int(event_id):
        event_id = str(event_id)

    source = "website" if action_source is None else action_source

    mapped_custom, custom_problems = map_custom_data(custom_data)
    problems.extend(custom_problems)

    hashed: dict[str, Any] = {}
    if user_data is not None and not isinstance(user_data, Mapping):
        problems.append(Problem("user_data", "must be a mapping of keys to values"))
    elif user_data:
        try:
            normalized = normalize_user_data(
                user_data, default_country=default_country, hash_external_id=hash_external_id
            )
        except Exception as exc:  # our own failure must not reach the host app's request
            problems.append(Problem("user_data", f"could not be normalized ({type(exc).__name__})"))
        else:
            hashed = normalized.data
            problems.extend(normalized.problems)

    payload: dict[str, Any] = {
        "event_name": name,
        "event_time": seconds,
        "event_id": event_id,
        "action_source": source,
        "user_data": hashed,
        "custom_data": mapped_custom,
    }
    if event_source_url is not None:
        payload["event_source_url"] = event_source_url
    if referrer_url is not None:
        payload["referrer_url"] = referrer_url
    if opt_out is not None:
        payload["opt_out"] = opt_out
    if ldu:
        payload["data_processing_options"] = ["LDU"]
        payload["data_processing_options_country"] = ldu_country
        payload["data_processing_options_state"] = ldu_state

    for problem in _validate(payload, current, built=True):
        # event_time problems from coercion are already listed with a better message.
        if time_problem is not None and problem.field == "event_time":
            continue
        problems.append(problem)

    if any(p.fatal for p in problems):
        return BuildResult(event=None, problems=tuple(problems))
    event = Event(
        event_name=name,
        event_time=seconds,  # type: ignore[arg-type]  # validated: an int
        event_id=event_id,
        action_source=source,
        user_data=hashed,
        custom_data=mapped_custom,
        event_source_url=event_source_url,
        referrer_url=referrer_url,
        opt_out=opt_out,
        data_processing_options=("LDU",) if ldu else None,
        data_processing_options_country=ldu_country if ldu else None,
        data_processing_options_state=ldu_state if ldu else None,
    )
    return BuildResult(event=event, problems=tuple(problems))


# -- the request ----------------------------------------------------------------------------


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


def encode_json(obj: object) -> bytes:
    """Compact UTF-8 JSON; NaN and Infinity raise ValueError (Meta refuses them)."""
    return _ENCODER.encode(obj).encode("utf-8")
