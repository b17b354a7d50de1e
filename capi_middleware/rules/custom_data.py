"""custom_data as Meta wants it: app values cleaned to plain JSON, GA4 ecommerce mapped (pure).

`map_custom_data` is shared by `build_event` and the pixel snippet (`capi_middleware.rules.pixel`),
so the page's event and the server's carry the same custom_data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from capi_middleware.errors import Problem
from capi_middleware.rules.validation import (
    MAX_DEPTH,
    SUBCODE_BAD_CONTENTS,
    is_finite_number,
    is_int,
)

__all__ = ["map_custom_data"]

# GA4 item fields -> Meta `contents` fields (META_CAPI_REFERENCE §2).
_GA4_ITEM_FIELDS = (
    ("item_name", "title"),
    ("item_brand", "brand"),
    ("item_category", "category"),
    ("delivery_category", "delivery_category"),
)


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
    if depth >= MAX_DEPTH:
        problems.append(Problem(path, f"nested more than {MAX_DEPTH} levels deep"))
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


def _as_id(value: object) -> str | None:
    """A content id as Meta wants it: a non-empty string (ints are coerced)."""
    if is_int(value):
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
        if not is_int(quantity):
            problems.append(Problem(f"{path}.quantity", "must be an integer"))
            continue
        entry: dict[str, Any] = {"id": item_id, "quantity": quantity}
        price = item.get("price")
        if price is not None:
            if not is_finite_number(price):
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
    pixel (`capi_middleware.rules.pixel`) uses the same mapping, so page and server agree.
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
    if is_int(order_id):
        out["order_id"] = str(order_id)
    content_ids = out.get("content_ids")
    if isinstance(content_ids, (str, int)) and not isinstance(content_ids, bool):
        content_ids = [content_ids]
    if isinstance(content_ids, list):
        out["content_ids"] = [str(c) if is_int(c) else c for c in content_ids]
    contents = out.get("contents")
    if isinstance(contents, list):
        for entry in contents:
            if isinstance(entry, dict) and is_int(entry.get("id")):
                entry["id"] = str(entry["id"])
    return out, problems
