"""The event model and `build_event`: what an app hands ``track()`` -> one Meta event (pure).

`build_event` turns Meta or GA4 names, friendly user-data keys and GA4 ecommerce ``items`` into
an `Event` whose `Event.to_dict` is exactly one element of Meta's ``data`` array. It leans on
`rules.custom_data` (GA4 ecommerce -> Meta) and `rules.validation` (Meta's rules), and
re-exports their public names and `rules.request_body`'s, so imports from here keep working.
Nothing here does I/O; nothing here raises on bad input: it comes back as
`Problem` objects.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, NamedTuple

from capi_middleware.errors import Problem
from capi_middleware.normalize import normalize_user_data
from capi_middleware.rules.custom_data import map_custom_data
from capi_middleware.rules.request_body import (
    MAX_EVENTS_PER_REQUEST,
    appsecret_proof,
    build_request_body,
    encode_json,
)
from capi_middleware.rules.validation import (
    ACTION_SOURCES,
    MAX_EVENT_BYTES,
    MILLISECONDS_THRESHOLD,
    check_event_rules,
    is_int,
    is_too_old,
    size_problem,
    validate_event,
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
    "near_standard_name",
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


class _RandomBytes:
    """``os.urandom`` drawn 4 KiB at a time and handed out 16 bytes per event id.

    ``os.urandom`` releases the GIL around its system call, so calling it on every ``track()``
    handed the GIL to the sender thread mid-request, and the request then waited for it back for
    up to the interpreter's switch interval (5 ms): the tail of tracked requests. One call per
    256 ids keeps the ids from the OS's CSPRNG (an id that could be predicted would let someone
    pre-empt our server event with a browser event of the same id) without that.
    A forked child drops its parent's buffer, or both would hand out the same ids.
    """

    _CHUNK = 16 * 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._next = 0

    def take16(self) -> bytes:
        with self._lock:
            start = self._next
            if start + 16 > len(self._buffer):
                self._buffer = os.urandom(self._CHUNK)
                start = 0
            self._next = start + 16
            return self._buffer[start : start + 16]

    def forget(self) -> None:
        """In a forked child: never reuse the parent's bytes."""
        self._lock = threading.Lock()
        self._buffer = b""
        self._next = 0


_RANDOM = _RandomBytes()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RANDOM.forget)


def new_event_id() -> str:
    """A fresh event id (uuid4 hex): unique per occurrence, as deduplication needs."""
    # uuid.uuid4().hex, without building a UUID object (a quarter of the cost).
    raw = bytearray(_RANDOM.take16())
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


def map_event_name(name: str) -> str:
    """GA4 event name -> Meta's standard name (``purchase`` -> ``Purchase``); others unchanged."""
    return GA4_EVENT_NAMES.get(name, name)


def near_standard_name(name: str) -> str | None:
    """The standard event name ``name`` probably meant, or None.

    A name that is not standard but one edit away from a standard one, case aside (one letter
    added, dropped, changed, or two neighbours swapped: ``Purchse``, ``AddToCard``,
    ``purchase`` after GA4 mapping has had its chance, ``ViewConent``), is most likely a typo:
    Meta would take it as a custom event and the standard one would never be counted.
    """
    if not isinstance(name, str) or name in STANDARD_EVENTS:
        return None
    low = name.lower()
    for standard in _STANDARD_SORTED:
        if _one_edit_apart(low, standard.lower()):
            return standard
    return None


_STANDARD_SORTED = tuple(sorted(STANDARD_EVENTS))


def _one_edit_apart(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` are equal or one insertion, deletion, substitution or swap of
    neighbours apart (the restricted Damerau-Levenshtein distance is at most 1)."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    if len(a) < len(b):
        return a[i:] == b[i + 1 :]  # one letter inserted in b
    if a[i + 1 :] == b[i + 1 :]:
        return True  # one letter changed
    # Two neighbours swapped.
    return i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]


def _is_number(value: object) -> bool:
    # bool is an int to Python, never an amount to Meta.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- the model ------------------------------------------------------------------------------


class Event(NamedTuple):
    """One built, validated server event (an immutable value).

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


class BuildResult(NamedTuple):
    """What `build_event` made of its input.

    Parameters:
        event: the event, or None when a fatal problem was found.
        problems: every problem, fatal (event refused) and not (a user-data value dropped).
        payload: ``encode_json(event.to_dict())``, encoded once for Meta's size limit and
            handed to the sender as is (`Sender.submit_json`).
    """

    event: Event | None
    problems: tuple[Problem, ...]
    payload: bytes | None = None  # the event's JSON as Graph receives it; None with the event

    @property
    def ok(self) -> bool:
        """True when an event was built (non-fatal problems may still be listed)."""
        return self.event is not None


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
    if value > MILLISECONDS_THRESHOLD:
        return None, Problem(
            "event_time", "looks like milliseconds: Meta wants Unix seconds, not milliseconds"
        )
    return int(value), None


# -- building -------------------------------------------------------------------------------


def build_event(
    event_name: str,
    *,
    user_data: Mapping[str, Any] | None = None,
    clear_keys: Mapping[str, str] | None = None,
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
    transaction_id, search_term) or Meta's fields. ``clear_keys`` are match keys already in
    Meta's form (a request's sendable IP, cleaned user agent, valid ``_fbc``/``_fbp``, as
    capture and `Visitor` validate them): sent as they are, under ``user_data``'s keys. Never
    raises on bad input: the result lists every problem, and ``event`` is None when one of
    them is fatal.
    """
    current = time.time() if now is None else now
    problems: list[Problem] = []

    name = map_event_name(event_name.strip()) if isinstance(event_name, str) else event_name

    seconds, time_problem = _coerce_event_time(event_time, current)
    if time_problem is not None:
        problems.append(time_problem)

    if event_id is None:
        event_id = new_event_id()
    elif is_int(event_id):
        event_id = str(event_id)

    source = "website" if action_source is None else action_source

    mapped_custom, custom_problems = map_custom_data(custom_data)
    problems.extend(custom_problems)

    hashed: dict[str, Any] = dict(clear_keys) if clear_keys else {}
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
            hashed.update(normalized.data)
            problems.extend(normalized.problems)

    # The event as Meta receives it, checked and encoded in that one shape (Event.to_dict).
    # An event_time that could not be read (a fatal problem already listed) is 0 until then.
    event = Event(
        event_name=name,
        event_time=seconds if seconds is not None else 0,
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
    payload = event.to_dict()
    for problem in check_event_rules(payload, current, built=True):
        # event_time problems from coercion are already listed with a better message.
        if time_problem is not None and problem.field == "event_time":
            continue
        problems.append(problem)

    if problems and any(p.fatal for p in problems):
        return BuildResult(event=None, problems=tuple(problems))
    try:
        encoded = encode_json(payload)
    except (TypeError, ValueError) as exc:  # a value map_custom_data let through
        problems.append(Problem("event", f"could not be encoded as JSON ({type(exc).__name__})"))
        return BuildResult(event=None, problems=tuple(problems))
    too_big = size_problem(len(encoded))
    if too_big is not None:
        problems.append(too_big)
        return BuildResult(event=None, problems=tuple(problems))
    return BuildResult(event=event, problems=tuple(problems), payload=encoded)
