"""Helpers for tests that run live threads, servers and processes.

Not fixtures, so a helper class or function can call them; imported as ``from live import ...``
(``tests/`` is on ``sys.path``: pytest puts ``tests/conftest.py``'s folder there).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
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
