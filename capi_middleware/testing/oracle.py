"""Meta's rules for a Conversions API request, as the fake Graph API applies them.

Written from Meta's documentation (../shared/META_CAPI_REFERENCE.md), independently of
`capi_middleware.rules.events`, so a test against `FakeGraphAPI` checks our event building
instead of agreeing with it by construction: the token (code 190), ``appsecret_proof``, the
pixel (code 100, subcode 33), the batch size, and each event's required fields, age, hashing,
``fbc`` format, Purchase currency and ``contents`` ids (code 100 with Meta's subcodes). The first
failure rejects the whole request, as Meta does.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

__all__ = [
    "EVENTS_PATH",
    "MAX_EVENTS",
    "Rejected",
    "accept_events",
    "bad_event",
    "check_event",
    "decode_events",
    "graph_error",
    "parse_body",
    "trace_id",
]

EVENTS_PATH = re.compile(r"^/(v[0-9]+\.[0-9]+)/([0-9]+)/events/?$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
# fb.{subdomain_index}.{creation_time_ms}.{click id}[.{8 base64url chars or a 2-char token}]
_FBC = re.compile(r"^fb\.[0-9]+\.[0-9]{10,16}\.[A-Za-z0-9_~\-]+(\.[A-Za-z0-9_-]{2,8})?$")
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")
_MATCH_KEYS_HASHED = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country")
_ACTION_SOURCES = frozenset(
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
_SEVEN_DAYS = 7 * 86_400
_SIXTY_TWO_DAYS = 62 * 86_400
MAX_EVENTS = 1000


class Rejected(Exception):
    """Meta's refusal of a whole request: the HTTP status and the Graph error body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", {}).get("message", ""))
        self.status = status
        self.body = body


def trace_id() -> str:
    """A random ``fbtrace_id``, shaped like Meta's."""
    return "A" + secrets.token_urlsafe(15)


def graph_error(
    code: int,
    message: str,
    *,
    subcode: int | None = None,
    type_: str = "OAuthException",
    title: str | None = None,
    user_msg: str | None = None,
    is_transient: bool = False,
) -> dict[str, Any]:
    """A Graph error body, shaped like Meta's."""
    err: dict[str, Any] = {
        "message": message,
        "type": type_,
        "code": code,
        "is_transient": is_transient,
        "fbtrace_id": trace_id(),
    }
    if subcode is not None:
        err["error_subcode"] = subcode
    if title is not None:
        err["error_user_title"] = title
    if user_msg is not None:
        err["error_user_msg"] = user_msg
    return {"error": err}


def decode_events(data: list[Any]) -> list[Any]:
    """The ``data`` array's events, each JSON string decoded."""
    # Graph also accepts each event as a JSON string (Meta's Python SDK sends them that way).
    out = []
    for item in data:
        if isinstance(item, str):
            with contextlib.suppress(ValueError):
                item = json.loads(item)
        out.append(item)
    return out


def bad_event(index: int, subcode: int | None, title: str, detail: str) -> Rejected:
    """The rejection of a request for its event at ``index`` (code 100, Meta's ``subcode``)."""
    return Rejected(
        400,
        graph_error(
            100,
            "Invalid parameter",
            subcode=subcode,
            title=title,
            user_msg=f"data[{index}]: {detail}",
        ),
    )


def check_event(index: int, event: Any, now: float) -> None:
    """Meta's per-event checks (a first failure rejects the whole request)."""
    if not isinstance(event, dict):
        raise bad_event(index, None, "Invalid event", "each event must be a JSON object")
    name = event.get("event_name")
    if not isinstance(name, str) or not name.strip():
        raise bad_event(index, None, "Missing event_name", "The parameter event_name is required")
    event_time = event.get("event_time")
    if isinstance(event_time, bool) or not isinstance(event_time, int):
        raise bad_event(index, None, "Missing event_time", "event_time must be Unix seconds")
    action_source = event.get("action_source")
    if action_source not in _ACTION_SOURCES:
        raise bad_event(index, None, "Invalid action_source", "action_source is required")
    window = _SIXTY_TWO_DAYS if action_source == "physical_store" else _SEVEN_DAYS
    if now - event_time > window:
        raise bad_event(
            index, 2804003, "Event Timestamp Too Old", "event_time is too far in the past"
        )
    event_id = event.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        # Meta makes event_id optional; this project always sends one (dedup with the pixel).
        raise bad_event(index, None, "Missing event_id", "event_id is required by this project")
    user_data = event.get("user_data")
    if not isinstance(user_data, dict) or not user_data:
        raise bad_event(
            index, 2804050, "Too little customer information", "user_data needs match keys"
        )
    for key in _MATCH_KEYS_HASHED:
        if key not in user_data:
            continue
        values = user_data[key]
        values = values if isinstance(values, list) else [values]
        for value in values:
            if not isinstance(value, str) or not _HEX64.match(value):
                raise bad_event(
                    index, 2804016, "User Parameter Not Hashed", f"user_data.{key} must be SHA-256"
                )
    fbc = user_data.get("fbc")
    if fbc is not None and (not isinstance(fbc, str) or not _FBC.match(fbc)):
        raise bad_event(index, 2804001, "Invalid fbc Parameter", "fbc has the wrong format")
    custom = event.get("custom_data", {})
    if not isinstance(custom, dict):
        raise bad_event(index, None, "Invalid custom_data", "custom_data must be an object")
    if name == "Purchase":
        currency = custom.get("currency")
        if not isinstance(currency, str) or not _CURRENCY.match(currency):
            raise bad_event(
                index,
                2804010,
                "Purchase event missing currency",
                "Purchase needs currency (ISO 4217) and value",
            )
    contents = custom.get("contents")
    if contents is not None:
        ok = isinstance(contents, list) and all(
            isinstance(c, dict) and isinstance(c.get("id"), (str, int)) and str(c.get("id"))
            for c in contents
        )
        if not ok:
            raise bad_event(
                index, 2804019, "Malformed contents", "each entry of contents needs an id"
            )


def _raise_on_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def accept_events(
    method: str,
    match: re.Match[str] | None,
    headers: Mapping[str, str],
    body: bytes,
    *,
    access_token: str,
    app_secret: str | None,
    pixel_ids: tuple[str, ...] | None,
    validate: bool,
    poisoned: Mapping[str, tuple[int, str]],
    now: float,
) -> list[dict[str, Any]]:
    """The events of one request, as Meta would accept them; raises `Rejected` otherwise.

    Parameters:
        match: ``EVENTS_PATH`` matched against the path (None: not an events endpoint).
        headers: lowercase names.
        access_token, app_secret, pixel_ids: what the request must match (see `FakeGraphAPI`).
        validate: run `check_event` on each event (False only counts them).
        poisoned: event_id -> (subcode, message) to reject the request with.
        now: Unix seconds, for the age check.
    """
    if match is None:
        raise Rejected(400, graph_error(2500, "Unknown path components", type_="OAuthException"))
    pixel_id = match.group(2)
    if method != "POST":
        raise Rejected(
            400, graph_error(100, "Unsupported get request.", type_="GraphMethodException")
        )
    params = parse_body(headers, body)
    token = params.get("access_token")
    if not isinstance(token, str) or not token:
        raise Rejected(
            400, graph_error(190, "An access token is required to request this resource.")
        )
    if not hmac.compare_digest(token.encode(), access_token.encode()):
        raise Rejected(
            400, graph_error(190, "Invalid OAuth access token - Cannot parse access token")
        )
    if app_secret:
        proof = hmac.new(app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()
        given = params.get("appsecret_proof")
        if not isinstance(given, str) or not hmac.compare_digest(given, proof):
            raise Rejected(
                400,
                graph_error(
                    100,
                    "Invalid appsecret_proof provided in the API argument",
                    type_="GraphMethodException",
                ),
            )
    if pixel_ids is not None and pixel_id not in pixel_ids:
        raise Rejected(
            400,
            graph_error(
                100,
                f"Unsupported post request. Object with ID '{pixel_id}' does not exist, "
                "cannot be loaded due to missing permissions, or does not support this "
                "operation.",
                subcode=33,
                type_="GraphMethodException",
            ),
        )
    data = params.get("data")
    if not isinstance(data, list) or not data:
        raise Rejected(400, graph_error(100, "(#100) param data must be an array."))
    if len(data) > MAX_EVENTS:
        raise Rejected(
            400, graph_error(100, f"(#100) param data must have at most {MAX_EVENTS} elements")
        )
    events = decode_events(data)
    for index, event in enumerate(events):
        if validate:
            check_event(index, event, now)
        event_id = event.get("event_id") if isinstance(event, dict) else None
        if isinstance(event_id, str) and event_id in poisoned:
            subcode, message = poisoned[event_id]
            raise bad_event(index, subcode, message, "rejected by FakeGraphAPI.poison")
    return [e if isinstance(e, dict) else {"raw": e} for e in events]


def parse_body(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The request's parameters: a JSON object, or a form whose ``data`` is JSON."""
    ctype = headers.get("content-type", "")
    try:
        if "application/x-www-form-urlencoded" in ctype:
            form = {k: v[0] for k, v in parse_qs(body.decode("utf-8")).items()}
            params: dict[str, Any] = dict(form)
            if "data" in form:
                params["data"] = json.loads(form["data"], parse_constant=_raise_on_constant)
            return params
        doc = json.loads(body, parse_constant=_raise_on_constant)
    except (ValueError, UnicodeDecodeError):
        raise Rejected(400, graph_error(100, "(#100) The request body is not valid JSON")) from None
    if not isinstance(doc, dict):
        raise Rejected(400, graph_error(100, "(#100) The request body must be a JSON object"))
    return doc
