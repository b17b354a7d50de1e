"""clean_referrer: which Referer values are passed on, and that checking one is linear work.

Issue 10, item 6: the pattern this rule used backtracked quadratically on a long value that fails
at its end (``"http://" + "a" * 4085 + " "`` cost about 35 ms). The check is now plain string
operations; the step count below proves each character is looked at a bounded number of times.
bench/referrer.py measures the instructions for a 1 KB and a 4 KB value, before and after.
"""

from __future__ import annotations

import re
import sys
from types import FrameType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capi_middleware.rules.page_url import MAX_URL_CHARS, clean_referrer


@pytest.mark.parametrize(
    ("value", "passed_on"),
    [
        ("https://example.com/", True),
        ("http://example.com", True),
        ("HTTPS://Example.com/a?b=c#d", True),
        ("HtTp://x", True),
        ("https://shop.example.com/p?fbclid=Ab-_12", True),
        ("https://user:pw@example.com:8443/%E2%82%AC", True),
        ("https://", False),
        ("http://", False),
        ("https:///path", False),
        ("http://?q", False),
        ("http://#f", False),
        ("ftp://example.com/", False),
        ("example.com/", False),
        ("//example.com/", False),
        ("https:/example.com", False),
        ("https://exa mple.com/", False),
        ("https://example.com/\x00", False),
        ("https://example.com/\x7f", False),
        ("https://example.com/é", False),
        ("https://example.com/\U0001f600", False),
        ("https://example.com/\t", False),
        ("", False),
        (None, False),
        ("http://" + "a" * 4085 + " ", False),
        ("https://example.com/" + "a" * (MAX_URL_CHARS - 20), True),
        ("https://example.com/" + "a" * (MAX_URL_CHARS - 19), False),
    ],
)
def test_which_referrers_are_passed_on(value: str | None, passed_on: bool) -> None:
    assert clean_referrer(value) == (value if passed_on else None)


# The rule as the old pattern stated it, for the ASCII text a browser sends.
_STATED_RULE = re.compile(r"[Hh][Tt][Tt][Pp][Ss]?://[^\x00-\x20\x7f/?#]+[\x21-\x7e]*")


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["http://", "https://", "HTTPS://", "hTtP://", "http:/", "http//", ""]),
    st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=30),
)
def test_the_same_values_pass_as_the_stated_rule(prefix: str, rest: str) -> None:
    value = prefix + rest
    expected = value if _STATED_RULE.fullmatch(value) else None
    assert clean_referrer(value) == expected


def _characters_examined(value: str) -> int:
    """Characters the check passes over in C calls, counted by a profile hook.

    Every C function the check calls is recorded. A str method (or ``len``) on the value or a
    slice of it costs its length: one pass. A pattern match is not one pass (its cost on a
    failed match grows with the square of the length): it fails the count.
    """
    examined = 0
    refused: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal examined
        if event != "c_call":
            return
        target = getattr(arg, "__self__", None)
        if isinstance(target, str):
            examined += len(target)
        elif arg is len:
            examined += 1
        elif getattr(arg, "__name__", "") in ("setprofile",):
            pass
        else:
            refused.append(getattr(arg, "__qualname__", repr(arg)))

    sys.setprofile(profile)
    try:
        clean_referrer(value)
    finally:
        sys.setprofile(None)
    assert not refused, f"not a single pass over the value: {refused}"
    return examined


@pytest.mark.parametrize("tail", [" ", "\x00", "é", "/ok"])
def test_checking_a_referrer_is_linear_work(tail: str) -> None:
    small = "http://" + "a" * 1000 + tail
    large = "http://" + "a" * 4000 + tail
    small_steps = _characters_examined(small)
    large_steps = _characters_examined(large)
    # Each character is looked at a bounded number of times...
    assert large_steps <= 4 * len(large)
    # ...so four times the text is (at most) four times the work.
    assert large_steps <= 4.1 * small_steps
