"""The command line under hostile files and answers (issue 10, item 12).

Every secret held is redacted from an echoed answer; stored or received text is printed with its
control characters escaped; rows with unexpected value types print without a traceback; and every
path answers a bad file with one clear line and exit code 2.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from capi_middleware.cli.main import main
from capi_middleware.cli.outbox import main as outbox_main
from capi_middleware.delivery.sqlite_store import SQLiteStore
from capi_middleware.delivery.store import DeadLetter, NewEvent
from capi_middleware.rules.request_body import appsecret_proof
from capi_middleware.testing.fake import FakeGraphAPI

TOKEN = "EAAB-cli-safety/token+value"
SECRET = "app-secret-of-the-shop"
ESCAPES = "\x1b]0;owned\x07\x1b[2J\r\u202e"


pytestmark = pytest.mark.usefixtures("no_meta_env")


def test_send_test_event_redacts_every_secret_and_escapes_the_answer(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("META_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("META_APP_SECRET", SECRET)
    proof = appsecret_proof(TOKEN, SECRET)
    echo = {
        "error": {
            "message": f"bad request: token {TOKEN} secret {SECRET} proof {proof} {ESCAPES}",
            "code": 100,
        },
        "debug": f"?access_token={TOKEN.replace('/', '%2F').replace('+', '%2B')}",
    }
    with FakeGraphAPI(access_token=TOKEN, app_secret=SECRET) as fake:
        fake.fail_next(status=400, body=json.dumps(echo))
        code = main(
            ["send-test-event", "--pixel-id", "777", "--graph-url", fake.url,
             "--test-event-code", "TEST1"]
        )  # fmt: skip
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 1
    for secret in (TOKEN, SECRET, proof, "EAAB-cli-safety%2Ftoken%2Bvalue"):
        assert secret not in text
    assert "***" in text
    assert "\x1b" not in text
    assert "\u202e" not in text
    assert "\\u001b]0;owned" in text  # escaped as JSON sent it, then printed as is


def _outbox(tmp_path: Path) -> Path:
    path = tmp_path / "capi.sqlite3"
    store = SQLiteStore(path)
    body = json.dumps({"event_name": "Purchase", "event_id": "ev"}).encode()
    store.put([NewEvent("111", body, f"ev-{i}", 1_700_000_000, "website") for i in range(4)],
              wait=True)  # fmt: skip
    first, second, _ = store.claim(3, lease_seconds=10**9, now=1_800_000_000.0)
    store.dead_letter([first.id], DeadLetter("rejected", code=100, message=f"x{ESCAPES}y"))
    store.dead_letter([second.id], DeadLetter("too_old"))
    store.close()
    return path


def _spoil(path: Path) -> None:
    """Values of types the outbox never writes (another tool, a bad migration, a hand edit)."""
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        UPDATE dead_letters SET dead_at = 'yesterday', code = 'oops', subcode = x'00ff',
            attempts = 1e999, event_id = x'1b5b324aff', fbtrace_id = x'00'
        WHERE reason = 'rejected';
        UPDATE dead_letters SET dead_at = 1e300, pixel_id = x'c3', event_name = 42
        WHERE reason = 'too_old';
        UPDATE events SET created_at = 'long ago', pixel_id = x'deadbeef' WHERE id = 4;
        UPDATE events SET lease_until = 'later', not_before = x'01' WHERE id = 3;
        """
    )
    conn.close()


@pytest.mark.parametrize("spoiled", [False, True])
@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["dead"], ["dead", "--json"]])
def test_outbox_status_and_dead_print_any_row_safely(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], spoiled: bool
) -> None:
    path = _outbox(tmp_path)
    if spoiled:
        _spoil(path)
    assert outbox_main([*argv[:1], str(path), *argv[1:]]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert "\x1b" not in out.out
    assert "\r" not in out.out
    assert "\u202e" not in out.out
    if argv == ["dead"]:
        assert "x\\x1b]0;owned\\x07\\x1b[2J\\r\\u202ey" in out.out
    if "--json" in argv:
        for line in out.out.splitlines() if argv[0] == "dead" else [out.out]:
            json.loads(line)


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00\xff not sqlite" * 200)
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.close()
    damaged = _outbox(tmp_path)
    data = bytearray(damaged.read_bytes())
    data[4096:] = b"\xa5" * (len(data) - 4096)  # every page but the schema's overwritten
    damaged.write_bytes(bytes(data))
    directory = tmp_path / "a-directory"
    directory.mkdir()
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"event_name": "caf\xe9"}')
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    not_json = tmp_path / "not.json"
    not_json.write_text("{event_name: Purchase}")
    return {
        "missing": tmp_path / "missing",
        "garbage": garbage,
        "foreign": foreign,
        "damaged": damaged,
        "directory": directory,
        "latin1": latin1,
        "deep": deep,
        "not_json": not_json,
    }


OUTBOX_ACTIONS = [["status"], ["dead"], ["replay"], ["purge", "--yes"]]


@pytest.mark.parametrize("kind", ["missing", "garbage", "foreign", "damaged", "directory"])
@pytest.mark.parametrize("action", OUTBOX_ACTIONS)
def test_every_outbox_action_answers_a_bad_file_with_one_line_and_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, action: list[str]
) -> None:
    path = _bad_files(tmp_path)[kind]
    assert main(["outbox", action[0], str(path), *action[1:]]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    (line,) = out.err.splitlines()
    assert str(path) in line
    assert "Traceback" not in line


@pytest.mark.parametrize("kind", ["missing", "directory", "latin1", "deep", "not_json", "garbage"])
def test_check_answers_a_bad_file_with_one_line_and_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path = _bad_files(tmp_path)[kind]
    assert main(["check", str(path)]) == 2
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if line.startswith("input:")]
    assert len(lines) == 1
    assert str(path) in lines[0]
    assert "Traceback" not in out.out + out.err


def test_check_escapes_what_it_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "event.json"
    path.write_text(json.dumps({"event_name": f"Buy{ESCAPES}", "custom_data": {"currency": 5}}))
    main(["check", str(path)])
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\r" not in out


@pytest.mark.parametrize("argv", [["dead"], ["dead", "--json"], ["status"], ["status", "--json"]])
def test_the_redis_outbox_prints_any_entry_safely(
    redis_server: Any, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    import uuid

    import redis

    prefix = f"safety{uuid.uuid4().hex[:8]}"
    url = f"{redis_server.url}?prefix={prefix}"
    client = redis.Redis.from_url(redis_server.url)
    # Dead letters as another tool (or a bad hand edit) might leave them.
    client.xadd(
        f"{prefix}:dead",
        {
            "i": b"ev\x1b[2J",
            "p": b"\xff\xfe",
            "dead_reason": b"rejected\r",
            "dead_code": b"oops",
            "dead_subcode": b"1e5",
            "dead_at": b"yesterday",
            "dead_message": ESCAPES.encode(),
            "d": b"[" * 100_000,
        },
    )
    client.xadd(f"{prefix}:dead", {"dead_at": b"1e300", "dead_code": b"100", "d": b"{}"})
    client.close()
    assert main(["outbox", argv[0], url, *argv[1:]]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    for control in ("\x1b", "\r", "\u202e"):
        assert control not in out.out
    if "--json" in argv and argv[0] == "dead":
        assert [json.loads(line)["code"] for line in out.out.splitlines()] == [100, "oops"]
