"""The fleet's `EventStore`: one Redis stream shared by every process on every host.

How it keeps its promises (the design and a Kubernetes recipe are in docs/fleet.md):

- ``put`` goes to `Outbound`: a group commit by a writer thread, a bounded memory buffer while
  Redis is unreachable; the request thread never talks to Redis.
- ``claim`` takes a batch through the consumer group (``XREADGROUP``), after taking over the
  entries of consumers that stopped renewing their lease (``XAUTOCLAIM``). This process renews
  the leases of what it holds. ``ack`` deletes the entries (``XACK`` + ``XDEL``); ``dead_letter``
  moves them to the dead-letter stream with the reason; ``retry`` keeps them, leased to this
  process, until their backoff ends.
- The books (`books`) are the fleet's counters kept in Redis next to the stream, plus this
  process's part still in memory, so they balance in every process.

Times are wall-clock ``time.time()`` seconds, as in every store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from capi_middleware.delivery import store_hooks
from capi_middleware.delivery.redis_codec import ENTRY_FIELDS, parse_entry
from capi_middleware.delivery.redis_layout import ALL_PIXELS
from capi_middleware.delivery.redis_link import RedisLink, consumer_name, describe, prefix_of
from capi_middleware.delivery.redis_outbound import Outbound
from capi_middleware.delivery.store import DeadLetter, NewEvent, StoreBooks, StoredEvent

__all__ = ["RedisStore"]

logger = logging.getLogger("capi_middleware.delivery")


@dataclass
class _Claimed:
    """A stream entry this process took: in flight to Meta, or held until ``not_before``."""

    entry: bytes
    event: NewEvent
    attempts: int = 0
    not_before: float = 0.0
    in_flight: bool = True

    def stored(self, local_id: int) -> StoredEvent:
        e = self.event
        stored = (local_id, e.pixel_id, e.payload, e.event_id, e.event_time)
        return StoredEvent(*stored, e.action_source, self.attempts)


class RedisStore:
    """Events waiting for delivery in a Redis stream that a fleet of hosts shares.

    Parameters:
        outbox: a ``redis://`` / ``rediss://`` URL, or a ``redis.Redis`` client (used as is,
            closed by its owner).
        prefix: the deployment's key prefix (``{prefix}:events``, ...): hosts with the same
            prefix share one outbox. Default: the URL's ``?prefix=``, else ``capi``.
        max_events: the stream's entries plus this process's memory buffer at most; past it
            ``put`` accepts fewer and the caller counts the rest as dropped. None: no limit.
        memory_fallback: events held in memory while Redis is unreachable, at most.
        commit_interval: the group-commit window in seconds.
        max_pending: events accepted and not yet added, at most (a few milliseconds' worth).
        max_held: entries this process holds for a retry at most; past it ``claim`` takes no
            new entries (other hosts do), so a long Meta outage does not pile the stream up here.
        wait_timeout: seconds at most that ``put(..., wait=True)`` waits for Redis.
        reconnect_max: the longest pause, in seconds, between two attempts to reach Redis.
        refresh_interval: seconds between two readings of the fleet's books when idle.
        max_dead_letters: the dead-letter stream is trimmed to about this many entries.
        socket_timeout: seconds for one Redis command (URLs only; a client keeps its own).
        forget_consumers_after: a consumer (a process of some host) with nothing pending that
            has not read for this many seconds is gone: it is deleted from the group, so the
            group does not grow by one name at every deploy. A live sender reads every few
            seconds.
    """

    def __init__(
        self,
        outbox: Any,
        *,
        prefix: str | None = None,
        max_events: int | None = None,
        memory_fallback: int = 100_000,
        commit_interval: float = 0.005,
        max_pending: int = 10_000,
        max_held: int = 2_000,
        wait_timeout: float = 2.0,
        reconnect_max: float = 2.0,
        refresh_interval: float = 1.0,
        max_dead_letters: int = 100_000,
        socket_timeout: float = 1.0,
        forget_consumers_after: float = 3600.0,
    ) -> None:
        for name, value in (
            ("memory_fallback", memory_fallback),
            ("max_pending", max_pending),
            ("max_held", max_held),
            ("max_dead_letters", max_dead_letters),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer")
        if max_events is not None and (
            isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1
        ):
            raise ValueError("max_events: must be a positive integer, or None")
        for name, seconds in (
            ("commit_interval", commit_interval),
            ("wait_timeout", wait_timeout),
            ("reconnect_max", reconnect_max),
            ("refresh_interval", refresh_interval),
            ("socket_timeout", socket_timeout),
            ("forget_consumers_after", forget_consumers_after),
        ):
            if not isinstance(seconds, (int, float)) or not 0 <= seconds < 1e9:
                raise ValueError(f"{name}: must be a non-negative number of seconds")
        prefix = prefix_of(outbox) if prefix is None else prefix
        if not prefix or any(c.isspace() for c in prefix):
            raise ValueError("prefix: must be a non-empty key prefix without spaces")
        self.where = describe(outbox)
        self._link = RedisLink(
            outbox, prefix=prefix, max_dead_letters=max_dead_letters, socket_timeout=socket_timeout
        )
        self.keys = self._link.keys
        self._errors = self._link.errors
        self._outbound_options: dict[str, Any] = {
            "max_events": max_events,
            "memory_fallback": memory_fallback,
            "commit_interval": float(commit_interval),
            "max_pending": max_pending,
            "wait_timeout": float(wait_timeout),
            "reconnect_max": float(reconnect_max),
            "refresh_interval": float(refresh_interval),
        }
        self._max_held = max_held
        self._forget_after = float(forget_consumers_after)
        self._wait_timeout = float(wait_timeout)
        self._closed = False
        self._init_process_state()
        store_hooks.register(self)
        # One reading now, so a sender created at start-up sees what an earlier run left in the
        # stream and starts sending it without waiting for traffic.
        self._outbound.refresh()

    # -- process-local state (rebuilt after fork) -------------------------------------------

    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        self.consumer = consumer_name()
        self._lock = threading.Lock()
        self._outbound = Outbound(
            self._link,
            where=self.where,
            consumer=self.consumer,
            tick=self._renew_if_due,
            **self._outbound_options,
        )
        self._claimed: dict[int, _Claimed] = {}  # positive ids, this process's entries
        self._claimed_entries: set[bytes] = set()
        self._next_claim_id = 1
        self._lease_seconds = 60.0
        self._next_renew = 0.0  # monotonic
        self._next_autoclaim = 0.0  # monotonic
        self._autoclaim_cursor = "0-0"
        self._next_forget = 0.0  # monotonic
        self._paused_until = 0.0  # wall clock: every pixel paused (read from Redis)
        self._pixel_paused: dict[str, float] = {}

    def reopen_after_fork(self) -> None:
        """Start afresh in a forked child: its own consumer name, buffers and writer thread.

        The parent's buffered events and leases stay the parent's. redis-py's connection pool
        opens new connections in the child by itself.
        """
        self._init_process_state()

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:
            self.reopen_after_fork()

    # -- EventStore --------------------------------------------------------------------------

    @property
    def durable(self) -> bool:
        """True while events reach Redis; False while it is unreachable and they wait in memory.

        Stays True once closed: what is left waits in the stream for the fleet.
        """
        return self._closed or not self._outbound.broken

    def put(self, events: Sequence[NewEvent], *, wait: bool = False) -> int:
        """Accept events for the next group; return how many (a prefix) were accepted.

        Never raises and never talks to Redis on the caller's thread. ``wait=True`` returns once
        Redis answered for the group holding these events (or they were kept in memory).
        """
        self._check_fork()
        if self._closed:
            return 0
        return self._outbound.put(events, wait=wait)

    def claim(self, limit: int, *, lease_seconds: float, now: float) -> list[StoredEvent]:
        """Lease up to ``limit`` due events: held ones, memory-held ones, then the stream's.

        Nothing while a shared rate-limit pause holds; events of a paused pixel are held here
        until its pause ends.
        """
        self._check_fork()
        out: list[StoredEvent] = []
        if limit <= 0 or self._closed:
            return out
        self._lease_seconds = lease_seconds
        with self._lock:
            if self._paused_until > now:
                return out
            for local_id, c in self._claimed.items():
                if len(out) >= limit:
                    break
                if not c.in_flight and c.not_before <= now:
                    c.in_flight = True
                    out.append(c.stored(local_id))
            held = sum(1 for c in self._claimed.values() if not c.in_flight)
        out += self._outbound.claim_buffered(limit - len(out), lease_seconds=lease_seconds, now=now)
        room = limit - len(out)
        if self._outbound.broken or room <= 0 or held >= self._max_held:
            return out
        out += self._read_stream(room, now)
        return out

    def ack(self, ids: Sequence[int]) -> None:
        """Meta accepted these: delete their entries (``XACK`` + ``XDEL``)."""
        self._check_fork()
        self._outbound.ack_buffered([i for i in ids if i < 0])
        entries = self._release([i for i in ids if i > 0])
        if not entries:
            return
        if self._outbound.broken:
            self._outbound.owe_acks(entries)
            return
        try:
            self._outbound.set_books(self._link.settle(entries))
        except self._errors as exc:
            self._outbound.owe_acks(entries)
            self._outbound.failed("ack", exc)

    def retry(self, ids: Sequence[int], *, not_before: float) -> None:
        """Keep these events here, leased, until ``not_before``; attempts += 1."""
        self._check_fork()
        self._outbound.retry_buffered([i for i in ids if i < 0], not_before=not_before)
        with self._lock:
            for local_id in ids:
                c = self._claimed.get(local_id)
                if c is not None:
                    c.attempts += 1
                    c.not_before = not_before
                    c.in_flight = False

    def dead_letter(self, ids: Sequence[int], letter: DeadLetter) -> None:
        """Move these entries to the dead-letter stream, with why."""
        self._check_fork()
        self._outbound.dead_buffered([i for i in ids if i < 0], letter.reason)
        self._bury(self._release([i for i in ids if i > 0]), letter)

    def backlog(self) -> int:
        """The stream's entries (every host's) plus this process's events still in memory.

        As of the last reading: no network I/O (the writer refreshes it).
        """
        self._check_fork()
        return self._outbound.backlog()

    def next_due(self) -> float | None:
        """When something may be claimable: pending groups and unclaimed entries soon."""
        self._check_fork()
        due = self._outbound.due_times()
        with self._lock:
            due.extend(c.not_before for c in self._claimed.values() if not c.in_flight)
            if self._outbound.waiting > len(self._claimed):
                # Entries that may be no one's yet (another host's, or a dead consumer's).
                due.append(time.time() + 0.25)
            paused_until = self._paused_until
        return max(min(due), paused_until) if due else None

    def close(self, timeout: float | None = None) -> None:
        """Add what is pending, move the memory buffer to Redis if it can, hand back held entries.

        Events still in memory when Redis stays unreachable are lost and counted (`books`).
        """
        self._check_fork()
        if self._closed:
            return
        self._outbound.stop(self._wait_timeout if timeout is None else timeout)
        self._hand_back_held()
        lost = self._outbound.finish()
        self._closed = True
        if lost:
            logger.error(
                "capi outbox %s: %d events held in memory could not reach Redis and are lost",
                self.where,
                lost,
            )
        with contextlib.suppress(Exception):
            self._link.close()
        store_hooks.forget(self)

    def flush_at_exit(self) -> None:
        """Commit what is pending if this process's store is open (`store_hooks`' exit hook)."""
        if self._pid == os.getpid() and not self._closed:
            self.flush(timeout=2.0)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event put so far reached Redis (or memory); True if so."""
        self._check_fork()
        return self._outbound.flush(timeout)

    # -- SharedStore -------------------------------------------------------------------------

    def books(self) -> StoreBooks:
        """The fleet's books as last read, plus this process's part still in memory."""
        self._check_fork()
        return self._outbound.books()

    def share_pause(self, seconds: float, *, pixel_id: str | None = None) -> None:
        """Tell every host to pause (a rate limit), or to pause one pixel (a refused token)."""
        self._check_fork()
        field = ALL_PIXELS if pixel_id is None else pixel_id
        try:
            self._link.pause(field, time.time() + seconds, seconds)
        except self._errors as exc:
            self._outbound.failed("pause", exc)

    def clear_pauses(self) -> None:
        """End every shared pause (``Sender.resume``)."""
        self._check_fork()
        with self._lock:
            self._paused_until = 0.0
            self._pixel_paused.clear()
        try:
            self._link.clear_pauses()
        except self._errors as exc:
            self._outbound.failed("pause", exc)

    def __repr__(self) -> str:
        return f"RedisStore({self.where!r}, consumer={self.consumer!r}, durable={self.durable})"

    # -- claims and leases -------------------------------------------------------------------

    def _release(self, ids: Sequence[int]) -> list[bytes]:
        """Forget claimed entries (acknowledged or dead-lettered); their stream ids."""
        entries = []
        with self._lock:
            for local_id in ids:
                c = self._claimed.pop(local_id, None)
                if c is not None:
                    self._claimed_entries.discard(c.entry)
                    entries.append(c.entry)
        return entries

    def _bury(self, entries: list[bytes], letter: DeadLetter) -> None:
        if not entries:
            return
        if self._outbound.broken:
            self._outbound.owe_dead(entries, letter)
            return
        try:
            books = self._link.bury(entries, letter, by=self.consumer, at=time.time())
        except self._errors as exc:
            self._outbound.owe_dead(entries, letter)
            self._outbound.failed("dead_letter", exc)
            return
        self._outbound.set_books(books)

    def _read_stream(self, count: int, now: float) -> list[StoredEvent]:
        """Take up to ``count`` entries: a dead consumer's (lease over), then new ones."""
        mono = time.monotonic()
        try:
            pauses, cursor, flat = self._link.claim(
                self.consumer, count, now=now, autoclaim=mono >= self._next_autoclaim,
                min_idle=self._lease_seconds, cursor=self._autoclaim_cursor,
            )  # fmt: skip
        except self._errors as exc:
            self._outbound.failed("claim", exc)
            return []
        self._note_pauses(pauses, now)
        if cursor is not False:
            self._autoclaim_cursor = cursor.decode()
            if self._autoclaim_cursor == "0-0":
                self._next_autoclaim = mono + max(0.2, self._lease_seconds / 4)
                if mono >= self._next_forget:
                    self._forget_gone_consumers(mono)
        out: list[StoredEvent] = []
        malformed: dict[str, list[bytes]] = {}
        step = ENTRY_FIELDS + 1
        with self._lock:
            for k in range(0, len(flat), step):
                entry = flat[k]
                if entry in self._claimed_entries:
                    continue  # ours already (taken over from ourselves after a stall)
                parsed = parse_entry(flat[k + 1 : k + step])
                if isinstance(parsed, str):
                    malformed.setdefault(parsed, []).append(entry)
                    continue
                local_id = self._next_claim_id
                self._next_claim_id += 1
                c = _Claimed(entry, parsed)
                pause = self._pixel_paused.get(parsed.pixel_id, 0.0)
                if pause > now:
                    c.in_flight = False
                    c.not_before = pause
                else:
                    out.append(c.stored(local_id))
                self._claimed[local_id] = c
                self._claimed_entries.add(entry)
        if flat:
            self._outbound.wake()  # the writer renews the leases from now on
        for reason, ids in malformed.items():
            logger.warning(
                "capi outbox %s: %d malformed entr%s dead-lettered (%s)",
                self.where,
                len(ids),
                "y" if len(ids) == 1 else "ies",
                reason,
            )
            self._bury(ids, DeadLetter("malformed", message=reason))
        return out

    def _forget_gone_consumers(self, mono: float) -> None:
        """After a full autoclaim pass (their entries are taken): delete consumers long gone."""
        self._next_forget = mono + min(300.0, max(1.0, self._forget_after / 4))
        try:
            gone = self._link.forget_consumers(idle_seconds=self._forget_after, keep=self.consumer)
        except self._errors as exc:
            self._outbound.failed("forget consumers", exc)
            return
        if gone:
            logger.info("capi outbox %s: %d consumers gone for good forgotten", self.where, gone)

    def _note_pauses(self, flat: Sequence[bytes], now: float) -> None:
        pixel: dict[str, float] = {}
        every = 0.0
        for i in range(0, len(flat) - 1, 2):
            field = flat[i].decode("ascii", "replace")
            until = int(flat[i + 1]) / 1000
            if until <= now:
                continue
            if field == ALL_PIXELS:
                every = until
            else:
                pixel[field] = until
        with self._lock:
            self._paused_until = every
            self._pixel_paused = pixel

    def _renew_if_due(self) -> float | None:
        """The writer's tick: reset the idle time of every entry held here (the lease), so no
        other host takes them over; when to be called next, or None while nothing is held."""
        with self._lock:
            if not self._claimed:
                return None
            now = time.monotonic()
            if now < self._next_renew:
                return self._next_renew
            entries = [c.entry for c in self._claimed.values()]
            self._next_renew = now + max(0.05, self._lease_seconds / 3)
            upcoming = self._next_renew
        try:
            self._link.renew(self.consumer, entries)
        except self._errors as exc:
            self._outbound.failed("renew", exc)
        return upcoming

    def _hand_back_held(self) -> None:
        """At close: entries held here go back to the stream for another host."""
        with self._lock:
            held = [c.entry for c in self._claimed.values()]
            self._claimed.clear()
            self._claimed_entries.clear()
        if not held or self._outbound.broken:
            return
        try:
            self._link.requeue(held)
        except self._errors as exc:
            self._outbound.failed("hand back", exc)
