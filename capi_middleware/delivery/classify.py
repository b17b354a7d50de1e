"""Graph API answer → what the sender does next (META_CAPI_REFERENCE.md §5). Pure.

Every answer falls in exactly one class:

- ``delivered``: HTTP 200 whose ``events_received`` equals the number of events sent.
- ``transient``: network errors, timeouts, HTTP 5xx and 408, ``code`` 1 or 2, ``is_transient``,
  and every odd answer (an HTML 502 page, an empty or non-JSON 200, ``events_received`` that does
  not match, a JSON answer that cannot be parsed, however deeply nested): retry the same bytes
  with backoff. The verdict's message gives the answer's size, never its content.
- ``rate_limited``: HTTP 429 or ``code`` 4, 17, 32, 341, 613, 80000-80014: pause the whole sender,
  honour ``Retry-After``, keep the events.
- ``bad_config``: ``code`` 190 (token), 10 and 200-299 (permissions), 100 with subcode 33 (no such
  pixel), 803 and 2500 (no such object or path), a rejected ``appsecret_proof``, HTTP 401/403/404
  without a known code: pause, keep the events, log once.
- ``bad_event``: HTTP 400 with ``code`` 100 (subcodes 2804xxx) and any other 4xx: one event may
  spoil the whole request, so the sender splits the batch to find it.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx

__all__ = [
    "CONFIG_CODES",
    "RATE_LIMIT_CODES",
    "TRANSIENT_CODES",
    "Verdict",
    "VerdictKind",
    "classify_answer",
    "classify_exception",
    "parse_retry_after",
]

VerdictKind = Literal["delivered", "transient", "rate_limited", "bad_event", "bad_config"]

# Graph's throttling codes: app (4), user (17), page/account (32, 613), ads API (80000-80014),
# and 341 ("application limit reached").
RATE_LIMIT_CODES: frozenset[int] = frozenset({4, 17, 32, 341, 613, *range(80000, 80015)})
# 190: the token is invalid or expired; 10 and 200-299: permission denied; 803 and 2500: the
# URL names no such object or path (a wrong pixel id, graph_url or api_version).
CONFIG_CODES: frozenset[int] = frozenset({10, 190, 803, 2500, *range(200, 300)})
# 1: "An unknown error occurred"; 2: "Service temporarily unavailable".
TRANSIENT_CODES: frozenset[int] = frozenset({1, 2})
_NO_SUCH_OBJECT_SUBCODE = 33  # code 100, subcode 33: the pixel id does not exist / no access
_MAX_RETRY_AFTER = 24 * 3600.0  # a nonsense Retry-After must not park the sender for a year


@dataclass(frozen=True)
class Verdict:
    """What one Graph answer means for the events it carried.

    Parameters:
        kind: the class of the answer (see the module docstring).
        reason: a short machine word for logs and counters: ``"ok"``, ``"http_503"``,
            ``"network"``, ``"timeout"``, ``"odd_answer"``, ``"invalid_event"``, ``"rejected"``...
        status: the HTTP status, None when no answer came.
        code, subcode: Meta's ``error.code`` and ``error.error_subcode``.
        message: Meta's ``error.message`` (or a description of the odd answer). The caller redacts
            secrets from it before it reaches a log line.
        fbtrace_id: Meta's trace id, for support tickets.
        retry_after: seconds from a ``Retry-After`` header, when there was one.
    """

    kind: VerdictKind
    reason: str
    status: int | None = None
    code: int | None = None
    subcode: int | None = None
    message: str = ""
    fbtrace_id: str | None = None
    retry_after: float | None = None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent
    or unreadable. Negative values become 0; absurd ones are capped at a day."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


_UNPARSEABLE = object()  # an answer that claims to be JSON and cannot be parsed


def _parse_json(body: bytes) -> Any:
    """The answer's JSON; None for a body that is not JSON at all (an HTML page, plain text),
    `_UNPARSEABLE` for one that looks like JSON and cannot be read."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        # Deeply nested JSON (``[[[[...``) exhausts the parser's recursion: one more unreadable
        # answer, never an exception out of the sender's round (issue 10).
        return _UNPARSEABLE if body.lstrip()[:1] in (b"{", b"[") else None


def classify_answer(status: int, headers: Mapping[str, str], body: bytes, *, sent: int) -> Verdict:
    """Classify one HTTP answer from ``POST /{pixel}/events`` that carried ``sent`` events.

    ``headers`` is looked up case-insensitively through ``get`` (an ``httpx.Headers`` works; a plain
    dict should have lowercase keys).
    """
    retry_after = parse_retry_after(headers.get("retry-after"))
    doc = _parse_json(body) if body else None
    if doc is _UNPARSEABLE:
        if status == 429:
            return Verdict("rate_limited", "http_429", status, retry_after=retry_after)
        # Whatever the status, nothing in it says which event (if any) is at fault: retry.
        return Verdict(
            "transient",
            "unparseable",
            status,
            message=f"unparseable JSON answer of {len(body)} bytes",
            retry_after=retry_after,
        )
    error = doc.get("error") if isinstance(doc, dict) else None
    if status == 200 and not isinstance(error, dict):
        if not isinstance(doc, dict):
            # An empty or non-JSON 200 (a proxy, a captive portal) says nothing about delivery.
            return Verdict(
                "transient",
                "odd_answer",
                status,
                message=f"200 without a JSON body ({len(body)} bytes)",
            )
        received = doc.get("events_received")
        trace = doc.get("fbtrace_id") if isinstance(doc.get("fbtrace_id"), str) else None
        if _as_int(received) != sent:
            # Reference §1: events_received != len(data) is not a delivery.
            return Verdict(
                "transient",
                "odd_answer",
                status,
                message=f"events_received={received!r}, sent {sent}",
                fbtrace_id=trace,
            )
        return Verdict("delivered", "ok", status, fbtrace_id=trace)

    if isinstance(error, dict):
        return _classify_error(status, error, retry_after)

    # No Meta error body: judge by the status line alone.
    if status == 429:
        return Verdict("rate_limited", "http_429", status, retry_after=retry_after)
    if status >= 500 or status == 408:
        return Verdict("transient", f"http_{status}", status, retry_after=retry_after)
    if status in (401, 403, 404):
        # Wrong graph_url / api_version, or a proxy refusing us: a setting to fix, not an event.
        return Verdict("bad_config", f"http_{status}", status, message=f"HTTP {status}")
    if 400 <= status < 500:
        return Verdict("bad_event", "rejected", status, message=f"HTTP {status}")
    # 1xx/3xx or a 2xx other than 200: odd; try again later.
    return Verdict("transient", "odd_answer", status, message=f"HTTP {status}")


def _classify_error(status: int, error: Mapping[str, Any], retry_after: float | None) -> Verdict:
    code = _as_int(error.get("code"))
    subcode = _as_int(error.get("error_subcode"))
    raw_message = error.get("message")
    message = raw_message if isinstance(raw_message, str) else ""
    trace = error.get("fbtrace_id") if isinstance(error.get("fbtrace_id"), str) else None

    def verdict(kind: VerdictKind, reason: str) -> Verdict:
        return Verdict(kind, reason, status, code, subcode, message, trace, retry_after)

    if status == 429 or code in RATE_LIMIT_CODES:
        return verdict("rate_limited", "rate_limited")
    if code in CONFIG_CODES:
        return verdict("bad_config", "token" if code == 190 else "permission")
    if code == 100 and subcode == _NO_SUCH_OBJECT_SUBCODE:
        return verdict("bad_config", "unknown_pixel")
    if code == 100 and "appsecret_proof" in message:
        # Graph answers a wrong app secret with a plain code 100; no event is at fault.
        return verdict("bad_config", "appsecret_proof")
    if code in TRANSIENT_CODES or error.get("is_transient") is True:
        return verdict("transient", f"code_{code}" if code is not None else "is_transient")
    if status >= 500 or status == 408:
        return verdict("transient", f"http_{status}")
    if code == 100:
        return verdict("bad_event", "invalid_event")
    if status in (401, 403, 404):
        return verdict("bad_config", f"http_{status}")
    if 400 <= status < 500:
        return verdict("bad_event", "rejected")
    # An error body with a 2xx/3xx status is not a delivery: retry.
    return verdict("transient", "odd_answer")


def classify_exception(exc: BaseException) -> Verdict:
    """Classify an exception raised while sending: always transient (the bytes may be retried)."""
    if isinstance(exc, httpx.TimeoutException):
        reason = "timeout"
    elif isinstance(exc, httpx.TransportError):
        reason = "network"
    else:
        reason = "client_error"
    return Verdict("transient", reason, message=type(exc).__name__)
