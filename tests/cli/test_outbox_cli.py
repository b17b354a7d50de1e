"""``capi-middleware outbox``: end to end against real outbox files."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from capi_middleware.cli.outbox import main
from capi_middleware.delivery.sqlite_store import SQLiteStore
from capi_middleware.delivery.store import DeadLetter, NewEvent

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000.0
SECRET_EMAIL_HASH = "5" * 64  # stands for hashed user data: never printed
CLEAR_IP = "203.0.113.77"


def _event(i: int, pixel: str, name: str = "Purchase") -> NewEvent:
    body = {
        "event_name": name,
        "event_id": f"ev-{i}",
        "user_data": {"em": [SECRET_EMAIL_HASH], "client_ip_address": CLEAR_IP},
    }
    return NewEvent(pixel, json.dumps(body).encode(), f"ev-{i}", 1_700_000_000, "website")


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    """6 events: 2 dead (rejected, too_old), 1 leased far into the future, 3 pending."""
    path = tmp_path / "capi.sqlite3"
    store = SQLiteStore(path)
    store.put([_event(i, "111" if i % 2 else "222") for i in range(6)], wait=True)
    first, second, _leased = store.claim(3, lease_seconds=10**9, now=NOW)
    store.dead_letter(
        [first.id],
        DeadLetter(
            "rejected", code=100, subcode=2804019, message="Invalid parameter", fbtrace_id="A1"
        ),
    )
    store.dead_letter([second.id], DeadLetter("too_old"))
    store.close()
    return path


def test_status_counts(outbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", str(outbox), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["pending"], report["leased"], report["dead"]) == (3, 1, 2)
    assert report["pixels"]["222"] == {"pending": 1, "leased": 1, "retrying": 0, "dead": 1}
    assert report["pixels"]["111"] == {"pending": 2, "leased": 0, "retrying": 0, "dead": 1}
    assert report["file_bytes"] > 0
    assert report["oldest_event_age_seconds"] >= 0


def test_status_text(outbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["outbox", "status", str(outbox)]) == 0
    out = capsys.readouterr().out
    assert "pending:  3" in out
    assert "dead:     2" in out
    assert "222: pending 1, leased 1, dead 1" in out


def test_dead_lists_ids_and_reasons_never_payloads(
    outbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dead", str(outbox), "--json"]) == 0
    out = capsys.readouterr().out
    letters = [json.loads(line) for line in out.splitlines()]
    assert [d["event_id"] for d in letters] == ["ev-1", "ev-0"]  # newest first
    rejected = letters[1]
    assert rejected["reason"] == "rejected"
    assert (rejected["code"], rejected["subcode"]) == (100, 2804019)
    assert rejected["event_name"] == "Purchase"
    assert rejected["pixel_id"] == "222"
    assert rejected["fbtrace_id"] == "A1"
    assert main(["dead", str(outbox)]) == 0
    text = out + capsys.readouterr().out
    assert "2804019" in text
    assert SECRET_EMAIL_HASH not in text
    assert CLEAR_IP not in text


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([], ["ev-1"]),
        (["--reason", "too_old"], ["ev-1"]),
        (["--event-id", "ev-0"], ["ev-0"]),
        (["--reason", "rejected", "--event-id", "ev-1"], []),
    ],
)
def test_dead_filters_and_limit(
    outbox: Path, capsys: pytest.CaptureFixture[str], filters: list[str], expected: list[str]
) -> None:
    assert main(["dead", str(outbox), "--json", "--limit", "1", *filters]) == 0
    out = capsys.readouterr().out
    assert [json.loads(line)["event_id"] for line in out.splitlines()] == expected


def test_replay_moves_dead_letters_back_with_attempts_reset(
    outbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(outbox), "--reason", "rejected"]) == 0
    assert "replayed 1 dead letter" in capsys.readouterr().out
    store = SQLiteStore(outbox)
    try:
        assert store.backlog() == 5
        due = store.claim(10, lease_seconds=30, now=NOW)
        replayed = [e for e in due if e.event_id == "ev-0"]
        assert len(replayed) == 1
        assert replayed[0].attempts == 0
        assert json.loads(replayed[0].payload)["event_id"] == "ev-0"  # the same bytes
    finally:
        store.close()
    assert main(["replay", str(outbox)]) == 0  # no filter: all that are left
    assert "replayed 1 dead letter" in capsys.readouterr().out
    assert main(["status", str(outbox), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dead"] == 0


def test_purge_needs_yes(outbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["purge", str(outbox)]) == 2
    assert "--yes" in capsys.readouterr().err
    assert main(["purge", str(outbox), "--event-id", "ev-1", "--yes"]) == 0
    assert "deleted 1 dead letter" in capsys.readouterr().out
    conn = sqlite3.connect(outbox)
    try:
        assert conn.execute("SELECT event_id FROM dead_letters").fetchall() == [("ev-0",)]
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone() == (4,)
    finally:
        conn.close()


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["status"],
        ["explode", "x"],
        ["dead", "x", "--limit", "0"],
        ["dead", "x", "--limit", "many"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A bad file is exit code 2, with one line (issue 10).
    missing = tmp_path / "nope.sqlite3"
    assert main(["status", str(missing)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not missing.exists()  # the CLI never creates an outbox


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not sqlite at all" * 100, "not a capi outbox"),
        (None, "not a capi outbox"),  # a SQLite database of another application
    ],
)
def test_not_an_outbox_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    path = tmp_path / "other.db"
    if content is None:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE users (id INTEGER)")
        conn.close()
    else:
        path.write_bytes(content)
    assert main(["dead", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_python_dash_m(outbox: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "capi_middleware.cli.outbox", "status", str(outbox), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["dead"] == 2
    missing = subprocess.run(
        [sys.executable, "-m", "capi_middleware.cli.outbox", "status", str(outbox) + ".x"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert missing.returncode == 2
    assert "no such file" in missing.stderr
