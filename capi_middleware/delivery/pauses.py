"""When the worker holds off sending: a rate limit pauses every pixel, a refused configuration
(token, permissions) pauses one, and ``Sender.resume`` ends both.

The worker sets the pauses after acting on Meta's answer (`capi_middleware.delivery.policy`),
and its wait reads them, so they are guarded by the intake lock (the worker's wake condition).
A store shared by a fleet also shares them (``SharedStore.share_pause``); that is the ledger's.
"""

from __future__ import annotations

import time

__all__ = ["Pauses"]


class Pauses:
    """The sender's pauses; change them holding the intake lock."""

    def __init__(self) -> None:
        self._until = 0.0  # monotonic: the whole sender waits (rate limited)
        self._until_wall: float | None = None
        self._pixel_until: dict[str, float] = {}  # wall clock: a pixel's config error
        self._claim_horizon = 0.0  # wall clock: after resume(), claim events due until then

    @property
    def until(self) -> float:
        """Monotonic time the rate-limit pause ends (in the past when there is none)."""
        return self._until

    def active(self) -> bool:
        """True while all sending is paused."""
        return self._until > time.monotonic()

    def pause_all(self, seconds: float) -> None:
        """Pause every pixel for ``seconds`` (a rate limit)."""
        self._until = time.monotonic() + seconds
        self._until_wall = time.time() + seconds

    def pause_pixel(self, pixel_id: str, until: float) -> None:
        """Pause one pixel until the wall-clock time ``until`` (its configuration was refused)."""
        self._pixel_until[pixel_id] = until

    def pixel_until(self, pixel_id: str) -> float:
        """Wall-clock time ``pixel_id``'s pause ends (0.0 when it has none)."""
        return self._pixel_until.get(pixel_id, 0.0)

    def claim_time(self, now: float) -> float:
        """The ``now`` to claim with: after resume(), events a pause had put back until its end
        are claimed at once."""
        return max(now, self._claim_horizon)

    def nothing_left_to_claim(self) -> None:
        """The store handed out nothing: events put back by a resumed pause are all sent."""
        self._claim_horizon = 0.0

    def clear(self) -> None:
        """End every pause now (``Sender.resume``)."""
        ends = [*self._pixel_until.values(), self._until_wall or 0.0]
        self._claim_horizon = max(ends)
        self._until = 0.0
        self._until_wall = None
        self._pixel_until = {}

    def state(self) -> tuple[float | None, str | None]:
        """``(paused_until, pause_reason)`` for `DeliveryStats`: wall clock, or ``(None, None)``."""
        if self._until > time.monotonic() and self._until_wall is not None:
            return self._until_wall, "rate_limited"
        now = time.time()
        ends = [end for end in self._pixel_until.values() if end > now]
        return (max(ends), "bad_config") if ends else (None, None)
