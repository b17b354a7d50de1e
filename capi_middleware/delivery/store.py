"""Where events wait between ``track()`` and Meta's 200: the seam between sender and storage.

Three stores implement `EventStore`: the bounded in-memory store (default), the SQLite outbox
(``outbox=`` a file) and the Redis Streams outbox shared by a fleet (``outbox=`` a ``redis://``
URL), which also implements `SharedStore`. The sender only ever talks to these protocols, so
batching, retry and classification are the same whichever store holds the events.

Rules every store keeps:
- ``put`` never blocks on the network and never raises into the caller for a full or broken
  store: it returns how many events it accepted; the rest are the caller's to count as dropped.
- ``claim`` hands out the oldest due events (``not_before <= now``) that no live lease holds, and
  leases them for ``lease_seconds``. A leased event is not handed out again until its lease
  expires (a killed worker's events come back) or it is acknowledged / retried / dead-lettered.
- ``payload`` is stored once and returned byte for byte, so every retry sends the same bytes
  and the same event_id.
- Times (``now``, ``not_before``) are wall-clock ``time.time()``: rows outlive the process and
  are shared between processes, so a monotonic clock would not do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = ["DeadLetter", "EventStore", "NewEvent", "SharedStore", "StoreBooks", "StoredEvent"]


class NewEvent(NamedTuple):
    """An event for one pixel, about to be stored.

    NewEvent and StoredEvent are named tuples rather than frozen dataclasses: one of each is
    made per event, and a tuple is built several times faster (immutable all the same).
    """

    pixel_id: str
    payload: bytes  # the event's JSON (one element of Meta's ``data`` array)
    event_id: str
    event_time: int
    action_source: str


class StoredEvent(NamedTuple):
    """An event as the store holds it."""

    id: int
    pixel_id: str
    payload: bytes
    event_id: str
    event_time: int
    action_source: str
    attempts: int


@dataclass(frozen=True)
class DeadLetter:
    """Why an event was given up on; kept by durable stores for inspection and replay."""

    reason: str  # "invalid_event", "too_old", "rejected", ...
    code: int | None = None
    subcode: int | None = None
    message: str = ""  # Meta's error message; never holds the token or raw personal data
    fbtrace_id: str | None = None


class EventStore(Protocol):
    """Storage for events waiting to be delivered."""

    @property
    def durable(self) -> bool:
        """True when accepted events survive a process crash."""
        ...

    def put(self, events: Sequence[NewEvent], *, wait: bool = False) -> int:
        """Accept events; return how many were accepted (a prefix of ``events``).

        ``wait=True`` returns only after the events are committed (durable stores); memory stores
        treat it as a no-op.
        """
        ...

    def claim(self, limit: int, *, lease_seconds: float, now: float) -> list[StoredEvent]:
        """Lease up to ``limit`` due events, oldest first."""
        ...

    def ack(self, ids: Sequence[int]) -> None:
        """Meta accepted these: forget them (durable stores prune them)."""
        ...

    def retry(self, ids: Sequence[int], *, not_before: float) -> None:
        """Release the lease; the events become due again at ``not_before``; attempts += 1."""
        ...

    def dead_letter(self, ids: Sequence[int], letter: DeadLetter) -> None:
        """Give up on these events, keeping why (durable stores keep the rows)."""
        ...

    def backlog(self) -> int:
        """Events accepted and not yet acknowledged or dead-lettered (leased ones included)."""
        ...

    def next_due(self) -> float | None:
        """When the next event becomes claimable: the earliest ``not_before`` among waiting
        events, or the end of the earliest live lease; None when nothing waits."""
        ...

    def close(self) -> None:
        """Release files and threads.

        Events not yet delivered stay (durable stores) or are lost (memory).
        """
        ...


class StoreBooks(NamedTuple):
    """A shared store's counters, balanced: ``enqueued == delivered + dead + dropped + backlog``.

    They are the whole fleet's (every host's events that reached the shared store) plus this
    process's part that has not reached it (held in memory while it was unreachable).
    """

    enqueued: int
    delivered: int
    dead_lettered: Mapping[str, int]
    dropped: Mapping[str, int]  # events the store accepted and then lost (left in memory at close)
    backlog: int


@runtime_checkable
class SharedStore(Protocol):
    """A store many processes on many hosts share; its books and pauses are the fleet's."""

    def books(self) -> StoreBooks:
        """The fleet's counters as of the last reading, without network I/O."""
        ...

    def share_pause(self, seconds: float, *, pixel_id: str | None = None) -> None:
        """Pause every host (a rate limit) or one pixel on every host (a refused token)."""
        ...

    def clear_pauses(self) -> None:
        """End every shared pause now."""
        ...
