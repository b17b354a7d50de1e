"""Every Graph answer falls in the class META_CAPI_REFERENCE.md §5 gives it."""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import httpx
import pytest

from capi_middleware.delivery.classify import (
    classify_answer,
    classify_exception,
    parse_retry_after,
)


def _err(code: int | None, subcode: int | None = None, **extra: Any) -> bytes:
    error: dict[str, Any] = {"message": "m", "type": "OAuthException", "fbtrace_id": "AbC"}
    if code is not None:
        error["code"] = code
    if subcode is not None:
        error["error_subcode"] = subcode
    error.update(extra)
    return json.dumps({"error": error}).encode()


OK3 = json.dumps({"events_received": 3, "messages": [], "fbtrace_id": "x"}).encode()

CASES = [
    # (status, body, headers, kind, reason)
    (200, OK3, {}, "delivered", "ok"),
    (200, b'{"events_received": "3", "messages": []}', {}, "delivered", "ok"),
    (200, b'{"events_received": 2, "messages": []}', {}, "transient", "odd_answer"),
    (200, b'{"events_received": 4}', {}, "transient", "odd_answer"),
    (200, b'{"messages": []}', {}, "transient", "odd_answer"),
    (200, b"", {}, "transient", "odd_answer"),
    (200, b"<html>ok</html>", {}, "transient", "odd_answer"),
    (200, b"[3]", {}, "transient", "odd_answer"),
    (200, b'{"events_received": true}', {}, "transient", "odd_answer"),
    (200, _err(2), {}, "transient", "code_2"),
    (201, b"{}", {}, "transient", "odd_answer"),
    (302, b"", {}, "transient", "odd_answer"),
    # transient
    (500, _err(2, is_transient=True), {}, "transient", "code_2"),
    (500, _err(1), {}, "transient", "code_1"),
    (500, b"", {}, "transient", "http_500"),
    (502, b"<html><h1>502 Bad Gateway</h1></html>", {}, "transient", "http_502"),
    (503, b"Service Unavailable", {}, "transient", "http_503"),
    (504, b"", {}, "transient", "http_504"),
    (408, b"", {}, "transient", "http_408"),
    (400, _err(1), {}, "transient", "code_1"),
    (400, _err(2), {}, "transient", "code_2"),
    (400, _err(9999, is_transient=True), {}, "transient", "code_9999"),
    (503, _err(9999), {}, "transient", "http_503"),
    # rate limited
    (429, b"", {}, "rate_limited", "http_429"),
    (429, _err(None), {}, "rate_limited", "rate_limited"),
    (400, _err(4), {}, "rate_limited", "rate_limited"),
    (400, _err(17), {}, "rate_limited", "rate_limited"),
    (400, _err(32), {}, "rate_limited", "rate_limited"),
    (400, _err(341), {}, "rate_limited", "rate_limited"),
    (400, _err(613), {}, "rate_limited", "rate_limited"),
    (400, _err(80000), {}, "rate_limited", "rate_limited"),
    (400, _err(80004), {}, "rate_limited", "rate_limited"),
    (400, _err(80014), {}, "rate_limited", "rate_limited"),
    (500, _err(4, is_transient=True), {}, "rate_limited", "rate_limited"),
    # bad config
    (400, _err(190), {}, "bad_config", "token"),
    (401, _err(190, 463), {}, "bad_config", "token"),
    (400, _err(10), {}, "bad_config", "permission"),
    (403, _err(200), {}, "bad_config", "permission"),
    (400, _err(294), {}, "bad_config", "permission"),
    (400, _err(100, 33), {}, "bad_config", "unknown_pixel"),
    (400, _err(803), {}, "bad_config", "permission"),
    (400, _err(2500), {}, "bad_config", "permission"),
    (
        400,
        json.dumps(
            {
                "error": {
                    "code": 100,
                    "message": "Invalid appsecret_proof provided in the API argument",
                }
            }
        ).encode(),
        {},
        "bad_config",
        "appsecret_proof",
    ),
    (401, b"", {}, "bad_config", "http_401"),
    (403, b"Forbidden", {}, "bad_config", "http_403"),
    (404, b"Not Found", {}, "bad_config", "http_404"),
    (404, _err(12345), {}, "bad_config", "http_404"),
    # bad event
    (400, _err(100, 2804001), {}, "bad_event", "invalid_event"),
    (400, _err(100, 2804003), {}, "bad_event", "invalid_event"),
    (400, _err(100, 2804010), {}, "bad_event", "invalid_event"),
    (400, _err(100, 2804016), {}, "bad_event", "invalid_event"),
    (400, _err(100, 2804019), {}, "bad_event", "invalid_event"),
    (400, _err(100, 2804050), {}, "bad_event", "invalid_event"),
    (400, _err(100), {}, "bad_event", "invalid_event"),
    (400, _err(12345), {}, "bad_event", "rejected"),
    (413, b"Request Entity Too Large", {}, "bad_event", "rejected"),
    (400, b"not json", {}, "bad_event", "rejected"),
    # JSON that cannot be read (issue 10): transient whatever the status, never an exception
    (200, b"[" * 5000 + b"]" * 5000, {}, "transient", "unparseable"),
    (200, b'{"events_received": 3,', {}, "transient", "unparseable"),
    (400, b'{"error":' * 5000 + b"1" + b"}" * 5000, {}, "transient", "unparseable"),
    (400, b'{"error": {"code": 100, "message": "\xff"}}', {}, "transient", "unparseable"),
    (500, b"  [[[", {}, "transient", "unparseable"),
    (404, b"{", {}, "transient", "unparseable"),
    (429, b"[" * 5000, {}, "rate_limited", "http_429"),
]


@pytest.mark.parametrize(("status", "body", "headers", "kind", "reason"), CASES)
def test_classify_answer(
    status: int, body: bytes, headers: dict[str, str], kind: str, reason: str
) -> None:
    verdict = classify_answer(status, headers, body, sent=3)
    assert (verdict.kind, verdict.reason) == (kind, reason)
    assert verdict.status == status


def test_error_fields_are_carried() -> None:
    body = _err(100, 2804019, error_user_title="Malformed contents")
    verdict = classify_answer(400, {}, body, sent=2)
    assert verdict.code == 100
    assert verdict.subcode == 2804019
    assert verdict.message == "m"
    assert verdict.fbtrace_id == "AbC"


def test_retry_after_header_is_read_with_httpx_headers() -> None:
    headers = httpx.Headers({"Retry-After": "7"})
    verdict = classify_answer(429, headers, b"", sent=1)
    assert verdict.kind == "rate_limited"
    assert verdict.retry_after == 7.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("0", 0.0),
        ("1.5", 1.5),
        ("120", 120.0),
        ("-3", 0.0),
        ("nan", None),
        ("inf", None),
        ("10000000", 86400.0),
        ("soon", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    now = time.time()
    header = email.utils.formatdate(now + 30, usegmt=True)
    seconds = parse_retry_after(header, now=now)
    assert seconds is not None
    assert 28 <= seconds <= 31


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (httpx.ConnectError("refused"), "network"),
        (httpx.RemoteProtocolError("dropped"), "network"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectTimeout("slow"), "timeout"),
        (httpx.PoolTimeout("busy"), "timeout"),
        (OSError("broken pipe"), "client_error"),
        (RuntimeError("client closed"), "client_error"),
    ],
)
def test_exceptions_are_transient(exc: BaseException, reason: str) -> None:
    verdict = classify_exception(exc)
    assert verdict.kind == "transient"
    assert verdict.reason == reason
    assert verdict.status is None


def test_an_unparseable_answer_says_its_size_and_nothing_of_its_content() -> None:
    body = b'{"error": {"message": "jane@example.com"' + b"[" * 3000
    verdict = classify_answer(400, {}, body, sent=1)
    assert verdict.message == f"unparseable JSON answer of {len(body)} bytes"
