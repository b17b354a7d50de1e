"""The `TrackResult`s the client returns: for an event handed to the sender (`sent_result`), and
for one never built: invalid, denied, or tracking off.

An unbuilt event's ``event_id`` is the caller's, or a new one; `unsent_result` also keeps the
custom_data given to ``track()``, so ``result.fbq()`` renders the same call for the pixel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from capi_middleware.errors import Problem
from capi_middleware.results import TrackResult, TrackStatus
from capi_middleware.rules import events as event_rules

__all__ = ["name_of", "sent_result", "unbuilt_result", "unsent_result"]


def sent_result(
    event: event_rules.Event, status: TrackStatus, problems: tuple[Problem, ...]
) -> TrackResult:
    """The result of a built event that went to the sender (or was built under dry_run)."""
    return TrackResult(
        event_id=event.event_id,
        status=status,
        problems=problems,
        event_name=event.event_name,
        custom_data=event.custom_data,
    )


def unbuilt_result(
    event_id: str | None, status: TrackStatus, name: str, problems: tuple[Problem, ...] = ()
) -> TrackResult:
    """A result for an event that was not built (its id generated when the caller gave none)."""
    return TrackResult(
        event_id=event_id if isinstance(event_id, str) and event_id else event_rules.new_event_id(),
        status=status,
        problems=problems,
        event_name=name,
    )


def unsent_result(
    event_id: str | None,
    status: TrackStatus,
    name: str,
    custom_data: Mapping[str, Any],
    problems: tuple[Problem, ...],
) -> TrackResult:
    """A result for an event that was not built, keeping the custom_data given to track(), so
    ``result.fbq()`` renders the same call and the pixel's own consent decides (mapped only if
    a page asks: a denial stays cheap).
    """
    return unbuilt_result(event_id, status, name, problems)._replace(pixel_data=custom_data)


def name_of(event_name: object) -> str:
    """The event name as Meta gets it (`events.map_event_name`); "" for a non-string."""
    return event_rules.map_event_name(event_name) if isinstance(event_name, str) else ""
