"""Meta's rules for one event (META_CAPI_REFERENCE §2), checked on a Meta-shaped dict (pure).

`validate_event` reports every broken rule as a `Problem` (with Meta's subcode where Meta has
one) and never raises; `build_event`, the ``check`` CLI and the sender share these rules.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from capi_middleware.errors import Problem, unknown_key_field
from capi_middleware.rules.request_body import encode_json
from capi_middleware.rules.user_fields import is_sha256_hex
from capi_middleware.rules.user_keys import CLEAR_KEYS, HASHED_KEYS

__all__ = [
    "ACTION_SOURCES",
    "CONTENT_TYPES",
    "DELIVERY_CATEGORIES",
    "LDU_COUNTRIES",
    "LDU_STATES",
    "MAX_AGE_PHYSICAL_STORE_SECONDS",
    "MAX_AGE_SECONDS",
    "MAX_EVENT_BYTES",
    "MAX_EVENT_NAME_LENGTH",
    "MAX_FUTURE_SECONDS",
    "SUBCODE_BAD_CONTENTS",
    "SUBCODE_NOT_HASHED",
    "SUBCODE_PURCHASE_CURRENCY",
    "SUBCODE_TOO_LITTLE_USER_DATA",
    "SUBCODE_TOO_OLD",
    "is_too_old",
    "size_problem",
    "validate_event",
]

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
MILLISECONDS_THRESHOLD = 1e12
MAX_DEPTH = 20  # custom_data nesting; custom_data._clean_json holds to it too

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


@lru_cache(maxsize=1)
def _iso_currencies() -> frozenset[str]:
    import pycountry

    return frozenset(c.alpha_3 for c in pycountry.currencies)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return is_int(value)


def _show(value: object) -> str:
    """A short repr of a code-like value (never used for personal data)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_json_values(value: Any, path: str, problems: list[Problem], depth: int = 0) -> None:
    """Like `custom_data._clean_json` but only reports (no copy): for dicts already Meta-shaped."""
    if isinstance(value, (str, bool, int)) or value is None:
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            problems.append(Problem(path, "must be a finite number, not NaN or Infinity"))
        return
    if depth >= MAX_DEPTH:
        problems.append(Problem(path, f"nested more than {MAX_DEPTH} levels deep"))
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
    if not is_int(event_time):
        problems.append(Problem("event_time", "is required: an integer of Unix seconds"))
        return
    assert isinstance(event_time, int)
    if event_time > MILLISECONDS_THRESHOLD:
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


# A newcomer's first event built outside a request meets this: say which field decides it.
_WEBSITE_EVENTS = (
    "website events (action_source defaults to 'website'; an event that did not happen on a web "
    "page sets action_source, e.g. 'system_generated', 'email', 'app' or 'physical_store')"
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
            problems.append(Problem("event_source_url", f"is required for {_WEBSITE_EVENTS}"))
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
        if value is not None and (not is_int(value) or value not in allowed):
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
            if not (isinstance(value, str) or is_int(value)):
                problems.append(Problem(path, "must be a string"))
        else:
            # Named by its shape unless a near miss: a key may be a personal value (issue 10).
            field, what, hint = unknown_key_field("user_data", key, sorted(_HASHED | _CLEAR))
            said = f"{what}, Meta ignores it" + (f"; {hint}" if hint else "")
            problems.append(Problem(field, said, fatal=False))
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
        problems.append(
            Problem("user_data.client_user_agent", f"is required for {_WEBSITE_EVENTS}")
        )


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
        elif not (isinstance(entry_id, str) or is_int(entry_id)):
            problems.append(Problem(f"{path}.id", "must be a string", SUBCODE_BAD_CONTENTS))
        quantity = entry.get("quantity")
        if quantity is not None and not is_int(quantity):
            problems.append(Problem(f"{path}.quantity", "must be an integer", SUBCODE_BAD_CONTENTS))
        price = entry.get("item_price")
        if price is not None and not is_finite_number(price):
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
    if value is not None and not is_finite_number(value):
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
    if num_items is not None and not is_int(num_items):
        problems.append(Problem("custom_data.num_items", "must be an integer"))
    predicted_ltv = custom_data.get("predicted_ltv")
    if predicted_ltv is not None and not is_finite_number(predicted_ltv):
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
    return check_event_rules(event, time.time() if now is None else now, built=False)


def check_event_rules(event: Mapping[str, Any], now: float, *, built: bool) -> list[Problem]:
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
        if not built and not any(p.fatal for p in problems):
            # build_event checks the size of the bytes it encodes for sending (size_problem).
            problem = size_problem(len(encode_json(event)))
            if problem is not None:
                problems.append(problem)
    except Exception as exc:  # junk we did not foresee (a broken Mapping): report, never raise
        problems.append(Problem("event", f"could not be validated ({type(exc).__name__})"))
    return problems


def size_problem(size: int) -> Problem | None:
    """The fatal problem of an event whose JSON is ``size`` bytes, None within Meta's limit."""
    if size <= MAX_EVENT_BYTES:
        return None
    return Problem("event", f"is {size} bytes as JSON; Meta's limit is {MAX_EVENT_BYTES}")
