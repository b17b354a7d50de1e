"""The durable `EventStore`: a SQLite outbox that survives crashes, shared by worker processes.

This module is the row store (put, claim, ack, retry, dead-letter, backlog); the writing side and
its degraded mode (group-commit writer, memory fallback, repair) are `OutboxWriter`
(``outbox_writer``), the SQL and row shapes ``outbox_rows``, the file's schema ``outbox_schema``.

How it keeps its promises (the design is written up in docs/outbox.md):

- ``put`` appends to an in-memory list and wakes one writer thread, which commits what has
  gathered every ``commit_interval`` seconds in one transaction (group commit). The request
  thread never touches the file; ``put(..., wait=True)`` blocks until its group is committed.
- Rows are JSON text (never pickle), the file is created mode 0600, the journal is WAL and a
  ``busy_timeout`` lets several processes (gunicorn ``-w 4``) share one file.
- ``claim`` leases rows atomically across processes (``BEGIN IMMEDIATE``): a row leased by one
  worker is not handed to another until the lease ends, so a killed worker's events come back.
- When the file cannot be opened or written (read-only, deleted directory, disk full), ``put``
  still succeeds: events wait in a bounded memory buffer that ``claim`` also serves, each kind
  of error is logged once, and the writer retries the disk every ``reopen_interval`` seconds.

Times: ``claim(now=...)``, ``retry(not_before=...)`` and the leases stored in the file are in the
caller's clock, which must be wall-clock seconds (``time.time()``) because rows outlive the
process and are shared between processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capi_middleware.delivery import store_hooks
from capi_middleware.delivery.outbox_rows import (
    CLAIM_DUE,
    DEAD_FROM_EVENT,
    DEAD_FROM_MEMORY,
    MemoryRow,
    OnceLog,
    Prepared,
    dead_values,
    error_kind,
    new_owner_token,
)
from capi_middleware.delivery.outbox_schema import (
    SCHEMA_VERSION,
    OutboxFileError,
    immediate_transaction,
    open_outbox_file,
)
from capi_middleware.delivery.outbox_writer import OutboxWriter
from capi_middleware.delivery.store import DeadLetter, NewEvent, StoredEvent

__all__ = ["SCHEMA_VERSION", "OutboxFileError", "SQLiteStore", "open_outbox_file"]

logger = logging.getLogger("capi_middleware.delivery")

# Connections a forked child inherited from its parent. SQLite forbids using them in the child,
# and closing one there could checkpoint or delete the parent's WAL, so they are kept alive here
# and never touched again (https://www.sqlite.org/howtocorrupt.html section 2.6).
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


class SQLiteStore(OutboxWriter):
    """Events waiting for delivery, in a SQLite file that survives crashes and restarts.

    Parameters:
        path: the outbox file; created (mode 0600, parent directories 0700) when missing.
            Several processes may open the same file.
        memory_fallback: events held in memory while the file cannot take them (read-only,
            missing directory, disk full); past this ``put`` accepts fewer and the caller
            counts the rest as dropped.
        commit_interval: the group-commit window in seconds: an event ``put`` without waiting
            is committed within about this long (plus the commit itself).
        max_pending: events accepted but not yet committed at most (normally only a few
            milliseconds' worth); past it ``put`` accepts fewer.
        busy_timeout: seconds to wait for another process's write lock.
        reopen_interval: seconds between attempts to reopen the file and move the
            memory-held events back to disk after a failure.
        max_bytes: cap the file's size (SQLite ``max_page_count``). New rows stop an eighth
            short of it, room kept for the leases that claims write into the rows; past that
            new events are held in memory as on a full disk. None: no cap.
        synchronous: SQLite ``synchronous`` pragma. ``"NORMAL"`` (default) survives a crash of
            the process; ``"FULL"`` also survives a power loss, at an fsync per group.
        wait_timeout: seconds at most that ``put(..., wait=True)`` waits for its group.
        max_events: the backlog (the file's rows plus events in memory) at most; past it
            ``put`` accepts fewer. The file's row count is tracked as this process writes and
            acknowledges, and re-read on each `backlog` call (other processes' rows). None: no
            limit but the disk and ``max_bytes``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        memory_fallback: int = 10_000,
        commit_interval: float = 0.005,
        max_pending: int = 10_000,
        busy_timeout: float = 5.0,
        reopen_interval: float = 5.0,
        max_bytes: int | None = None,
        synchronous: str = "NORMAL",
        wait_timeout: float = 30.0,
        max_events: int | None = None,
    ) -> None:
        for name, value in (("memory_fallback", memory_fallback), ("max_pending", max_pending)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: must be a non-negative integer")
        if max_pending < 1:
            raise ValueError("max_pending: must be at least 1")
        for name, seconds in (
            ("commit_interval", commit_interval),
            ("busy_timeout", busy_timeout),
            ("wait_timeout", wait_timeout),
        ):
            if not isinstance(seconds, (int, float)) or not 0 <= seconds < float("inf"):
                raise ValueError(f"{name}: must be a non-negative number of seconds")
        if not isinstance(reopen_interval, (int, float)) or not 0 < reopen_interval < 1e9:
            raise ValueError("reopen_interval: must be a positive number of seconds")
        if max_events is not None and (
            isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1
        ):
            raise ValueError("max_events: must be a positive integer, or None")
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 4096):
            raise ValueError("max_bytes: must be at least 4096 bytes, or None")
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous: must be OFF, NORMAL, FULL or EXTRA")

        self.path = Path(os.fspath(path))
        self._memory_fallback = memory_fallback
        self._commit_interval = float(commit_interval)
        self._max_pending = max_pending
        self._busy_timeout = float(busy_timeout)
        self._reopen_interval = float(reopen_interval)
        self._max_bytes = max_bytes
        self._max_events = max_events
        self._synchronous = synchronous.upper()
        self._wait_timeout = float(wait_timeout)
        self._log = OnceLog()
        self._closed = False
        self._init_process_state()
        store_hooks.register(self)
        with self._db_lock:
            self._open_or_fall_back()

    # -- process-local state (rebuilt after fork) -------------------------------------------

    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        self.lease_owner = new_owner_token()
        # Lock order: _db_lock, then _cond. put() takes only _cond, so a slow commit never
        # blocks a request thread.
        self._db_lock = threading.RLock()
        self._cond = threading.Condition(threading.Lock())
        self._conn: sqlite3.Connection | None = None
        self._file_id: tuple[int, int] | None = None
        self._broken = False  # the last write failed: new events go to memory until repaired
        self._pending: list[Prepared] = []
        self._pending_since = 0.0
        self._committing = 0  # events taken out of _pending whose commit is in progress
        self._accepted_seq = 0  # events put so far
        self._settled_seq = 0  # events committed, or moved to memory, so far
        self._memory: dict[int, MemoryRow] = {}  # negative ids, insertion order = age
        self._next_memory_id = -1
        self._deferred_acks: set[int] = set()  # acked while the disk failed; deleted later
        self._next_repair = 0.0
        self._next_identity_check = 0.0
        self._closing = False
        self._writer: threading.Thread | None = None
        self._lazy_open = False
        self._rows_estimate = 0  # rows in the file, for max_events; refreshed by backlog()
        self._insert_pages: int | None = None  # set on opening a capped file

    def reopen_after_fork(self) -> None:
        """Start this store afresh in a forked child: its own connection, threads and leases.

        The parent's connection is abandoned, never used or closed here (SQLite connections must
        not cross ``fork()``); the parent's pending and memory-held events stay the parent's.
        Called automatically in the child (``os.register_at_fork``) and when a pid change is seen.
        """
        if self._conn is not None:
            _INHERITED_CONNECTIONS.append(self._conn)
        self._init_process_state()
        # Opened on first use: a child that never uses this store (the sender may open its
        # own) costs no connection.
        self._lazy_open = not self._closed

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:
            self.reopen_after_fork()

    # -- EventStore --------------------------------------------------------------------------

    @property
    def durable(self) -> bool:
        """True while events go to the file; False while the disk fails and they wait in memory."""
        opened = self._conn is not None or self._lazy_open  # after fork: opened on first use
        return opened and not self._broken and not self._closed

    def put(self, events: Sequence[NewEvent], *, wait: bool = False) -> int:
        """Accept events for the next group commit; return how many (a prefix) were accepted.

        Never raises and never touches the file on the caller's thread. An event whose payload
        is not UTF-8 JSON ends the accepted prefix. ``wait=True`` returns once the group holding
        these events is committed (or, when the disk fails, kept in memory; see `durable`).
        """
        self._check_fork()
        now = time.time()
        prepared: list[Prepared] = []
        for event in events:
            item = self._prepare(event, now)
            if item is None:
                break
            prepared.append(item)
        with self._cond:
            if self._closed or self._closing:
                return 0
            in_memory = len(self._pending) + self._committing
            if self._broken:
                room = self._memory_fallback - in_memory - len(self._memory)
            else:
                room = self._max_pending - in_memory
            if self._max_events is not None:
                held = self._rows_estimate + in_memory + len(self._memory)
                room = min(room, self._max_events - held)
            accepted = prepared[: max(0, room)]
            if len(accepted) < len(prepared):
                self._log.error(
                    "memory_full",
                    "capi outbox %s: %s events wait in memory, the most allowed; new events are "
                    "dropped until the file takes them",
                    self.path,
                    in_memory + len(self._memory),
                )
            if not accepted:
                return 0
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
                        self._log.error(
                            "wait_timeout",
                            "capi outbox %s: a commit took longer than %.1fs",
                            self.path,
                            self._wait_timeout,
                        )
                        break
                    self._cond.wait(remaining)
        return len(accepted)

    def claim(self, limit: int, *, lease_seconds: float, now: float) -> list[StoredEvent]:
        """Lease up to ``limit`` due events no live lease holds: memory-held ones, then the file's.

        The file part is one ``BEGIN IMMEDIATE`` transaction, so two processes never lease the
        same row at once.
        """
        self._check_fork()
        out: list[StoredEvent] = []
        if limit <= 0 or self._closed:
            return out
        lease_until = now + lease_seconds
        # Memory-held events first: they are the ones a crash would lose.
        with self._cond:
            for row_id, row in self._memory.items():
                if len(out) >= limit:
                    break
                if row.not_before <= now and (row.lease_until is None or row.lease_until <= now):
                    row.lease_until = lease_until
                    out.append(row.stored(row_id))
        remaining = limit - len(out)
        if remaining <= 0:
            return out
        with self._db_lock:
            conn = self._connection()
            if conn is None:
                return out
            try:
                rows = self._lease_rows(conn, remaining, lease_until=lease_until, now=now)
            except (sqlite3.Error, OSError) as exc:
                self._storage_failed("claim", exc)
                return out
        out.extend(
            StoredEvent(
                id=r[0],
                pixel_id=r[1],
                payload=r[2].encode("utf-8"),
                event_id=r[3],
                event_time=r[4],
                action_source=r[5],
                attempts=r[6],
            )
            for r in rows
        )
        return out

    def ack(self, ids: Sequence[int]) -> None:
        """Meta accepted these: delete their rows ("delivered rows are pruned")."""
        self._check_fork()
        disk_ids = self._forget_memory_rows(ids)
        if not disk_ids or self._closed:
            return
        with self._db_lock:
            if not self._delete_rows(disk_ids):
                # The rows stay leased to us; deleting them is retried with the next repair, and
                # should we die first, Meta drops the resent copy by event_id.
                self._deferred_acks.update(disk_ids)
                with self._cond:
                    self._cond.notify_all()

    def retry(self, ids: Sequence[int], *, not_before: float) -> None:
        """Release the leases; the events become due at ``not_before``; attempts += 1.

        A row whose lease another process has taken over (ours expired) is left to that process.
        """
        self._check_fork()
        disk_ids: list[int] = []
        with self._cond:
            for row_id in ids:
                row = self._memory.get(row_id)
                if row is not None:
                    row.attempts += 1
                    row.not_before = not_before
                    row.lease_until = None
                elif row_id > 0:
                    disk_ids.append(row_id)
        if not disk_ids or self._closed:
            return
        with self._db_lock:
            conn = self._connection()
            if conn is None:
                return
            try:
                with immediate_transaction(conn):
                    conn.executemany(
                        "UPDATE events SET attempts = attempts + 1, not_before = ?,"
                        " lease_owner = NULL, lease_until = NULL"
                        " WHERE id = ? AND (lease_owner IS NULL OR lease_owner = ?)",
                        [(not_before, i, self.lease_owner) for i in disk_ids],
                    )
            except (sqlite3.Error, OSError) as exc:
                # The lease runs out on its own and the rows come back; only the attempt count
                # and the backoff are lost.
                self._storage_failed("retry", exc)

    def dead_letter(self, ids: Sequence[int], letter: DeadLetter) -> None:
        """Move these events to the ``dead_letters`` table with why, for inspection and replay."""
        self._check_fork()
        memory_rows: list[MemoryRow] = []
        disk_ids: list[int] = []
        with self._cond:
            for row_id in ids:
                row = self._memory.pop(row_id, None)
                if row is not None:
                    memory_rows.append(row)
                elif row_id > 0:
                    disk_ids.append(row_id)
        if (not disk_ids and not memory_rows) or self._closed:
            return
        now = time.time()
        reason = (letter.reason, letter.code, letter.subcode, letter.message, letter.fbtrace_id)
        with self._db_lock:
            conn = self._connection()
            try:
                if conn is None:
                    raise sqlite3.OperationalError("the outbox file is not open")
                with immediate_transaction(conn):
                    for i in disk_ids:
                        conn.execute(DEAD_FROM_EVENT, (*reason, now, i))
                        conn.execute("DELETE FROM events WHERE id = ?", (i,))
                        self._rows_estimate = max(0, self._rows_estimate - 1)
                    conn.executemany(
                        DEAD_FROM_MEMORY,
                        [(*dead_values(r.prepared, r.attempts), *reason, now) for r in memory_rows],
                    )
            except (sqlite3.Error, OSError) as exc:
                self._storage_failed("dead_letter", exc)
                if memory_rows:
                    self._log.error(
                        "dead_letter_lost",
                        "capi outbox %s: dead letters could not be written; they are only "
                        "logged and counted",
                        self.path,
                    )

    def backlog(self) -> int:
        """Events accepted and not yet acknowledged or dead-lettered, leased ones included.

        Counts every row of the file's ``events`` table (other processes' events too: they are
        this file's backlog and any worker may deliver them), plus this process's events that
        wait for their group commit or are held in memory because the disk failed. Exact for a
        single process; with several, it is the file's backlog plus this process's in-memory part.
        """
        self._check_fork()
        with self._db_lock:
            on_disk = 0
            conn = self._connection()
            if conn is not None:
                try:
                    on_disk = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
                    self._rows_estimate = on_disk
                    on_disk -= len(self._deferred_acks)
                except (sqlite3.Error, OSError) as exc:
                    self._storage_failed("backlog", exc)
            with self._cond:
                return max(0, on_disk) + len(self._pending) + self._committing + len(self._memory)

    def next_due(self) -> float | None:
        """When the next event becomes claimable: its ``not_before``, or the end of its lease.

        Events waiting for their group commit are due now (0.0).
        """
        self._check_fork()
        candidates: list[float] = []
        with self._cond:
            if self._pending or self._committing:
                candidates.append(0.0)
            for row in self._memory.values():
                candidates.append(max(row.not_before, row.lease_until or 0.0))
        with self._db_lock:
            conn = self._connection()
            if conn is not None:
                try:
                    waiting = conn.execute(
                        "SELECT MIN(not_before) FROM events WHERE lease_owner IS NULL"
                    ).fetchone()[0]
                    leased = conn.execute(
                        "SELECT MIN(MAX(not_before, lease_until)) FROM events"
                        " WHERE lease_owner IS NOT NULL"
                    ).fetchone()[0]
                except (sqlite3.Error, OSError) as exc:
                    self._storage_failed("next_due", exc)
                else:
                    candidates.extend(float(v) for v in (waiting, leased) if v is not None)
        return min(candidates) if candidates else None

    def flush_at_exit(self) -> None:
        """Commit what is pending if this process's store is open (`store_hooks`' exit hook)."""
        if self._pid == os.getpid() and not self._closed:
            self.flush(timeout=2.0)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event put so far is committed (or held in memory); True if so."""
        self._check_fork()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._accepted_seq
            while self._settled_seq < target and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Commit what is pending, move memory-held events to disk if it can, close the file.

        Events not yet delivered stay in the file for the next start. Memory-held events that
        still cannot be written are lost, and their number is logged.
        """
        if os.getpid() != self._pid:  # a forked child closing what it inherited
            self.reopen_after_fork()
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._cond.notify_all()
            writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(self._wait_timeout if timeout is None else timeout)
        with self._db_lock:
            self._drain_pending()
            self._repair(final=True)
            with self._cond:
                lost = len(self._memory) + len(self._pending)
                self._memory.clear()
                self._pending.clear()
                self._closed = True
                self._cond.notify_all()
            if lost:
                logger.error(
                    "capi outbox %s: %d events held in memory could not be written and are lost",
                    self.path,
                    lost,
                )
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        store_hooks.forget(self)

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, durable={self.durable})"

    def _lease_rows(
        self, conn: sqlite3.Connection, limit: int, *, lease_until: float, now: float
    ) -> list[tuple[Any, ...]]:
        """Lease up to ``limit`` due rows in one transaction; return them (needs _db_lock).

        A lease makes its row longer. In a capped file the headroom inserts leave free (see
        `insert_page_limit`) may not hold a whole batch's leases: then fewer rows are leased
        (half, down to one), so the rows a full file holds are still delivered and acked.
        """
        while True:
            try:
                with immediate_transaction(conn):
                    rows = conn.execute(CLAIM_DUE, (now, now, limit)).fetchall()
                    conn.executemany(
                        "UPDATE events SET lease_owner = ?, lease_until = ? WHERE id = ?",
                        [(self.lease_owner, lease_until, r[0]) for r in rows],
                    )
                return rows
            except sqlite3.Error as exc:
                if limit <= 1 or error_kind(exc) != "SQLITE_FULL":
                    raise
                limit //= 2

    # -- accepting ----------------------------------------------------------------------------

    def _prepare(self, event: NewEvent, now: float) -> Prepared | None:
        try:
            text = event.payload.decode("utf-8")
            body = json.loads(text)
        except (UnicodeDecodeError, ValueError):
            self._log.error(
                "invalid_payload", "capi outbox %s: an event payload is not UTF-8 JSON", self.path
            )
            return None
        name = body.get("event_name") if isinstance(body, dict) else None
        return Prepared(event, text, name if isinstance(name, str) else "", now)
