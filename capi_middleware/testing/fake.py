"""A fake Graph API for tests: this project's and yours.

`FakeGraphAPI` answers ``POST /{version}/{pixel_id}/events`` the way Meta does (the rules are in
`capi_middleware.testing.oracle`, written independently of `capi_middleware.rules.events`),
records what it received and accepted, and plays scripted faults: ``fail_next``, ``rate_limit``,
``token_error``, ``poison``, ``latency``, ``hang_next``, ``html_502``, ``empty_200``,
``bad_json``, ``wrong_count``, ``down`` / ``outage()``.

Two ways to reach it (`capi_middleware.testing.server`):

- over real HTTP: ``fake.start()`` serves on 127.0.0.1 on a free port; pass ``graph_url=fake.url``;
- in process: ``transport=fake.transport()`` (an ``httpx.BaseTransport``) for a ``Sender``.

Pytest fixtures, for your ``conftest.py`` (`capi_middleware.testing.fixtures`)::

    from capi_middleware.testing import fake_graph, fake_graph_config  # noqa: F401
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from capi_middleware.testing.oracle import (
    EVENTS_PATH,
    Rejected,
    accept_events,
    decode_events,
    graph_error,
    trace_id,
)
from capi_middleware.testing.server import Answer, FakeServer, FakeTransport

__all__ = ["FAKE_ACCESS_TOKEN", "FAKE_PIXEL_ID", "FakeGraphAPI", "RecordedRequest"]

FAKE_PIXEL_ID = "1234567890"
FAKE_ACCESS_TOKEN = "EAAB-fake-token-for-tests"  # noqa: S105 - only ever sent to the fake


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, and what it answered.

    Parameters:
        method, path: as received.
        pixel_id: from the path (None when the path was not an events endpoint).
        headers: lowercase names.
        body: the raw request body.
        status: the status answered (0: the connection was dropped or the request hung).
        answer: the raw answer body.
    """

    method: str
    path: str
    pixel_id: str | None
    headers: Mapping[str, str]
    body: bytes
    status: int
    answer: bytes

    def json(self) -> Any:
        """The request body as JSON (None when it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def event_ids(self) -> list[str]:
        """The ``event_id`` of every event in the request body, in order."""
        doc = self.json()
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            return []
        return [str(e.get("event_id")) for e in decode_events(data) if isinstance(e, dict)]


@dataclass
class _Fault:
    status: int = 500
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: float | None = None  # seconds to hold the request, then drop the connection
    count_mismatch: bool = False  # answer 200 with the wrong events_received


class FakeGraphAPI:
    """A fake of Meta's Graph API ``/events`` endpoint, with scripted faults.

    Parameters:
        access_token: the token requests must carry (else code 190).
        app_secret: when set, ``appsecret_proof`` must match it (else code 100).
        pixel_ids: pixels that exist (others: code 100, subcode 33); None accepts any.
        validate: run the per-event checks (True); False only counts events (benchmarks).
        on_request: called with ``(pixel_id, body, answer)`` after each JSON answer.
        clock: the fake's idea of now, for the age check (default ``time.time``).

    Attributes you may set at any time: ``access_token``, ``latency`` (seconds before answering),
    ``down`` (drop every connection without an answer).
    """

    def __init__(
        self,
        *,
        access_token: str = FAKE_ACCESS_TOKEN,
        app_secret: str | None = None,
        pixel_ids: tuple[str, ...] | None = None,
        validate: bool = True,
        on_request: Callable[[str, Mapping[str, Any], Mapping[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.access_token = access_token
        self.app_secret = app_secret
        self.pixel_ids = pixel_ids
        self.validate = validate
        self.on_request = on_request
        self.latency = 0.0
        self.down = False
        self._clock = clock
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._requests: list[RecordedRequest] = []
        self._faults: deque[_Fault] = deque()
        self._poisoned: dict[str, tuple[int, str]] = {}
        self._attempts = 0
        self._release = threading.Event()
        self._server: FakeServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "not started"
        return f"FakeGraphAPI({where}, events={len(self._events)})"

    # -- records --------------------------------------------------------------------------

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event accepted, in arrival order (a copy)."""
        with self._lock:
            return [e for _, e in self._events]

    def events_for(self, pixel_id: str) -> list[dict[str, Any]]:
        """The events accepted for one pixel."""
        with self._lock:
            return [e for p, e in self._events if p == pixel_id]

    @property
    def event_ids(self) -> list[str]:
        """The ``event_id`` of every accepted event, in arrival order (duplicates kept)."""
        return [str(e.get("event_id")) for e in self.events]

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request answered or dropped, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def attempts(self) -> int:
        """Requests that arrived, answered or not (``down`` and hung ones included)."""
        with self._lock:
            return self._attempts

    def wait_for_events(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` events were accepted; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self._events) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._arrived.wait(left)
            return True

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` requests arrived (answered or not); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while self._attempts < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._arrived.wait(left)
            return True

    def reset(self) -> None:
        """Forget recorded events and requests, scripted faults and poisons."""
        with self._lock:
            self._events.clear()
            self._requests.clear()
            self._faults.clear()
            self._poisoned.clear()
            self._attempts = 0

    # -- faults ---------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        code: int | None = None,
        subcode: int | None = None,
        message: str | None = None,
        is_transient: bool | None = None,
        retry_after: float | None = None,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``n`` requests with ``status`` and a Meta error body.

        ``body`` replaces the error body verbatim; without ``code`` a 5xx gets Meta's
        "unexpected error" (code 2, transient) and anything else code 1.
        """
        hdrs = dict(headers or {})
        if retry_after is not None:
            hdrs["retry-after"] = f"{retry_after:g}"
        if body is None:
            if code is None:
                code = 2 if status >= 500 else 1
            transient = is_transient if is_transient is not None else status >= 500
            text = message or (
                "An unexpected error has occurred. Please retry your request later."
                if transient
                else "An unknown error occurred"
            )
            raw = json.dumps(
                graph_error(code, text, subcode=subcode, is_transient=transient)
            ).encode()
            hdrs.setdefault("content-type", "application/json; charset=UTF-8")
        else:
            raw = body.encode() if isinstance(body, str) else body
        with self._lock:
            for _ in range(n):
                self._faults.append(_Fault(status, raw, dict(hdrs)))

    def rate_limit(
        self, n: int = 1, *, retry_after: float | None = None, code: int | None = None
    ) -> None:
        """Throttle the next ``n`` requests: HTTP 429, or HTTP 400 with ``code`` (17, 80004...)."""
        if code is None:
            self.fail_next(
                n, status=429, code=4, message="(#4) Application request limit reached",
                retry_after=retry_after, is_transient=True,
            )  # fmt: skip
        else:
            self.fail_next(
                n, status=400, code=code, message=f"(#{code}) User request limit reached",
                retry_after=retry_after, is_transient=True,
            )  # fmt: skip

    def token_error(self, n: int = 1) -> None:
        """Answer the next ``n`` requests with an expired-token error (code 190, subcode 463)."""
        self.fail_next(
            n, status=400, code=190, subcode=463, is_transient=False,
            message="Error validating access token: Session has expired.",
        )  # fmt: skip

    def html_502(self, n: int = 1) -> None:
        """A load balancer's HTML 502 page, for the next ``n`` requests."""
        self.fail_next(
            n,
            status=502,
            body=b"<html><body><h1>502 Bad Gateway</h1></body></html>",
            headers={"content-type": "text/html"},
        )

    def empty_200(self, n: int = 1) -> None:
        """An empty 200 answer, for the next ``n`` requests."""
        self.fail_next(n, status=200, body=b"", headers={"content-type": "application/json"})

    def bad_json(self, n: int = 1) -> None:
        """A 200 answer that is not JSON, for the next ``n`` requests."""
        self.fail_next(n, status=200, body=b'{"events_received": 3,', headers={})

    def wrong_count(self, n: int = 1) -> None:
        """A 200 answer whose ``events_received`` is one short (events not recorded)."""
        with self._lock:
            for _ in range(n):
                self._faults.append(_Fault(status=200, count_mismatch=True))

    def hang_next(self, n: int = 1, *, seconds: float = 30.0) -> None:
        """Hold the next ``n`` requests without answering (until ``seconds`` or `stop`)."""
        with self._lock:
            for _ in range(n):
                self._faults.append(_Fault(status=0, hang=float(seconds)))

    def poison(self, event_id: str, *, subcode: int = 2804019, message: str = "") -> None:
        """Any request carrying ``event_id`` is rejected whole: HTTP 400, code 100, ``subcode``."""
        with self._lock:
            self._poisoned[event_id] = (subcode, message or "Invalid parameter")

    def unpoison(self, event_id: str) -> None:
        """Stop rejecting ``event_id``."""
        with self._lock:
            self._poisoned.pop(event_id, None)

    @contextlib.contextmanager
    def outage(self) -> Iterator[FakeGraphAPI]:
        """Drop every connection inside the ``with`` block."""
        self.down = True
        try:
            yield self
        finally:
            self.down = False

    # -- answering ------------------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _arrive(self) -> None:
        with self._arrived:
            self._attempts += 1
            self._arrived.notify_all()

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Answer | float | None:
        """Answer one request: ``(status, headers, body)``; a float: hang that long, then drop;
        None: drop the connection. ``headers`` must have lowercase names. Latency is the caller's.
        """
        self._arrive()
        match = EVENTS_PATH.match(path.split("?", 1)[0])
        pixel_id = match.group(2) if match else None
        if self.down:
            self._record(RecordedRequest(method, path, pixel_id, dict(headers), body, 0, b""))
            return None
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault.hang is not None:
            self._record(RecordedRequest(method, path, pixel_id, dict(headers), body, 0, b""))
            return fault.hang
        status, doc, events = self._answer(method, match, headers, body)
        if fault is not None and not fault.count_mismatch:
            answer: Answer = (fault.status, fault.headers, fault.body)
        elif fault is not None:  # events_received one short: not a delivery, nothing recorded
            doc = {"events_received": max(0, len(events) - 1), "messages": [], "fbtrace_id": ""}
            answer = (200, {"content-type": "application/json"}, json.dumps(doc).encode())
        else:
            answer = (status, {"content-type": "application/json"}, json.dumps(doc).encode())
            if status == 200 and pixel_id is not None:
                with self._arrived:
                    self._events.extend((pixel_id, e) for e in events)
                    self._arrived.notify_all()
        self._record(
            RecordedRequest(method, path, pixel_id, dict(headers), body, answer[0], answer[2])
        )
        if self.on_request is not None and pixel_id is not None:
            try:
                sent = json.loads(body) if body else {}
                self.on_request(pixel_id, sent, json.loads(answer[2]) if answer[2] else {})
            except Exception:  # a test's callback must not turn into a fake 500
                logging.getLogger("capi_middleware.testing").exception("on_request raised")
        return answer

    def _answer(
        self,
        method: str,
        match: re.Match[str] | None,
        headers: Mapping[str, str],
        body: bytes,
    ) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
        with self._lock:
            poisoned = dict(self._poisoned)
        try:
            events = accept_events(
                method,
                match,
                headers,
                body,
                access_token=self.access_token,
                app_secret=self.app_secret,
                pixel_ids=self.pixel_ids,
                validate=self.validate,
                poisoned=poisoned,
                now=self._clock(),
            )
        except Rejected as reject:
            return reject.status, reject.body, []
        doc = {"events_received": len(events), "messages": [], "fbtrace_id": trace_id()}
        return 200, doc, events

    # -- real HTTP ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:{port}``: pass it as ``graph_url``. Needs `start`."""
        if self._server is None:
            raise RuntimeError("FakeGraphAPI: call start() before reading url")
        return self._server.url

    def start(self) -> FakeGraphAPI:
        """Serve on 127.0.0.1, on a free port, from a background thread. Returns self."""
        if self._server is not None:
            return self
        self._release.clear()
        server = self._server = FakeServer(self, self._release)
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.005},  # how long stop() may wait for the loop to see it
            name="capi-fake-graph",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release hung requests and close every connection."""
        server = self._server
        if server is None:
            return
        self._release.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeGraphAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- in process -----------------------------------------------------------------------

    def transport(self) -> httpx.BaseTransport:
        """An ``httpx`` transport that answers in process (no socket), faults included."""
        return FakeTransport(self, self._release)
