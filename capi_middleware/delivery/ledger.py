"""The sender's books: the `EventStore` and the delivery counters, kept under one lock.

Every change to the store goes through the ledger: events in (`Ledger.ingest` from the intake,
`Ledger.put_now` for ``submit(durable=True)``), claimed, acknowledged, put back, dead-lettered.
`Ledger.stats` and `Ledger.backlog` read the books; `Ledger.retire` settles them at close.

Locks (stated here, and only here, for the whole sender): the ledger's ``lock`` (the state lock)
guards the store and these counters; the intake's lock guards its queue and the submit-side
counts (`capi_middleware.delivery.intake`) and the pauses the worker's wait reads. Whoever needs
both takes the state lock first; every such path is in this module. `Ledger.stats` takes both,
so the balance ``enqueued == delivered + dead_lettered + dropped + backlog`` holds at every read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence

from capi_middleware.config import CAPIConfig
from capi_middleware.delivery.intake import Intake, SubmitStatus
from capi_middleware.delivery.memory_store import MemoryStore
from capi_middleware.delivery.pauses import Pauses
from capi_middleware.delivery.reporting import report_dead_letters
from capi_middleware.delivery.stats import Counters, DeliveryStats, DropReason
from capi_middleware.delivery.store import (
    DeadLetter,
    EventStore,
    NewEvent,
    SharedStore,
    StoredEvent,
)
from capi_middleware.delivery.store_choice import ClosedStore

__all__ = ["Ledger"]

logger = logging.getLogger("capi_middleware.delivery")


class Ledger:
    """The store and the counters the worker and close() change, under ``lock``.

    Parameters:
        store: where events wait.
        intake: the queue the ledger drains into the store (its lock is taken second).
        config: ``on_dead_letter`` and ``dry_run`` (for the stats).

    ``due_at`` (wall clock, None when nothing waits) is when the worker should next look at the
    store: written under ``lock`` (and by ``Sender.resume`` under the intake lock alone), read by
    the worker's wait under the intake lock.
    """

    def __init__(self, store: EventStore, intake: Intake, config: CAPIConfig) -> None:
        self.lock = threading.Lock()
        self._store = store
        self._intake = intake
        self._config = config
        self._counts = Counters()  # all but submit's counts: under the lock
        self._retired = False  # close() swapped the store out: late answers change nothing
        try:
            backlog = store.backlog()
        except Exception:
            logger.exception("capi_middleware: the event store failed to report its backlog")
            backlog = 0
        # Events a durable store kept from an earlier run count as enqueued in this one.
        self._counts.enqueued = backlog
        intake.stored = backlog
        self.kept_from_before = backlog
        self.due_at: float | None = time.time() if backlog else None

    @property
    def store(self) -> EventStore:
        """The store events wait in (after close, a stand-in that accepts nothing)."""
        return self._store

    @property
    def durable(self) -> bool:
        """True when the store keeps events through a crash."""
        return self._store.durable

    # -- events in ------------------------------------------------------------------------

    def put_now(self, new: Sequence[NewEvent]) -> SubmitStatus:
        """Commit straight to a durable store (the caller asked to wait for it)."""
        reason = DropReason.QUEUE_FULL
        with self.lock:
            try:
                accepted = self._store.put(new, wait=True)
            except Exception:
                logger.exception("capi_middleware: the event store failed; event dropped")
                accepted, reason = 0, DropReason.STORE_ERROR
            lost = len(new) - accepted
            if accepted:
                self.due_at = time.time()
            self._intake.record_put(len(new), accepted, reason)
        return SubmitStatus(accepted, lost, reason if lost else None)

    def ingest(self) -> None:
        """Move everything the intake holds into the store."""
        with self.lock:
            items = self._intake.take_all()
            if not items:
                return
            reason = DropReason.QUEUE_FULL
            try:
                accepted = self._store.put(items)
            except Exception:
                logger.exception("capi_middleware: the event store failed; events dropped")
                accepted, reason = 0, DropReason.STORE_ERROR
            lost = len(items) - accepted
            if lost:
                self._counts.dropped[reason] += lost
                logger.warning("capi_middleware: %d event(s) dropped: %s", lost, reason)
            if accepted:
                self.due_at = time.time()
            self._intake.stored += accepted

    # -- events out -----------------------------------------------------------------------

    def claim(self, limit: int, *, lease_seconds: float, now: float) -> list[StoredEvent]:
        """Lease up to ``limit`` events due at ``now`` (`EventStore.claim`)."""
        with self.lock:
            return self._store.claim(limit, lease_seconds=lease_seconds, now=now)

    def count_request(self) -> None:
        """One more request to the Graph API."""
        with self.lock:
            self._counts.requests += 1

    def acknowledge(self, batch: Sequence[StoredEvent]) -> None:
        """Meta accepted these (or a dry run logged them)."""
        with self.lock:
            if self._retired:
                return
            self._store.ack([e.id for e in batch])
            self._counts.delivered += len(batch)

    def put_back(self, events: Sequence[StoredEvent], *, not_before: float) -> None:
        """Release the lease; the events are due again at ``not_before``."""
        if not events:
            return
        with self.lock:
            if self._retired:
                return
            self._store.retry([e.id for e in events], not_before=not_before)
            self._counts.retried += len(events)

    def give_up(self, events: Sequence[StoredEvent], letter: DeadLetter) -> None:
        """Dead-letter the events and tell ``config.on_dead_letter`` (outside the lock)."""
        with self.lock:
            if self._retired:
                return
            self._store.dead_letter([e.id for e in events], letter)
            self._counts.dead_lettered[letter.reason] += len(events)
        report_dead_letters(events, letter, self._config.on_dead_letter)

    def plan_next(self, *, claimed: bool, poll: float) -> None:
        """After a round of sending: count the store again and set ``due_at`` from it.

        ``claimed`` says whether the round got anything; ``poll`` is how often an idle sender
        re-reads a durable store.
        """
        with self.lock:
            try:
                due_at = self._store.next_due()
                self._intake.stored = self._store.backlog()
            except Exception:
                logger.exception("capi_middleware: the event store failed")
                due_at = time.time() + 1.0
            if not claimed and due_at is not None and due_at <= time.time():
                # The store says "due" but handed nothing out: poll instead of spinning.
                due_at = time.time() + 0.1
            if self._store.durable:
                # A shared outbox changes under us: other workers commit rows, and a killed
                # worker's leases expire. An idle sender looks again every few seconds.
                poll_at = time.time() + poll
                due_at = poll_at if due_at is None else min(due_at, poll_at)
            self.due_at = due_at

    # -- a fleet's pauses -----------------------------------------------------------------

    def share_pause(self, seconds: float, pixel_id: str | None = None) -> None:
        """A pause seen here holds every host that shares the store (issue 15)."""
        if isinstance(self._store, SharedStore):
            try:
                self._store.share_pause(seconds, pixel_id=pixel_id)
            except Exception:
                logger.exception("capi_middleware: sharing a pause failed")

    def clear_shared_pauses(self) -> None:
        """End the pauses every host sharing the store keeps."""
        if isinstance(self._store, SharedStore):
            self._store.clear_pauses()

    # -- reading --------------------------------------------------------------------------

    def backlog(self) -> int:
        """Events waiting: in the store (leased ones included) and in the intake."""
        with self.lock:
            stored = self._stored()
            with self._intake.lock:
                return stored + len(self._intake)

    def _stored(self) -> int:
        """The store's backlog, or its last count when the store cannot say. Under the lock."""
        try:
            return self._store.backlog()
        except Exception:
            return self._intake.stored

    def stats(self, pauses: Pauses) -> DeliveryStats:
        """A consistent snapshot of the counters (see `DeliveryStats`)."""
        with self.lock:
            stored = self._stored()
            with self._intake.lock:
                if isinstance(self._store, SharedStore):
                    return self._shared_stats(pauses)
                c = self._counts
                submitted = self._intake.counts
                merged = Counters(
                    enqueued=c.enqueued + submitted.enqueued,
                    delivered=c.delivered,
                    retried=c.retried,
                    requests=c.requests,
                    dead_lettered=c.dead_lettered.copy(),
                    dropped=c.dropped.copy(),
                )
                paused_until, reason = pauses.state()
                return merged.snapshot(
                    backlog=stored + len(self._intake),
                    extra_dropped=submitted.dropped,
                    paused_until=paused_until,
                    pause_reason=reason,
                    dry_run=bool(self._config.dry_run),
                )

    def _shared_stats(self, pauses: Pauses) -> DeliveryStats:
        """A shared store's books are the fleet's; this process adds its queue and its drops.

        Called with both locks held.
        """
        assert isinstance(self._store, SharedStore)
        books = self._store.books()
        submitted = self._intake.counts
        dropped = Counter(submitted.dropped)
        dropped.update(self._counts.dropped)
        dropped.update(books.dropped)
        own = sum(submitted.dropped.values()) + sum(self._counts.dropped.values())
        paused_until, reason = pauses.state()
        return Counters(
            enqueued=books.enqueued + len(self._intake) + own,
            delivered=books.delivered,
            retried=self._counts.retried,
            requests=self._counts.requests,
            dead_lettered=Counter(books.dead_lettered),
        ).snapshot(
            backlog=books.backlog + len(self._intake),
            extra_dropped=dropped,
            paused_until=paused_until,
            pause_reason=reason,
            dry_run=bool(self._config.dry_run),
        )

    # -- close ----------------------------------------------------------------------------

    def retire(self) -> int:
        """Settle the books at close and close the store; late answers change nothing after.

        Events still queued are dropped ``closed`` (returned: how many). With the memory store,
        events still stored are lost and counted as dropped ``closed``; a durable store keeps
        them for the next start.
        """
        with self.lock:
            leftover = self._intake.drop_all(DropReason.CLOSED)
            try:
                lost = self._store.backlog()
            except Exception:
                lost = 0
            shared = isinstance(self._store, SharedStore)
            if lost and not self._store.durable and not shared:
                self._counts.dropped[DropReason.CLOSED] += lost
                logger.warning(
                    "capi_middleware: %d event(s) not delivered before close; lost", lost
                )
            try:
                self._store.close()
            except Exception:
                logger.exception("capi_middleware: closing the event store failed")
            self._retired = True
            if shared:
                pass  # a closed shared store keeps answering its last books
            elif self._store.durable:
                # Kept for the next start; stats() reads this once the store is closed.
                self._intake.stored = lost
                self._store = ClosedStore(lost)
            else:
                # The memory store forgot its events; they are counted as dropped, not backlog.
                self._intake.stored = 0
                self._store = MemoryStore(1)
        return leftover
