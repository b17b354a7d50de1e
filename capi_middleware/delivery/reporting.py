"""What delivery tells the outside: log lines' structured fields, dead-letter reports, and what
a dry run would have sent.

A dead letter is reported twice: one warning per pixel (counts, reason, Meta's code and trace id,
at most ten event ids) and one call of the user's ``on_dead_letter`` hook per event. Neither ever
holds personal data, the token or the payload; a hook that raises is logged, never re-raised.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from capi_middleware.delivery.classify import Verdict
from capi_middleware.delivery.store import DeadLetter, StoredEvent

__all__ = [
    "LOG_EVENT_IDS",
    "describe_verdict",
    "event_ids_text",
    "event_name_of",
    "log_dry_run",
    "log_fields",
    "report_dead_letters",
]

logger = logging.getLogger("capi_middleware.delivery")

LOG_EVENT_IDS = 10  # at most this many event ids in one log line


def describe_verdict(verdict: Verdict) -> str:
    """``": HTTP 400 code=100 ..."``: a verdict's details for a log line ("" when none)."""
    parts = []
    if verdict.status is not None:
        parts.append(f"HTTP {verdict.status}")
    if verdict.code is not None:
        parts.append(f"code={verdict.code}")
    if verdict.subcode is not None:
        parts.append(f"subcode={verdict.subcode}")
    if verdict.fbtrace_id:
        parts.append(f"fbtrace_id={verdict.fbtrace_id}")
    if verdict.message:
        parts.append(repr(verdict.message[:300]))
    return (": " + " ".join(parts)) if parts else ""


def log_fields(
    pixel_id: str,
    events: Sequence[StoredEvent],
    verdict: Verdict | None = None,
    **more: object,
) -> dict[str, dict[str, object]]:
    """Structured fields for a log record (``record.capi``): names, ids and counts, never
    personal data, the token or the payload."""
    names: dict[str, int] = {}
    for e in events[:1000]:
        name = event_name_of(e.payload) or "?"
        names[name] = names.get(name, 0) + 1
    fields: dict[str, object] = {"pixel_id": pixel_id, "count": len(events), "event_names": names}
    if verdict is not None:
        fields.update(
            reason=verdict.reason,
            status=verdict.status,
            code=verdict.code,
            subcode=verdict.subcode,
            fbtrace_id=verdict.fbtrace_id,
        )
    fields.update(more)
    return {"capi": fields}


def event_ids_text(events: Sequence[StoredEvent]) -> str:
    """The first `LOG_EVENT_IDS` event ids, comma-separated, and how many more there are."""
    shown = ",".join(e.event_id for e in events[:LOG_EVENT_IDS])
    return shown + (f",+{len(events) - LOG_EVENT_IDS}" if len(events) > LOG_EVENT_IDS else "")


def event_name_of(payload: bytes) -> str | None:
    """The ``event_name`` of a stored event's JSON, None when it has none."""
    try:
        name = json.loads(payload).get("event_name")
    except (ValueError, AttributeError, RecursionError):
        return None
    return name if isinstance(name, str) else None


def log_dry_run(pixel_id: str, batch: Sequence[StoredEvent]) -> None:
    """Log what a dry run would have sent: the batch's size, pixel and first event names."""
    shown = batch[:LOG_EVENT_IDS]
    names = ", ".join(f"{event_name_of(e.payload)}({e.event_id})" for e in shown)
    more = f" and {len(batch) - LOG_EVENT_IDS} more" if len(batch) > LOG_EVENT_IDS else ""
    logger.info(
        "capi_middleware: dry run: would send %d event(s) to pixel %s: %s%s",
        len(batch),
        pixel_id,
        names,
        more,
    )


def report_dead_letters(
    events: Sequence[StoredEvent],
    letter: DeadLetter,
    hook: Callable[[Mapping[str, Any]], object] | None,
) -> None:
    """Log the given-up ``events`` (one line per pixel) and hand each to ``hook``."""
    by_pixel: dict[str, list[StoredEvent]] = {}
    for e in events:
        by_pixel.setdefault(e.pixel_id, []).append(e)
    for pixel_id, group in by_pixel.items():
        logger.warning(
            "capi_middleware: pixel %s: %d event(s) dead-lettered: %s "
            "(code=%s subcode=%s fbtrace_id=%s) %s; event_ids=%s",
            pixel_id,
            len(group),
            letter.reason,
            letter.code,
            letter.subcode,
            letter.fbtrace_id,
            letter.message,
            event_ids_text(group),
            extra=log_fields(
                pixel_id,
                group,
                reason=letter.reason,
                code=letter.code,
                subcode=letter.subcode,
                fbtrace_id=letter.fbtrace_id,
                event_ids=[e.event_id for e in group[:LOG_EVENT_IDS]],
            ),
        )
    if hook is None:
        return
    for e in events:
        record = {
            "pixel_id": e.pixel_id,
            "event_id": e.event_id,
            "event_name": event_name_of(e.payload),
            "event_time": e.event_time,
            "reason": letter.reason,
            "code": letter.code,
            "subcode": letter.subcode,
            "message": letter.message,
            "fbtrace_id": letter.fbtrace_id,
        }
        try:
            hook(record)
        except Exception:
            logger.exception("capi_middleware: the on_dead_letter hook raised")
