"""The background sender's public face: `Sender`, and `get_sender` for the process's one.

``submit`` is what the request path calls (from an event loop or a WSGI thread): it encodes the
event once and hands it to the intake (a lock, a deque append and maybe a notify). It never does
network I/O and never raises. The rest is three parts with one job each, made afresh for each
process (a forked child starts clean):

- `capi_middleware.delivery.intake`: the queue the request path writes;
- `capi_middleware.delivery.ledger`: the `EventStore` and the counters, and the lock order;
- `capi_middleware.delivery.worker`: the thread that batches, sends, classifies and retries
  (its pauses are `capi_middleware.delivery.pauses`).

Which store it holds is chosen in `capi_middleware.delivery.store_choice`; the process's registry
and its exit and fork hooks are `capi_middleware.delivery.registry`.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from capi_middleware.config import CAPIConfig, Destination
from capi_middleware.delivery import registry
from capi_middleware.delivery.intake import Intake, SubmitStatus
from capi_middleware.delivery.ledger import Ledger
from capi_middleware.delivery.pauses import Pauses
from capi_middleware.delivery.policy import full_jitter_delay
from capi_middleware.delivery.stats import DeliveryStats, DropReason
from capi_middleware.delivery.store import EventStore, NewEvent
from capi_middleware.delivery.store_choice import open_configured_store, store_for_forked_child
from capi_middleware.delivery.worker import Worker
from capi_middleware.rules.request_body import encode_json

__all__ = ["Sender", "SubmitStatus", "full_jitter_delay", "get_sender"]

logger = logging.getLogger("capi_middleware.delivery")

_DRY_RUN_PIXEL = "0"  # dry_run without a pixel: events are still built, batched and logged


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
        if self._ledger.kept_from_before:
            # A durable store kept events from an earlier run: send them now, not at the first
            # submit (DESIGN: "what is left at exit is sent at the next start").
            self._worker.ensure_running()

    # -- construction and fork ------------------------------------------------------------

    def _start_runtime(self, store: EventStore) -> None:
        """(Re)create everything a process owns: queue, books, pauses, thread, their locks."""
        self._pid = os.getpid()
        config = self._config
        self._intake = Intake(max_queue=config.max_queue, batch_size=config.batch_size)
        self._pauses = Pauses()
        self._ledger = Ledger(store, self._intake, config)
        self._worker = Worker(
            config,
            self._by_pixel,
            transport=self._transport,
            intake=self._intake,
            ledger=self._ledger,
            pauses=self._pauses,
            tuning=self,
            rng=self._rng,
        )

    def after_fork_in_child(self) -> None:
        """A forked child starts clean: it must never re-send the parent's in-memory events.

        Called by the process's fork hook (`capi_middleware.delivery.registry`).
        """
        store = store_for_forked_child(self._config, self._ledger.store, own=self._own_store)
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
            self._intake.refuse(copies, DropReason.CLOSED)
            return SubmitStatus(0, copies, DropReason.CLOSED)
        return None

    def _queue(self, new: Sequence[NewEvent], durable: bool) -> SubmitStatus:
        if durable and self._ledger.durable:
            status = self._ledger.put_now(new)
        else:
            status = self._intake.enqueue(new)
        self._worker.ensure_running()
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
            self._intake.refuse(copies, DropReason.UNENCODABLE)
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

    # -- reading and lifecycle ------------------------------------------------------------

    def stats(self) -> DeliveryStats:
        """A consistent snapshot of the counters (see `DeliveryStats`)."""
        self._check_pid()
        return self._ledger.stats(self._pauses)

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything due now and wait until the backlog is empty; False on timeout.

        Flushing does not cut short a backoff, a rate-limit pause or a config-error pause: events
        waiting on one of those keep the backlog above zero until the wait is over.
        """
        self._check_pid()
        return self._worker.flush(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush (up to ``timeout``), stop the worker and close the client. Idempotent.

        Returns True when nothing was left behind. With the memory store, events still waiting
        are lost and counted as dropped ``closed``; a durable store keeps them for the next start.
        """
        self._check_pid()
        if self._closed:
            return self._ledger.backlog() == 0
        deadline = None if timeout is None else time.monotonic() + timeout
        flushed = self.flush(timeout)
        self._closed = True
        self._worker.stop(deadline)
        leftover = self._ledger.retire()
        registry.forget(self)
        return flushed and not leftover

    def resume(self) -> None:
        """End a rate-limit or config-error pause now (after fixing the token, say).

        Events put back by the pause become due at once; so do events waiting on a backoff.
        """
        self._worker.resume()


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
