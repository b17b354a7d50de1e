"""What ``track()`` returns and the counters a client keeps: plain values, no behaviour.

A leaf module: `TrackResult` and `TrackStatus` are what every ``track()`` (a request's or a
`CAPIClient`'s) returns; `CaptureStats` is what ``stats()`` reports.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from capi_middleware.errors import Problem
from capi_middleware.rules.pixel import render_fbq_track

__all__ = ["CaptureStats", "TrackResult", "TrackStatus"]

TrackStatus = Literal["queued", "denied", "invalid", "dropped", "dry_run", "error"]
"""What became of one ``track()`` call.

- ``queued``: handed to the sender (in memory, or committed to the outbox with ``durable``).
- ``denied``: the visitor's consent does not allow it; nothing stored, nothing sent.
- ``invalid``: the event breaks a Meta rule (``problems`` say which); nothing sent.
- ``dropped``: the sender could not take it (queue full, closed, no pixel configured).
- ``dry_run``: built, validated and logged; ``dry_run=True`` sends nothing.
- ``error``: capi_middleware failed internally (logged); the request goes on.
"""


@dataclass(frozen=True)
class TrackResult:
    """What ``track()`` did with one event.

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
    custom_data: Mapping[str, Any] = field(default_factory=dict, repr=False)
    pixel_data: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

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
    """

    requests: int
    capture_errors: int
    consent_denied: int
    invalid: Mapping[str, int]
    track_errors: int
    dry_run: int
    delivery: Any = None
