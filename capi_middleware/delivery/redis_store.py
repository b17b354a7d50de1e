"""The fleet's `EventStore`: one Redis stream shared by every process on every host.

How it keeps its promises (the design and a Kubernetes recipe are in docs/fleet.md):

- ``put`` appends to an in-memory list and wakes one writer thread, which adds what has gathered
  every ``commit_interval`` seconds with one script (group commit). The request thread never
  talks to Redis; ``put(..., wait=True)`` waits for Redis's answer to its group.
- ``claim`` takes a batch through the consumer group (``XREADGROUP``), after taking over the
  entries of consumers that stopped renewing their lease (``XAUTOCLAIM``). This process renews
  the leases of what it holds. ``ack`` deletes the entries (``XACK`` + ``XDEL``); ``dead_letter``
  moves them to the dead-letter stream with the reason; ``retry`` keeps them, leased to this
  process, until their backoff ends.
- Redis down, slow or restarted: new events wait in a bounded memory buffer that ``claim`` also
  serves, each kind of error is logged once, and the writer reconnects with backoff and moves the
  buffer to the stream when Redis is back. No request waits for Redis or fails because of it.
- The books (`books`) are the fleet's counters kept in Redis next to the stream, plus this
  process's part still in memory, so they balance in every process.

Times are wall-clock ``time.time()`` seconds, as in every store.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import socket
import threading
import time
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from capi_middleware.config import is_redis_url, redact_url
from capi_middleware.delivery.redis_layout import (
    ADD_SCRIPT,
    ALL_PIXELS,
    BOOKS_SCRIPT,
    CLAIM_SCRIPT,
    DEAD_SCRIPT,
    EMPTY_BOOKS,
    ENTRY_FIELDS,
    GROUP,
    PAUSE_SCRIPT,
    REQUEUE_SCRIPT,
    SETTLE_SCRIPT,
    Books,
    Keys,
    encode_group,
    parse_books,
    parse_entry,
    unpack_msgpack,
)
from capi_middleware.delivery.store import DeadLetter, NewEvent, StoreBooks, StoredEvent

__all__ = ["RedisStore", "connect", "describe", "prefix_of"]

logger = logging.getLogger("capi_middleware.delivery")

_GROUP_MAX = 5000  # add at once when this many events wait, without waiting for the window
_SCRIPT_CHUNK = 1000  # ids per script call (Lua's unpack has a limit of about 8,000)


def connect(outbox: Any, *, socket_timeout: float = 1.0) -> Any:
    """A ``redis.Redis`` client for ``outbox`` (a URL), or ``outbox`` itself (a client).

    Raises ImportError naming the extra when redis-py is not installed.
    """
    if not is_redis_url(outbox):
        return outbox
    try:
        import redis
    except ImportError:
        raise ImportError(
            "outbox: a redis:// outbox needs redis-py: pip install 'capi-middleware[redis]'"
        ) from None
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # Short timeouts and one immediate retry (a pooled connection Redis closed on restart): the
    # writer retries on its own, with backoff, so a slow or stopped Redis shows as an error
    # within a socket timeout instead of redis-py's own retries holding a durable put.
    return redis.Redis.from_url(
        _without_prefix(outbox)[0],
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 1),
    )


def _without_prefix(url: str) -> tuple[str, str | None]:
    """The URL without our ``prefix=`` query parameter (redis-py does not know it), and it."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), None)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), prefix


def prefix_of(outbox: Any, default: str = "capi") -> str:
    """The deployment's key prefix: ``?prefix=`` in the URL, else ``default``."""
    if is_redis_url(outbox):
        return _without_prefix(outbox)[1] or default
    return default


def describe(outbox: Any) -> str:
    """Where the outbox is, for logs: the URL without its password, or the client's host."""
    if isinstance(outbox, str):
        return redact_url(outbox)
    try:
        kwargs = outbox.connection_pool.connection_kwargs
        return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
    except AttributeError:
        return type(outbox).__name__


def _consumer_name() -> str:
    """This process in the consumer group: host, pid and a random part (a reused pid differs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


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
        return StoredEvent(
            local_id, e.pixel_id, e.payload, e.event_id, e.event_time, e.action_source,
            self.attempts,
        )  # fmt: skip


@dataclass
class _Buffered:
    """An event kept in memory because Redis could not take it."""

    event: NewEvent
    attempts: int = 0
    not_before: float = 0.0
    leased_until: float = 0.0


class _OnceLog:
    """Logs each kind of failure once until Redis recovers; never an event's content."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def error(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._seen:
            self._seen.add(kind)
            logger.error(message, *args)

    def reset(self) -> bool:
        had = bool(self._seen)
        self._seen.clear()
        return had


_LIVE_STORES: weakref.WeakSet[RedisStore] = weakref.WeakSet()


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
        ):
            if not isinstance(seconds, (int, float)) or not 0 <= seconds < 1e9:
                raise ValueError(f"{name}: must be a non-negative number of seconds")
        prefix = prefix_of(outbox) if prefix is None else prefix
        if not prefix or any(c.isspace() for c in prefix):
            raise ValueError("prefix: must be a non-empty key prefix without spaces")
        self.where = describe(outbox)
        self._client = connect(outbox, socket_timeout=socket_timeout)
        self._own_client = self._client is not outbox
        self.keys = Keys.for_prefix(prefix)
        self._max_events = max_events
        self._memory_fallback = memory_fallback
        self._commit_interval = float(commit_interval)
        self._max_pending = max_pending
        self._max_held = max_held
        self._wait_timeout = float(wait_timeout)
        self._reconnect_max = max(0.05, float(reconnect_max))
        self._refresh_interval = float(refresh_interval)
        self._max_dead = max_dead_letters
        self._scripts = {
            name: self._client.register_script(text)
            for name, text in (
                ("add", ADD_SCRIPT),
                ("settle", SETTLE_SCRIPT),
                ("dead", DEAD_SCRIPT),
                ("claim", CLAIM_SCRIPT),
                ("pause", PAUSE_SCRIPT),
                ("requeue", REQUEUE_SCRIPT),
                ("books", BOOKS_SCRIPT),
            )
        }
        self._errors = _redis_errors()
        self._closed = False
        self._init_process_state()
        _LIVE_STORES.add(self)
        # One reading now, so a sender created at start-up sees what an earlier run left in the
        # stream and starts sending it without waiting for traffic.
        self._refresh()

    # -- process-local state (rebuilt after fork) -------------------------------------------

    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        self.consumer = _consumer_name()
        self._cond = threading.Condition(threading.Lock())
        self._log = _OnceLog()
        self._pending: list[NewEvent] = []
        self._pending_since = 0.0
        self._committing = 0
        self._accepted_seq = 0
        self._settled_seq = 0
        self._buffer: dict[int, _Buffered] = {}  # negative ids, oldest first
        self._next_buffer_id = -1
        self._claimed: dict[int, _Claimed] = {}  # positive ids, this process's entries
        self._claimed_entries: set[bytes] = set()
        self._next_claim_id = 1
        self._deferred_acks: list[bytes] = []
        self._deferred_dead: list[tuple[list[bytes], DeadLetter]] = []
        self._local_delivered = 0  # buffered events delivered before they reached Redis
        self._local_dead: Counter[str] = Counter()
        self._lost = 0
        self._books = EMPTY_BOOKS
        self._group_ready = False
        self._broken = False
        self._retry_at = 0.0  # monotonic: when the writer tries Redis again
        self._retry_delay = 0.05
        self._next_refresh = 0.0  # monotonic
        self._next_renew = 0.0  # monotonic
        self._lease_seconds = 60.0
        self._next_autoclaim = 0.0  # monotonic
        self._autoclaim_cursor = "0-0"
        self._paused_until = 0.0  # wall clock: every pixel paused (read from Redis)
        self._pixel_paused: dict[str, float] = {}
        self._closing = False
        self._writer: threading.Thread | None = None  # started on first use

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
        return self._closed or not self._broken

    def put(self, events: Sequence[NewEvent], *, wait: bool = False) -> int:
        """Accept events for the next group; return how many (a prefix) were accepted.

        Never raises and never talks to Redis on the caller's thread. ``wait=True`` returns once
        Redis answered for the group holding these events (or they were kept in memory).
        """
        self._check_fork()
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
                self._log.error(
                    "full",
                    "capi outbox %s: full (%d waiting, %d in memory); new events are dropped "
                    "and counted",
                    self.where,
                    self._books.waiting,
                    in_memory + len(self._buffer),
                )
            if not accepted:
                return 0
            if self._broken:
                # Redis is unreachable: straight to the memory buffer, nothing to wait for.
                for e in accepted:
                    self._buffer[self._next_buffer_id] = _Buffered(e)
                    self._next_buffer_id -= 1
                self._accepted_seq += len(accepted)
                self._settled_seq += len(accepted)
                return len(accepted)
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.extend(accepted)
            self._accepted_seq += len(accepted)
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
        with self._cond:
            self._start_writer()
            if self._paused_until > now:
                return out
            for local_id, c in self._claimed.items():
                if len(out) >= limit:
                    break
                if not c.in_flight and c.not_before <= now:
                    c.in_flight = True
                    out.append(c.stored(local_id))
            for local_id, b in self._buffer.items():
                if len(out) >= limit:
                    break
                if b.not_before <= now and b.leased_until <= now:
                    b.leased_until = now + lease_seconds
                    e = b.event
                    stored = (local_id, e.pixel_id, e.payload, e.event_id, e.event_time)
                    out.append(StoredEvent(*stored, e.action_source, b.attempts))
            held = sum(1 for c in self._claimed.values() if not c.in_flight)
            room = limit - len(out)
            if self._broken or room <= 0 or held >= self._max_held:
                return out
        taken = self._read_stream(room, now)
        out.extend(taken)
        return out

    def ack(self, ids: Sequence[int]) -> None:
        """Meta accepted these: delete their entries (``XACK`` + ``XDEL``)."""
        self._check_fork()
        entries: list[bytes] = []
        with self._cond:
            for local_id in ids:
                if local_id < 0:
                    if self._buffer.pop(local_id, None) is not None:
                        self._local_delivered += 1
                else:
                    c = self._claimed.pop(local_id, None)
                    if c is not None:
                        self._claimed_entries.discard(c.entry)
                        entries.append(c.entry)
            if not entries:
                return
            if self._broken:
                self._deferred_acks.extend(entries)
                return
        if not self._settle(entries):
            with self._cond:
                self._deferred_acks.extend(entries)

    def retry(self, ids: Sequence[int], *, not_before: float) -> None:
        """Keep these events here, leased, until ``not_before``; attempts += 1."""
        self._check_fork()
        with self._cond:
            for local_id in ids:
                if local_id < 0:
                    b = self._buffer.get(local_id)
                    if b is not None:
                        b.attempts += 1
                        b.not_before = not_before
                        b.leased_until = 0.0
                else:
                    c = self._claimed.get(local_id)
                    if c is not None:
                        c.attempts += 1
                        c.not_before = not_before
                        c.in_flight = False

    def dead_letter(self, ids: Sequence[int], letter: DeadLetter) -> None:
        """Move these entries to the dead-letter stream, with why."""
        self._check_fork()
        entries: list[bytes] = []
        with self._cond:
            for local_id in ids:
                if local_id < 0:
                    if self._buffer.pop(local_id, None) is not None:
                        # Never reached Redis: counted and logged (by the sender), not stored.
                        self._local_dead[letter.reason] += 1
                else:
                    c = self._claimed.pop(local_id, None)
                    if c is not None:
                        self._claimed_entries.discard(c.entry)
                        entries.append(c.entry)
            if not entries:
                return
            if self._broken:
                self._deferred_dead.append((entries, letter))
                return
        if not self._bury(entries, letter):
            with self._cond:
                self._deferred_dead.append((entries, letter))

    def backlog(self) -> int:
        """The stream's entries (every host's) plus this process's events still in memory.

        As of the last reading: no network I/O (the writer refreshes it).
        """
        self._check_fork()
        with self._cond:
            return self._books.waiting + self._in_memory()

    def next_due(self) -> float | None:
        """When something may be claimable: pending groups and unclaimed entries soon."""
        self._check_fork()
        now = time.time()
        with self._cond:
            due: list[float] = []
            if self._pending or self._committing:
                due.append(0.0)
            due.extend(max(b.not_before, b.leased_until) for b in self._buffer.values())
            due.extend(c.not_before for c in self._claimed.values() if not c.in_flight)
            if self._books.waiting > len(self._claimed):
                # Entries that may be no one's yet (another host's, or a dead consumer's).
                due.append(now + 0.25)
            if not due:
                return None
            return max(min(due), self._paused_until)

    def close(self, timeout: float | None = None) -> None:
        """Add what is pending, move the memory buffer to Redis if it can, hand back held entries.

        Events still in memory when Redis stays unreachable are lost and counted (`books`).
        """
        self._check_fork()
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._cond.notify_all()
            writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(self._wait_timeout if timeout is None else timeout)
        self._commit_pending()
        if self._broken:
            self._repair()
        self._hand_back_held()
        with self._cond:
            lost = len(self._buffer) + len(self._pending)
            self._lost += lost
            self._buffer.clear()
            self._pending.clear()
            self._closed = True
            self._cond.notify_all()
        if lost:
            logger.error(
                "capi outbox %s: %d events held in memory could not reach Redis and are lost",
                self.where,
                lost,
            )
        if self._own_client:
            with contextlib.suppress(Exception):
                self._client.close()
        _LIVE_STORES.discard(self)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event put so far reached Redis (or memory); True if so."""
        self._check_fork()
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

    # -- SharedStore -------------------------------------------------------------------------

    def books(self) -> StoreBooks:
        """The fleet's books as last read, plus this process's part still in memory."""
        self._check_fork()
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

    def share_pause(self, seconds: float, *, pixel_id: str | None = None) -> None:
        """Tell every host to pause (a rate limit), or to pause one pixel (a refused token)."""
        self._check_fork()
        until_ms = int((time.time() + seconds) * 1000)
        field = ALL_PIXELS if pixel_id is None else pixel_id
        try:
            self._scripts["pause"](
                keys=[self.keys.pauses], args=[field, until_ms, int(seconds * 1000) + 1000]
            )
        except self._errors as exc:
            self._failed("pause", exc)

    def clear_pauses(self) -> None:
        """End every shared pause (``Sender.resume``)."""
        self._check_fork()
        with self._cond:
            self._paused_until = 0.0
            self._pixel_paused.clear()
        try:
            self._client.delete(self.keys.pauses)
        except self._errors as exc:
            self._failed("pause", exc)

    def __repr__(self) -> str:
        return f"RedisStore({self.where!r}, consumer={self.consumer!r}, durable={self.durable})"

    # -- talking to Redis --------------------------------------------------------------------

    def _in_memory(self) -> int:
        return len(self._pending) + self._committing + len(self._buffer)

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self._client.xgroup_create(self.keys.events, GROUP, id="0", mkstream=True)
        except self._errors as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _read_stream(self, count: int, now: float) -> list[StoredEvent]:
        """Take up to ``count`` entries: a dead consumer's (lease over), then new ones."""
        mono = time.monotonic()
        autoclaim = mono >= self._next_autoclaim
        lease_ms = int(self._lease_seconds * 1000)
        args = [GROUP, self.consumer, int(now * 1000), count, "1" if autoclaim else "0",
                lease_ms, self._autoclaim_cursor]  # fmt: skip
        try:
            self._ensure_group()
            try:
                reply = self._scripts["claim"](keys=[self.keys.events, self.keys.pauses], args=args)
            except self._errors as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The stream or group is gone (a Redis without AOF restarted, a FLUSHALL).
                self._group_ready = False
                self._ensure_group()
                reply = self._scripts["claim"](keys=[self.keys.events, self.keys.pauses], args=args)
        except self._errors as exc:
            self._failed("claim", exc)
            return []
        pauses, cursor, flat = unpack_msgpack(reply)
        self._note_pauses(pauses, now)
        if cursor is not False:
            self._autoclaim_cursor = cursor.decode()
            if self._autoclaim_cursor == "0-0":
                self._next_autoclaim = mono + max(0.2, self._lease_seconds / 4)
        step = ENTRY_FIELDS + 1
        entries = [(flat[k], flat[k + 1 : k + step]) for k in range(0, len(flat), step)]
        out: list[StoredEvent] = []
        malformed: dict[str, list[bytes]] = {}
        with self._cond:
            for entry, fields in entries:
                if entry in self._claimed_entries:
                    continue  # ours already (taken over from ourselves after a stall)
                parsed = parse_entry(fields)
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
            if entries:
                self._cond.notify_all()  # the writer renews the leases from now on
        for reason, ids in malformed.items():
            logger.warning(
                "capi outbox %s: %d malformed entr%s dead-lettered (%s)",
                self.where,
                len(ids),
                "y" if len(ids) == 1 else "ies",
                reason,
            )
            if not self._bury(ids, DeadLetter("malformed", message=reason)):
                with self._cond:
                    self._deferred_dead.append((ids, DeadLetter("malformed", message=reason)))
        return out

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
        with self._cond:
            self._paused_until = every
            self._pixel_paused = pixel

    def _settle(self, entries: Sequence[bytes]) -> bool:
        try:
            for chunk in _chunks(entries):
                reply = self._scripts["settle"](
                    keys=[self.keys.events, self.keys.books], args=[GROUP, *chunk]
                )
                self._set_books(parse_books(reply))
        except self._errors as exc:
            self._failed("ack", exc)
            return False
        return True

    def _bury(self, entries: Sequence[bytes], letter: DeadLetter) -> bool:
        head = [
            GROUP, letter.reason, "" if letter.code is None else letter.code,
            "" if letter.subcode is None else letter.subcode, letter.message[:1000],
            letter.fbtrace_id or "", f"{time.time():.3f}", self.consumer, self._max_dead,
        ]  # fmt: skip
        try:
            for chunk in _chunks(entries):
                reply = self._scripts["dead"](
                    keys=[self.keys.events, self.keys.books, self.keys.dead], args=[*head, *chunk]
                )
                self._set_books(parse_books(reply))
        except self._errors as exc:
            self._failed("dead_letter", exc)
            return False
        return True

    def _set_books(self, books: Books) -> None:
        with self._cond:
            self._books = books

    def _hand_back_held(self) -> None:
        """At close: entries held for a retry go back to the stream for another host."""
        with self._cond:
            held = [c.entry for c in self._claimed.values()]
            self._claimed.clear()
            self._claimed_entries.clear()
        if not held or self._broken:
            return
        try:
            for chunk in _chunks(held):
                self._scripts["requeue"](keys=[self.keys.events], args=[GROUP, *chunk])
        except self._errors as exc:
            self._failed("hand back", exc)

    def _failed(self, operation: str, exc: BaseException) -> None:
        """Note that Redis failed: log once per kind, buffer in memory, retry with backoff."""
        kind = type(exc).__name__
        self._log.error(
            f"{operation}:{kind}",
            "capi outbox %s: %s failed (%s); events wait in memory (up to %d) and Redis is "
            "retried with backoff",
            self.where,
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

    # -- the writer thread -------------------------------------------------------------------

    def _start_writer(self) -> None:
        """Start the writer thread if it is not running (called with _cond held)."""
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
                        if self._claimed and now >= self._next_renew:
                            task = "renew"
                            break
                        if now >= self._next_refresh:
                            task = "refresh"
                            break
                        waits.append(self._next_refresh - now)
                        if self._claimed:
                            waits.append(self._next_renew - now)
                    self._cond.wait(max(0.001, min(waits)) if waits else None)
                if self._closing and not group and not task:
                    return
            try:
                if group:
                    self._commit(group)
                elif task == "repair":
                    self._repair()
                elif task == "renew":
                    self._renew()
                elif task == "refresh":
                    self._refresh()
            except Exception:  # the writer must outlive any surprise; the next round retries
                logger.exception("capi outbox %s: writer error", self.where)
                with self._cond:
                    self._cond.wait(0.5)

    def _commit(self, group: list[NewEvent]) -> None:
        """Add one group (one script per chunk), or keep what Redis did not take in memory."""
        added = 0
        if not self._broken:
            try:
                self._ensure_group()
                for start in range(0, len(group), _SCRIPT_CHUNK):
                    chunk = group[start : start + _SCRIPT_CHUNK]
                    books = self._add(chunk)
                    # The chunk's books and its leaving memory are published together.
                    with self._cond:
                        self._books = books
                        self._committing -= len(chunk)
                    added += len(chunk)
            except self._errors as exc:
                self._failed("add", exc)
        with self._cond:
            for e in group[added:]:
                self._buffer[self._next_buffer_id] = _Buffered(e)
                self._next_buffer_id -= 1
            self._committing = 0
            self._settled_seq += len(group)
            self._next_refresh = time.monotonic() + self._refresh_interval
            self._cond.notify_all()

    def _add(self, events: Sequence[NewEvent]) -> Books:
        reply = self._scripts["add"](
            keys=[self.keys.events, self.keys.books], args=[encode_group(events)]
        )
        return parse_books(reply)

    def _commit_pending(self) -> None:
        with self._cond:
            group, self._pending = self._pending, []
            self._committing = len(group)
        if group:
            self._commit(group)

    def _repair(self) -> None:
        """Reach Redis again: deferred acks and dead letters, then the memory buffer."""
        try:
            self._client.ping()
            self._ensure_group()
        except self._errors:
            with self._cond:
                self._retry_delay = min(self._reconnect_max, self._retry_delay * 2)
                self._retry_at = time.monotonic() + self._retry_delay
            return
        with self._cond:
            acks, self._deferred_acks = self._deferred_acks, []
            deads, self._deferred_dead = self._deferred_dead, []
            moving = [(i, b) for i, b in self._buffer.items() if b.leased_until <= time.time()]
            self._broken = False
        ok = True
        if acks:
            ok = self._settle(acks)
        for entries, letter in deads:
            ok = ok and self._bury(entries, letter)
        if ok and moving:
            try:
                for start in range(0, len(moving), _SCRIPT_CHUNK):
                    part = moving[start : start + _SCRIPT_CHUNK]
                    books = self._add([b.event for _, b in part])
                    with self._cond:
                        self._books = books
                        for local_id, _ in part:
                            self._buffer.pop(local_id, None)
            except self._errors as exc:
                self._failed("add", exc)
                ok = False
        if not ok:
            return
        self._refresh()
        with self._cond:
            recovered = self._log.reset() and not self._broken
        if recovered:
            logger.warning(
                "capi outbox %s: Redis answers again; %d events moved there from memory",
                self.where,
                len(moving),
            )

    def _renew(self) -> None:
        """Reset the idle time of every entry this process holds, so no host takes them over."""
        with self._cond:
            entries = [c.entry for c in self._claimed.values()]
            self._next_renew = time.monotonic() + max(0.05, self._lease_seconds / 3)
        try:
            for chunk in _chunks(entries):
                self._client.xclaim(
                    self.keys.events, GROUP, self.consumer, 0, list(chunk), justid=True
                )
        except self._errors as exc:
            self._failed("renew", exc)

    def _refresh(self) -> None:
        try:
            reply = self._scripts["books"](keys=[self.keys.events, self.keys.books])
        except self._errors as exc:
            self._failed("read", exc)
            return
        with self._cond:
            self._books = parse_books(reply)
            self._next_refresh = time.monotonic() + self._refresh_interval


def _chunks(items: Sequence[bytes]) -> list[Sequence[bytes]]:
    return [items[i : i + _SCRIPT_CHUNK] for i in range(0, len(items), _SCRIPT_CHUNK)]


def _redis_errors() -> tuple[type[BaseException], ...]:
    """What a Redis call raises when Redis is down, slow, restarting or refuses a command."""
    try:
        import redis
    except ImportError:  # a duck-typed client: treat any error of it as Redis failing
        return (Exception,)
    return (redis.RedisError, OSError)


def _flush_all_at_exit() -> None:
    """Add what is pending in every open store when the interpreter exits (not a close)."""
    for store in list(_LIVE_STORES):
        with contextlib.suppress(Exception):
            if store._pid == os.getpid() and not store._closed:
                store.flush(timeout=2.0)


def _reopen_all_in_child() -> None:
    for store in list(_LIVE_STORES):
        store.reopen_after_fork()


atexit.register(_flush_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reopen_all_in_child)
