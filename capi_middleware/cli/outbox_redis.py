"""``capi-middleware outbox status|dead|replay|purge redis://...``: the whole fleet's outbox.

``status`` shows what every host sees: the entries waiting, how many no host has taken yet, the
pending entries per consumer (host, pid and a random part) with how long each has been idle, the
oldest entry's age, the fleet's books, the shared pauses and the dead letters. As for SQLite, only
ids, names, counts and Meta's error fields are printed, never an event's payload.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from capi_middleware.cli.terminal import human_age, iso_time, print_dead_letters, printable
from capi_middleware.delivery.redis_layout import (
    BOOKS_SCRIPT,
    GROUP,
    REPLAY_SCRIPT,
    Keys,
    parse_books,
)
from capi_middleware.delivery.redis_link import connect, describe, prefix_of

__all__ = ["run_redis_outbox"]

_PAGE = 500


def run_redis_outbox(args: argparse.Namespace) -> int:
    """Run one ``outbox`` action on a Redis outbox URL; return the exit code."""
    where = describe(args.path)
    try:
        client = connect(args.path, socket_timeout=5.0)
    except ImportError as exc:
        print(f"capi-middleware outbox: {exc}", file=sys.stderr)
        return 1
    keys = Keys.for_prefix(prefix_of(args.path))
    import redis

    try:
        action = args.outbox_command
        if action == "status":
            return _status(client, keys, where, args)
        if action == "dead":
            return _dead(client, keys, args)
        if action == "replay":
            return _replay(client, keys, args)
        return _purge(client, keys, args)
    except (redis.RedisError, OSError) as exc:
        print(
            f"capi-middleware outbox: {where}: Redis failed ({type(exc).__name__}: {exc})",
            file=sys.stderr,
        )
        return 1
    finally:
        client.close()


def _status(client: Any, keys: Keys, where: str, args: argparse.Namespace) -> int:
    now = time.time()
    books = parse_books(client.register_script(BOOKS_SCRIPT)(keys=[keys.events, keys.books]))
    first = client.xrange(keys.events, count=1)
    oldest = None if not first else max(0.0, now - _entry_ms(first[0][0]) / 1000)
    consumers: list[dict[str, Any]] = []
    unclaimed: int | None = books.waiting
    pending_total = 0
    if client.exists(keys.events):
        groups = {_text(g["name"]): g for g in client.xinfo_groups(keys.events)}
        group = groups.get(GROUP)
        if group is not None:
            pending_total = int(group.get("pending", 0))
            lag = group.get("lag")
            unclaimed = None if lag is None else int(lag)
            for c in client.xinfo_consumers(keys.events, GROUP):
                consumers.append(
                    {
                        "name": _text(c["name"]),
                        "pending": int(c["pending"]),
                        "idle_seconds": round(int(c["idle"]) / 1000, 1),
                    }
                )
    pauses = {
        _text(k): round(int(v) / 1000 - now, 1)
        for k, v in client.hgetall(keys.pauses).items()
        if int(v) / 1000 > now
    }
    report: dict[str, Any] = {
        "outbox": where,
        "prefix": keys.events.rsplit(":", 1)[0],
        "waiting": books.waiting,
        "unclaimed": unclaimed,
        "pending": pending_total,
        "oldest_entry_age_seconds": None if oldest is None else round(oldest, 1),
        "consumers": sorted(consumers, key=lambda c: (-c["pending"], c["name"])),
        "dead": int(client.xlen(keys.dead)),
        "books": {
            "enqueued": books.enqueued,
            "delivered": books.delivered,
            "dead_lettered": dict(sorted(books.dead_lettered.items())),
        },
        "paused_seconds_left": pauses,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"outbox:    {where} (prefix {report['prefix']})")
    print(
        f"waiting:   {report['waiting']} (no host's yet: "
        f"{'?' if unclaimed is None else unclaimed}; taken by a host: {pending_total})"
    )
    print(f"oldest:    {'-' if oldest is None else human_age(oldest)}")
    print(f"dead:      {report['dead']} kept")
    dead = ", ".join(f"{k} {v}" for k, v in report["books"]["dead_lettered"].items()) or "none"
    print(
        f"books:     enqueued {books.enqueued}, delivered {books.delivered}, dead-lettered {dead}"
    )
    for field, left in sorted(pauses.items()):
        what = "every pixel (rate limited)" if field == "*" else f"pixel {field} (refused)"
        print(f"paused:    {what}, {left:.0f}s left")
    if consumers:
        print("consumers (host:pid:random):")
        for c in report["consumers"]:
            idle = human_age(c["idle_seconds"])
            print(f"  {printable(c['name'])}: pending {c['pending']}, idle {idle}")
    return 0


def _dead(client: Any, keys: Keys, args: argparse.Namespace) -> int:
    total = 0
    letters: list[dict[str, Any]] = []
    for entry, fields in _matching(client, keys, args):
        total += 1
        if len(letters) < args.limit:
            letters.append(_letter(entry, fields))
    print_dead_letters(letters, total, as_json=args.json)
    return 0


def _replay(client: Any, keys: Keys, args: argparse.Namespace) -> int:
    ids = [entry for entry, fields in _matching(client, keys, args) if _replayable(fields)]
    script = client.register_script(REPLAY_SCRIPT)
    moved = 0
    for start in range(0, len(ids), _PAGE):
        moved += int(
            script(keys=[keys.events, keys.books, keys.dead], args=ids[start : start + _PAGE])
        )
    # The sender still dead-letters what is past Meta's 7-day window.
    print(f"replayed {moved} dead letter{'s' if moved != 1 else ''}: waiting again")
    return 0


def _purge(client: Any, keys: Keys, args: argparse.Namespace) -> int:
    ids = [entry for entry, _ in _matching(client, keys, args)]
    if not args.yes:
        print(
            f"capi-middleware outbox: purge would delete {len(ids)} dead letter(s); "
            "add --yes to delete them",
            file=sys.stderr,
        )
        return 2
    deleted = 0
    for start in range(0, len(ids), _PAGE):
        deleted += int(client.xdel(keys.dead, *ids[start : start + _PAGE]))
    print(f"deleted {deleted} dead letter{'s' if deleted != 1 else ''}")
    return 0


# -- helpers ----------------------------------------------------------------------------------


def _matching(client: Any, keys: Keys, args: argparse.Namespace) -> Iterator[tuple[bytes, Any]]:
    """Dead letters matching ``--reason`` and ``--event-id``, newest first."""
    reason = getattr(args, "reason", None)
    event_ids = set(getattr(args, "event_ids", None) or ())
    upper = "+"
    while True:
        page = client.xrevrange(keys.dead, max=upper, min="-", count=_PAGE)
        for entry, fields in page:
            if reason is not None and _text(fields.get(b"dead_reason", b"")) != reason:
                continue
            if event_ids and _text(fields.get(b"i", b"")) not in event_ids:
                continue
            yield entry, fields
        if len(page) < _PAGE:
            return
        upper = f"({_text(page[-1][0])}"


def _replayable(fields: Any) -> bool:
    """Only our own entries go back: a foreign one would be dead-lettered again at once."""
    return _text(fields.get(b"dead_reason", b"")) != "malformed"


def _letter(entry: bytes, fields: Any) -> dict[str, Any]:
    def get(name: str) -> str | None:
        value = fields.get(name.encode())
        return None if value is None or value == b"" else _text(value)

    dead_at = get("dead_at")
    code, subcode = get("dead_code"), get("dead_subcode")
    return {
        "id": _text(entry),
        "event_id": get("i"),
        "event_name": _event_name(fields.get(b"d")),
        "pixel_id": get("p"),
        "reason": get("dead_reason"),
        # A field another tool wrote is shown as it is, never a traceback (issue 10).
        "code": _as_int(code),
        "subcode": _as_int(subcode),
        "message": get("dead_message") or "",
        "fbtrace_id": get("dead_fbtrace_id"),
        "time": _iso_text(dead_at),
    }


def _as_int(value: str | None) -> int | str | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def _iso_text(value: str | None) -> str:
    """A stored time as `iso_time` shows it; ``-`` when absent; the text when not a number."""
    if value is None:
        return "-"
    try:
        number = float(value)
    except ValueError:
        return value
    return iso_time(number)


def _event_name(payload: bytes | None) -> str | None:
    try:
        name = json.loads(payload or b"").get("event_name")
    except (ValueError, AttributeError, RecursionError):
        return None
    return name if isinstance(name, str) else None


def _entry_ms(entry: bytes | str) -> int:
    return int(_text(entry).split("-", 1)[0])


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
