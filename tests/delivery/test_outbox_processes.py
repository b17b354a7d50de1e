"""The durable outbox under real crashes: real servers, real signals, one SQLite file.

Each test runs ``tests/apps/outbox_app.py`` under uvicorn (and gunicorn's sync workers for the
SIGTERM test) on 127.0.0.1, configured through the ``META_*`` environment as in production
(``META_OUTBOX`` names the file), against a `FakeGraphAPI` over real HTTP. Every purchase is
tracked with ``durable=True``, so an HTTP 200 from ``POST /buy`` means the event was committed
to the file before the answer left. What the tests prove:

1. SIGTERM while Meta is unreachable: the process exits within its shutdown timeout, the file
   keeps every event, and the next process on the file delivers each one exactly once, without
   waiting for a purchase of its own.
2. SIGKILL at random moments, ten times: every committed event is delivered, and the only
   duplicates are the events of the one batch each killed process had in flight, sent again
   byte for byte (same event_id and event_time, so Meta drops the copy).
3. Two processes on one file, one killed with a batch in flight (held unanswered by the fake):
   the survivor, busy or idle, delivers everything once the dead process's lease runs out, and
   no event is sent twice while a lease holds it.
4. An outbox that can not be written (its directory is a regular file) or is full: requests
   still answer 200, events wait in memory and are delivered, drops past the bound are counted.

Which process sent a batch is read from the request body: each process gets its own
``partner_agent`` (``CAPI_TEST_PARTNER_AGENT``). The sender sends one batch at a time, so a
process has at most one batch in flight when it is killed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import (
    Copy,
    delivered_copies,
    finish,
    free_port,
    last_delivered_request,
    raw_events,
    shop,
    wait_until,
    wait_until_serving,
)

from capi_middleware.delivery.sqlite_store import open_outbox_file
from capi_middleware.testing.fake import (
    FAKE_ACCESS_TOKEN,
    FAKE_PIXEL_ID,
    FakeGraphAPI,
    RecordedRequest,
)

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent.parent
SHUTDOWN_TIMEOUT = 2.0
EXIT_MARGIN = 10.0  # a loaded 2-core machine may take a while to tear down the interpreter
LEASE_SECONDS = 2.0  # the sender's floor is 60 s; a crash test can not wait that long
DEADLINE = 30.0


# -- servers ---------------------------------------------------------------------------------

SERVER_ARGS = {
    # ASGI: the sender is closed on lifespan shutdown.
    "uvicorn": ["-m", "uvicorn", "apps.outbox_app:asgi", "--host", "127.0.0.1", "--port",
                "{port}", "--log-level", "warning", "--no-access-log"],
    # WSGI, two sync workers on one outbox: each worker closes its sender at interpreter exit.
    "gunicorn": ["-m", "gunicorn", "apps.outbox_app:wsgi", "--bind", "127.0.0.1:{port}",
                 "--workers", "2", "--worker-class", "sync"],
}  # fmt: skip


@dataclass
class Server:
    """One server process (and its workers) serving ``apps.outbox_app``."""

    proc: subprocess.Popen[bytes]
    base: str
    log: Path
    name: str

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.base}{path}", timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if it hangs (only in cleanup)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@dataclass
class Servers:
    """Starts servers on free ports and makes sure none outlives the test."""

    fake: FakeGraphAPI
    outbox: Path
    logs: Path
    started: list[Server] = field(default_factory=list)

    def start(self, name: str, kind: str = "uvicorn", **knobs: str) -> Server:
        port = free_port()
        env = {
            **os.environ,
            "META_PIXEL_ID": FAKE_PIXEL_ID,
            "META_ACCESS_TOKEN": FAKE_ACCESS_TOKEN,
            "META_GRAPH_URL": self.fake.url,
            "META_OUTBOX": str(self.outbox),
            "CAPI_TEST_PARTNER_AGENT": name,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            **{f"CAPI_TEST_{k.upper()}": v for k, v in knobs.items()},
        }
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, *(a.format(port=port) for a in SERVER_ARGS[kind])],
                cwd=TESTS, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        server = Server(proc, f"http://127.0.0.1:{port}", log, name)
        self.started.append(server)
        wait_until_serving(f"{server.base}/health", proc, logs=server.logs)
        return server

    def cleanup(self) -> None:
        for server in self.started:
            if server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait(timeout=10)


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    return tmp_path / "capi.sqlite3"


@pytest.fixture
def servers(fake: FakeGraphAPI, outbox: Path, tmp_path: Path) -> Iterator[Servers]:
    logs = tmp_path / "logs"
    logs.mkdir()
    group = Servers(fake, outbox, logs)
    try:
        yield group
    finally:
        group.cleanup()


# -- load ------------------------------------------------------------------------------------


# -- what the fake and the file hold ----------------------------------------------------------


def rows_in(outbox: Path, table: str = "events") -> list[str]:
    conn = open_outbox_file(outbox)
    try:
        return [r[0] for r in conn.execute(f"SELECT event_id FROM {table} ORDER BY id")]
    finally:
        conn.close()


def check_duplicates(
    copies: dict[str, list[Copy]], in_flight_at_kill: dict[str, int | None]
) -> Counter[str]:
    """Every copy but an event's last came from the batch a killed process had in flight.

    Returns how many events each killed process's batch had re-sent. Each copy must be the
    same bytes: the payload is stored once, so event_id and event_time never change.
    """
    resent: Counter[str] = Counter()
    batches = {index: sender for sender, index in in_flight_at_kill.items() if index is not None}
    for event_id, found in copies.items():
        if len(found) == 1:
            continue
        first = found[0]
        for copy in found[1:]:
            assert copy.raw == first.raw, f"{event_id}: a re-sent copy differs"
            assert json.loads(copy.raw) == json.loads(first.raw)
        for copy in found[:-1]:
            assert copy.request in batches, (
                f"{event_id} was sent again after request {copy.request} from {copy.sender}, "
                "which was not a killed process's last batch"
            )
            resent[batches[copy.request]] += 1
    return resent


# -- 1. SIGTERM during an outage ------------------------------------------------------------


def buy_during_outage(server: Server, fake: FakeGraphAPI, n: int) -> list[str]:
    """``n`` durable purchases while the fake is down; their event_ids."""
    with httpx.Client(base_url=server.base, timeout=30) as client:
        answers = [client.post(f"/buy?n={i}") for i in range(n)]
    assert [a.status_code for a in answers] == [200] * n
    bought = [a.json() for a in answers]
    assert [b["status"] for b in bought] == ["queued"] * n, bought
    assert fake.wait_for_requests(1, timeout=DEADLINE)  # the sender tried, and failed
    assert fake.events == []
    return [str(b["event_id"]) for b in bought]


def sigterm(server: Server) -> float:
    """SIGTERM; the seconds until the process exited, failing past the shutdown timeout."""
    sent_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=SHUTDOWN_TIMEOUT + EXIT_MARGIN)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit within shutdown_timeout + {EXIT_MARGIN}s:\n{server.logs()}")
    # uvicorn re-raises the signal after its graceful shutdown.
    assert server.proc.returncode in (0, -signal.SIGTERM), server.logs()
    return time.monotonic() - sent_at


@pytest.mark.parametrize("kind", list(SERVER_ARGS))
def test_sigterm_during_an_outage_exits_in_time_and_keeps_every_event(
    kind: str, servers: Servers, fake: FakeGraphAPI, outbox: Path
) -> None:
    n = 20
    fake.down = True  # Meta unreachable for the whole life of the first process
    first = servers.start("first", kind, shutdown_timeout=str(SHUTDOWN_TIMEOUT), backoff_cap="0.5")
    event_ids = buy_during_outage(first, fake, n)
    assert len(set(event_ids)) == n
    took = sigterm(first)
    print(f"\n{kind}: SIGTERM during an outage, exited in {took:.2f}s (shutdown_timeout 2s)")
    assert sorted(rows_in(outbox)) == sorted(event_ids), first.logs()  # nothing lost
    assert rows_in(outbox, "dead_letters") == []

    # Meta is back; a new process opens the same file and gets a purchase of its own.
    fake.down = False
    second = servers.start("second", kind)
    event_ids.append(final_buy(second))
    assert wait_until(lambda: set(event_ids) <= set(fake.event_ids)), second.logs()
    assert wait_until(lambda: rows_in(outbox) == []), second.logs()  # delivered rows are pruned
    sigterm(second)
    assert Counter(fake.event_ids) == Counter(event_ids)  # each exactly once


def test_the_next_process_delivers_what_was_left_without_waiting_for_traffic(
    servers: Servers, fake: FakeGraphAPI, outbox: Path
) -> None:
    fake.down = True
    first = servers.start("first", shutdown_timeout=str(SHUTDOWN_TIMEOUT), backoff_cap="0.5")
    event_ids = buy_during_outage(first, fake, 5)
    sigterm(first)
    assert sorted(rows_in(outbox)) == sorted(event_ids)
    fake.down = False
    # The new process serves requests but tracks nothing: docs/outbox.md promises that what is
    # left "is sent by the next process that opens the file", not by the next purchase.
    second = servers.start("second")
    second.get("/health")
    delivered = wait_until(lambda: set(event_ids) <= set(fake.event_ids))
    assert delivered, (
        f"{len(set(event_ids) - set(fake.event_ids))} of {len(event_ids)} events left by the "
        f"stopped process were not sent by the next one within {DEADLINE}s (rows in the outbox: "
        f"{len(rows_in(outbox))}): its sender starts only at the first track()"
    )
    sigterm(second)
    assert Counter(fake.event_ids) == Counter(event_ids)


# -- 2. SIGKILL at random moments -------------------------------------------------------------


def test_sigkill_at_random_moments_loses_no_committed_event(
    servers: Servers, fake: FakeGraphAPI, outbox: Path
) -> None:
    rounds = 10
    rng = random.Random(20240607)  # seeded: the same kill moments on every run
    fake.latency = 0.05  # a batch spends time in flight, so kills land during sends
    committed: list[str] = []
    killed: list[str] = []
    per_round: list[int] = []
    for k in range(rounds):
        name = f"round-{k}"
        server = servers.start(name, lease_seconds=str(LEASE_SECONDS))
        shoppers = shop([server.base, server.base], name)
        # The kill lands at a random point of the work: after a random number of purchases.
        target = rng.randint(5, 100)
        assert wait_until(lambda: sum(len(s.committed) for s in shoppers) >= target), server.logs()
        server.kill()
        killed.append(name)
        ids = finish(shoppers)
        per_round.append(len(ids))
        committed.extend(ids)

    final = servers.start("final", lease_seconds=str(LEASE_SECONDS))
    # One more purchase starts the final process's sender, as traffic would.
    committed.append(final_buy(final))

    def missing() -> set[str]:
        return set(committed) - set(fake.event_ids)

    assert wait_until(lambda: not missing()), (
        f"{len(missing())} committed events never delivered; rows left: {len(rows_in(outbox))}"
        f"\n{final.logs()}"
    )
    assert wait_until(lambda: rows_in(outbox) == []), final.logs()  # drained
    final.stop()

    copies = delivered_copies(fake)
    in_flight = {name: last_delivered_request(fake, name) for name in killed}
    resent = check_duplicates(copies, in_flight)
    assert len(committed) == len(set(committed))
    print(
        f"\nSIGKILL rounds: committed per round {per_round} (total {len(committed)}); "
        f"events delivered {len(copies)}, copies {sum(len(c) for c in copies.values())}; "
        f"re-sent per killed round {[resent[name] for name in killed]}"
    )


def final_buy(server: Server) -> str:
    response = httpx.post(f"{server.base}/buy?n=final", timeout=30)
    assert response.status_code == 200
    doc = response.json()
    assert doc["status"] == "queued", doc
    return str(doc["event_id"])


# -- 3. two processes on one file, one killed ------------------------------------------------


class HoldingFake(FakeGraphAPI):
    """The fake, able to hold (never answer) the requests of one sending process.

    Every request passes one gate, so the scripted hang meant for the held process can not be
    taken by a request of another process arriving at the same moment.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hold: str | None = None
        self._gate = threading.Lock()

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes] | float | None:
        with self._gate:
            if self.hold is not None and f'"partner_agent":"{self.hold}"' in body.decode():
                self.hang_next(1, seconds=60.0)  # released by stop()
            return super().handle(method, path, headers, body)


@pytest.fixture
def holding(servers: Servers) -> Iterator[HoldingFake]:
    """A started `HoldingFake` that the servers of this test send to."""
    fake = HoldingFake()
    fake.start()
    servers.fake = fake
    try:
        yield fake
    finally:
        fake.stop()


def kill_while_a_batch_is_held(fake: HoldingFake, server: Server) -> list[str]:
    """Hold the server's next batch unanswered, SIGKILL it, return the held event_ids.

    The held rows stay leased to a dead process: only the lease running out frees them.
    """
    fake.hold = server.name
    assert wait_until(lambda: held_requests(fake, server.name) != []), server.logs()
    server.kill()
    fake.hold = None
    held = [e for r in held_requests(fake, server.name) for e in r.event_ids]
    assert held
    return held


def test_two_processes_share_the_outbox_and_the_survivor_takes_over_a_killed_ones_leases(
    servers: Servers, holding: HoldingFake, outbox: Path
) -> None:
    fake = holding
    fake.latency = 0.02
    a = servers.start("worker-a", lease_seconds=str(LEASE_SECONDS))
    b = servers.start("worker-b", lease_seconds=str(LEASE_SECONDS))
    shoppers_a, shoppers_b = shop([a.base, a.base], "a"), shop([b.base, b.base], "b")
    everyone = shoppers_a + shoppers_b
    assert wait_until(lambda: all(len(s.committed) >= 10 for s in everyone)), b.logs()
    held = kill_while_a_batch_is_held(fake, a)
    from_a = finish(shoppers_a)
    # worker-b goes on serving a little (ten purchases per shopper), then the traffic stops.
    so_far = [len(s.committed) for s in shoppers_b]
    assert wait_until(lambda: all(len(s.committed) >= n + 10 for s, n in zip(shoppers_b, so_far)))
    from_b = finish(shoppers_b)
    committed = from_a + from_b

    def missing() -> set[str]:
        return set(committed + held) - set(fake.event_ids)

    assert wait_until(lambda: not missing()), (
        f"{len(missing())} events never delivered; rows left: {len(rows_in(outbox))}\n{b.logs()}"
    )
    assert wait_until(lambda: rows_in(outbox) == []), b.logs()
    b.stop()
    copies = delivered_copies(fake)
    # The held batch was never answered, so nothing was delivered twice: each event went out
    # once, by whichever process held its lease; the killed one's batch went out from worker-b,
    # after the lease ran out.
    assert all(len(found) == 1 for found in copies.values()), [
        (event_id, found) for event_id, found in copies.items() if len(found) > 1
    ]
    assert {copies[e][0].sender for e in held} == {"worker-b"}
    a_by_b = [e for e in from_a if copies[e][0].sender == "worker-b"]
    print(
        f"\nshared outbox: committed a={len(from_a)} b={len(from_b)}; held batch of "
        f"{len(held)} re-sent by b; a's events delivered by b: {len(a_by_b)}"
    )


def test_an_idle_survivor_takes_over_a_killed_ones_leases(
    servers: Servers, holding: HoldingFake, outbox: Path
) -> None:
    fake = holding
    a = servers.start("worker-a", lease_seconds=str(LEASE_SECONDS))
    b = servers.start("worker-b", lease_seconds=str(LEASE_SECONDS))
    first = final_buy(b)  # worker-b's sender runs, delivers, and then has nothing to do
    assert fake.wait_for_events(1, timeout=DEADLINE)
    # worker-b's sender has delivered, looked into the outbox again, found nothing: idle.
    assert wait_until(lambda: idle(b.get("/stats"))), b.logs()
    fake.hold = a.name  # worker-a's first batch, whatever it holds, is never answered
    from_a = [final_buy(a) for _ in range(3)]
    held = kill_while_a_batch_is_held(fake, a)
    # No request reaches worker-b from here on: only the lease running out can wake it.
    assert wait_until(lambda: set(from_a) <= set(fake.event_ids)), (
        f"worker-b, idle, never took over the {len(held)} events leased to the killed worker "
        f"(lease {LEASE_SECONDS}s; rows in the outbox: {len(rows_in(outbox))}):\n{b.logs()}"
    )
    b.stop()
    assert Counter(fake.event_ids) == Counter([first, *from_a])


def idle(stats: Mapping[str, Any]) -> bool:
    """True once a server's sender has delivered everything and found nothing more due."""
    return bool(stats["delivery"]["backlog"] == 0 and stats["idle_looks"] >= 1)


def held_requests(fake: FakeGraphAPI, sender: str) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.status == 0 and r.json().get("partner_agent") == sender]


# -- 4. an outbox that can not be written, or is full -----------------------------------------


@pytest.mark.parametrize("trouble", ["unwritable", "full"])
def test_a_broken_outbox_keeps_requests_working_and_events_flowing(
    trouble: str, servers: Servers, fake: FakeGraphAPI, tmp_path: Path
) -> None:
    bound, n = 40, 60
    knobs = {"max_queue": str(bound), "backoff_cap": "0.5"}
    if trouble == "unwritable":
        # Root ignores permission bits; nobody can create a file under a regular file.
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("a file, not a directory\n")
        servers.outbox = blocker / "capi.sqlite3"
        expected_log = "ENOTDIR"
    else:
        # The schema's 6 pages and a few for rows: some purchases are written before it fills,
        # and those must still be claimed (a lease makes a row longer) and delivered.
        knobs["max_bytes"] = str(12 * 4096)
        expected_log = "SQLITE_FULL"
    fake.down = True
    server = servers.start(trouble, **knobs)
    with httpx.Client(base_url=server.base, timeout=30) as client:
        answers = [client.post(f"/buy?n={i}") for i in range(n)]
    assert [a.status_code for a in answers] == [200] * n  # nothing raised into the app
    bought = [a.json() for a in answers]
    statuses = Counter(b["status"] for b in bought)
    assert set(statuses) <= {"queued", "dropped"}, bought
    assert statuses["dropped"] >= 1  # past the bound

    fake.down = False
    assert fake.wait_for_events(bound, timeout=DEADLINE), server.logs()
    assert wait_until(lambda: server.get("/stats")["delivery"]["backlog"] == 0), server.logs()
    stats = server.get("/stats")
    delivery = stats["delivery"]
    assert stats["capture_errors"] == 0
    assert stats["track_errors"] == 0
    assert delivery["enqueued"] == n
    assert delivery["delivered"] == bound  # everything the bound let in
    assert sum(delivery["dropped"].values()) == n - bound, delivery  # the rest, counted
    assert set(delivery["dropped"]) == {"queue_full"}
    assert delivery["backlog"] == 0
    queued = {b["event_id"] for b in bought if b["status"] == "queued"}
    dropped = {b["event_id"] for b in bought if b["status"] == "dropped"}
    assert Counter(fake.event_ids) == Counter(set(fake.event_ids))  # each once
    assert set(fake.event_ids) <= queued
    assert not set(fake.event_ids) & dropped
    assert expected_log in server.logs()  # the fallback really happened, and was logged once
    assert server.logs().count(expected_log) == 1
    server.stop()
    if trouble == "unwritable":
        assert blocker.read_text() == "a file, not a directory\n"
    else:
        assert rows_in(servers.outbox) == []
    print(
        f"\n{trouble} outbox: {n} requests, all 200; statuses {dict(statuses)}; "
        f"delivered {delivery['delivered']}, dropped {dict(delivery['dropped'])}"
    )


def test_raw_events_reads_the_exact_text_of_each_event() -> None:
    body = b'{"data":[{"event_id":"a","v":[1,2]},{"event_id":"b", "s":"]"}],"access_token":"x"}'
    assert raw_events(body) == ['{"event_id":"a","v":[1,2]}', '{"event_id":"b", "s":"]"}']
