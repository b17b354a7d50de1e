"""The request path's memos: bounded in what keys them, and never keeping a clock-dependent answer."""

from __future__ import annotations

import time
from typing import Any

import pytest

from capi_middleware.capture.context import RequestContext
from capi_middleware.capture.pipeline import CapturePipeline
from capi_middleware.client import CAPIClient
from capi_middleware.config import CAPIConfig
from capi_middleware.rules import page_url
from capi_middleware.rules.cookies import parse_cookie_header

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


def test_the_outcome_memo_is_never_keyed_by_an_oversized_consent_header() -> None:
    pipe = pipeline(consent=None)
    cookie = {"cookie": "cookie_consent=accept"}
    capture(pipe, "asgi", {**cookie, "sec-gpc": "1"})
    assert len(pipe._outcomes) == 1  # a usual Sec-GPC keys a reused outcome
    for i in range(3):
        ctx = capture(pipe, "asgi", {**cookie, "sec-gpc": f"{i}" + " " * 20_000})
        assert ctx.consent.granted
    # A client choosing a huge header value must not make the memo hold it.
    assert len(pipe._outcomes) == 1


def test_the_page_host_memo_never_keeps_an_oversized_host() -> None:
    junk = b"a" * 50_000
    assert page_url.page_host(junk, "https") is None
    assert (junk, "https") not in page_url._host_cache
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
