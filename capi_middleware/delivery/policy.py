"""What the sender does with a batch after Meta's answer (META_CAPI_REFERENCE.md §5). Pure.

`decide` turns a `Verdict` (see `capi_middleware.delivery.classify`) into one `Action`:

- ``delivered`` → ``acknowledge`` the batch.
- ``transient`` → ``retry`` the same bytes after a full-jitter backoff.
- ``rate_limited`` → ``pause_all``: the whole sender waits (``Retry-After`` when given, capped at
  `MAX_RATE_LIMIT_PAUSE`; else a pause that doubles with each throttle in a row).
- ``bad_config`` → ``pause_pixel``: only this pixel waits; another destination's token may be fine.
- ``bad_event`` → ``bisect`` a batch of several (one invalid event rejects the whole request,
  reference §1), ``dead_letter`` a batch of one: it is the culprit.

No clock, no randomness of its own, no I/O: the caller passes the random draw for the jitter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from capi_middleware.delivery.classify import Verdict
from capi_middleware.delivery.store import DeadLetter

__all__ = [
    "MAX_RATE_LIMIT_PAUSE",
    "Action",
    "ActionKind",
    "Tunables",
    "decide",
    "full_jitter_delay",
]

ActionKind = Literal["acknowledge", "retry", "pause_all", "pause_pixel", "dead_letter", "bisect"]

# Meta documents no longest Retry-After; its rate limits are counted over a rolling one-hour
# window, so no single pause needs to be longer (issue 10: one `Retry-After: 1e9` paused all
# sending for a day).
MAX_RATE_LIMIT_PAUSE = 3600.0


@dataclass(frozen=True)
class Tunables:
    """The policy's knobs, in seconds (the sender's attributes of the same names).

    Parameters:
        backoff_base, backoff_cap: the full-jitter backoff after a transient failure.
        rate_limit_pause: the pause after a throttle without ``Retry-After``; doubles with each
            throttle in a row, up to ``rate_limit_pause_cap``.
        config_error_pause: how long a pixel waits after a token or permission error.
        max_rate_limit_pause: the longest pause one ``Retry-After`` may ask for.
    """

    backoff_base: float = 0.5
    backoff_cap: float = 60.0
    rate_limit_pause: float = 60.0
    rate_limit_pause_cap: float = 900.0
    config_error_pause: float = 300.0
    max_rate_limit_pause: float = MAX_RATE_LIMIT_PAUSE


@dataclass(frozen=True)
class Action:
    """What to do with the batch a verdict was about.

    Parameters:
        kind: see the module docstring.
        seconds: ``retry``: until the batch is due again; ``pause_all`` / ``pause_pixel``: the
            length of the pause. 0.0 for the other kinds.
        asked: ``pause_all`` only: the ``Retry-After`` Meta asked for when it was longer than the
            cap (``seconds`` is then the cap); None otherwise.
        letter: ``dead_letter`` only: why the event was given up on.
    """

    kind: ActionKind
    seconds: float = 0.0
    asked: float | None = None
    letter: DeadLetter | None = None


_ACKNOWLEDGE = Action("acknowledge")
_BISECT = Action("bisect")


def full_jitter_delay(attempts: int, *, base: float, cap: float, rng: random.Random) -> float:
    """AWS's "full jitter": a uniform delay in ``[0, min(cap, base * 2**attempts)]``.

    Spreads the retries of many senders after a shared outage instead of synchronising them.
    """
    return rng.uniform(0.0, _backoff_ceiling(attempts, base=base, cap=cap))


def _backoff_ceiling(attempts: int, *, base: float, cap: float) -> float:
    return min(cap, base * (2.0 ** min(attempts, 62)))


def decide(
    verdict: Verdict,
    *,
    batch_size: int,
    attempts: int,
    throttled_before: int,
    tunables: Tunables,
    jitter: float,
) -> Action:
    """The action for a batch of ``batch_size`` events that got ``verdict``.

    ``attempts``: the most attempts any event of the batch had before this one.
    ``throttled_before``: rate-limit answers in a row before this one (the caller keeps count).
    ``jitter``: a uniform draw from ``[0, 1)``; a retry waits that fraction of the backoff ceiling.
    """
    kind = verdict.kind
    if kind == "delivered":
        return _ACKNOWLEDGE
    if kind == "transient":
        ceiling = _backoff_ceiling(attempts, base=tunables.backoff_base, cap=tunables.backoff_cap)
        return Action("retry", jitter * ceiling)
    if kind == "rate_limited":
        asked = verdict.retry_after
        if asked is None:
            pause = min(
                tunables.rate_limit_pause_cap,
                tunables.rate_limit_pause * 2.0 ** min(throttled_before, 62),
            )
            return Action("pause_all", pause)
        if asked > tunables.max_rate_limit_pause:
            return Action("pause_all", tunables.max_rate_limit_pause, asked=asked)
        return Action("pause_all", asked)
    if kind == "bad_config":
        return Action("pause_pixel", tunables.config_error_pause)
    if batch_size > 1:
        return _BISECT
    letter = DeadLetter(
        verdict.reason,
        code=verdict.code,
        subcode=verdict.subcode,
        message=verdict.message,
        fbtrace_id=verdict.fbtrace_id,
    )
    return Action("dead_letter", letter=letter)
