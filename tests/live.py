"""Helpers for tests that run live threads, servers and processes.

Not fixtures, so a helper class or function can call them; imported as ``from live import ...``
(``tests/`` is on ``sys.path``: pytest puts ``tests/conftest.py``'s folder there).
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx

from capi_middleware.testing import FakeGraphAPI


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``condition`` until it holds; False if it still does not after ``timeout`` seconds.

    For state another thread or process makes true (a sender's counters, rows in a file). The
    timeout only guards a hang: a passing test never waits for it. Use an event instead where
    the code under test offers one (``FakeGraphAPI.wait_for_events``, ``Sender.flush``).
    """
    deadline = time.monotonic() + timeout
    pause = 0.001  # doubled up to 20 ms: quick to notice, and light on a slow condition
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
    return condition()


def wait_until_serving(
    url: str,
    proc: subprocess.Popen[str] | subprocess.Popen[bytes],
    timeout: float = 60.0,
    logs: Callable[[], object] = lambda: "",
) -> None:
    """Wait until a server process answers HTTP at ``url`` (any status).

    Fails, with ``logs()`` in the message, if the process exits first or never answers.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited early (code {proc.returncode}):\n{logs()}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.02)
    raise AssertionError(f"the server did not answer {url} within {timeout:g}s:\n{logs()}")


# -- what a fleet of processes delivered ---------------------------------------------------------


@dataclass(frozen=True)
class Copy:
    """One copy of an event that the fake accepted."""

    request: int  # index in fake.requests
    sender: str  # the partner_agent of the process that sent it
    raw: str  # the event's JSON exactly as it was in the request body


def raw_events(body: bytes) -> list[str]:
    """The ``data`` array's elements as the exact text they had in the body."""
    text = body.decode("utf-8")
    decoder = json.JSONDecoder()
    start = text.index("[", text.index('"data"')) + 1
    out = []
    while text[start] != "]":
        _, end = decoder.raw_decode(text, start)
        out.append(text[start:end])
        start = end + 1 if text[end] == "," else end
    return out


def delivered_copies(fake: FakeGraphAPI) -> dict[str, list[Copy]]:
    copies: dict[str, list[Copy]] = defaultdict(list)
    for index, request in enumerate(fake.requests):
        if request.status != 200:
            continue
        agent = str(request.json().get("partner_agent"))
        for raw in raw_events(request.body):
            copies[json.loads(raw)["event_id"]].append(Copy(index, agent, raw))
    return copies


def last_delivered_request(fake: FakeGraphAPI, sender: str) -> int | None:
    """The index in ``fake.requests`` of ``sender``'s (its partner_agent's) last 200, or None."""
    indexes = [
        i
        for i, r in enumerate(fake.requests)
        if r.status == 200 and r.json().get("partner_agent") == sender
    ]
    return max(indexes) if indexes else None


# -- shoppers: load on a shop served in another process -----------------------------------------


class Shopper(threading.Thread):
    """Buys (``POST /buy``) in a loop until stopped or its server dies; keeps the event_id of
    every purchase answered ``queued``, and how long each took.

    ``pace``: seconds between purchases (a shop's pace, not a benchmark's: it leaves the CPU to
    the servers).
    """

    def __init__(self, base: str, tag: str, pace: float = 0.0) -> None:
        super().__init__(name=f"shopper-{tag}", daemon=True)
        self.base = base
        self.tag = tag
        self.pace = pace
        self.committed: list[str] = []
        self.unexpected: list[str] = []
        self.took: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            n = 0
            while not self.halt.is_set():
                n += 1
                started = time.monotonic()
                try:
                    response = client.post(f"/buy?n={self.tag}-{n}")
                except httpx.TransportError:
                    return  # killed: this request's commit may or may not have happened
                self.took.append(time.monotonic() - started)
                doc = response.json() if response.status_code == 200 else None
                if doc is not None and doc["status"] == "queued":
                    self.committed.append(doc["event_id"])
                else:
                    self.unexpected.append(f"{response.status_code} {response.text[:200]}")
                if self.pace:
                    time.sleep(self.pace)


def shop(bases: Iterable[str], tag: str, pace: float = 0.0) -> list[Shopper]:
    """A started `Shopper` per server base URL."""
    shoppers = [Shopper(base, f"{tag}-{i}", pace) for i, base in enumerate(bases)]
    for shopper in shoppers:
        shopper.start()
    return shoppers


def finish(shoppers: list[Shopper]) -> list[str]:
    """Stop the shoppers; every event_id they saw queued (none may have seen anything else)."""
    for shopper in shoppers:
        shopper.halt.set()
    for shopper in shoppers:
        shopper.join(30)
        assert not shopper.is_alive()
        assert shopper.unexpected == []
    return [event_id for shopper in shoppers for event_id in shopper.committed]
