"""``capi-middleware outbox ... redis://``: the fleet's outbox, against a real redis-server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import RedisServer

from capi_middleware.cli.outbox import main
from capi_middleware.delivery.redis_store import RedisStore
from capi_middleware.delivery.store import DeadLetter, NewEvent

ROOT = Path(__file__).resolve().parents[2]
SECRET_EMAIL_HASH = "5" * 64  # stands for hashed user data: never printed
CLEAR_IP = "203.0.113.77"


def _event(i: int, pixel: str) -> NewEvent:
    body = {
        "event_name": "Purchase",
        "event_id": f"ev-{i}",
        "user_data": {"em": [SECRET_EMAIL_HASH], "client_ip_address": CLEAR_IP},
    }
    return NewEvent(pixel, json.dumps(body).encode(), f"ev-{i}", int(time.time()), "website")


@pytest.fixture
def outbox(redis_server: RedisServer) -> Iterator[str]:
    """6 events: 2 dead (rejected, too_old), 1 held by a host, 3 no host's yet; 1 foreign."""
    url = f"{redis_server.url}?prefix=cli{uuid.uuid4().hex[:8]}"
    store = RedisStore(url)
    store.put([_event(i, "111" if i % 2 else "222") for i in range(6)], wait=True)
    first, second, _held = store.claim(3, lease_seconds=600, now=time.time())
    store.dead_letter(
        [first.id],
        DeadLetter(
            "rejected", code=100, subcode=2804019, message="Invalid parameter", fbtrace_id="A1"
        ),
    )
    store.dead_letter([second.id], DeadLetter("too_old"))
    # A stopped host leaves its held entry pending under its name (no close(): a crash).
    yield url
    store.close(1.0)


def test_status_shows_the_fleet(outbox: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", outbox, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["waiting"] == 4
    assert report["unclaimed"] == 3
    assert report["pending"] == 1
    assert report["dead"] == 2
    assert report["books"] == {
        "enqueued": 6,
        "delivered": 0,
        "dead_lettered": {"rejected": 1, "too_old": 1},
    }
    (consumer,) = report["consumers"]
    assert consumer["pending"] == 1
    assert consumer["name"].count(":") >= 2  # host:pid:random
    assert report["oldest_entry_age_seconds"] >= 0


def test_status_text_never_shows_a_payload(outbox: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", outbox]) == 0
    out = capsys.readouterr().out
    assert "waiting:   4" in out
    assert "pending 1" in out
    assert SECRET_EMAIL_HASH not in out
    assert CLEAR_IP not in out


def test_dead_lists_reasons_without_payloads(
    outbox: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dead", outbox, "--json"]) == 0
    letters = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["reason"] for d in letters] == ["too_old", "rejected"]  # newest first
    rejected = letters[1]
    assert (rejected["code"], rejected["subcode"], rejected["fbtrace_id"]) == (100, 2804019, "A1")
    assert rejected["event_name"] == "Purchase"
    assert main(["dead", outbox, "--reason", "rejected"]) == 0
    out = capsys.readouterr().out
    assert "ev-0" in out
    assert "(1 of 1 shown)" in out
    assert SECRET_EMAIL_HASH not in out
    assert CLEAR_IP not in out


def test_replay_puts_dead_letters_back_and_the_books_balance(
    outbox: str, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", outbox, "--event-id", "ev-0"]) == 0
    assert "replayed 1 dead letter" in capsys.readouterr().out
    assert main(["status", outbox, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["waiting"], report["dead"]) == (5, 1)
    books = report["books"]
    dead = sum(books["dead_lettered"].values())
    assert books["enqueued"] == books["delivered"] + dead + report["waiting"]
    store = RedisStore(outbox)
    try:
        claimed = store.claim(10, lease_seconds=60, now=time.time())
        assert "ev-0" in {e.event_id for e in claimed}
    finally:
        store.close(1.0)


def test_purge_needs_yes(outbox: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["purge", outbox]) == 2
    assert "would delete 2" in capsys.readouterr().err
    assert main(["purge", outbox, "--reason", "too_old", "--yes"]) == 0
    assert "deleted 1 dead letter" in capsys.readouterr().out
    assert main(["status", outbox, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dead"] == 1


def test_an_unreachable_redis_is_exit_1_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket_closed_port() as port:
        assert main(["status", f"redis://u:hunter2@127.0.0.1:{port}/0"]) == 1
    err = capsys.readouterr().err
    assert "Redis failed" in err
    assert "hunter2" not in err


def test_the_installed_command_reads_a_redis_outbox(outbox: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "capi_middleware", "outbox", "status", outbox],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "consumers (host:pid:random):" in proc.stdout


class socket_closed_port:
    """A port nothing listens on, for the length of the block."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_redis_client_from_the_fixture_sees_the_same_stream(
    outbox: str, redis_server: RedisServer
) -> None:
    prefix = outbox.rsplit("prefix=", 1)[1]
    assert redis.Redis.from_url(redis_server.url).xlen(f"{prefix}:events") == 4
