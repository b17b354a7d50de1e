"""The outbox path and file under attack or by mistake (issue 10, items 9-11).

A damaged file, a symlink, a foreign SQLite database: each is refused without being changed,
said once in the log with the path and what to do, and events still go out from memory. Files
we create are 0600 in folders we create 0700; an existing outbox readable by others is
tightened to 0600.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from built_events import make_event

from capi_middleware.config import CAPIConfig
from capi_middleware.delivery.sender import Sender
from capi_middleware.delivery.sqlite_store import SQLiteStore
from capi_middleware.testing.fake import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID, FakeGraphAPI
from capi_middleware.wsgi import CAPIWSGIMiddleware

WAIT = 10.0


def _send_through_outbox(fake: FakeGraphAPI, outbox: Path, n: int = 2) -> Sender:
    """A sender with ``outbox``: ``n`` events submitted, delivered and the sender closed."""
    sender = Sender(
        CAPIConfig(
            pixel_id=FAKE_PIXEL_ID,
            access_token=FAKE_ACCESS_TOKEN,
            graph_url=fake.url,
            outbox=str(outbox),
            flush_interval=0.01,
        )
    )
    for _ in range(n):
        assert sender.submit(make_event()).ok
    assert sender.flush(WAIT)
    assert sender.close(5)
    assert sender.stats().delivered == n
    return sender


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- item 9: a damaged outbox ---------------------------------------------------------------------


def _damaged_outbox(path: Path) -> Path:
    """An outbox whose schema text has one flipped byte (opening it raised UnicodeDecodeError)."""
    SQLiteStore(path).close()
    data = bytearray(path.read_bytes())
    at = data.find(b"CREATE TABLE events")
    assert at > 0
    data[at + 7] = 0xFF
    path.write_bytes(bytes(data))
    return path


def _shop(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    result = environ["capi"].track(
        "Purchase", value=12.5, currency="USD", user_data={"email": "a@example.com"}
    )
    start_response("200 OK", [("content-type", "text/plain")])
    return [result.status.encode()]


def test_a_damaged_outbox_falls_back_to_memory_says_so_once_and_delivers(
    fake: FakeGraphAPI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = _damaged_outbox(tmp_path / "outbox.db")
    before = _digest(outbox)
    caplog.set_level(logging.WARNING, "capi_middleware")
    mw = CAPIWSGIMiddleware(
        _shop,
        pixel_id=FAKE_PIXEL_ID,
        access_token=FAKE_ACCESS_TOKEN,
        graph_url=fake.url,
        consent=True,
        outbox=str(outbox),
        flush_interval=0.01,
    )
    with httpx.Client(
        transport=httpx.WSGITransport(app=mw), base_url="https://shop.example.com"
    ) as client:
        statuses = [client.get("/thanks").text for _ in range(3)]
    assert statuses == ["queued"] * 3
    assert fake.wait_for_events(3, WAIT)
    mw.close(5)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    errors = _errors(caplog)
    assert len(errors) == 1, errors
    assert str(outbox) in errors[0]
    assert "move this file aside" in errors[0]
    assert _digest(outbox) == before  # a damaged file is evidence: never changed


# -- item 10: the path ----------------------------------------------------------------------------


def test_a_symlinked_outbox_is_refused_and_its_target_untouched(
    fake: FakeGraphAPI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "app.txt"
    target.write_text("the app's own file\n")
    os.chmod(target, 0o644)
    link = tmp_path / "outbox.db"
    link.symlink_to(target)
    caplog.set_level(logging.WARNING, "capi_middleware")
    _send_through_outbox(fake, link)
    assert target.read_text() == "the app's own file\n"
    assert _mode(target) == 0o644
    assert link.is_symlink()
    assert not Path(f"{target}-wal").exists()
    errors = _errors(caplog)
    assert len(errors) == 1, errors
    assert "symbolic link" in errors[0]
    assert str(link) in errors[0]


def test_a_dangling_symlink_does_not_create_its_target(
    fake: FakeGraphAPI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "elsewhere" / "made.db"
    target.parent.mkdir()
    link = tmp_path / "outbox.db"
    link.symlink_to(target)
    caplog.set_level(logging.WARNING, "capi_middleware")
    _send_through_outbox(fake, link)
    assert not target.exists()
    assert "symbolic link" in " ".join(_errors(caplog))


def test_missing_folders_are_created_0700_and_the_file_0600(
    fake: FakeGraphAPI, tmp_path: Path
) -> None:
    outbox = tmp_path / "a" / "b" / "c" / "outbox.db"
    old = os.umask(0o022)
    try:
        _send_through_outbox(fake, outbox)
    finally:
        os.umask(old)
    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert _mode(folder) == 0o700, folder
    assert _mode(outbox) == 0o600


def test_an_existing_outbox_readable_by_others_is_tightened_to_0600(
    fake: FakeGraphAPI, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.db"
    SQLiteStore(outbox).close()
    os.chmod(outbox, 0o644)
    _send_through_outbox(fake, outbox)
    assert _mode(outbox) == 0o600


def test_an_empty_file_someone_made_0644_becomes_a_0600_outbox(
    fake: FakeGraphAPI, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.db"
    outbox.touch()
    os.chmod(outbox, 0o644)
    _send_through_outbox(fake, outbox)
    assert _mode(outbox) == 0o600
    with sqlite3.connect(outbox) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"events", "dead_letters"} <= tables


# -- item 11: a foreign SQLite file ---------------------------------------------------------------


@pytest.mark.parametrize("user_version", [0, 1])
def test_a_foreign_sqlite_file_is_refused_unchanged(
    fake: FakeGraphAPI, tmp_path: Path, caplog: pytest.LogCaptureFixture, user_version: int
) -> None:
    app_db = tmp_path / "app.sqlite3"
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
    conn.execute("INSERT INTO users (email) VALUES ('jane@example.com')")
    conn.execute(f"PRAGMA user_version = {user_version}")
    conn.commit()
    conn.close()
    os.chmod(app_db, 0o644)
    before = _digest(app_db)
    caplog.set_level(logging.WARNING, "capi_middleware")
    _send_through_outbox(fake, app_db)
    assert _digest(app_db) == before  # the header's journal mode included (no switch to WAL)
    assert _mode(app_db) == 0o644
    assert not Path(f"{app_db}-wal").exists()
    with sqlite3.connect(app_db) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    errors = _errors(caplog)
    assert len(errors) == 1, errors
    assert "not a capi outbox" in errors[0]
    assert str(app_db) in errors[0]
    assert "jane" not in " ".join(errors)
