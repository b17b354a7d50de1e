"""The outbox's rows on their way in and out: SQL statements, the prepared event, the row held
in memory while the file fails, and the once-per-kind error log. Shared by `SQLiteStore` and its
`OutboxWriter`; nothing here touches the file.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import socket
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

from capi_middleware.delivery.store import NewEvent, StoredEvent

__all__ = [
    "CLAIM_DUE",
    "DEAD_FROM_EVENT",
    "DEAD_FROM_MEMORY",
    "GROUP_MAX",
    "INSERT_EVENT",
    "MemoryRow",
    "OnceLog",
    "Prepared",
    "dead_values",
    "error_kind",
    "new_owner_token",
    "row_values",
]

logger = logging.getLogger("capi_middleware.delivery")

INSERT_EVENT = (
    "INSERT INTO events (pixel_id, event_id, event_name, event_time, action_source, payload,"
    " attempts, not_before, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
CLAIM_DUE = (
    "SELECT id, pixel_id, payload, event_id, event_time, action_source, attempts FROM events"
    " WHERE not_before <= ? AND (lease_until IS NULL OR lease_until <= ?) ORDER BY id LIMIT ?"
)
DEAD_FROM_EVENT = (
    "INSERT INTO dead_letters (pixel_id, event_id, event_name, event_time, action_source,"
    " payload, attempts, created_at, reason, code, subcode, message, fbtrace_id, dead_at)"
    " SELECT pixel_id, event_id, event_name, event_time, action_source, payload, attempts,"
    " created_at, ?, ?, ?, ?, ?, ? FROM events WHERE id = ?"
)
DEAD_FROM_MEMORY = (
    "INSERT INTO dead_letters (pixel_id, event_id, event_name, event_time, action_source,"
    " payload, attempts, created_at, reason, code, subcode, message, fbtrace_id, dead_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
GROUP_MAX = 5000  # commit at once when this many events wait, without waiting for the window


@dataclass(frozen=True)
class Prepared:
    """A validated event on its way to the file: the payload already decoded to JSON text."""

    event: NewEvent
    text: str
    event_name: str
    created_at: float


@dataclass
class MemoryRow:
    """An event kept in memory because the file could not take it."""

    prepared: Prepared
    attempts: int = 0
    not_before: float = 0.0
    lease_until: float | None = None

    def stored(self, row_id: int) -> StoredEvent:
        e = self.prepared.event
        return StoredEvent(
            id=row_id,
            pixel_id=e.pixel_id,
            payload=e.payload,
            event_id=e.event_id,
            event_time=e.event_time,
            action_source=e.action_source,
            attempts=self.attempts,
        )


class OnceLog:
    """Logs each kind of failure once until the store recovers, so a broken disk is not a flood.

    Messages carry only the error kind, counts and the file path: never an event's content.
    """

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def error(self, kind: str, message: str, *args: object) -> None:
        with self._lock:
            if kind in self._seen:
                return
            self._seen.add(kind)
        logger.error(message, *args)

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()


def error_kind(exc: BaseException) -> str:
    """A short, data-free name for a storage error: SQLITE_FULL, ENOTDIR, ..."""
    name = getattr(exc, "sqlite_errorname", None)  # Python 3.11+
    if isinstance(name, str):
        return name
    if isinstance(exc, sqlite3.OperationalError) and str(exc) == "database or disk is full":
        return "SQLITE_FULL"  # Python 3.10 has only the message
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, f"errno {exc.errno}")
    return type(exc).__name__


def new_owner_token() -> str:
    """Who holds a lease: host, pid and a random part, so a reused pid is a different owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def row_values(p: Prepared, attempts: int, not_before: float = 0.0) -> tuple[Any, ...]:
    """The values of one ``events`` row, in `INSERT_EVENT`'s order."""
    e = p.event
    return (
        e.pixel_id,
        e.event_id,
        p.event_name,
        e.event_time,
        e.action_source,
        p.text,
        attempts,
        not_before,
        p.created_at,
    )


def dead_values(p: Prepared, attempts: int) -> tuple[Any, ...]:
    """The first eight values of a ``dead_letters`` row (`_DEAD_COLUMNS`), from memory."""
    e = p.event
    return (
        e.pixel_id,
        e.event_id,
        p.event_name,
        e.event_time,
        e.action_source,
        p.text,
        attempts,
        p.created_at,
    )
