"""The SQLite outbox's writing side and its degraded mode.

`OutboxWriter` is the part of `SQLiteStore` that owns the file: the group-commit writer thread,
opening (and re-opening) the file, and what happens when the disk fails. Then events wait in a
bounded memory buffer, each kind of error is logged once, and the writer retries the file every
``reopen_interval`` seconds, moving the memory-held events back once it can (repair). A file
deleted or replaced under us has its rows carried over to a new one.

Locks (set up by `SQLiteStore`): ``_db_lock`` for the connection, then ``_cond`` for the
in-memory state; ``put`` takes only ``_cond``, so a slow commit never blocks a request thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from capi_middleware.delivery.outbox_rows import (
    GROUP_MAX,
    INSERT_EVENT,
    MemoryRow,
    OnceLog,
    Prepared,
    error_kind,
    row_values,
)
from capi_middleware.delivery.outbox_schema import (
    OutboxFileError,
    OutboxFull,
    create_outbox_connection,
    immediate_transaction,
    insert_page_limit,
    page_cap,
    used_pages,
)
from capi_middleware.delivery.store import NewEvent

__all__ = ["OutboxWriter"]

logger = logging.getLogger("capi_middleware.delivery")


class OutboxWriter:
    """The file side of `SQLiteStore` (see the module docstring); not used on its own."""

    path: Path
    _memory_fallback: int
    _commit_interval: float
    _busy_timeout: float
    _reopen_interval: float
    _max_bytes: int | None
    _synchronous: str
    _log: OnceLog
    _db_lock: threading.RLock
    _cond: threading.Condition
    _conn: sqlite3.Connection | None
    _file_id: tuple[int, int] | None
    _broken: bool
    _pending: list[Prepared]
    _pending_since: float
    _committing: int
    _settled_seq: int
    _memory: dict[int, MemoryRow]
    _next_memory_id: int
    _deferred_acks: set[int]
    _next_repair: float
    _next_identity_check: float
    _closing: bool
    _writer: threading.Thread | None
    _lazy_open: bool
    _rows_estimate: int
    _insert_pages: int | None  # with max_bytes: the pages inserts may fill (insert_page_limit)

    # -- the writer thread --------------------------------------------------------------------

    def _start_writer(self) -> None:
        """Start the writer thread if it is not running (called with _cond held)."""
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(
                target=self._write_loop, name="capi-outbox-writer", daemon=True
            )
            self._writer.start()

    def _write_loop(self) -> None:
        while True:
            group: list[Prepared] = []
            repair = False
            with self._cond:
                while not self._closing:
                    now = time.monotonic()
                    if self._pending:
                        due = self._pending_since + self._commit_interval
                        if now >= due or len(self._pending) >= GROUP_MAX:
                            group, self._pending = self._pending, []
                            self._committing = len(group)
                            break
                        self._cond.wait(due - now)
                        continue
                    if self._memory or self._deferred_acks or self._broken:
                        if now >= self._next_repair:
                            repair = True
                            break
                        self._cond.wait(self._next_repair - now)
                        continue
                    self._cond.wait(self._reopen_interval)
                    if time.monotonic() >= self._next_identity_check:
                        # Idle: look, now and then, whether the file was deleted under us.
                        self._next_identity_check = time.monotonic() + self._reopen_interval
                        repair = self._file_replaced()
                        if repair:
                            break
                if self._closing and not group and not repair:
                    return
            with self._db_lock:
                if group:
                    self._commit_group(group)
                if repair:
                    self._repair()

    def _commit_group(self, group: list[Prepared]) -> None:
        """Write one group in one transaction, or keep it in memory (called with _db_lock)."""
        committed = False
        if not self._broken:
            conn = self._connection()
            try:
                if conn is None:
                    raise sqlite3.OperationalError("the outbox file is not open")
                self._insert_rows(conn, [row_values(p, 0) for p in group])
                committed = True
            except (sqlite3.Error, OSError) as exc:
                self._storage_failed("write", exc)
        with self._cond:
            if committed:
                self._rows_estimate += len(group)
            else:
                for p in group:
                    self._memory[self._next_memory_id] = MemoryRow(p)
                    self._next_memory_id -= 1
            self._committing = 0
            self._settled_seq += len(group)
            self._cond.notify_all()

    def _drain_pending(self) -> None:
        """Commit whatever is pending right now (close(); called with _db_lock)."""
        with self._cond:
            group, self._pending = self._pending, []
            self._committing = len(group)
        if group:
            self._commit_group(group)

    # -- failure and repair -------------------------------------------------------------------

    def _storage_failed(self, operation: str, exc: BaseException) -> None:
        """Note a failed file operation: log once per kind, retry later (called with _db_lock)."""
        kind = error_kind(exc)
        if operation == "open":
            self._log.error(
                f"{operation}:{kind}",
                "capi outbox %s: open failed (%s): %s. Events wait in memory (up to %d; lost "
                "if the process exits) and opening is retried every %gs, never on a request",
                self.path,
                kind,
                _what_to_do(exc),
                self._memory_fallback,
                self._reopen_interval,
            )
        else:
            # Keyed by the kind alone: a full disk trips the write and then the claim, and is
            # one outage to the operator, logged once until the file works again.
            self._log.error(
                kind,
                "capi outbox %s: %s failed (%s); events wait in memory (up to %d) and the file "
                "is retried every %gs",
                self.path,
                operation,
                kind,
                self._memory_fallback,
                self._reopen_interval,
            )
        self._broken = True
        self._next_repair = time.monotonic() + self._reopen_interval
        conn = self._conn
        if conn is not None and kind not in ("SQLITE_FULL", "SQLITE_BUSY"):
            # Anything but a full disk or a busy lock may mean the file itself is gone or
            # damaged: reopen it on the next repair.
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.rollback()
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            self._conn = None
        with self._cond:
            self._cond.notify_all()

    def _repair(self, *, final: bool = False) -> None:
        """Reopen the file if needed, delete deferred acks, write memory-held events back.

        Called with _db_lock. Only unleased memory rows move (a leased one is in flight under
        its negative id); ``final`` (close) moves all of them with their leases dropped.
        """
        self._next_repair = time.monotonic() + self._reopen_interval
        if self._file_replaced() and self._conn is not None:
            self._adopt_rows_of_replaced_file()
        conn = self._connection()
        if conn is None:
            if not self._open_or_fall_back():
                return
            conn = self._conn
            assert conn is not None
        if self._deferred_acks:
            acks = sorted(self._deferred_acks)
            if not self._delete_rows(acks):
                return
            self._deferred_acks.difference_update(acks)
        with self._cond:
            moving = [
                (row_id, row)
                for row_id, row in self._memory.items()
                if final or row.lease_until is None
            ]
        try:
            self._insert_rows(
                conn, [row_values(r.prepared, r.attempts, r.not_before) for _, r in moving]
            )
        except (sqlite3.Error, OSError) as exc:
            self._storage_failed("write", exc)
            return
        with self._cond:
            for row_id, _ in moving:
                self._memory.pop(row_id, None)
            self._rows_estimate += len(moving)
            self._cond.notify_all()
        if self._broken:
            self._broken = False
            self._log.reset()
            logger.warning(
                "capi outbox %s: writing to the file again; %d events moved there from memory",
                self.path,
                len(moving),
            )

    def _insert_rows(self, conn: sqlite3.Connection, values: list[tuple[object, ...]]) -> None:
        """Insert ``events`` rows in one transaction, all or none (called with _db_lock).

        In a capped file the rows must leave the claims' headroom free (`insert_page_limit`),
        or the transaction is rolled back with `OutboxFull`, SQLITE_FULL's stand-in.
        """
        with immediate_transaction(conn):
            conn.executemany(INSERT_EVENT, values)
            if self._insert_pages is not None and used_pages(conn) > self._insert_pages:
                raise OutboxFull("the outbox is at max_bytes, less the room kept for claims")

    def _delete_rows(self, ids: Sequence[int]) -> bool:
        conn = self._connection()
        if conn is None:
            return False
        try:
            with immediate_transaction(conn):
                conn.executemany("DELETE FROM events WHERE id = ?", [(i,) for i in ids])
        except (sqlite3.Error, OSError) as exc:
            self._storage_failed("ack", exc)
            return False
        self._rows_estimate = max(0, self._rows_estimate - len(ids))
        return True

    def _forget_memory_rows(self, ids: Sequence[int]) -> list[int]:
        """Drop acknowledged memory-held rows; return the ids that are the file's."""
        disk_ids: list[int] = []
        with self._cond:
            for row_id in ids:
                if self._memory.pop(row_id, None) is None and row_id > 0:
                    disk_ids.append(row_id)
        return disk_ids

    # -- the file -----------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection | None:
        """The open connection, opening it first after a fork (called with _db_lock)."""
        if self._lazy_open and self._conn is None:
            self._lazy_open = False
            self._open_or_fall_back()
        return self._conn

    def _open_or_fall_back(self) -> bool:
        """Open (creating) the file; on failure log and keep events in memory. Needs _db_lock."""
        try:
            self._conn = self._connect()
        except Exception as exc:  # any failure to open is the broken-disk case (issue 10)
            self._conn = None
            self._storage_failed("open", exc)
            return False
        return True

    def _connect(self) -> sqlite3.Connection:
        path = self.path
        conn = create_outbox_connection(
            path,
            busy_timeout=self._busy_timeout,
            synchronous=self._synchronous,
            max_bytes=self._max_bytes,
            on_wal_refused=lambda mode: self._log.error(
                "no_wal",
                "capi outbox %s: the file system refused WAL mode (%s); sharing the file "
                "between processes will be slower",
                path,
                mode,
            ),
        )
        try:
            self._rows_estimate = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            self._insert_pages = None
            if self._max_bytes is not None:
                self._insert_pages = insert_page_limit(page_cap(conn, self._max_bytes))
        except BaseException:
            conn.close()
            raise
        st = os.stat(path)
        self._file_id = (st.st_dev, st.st_ino)
        return conn

    def _file_replaced(self) -> bool:
        """True when the open file was deleted or replaced under us (its inode changed)."""
        if self._file_id is None or self._conn is None:
            return False
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._file_id

    def _adopt_rows_of_replaced_file(self) -> None:
        """The file was deleted: keep its rows in memory, then open a fresh file (needs _db_lock).

        The old connection is closed before the new file is opened, because closing it removes
        the ``-wal`` and ``-shm`` files by name, which would then be the new file's.
        """
        conn = self._conn
        assert conn is not None
        self._log.error(
            "file_replaced",
            "capi outbox %s: the file was deleted or replaced while open; its events are "
            "carried over to a new file",
            self.path,
        )
        try:
            rows = conn.execute(
                "SELECT pixel_id, payload, event_id, event_time, action_source, attempts,"
                " not_before, event_name, created_at FROM events ORDER BY id"
            ).fetchall()
        except sqlite3.Error:
            rows = []
        with contextlib.suppress(sqlite3.Error):
            conn.close()
        self._conn = None
        self._file_id = None
        with self._cond:
            for r in rows[: max(0, self._memory_fallback - len(self._memory))]:
                event = NewEvent(r[0], r[1].encode("utf-8"), r[2], r[3], r[4])
                self._memory[self._next_memory_id] = MemoryRow(
                    Prepared(event, r[1], r[7], r[8]), attempts=r[5], not_before=r[6]
                )
                self._next_memory_id -= 1
        self._broken = True


def _what_to_do(exc: BaseException) -> str:
    """The advice in an open failure's log line (an `OutboxFileError` carries its own)."""
    if isinstance(exc, OutboxFileError):
        return str(exc)
    if isinstance(exc, OSError):
        return "check that its folder exists and is writable by this process, and the disk has room"
    return (
        "the file looks damaged; move it aside (keep it to inspect with `capi-middleware "
        "outbox`) so a fresh outbox is created"
    )
