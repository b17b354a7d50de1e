"""Helpers for tests that run live threads, servers and processes.

Not fixtures, so a helper class or function can call them; imported as ``from live import ...``
(``tests/`` is on ``sys.path``: pytest puts ``tests/conftest.py``'s folder there).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import httpx


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
