"""The outbox file itself: its schema, and opening a file the way the store and the CLI need it.

This module's one job is the file-level contract of the SQLite outbox, shared by `SQLiteStore`
(which writes it) and ``capi-middleware outbox`` (which inspects it): the ``events`` and
``dead_letters`` tables and the ``PRAGMA user_version`` that versions them, creating the file
mode 0600 (and keeping its ``-wal``/``-shm`` at 0600), opening a connection with WAL, a
``busy_timeout`` and the chosen ``synchronous`` level, and recognising whether an existing file
is an outbox at all. Group commit, leases and the memory fallback stay in ``sqlite_store``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "SCHEMA_VERSION",
    "OutboxFileError",
    "OutboxFull",
    "claim_headroom",
    "create_outbox_connection",
    "insert_page_limit",
    "make_private_folders",
    "open_outbox_file",
    "page_cap",
    "used_pages",
]

SCHEMA_VERSION = 1  # PRAGMA user_version; bump with a migration in _migrate()

_SCHEMA = """
CREATE TABLE events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a stale ack hits no new row
    pixel_id      TEXT    NOT NULL,
    event_id      TEXT    NOT NULL,
    event_name    TEXT    NOT NULL DEFAULT '',
    event_time    INTEGER NOT NULL,
    action_source TEXT    NOT NULL,
    payload       TEXT    NOT NULL,                   -- the event's JSON, exactly the bytes sent
    attempts      INTEGER NOT NULL DEFAULT 0,
    not_before    REAL    NOT NULL DEFAULT 0,
    lease_owner   TEXT,
    lease_until   REAL,
    created_at    REAL    NOT NULL
);
CREATE INDEX events_waiting ON events (not_before) WHERE lease_owner IS NULL;
CREATE INDEX events_leased ON events (lease_until) WHERE lease_owner IS NOT NULL;
CREATE TABLE dead_letters (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    pixel_id      TEXT    NOT NULL,
    event_id      TEXT    NOT NULL,
    event_name    TEXT    NOT NULL DEFAULT '',
    event_time    INTEGER NOT NULL,
    action_source TEXT    NOT NULL,
    payload       TEXT    NOT NULL,
    attempts      INTEGER NOT NULL,
    created_at    REAL    NOT NULL,
    reason        TEXT    NOT NULL,
    code          INTEGER,
    subcode       INTEGER,
    message       TEXT    NOT NULL DEFAULT '',
    fbtrace_id    TEXT,
    dead_at       REAL    NOT NULL
);
"""


class OutboxFileError(Exception):
    """An outbox file that is missing, unreadable, or not an outbox (used by the CLI)."""


class OutboxFull(sqlite3.OperationalError):
    """New rows would eat into the room a capped file keeps for claims (see `insert_page_limit`).

    Handled like SQLite's own SQLITE_FULL: the events wait in memory until acks free pages.
    """

    sqlite_errorname = "SQLITE_FULL"


def page_cap(conn: sqlite3.Connection, max_bytes: int) -> int:
    """``max_bytes`` in the file's pages (2 at least)."""
    return max(2, max_bytes // int(conn.execute("PRAGMA page_size").fetchone()[0]))


def claim_headroom(cap: int) -> int:
    """The pages of a file capped at ``cap`` pages that inserts leave free for claims.

    Claiming a row writes its lease (``lease_owner``, ``lease_until``) into it, which makes the
    row longer and moves it from one partial index to the other: a file packed to its cap
    could not lease, and so never deliver, the rows it holds. Inserts therefore stop an eighth
    of the cap (4 pages at least) short of it; claims, retries, acks and dead letters may use
    that headroom, and acks give it back.
    """
    return max(4, cap // 8)


def insert_page_limit(cap: int) -> int:
    """The used pages (`used_pages`) new rows may bring a file capped at ``cap`` pages to."""
    return cap - claim_headroom(cap)


def used_pages(conn: sqlite3.Connection) -> int:
    """Pages holding data: the file's pages less its free list (deleted rows' pages)."""
    total = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int(total) - int(free)


@contextlib.contextmanager
def immediate_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction that takes the file's write lock up front (``BEGIN IMMEDIATE``).

    Taking the lock first is what makes claim atomic across processes, and avoids the deadlock
    two deferred transactions get into when both try to upgrade to writing.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:  # SQLITE_FULL may already have rolled back
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the schema in a new file; refuse a file that is not an outbox or is newer."""
    with immediate_transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise OutboxFileError(
                f"outbox schema version {version} is newer than this capi-middleware "
                f"understands ({SCHEMA_VERSION}); upgrade capi-middleware"
            )
        tables = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        if tables:
            raise OutboxFileError("the file is a SQLite database but not a capi outbox")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def create_outbox_connection(
    path: Path,
    *,
    busy_timeout: float,
    synchronous: str,
    max_bytes: int | None,
    on_wal_refused: Callable[[object], None],
) -> sqlite3.Connection:
    """Open the outbox at ``path`` for writing, creating it (and the schema) when missing.

    The connection has autocommit off (transactions are ``BEGIN IMMEDIATE`` via
    `immediate_transaction`),
    may be used from several threads under the caller's lock, and has the ``busy_timeout``,
    WAL journal, ``synchronous`` level and (with ``max_bytes``) page cap set.
    ``on_wal_refused`` is called with the journal mode the file system gave instead of WAL.

    The file is checked before anything in it changes (issue 10): a symbolic link is refused
    (we would write into whatever it points at), missing parent folders are created 0700, an
    existing file that is not an outbox (another SQLite database, any other file) is refused
    untouched, and an outbox other users can read is tightened to 0600 (or refused when that
    fails). Raises `OutboxFileError` for each refusal and for a newer schema, and
    `sqlite3.Error` / `OSError` when the file cannot be created or opened.
    """
    if path.is_symlink():
        raise OutboxFileError(_symlink_refusal(path))
    make_private_folders(path.parent)
    # Create the file ourselves so it is born 0600: the rows hold hashed user data, IPs and
    # user agents, which no other local user should read. O_NOFOLLOW: a symlink slipped in
    # since the check above is refused too. The descriptor is closed before SQLite opens the
    # file: closing any descriptor of a file drops the process's POSIX locks on it, SQLite's
    # included (https://www.sqlite.org/howtocorrupt.html section 2.2).
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutboxFileError(_symlink_refusal(path)) from None
        raise
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OutboxFileError(f"{path}: not a regular file; set outbox to a file path")
    conn = sqlite3.connect(
        str(path),
        timeout=busy_timeout,
        isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
        check_same_thread=False,  # used from several threads, always under SQLiteStore._db_lock
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        # Only reads until the file is known to be ours (or new and empty).
        _refuse_unless_outbox(conn, path)
        _make_private(path, stat.S_IMODE(st.st_mode))
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            on_wal_refused(mode)
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        _migrate(conn)
        if max_bytes is not None:
            cap = page_cap(conn, max_bytes)
            # A file already fuller than inserts may make it (max_bytes was lowered, or an
            # older version filled it to the brim) gets its headroom above what it holds, so
            # its rows can still be claimed and delivered; inserts wait until acks drain it.
            hard = max(cap, used_pages(conn) + claim_headroom(cap))
            conn.execute(f"PRAGMA max_page_count = {hard}")
    except BaseException:
        conn.close()
        raise
    for suffix in ("-wal", "-shm"):
        # SQLite gives these the database file's mode already; this covers a file whose
        # mode was changed after its WAL was created.
        with contextlib.suppress(OSError):
            os.chmod(f"{path}{suffix}", 0o600)
    return conn


def make_private_folders(folder: Path) -> None:
    """Create ``folder`` and any missing parents, each mode 0700 (``mkdir -p`` makes all but
    the last one with the umask's mode, usually 0755)."""
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for each in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(each, 0o700)


def _symlink_refusal(path: Path) -> str:
    return (
        f"{path}: is a symbolic link; refusing to write the outbox through it. "
        "Set outbox to the real file's path"
    )


def _refuse_unless_outbox(conn: sqlite3.Connection, path: Path) -> None:
    """Raise `OutboxFileError` unless the file is an outbox or new (no tables); only reads."""
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except (sqlite3.DatabaseError, UnicodeDecodeError):  # a flipped byte in the schema: the latter
        raise OutboxFileError(
            f"{path}: not a capi outbox (not a SQLite database, or damaged); "
            "left untouched. Set outbox to another path, or move this file aside"
        ) from None
    names.discard("sqlite_sequence")
    if version > SCHEMA_VERSION:
        raise OutboxFileError(
            f"outbox schema version {version} is newer than this capi-middleware "
            f"understands ({SCHEMA_VERSION}); upgrade capi-middleware"
        )
    ours = version == SCHEMA_VERSION and {"events", "dead_letters"} <= names
    if not ours and (names or version != 0):
        raise OutboxFileError(
            f"{path}: a SQLite database but not a capi outbox; left untouched. "
            "Set outbox to another path"
        )


def _make_private(path: Path, mode: int) -> None:
    """Tighten the outbox to 0600 if other users may read or write it; refuse if we can't.

    By path, not by a descriptor: closing a descriptor would drop SQLite's locks (see above).
    """
    if not mode & 0o077:
        return
    try:
        os.chmod(path, 0o600)
    except OSError as exc:
        raise OutboxFileError(
            f"{path}: mode {mode:04o} lets other users read the outbox, and it cannot be "
            f"changed to 0600 ({exc.strerror}); run chmod 600 on it, or set outbox to "
            "another path"
        ) from None


def open_outbox_file(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open an existing outbox for the CLI, never creating one.

    Raises `OutboxFileError` with a message fit for the user when the file is missing, is not a
    SQLite database, is not an outbox, or has a newer schema.
    """
    p = Path(os.fspath(path))
    if not p.exists():
        raise OutboxFileError(f"{p}: no such file")
    if not p.is_file():
        raise OutboxFileError(f"{p}: not a file")
    try:
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise OutboxFileError(f"{p}: cannot open ({exc})") from None
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError:
        conn.close()
        raise OutboxFileError(f"{p}: not a capi outbox (not a SQLite database)") from None
    if not {"events", "dead_letters"} <= names or version < 1:
        conn.close()
        raise OutboxFileError(f"{p}: not a capi outbox (no events / dead_letters tables)")
    if version > SCHEMA_VERSION:
        conn.close()
        raise OutboxFileError(
            f"{p}: outbox schema version {version} is newer than this tool ({SCHEMA_VERSION})"
        )
    return conn
