"""How the fake Graph API is reached: a real HTTP server on 127.0.0.1, or an in-process transport.

Both hand each request to an `Answerer` (`FakeGraphAPI`) and play its answer: a response, a
dropped connection, or a request held until its time runs out or the fake stops (``release``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import httpx

__all__ = ["Answer", "Answerer", "FakeServer", "FakeTransport"]

logger = logging.getLogger("capi_middleware.testing")

# (status, headers, body)
Answer = tuple[int, dict[str, str], bytes]


class Answerer(Protocol):
    """What the server and the transport need from the fake."""

    latency: float  # seconds to wait before answering

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Answer | float | None:
        """An answer; a float: hold the request that long, then drop it; None: drop it now."""
        ...


class FakeServer(ThreadingHTTPServer):
    """HTTP/1.1 with keep-alive on 127.0.0.1, a thread per connection, answered by ``fake``.

    Parameters:
        fake: answers each request.
        release: set when the fake stops; ends every wait (latency, held requests) at once.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, fake: Answerer, release: threading.Event) -> None:
        self.fake = fake
        self.release = release
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _handler_for(fake, release))

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def close_connections(self) -> None:
        """Close every open connection (keep-alive ones waiting for a request included)."""
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid keep-alive (a killed app process, a closed pool) is
        # normal for a test server; anything else is logged, not printed to stderr.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        logger.exception("fake Graph API: error while serving %s", client_address)


def _handler_for(fake: Answerer, release: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like graph.facebook.com
        disable_nagle_algorithm = True  # one small answer per request: send it now
        server_version = "FakeGraphAPI"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:  # silence stderr
            return

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            if fake.latency > 0:
                release.wait(fake.latency)
            answer = fake.handle(self.command, self.path, headers, body)
            if answer is None or isinstance(answer, float):
                if isinstance(answer, float):
                    release.wait(answer)
                self.close_connection = True  # drop it: the client sees no answer
                return
            status, hdrs, content = answer
            self.send_response(status)
            for name, value in hdrs.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def do_POST(self) -> None:
            self._serve()

        def do_GET(self) -> None:
            self._serve()

    return Handler


class FakeTransport(httpx.BaseTransport):
    """An ``httpx`` transport answered by ``fake`` in process (no socket), faults included.

    A request slower than the client's read timeout raises ``httpx.ReadTimeout``, a dropped one
    ``httpx.ConnectError``, as over a network.
    """

    def __init__(self, fake: Answerer, release: threading.Event) -> None:
        self.fake = fake
        self.release = release

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        timeouts = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read") if isinstance(timeouts, dict) else None
        fake, release = self.fake, self.release
        if fake.latency > 0:
            if read_timeout is not None and fake.latency >= read_timeout:
                release.wait(read_timeout)
                raise httpx.ReadTimeout("fake: latency past the read timeout", request=request)
            release.wait(fake.latency)
        headers = {k.lower(): v for k, v in request.headers.items()}
        target = request.url.raw_path.decode("ascii")
        answer = fake.handle(request.method, target, headers, body)
        if answer is None:
            raise httpx.ConnectError("fake: Graph API is down", request=request)
        if isinstance(answer, float):
            release.wait(answer if read_timeout is None else min(answer, read_timeout))
            raise httpx.ReadTimeout("fake: the request hung", request=request)
        status, hdrs, content = answer
        return httpx.Response(status, headers=hdrs, content=content, request=request)
