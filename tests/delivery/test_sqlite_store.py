"""The SQLite outbox against real SQLite files: protocol, group commit, processes, broken disks."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from live import wait_until

from capi_middleware.config import CAPIConfig
from capi_middleware.delivery.sender import Sender
from capi_middleware.delivery.sqlite_store import SQLiteStore
from capi_middleware.delivery.store import DeadLetter, NewEvent
from capi_middleware.testing.fake import FAKE_PIXEL_ID, FakeGraphAPI

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000.0  # a fixed wall-clock "now": leases and backoff are tested without sleeping


def make_event(i: int, *, pixel: str = "111", size: int = 0) -> NewEvent:
    body = {
        "event_name": "Purchase",
        "event_time": 1_700_000_000 + i,
        "event_id": f"ev-{i}",
        "action_source": "website",
        "user_data": {"em": ["a" * 64], "client_ip_address": "203.0.113.9"},
        "custom_data": {"value": i, "currency": "USD", "pad": "x" * size},
    }
    payload = json.dumps(body, separators=(",", ":")).encode()
    return NewEvent(pixel, payload, f"ev-{i}", 1_700_000_000 + i, "website")


def rows(path: Path, sql: str = "SELECT COUNT(*) FROM events") -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def count(path: Path, table: str = "events") -> int:
    return int(rows(path, f"SELECT COUNT(*) FROM {table}")[0][0])  # type: ignore[call-overload]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox" / "capi.sqlite3"


@pytest.fixture
def store(path: Path):
    s = SQLiteStore(path)
    yield s
    s.close()


# -- the EventStore protocol ----------------------------------------------------------------------


def test_put_claim_returns_payload_byte_for_byte_oldest_first(store: SQLiteStore) -> None:
    events = [make_event(i) for i in range(5)]
    assert store.put(events, wait=True) == 5
    claimed = store.claim(10, lease_seconds=30, now=NOW)
    assert [c.event_id for c in claimed] == [e.event_id for e in events]
    assert [c.payload for c in claimed] == [e.payload for e in events]
    assert all(c.attempts == 0 and c.pixel_id == "111" for c in claimed)
    assert claimed[0].event_time == events[0].event_time
    assert claimed[0].action_source == "website"
    assert [c.id for c in claimed] == sorted(c.id for c in claimed)


def test_a_lease_hides_events_until_it_expires(store: SQLiteStore) -> None:
    store.put([make_event(i) for i in range(4)], wait=True)
    first = store.claim(3, lease_seconds=30, now=NOW)
    assert len(first) == 3
    second = store.claim(10, lease_seconds=30, now=NOW + 1)
    assert [e.id for e in second] == [first[-1].id + 1]
    assert store.claim(10, lease_seconds=30, now=NOW + 29) == []
    again = store.claim(10, lease_seconds=30, now=NOW + 30)
    assert {e.id for e in again} == {e.id for e in first}


def test_ack_prunes_rows(store: SQLiteStore, path: Path) -> None:
    store.put([make_event(i) for i in range(3)], wait=True)
    claimed = store.claim(2, lease_seconds=30, now=NOW)
    store.ack([c.id for c in claimed])
    assert store.backlog() == 1
    assert count(path) == 1
    assert [e.event_id for e in store.claim(10, lease_seconds=30, now=NOW + 100)] == ["ev-2"]


def test_retry_waits_for_not_before_and_counts_attempts(store: SQLiteStore) -> None:
    store.put([make_event(0)], wait=True)
    (event,) = store.claim(1, lease_seconds=30, now=NOW)
    store.retry([event.id], not_before=NOW + 60)
    assert store.next_due() == NOW + 60
    assert store.claim(1, lease_seconds=30, now=NOW + 59) == []
    (again,) = store.claim(1, lease_seconds=30, now=NOW + 60)
    assert again.id == event.id
    assert again.attempts == 1
    assert again.payload == event.payload


def test_dead_letter_keeps_the_reason_and_leaves_the_backlog(
    store: SQLiteStore, path: Path
) -> None:
    store.put([make_event(0), make_event(1)], wait=True)
    first, _ = store.claim(2, lease_seconds=30, now=NOW)
    letter = DeadLetter("rejected", code=100, subcode=2804019, message="bad", fbtrace_id="AbC")
    store.dead_letter([first.id], letter)
    assert store.backlog() == 1
    (dead,) = rows(
        path,
        "SELECT event_id, event_name, pixel_id, reason, code, subcode, message, fbtrace_id,"
        " attempts FROM dead_letters",
    )
    assert dead == ("ev-0", "Purchase", "111", "rejected", 100, 2804019, "bad", "AbC", 0)


def test_next_due(store: SQLiteStore) -> None:
    assert store.next_due() is None
    store.put([make_event(0), make_event(1)], wait=True)
    assert store.next_due() == 0.0  # new events are due at once
    a, b = store.claim(2, lease_seconds=30, now=NOW)
    assert store.next_due() == NOW + 30  # both leased: due when the leases end
    store.retry([a.id], not_before=NOW + 5)
    assert store.next_due() == NOW + 5
    store.ack([a.id, b.id])
    assert store.next_due() is None


def test_retry_leaves_a_lease_another_process_took_over(path: Path) -> None:
    a, b = SQLiteStore(path), SQLiteStore(path)  # two connections, two lease owners
    try:
        a.put([make_event(0)], wait=True)
        (mine,) = a.claim(1, lease_seconds=1, now=NOW)
        (theirs,) = b.claim(1, lease_seconds=60, now=NOW + 2)  # a's lease ran out
        assert theirs.id == mine.id
        a.retry([mine.id], not_before=NOW)  # too late: b owns it now
        assert a.claim(1, lease_seconds=60, now=NOW + 3) == []
        assert b.backlog() == 1
    finally:
        a.close()
        b.close()


def test_backlog_counts_pending_committed_and_leased(path: Path) -> None:
    s = SQLiteStore(path, commit_interval=3600)  # the window never ends: only close() commits
    try:
        assert s.put([make_event(i) for i in range(3)]) == 3
        assert s.backlog() == 3  # waiting for the group commit
        assert count(path) == 0
    finally:
        s.close()
    assert count(path) == 3  # close() committed the pending group


def test_put_rejects_a_payload_that_is_not_json(store: SQLiteStore) -> None:
    bad = NewEvent("111", b"\x80not json", "ev-bad", 1, "website")
    assert store.put([make_event(0), bad, make_event(2)], wait=True) == 1
    assert store.backlog() == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory_fallback": -1}, "memory_fallback"),
        ({"max_pending": 0}, "max_pending"),
        ({"commit_interval": -0.1}, "commit_interval"),
        ({"commit_interval": float("inf")}, "commit_interval"),
        ({"reopen_interval": 0}, "reopen_interval"),
        ({"busy_timeout": -1}, "busy_timeout"),
        ({"max_bytes": 100}, "max_bytes"),
        ({"synchronous": "SOMETIMES"}, "synchronous"),
    ],
)
def test_bad_options_name_the_option(path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SQLiteStore(path, **kwargs)  # type: ignore[arg-type]


# -- the file -----------------------------------------------------------------------------------


def test_rows_are_json_text_and_schema_is_versioned(store: SQLiteStore, path: Path) -> None:
    store.put([make_event(0)], wait=True)
    ((kind, valid, payload),) = rows(
        path, "SELECT typeof(payload), json_valid(payload), payload FROM events"
    )
    assert (kind, valid) == ("text", 1)
    assert json.loads(str(payload))["event_id"] == "ev-0"
    assert rows(path, "PRAGMA user_version") == [(1,)]
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]


def test_file_mode_is_0600(store: SQLiteStore, path: Path) -> None:
    store.put([make_event(0)], wait=True)
    assert path.stat().st_mode & 0o777 == 0o600
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        assert side.exists()  # WAL mode, store still open
        assert side.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_put_wait_returns_after_the_commit(store: SQLiteStore, path: Path) -> None:
    assert store.put([make_event(0)], wait=True) == 1
    assert count(path) == 1  # another connection sees it: committed
    assert store.durable


def test_many_threads_share_group_commits(store: SQLiteStore, path: Path) -> None:
    def worker(base: int) -> None:
        for i in range(50):
            assert store.put([make_event(base + i)], wait=True) == 1

    threads = [threading.Thread(target=worker, args=(n * 1000,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count(path) == 400
    assert store.backlog() == 400


def test_put_without_wait_is_committed_by_the_writer(store: SQLiteStore, path: Path) -> None:
    for i in range(200):
        assert store.put([make_event(i)]) == 1
    assert store.flush(timeout=30)
    assert count(path) == 200


def test_a_new_store_picks_up_what_was_left(path: Path) -> None:
    first = SQLiteStore(path)
    first.put([make_event(i) for i in range(3)], wait=True)
    first.claim(1, lease_seconds=30, now=NOW)  # in flight when the process stopped
    first.put([make_event(3)])  # not yet committed: close() commits it
    first.close()
    second = SQLiteStore(path)
    try:
        assert second.backlog() == 4
        assert len(second.claim(10, lease_seconds=3600, now=NOW)) == 3
        (back,) = second.claim(10, lease_seconds=3600, now=NOW + 30)  # the old lease ran out
        assert back.event_id == "ev-0"
    finally:
        second.close()


def test_put_after_close_accepts_nothing(path: Path) -> None:
    s = SQLiteStore(path)
    s.close()
    s.close()  # idempotent
    assert s.put([make_event(0)]) == 0
    assert s.claim(1, lease_seconds=1, now=NOW) == []


# -- several processes ---------------------------------------------------------------------------

CLAIMER = textwrap.dedent(
    """
    import json, os, sys, time
    from capi_middleware.delivery.sqlite_store import SQLiteStore
    path, go = sys.argv[1], sys.argv[2]
    store = SQLiteStore(path)
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.005)
    got, empty = [], 0
    while empty < 3:
        batch = store.claim(7, lease_seconds=3600, now=1_800_000_000.0)
        if not batch:
            empty += 1
        got.extend(e.event_id for e in batch)
    store.close()
    print(json.dumps(got), flush=True)
    """
)


def _python(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-c", *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        **kwargs,
    )


def test_two_processes_never_claim_the_same_event(path: Path, tmp_path: Path) -> None:
    s = SQLiteStore(path)
    s.put([make_event(i) for i in range(700)], wait=True)
    s.close()
    go = tmp_path / "go"
    procs = [_python(CLAIMER, str(path), str(go)) for _ in range(2)]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    a, b = (set(r) for r in results)
    assert not a & b
    assert len(results[0]) + len(results[1]) == 700
    assert a | b == {f"ev-{i}" for i in range(700)}


KILLED_HOLDER = textwrap.dedent(
    """
    import sys, time
    from capi_middleware.delivery.sqlite_store import SQLiteStore
    from capi_middleware.delivery.store import NewEvent
    store = SQLiteStore(sys.argv[1])
    store.put([NewEvent("111", b'{"event_name":"Lead"}', "from-child", 1, "website")], wait=True)
    held = store.claim(100, lease_seconds=60, now=1_800_000_000.0)
    print(len(held), flush=True)
    time.sleep(600)
    """
)


def test_a_killed_workers_leases_expire_and_its_events_come_back(path: Path) -> None:
    s = SQLiteStore(path)
    s.put([make_event(i) for i in range(5)], wait=True)
    s.close()
    proc = _python(KILLED_HOLDER, str(path))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "6"  # its own event, committed with wait=True
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    after = SQLiteStore(path)
    try:
        assert after.backlog() == 6
        assert after.claim(100, lease_seconds=60, now=NOW + 59) == []  # the dead lease holds
        back = after.claim(100, lease_seconds=60, now=NOW + 60)
        assert sorted(e.event_id for e in back) == sorted(
            ["from-child", *(f"ev-{i}" for i in range(5))]
        )
    finally:
        after.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_uses_its_own_connection(store: SQLiteStore, path: Path) -> None:
    store.put([make_event(0)], wait=True)  # the writer thread is running
    parent_owner = store.lease_owner
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12: fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            ok = store.lease_owner != parent_owner
            ok = ok and len(store.claim(10, lease_seconds=30, now=NOW)) == 1
            ok = ok and store.put([make_event(1)], wait=True) == 1
            store.close()
            code = 0 if ok else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert count(path) == 2
    # The child leased ev-0 under its own owner: the parent does not get it while that holds.
    assert [e.event_id for e in store.claim(10, lease_seconds=30, now=NOW)] == ["ev-1"]


# -- broken disks -------------------------------------------------------------------------------


def test_unwritable_path_keeps_events_in_memory_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Tests run as root, which ignores permission bits: a parent that is a regular file makes
    # the path unopenable for anyone (ENOTDIR / EEXIST).
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    path = blocker / "capi.sqlite3"
    caplog.set_level(logging.ERROR, logger="capi_middleware")
    s = SQLiteStore(path, reopen_interval=0.05, memory_fallback=100)
    try:
        assert not s.durable
        assert s.put([make_event(i) for i in range(3)], wait=True) == 3
        assert s.backlog() == 3
        claimed = s.claim(2, lease_seconds=30, now=NOW)  # delivery goes on from memory
        assert [e.event_id for e in claimed] == ["ev-0", "ev-1"]
        assert all(e.id < 0 for e in claimed)
        s.ack([claimed[0].id])
        s.retry([claimed[1].id], not_before=NOW)
        assert s.backlog() == 2
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1  # once per kind, not once per event
        assert "203.0.113.9" not in caplog.text
        assert "ev-" not in caplog.text

        blocker.unlink()  # the disk is fixed
        blocker.mkdir()
        assert wait_until(lambda: path.exists() and s.durable and s.backlog() == 2)
        assert wait_until(lambda: count(path) == 2)
        left = s.claim(10, lease_seconds=30, now=NOW)
        assert {e.event_id: e.attempts for e in left} == {"ev-1": 1, "ev-2": 0}
        assert all(e.id > 0 for e in left)
    finally:
        s.close()


def test_memory_fallback_is_bounded(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    s = SQLiteStore(blocker / "x.sqlite3", memory_fallback=5)
    try:
        assert s.put([make_event(i) for i in range(8)], wait=True) == 5
        assert s.put([make_event(9)]) == 0
        assert s.backlog() == 5
    finally:
        s.close()


def test_disk_full_falls_back_to_memory_then_moves_back(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="capi_middleware")
    # max_bytes sets PRAGMA max_page_count: SQLite answers SQLITE_FULL as on a full disk.
    s = SQLiteStore(path, max_bytes=24 * 4096, reopen_interval=0.05)
    try:
        accepted = sum(s.put([make_event(i, size=3000)], wait=True) for i in range(40))
        assert accepted == 40  # every request succeeded
        on_disk = count(path)
        assert 0 < on_disk < 40
        assert not s.durable
        assert s.backlog() == 40
        assert len([r for r in caplog.records if "SQLITE_FULL" in r.getMessage()]) == 1
        claimed = s.claim(100, lease_seconds=30, now=NOW)
        assert len(claimed) == 40  # memory-held ones are served too
        in_memory = [e.id for e in claimed if e.id < 0]
        assert len(in_memory) == 40 - on_disk
        # Delivered: the file's rows and most memory-held ones; that frees pages for the rest.
        s.ack([e.id for e in claimed if e.id > 0] + in_memory[3:])
        s.retry(in_memory[:3], not_before=NOW)
        assert wait_until(lambda: s.durable and count(path) == 3)
        assert s.backlog() == 3
        assert all(e.id > 0 for e in s.claim(10, lease_seconds=30, now=NOW))
    finally:
        s.close()


def test_a_capped_file_that_filled_still_delivers_every_row_written_before(path: Path) -> None:
    # Small events fill the pages to the brim; leasing a row (lease_owner, lease_until) makes
    # it longer, so a file at its cap must still have room to claim what it holds.
    s = SQLiteStore(path, max_bytes=16 * 4096, memory_fallback=50, reopen_interval=0.05)
    try:
        events = [make_event(i) for i in range(400)]
        accepted = [e for e in events if s.put([e], wait=True) == 1]
        assert not s.durable  # the file filled: the rest went to memory
        on_disk = count(path)
        assert 0 < on_disk < len(accepted)
        # Only what fitted in the file and the memory fallback was accepted; the caller counts
        # the refused ones as dropped.
        assert len(accepted) == on_disk + 50
        assert [e.event_id for e in accepted] == [e.event_id for e in events[: len(accepted)]]
        assert s.backlog() == len(accepted)

        delivered: list[str] = []
        for _ in range(50):
            claimed = s.claim(1000, lease_seconds=30, now=NOW)
            if not claimed and s.backlog() == 0:
                break
            delivered.extend(e.event_id for e in claimed)
            s.ack([e.id for e in claimed])
            time.sleep(0.01)
        assert sorted(delivered) == sorted(e.event_id for e in accepted)  # each once
        assert s.backlog() == 0
        assert count(path) == 0
        assert wait_until(lambda: s.durable)  # room again: new events go to the file
        assert s.put([make_event(1000)], wait=True) == 1
        assert count(path) == 1
    finally:
        s.close()


def test_a_file_already_past_a_lowered_cap_is_drained(path: Path) -> None:
    # Written without a cap (or by a version that filled files to the brim), then opened with
    # max_bytes below its size: its rows are claimed and delivered, and only then new ones go in.
    first = SQLiteStore(path)
    events = [make_event(i, size=494) for i in range(300)]  # leaves no page room for a lease
    assert first.put(events, wait=True) == 300
    first.close()
    s = SQLiteStore(path, max_bytes=16 * 4096, reopen_interval=0.05)
    try:
        assert s.put([make_event(300)], wait=True) == 1
        assert not s.durable  # no room for new rows: held in memory
        assert count(path) == 300
        delivered: list[str] = []
        for _ in range(100):
            claimed = s.claim(1000, lease_seconds=30, now=NOW)
            if not claimed:
                break
            delivered.extend(e.event_id for e in claimed)
            s.ack([e.id for e in claimed])
        assert sorted(delivered) == sorted(f"ev-{i}" for i in range(301))
        assert s.backlog() == 0
        assert count(path) == 0
        assert wait_until(lambda: s.durable)  # drained: new events go to the file again
        assert s.put([make_event(301)], wait=True) == 1
        assert count(path) == 1
    finally:
        s.close()


def test_a_deleted_file_is_recreated_with_its_events(path: Path) -> None:
    s = SQLiteStore(path, reopen_interval=0.05)
    try:
        s.put([make_event(i) for i in range(3)], wait=True)
        path.unlink()
        assert wait_until(lambda: path.exists() and s.durable and count(path) == 3)
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        s.close()


@pytest.mark.parametrize(
    "prepare",
    [
        pytest.param(lambda c: c.execute("CREATE TABLE users (id INTEGER)"), id="other-app-db"),
        pytest.param(lambda c: c.execute("PRAGMA user_version = 99"), id="newer-schema"),
    ],
)
def test_a_file_that_is_not_our_outbox_is_left_alone(
    path: Path, prepare: Callable[[sqlite3.Connection], object]
) -> None:
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    prepare(conn)
    conn.commit()
    conn.close()
    s = SQLiteStore(path)
    try:
        assert not s.durable
        assert s.put([make_event(0)], wait=True) == 1  # still accepted, in memory
    finally:
        s.close()
    assert "events" not in {r[0] for r in rows(path, "SELECT name FROM sqlite_master")}


def test_a_file_that_is_not_sqlite_at_all(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage" * 1000)
    s = SQLiteStore(path)
    try:
        assert not s.durable
        assert s.put([make_event(0)]) == 1
    finally:
        s.close()
    assert path.read_bytes() == b"garbage" * 1000


def test_max_events_bounds_the_backlog_across_restarts(path: Path) -> None:
    s = SQLiteStore(path, max_events=5)
    try:
        assert s.put([make_event(i) for i in range(7)], wait=True) == 5
        assert s.put([make_event(7)]) == 0
        s.ack([e.id for e in s.claim(2, lease_seconds=30, now=NOW)])
        assert s.put([make_event(i) for i in range(8, 11)], wait=True) == 2
    finally:
        s.close()
    again = SQLiteStore(path, max_events=5)  # counts the rows it finds in the file
    try:
        assert again.put([make_event(20)]) == 0
        assert again.backlog() == 5
    finally:
        again.close()


# -- with the real sender ---------------------------------------------------------------------


def _meta_event(event_id: str) -> dict[str, object]:
    return {
        "event_name": "Purchase",
        "event_time": int(time.time()),
        "event_id": event_id,
        "action_source": "website",
        "user_data": {"em": ["b" * 64], "client_user_agent": "pytest"},
        "custom_data": {"value": 12.5, "currency": "USD"},
    }


def test_the_sender_delivers_what_a_previous_run_left_then_prunes(path: Path) -> None:
    left = SQLiteStore(path)  # a previous run that stopped before Meta answered
    left.put(
        [
            NewEvent(
                FAKE_PIXEL_ID,
                json.dumps(_meta_event(f"old-{i}")).encode(),
                f"old-{i}",
                int(time.time()),
                "website",
            )
            for i in range(10)
        ],
        wait=True,
    )
    left.close()
    with FakeGraphAPI() as fake:
        config = CAPIConfig(
            pixel_id=FAKE_PIXEL_ID,
            access_token=fake.access_token,
            graph_url=fake.url,
            outbox=str(path),
            flush_interval=0.05,
        )
        sender = Sender(config)
        try:
            for i in range(5):
                assert sender.submit(_meta_event(f"new-{i}"), durable=True).ok
            assert fake.wait_for_events(15)
            assert sender.flush(10)
        finally:
            sender.close(5)
        stats = sender.stats()
    assert sorted(fake.event_ids) == sorted(
        [f"old-{i}" for i in range(10)] + [f"new-{i}" for i in range(5)]
    )
    assert stats.delivered == 15
    assert count(path) == 0  # delivered rows are pruned
