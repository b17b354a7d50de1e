"""Delivery counters: one event per destination is the unit everywhere.

The books always balance: ``enqueued == delivered + sum(dead_lettered) + sum(dropped) + backlog``.
The sender updates the counters and the store under one lock and reads them under the same lock,
so the equation holds at every read, not just when the sender is idle.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["DeliveryStats", "DropReason"]


class DropReason:
    """Why an event was dropped before it was stored (``DeliveryStats.dropped`` keys)."""

    QUEUE_FULL = "queue_full"  # the bounded queue / outbox had no room
    STORE_ERROR = "store_error"  # the store raised while accepting the event
    CLOSED = "closed"  # submitted after close(), or left in memory when close() gave up
    UNENCODABLE = "unencodable"  # not JSON-encodable (NaN, a stray object): nothing to send


def _frozen(counts: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType({k: v for k, v in sorted(counts.items()) if v})


@dataclass(frozen=True)
class DeliveryStats:
    """A consistent snapshot of the sender's counters.

    Parameters:
        enqueued: events handed to ``submit`` (times destinations).
        delivered: events Meta confirmed (``events_received``), or logged in ``dry_run``.
        retried: times an event was put back for another attempt (one event may count many times;
            not part of the balance).
        dead_lettered: events given up on, by reason (``too_old``, ``invalid_event``, ``rejected``).
        dropped: events never stored, by reason (`DropReason`).
        backlog: events waiting (queued, stored, or in flight).
        requests: HTTP requests made to the Graph API.
        paused_until: wall-clock time (``time.time()``) until which sending is paused, or None.
        pause_reason: ``"rate_limited"`` or ``"bad_config"`` while paused, else None.
        dry_run: True when nothing is really sent (``delivered`` counts logged events).
    """

    enqueued: int = 0
    delivered: int = 0
    retried: int = 0
    dead_lettered: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    dropped: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    backlog: int = 0
    requests: int = 0
    paused_until: float | None = None
    pause_reason: str | None = None
    dry_run: bool = False

    @property
    def accounted(self) -> int:
        """``delivered + dead_lettered + dropped + backlog``: equals ``enqueued`` when balanced."""
        return (
            self.delivered
            + sum(self.dead_lettered.values())
            + sum(self.dropped.values())
            + self.backlog
        )

    @property
    def balanced(self) -> bool:
        """True when every enqueued event is accounted for exactly once."""
        return self.enqueued == self.accounted


@dataclass
class Counters:
    """The sender's mutable counters (guarded by the sender's lock; not thread-safe alone)."""

    enqueued: int = 0
    delivered: int = 0
    retried: int = 0
    requests: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)

    def snapshot(
        self,
        *,
        backlog: int,
        extra_dropped: Mapping[str, int] | None = None,
        paused_until: float | None = None,
        pause_reason: str | None = None,
        dry_run: bool = False,
    ) -> DeliveryStats:
        dropped = Counter(self.dropped)
        if extra_dropped:
            dropped.update(extra_dropped)
        return DeliveryStats(
            enqueued=self.enqueued,
            delivered=self.delivered,
            retried=self.retried,
            dead_lettered=_frozen(self.dead_lettered),
            dropped=_frozen(dropped),
            backlog=backlog,
            requests=self.requests,
            paused_until=paused_until,
            pause_reason=pause_reason,
            dry_run=dry_run,
        )
