"""The background sender: a named daemon thread that batches, sends, classifies and retries.

``submit`` is what the request path calls (from an event loop or a WSGI thread): it encodes the
event once, takes a lock, appends to a deque and maybe notifies the worker. It never does network
I/O and never raises. The worker moves events into the `EventStore`, claims due ones in batches of
up to ``batch_size`` per pixel, sends them over one pooled ``httpx.Client`` and acts on Meta's
answer (META_CAPI_REFERENCE.md §5): `capi_middleware.delivery.classify` names the answer,
`capi_middleware.delivery.policy` says what to do with the batch. Which store it holds is chosen
in `capi_middleware.delivery.store_choice`; the process's registry and its exit and fork hooks
are `capi_middleware.delivery.registry`.

Locks: ``_state_lock`` guards the store and the counters, ``_intake_lock`` the deque. Whoever needs
both takes ``_state_lock`` first. ``stats()`` takes both, so the balance
``enqueued == delivered + dead_lettered + dropped + backlog`` holds at every read.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from capi_middleware.config import CAPIConfig, Destination
from capi_middleware.delivery import registry
from capi_middleware.delivery.graph import GraphClient
from capi_middleware.delivery.memory_store import MemoryStore
from capi_middleware.delivery.policy import Tunables, decide, full_jitter_delay
from capi_middleware.delivery.reporting import (
    describe_verdict,
    log_dry_run,
    log_fields,
    report_dead_letters,
)
from capi_middleware.delivery.stats import Counters, DeliveryStats, DropReason
from capi_middleware.delivery.store import (
    DeadLetter,
    EventStore,
    NewEvent,
    SharedStore,
    StoredEvent,
)
from capi_middleware.delivery.store_choice import (
    ClosedStore,
    open_configured_store,
    store_for_forked_child,
)
from capi_middleware.rules.request_body import encode_json
from capi_middleware.rules.validation import is_too_old

__all__ = ["Sender", "SubmitStatus", "full_jitter_delay", "get_sender"]

logger = logging.getLogger("capi_middleware.delivery")

_DRY_RUN_PIXEL = "0"  # dry_run without a pixel: events are still built, batched and logged


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


def _event_field(event: Mapping[str, Any], name: str) -> Any:
    try:
        return event.get(name)
    except Exception:  # a hostile Mapping must not break submit
        return None


class Sender:
    """Delivers events to every destination of ``config`` from a background thread.

    Parameters:
        config: the options; ``destinations()`` are the pixels each event goes to.
        transport: an httpx transport instead of the network (``FakeGraphAPI.transport()``).
        store: where events wait; default: ``MemoryStore(config.max_queue)``, or the outbox
            ``config.outbox`` names (a SQLite file, or Redis Streams for a fleet).

    Tunables (attributes, seconds; tests shrink them): ``backoff_base`` and ``backoff_cap`` for
    transient failures, ``rate_limit_pause`` (when a 429 has no ``Retry-After``; doubles on each
    consecutive throttle up to ``rate_limit_pause_cap``), ``config_error_pause`` after a token or
    permission error, ``lease_seconds`` for claimed events.
    """

    backoff_base: float = 0.5
    backoff_cap: float = 60.0
    rate_limit_pause: float = 60.0
    rate_limit_pause_cap: float = 900.0
    config_error_pause: float = 300.0

    def __init__(
        self,
        config: CAPIConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        store: EventStore | None = None,
    ) -> None:
        self._config = config
        self._transport = transport
        self._own_store = store is None
        destinations = config.destinations()
        if not destinations and config.dry_run:
            destinations = (Destination(pixel_id=_DRY_RUN_PIXEL, access_token="dry-run"),)  # noqa: S106
        self._destinations = destinations
        self._by_pixel = {d.pixel_id: d for d in destinations}
        # Leases must outlive a whole bisection of a batch (about 2*log2(n) requests).
        self.lease_seconds = max(60.0, 40 * config.timeout)
        # How often an idle sender re-reads a durable store that other processes share.
        self.outbox_poll = 2.0
        self._rng = random.Random()
        self._closed = False
        self._warned_no_destination = False
        self._start_runtime(store if store is not None else open_configured_store(config))
        if config.test_event_code:
            logger.warning(
                "capi_middleware: test_event_code is set; events go to Test Events, "
                "not to your live data. Remove it in production."
            )
        registry.track(self)
        if self._store_backlog_hint:
            # A durable store kept events from an earlier run: send them now, not at the first
            # submit (DESIGN: "what is left at exit is sent at the next start").
            self._ensure_worker()

    # -- construction and fork ------------------------------------------------------------

    def _start_runtime(self, store: EventStore) -> None:
        """(Re)create everything a process owns: locks, queue, store handle, counters."""
        self._pid = os.getpid()
        self._store = store
        self._state_lock = threading.Lock()
        self._intake_lock = threading.Lock()
        self._wake = threading.Condition(self._intake_lock)
        self._progress = threading.Condition(threading.Lock())
        self._start_lock = threading.Lock()
        self._intake: deque[NewEvent] = deque()
        self._first_arrival = 0.0  # monotonic time the oldest queued event arrived
        self._submit_counts = Counters()  # enqueued / dropped at submit: under _intake_lock
        self._counts = Counters()  # the rest: under _state_lock
        self._flushers = 0
        self._stopping = False
        self._halt = False
        self._retired = False  # close() swapped the store out: late answers change nothing
        self._thread: threading.Thread | None = None
        self._worker_running = False
        self._client: GraphClient | None = None
        self._paused_until = 0.0  # monotonic: the whole sender waits (rate limited)
        self._paused_until_wall: float | None = None
        self._pixel_paused_until: dict[str, float] = {}  # wall clock: a pixel's config error
        self._claim_horizon = 0.0  # wall clock: after resume(), claim events due until then
        self._throttled_in_a_row = 0
        self._config_alerted: set[str] = set()
        try:
            backlog = store.backlog()
        except Exception:
            logger.exception("capi_middleware: the event store failed to report its backlog")
            backlog = 0
        # Events a durable store kept from an earlier run count as enqueued in this one.
        self._counts.enqueued = backlog
        self._store_backlog_hint = backlog
        self._due_at: float | None = time.time() if backlog else None  # wall clock

    def after_fork_in_child(self) -> None:
        """A forked child starts clean: it must never re-send the parent's in-memory events.

        Called by the process's fork hook (`capi_middleware.delivery.registry`).
        """
        store = store_for_forked_child(self._config, self._store, own=self._own_store)
        # The parent's client, thread and locks are the parent's; drop them without closing.
        self._start_runtime(store)

    def close_at_exit(self) -> None:
        """Close with ``config.shutdown_timeout`` if open and this process's (the atexit hook)."""
        if self._closed or self._pid != os.getpid():
            return
        self.close(self._config.shutdown_timeout)

    @property
    def closed(self) -> bool:
        """True once `close` was called; `get_sender` then makes a new sender."""
        return self._closed

    def _check_pid(self) -> None:
        # Belt and braces for forks that bypass os.register_at_fork (sentry-python's worker does
        # the same check).
        if os.getpid() != self._pid:
            self.after_fork_in_child()

    # -- the request path -------------------------------------------------------------------

    def submit(self, event: Mapping[str, Any], *, durable: bool = False) -> SubmitStatus:
        """Queue one Meta-shaped event (built and validated) for every destination.

        Non-blocking: a lock and a deque append. ``durable=True`` returns after the store
        committed the event (only meaningful with a durable store). Never raises.
        """
        try:
            return self._submit(event, durable=durable)
        except Exception:
            logger.exception("capi_middleware: submit failed; the event is dropped")
            return SubmitStatus(0, len(self._destinations), DropReason.STORE_ERROR)

    def submit_json(
        self,
        payload: bytes,
        *,
        event_id: str,
        event_time: int,
        action_source: str,
        durable: bool = False,
    ) -> SubmitStatus:
        """`submit` for an event already encoded (``BuildResult.payload``): no second encoding.

        ``payload`` must be the JSON of a built event whose fields are the ones given.
        """
        try:
            refused = self._refused()
            if refused is not None:
                return refused
            new = [
                NewEvent(d.pixel_id, payload, event_id, event_time, action_source)
                for d in self._destinations
            ]
            return self._queue(new, durable)
        except Exception:
            logger.exception("capi_middleware: submit failed; the event is dropped")
            return SubmitStatus(0, len(self._destinations), DropReason.STORE_ERROR)

    def _refused(self) -> SubmitStatus | None:
        """Why nothing can be queued right now (no destination, closed), else None."""
        self._check_pid()
        copies = len(self._destinations)
        if copies == 0:
            if not self._warned_no_destination:
                self._warned_no_destination = True
                logger.warning("capi_middleware: no pixel_id/access_token configured; not sending")
            return SubmitStatus(0, 0, "no_destination")
        if self._closed:
            with self._intake_lock:
                self._submit_counts.enqueued += copies
                self._submit_counts.dropped[DropReason.CLOSED] += copies
            return SubmitStatus(0, copies, DropReason.CLOSED)
        return None

    def _queue(self, new: Sequence[NewEvent], durable: bool) -> SubmitStatus:
        status = self._put_now(new) if durable and self._store.durable else self._enqueue(new)
        self._ensure_worker()
        return status

    def _submit(self, event: Mapping[str, Any], *, durable: bool) -> SubmitStatus:
        refused = self._refused()
        if refused is not None:
            return refused
        copies = len(self._destinations)
        try:
            payload = encode_json(event)
            # A Mapping that raises here is caught by submit(); built events never do.
            event_id = event.get("event_id") or ""
            event_time = event.get("event_time") or 0
            action_source = event.get("action_source") or "website"
            if type(event_id) is not str:
                event_id = str(event_id)
            if type(event_time) is not int:
                event_time = int(event_time)
            if type(action_source) is not str:
                action_source = str(action_source)
        except (TypeError, ValueError):
            with self._intake_lock:
                self._submit_counts.enqueued += copies
                self._submit_counts.dropped[DropReason.UNENCODABLE] += copies
            logger.error(
                "capi_middleware: event %r (event_id %r) is not JSON-encodable; dropped",
                _event_field(event, "event_name"),
                _event_field(event, "event_id"),
            )
            return SubmitStatus(0, copies, DropReason.UNENCODABLE)
        new = [
            NewEvent(d.pixel_id, payload, event_id, event_time, action_source)
            for d in self._destinations
        ]
        return self._queue(new, durable)

    def _enqueue(self, new: Sequence[NewEvent]) -> SubmitStatus:
        limit = self._config.max_queue
        with self._intake_lock:
            self._submit_counts.enqueued += len(new)
            room = max(0, limit - len(self._intake) - self._store_backlog_hint)
            accepted = new[:room]
            lost = len(new) - len(accepted)
            if lost:
                self._submit_counts.dropped[DropReason.QUEUE_FULL] += lost
            if accepted:
                was_empty = not self._intake
                if was_empty:
                    self._first_arrival = time.monotonic()
                self._intake.extend(accepted)
                # Wake the worker only to start a batch timer or when a batch is full: one
                # notify per batch, not per event.
                if was_empty or len(self._intake) == self._config.batch_size:
                    self._wake.notify()
        if lost:
            return SubmitStatus(len(accepted), lost, DropReason.QUEUE_FULL)
        return _accepted(len(accepted))

    def _put_now(self, new: Sequence[NewEvent]) -> SubmitStatus:
        """Commit straight to a durable store (the caller asked to wait for it)."""
        reason = DropReason.QUEUE_FULL
        with self._state_lock:
            try:
                accepted = self._store.put(new, wait=True)
            except Exception:
                logger.exception("capi_middleware: the event store failed; event dropped")
                accepted, reason = 0, DropReason.STORE_ERROR
            lost = len(new) - accepted
            with self._intake_lock:
                self._submit_counts.enqueued += len(new)
                if lost:
                    self._submit_counts.dropped[reason] += lost
                self._store_backlog_hint += accepted
                if accepted:
                    self._due_at = time.time()
                    self._wake.notify()
        return SubmitStatus(accepted, lost, reason if lost else None)

    def _ensure_worker(self) -> None:
        # A flag the worker clears as it exits, not Thread.is_alive() (which takes a lock):
        # this runs on every submit.
        if self._worker_running:
            return
        with self._start_lock:
            if self._worker_running or self._closed:
                return
            self._thread = threading.Thread(
                target=self._run, name="capi-middleware-sender", daemon=True
            )
            self._worker_running = True
            try:
                self._thread.start()
            except BaseException:
                self._worker_running = False  # the next submit tries again
                raise

    # -- reading --------------------------------------------------------------------------

    def stats(self) -> DeliveryStats:
        """A consistent snapshot of the counters (see `DeliveryStats`)."""
        self._check_pid()
        with self._state_lock:
            try:
                stored = self._store.backlog()
            except Exception:
                stored = self._store_backlog_hint
            with self._intake_lock:
                if isinstance(self._store, SharedStore):
                    return self._shared_stats()
                c = self._counts
                merged = Counters(
                    enqueued=c.enqueued + self._submit_counts.enqueued,
                    delivered=c.delivered,
                    retried=c.retried,
                    requests=c.requests,
                    dead_lettered=c.dead_lettered.copy(),
                    dropped=c.dropped.copy(),
                )
                paused_until, reason = self._pause_state()
                return merged.snapshot(
                    backlog=stored + len(self._intake),
                    extra_dropped=self._submit_counts.dropped,
                    paused_until=paused_until,
                    pause_reason=reason,
                    dry_run=bool(self._config.dry_run),
                )

    def _shared_stats(self) -> DeliveryStats:
        """A shared store's books are the fleet's; this process adds its queue and its drops.

        Called with both locks held.
        """
        assert isinstance(self._store, SharedStore)
        books = self._store.books()
        dropped = Counter(self._submit_counts.dropped)
        dropped.update(self._counts.dropped)
        dropped.update(books.dropped)
        own = sum(self._submit_counts.dropped.values()) + sum(self._counts.dropped.values())
        paused_until, reason = self._pause_state()
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

    def _pause_state(self) -> tuple[float | None, str | None]:
        if self._paused_until > time.monotonic() and self._paused_until_wall is not None:
            return self._paused_until_wall, "rate_limited"
        now = time.time()
        ends = [end for end in self._pixel_paused_until.values() if end > now]
        return (max(ends), "bad_config") if ends else (None, None)

    def _backlog(self) -> int:
        with self._state_lock:
            try:
                stored = self._store.backlog()
            except Exception:
                stored = self._store_backlog_hint
            with self._intake_lock:
                return stored + len(self._intake)

    # -- lifecycle ------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything due now and wait until the backlog is empty; False on timeout.

        Flushing does not cut short a backoff, a rate-limit pause or a config-error pause: events
        waiting on one of those keep the backlog above zero until the wait is over.
        """
        self._check_pid()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._intake_lock:
            self._flushers += 1
            self._wake.notify()
        try:
            if self._backlog() and not self._closed:
                self._ensure_worker()
            while True:
                if self._backlog() == 0:
                    return True
                thread = self._thread
                if thread is None or not thread.is_alive():
                    return False
                wait = 0.1
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    wait = min(wait, left)
                with self._progress:
                    self._progress.wait(wait)
        finally:
            with self._intake_lock:
                self._flushers -= 1

    def close(self, timeout: float | None = None) -> bool:
        """Flush (up to ``timeout``), stop the worker and close the client. Idempotent.

        Returns True when nothing was left behind. With the memory store, events still waiting
        are lost and counted as dropped ``closed``; a durable store keeps them for the next start.
        """
        self._check_pid()
        if self._closed:
            return self._backlog() == 0
        deadline = None if timeout is None else time.monotonic() + timeout
        flushed = self.flush(timeout)
        self._closed = True
        with self._intake_lock:
            self._stopping = True
            self._wake.notify()
        thread = self._thread
        if thread is not None and thread.is_alive():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
            if thread.is_alive():
                self._halt = True  # stop after the request in flight
                with self._intake_lock:
                    self._wake.notify()
                thread.join(1.0)
        if self._client is not None and (thread is None or not thread.is_alive()):
            self._client.close()
        with self._state_lock:
            with self._intake_lock:
                leftover = list(self._intake)
                self._intake.clear()
                if leftover:
                    self._submit_counts.dropped[DropReason.CLOSED] += len(leftover)
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
                self._store_backlog_hint = lost
                self._store = ClosedStore(lost)
            else:
                # The memory store forgot its events; they are counted as dropped, not backlog.
                self._store_backlog_hint = 0
                self._store = MemoryStore(1)
        registry.forget(self)
        return flushed and not leftover

    def resume(self) -> None:
        """End a rate-limit or config-error pause now (after fixing the token, say).

        Events put back by the pause become due at once; so do events waiting on a backoff.
        """
        with self._intake_lock:
            ends = [*self._pixel_paused_until.values(), self._paused_until_wall or 0.0]
            self._claim_horizon = max(ends)
            self._paused_until = 0.0
            self._paused_until_wall = None
            self._pixel_paused_until = {}
            self._due_at = time.time()
            self._wake.notify()
        if isinstance(self._store, SharedStore):
            self._store.clear_pauses()

    # -- the worker -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._work()
        finally:
            self._worker_running = False

    def _work(self) -> None:
        while True:
            try:
                if self._cycle():
                    return
            except Exception:
                logger.exception("capi_middleware: delivery worker error; continuing")
                with self._intake_lock:
                    self._wake.wait(1.0)
            finally:
                with self._progress:
                    self._progress.notify_all()

    def _cycle(self) -> bool:
        """One round: wait for work, ingest the queue, send what is due. True: stop."""
        with self._wake:
            while True:
                if self._halt:
                    return True
                now_m = time.monotonic()
                urgent = self._stopping or self._flushers > 0
                timer_end = self._first_arrival + self._config.flush_interval
                intake_ready = bool(self._intake) and (
                    urgent or len(self._intake) >= self._config.batch_size or now_m >= timer_end
                )
                paused = self._paused_until > now_m
                due_at = self._due_at
                store_due = not paused and due_at is not None and time.time() >= due_at
                if intake_ready or store_due:
                    break
                if self._stopping:
                    return True
                waits = []
                if self._intake:
                    waits.append(timer_end - now_m)
                if paused:
                    waits.append(self._paused_until - now_m)
                elif due_at is not None:
                    waits.append(due_at - time.time())
                self._wake.wait(max(0.0, min(waits)) if waits else None)
        self._ingest()
        claimed = False
        if not self._paused():
            claimed = self._send_due()
        with self._state_lock:
            try:
                due_at = self._store.next_due()
                self._store_backlog_hint = self._store.backlog()
            except Exception:
                logger.exception("capi_middleware: the event store failed")
                due_at = time.time() + 1.0
            if not claimed and due_at is not None and due_at <= time.time():
                # The store says "due" but handed nothing out: poll instead of spinning.
                due_at = time.time() + 0.1
            if self._store.durable:
                # A shared outbox changes under us: other workers commit rows, and a killed
                # worker's leases expire. An idle sender looks again every few seconds.
                poll_at = time.time() + self.outbox_poll
                due_at = poll_at if due_at is None else min(due_at, poll_at)
            self._due_at = due_at
        return False

    def _ingest(self) -> None:
        with self._state_lock:
            with self._intake_lock:
                items = list(self._intake)
                self._intake.clear()
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
                self._due_at = time.time()
            self._store_backlog_hint += accepted

    def _paused(self) -> bool:
        return self._paused_until > time.monotonic()

    def _send_due(self) -> bool:
        """Claim and send batches until nothing is due; True when anything was claimed."""
        any_claimed = False
        while not self._halt and not self._paused():
            if any_claimed and self._intake:
                # Events submitted while the last batch was in flight join the store before the
                # next claim, so it fills a whole batch instead of sending a partial one.
                self._ingest()
            now = time.time()
            # After resume(), events a pause had put back until its end are claimed at once.
            claim_at = max(now, self._claim_horizon)
            with self._state_lock:
                claimed = self._store.claim(
                    self._config.batch_size, lease_seconds=self.lease_seconds, now=claim_at
                )
            if not claimed:
                self._claim_horizon = 0.0
                return any_claimed
            any_claimed = True
            too_old: list[StoredEvent] = []
            groups: dict[str, list[StoredEvent]] = {}
            for e in claimed:
                if is_too_old(e.event_time, e.action_source, now):
                    too_old.append(e)
                else:
                    groups.setdefault(e.pixel_id, []).append(e)
            if too_old:
                # Meta would reject the whole request (subcode 2804003); never send these.
                self._give_up(
                    too_old,
                    DeadLetter("too_old", subcode=2804003, message="event_time past Meta's window"),
                )
            pending = list(groups.items())
            while pending:
                pixel_id, events = pending.pop(0)
                destination = self._by_pixel.get(pixel_id)
                if destination is None:
                    # Left in a durable outbox by a configuration that had this pixel.
                    self._give_up(events, DeadLetter("no_destination", message="pixel removed"))
                    continue
                pixel_pause = self._pixel_paused_until.get(pixel_id, 0.0)
                if pixel_pause > time.time():
                    self._put_back(events, not_before=pixel_pause)
                    continue
                self._deliver(destination, events)
                if self._paused() or self._halt:
                    rest = [e for _, group in pending for e in group]
                    self._put_back(rest, not_before=time.time())
                    return True
        return any_claimed

    def _deliver(self, destination: Destination, events: list[StoredEvent]) -> None:
        """Send one batch and act on the answer (`capi_middleware.delivery.policy`); a bad-event
        answer splits the batch in halves until the culprits are alone."""
        pixel_id = destination.pixel_id
        stack = [events]
        while stack:
            batch = stack.pop()
            if self._paused() or self._halt:
                self._put_back([e for b in [*stack, batch] for e in b], not_before=time.time())
                return
            if self._config.dry_run:
                log_dry_run(pixel_id, batch)
                self._acknowledge(batch)
                continue
            verdict = self._graph().send(destination, [e.payload for e in batch])
            with self._state_lock:
                self._counts.requests += 1
            action = decide(
                verdict,
                batch_size=len(batch),
                attempts=max(e.attempts for e in batch),
                throttled_before=self._throttled_in_a_row,
                tunables=self._tunables(),
                jitter=self._rng.random(),
            )
            if action.kind == "acknowledge":
                self._acknowledge(batch)
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug(
                        "capi_middleware: pixel %s: %d event(s) delivered (fbtrace_id=%s)",
                        pixel_id,
                        len(batch),
                        verdict.fbtrace_id,
                        extra=log_fields(pixel_id, batch, verdict),
                    )
                self._throttled_in_a_row = 0
                self._config_alerted.discard(pixel_id)
            elif action.kind == "retry":
                delay = action.seconds
                logger.warning(
                    "capi_middleware: pixel %s: %d event(s) not delivered (%s%s); retry in %.1fs",
                    pixel_id,
                    len(batch),
                    verdict.reason,
                    describe_verdict(verdict),
                    delay,
                    extra=log_fields(pixel_id, batch, verdict, retry_in=delay),
                )
                self._put_back(batch, not_before=time.time() + delay)
            elif action.kind == "pause_all":
                self._throttled_in_a_row += 1
                pause = action.seconds
                self._pause(pause)
                capped = (
                    f" (Meta asked for {action.asked:.0f}s; capped at {pause:.0f}s)"
                    if action.asked is not None
                    else ""
                )
                logger.warning(
                    "capi_middleware: pixel %s: rate limited%s; pausing all sending for %.1fs%s",
                    pixel_id,
                    describe_verdict(verdict),
                    pause,
                    capped,
                    extra=log_fields(
                        pixel_id, batch, verdict, pause=pause, retry_after_asked=action.asked
                    ),
                )
                self._put_back([e for b in [*stack, batch] for e in b], not_before=time.time())
                return
            elif action.kind == "pause_pixel":
                # Only this pixel waits: another destination's token may be fine.
                until = time.time() + action.seconds
                self._pixel_paused_until[pixel_id] = until
                self._share_pause(action.seconds, pixel_id)
                if pixel_id not in self._config_alerted:
                    self._config_alerted.add(pixel_id)
                    logger.error(
                        "capi_middleware: Meta refused the configuration for pixel %s (%s%s). "
                        "Check the access token, its permissions and the pixel id. Events are "
                        "kept; sending resumes in %.0fs.",
                        pixel_id,
                        verdict.reason,
                        describe_verdict(verdict),
                        action.seconds,
                        extra=log_fields(pixel_id, batch, verdict),
                    )
                self._put_back([e for b in [*stack, batch] for e in b], not_before=until)
                return
            elif action.kind == "dead_letter" and action.letter is not None:
                self._give_up(batch, action.letter)
            else:  # bisect
                half = len(batch) // 2
                stack.append(batch[half:])
                stack.append(batch[:half])

    def _tunables(self) -> Tunables:
        return Tunables(
            backoff_base=self.backoff_base,
            backoff_cap=self.backoff_cap,
            rate_limit_pause=self.rate_limit_pause,
            rate_limit_pause_cap=self.rate_limit_pause_cap,
            config_error_pause=self.config_error_pause,
        )

    def _graph(self) -> GraphClient:
        if self._client is None:
            self._client = GraphClient(self._config, transport=self._transport)
        return self._client

    def _pause(self, seconds: float) -> None:
        with self._intake_lock:
            self._paused_until = time.monotonic() + seconds
            self._paused_until_wall = time.time() + seconds
        self._share_pause(seconds)

    def _share_pause(self, seconds: float, pixel_id: str | None = None) -> None:
        """A pause seen here holds every host that shares the store (issue 15)."""
        if isinstance(self._store, SharedStore):
            try:
                self._store.share_pause(seconds, pixel_id=pixel_id)
            except Exception:
                logger.exception("capi_middleware: sharing a pause failed")

    def _acknowledge(self, batch: Sequence[StoredEvent]) -> None:
        with self._state_lock:
            if self._retired:
                return
            self._store.ack([e.id for e in batch])
            self._counts.delivered += len(batch)

    def _put_back(self, events: Sequence[StoredEvent], *, not_before: float) -> None:
        if not events:
            return
        with self._state_lock:
            if self._retired:
                return
            self._store.retry([e.id for e in events], not_before=not_before)
            self._counts.retried += len(events)

    def _give_up(self, events: Sequence[StoredEvent], letter: DeadLetter) -> None:
        with self._state_lock:
            if self._retired:
                return
            self._store.dead_letter([e.id for e in events], letter)
            self._counts.dead_lettered[letter.reason] += len(events)
        report_dead_letters(events, letter, self._config.on_dead_letter)


def get_sender(
    config: CAPIConfig,
    *,
    transport: httpx.BaseTransport | None = None,
    store: EventStore | None = None,
) -> Sender:
    """The process's sender for ``config`` (created on first use; closed ones are replaced).

    Two configs that differ only in capture options (consent, proxies, cookies) share a sender.
    ``store`` is used only when the sender is created.
    """
    return registry.shared(
        registry.config_key(config, transport),
        lambda: Sender(config, transport=transport, store=store),
    )
