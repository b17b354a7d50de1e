"""A fake Graph API for tests: this project's and yours.

`FakeGraphAPI` answers ``POST /{version}/{pixel_id}/events`` the way Meta does: it checks the token
(code 190), the batch size, and each event's required fields, age, hashing, ``fbc`` format,
Purchase currency and ``contents`` ids (code 100 with Meta's subcodes), rejects the whole request
when one event is bad, and answers ``{"events_received": N, ...}`` otherwise. Its checks are written
here independently of `capi_middleware.rules.events`, so it tests our event building instead
of agreeing with it by construction. Faults are scripted: ``fail_next``, ``rate_limit``,
``token_error``, ``poison``, ``latency``, ``hang_next``, ``html_502``, ``empty_200``, ``bad_json``,
``wrong_count``, ``down`` / ``outage()``.

Two ways to reach it:

- over real HTTP: ``fake.start()`` serves on 127.0.0.1 on a free port; pass ``graph_url=fake.url``;
- in process: ``transport=fake.transport()`` (an ``httpx.BaseTransport``) for a ``Sender``.

Pytest fixtures, for your ``conftest.py``::

    from capi_middleware.testing import fake_graph, fake_graph_config  # noqa: F401

``fake_graph`` is a started `FakeGraphAPI`; ``fake_graph_config`` a `CAPIConfig` pointed at it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import httpx

from capi_middleware.config import CAPIConfig

__all__ = [
    "FAKE_ACCESS_TOKEN",
    "FAKE_PIXEL_ID",
    "FakeGraphAPI",
    "RecordedRequest",
    "fake_graph",
    "fake_graph_config",
]

FAKE_PIXEL_ID = "1234567890"
FAKE_ACCESS_TOKEN = "EAAB-fake-token-for-tests"  # noqa: S105 - only ever sent to the fake

_PATH = re.compile(r"^/(v[0-9]+\.[0-9]+)/([0-9]+)/events/?$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
# fb.{subdomain_index}.{creation_time_ms}.{click id}[.{8 base64url chars or a 2-char token}]
_FBC = re.compile(r"^fb\.[0-9]+\.[0-9]{10,16}\.[A-Za-z0-9_~\-]+(\.[A-Za-z0-9_-]{2,8})?$")
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")
_MATCH_KEYS_HASHED = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country")
_ACTION_SOURCES = frozenset(
    {
        "website",
        "email",
        "app",
        "phone_call",
        "chat",
        "physical_store",
        "system_generated",
        "business_messaging",
        "other",
    }
)
_SEVEN_DAYS = 7 * 86_400
_SIXTY_TWO_DAYS = 62 * 86_400
_MAX_EVENTS = 1000

_Answer = tuple[int, dict[str, str], bytes]


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
        return [str(e.get("event_id")) for e in _decode_events(data) if isinstance(e, dict)]


@dataclass
class _Fault:
    status: int = 500
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: float | None = None  # seconds to hold the request, then drop the connection
    count_mismatch: bool = False  # answer 200 with the wrong events_received


class _Reject(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", {}).get("message", ""))
        self.status = status
        self.body = body


def _trace_id() -> str:
    return "A" + secrets.token_urlsafe(15)


def _error(
    code: int,
    message: str,
    *,
    subcode: int | None = None,
    type_: str = "OAuthException",
    title: str | None = None,
    user_msg: str | None = None,
    is_transient: bool = False,
) -> dict[str, Any]:
    """A Graph error body, shaped like Meta's."""
    err: dict[str, Any] = {
        "message": message,
        "type": type_,
        "code": code,
        "is_transient": is_transient,
        "fbtrace_id": _trace_id(),
    }
    if subcode is not None:
        err["error_subcode"] = subcode
    if title is not None:
        err["error_user_title"] = title
    if user_msg is not None:
        err["error_user_msg"] = user_msg
    return {"error": err}


def _decode_events(data: list[Any]) -> list[Any]:
    # Graph also accepts each event as a JSON string (Meta's Python SDK sends them that way).
    out = []
    for item in data:
        if isinstance(item, str):
            with contextlib.suppress(ValueError):
                item = json.loads(item)
        out.append(item)
    return out


def _bad_event(index: int, subcode: int | None, title: str, detail: str) -> _Reject:
    return _Reject(
        400,
        _error(
            100,
            "Invalid parameter",
            subcode=subcode,
            title=title,
            user_msg=f"data[{index}]: {detail}",
        ),
    )


def _check_event(index: int, event: Any, now: float) -> None:
    """Meta's per-event checks (a first failure rejects the whole request)."""
    if not isinstance(event, dict):
        raise _bad_event(index, None, "Invalid event", "each event must be a JSON object")
    name = event.get("event_name")
    if not isinstance(name, str) or not name.strip():
        raise _bad_event(index, None, "Missing event_name", "The parameter event_name is required")
    event_time = event.get("event_time")
    if isinstance(event_time, bool) or not isinstance(event_time, int):
        raise _bad_event(index, None, "Missing event_time", "event_time must be Unix seconds")
    action_source = event.get("action_source")
    if action_source not in _ACTION_SOURCES:
        raise _bad_event(index, None, "Invalid action_source", "action_source is required")
    window = _SIXTY_TWO_DAYS if action_source == "physical_store" else _SEVEN_DAYS
    if now - event_time > window:
        raise _bad_event(
            index, 2804003, "Event Timestamp Too Old", "event_time is too far in the past"
        )
    event_id = event.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        # Meta makes event_id optional; this project always sends one (dedup with the pixel).
        raise _bad_event(index, None, "Missing event_id", "event_id is required by this project")
    user_data = event.get("user_data")
    if not isinstance(user_data, dict) or not user_data:
        raise _bad_event(
            index, 2804050, "Too little customer information", "user_data needs match keys"
        )
    for key in _MATCH_KEYS_HASHED:
        if key not in user_data:
            continue
        values = user_data[key]
        values = values if isinstance(values, list) else [values]
        for value in values:
            if not isinstance(value, str) or not _HEX64.match(value):
                raise _bad_event(
                    index, 2804016, "User Parameter Not Hashed", f"user_data.{key} must be SHA-256"
                )
    fbc = user_data.get("fbc")
    if fbc is not None and (not isinstance(fbc, str) or not _FBC.match(fbc)):
        raise _bad_event(index, 2804001, "Invalid fbc Parameter", "fbc has the wrong format")
    custom = event.get("custom_data", {})
    if not isinstance(custom, dict):
        raise _bad_event(index, None, "Invalid custom_data", "custom_data must be an object")
    if name == "Purchase":
        currency = custom.get("currency")
        if not isinstance(currency, str) or not _CURRENCY.match(currency):
            raise _bad_event(
                index,
                2804010,
                "Purchase event missing currency",
                "Purchase needs currency (ISO 4217) and value",
            )
    contents = custom.get("contents")
    if contents is not None:
        ok = isinstance(contents, list) and all(
            isinstance(c, dict) and isinstance(c.get("id"), (str, int)) and str(c.get("id"))
            for c in contents
        )
        if not ok:
            raise _bad_event(
                index, 2804019, "Malformed contents", "each entry of contents needs an id"
            )


def _raise_on_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


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
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._sockets: set[socket.socket] = set()

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
            raw = json.dumps(_error(code, text, subcode=subcode, is_transient=transient)).encode()
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
    ) -> _Answer | float | None:
        """Answer one request: ``(status, headers, body)``; a float: hang that long, then drop;
        None: drop the connection. ``headers`` must have lowercase names. Latency is the caller's.
        """
        self._arrive()
        match = _PATH.match(path.split("?", 1)[0])
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
            answer: _Answer = (fault.status, fault.headers, fault.body)
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
        try:
            events = self._accept(method, match, headers, body)
        except _Reject as reject:
            return reject.status, reject.body, []
        doc = {"events_received": len(events), "messages": [], "fbtrace_id": _trace_id()}
        return 200, doc, events

    def _accept(
        self,
        method: str,
        match: re.Match[str] | None,
        headers: Mapping[str, str],
        body: bytes,
    ) -> list[dict[str, Any]]:
        if match is None:
            raise _Reject(400, _error(2500, "Unknown path components", type_="OAuthException"))
        pixel_id = match.group(2)
        if method != "POST":
            raise _Reject(
                400, _error(100, "Unsupported get request.", type_="GraphMethodException")
            )
        params = self._parse_body(headers, body)
        token = params.get("access_token")
        if not isinstance(token, str) or not token:
            raise _Reject(400, _error(190, "An access token is required to request this resource."))
        if not hmac.compare_digest(token.encode(), self.access_token.encode()):
            raise _Reject(
                400, _error(190, "Invalid OAuth access token - Cannot parse access token")
            )
        if self.app_secret:
            proof = hmac.new(self.app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()
            given = params.get("appsecret_proof")
            if not isinstance(given, str) or not hmac.compare_digest(given, proof):
                raise _Reject(
                    400,
                    _error(
                        100,
                        "Invalid appsecret_proof provided in the API argument",
                        type_="GraphMethodException",
                    ),
                )
        if self.pixel_ids is not None and pixel_id not in self.pixel_ids:
            raise _Reject(
                400,
                _error(
                    100,
                    f"Unsupported post request. Object with ID '{pixel_id}' does not exist, "
                    "cannot be loaded due to missing permissions, or does not support this "
                    "operation.",
                    subcode=33,
                    type_="GraphMethodException",
                ),
            )
        data = params.get("data")
        if not isinstance(data, list) or not data:
            raise _Reject(400, _error(100, "(#100) param data must be an array."))
        if len(data) > _MAX_EVENTS:
            raise _Reject(
                400, _error(100, f"(#100) param data must have at most {_MAX_EVENTS} elements")
            )
        events = _decode_events(data)
        with self._lock:
            poisoned = dict(self._poisoned)
        now = self._clock()
        for index, event in enumerate(events):
            if self.validate:
                _check_event(index, event, now)
            event_id = event.get("event_id") if isinstance(event, dict) else None
            if isinstance(event_id, str) and event_id in poisoned:
                subcode, message = poisoned[event_id]
                raise _bad_event(index, subcode, message, "rejected by FakeGraphAPI.poison")
        return [e if isinstance(e, dict) else {"raw": e} for e in events]

    @staticmethod
    def _parse_body(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        ctype = headers.get("content-type", "")
        try:
            if "application/x-www-form-urlencoded" in ctype:
                form = {k: v[0] for k, v in parse_qs(body.decode("utf-8")).items()}
                params: dict[str, Any] = dict(form)
                if "data" in form:
                    params["data"] = json.loads(form["data"], parse_constant=_raise_on_constant)
                return params
            doc = json.loads(body, parse_constant=_raise_on_constant)
        except (ValueError, UnicodeDecodeError):
            raise _Reject(400, _error(100, "(#100) The request body is not valid JSON")) from None
        if not isinstance(doc, dict):
            raise _Reject(400, _error(100, "(#100) The request body must be a JSON object"))
        return doc

    # -- real HTTP ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:{port}``: pass it as ``graph_url``. Needs `start`."""
        if self._server is None:
            raise RuntimeError("FakeGraphAPI: call start() before reading url")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeGraphAPI:
        """Serve on 127.0.0.1, on a free port, from a background thread. Returns self."""
        if self._server is not None:
            return self
        self._release.clear()
        server = _Server(("127.0.0.1", 0), _handler_for(self), self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},  # how long stop() may wait for the loop to see it
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
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
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
        return _FakeTransport(self)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: Any, fake: FakeGraphAPI) -> None:
        self.fake = fake
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Track connections so stop() can close keep-alive sockets still waiting for requests.
        with self.fake._lock:
            self.fake._sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.fake._lock:
            self.fake._sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid keep-alive (a killed app process, a closed pool) is
        # normal for a test server; anything else is logged, not printed to stderr.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        logging.getLogger("capi_middleware.testing").exception(
            "fake Graph API: error while serving %s", client_address
        )


def _handler_for(fake: FakeGraphAPI) -> type[BaseHTTPRequestHandler]:
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
                fake._release.wait(fake.latency)
            answer = fake.handle(self.command, self.path, headers, body)
            if answer is None or isinstance(answer, float):
                if isinstance(answer, float):
                    fake._release.wait(answer)
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


class _FakeTransport(httpx.BaseTransport):
    def __init__(self, fake: FakeGraphAPI) -> None:
        self._fake = fake

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        timeouts = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read") if isinstance(timeouts, dict) else None
        fake = self._fake
        if fake.latency > 0:
            if read_timeout is not None and fake.latency >= read_timeout:
                fake._release.wait(read_timeout)
                raise httpx.ReadTimeout("fake: latency past the read timeout", request=request)
            fake._release.wait(fake.latency)
        headers = {k.lower(): v for k, v in request.headers.items()}
        target = request.url.raw_path.decode("ascii")
        answer = fake.handle(request.method, target, headers, body)
        if answer is None:
            raise httpx.ConnectError("fake: Graph API is down", request=request)
        if isinstance(answer, float):
            fake._release.wait(answer if read_timeout is None else min(answer, read_timeout))
            raise httpx.ReadTimeout("fake: the request hung", request=request)
        status, hdrs, content = answer
        return httpx.Response(status, headers=hdrs, content=content, request=request)


# -- pytest fixtures ------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed to use the fixtures
    pass
else:

    @pytest.fixture
    def fake_graph() -> Iterator[FakeGraphAPI]:
        """A started `FakeGraphAPI` over real HTTP on 127.0.0.1, stopped after the test."""
        with FakeGraphAPI() as fake:
            yield fake

    @pytest.fixture
    def fake_graph_config(fake_graph: FakeGraphAPI) -> CAPIConfig:
        """A `CAPIConfig` for `FAKE_PIXEL_ID`, pointed at ``fake_graph``, flushing quickly."""
        return CAPIConfig(
            pixel_id=FAKE_PIXEL_ID,
            access_token=fake_graph.access_token,
            graph_url=fake_graph.url,
            flush_interval=0.05,
            partner_agent=None,
        )
