"""Fixtures shared by the whole suite.

One block per concern, each with its own heading; add a new concern as a new block.
Helpers that are plain functions, not fixtures (a free port, waiting on a condition), are in
``tests/live.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from live import free_port, wait_until

# -- the fake Graph API ----------------------------------------------------------------------
# The package's own fixtures, imported the way a shop's conftest.py does (README, "Testing"):
# ``fake_graph`` is a started FakeGraphAPI over real HTTP on 127.0.0.1, stopped after the test;
# ``fake_graph_config`` a CAPIConfig pointed at it.
from capi_middleware.testing import FakeGraphAPI, fake_graph, fake_graph_config

__all__ = ["fake", "fake_graph", "fake_graph_config"]


@pytest.fixture
def no_meta_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``META_*`` variable of the machine's reaches the test (the CLI reads them)."""
    for name in list(os.environ):
        if name.startswith("META_"):
            monkeypatch.delenv(name)


@pytest.fixture
def fake(fake_graph: FakeGraphAPI) -> FakeGraphAPI:
    """``fake_graph`` under the short name most tests use."""
    return fake_graph


# -- a private redis-server ------------------------------------------------------------------
@dataclass
class RedisServer:
    """A private ``redis-server`` (Debian's package) on 127.0.0.1 with AOF on.

    ``stop()`` and ``start()`` play an outage or a restart on the same port and data directory
    (``appendfsync always``: what Redis acknowledged is on disk).
    """

    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--appendonly", "yes",
                "--appendfsync", "always", "--save", "", "--daemonize", "no",
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        proc = self.proc
        if not wait_until(lambda: self.answers() or proc.poll() is not None, timeout=10):
            raise RuntimeError(f"redis-server did not start on port {self.port}")
        if not self.answers():
            raise RuntimeError(f"redis-server exited on port {self.port}")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def crash(self) -> None:
        """SIGKILL: no shutdown, Redis keeps only what its append-only file holds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self) -> object:
        import redis

        return redis.Redis.from_url(self.url)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the session (skips where Debian's redis-server is missing:
    ``.ci/run`` installs it)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
