"""Graph answers from a hostile or broken server (issue 10, items 7 and 8, and the Retry-After
cap): the sender is never stalled past a request's deadline, never reads an unbounded answer,
never lets an unparseable answer escape as a traceback, and never pauses for more than an hour.

The slow and huge answers come from a real HTTP server on 127.0.0.1 that writes raw bytes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from built_events import make_event

from capi_middleware.config import CAPIConfig
from capi_middleware.delivery.sender import Sender
from capi_middleware.delivery.stats import DeliveryStats
from capi_middleware.testing.fake import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID, FakeGraphAPI

WAIT = 10.0


def _balanced(stats: DeliveryStats) -> DeliveryStats:
    assert stats.balanced, stats
    return stats


def _sender(url: str, **options: Any) -> Sender:
    values: dict[str, Any] = {
        "pixel_id": FAKE_PIXEL_ID,
        "access_token": FAKE_ACCESS_TOKEN,
        "graph_url": url,
        "flush_interval": 0.02,
        "timeout": 2.0,
    }
    values.update(options)
    sender = Sender(CAPIConfig(**values))
    sender.backoff_base = 0.02
    sender.backoff_cap = 0.05
    return sender


# -- a raw HTTP server --------------------------------------------------------------------------

Answer = Callable[[socket.socket, int], None]  # (connection, request number from 0)

OK_BODY = b'{"events_received":1,"messages":[],"fbtrace_id":"T"}'


def ok_answer(conn: socket.socket, _: int) -> None:
    conn.sendall(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(OK_BODY), OK_BODY)
    )


class RawServer:
    """Answers each POST with ``answers[n]`` (the last one repeats); counts the bytes it sent."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.requests = 0
        self.sent: list[int] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> RawServer:
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            n = self.requests
            self.requests += 1
            t = threading.Thread(target=self._serve, args=(conn, n), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket, n: int) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while len(body) < length:
                body += conn.recv(65536)
            answer = self.answers[min(n, len(self.answers) - 1)]
            with contextlib.suppress(OSError):  # the client hung up: the point of some tests
                answer(conn, n)

    def stopped(self) -> bool:
        return self._stop.is_set()


def drip(conn: socket.socket, n: int, *, server: RawServer, every: float) -> None:
    """A correct 200 answer, one byte every ``every`` seconds."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % len(OK_BODY)
    )
    conn.sendall(head)
    for i in range(len(OK_BODY)):
        if server.stopped():
            return
        conn.sendall(OK_BODY[i : i + 1])
        time.sleep(every)


def huge(conn: socket.socket, n: int, *, server: RawServer, size: int, declare: bool) -> None:
    """A 200 answer of ``size`` bytes of JSON whitespace, with or without its content-length."""
    length = b"content-length: %d\r\n" % size if declare else b""
    conn.sendall(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n%sconnection: close\r\n\r\n" % length
    )
    block = b" " * 65536
    sent = 0
    try:
        while sent < size and not server.stopped():
            conn.sendall(block)
            sent += len(block)
    finally:
        server.sent.append(sent)


@pytest.fixture
def closing() -> Iterator[list[Sender]]:
    made: list[Sender] = []
    yield made
    for s in made:
        s.close(0.5)


# -- item 7: one deadline per request, a bounded answer ------------------------------------------


def test_an_answer_dripped_slowly_is_cut_at_the_requests_deadline(
    closing: list[Sender], caplog: pytest.LogCaptureFixture
) -> None:
    server = RawServer([])
    # 52 bytes at one per 0.1 s: every read beats a 0.5 s read timeout, the whole takes 5 s.
    server.answers = [lambda c, n: drip(c, n, server=server, every=0.1), ok_answer]
    with server:
        sender = _sender(server.url, timeout=0.5)
        closing.append(sender)
        caplog.set_level(logging.WARNING, "capi_middleware")
        started = time.monotonic()
        assert sender.submit(make_event()).ok
        assert sender.flush(3.0), "the dripping answer held the sender past its deadline"
        assert time.monotonic() - started < 3.0
        stats = _balanced(sender.stats())
        assert (stats.delivered, stats.retried) == (1, 1)
        assert server.requests == 2
    lines = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "timeout" in lines[0]


def late(conn: socket.socket, n: int) -> None:
    """A correct 200 whose head comes after 0.3 s and whole body 0.35 s later."""
    time.sleep(0.3)
    conn.sendall(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % len(OK_BODY)
    )
    time.sleep(0.35)
    conn.sendall(OK_BODY)


def test_a_complete_answer_that_arrives_after_the_deadline_still_counts(
    closing: list[Sender],
) -> None:
    # Each wait is within the 0.5 s read timeout; the whole is past the deadline, but complete:
    # Meta took the events, so sending them again would only make duplicates.
    with RawServer([late]) as server:
        sender = _sender(server.url, timeout=0.5)
        closing.append(sender)
        assert sender.submit(make_event()).ok
        assert sender.flush(WAIT)
        stats = _balanced(sender.stats())
        assert (stats.delivered, stats.retried) == (1, 0)
        assert server.requests == 1


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "chunked-or-close"])
def test_a_huge_answer_is_not_read_past_the_cap(
    closing: list[Sender], caplog: pytest.LogCaptureFixture, declare: bool
) -> None:
    server = RawServer([])
    size = 64 * 1024 * 1024
    server.answers = [lambda c, n: huge(c, n, server=server, size=size, declare=declare), ok_answer]
    with server:
        sender = _sender(server.url, timeout=5.0)
        closing.append(sender)
        caplog.set_level(logging.WARNING, "capi_middleware")
        assert sender.submit(make_event()).ok
        assert sender.flush(WAIT)
        stats = _balanced(sender.stats())
        assert (stats.delivered, stats.retried) == (1, 1)
        deadline = time.monotonic() + WAIT
        while not server.sent and time.monotonic() < deadline:
            time.sleep(0.01)
    # The sender hung up after the first few hundred KiB; the rest never left the server.
    assert server.sent
    assert server.sent[0] < 16 * 1024 * 1024, server.sent
    lines = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "answer_too_large" in lines[0]


# -- item 8: an unparseable answer is one more transient failure ---------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"[" * 100_000 + b"]" * 100_000),
        (400, b'{"error":' * 20_000 + b"1" + b"}" * 20_000),
        (500, b"[" * 100_000),
        (200, b'{"events_received": 1,'),
        (400, b'{"error": {"code": 100, "message": "\xff\xfe"'),
    ],
    ids=["nested-200", "nested-400", "unclosed-500", "truncated-200", "not-utf8-400"],
)
def test_an_unparseable_answer_is_retried_and_logged_once_with_its_size(
    fake_graph: FakeGraphAPI,
    closing: list[Sender],
    caplog: pytest.LogCaptureFixture,
    status: int,
    body: bytes,
) -> None:
    fake_graph.fail_next(1, status=status, body=body)
    sender = _sender(fake_graph.url)
    closing.append(sender)
    caplog.set_level(logging.DEBUG, "capi_middleware")
    event = make_event()
    assert sender.submit(event).ok
    assert sender.flush(WAIT)
    stats = _balanced(sender.stats())
    assert (stats.delivered, stats.retried, stats.dead_lettered) == (1, 1, {})
    assert fake_graph.event_ids == [event["event_id"]]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert f"{len(body)} bytes" in lines[0]
    assert "unparseable" in lines[0]


# -- also seen: one Retry-After pauses an hour at most -------------------------------------------


def test_a_huge_retry_after_is_capped_at_an_hour_and_the_cap_is_logged(
    fake_graph: FakeGraphAPI, closing: list[Sender], caplog: pytest.LogCaptureFixture
) -> None:
    fake_graph.rate_limit(1, retry_after=1e9)
    sender = _sender(fake_graph.url)
    closing.append(sender)
    caplog.set_level(logging.WARNING, "capi_middleware")
    assert sender.submit(make_event()).ok
    assert fake_graph.wait_for_requests(1, WAIT)
    deadline = time.monotonic() + WAIT
    while sender.stats().pause_reason != "rate_limited" and time.monotonic() < deadline:
        time.sleep(0.01)
    paused = sender.stats()
    assert paused.paused_until is not None
    assert 3590 < paused.paused_until - time.time() <= 3600.5
    (line,) = [r for r in caplog.records if "rate limited" in r.getMessage()]
    assert "capped at 3600s" in line.getMessage()
    fields = json.loads(json.dumps(line.capi))  # type: ignore[attr-defined]
    assert fields["pause"] == 3600.0
    sender.resume()
    assert sender.flush(WAIT)
    assert _balanced(sender.stats()).delivered == 1
