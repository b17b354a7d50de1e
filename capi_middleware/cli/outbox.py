"""``capi-middleware outbox status|dead|replay|purge PATH``: inspect a SQLite outbox, act on it.

A ``redis://`` or ``rediss://`` URL instead of a path is the fleet's Redis outbox
(`capi_middleware.cli.outbox_redis`).

Only ids, names, counts and Meta's error fields are printed, never an event's payload: the
payloads carry hashed user data, IP addresses and user agents. Stored text is printed with its
control characters escaped (`terminal.printable`): a stored message cannot drive the terminal.
A row whose values are not the types the outbox writes is shown as it is, never a traceback.

Exit codes: 0 done, 1 SQLite failed on a good file (locked, busy), 2 usage errors (including
``purge`` without ``--yes``) and a bad file: missing, not an outbox, unreadable or damaged, each
answered with one line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any

from capi_middleware.cli.terminal import (
    human_age,
    iso_time,
    print_dead_letters,
    printable,
    stored_number,
)
from capi_middleware.config import is_redis_url
from capi_middleware.delivery.outbox_schema import OutboxFileError, open_outbox_file

__all__ = ["add_outbox_parser", "main", "run_outbox"]

# Filters shared by dead / replay / purge: a NULL parameter means "any". Event ids travel as one
# JSON array, so the SQL text is fixed whatever the input.
_COUNT_MATCHING = (
    "SELECT COUNT(*) FROM dead_letters WHERE (?1 IS NULL OR reason = ?1)"
    " AND (?2 IS NULL OR event_id IN (SELECT value FROM json_each(?2)))"
)
_LIST_MATCHING = (
    "SELECT id, event_id, event_name, pixel_id, reason, code, subcode, message, fbtrace_id,"
    " attempts, dead_at FROM dead_letters WHERE (?1 IS NULL OR reason = ?1)"
    " AND (?2 IS NULL OR event_id IN (SELECT value FROM json_each(?2)))"
    " ORDER BY id DESC LIMIT ?3"
)
_REPLAY_MATCHING = (
    "INSERT INTO events (pixel_id, event_id, event_name, event_time, action_source, payload,"
    " attempts, not_before, created_at) SELECT pixel_id, event_id, event_name, event_time,"
    " action_source, payload, 0, 0, created_at FROM dead_letters"
    " WHERE (?1 IS NULL OR reason = ?1)"
    " AND (?2 IS NULL OR event_id IN (SELECT value FROM json_each(?2))) ORDER BY id"
)
_DELETE_MATCHING = (
    "DELETE FROM dead_letters WHERE (?1 IS NULL OR reason = ?1)"
    " AND (?2 IS NULL OR event_id IN (SELECT value FROM json_each(?2)))"
)


def add_outbox_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``outbox`` command and its actions to the main CLI's subparsers."""
    parser = subparsers.add_parser(
        "outbox",
        help="inspect and act on a durable outbox (status, dead, replay, purge)",
        description="Inspect an outbox (outbox=...: a SQLite file or a redis:// URL) and replay "
        "or purge its dead letters.",
    )
    _configure(parser)


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(handler=run_outbox)
    actions = parser.add_subparsers(dest="outbox_command", metavar="ACTION", required=True)

    status = actions.add_parser(
        "status", help="pending, leased and dead counts, oldest event (per consumer for Redis)"
    )
    status.add_argument("path", help="the outbox file, or redis://host:port/db[?prefix=...]")
    status.add_argument("--json", action="store_true", help="print JSON")

    dead = actions.add_parser("dead", help="list dead letters, newest first")
    dead.add_argument("path", help="the outbox file, or redis://host:port/db[?prefix=...]")
    dead.add_argument("--json", action="store_true", help="print JSON lines")
    dead.add_argument("--limit", type=_positive_int, default=50, help="at most this many")
    _add_filters(dead)

    replay = actions.add_parser(
        "replay", help="move dead letters back to pending (all, or those matching the filters)"
    )
    replay.add_argument("path", help="the outbox file, or redis://host:port/db[?prefix=...]")
    _add_filters(replay)

    purge = actions.add_parser("purge", help="delete dead letters (all, or those matching)")
    purge.add_argument("path", help="the outbox file, or redis://host:port/db[?prefix=...]")
    _add_filters(purge)
    purge.add_argument("--yes", action="store_true", help="really delete")


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", help="only dead letters with this reason (e.g. rejected)")
    parser.add_argument(
        "--event-id",
        action="append",
        dest="event_ids",
        metavar="EVENT_ID",
        help="only this event (repeatable)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run_outbox(args: argparse.Namespace) -> int:
    """Run one ``outbox`` action parsed by `add_outbox_parser`; return the exit code."""
    action = getattr(args, "outbox_command", None)
    if action not in ("status", "dead", "replay", "purge"):
        print("capi-middleware outbox: choose status, dead, replay or purge", file=sys.stderr)
        return 2
    if is_redis_url(args.path):
        from capi_middleware.cli.outbox_redis import run_redis_outbox

        return run_redis_outbox(args)
    try:
        conn = open_outbox_file(args.path)
    except OutboxFileError as exc:
        print(f"capi-middleware outbox: {printable(exc)}", file=sys.stderr)
        return 2
    except (sqlite3.Error, OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        _bad_file(args.path, exc)
        return 2
    # Stored text that is not UTF-8 is shown with its bad bytes escaped, not refused.
    conn.text_factory = lambda raw: raw.decode("utf-8", "backslashreplace")
    try:
        if action == "status":
            return _status(conn, args)
        if action == "dead":
            return _dead(conn, args)
        if action == "replay":
            return _replay(conn, args)
        return _purge(conn, args)
    except sqlite3.OperationalError as exc:  # locked, busy, read-only: the file is fine
        print(
            f"capi-middleware outbox: {printable(args.path)}: SQLite error: {printable(exc)}",
            file=sys.stderr,
        )
        return 1
    except sqlite3.Error as exc:  # "database disk image is malformed" and the like
        _bad_file(args.path, exc)
        return 2
    finally:
        conn.close()


def _bad_file(path: object, exc: BaseException) -> None:
    print(
        f"capi-middleware outbox: {printable(path)}: cannot read this outbox "
        f"({type(exc).__name__}: {printable(exc)}); is it damaged or not an outbox?",
        file=sys.stderr,
    )


# -- actions ----------------------------------------------------------------------------------


def _status(conn: sqlite3.Connection, args: argparse.Namespace) -> int:
    now = time.time()
    per_pixel: dict[str, dict[str, int]] = {}
    for pixel, leased, retrying, n in conn.execute(
        "SELECT pixel_id, lease_until IS NOT NULL AND lease_until > ?1, not_before > ?1, COUNT(*)"
        " FROM events GROUP BY 1, 2, 3",
        (now,),
    ):
        # Keys as printable text: a pixel id stored as a number, NULL or odd bytes still sorts.
        pixel = printable(pixel)
        counts = per_pixel.setdefault(pixel, {"pending": 0, "leased": 0, "retrying": 0, "dead": 0})
        if leased:
            counts["leased"] += n
        else:
            counts["pending"] += n
            if retrying:
                counts["retrying"] += n
    for pixel, n in conn.execute("SELECT pixel_id, COUNT(*) FROM dead_letters GROUP BY 1"):
        pixel = printable(pixel)
        counts = per_pixel.setdefault(pixel, {"pending": 0, "leased": 0, "retrying": 0, "dead": 0})
        counts["dead"] = n
    oldest = stored_number(
        conn.execute(
            "SELECT MIN(created_at) FROM events WHERE typeof(created_at) IN ('integer', 'real')"
        ).fetchone()[0]
    )
    report: dict[str, Any] = {
        "path": str(args.path),
        "file_bytes": _file_bytes(str(args.path)),
        "pending": sum(c["pending"] for c in per_pixel.values()),
        "retrying": sum(c["retrying"] for c in per_pixel.values()),
        "leased": sum(c["leased"] for c in per_pixel.values()),
        "dead": sum(c["dead"] for c in per_pixel.values()),
        "oldest_event_age_seconds": None if oldest is None else max(0.0, round(now - oldest, 1)),
        "pixels": dict(sorted(per_pixel.items())),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    age = report["oldest_event_age_seconds"]
    print(f"outbox:   {printable(report['path'])} ({_human_bytes(report['file_bytes'])})")
    print(f"pending:  {report['pending']} (waiting for a retry: {report['retrying']})")
    print(f"leased:   {report['leased']} (being sent by a worker)")
    print(f"dead:     {report['dead']}")
    print(f"oldest:   {'-' if age is None else human_age(age)} old")
    if per_pixel:
        print("per pixel:")
        for pixel, c in report["pixels"].items():
            print(f"  {pixel}: pending {c['pending']}, leased {c['leased']}, dead {c['dead']}")
    return 0


def _dead(conn: sqlite3.Connection, args: argparse.Namespace) -> int:
    params = _filter_params(args)
    total = conn.execute(_COUNT_MATCHING, params).fetchone()[0]
    rows = conn.execute(_LIST_MATCHING, (*params, args.limit)).fetchall()
    letters = [
        {
            "id": _json_value(r[0]),
            "event_id": _json_value(r[1]),
            "event_name": _json_value(r[2]),
            "pixel_id": _json_value(r[3]),
            "reason": _json_value(r[4]),
            "code": _json_value(r[5]),
            "subcode": _json_value(r[6]),
            "message": _json_value(r[7]),
            "fbtrace_id": _json_value(r[8]),
            "attempts": _json_value(r[9]),
            "time": iso_time(r[10]),
        }
        for r in rows
    ]
    print_dead_letters(letters, total, as_json=args.json)
    return 0


def _replay(conn: sqlite3.Connection, args: argparse.Namespace) -> int:
    params = _filter_params(args)
    conn.execute("BEGIN IMMEDIATE")
    try:
        moved = conn.execute(_REPLAY_MATCHING, params).rowcount
        conn.execute(_DELETE_MATCHING, params)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    # attempts start again at 0; the sender still dead-letters what is past Meta's 7-day window.
    print(f"replayed {moved} dead letter{'s' if moved != 1 else ''}: pending again")
    return 0


def _purge(conn: sqlite3.Connection, args: argparse.Namespace) -> int:
    params = _filter_params(args)
    matching = conn.execute(_COUNT_MATCHING, params).fetchone()[0]
    if not args.yes:
        print(
            f"capi-middleware outbox: purge would delete {matching} dead letter(s); "
            "add --yes to delete them",
            file=sys.stderr,
        )
        return 2
    deleted = conn.execute(_DELETE_MATCHING, params).rowcount
    print(f"deleted {deleted} dead letter{'s' if deleted != 1 else ''}")
    return 0


# -- helpers ----------------------------------------------------------------------------------


def _filter_params(args: argparse.Namespace) -> tuple[str | None, str | None]:
    event_ids = getattr(args, "event_ids", None)
    return (getattr(args, "reason", None), json.dumps(event_ids) if event_ids else None)


def _file_bytes(path: str) -> int:
    total = 0
    for name in (path, f"{path}-wal"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(name)
    return total


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _json_value(value: object) -> object:
    """A stored value as JSON can carry it: a BLOB or odd value becomes (escaped) text."""
    if value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else printable(value)
    return printable(value)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m capi_middleware.cli.outbox ACTION PATH``; a leading ``outbox`` is accepted."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["outbox"]:
        args_list = args_list[1:]
    parser = argparse.ArgumentParser(
        prog="capi-middleware outbox",
        description="Inspect an outbox (a SQLite file or a redis:// URL) and replay or purge "
        "its dead letters.",
    )
    _configure(parser)
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse: 2 for usage errors, 0 for --help
        return exc.code if isinstance(exc.code, int) else 2
    return run_outbox(args)


if __name__ == "__main__":
    sys.exit(main())
