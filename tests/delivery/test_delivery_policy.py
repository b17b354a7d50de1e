"""What the sender does after each kind of answer: the pure policy, table-driven."""

from __future__ import annotations

import random

import pytest

from capi_middleware.delivery.classify import Verdict
from capi_middleware.delivery.policy import (
    MAX_RATE_LIMIT_PAUSE,
    Tunables,
    decide,
    full_jitter_delay,
)
from capi_middleware.delivery.store import DeadLetter

T = Tunables(
    backoff_base=0.5,
    backoff_cap=60.0,
    rate_limit_pause=60.0,
    rate_limit_pause_cap=900.0,
    config_error_pause=300.0,
)

OK = Verdict("delivered", "ok", 200)
TRANSIENT = Verdict("transient", "http_503", 503)
THROTTLED = Verdict("rate_limited", "http_429", 429)
BAD_TOKEN = Verdict("bad_config", "token", 400, code=190)
BAD_EVENT = Verdict("bad_event", "invalid_event", 400, 100, 2804019, "Malformed", fbtrace_id="AbC")


def _after(seconds: float) -> Verdict:
    return Verdict("rate_limited", "http_429", 429, retry_after=seconds)


CASES = [
    # (verdict, batch_size, attempts, throttled_before, jitter, kind, seconds, asked)
    (OK, 1000, 0, 0, 0.5, "acknowledge", 0.0, None),
    (OK, 1, 7, 3, 0.5, "acknowledge", 0.0, None),
    # transient: full jitter over min(cap, base * 2**attempts)
    (TRANSIENT, 10, 0, 0, 0.5, "retry", 0.25, None),
    (TRANSIENT, 10, 1, 0, 1.0, "retry", 1.0, None),
    (TRANSIENT, 10, 3, 0, 0.5, "retry", 2.0, None),
    (TRANSIENT, 10, 20, 0, 1.0, "retry", 60.0, None),
    (TRANSIENT, 10, 10_000, 0, 0.5, "retry", 30.0, None),
    (TRANSIENT, 1, 2, 0, 0.0, "retry", 0.0, None),
    (Verdict("transient", "unparseable", 200), 5, 0, 0, 1.0, "retry", 0.5, None),
    # rate limited: Retry-After when given, capped at an hour
    (_after(7), 10, 0, 0, 0.5, "pause_all", 7.0, None),
    (_after(0), 10, 0, 0, 0.5, "pause_all", 0.0, None),
    (_after(3600), 10, 0, 0, 0.5, "pause_all", 3600.0, None),
    (_after(3601), 10, 0, 0, 0.5, "pause_all", 3600.0, 3601.0),
    (_after(86400), 10, 0, 5, 0.5, "pause_all", 3600.0, 86400.0),
    # ... and without it, a pause that doubles with each throttle in a row, up to its cap
    (THROTTLED, 10, 0, 0, 0.5, "pause_all", 60.0, None),
    (THROTTLED, 10, 0, 1, 0.5, "pause_all", 120.0, None),
    (THROTTLED, 10, 0, 3, 0.5, "pause_all", 480.0, None),
    (THROTTLED, 10, 0, 4, 0.5, "pause_all", 900.0, None),
    (THROTTLED, 10, 0, 5000, 0.5, "pause_all", 900.0, None),
    # bad config: only this pixel waits
    (BAD_TOKEN, 10, 0, 0, 0.5, "pause_pixel", 300.0, None),
    (BAD_TOKEN, 1, 0, 0, 0.5, "pause_pixel", 300.0, None),
    (Verdict("bad_config", "http_404", 404), 3, 0, 0, 0.5, "pause_pixel", 300.0, None),
    # bad event: bisect a batch, dead-letter a single event
    (BAD_EVENT, 2, 0, 0, 0.5, "bisect", 0.0, None),
    (BAD_EVENT, 1000, 4, 0, 0.5, "bisect", 0.0, None),
    (BAD_EVENT, 1, 0, 0, 0.5, "dead_letter", 0.0, None),
    (Verdict("bad_event", "rejected", 413), 1, 0, 0, 0.5, "dead_letter", 0.0, None),
]


@pytest.mark.parametrize(
    ("verdict", "batch_size", "attempts", "throttled_before", "jitter", "kind", "seconds", "asked"),
    CASES,
)
def test_decide(
    verdict: Verdict,
    batch_size: int,
    attempts: int,
    throttled_before: int,
    jitter: float,
    kind: str,
    seconds: float,
    asked: float | None,
) -> None:
    action = decide(
        verdict,
        batch_size=batch_size,
        attempts=attempts,
        throttled_before=throttled_before,
        tunables=T,
        jitter=jitter,
    )
    assert (action.kind, action.seconds, action.asked) == (kind, seconds, asked)
    assert (action.letter is not None) == (kind == "dead_letter")


def test_a_dead_letter_carries_metas_reasons() -> None:
    action = decide(BAD_EVENT, batch_size=1, attempts=0, throttled_before=0, tunables=T, jitter=0.0)
    assert action.letter == DeadLetter(
        "invalid_event", code=100, subcode=2804019, message="Malformed", fbtrace_id="AbC"
    )


def test_the_cap_on_one_pause_is_an_hour_by_default() -> None:
    assert MAX_RATE_LIMIT_PAUSE == 3600.0
    assert Tunables().max_rate_limit_pause == MAX_RATE_LIMIT_PAUSE


def test_full_jitter_delay_stays_under_its_ceiling() -> None:
    rng = random.Random(7)
    delays = [full_jitter_delay(3, base=0.5, cap=60.0, rng=rng) for _ in range(500)]
    assert all(0.0 <= d <= 4.0 for d in delays)
    assert max(delays) > 3.0  # spread over the whole range, not bunched at the start
    assert all(full_jitter_delay(100, base=0.5, cap=60.0, rng=rng) <= 60.0 for _ in range(100))
