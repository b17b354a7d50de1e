"""The default `EventStore`: bounded, thread-safe, in memory (lost when the process ends)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

from capi_middleware.delivery.store import DeadLetter, NewEvent, StoredEvent

__all__ = ["MemoryStore"]


# One held event is a plain tuple of strings and numbers:
#     (pixel_id, payload, event_id, event_time, action_source, attempts, not_before, leased_until)
# not an object: CPython's cyclic garbage collector stops tracking such a tuple after its first
# collection (exact tuples of untracked items only; a NamedTuple subclass stays tracked), so a
# backlog of 100,000 events (an outage) adds nothing to every later full collection, which
# pauses every request of the process (docs/delivery.md has the measurement).
# `claim` builds the StoredEvent objects of the batch it hands out.
_Row = tuple[str, bytes, str, int, str, int, float, float]


def _stored(row_id: int, row: _Row) -> StoredEvent:
    return StoredEvent(row_id, row[0], row[1], row[2], row[3], row[4], row[5])


class MemoryStore:
    """Events waiting for delivery, held in memory, oldest first.

    Parameters:
        max_events: at most this many events are held; ``put`` accepts only what fits.
        keep_dead_letters: how many recent dead letters to keep for inspection
            (`dead_letters`); older ones are forgotten.
    """

    def __init__(self, max_events: int = 100_000, *, keep_dead_letters: int = 1000) -> None:
        if max_events < 1:
            raise ValueError("max_events: must be at least 1")
        self._max = max_events
        self._lock = threading.Lock()
        self._rows: dict[int, _Row] = {}  # insertion order == id order == oldest first
        self._next_id = 1
        self._dead: deque[tuple[StoredEvent, DeadLetter]] = deque(maxlen=keep_dead_letters)

    @property
    def durable(self) -> bool:
        """Always False: a crash loses what is held here."""
        return False

    @property
    def dead_letters(self) -> list[tuple[StoredEvent, DeadLetter]]:
        """The most recent dead-lettered events with the reason, oldest first."""
        with self._lock:
            return list(self._dead)

    def put(self, events: Sequence[NewEvent], *, wait: bool = False) -> int:
        """Accept the prefix of ``events`` that fits under ``max_events``; return its length."""
        with self._lock:
            room = max(0, self._max - len(self._rows))
            accepted = events[:room]
            rows = self._rows
            row_id = self._next_id
            for e in accepted:
                rows[row_id] = (
                    e.pixel_id,
                    e.payload,
                    e.event_id,
                    e.event_time,
                    e.action_source,
                    0,
                    0.0,
                    0.0,
                )
                row_id += 1
            self._next_id = row_id
            return len(accepted)

    def claim(self, limit: int, *, lease_seconds: float, now: float) -> list[StoredEvent]:
        """Lease up to ``limit`` due events that no live lease holds, oldest first."""
        out: list[StoredEvent] = []
        if limit <= 0:
            return out
        until = now + lease_seconds
        with self._lock:
            rows = self._rows
            for row_id, row in rows.items():
                if row[6] > now or row[7] > now:  # not_before, leased_until
                    continue
                # A new lease; same keys, so iterating on is safe.
                rows[row_id] = (row[0], row[1], row[2], row[3], row[4], row[5], row[6], until)
                out.append(_stored(row_id, row))
                if len(out) >= limit:
                    break
        return out

    def ack(self, ids: Sequence[int]) -> None:
        """Forget delivered events."""
        with self._lock:
            for row_id in ids:
                self._rows.pop(row_id, None)

    def retry(self, ids: Sequence[int], *, not_before: float) -> None:
        """Release the leases; the events become due at ``not_before``; attempts += 1."""
        with self._lock:
            rows = self._rows
            for row_id in ids:
                row = rows.get(row_id)
                if row is not None:
                    attempts = row[5] + 1
                    rows[row_id] = (
                        row[0],
                        row[1],
                        row[2],
                        row[3],
                        row[4],
                        attempts,
                        not_before,
                        0.0,
                    )

    def dead_letter(self, ids: Sequence[int], letter: DeadLetter) -> None:
        """Give up on these events; the last ``keep_dead_letters`` are kept in `dead_letters`."""
        with self._lock:
            for row_id in ids:
                row = self._rows.pop(row_id, None)
                if row is not None:
                    self._dead.append((_stored(row_id, row), letter))

    def backlog(self) -> int:
        """Events held, leased ones included."""
        with self._lock:
            return len(self._rows)

    def next_due(self) -> float | None:
        """When the next event becomes claimable (``not_before`` or its lease's end), or None."""
        with self._lock:
            due = [max(r[6], r[7]) for r in self._rows.values()]  # not_before, leased_until
        return min(due) if due else None

    def close(self) -> None:
        """Forget everything held (memory is not durable)."""
        with self._lock:
            self._rows.clear()
