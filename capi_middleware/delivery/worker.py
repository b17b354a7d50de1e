"""The sender's background thread: a named daemon that batches, sends, classifies and retries.

Each round it waits for work, moves the intake into the `EventStore` (through the ledger),
claims due events in batches of up to ``batch_size`` per pixel, sends them over one pooled
``httpx.Client`` and acts on Meta's answer (META_CAPI_REFERENCE.md §5):
`capi_middleware.delivery.classify` names the answer, `capi_middleware.delivery.policy` says
what to do with the batch (acknowledge, retry, pause all sending, pause one pixel, dead-letter,
or split it). The books are the ledger's (`capi_middleware.delivery.ledger`, which states the
lock order); the worker takes the intake lock alone, to wait and to change what it waits for.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping
from typing import Protocol

import httpx

from capi_middleware.config import CAPIConfig, Destination
from capi_middleware.delivery.graph import GraphClient
from capi_middleware.delivery.intake import Intake
from capi_middleware.delivery.ledger import Ledger
from capi_middleware.delivery.pauses import Pauses
from capi_middleware.delivery.policy import Tunables, decide
from capi_middleware.delivery.reporting import describe_verdict, log_dry_run, log_fields
from capi_middleware.delivery.store import DeadLetter, StoredEvent
from capi_middleware.rules.validation import is_too_old

__all__ = ["Tuning", "Worker"]

logger = logging.getLogger("capi_middleware.delivery")


class Tuning(Protocol):
    """What the worker reads from its sender when it needs it: tests change these on a live
    sender (``Sender``'s attributes of the same names)."""

    backoff_base: float
    backoff_cap: float
    rate_limit_pause: float
    rate_limit_pause_cap: float
    config_error_pause: float
    lease_seconds: float
    outbox_poll: float

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called: no thread starts after that."""
        ...


class Worker:
    """The thread and what it keeps between rounds (the Graph client, the throttle count).

    Parameters:
        config: batch size, flush interval, dry run.
        by_pixel: the destinations, by pixel id.
        transport: an httpx transport instead of the network.
        intake, ledger, pauses: this process's queue, books and pauses.
        tuning: the sender, for the tunables and ``closed``.
        rng: draws the backoff's jitter.
    """

    def __init__(
        self,
        config: CAPIConfig,
        by_pixel: Mapping[str, Destination],
        *,
        transport: httpx.BaseTransport | None,
        intake: Intake,
        ledger: Ledger,
        pauses: Pauses,
        tuning: Tuning,
        rng: random.Random,
    ) -> None:
        self._config = config
        self._by_pixel = by_pixel
        self._transport = transport
        self._intake = intake
        self._wake = intake.wake
        self._ledger = ledger
        self._pauses = pauses
        self._tuning = tuning
        self._rng = rng
        self._progress = threading.Condition(threading.Lock())
        self._start_lock = threading.Lock()
        self._flushers = 0  # under the intake lock, like the two flags after it
        self._stopping = False
        self._halt = False
        self._thread: threading.Thread | None = None
        self._running = False
        self._client: GraphClient | None = None
        self._throttled_in_a_row = 0
        self._config_alerted: set[str] = set()

    # -- what the sender asks of it -------------------------------------------------------

    def ensure_running(self) -> None:
        """Start the thread unless it runs (or the sender is closed)."""
        # A flag the worker clears as it exits, not Thread.is_alive() (which takes a lock):
        # this runs on every submit.
        if self._running:
            return
        with self._start_lock:
            if self._running or self._tuning.closed:
                return
            self._thread = threading.Thread(
                target=self._run, name="capi-middleware-sender", daemon=True
            )
            self._running = True
            try:
                self._thread.start()
            except BaseException:
                self._running = False  # the next submit tries again
                raise

    def flush(self, timeout: float | None) -> bool:
        """Send everything due now and wait until the backlog is empty; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._intake.lock:
            self._flushers += 1
            self._wake.notify()
        try:
            if self._ledger.backlog() and not self._tuning.closed:
                self.ensure_running()
            while True:
                if self._ledger.backlog() == 0:
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
            with self._intake.lock:
                self._flushers -= 1

    def stop(self, deadline: float | None) -> None:
        """Stop the thread, waiting until ``deadline`` (monotonic), then close the client."""
        with self._intake.lock:
            self._stopping = True
            self._wake.notify()
        thread = self._thread
        if thread is not None and thread.is_alive():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
            if thread.is_alive():
                self._halt = True  # stop after the request in flight
                with self._intake.lock:
                    self._wake.notify()
                thread.join(1.0)
        if self._client is not None and (thread is None or not thread.is_alive()):
            self._client.close()

    def resume(self) -> None:
        """End every pause now; events a pause or a backoff put back become due at once."""
        with self._intake.lock:
            self._pauses.clear()
            self._ledger.due_at = time.time()
            self._wake.notify()
        self._ledger.clear_shared_pauses()

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._work()
        finally:
            self._running = False

    def _work(self) -> None:
        while True:
            try:
                if self._cycle():
                    return
            except Exception:
                logger.exception("capi_middleware: delivery worker error; continuing")
                with self._intake.lock:
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
                queued = len(self._intake)
                timer_end = self._intake.first_arrival + self._config.flush_interval
                intake_ready = queued > 0 and (
                    urgent or queued >= self._config.batch_size or now_m >= timer_end
                )
                paused_until = self._pauses.until
                paused = paused_until > now_m
                due_at = self._ledger.due_at
                store_due = not paused and due_at is not None and time.time() >= due_at
                if intake_ready or store_due:
                    break
                if self._stopping:
                    return True
                waits = []
                if queued:
                    waits.append(timer_end - now_m)
                if paused:
                    waits.append(paused_until - now_m)
                elif due_at is not None:
                    waits.append(due_at - time.time())
                self._wake.wait(max(0.0, min(waits)) if waits else None)
        self._ledger.ingest()
        claimed = False
        if not self._pauses.active():
            claimed = self._send_due()
        self._ledger.plan_next(claimed=claimed, poll=self._tuning.outbox_poll)
        return False

    def _send_due(self) -> bool:
        """Claim and send batches until nothing is due; True when anything was claimed."""
        any_claimed = False
        while not self._halt and not self._pauses.active():
            if any_claimed and len(self._intake):
                # Events submitted while the last batch was in flight join the store before the
                # next claim, so it fills a whole batch instead of sending a partial one.
                self._ledger.ingest()
            now = time.time()
            claimed = self._ledger.claim(
                self._config.batch_size,
                lease_seconds=self._tuning.lease_seconds,
                now=self._pauses.claim_time(now),
            )
            if not claimed:
                self._pauses.nothing_left_to_claim()
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
                self._ledger.give_up(
                    too_old,
                    DeadLetter("too_old", subcode=2804003, message="event_time past Meta's window"),
                )
            pending = list(groups.items())
            while pending:
                pixel_id, events = pending.pop(0)
                destination = self._by_pixel.get(pixel_id)
                if destination is None:
                    # Left in a durable outbox by a configuration that had this pixel.
                    self._ledger.give_up(
                        events, DeadLetter("no_destination", message="pixel removed")
                    )
                    continue
                pixel_pause = self._pauses.pixel_until(pixel_id)
                if pixel_pause > time.time():
                    self._ledger.put_back(events, not_before=pixel_pause)
                    continue
                self._deliver(destination, events)
                if self._pauses.active() or self._halt:
                    rest = [e for _, group in pending for e in group]
                    self._ledger.put_back(rest, not_before=time.time())
                    return True
        return any_claimed

    def _deliver(self, destination: Destination, events: list[StoredEvent]) -> None:
        """Send one batch and act on the answer (`capi_middleware.delivery.policy`); a bad-event
        answer splits the batch in halves until the culprits are alone."""
        pixel_id = destination.pixel_id
        ledger = self._ledger
        stack = [events]
        while stack:
            batch = stack.pop()
            if self._pauses.active() or self._halt:
                ledger.put_back([e for b in [*stack, batch] for e in b], not_before=time.time())
                return
            if self._config.dry_run:
                log_dry_run(pixel_id, batch)
                ledger.acknowledge(batch)
                continue
            verdict = self._graph().send(destination, [e.payload for e in batch])
            ledger.count_request()
            action = decide(
                verdict,
                batch_size=len(batch),
                attempts=max(e.attempts for e in batch),
                throttled_before=self._throttled_in_a_row,
                tunables=self._tunables(),
                jitter=self._rng.random(),
            )
            if action.kind == "acknowledge":
                ledger.acknowledge(batch)
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
                ledger.put_back(batch, not_before=time.time() + delay)
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
                ledger.put_back([e for b in [*stack, batch] for e in b], not_before=time.time())
                return
            elif action.kind == "pause_pixel":
                # Only this pixel waits: another destination's token may be fine.
                until = time.time() + action.seconds
                self._pauses.pause_pixel(pixel_id, until)
                ledger.share_pause(action.seconds, pixel_id)
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
                ledger.put_back([e for b in [*stack, batch] for e in b], not_before=until)
                return
            elif action.kind == "dead_letter" and action.letter is not None:
                ledger.give_up(batch, action.letter)
            else:  # bisect
                half = len(batch) // 2
                stack.append(batch[half:])
                stack.append(batch[:half])

    def _tunables(self) -> Tunables:
        t = self._tuning
        return Tunables(
            backoff_base=t.backoff_base,
            backoff_cap=t.backoff_cap,
            rate_limit_pause=t.rate_limit_pause,
            rate_limit_pause_cap=t.rate_limit_pause_cap,
            config_error_pause=t.config_error_pause,
        )

    def _graph(self) -> GraphClient:
        if self._client is None:
            self._client = GraphClient(self._config, transport=self._transport)
        return self._client

    def _pause(self, seconds: float) -> None:
        with self._intake.lock:
            self._pauses.pause_all(seconds)
        self._ledger.share_pause(seconds)
