"""The request path's memos: bounded in what keys them, and never keeping a clock-dependent answer."""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from capi_middleware.capture.context import RequestContext
from capi_middleware.capture.pipeline import CapturePipeline
from capi_middleware.client import CAPIClient
from capi_middleware.config import CAPIConfig
from capi_middleware.rules import page_url
from capi_middleware.rules.cookie_header import parse_cookie_header

DAY_MS = 24 * 3600 * 1000
NOW_MS = 1_700_000_000_000


def pipeline(**options: Any) -> CapturePipeline:
    options.setdefault("dry_run", True)
    return CapturePipeline(CAPIClient(CAPIConfig(**options)))


def capture(pipe: CapturePipeline, path: str, headers: dict[str, str]) -> RequestContext:
    """One request through the ASGI (raw bytes) or the WSGI (text) entry point."""
    headers = {"host": "www.example.com", **headers}
    if path == "asgi":
        return pipe.capture_raw(
            peer="8.8.8.8",
            scheme="https",
            server=None,
            raw_path=b"/",
            query_string=b"",
            header_map={k.encode(): v.encode("latin-1") for k, v in headers.items()},
        )
    return pipe.capture(
        peer="8.8.8.8",
        scheme="https",
        server=None,
        raw_path="/",
        query_string="",
        headers=headers,
    )


def retained_bytes(work: Callable[[], object]) -> int:
    """Bytes allocated by this file during ``work()`` and still held after it (tracemalloc).

    Only allocations made here count (the header values a test builds), so what other threads
    of the test session allocate meanwhile does not.
    """
    gc.collect()
    tracemalloc.start()
    try:
        work()
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    mine = snapshot.filter_traces([tracemalloc.Filter(True, __file__)])
    return sum(stat.size for stat in mine.statistics("filename"))


def retained_blocks(work: Callable[[], object]) -> int:
    """Small-object blocks still allocated after ``work()`` (cheap enough for many requests)."""
    gc.collect()
    before = sys.getallocatedblocks()
    work()
    gc.collect()
    return sys.getallocatedblocks() - before


def visitors(pipe: CapturePipeline, path: str, numbers: range) -> None:
    """One request from each of many visitors: each its own _fbp, Cookie header and Sec-GPC."""
    for i in numbers:
        headers = {
            "cookie": f"cookie_consent=accept; _fbp=fb.1.1700000000000.{i}",
            "sec-gpc": f"{i}",
        }
        ctx = capture(pipe, path, headers)
        assert ctx.consent.granted
        assert ctx.fbp == f"fb.1.1700000000000.{i}"


@pytest.mark.parametrize("path", ["asgi", "wsgi"])
def test_memos_are_bounded(path: str) -> None:
    # What capture remembers (consent decisions, the visitors' cookies, whole outcomes) grows
    # with the first thousand visitors, and then no more however many come.
    pipe = pipeline(consent=None)
    visitors(pipe, path, range(20_000, 20_300))  # warm up: lazy imports, first-use caches
    first = retained_blocks(lambda: visitors(pipe, path, range(0, 1_000)))
    later = retained_blocks(lambda: visitors(pipe, path, range(1_000, 10_000)))
    assert first > 0
    assert later < 4 * first, (first, later)  # unbounded memos: about 9 times ``first``


@pytest.mark.parametrize("path", ["asgi", "wsgi"])
@pytest.mark.parametrize("oversized", ["consent header", "cookie header"])
def test_no_memo_keeps_an_oversized_header(path: str, oversized: str) -> None:
    pipe = pipeline(consent=None)
    cookie = "cookie_consent=accept"
    capture(pipe, path, {"cookie": cookie, "sec-gpc": "1"})  # a usual request, remembered

    def huge_requests() -> None:
        for i in range(20):
            if oversized == "consent header":
                headers = {"cookie": cookie, "sec-gpc": f"{i}" + " " * 20_000}
            else:
                headers = {"cookie": f"{cookie}; pad={i}" + "x" * 3_000}
            assert capture(pipe, path, headers).consent.granted

    # A client choosing a huge header value must not make a memo hold it (20 requests would
    # leave at least 60 KB behind).
    assert retained_bytes(huge_requests) < 20_000


def test_the_page_host_memo_never_keeps_an_oversized_host() -> None:
    assert page_url.page_host(b"www.example.com:443", "https") == "www.example.com"

    def junk_hosts() -> None:
        for i in range(10):
            assert page_url.page_host(b"a" * 50_000 + b"%d" % i, "https") is None

    assert retained_bytes(junk_hosts) < 50_000  # kept, they would hold 500 KB
    assert page_url.page_host(b"www.example.com:443", "https") == "www.example.com"


@pytest.mark.parametrize("cookie", ["_fbp", "_fbc"])
@pytest.mark.parametrize(("consent", "path"), [(True, "asgi"), (True, "wsgi"), (False, "asgi")])
def test_a_cookie_judged_by_the_clock_is_judged_again_later(
    monkeypatch: pytest.MonkeyPatch, consent: bool, path: str, cookie: str
) -> None:
    # The browser's pixel stamps its cookies with the device's clock: eight days ahead of ours
    # is implausible (a week's slack) today, and plausible two days later.
    ahead = f"fb.1.{NOW_MS + 8 * DAY_MS}." + ("42" if cookie == "_fbp" else "Click")
    headers = {"cookie": f"{cookie}={ahead}", "sec-fetch-dest": "document"}
    attribute = cookie.lstrip("_")
    clock = [NOW_MS / 1000]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    pipe = pipeline(consent=consent)
    assert getattr(capture(pipe, path, headers), attribute) != ahead
    clock[0] += 2 * DAY_MS / 1000
    assert getattr(capture(pipeline(consent=consent), path, headers), attribute) == ahead  # fresh
    assert getattr(capture(pipe, path, headers), attribute) == ahead  # a memoized one agrees


@pytest.mark.parametrize("path", ["asgi", "wsgi"])
@pytest.mark.parametrize("padding", [0, 40])
def test_a_long_cookie_header_is_read_as_a_short_one(path: str, padding: int) -> None:
    # A long Cookie header is searched for capture's few cookies rather than parsed whole
    # (capture._SEARCH_COOKIES_FROM_CHARS); what capture decides and ctx.cookies must not change.
    now_ms = int(time.time() * 1000)
    fbp, fbc = f"fb.1.{now_ms - DAY_MS}.123456", f"fb.1.{now_ms - DAY_MS}.IwAR1"
    filler = "; ".join(f"analytics_{i}=value-{i:04d}" for i in range(padding))
    header = "; ".join(
        part
        for part in (filler, "_fbp= " + fbp, "cookie_consent=accept", f'_fbc="{fbc}"', "_fbp=x")
        if part
    )
    assert (len(header) > 400) == (padding > 0)
    ctx = capture(pipeline(consent=None), path, {"cookie": header, "sec-fetch-dest": "document"})
    assert ctx.consent.granted
    assert (ctx.fbp, ctx.fbc) == (fbp, fbc)  # first _fbp wins, quotes and spaces stripped
    assert dict(ctx.cookies) == parse_cookie_header(header)
    assert len(ctx.cookies) == padding + 3
    assert sorted(c.split("=", 1)[0] for c in ctx.response_cookies.take()) == ["_fbc", "_fbp"]
