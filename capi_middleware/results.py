"""What ``track()`` returns and what a client counts.

A leaf module: `TrackResult` and `TrackStatus` are what every ``track()`` (a request's or a
`CAPIClient`'s) returns; `CaptureStats` is what ``stats()`` reports; `MatchQuality` counts, per
event name, the match keys of the events sent and the values dropped on the way
(``client.match_quality()``, docs/match-quality.md).
"""

from __future__ import annotations

import html
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from capi_middleware.errors import Problem
from capi_middleware.rules.pixel import render_fbq_track

_NO_DATA: Mapping[str, Any] = MappingProxyType({})

__all__ = [
    "MATCH_KEYS",
    "CaptureStats",
    "MatchQuality",
    "TrackResult",
    "TrackStatus",
    "describe_match_keys",
]

TrackStatus = Literal["queued", "denied", "invalid", "dropped", "dry_run", "error"]
"""What became of one ``track()`` call.

- ``queued``: handed to the sender (in memory, or committed to the outbox with ``durable``).
- ``denied``: the visitor's consent does not allow it; nothing stored, nothing sent.
- ``invalid``: the event breaks a Meta rule (``problems`` say which); nothing sent.
- ``dropped``: the sender could not take it (queue full, closed, no pixel configured).
- ``dry_run``: built, validated and logged; ``dry_run=True`` sends nothing.
- ``error``: capi_middleware failed internally (logged); the request goes on.
"""


class TrackResult(NamedTuple):
    """What ``track()`` did with one event: an immutable value.

    A named tuple rather than a frozen dataclass: one is made per ``track()``, and a frozen
    dataclass's ``__init__`` (``object.__setattr__`` per field) costs twice as much
    (docs/overhead.md).

    Parameters:
        event_id: the event's id; give it to the page's ``fbq(..., {eventID})`` so Meta merges
            the pixel's event with this one (META_CAPI_REFERENCE §6).
        status: see `TrackStatus`.
        problems: every problem found (fatal ones make the status ``invalid``; others are
            values that were dropped while the event still went out).
        event_name: the Meta event name (GA4 names mapped).
        custom_data: the event's Meta-shaped custom_data, for the pixel call; empty when no
            event was built (``denied``, ``invalid``, ``error``).
        pixel_data: when no event was built, the custom_data given to ``track()``, kept so that
            `fbq` can still render the same call (mapped as the event would have been, only
            when a page asks for it).
    """

    event_id: str
    status: TrackStatus
    problems: tuple[Problem, ...] = ()
    event_name: str = ""
    custom_data: Mapping[str, Any] = _NO_DATA
    pixel_data: Mapping[str, Any] | None = None

    def __repr__(self) -> str:
        # The custom data stays out of logs and tracebacks: it is the app's, and can be large.
        return (
            f"TrackResult(event_id={self.event_id!r}, status={self.status!r}, "
            f"problems={self.problems!r}, event_name={self.event_name!r})"
        )

    @property
    def ok(self) -> bool:
        """True when the event was accepted (queued, or built in dry-run mode)."""
        return self.status in ("queued", "dry_run")

    def fbq(self) -> str:
        """The pixel call for the same event and event_id, safe inside ``<script>``.

        Whatever the status, it carries the parameters the server event carries (or, when the
        server did not send it, would carry): a ``denied`` result still renders the call, and
        the pixel's own consent state decides whether it fires. The one exception is
        ``invalid``: an event that breaks Meta's rules is rendered as nothing (``""``), since
        the pixel would send the same broken parameters; ``problems`` say what to fix.
        """
        if self.status == "invalid" or not self.event_name:
            return ""
        data = self.custom_data if self.pixel_data is None else self.pixel_data
        try:
            return render_fbq_track(self.event_name, data, self.event_id)
        except ValueError:  # custom_data Meta would reject: the server did not send it either
            return ""

    def pixel_snippet(self, *, nonce: str | None = None) -> str:
        """``<script>fbq(...)</script>`` for a template; ``nonce`` for a CSP ``script-src``.

        Empty (``""``) when `fbq` is: for an ``invalid`` result.
        """
        call = self.fbq()
        if not call:
            return ""
        attr = f' nonce="{html.escape(nonce, quote=True)}"' if nonce else ""
        return f"<script{attr}>{call}</script>"


@dataclass(frozen=True)
class CaptureStats:
    """The middleware's own counters, beside the sender's delivery stats.

    Parameters:
        requests: http requests captured.
        capture_errors: requests whose capture or cookie handling failed inside this package
            (the request still went on).
        consent_denied: ``track()`` calls refused for want of consent.
        invalid: ``track()`` calls rejected as invalid, by the field of each fatal problem.
        track_errors: ``track()`` calls that failed inside this package.
        dry_run: events built and logged without sending.
        delivery: the sender's stats, or None while no event was ever tracked.
        match_keys: per event name, `MatchQuality.counts`: events sent, events carrying each
            match key, values dropped per key and reason (what Prometheus exports).
    """

    requests: int
    capture_errors: int
    consent_denied: int
    invalid: Mapping[str, int]
    track_errors: int
    dry_run: int
    delivery: Any = None
    match_keys: Mapping[str, Any] = field(default_factory=dict, repr=False)


MATCH_KEYS = (
    "em",
    "ph",
    "fn",
    "ln",
    "ct",
    "st",
    "zp",
    "country",
    "db",
    "ge",
    "external_id",
    "client_ip_address",
    "client_user_agent",
    "fbc",
    "fbp",
)
"""The ``user_data`` keys Meta matches an event to a person on (META_CAPI_REFERENCE §3)."""

_MATCH_KEY_SET = frozenset(MATCH_KEYS)


def describe_match_keys(user_data: Mapping[str, Any], problems: Iterable[Problem]) -> str:
    """One line for a person: the match keys an event carries, the ones it lacks, the drops.

    ``match keys: em, ph, client_user_agent; missing: fn, ln, ...; dropped: ph (no country
    code)``. Names and reasons only, never a value.
    """
    carried = [key for key in MATCH_KEYS if key in user_data]
    missing = [key for key in MATCH_KEYS if key not in user_data]
    drops = [
        f"{key} ({reason})"
        for problem in problems
        if isinstance(key := getattr(problem, "key", None), str)
        and isinstance(reason := getattr(problem, "reason", None), str)
    ]
    line = f"match keys: {', '.join(carried) or 'none'}; missing: {', '.join(missing) or 'none'}"
    return line + (f"; dropped: {', '.join(drops)}" if drops else "")


class MatchQuality:
    """Counts, per event name, the match keys of the events sent and the values dropped.

    `record` is called once per event that went out (queued, or built under ``dry_run``) with
    the event's normalized ``user_data`` and its problems; a dropped value's problem names its
    key and reason (`rules.drops.DroppedValue`). Thread-safe and bounded: event names come from
    the app, keys and reasons from fixed vocabularies.

    It runs on every ``track()``, so it counts each event's *set* of keys (one C-level
    ``frozenset`` and one dict update; a shop's events come in a handful of shapes) and works
    the per-key figures out when a report is asked for.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shapes: dict[str, dict[frozenset[str], int]] = {}
        self._dropped: dict[str, dict[str, dict[str, int]]] = {}

    def record(
        self, event_name: str, user_data: Mapping[str, Any], problems: Iterable[Problem]
    ) -> None:
        """Count one event sent: which match keys it carries, which values were dropped."""
        shape = frozenset(user_data)
        with self._lock:
            shapes = self._shapes.get(event_name)
            if shapes is None:
                shapes = self._shapes[event_name] = {}
            shapes[shape] = shapes.get(shape, 0) + 1
            for problem in problems:
                key = getattr(problem, "key", None)
                reason = getattr(problem, "reason", None)
                if isinstance(key, str) and isinstance(reason, str):
                    reasons = self._dropped.setdefault(event_name, {}).setdefault(key, {})
                    reasons[reason] = reasons.get(reason, 0) + 1

    def counts(self) -> dict[str, dict[str, Any]]:
        """Raw counts per event name: ``{"events": n, "keys": {key: n}, "dropped": {...}}``."""
        with self._lock:
            shapes = {name: dict(per) for name, per in self._shapes.items()}
            dropped = {
                name: {key: dict(reasons) for key, reasons in per.items()}
                for name, per in self._dropped.items()
            }
        counts: dict[str, dict[str, Any]] = {}
        for name, per_shape in shapes.items():
            keys: dict[str, int] = {}
            for shape, n in per_shape.items():
                for key in shape & _MATCH_KEY_SET:
                    keys[key] = keys.get(key, 0) + n
            counts[name] = {
                "events": sum(per_shape.values()),
                "keys": keys,
                "dropped": dropped.get(name, {}),
            }
        return counts

    def report(self) -> dict[str, dict[str, Any]]:
        """Per event name: events sent, the share (0..1) carrying each match key, and drops.

        ``{"Purchase": {"events": 120, "keys": {"em": 0.98, "ph": 0.41, ...},
        "dropped": {"ph": {"no country code": 7}}}}``; every key of `MATCH_KEYS` is listed,
        with 0.0 where no event carried it, so a missing key stands out.
        """
        report = {}
        for name, counts in self.counts().items():
            events = counts["events"]
            carried = counts["keys"]
            report[name] = {
                "events": events,
                "keys": {key: round(carried.get(key, 0) / events, 4) for key in MATCH_KEYS},
                "dropped": counts["dropped"],
            }
        return report
