"""This process's events on their way into Redis, and the writer thread that adds them.

- ``put`` appends to a pending list and wakes the writer, which adds what has gathered every
  ``commit_interval`` seconds with one script (group commit); ``put(..., wait=True)`` waits for
  Redis's answer to its group. The request thread never talks to Redis.
- While Redis is unreachable, events wait in a bounded memory buffer (served to claims like the
  stream's entries, under negative ids), acknowledgements and dead letters Redis is owed are kept,
  each kind of error is logged once, and the writer retries with backoff: when Redis answers it
  pays what it owed, moves the buffer to the stream and logs once how many events it moved.
- The fleet's books as last read live here, updated with the events leaving memory, so a reading
  never counts an event twice or not at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from capi_middleware.delivery.redis_layout import EMPTY_BOOKS, Books
from capi_middleware.delivery.redis_link import CHUNK, RedisLink
from capi_middleware.delivery.store import DeadLetter, NewEvent, StoreBooks, StoredEvent

__all__ = ["Outbound"]

logger = logging.getLogger("capi_middleware.delivery")

_GROUP_MAX = 5000  # add at once when this many events wait, without waiting for the window


@dataclass
class _Buffered:
    """An event kept in memory because Redis could not take it."""

    event: NewEvent
    attempts: int = 0
    not_before: float = 0.0
    leased_until: float = 0.0


class Outbound:
    """The pending group, the memory buffer, what Redis is owed, the books, the writer thread.

    Parameters:
        link: the Redis commands.
        where: the outbox for log lines (no password).
        consumer: this process's consumer name (recorded on its dead letters).
        tick: called by the writer between tasks while Redis answers (the store renews its
            leases there); returns when it wants to be called next (monotonic), or None.
        The rest: `RedisStore`'s options of the same names.
    """

    def __init__(
        self,
        link: RedisLink,
        *,
        where: str,
        consumer: str,
        tick: Callable[[], float | None],
        max_events: int | None,
        memory_fallback: int,
        commit_interval: float,
        max_pending: int,
        wait_timeout: float,
        reconnect_max: float,
        refresh_interval: float,
    ) -> None:
        self._link = link
        self._where = where
        self._consumer = consumer
        self._tick = tick
        self._max_events = max_events
        self._memory_fallback = memory_fallback
        self._commit_interval = commit_interval
        self._max_pending = max_pending
        self._wait_timeout = wait_timeout
        self._reconnect_max = max(0.05, reconnect_max)
        self._refresh_interval = refresh_interval
        self._cond = threading.Condition(threading.Lock())
        self._logged: set[str] = set()
        self._pending: list[NewEvent] = []
        self._pending_since = 0.0
        self._committing = 0
        self._accepted_seq = 0
        self._settled_seq = 0
        self._buffer: dict[int, _Buffered] = {}  # negative ids, oldest first
        self._next_buffer_id = -1
        self._owed_acks: list[bytes] = []
        self._owed_dead: list[tuple[list[bytes], DeadLetter]] = []
        self._local_delivered = 0  # buffered events delivered before they reached Redis
        self._local_dead: Counter[str] = Counter()
        self._lost = 0
        self._books = EMPTY_BOOKS
        self._broken = False
        self._retry_at = 0.0  # monotonic: when the writer tries Redis again
        self._retry_delay = 0.05
        self._next_refresh = 0.0  # monotonic
        self._next_tick: float | None = 0.0
        self._closing = False
        self._closed = False
        self._writer: threading.Thread | None = None  # started on first use

    # -- state -------------------------------------------------------------------------------

    @property
    def broken(self) -> bool:
        """True while Redis is unreachable (events wait in memory)."""
        return self._broken

    @property
    def waiting(self) -> int:
        """The stream's entries as last read."""
        return self._books.waiting

    def backlog(self) -> int:
        """The stream's entries as last read plus this process's events still in memory."""
        with self._cond:
            return self._books.waiting + self._in_memory()

    def books(self) -> StoreBooks:
        """The fleet's books as last read, plus this process's part still in memory."""
        with self._cond:
            self._start_writer()
            b = self._books
            local = self._in_memory()
            dead = Counter(b.dead_lettered)
            dead.update(self._local_dead)
            local_dead = sum(self._local_dead.values())
            return StoreBooks(
                enqueued=b.enqueued + local + self._local_delivered + local_dead + self._lost,
                delivered=b.delivered + self._local_delivered,
                dead_lettered=dict(dead),
                dropped={"closed": self._lost} if self._lost else {},
                backlog=b.waiting + local,
            )

    def set_books(self, books: Books) -> None:
        with self._cond:
            self._books = books
            self._next_refresh = time.monotonic() + self._refresh_interval

    def due_times(self) -> list[float]:
        """When memory-held events become claimable (0.0: a group is about to be added)."""
        with self._cond:
            due = [0.0] if self._pending or self._committing else []
            due.extend(max(b.not_before, b.leased_until) for b in self._buffer.values())
            return due

    def wake(self) -> None:
        """Let the writer look at its schedule again (the store took new leases)."""
        with self._cond:
            self._next_tick = 0.0
            self._start_writer()
            self._cond.notify_all()

    def _in_memory(self) -> int:
        return len(self._pending) + self._committing + len(self._buffer)

    # -- accepting ---------------------------------------------------------------------------

    def put(self, events: Sequence[NewEvent], *, wait: bool) -> int:
        """Accept the prefix of ``events`` that fits; see `RedisStore.put`."""
        with self._cond:
            if self._closed or self._closing:
                return 0
            in_memory = len(self._pending) + self._committing
            if self._broken:
                room = self._memory_fallback - in_memory - len(self._buffer)
            else:
                room = self._max_pending - in_memory
            if self._max_events is not None:
                held = self._books.waiting + in_memory + len(self._buffer)
                room = min(room, self._max_events - held)
            accepted = events[: max(0, room)]
            if len(accepted) < len(events):
                self._error_once(
                    "full",
                    "capi outbox %s: full (%d waiting, %d in memory); new events are dropped "
                    "and counted",
                    self._where,
                    self._books.waiting,
                    in_memory + len(self._buffer),
                )
            if not accepted:
                return 0
            self._accepted_seq += len(accepted)
            if self._broken:
                # Redis is unreachable: straight to the memory buffer, nothing to wait for.
                self._buffer_events(accepted)
                self._settled_seq += len(accepted)
                return len(accepted)
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.extend(accepted)
            target = self._accepted_seq
            self._start_writer()
            self._cond.notify_all()
            if wait:
                deadline = time.monotonic() + self._wait_timeout
                while self._settled_seq < target and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
        return len(accepted)

    def flush(self, timeout: float | None) -> bool:
        """Wait until every event put so far reached Redis (or memory); True if so."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._accepted_seq
            self._cond.notify_all()
            while self._settled_seq < target and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _buffer_events(self, events: Sequence[NewEvent]) -> None:
        for e in events:
            self._buffer[self._next_buffer_id] = _Buffered(e)
            self._next_buffer_id -= 1

    # -- the memory buffer, served like the stream (negative ids) --------------------------------

    def claim_buffered(self, limit: int, *, lease_seconds: float, now: float) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        with self._cond:
            for local_id, b in self._buffer.items():
                if len(out) >= limit:
                    break
                if b.not_before <= now and b.leased_until <= now:
                    b.leased_until = now + lease_seconds
                    e = b.event
                    stored = (local_id, e.pixel_id, e.payload, e.event_id, e.event_time)
                    out.append(StoredEvent(*stored, e.action_source, b.attempts))
        return out

    def ack_buffered(self, ids: Sequence[int]) -> None:
        with self._cond:
            for local_id in ids:
                if self._buffer.pop(local_id, None) is not None:
                    self._local_delivered += 1

    def retry_buffered(self, ids: Sequence[int], *, not_before: float) -> None:
        with self._cond:
            for local_id in ids:
                b = self._buffer.get(local_id)
                if b is not None:
                    b.attempts += 1
                    b.not_before = not_before
                    b.leased_until = 0.0

    def dead_buffered(self, ids: Sequence[int], reason: str) -> None:
        """Never reached Redis: counted (and logged by the sender), not stored."""
        with self._cond:
            for local_id in ids:
                if self._buffer.pop(local_id, None) is not None:
                    self._local_dead[reason] += 1

    # -- Redis failing -----------------------------------------------------------------------

    def owe_acks(self, entries: Sequence[bytes]) -> None:
        """Acknowledgements Redis could not take; paid when it answers again."""
        with self._cond:
            self._owed_acks.extend(entries)

    def owe_dead(self, entries: list[bytes], letter: DeadLetter) -> None:
        with self._cond:
            self._owed_dead.append((entries, letter))

    def failed(self, operation: str, exc: BaseException) -> None:
        """Redis failed: log once per kind, buffer in memory, retry with backoff."""
        kind = type(exc).__name__
        self._error_once(
            f"{operation}:{kind}",
            "capi outbox %s: %s failed (%s); events wait in memory (up to %d) and Redis is "
            "retried with backoff",
            self._where,
            operation,
            kind,
            self._memory_fallback,
        )
        with self._cond:
            if not self._broken:
                self._broken = True
                self._retry_delay = 0.05
                self._retry_at = time.monotonic() + self._retry_delay
            self._cond.notify_all()

    def _error_once(self, kind: str, message: str, *args: object) -> None:
        # Never an event's content: kinds, counts and the outbox's place only.
        if kind not in self._logged:
            self._logged.add(kind)
            logger.error(message, *args)

    # -- closing -----------------------------------------------------------------------------

    def stop(self, timeout: float) -> None:
        """Stop the writer, add what is pending, and try once more to move the memory buffer."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout)
        self._commit_pending()
        if self._broken:
            self._repair()

    def finish(self) -> int:
        """After `stop`: forget what is still in memory (lost, and counted); return how many."""
        with self._cond:
            lost = len(self._buffer) + len(self._pending)
            self._lost += lost
            self._buffer.clear()
            self._pending.clear()
            self._closed = True
            self._cond.notify_all()
        return lost

    # -- the writer thread -------------------------------------------------------------------

    def _start_writer(self) -> None:
        """Start the writer thread if it is not running (called with the lock held)."""
        if self._closed or self._closing:
            return
        if self._writer is not None and self._writer.is_alive():
            return
        self._writer = threading.Thread(
            target=self._write_loop, name="capi-outbox-redis", daemon=True
        )
        self._writer.start()

    def _write_loop(self) -> None:
        while True:
            group: list[NewEvent] = []
            task = ""
            with self._cond:
                while not self._closing:
                    now = time.monotonic()
                    waits = []
                    if self._broken and not self._pending:
                        if now >= self._retry_at:
                            task = "repair"
                            break
                        waits.append(self._retry_at - now)
                    elif self._pending:
                        due = self._pending_since + self._commit_interval
                        if now >= due or len(self._pending) >= _GROUP_MAX:
                            group, self._pending = self._pending, []
                            self._committing = len(group)
                            break
                        waits.append(due - now)
                    if not self._broken:
                        if self._next_tick is not None and now >= self._next_tick:
                            task = "tick"
                            break
                        if now >= self._next_refresh:
                            task = "refresh"
                            break
                        waits.append(self._next_refresh - now)
                        if self._next_tick is not None:
                            waits.append(self._next_tick - now)
                    self._cond.wait(max(0.001, min(waits)) if waits else None)
                if self._closing and not group and not task:
                    return
            try:
                if group:
                    self._commit(group)
                elif task == "repair":
                    self._repair()
                elif task == "tick":
                    upcoming = self._tick()
                    with self._cond:
                        self._next_tick = upcoming
                elif task == "refresh":
                    self.refresh()
            except Exception:  # the writer must outlive any surprise; the next round retries
                logger.exception("capi outbox %s: writer error", self._where)
                with self._cond:
                    self._cond.wait(0.5)

    def _commit(self, group: list[NewEvent]) -> None:
        """Add one group (one script per chunk), or keep what Redis did not take in memory."""
        added = 0
        if not self._broken:
            try:
                for start in range(0, len(group), CHUNK):
                    chunk = group[start : start + CHUNK]
                    books = self._link.add(chunk)
                    # The chunk's books and its leaving memory are published together.
                    with self._cond:
                        self._books = books
                        self._committing -= len(chunk)
                    added += len(chunk)
            except self._link.errors as exc:
                self.failed("add", exc)
        with self._cond:
            self._buffer_events(group[added:])
            self._committing = 0
            self._settled_seq += len(group)
            self._next_refresh = time.monotonic() + self._refresh_interval
            self._cond.notify_all()

    def _commit_pending(self) -> None:
        with self._cond:
            group, self._pending = self._pending, []
            self._committing = len(group)
        if group:
            self._commit(group)

    def _repair(self) -> None:
        """Reach Redis again: what it is owed, then the memory buffer."""
        try:
            self._link.ping()
        except self._link.errors:
            with self._cond:
                self._retry_delay = min(self._reconnect_max, self._retry_delay * 2)
                self._retry_at = time.monotonic() + self._retry_delay
            return
        now = time.time()
        with self._cond:
            acks, self._owed_acks = self._owed_acks, []
            deads, self._owed_dead = self._owed_dead, []
            moving = [(i, b) for i, b in self._buffer.items() if b.leased_until <= now]
            self._broken = False
        try:
            if acks:
                self.set_books(self._link.settle(acks))
            for entries, letter in deads:
                self.set_books(self._link.bury(entries, letter, by=self._consumer, at=now))
            for start in range(0, len(moving), CHUNK):
                part = moving[start : start + CHUNK]
                books = self._link.add([b.event for _, b in part])
                with self._cond:
                    self._books = books
                    for local_id, _ in part:
                        self._buffer.pop(local_id, None)
        except self._link.errors as exc:
            # Whatever was not paid is owed again (a repeated ack or dead letter is harmless:
            # the scripts count only entries still in the stream).
            with self._cond:
                self._owed_acks.extend(acks)
                self._owed_dead.extend(deads)
            self.failed("repair", exc)
            return
        self.refresh()
        with self._cond:
            recovered = bool(self._logged) and not self._broken
            if recovered:
                self._logged.clear()
        if recovered:
            logger.warning(
                "capi outbox %s: Redis answers again; %d events moved there from memory",
                self._where,
                len(moving),
            )

    def refresh(self) -> None:
        """Read the fleet's books now (or note that Redis failed)."""
        try:
            books = self._link.books()
        except self._link.errors as exc:
            self.failed("read", exc)
            return
        self.set_books(books)
