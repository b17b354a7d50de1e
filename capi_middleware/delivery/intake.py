"""The queue the request path writes and the worker drains: the sender's hot path.

``Sender.submit`` ends in `Intake.enqueue`: a lock, a deque extend and at most one notify per
batch. It never does I/O and never touches the event store; the worker moves the queue into the
store later (`capi_middleware.delivery.ledger`). Admission is bounded here: the queue plus what
the store held at its last count stay within ``max_queue``.

The intake's lock guards the deque and the submit-side counters; ``wake`` (a condition on that
lock) is what the worker sleeps on. The lock order is in `capi_middleware.delivery.ledger`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from capi_middleware.delivery.stats import Counters, DropReason
from capi_middleware.delivery.store import NewEvent

__all__ = ["Intake", "SubmitStatus"]


@dataclass(frozen=True)
class SubmitStatus:
    """What ``submit`` did with one event (counted per destination).

    Parameters:
        accepted: copies queued for delivery (one per destination).
        dropped: copies dropped at once; ``reason`` says why.
        reason: a `DropReason` value, ``"no_destination"``, or None when all were accepted.
    """

    accepted: int
    dropped: int = 0
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True when every copy was queued."""
        return self.accepted > 0 and self.dropped == 0


_ACCEPTED = tuple(SubmitStatus(n) for n in range(8))


def _accepted(n: int) -> SubmitStatus:
    # submit() is on the request path: reuse the common answers instead of allocating.
    return _ACCEPTED[n] if n < len(_ACCEPTED) else SubmitStatus(n)


class Intake:
    """Events submitted and not yet in the store, with the counts of what submit did.

    Parameters:
        max_queue: how many events may wait, here and in the store together.
        batch_size: a full batch wakes the worker at once.

    ``stored`` is the store's backlog as the ledger last counted it: written under the state
    lock, read here under the intake lock alone for admission, so it is a hint.
    """

    def __init__(self, *, max_queue: int, batch_size: int) -> None:
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.stored = 0
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._queue: deque[NewEvent] = deque()
        self._first_arrival = 0.0  # monotonic time the oldest queued event arrived
        self._counts = Counters()  # enqueued / dropped at submit: under the lock

    def __len__(self) -> int:
        """Events queued (exact under the lock; a hint without it)."""
        return len(self._queue)

    @property
    def first_arrival(self) -> float:
        """Monotonic time the oldest queued event arrived: the batch timer starts there."""
        return self._first_arrival

    @property
    def counts(self) -> Counters:
        """What submit counted (``enqueued``, ``dropped``); read under the lock."""
        return self._counts

    def enqueue(self, new: Sequence[NewEvent]) -> SubmitStatus:
        """Queue the copies of one event, as many as there is room for."""
        with self.lock:
            self._counts.enqueued += len(new)
            room = max(0, self._max_queue - len(self._queue) - self.stored)
            accepted = new[:room]
            lost = len(new) - len(accepted)
            if lost:
                self._counts.dropped[DropReason.QUEUE_FULL] += lost
            if accepted:
                was_empty = not self._queue
                if was_empty:
                    self._first_arrival = time.monotonic()
                self._queue.extend(accepted)
                # Wake the worker only to start a batch timer or when a batch is full: one
                # notify per batch, not per event.
                if was_empty or len(self._queue) == self._batch_size:
                    self.wake.notify()
        if lost:
            return SubmitStatus(len(accepted), lost, DropReason.QUEUE_FULL)
        return _accepted(len(accepted))

    def refuse(self, copies: int, reason: str) -> None:
        """Count copies submit dropped before queueing them (closed sender, unencodable)."""
        with self.lock:
            self._counts.enqueued += copies
            self._counts.dropped[reason] += copies

    def record_put(self, submitted: int, accepted: int, reason: str) -> None:
        """Count copies submit committed straight to the store (``durable=True``) and wake
        the worker for them. The caller holds the state lock."""
        with self.lock:
            self._counts.enqueued += submitted
            lost = submitted - accepted
            if lost:
                self._counts.dropped[reason] += lost
            self.stored += accepted
            if accepted:
                self.wake.notify()

    def take_all(self) -> list[NewEvent]:
        """Empty the queue, returning what it held (the worker moves it into the store)."""
        with self.lock:
            items = list(self._queue)
            self._queue.clear()
        return items

    def drop_all(self, reason: str) -> int:
        """Empty the queue and count what it held as dropped (close gave up on it)."""
        with self.lock:
            leftover = len(self._queue)
            self._queue.clear()
            if leftover:
                self._counts.dropped[reason] += leftover
        return leftover
