"""Serverless delivery: each request's events delivered before the request's call returns.

With ``serverless``, an adapter starts a `RequestEvents` before the app
(`CAPIClient.request_events`) and calls `RequestEvents.deliver` after it; ``track()`` counts each
event it queues in the one found in `current_request_events`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from typing import Protocol

from capi_middleware.client.notices import log_internal_error
from capi_middleware.config import CAPIConfig

__all__ = ["RequestEvents", "current_request_events"]

logger = logging.getLogger("capi_middleware")


class _Flushing(Protocol):
    """What `RequestEvents` needs of its client (`CAPIClient`)."""

    @property
    def config(self) -> CAPIConfig: ...
    def flush(self, timeout: float | None = None) -> bool: ...


class RequestEvents:
    """The events one request queued, with ``serverless``: delivered before the request ends.

    ``queued`` counts them (a mutable box in a context variable, so a sync endpoint that runs in
    a worker thread with a copy of the context still counts here).
    """

    __slots__ = ("client", "queued", "token")

    def __init__(self, client: _Flushing) -> None:
        self.client = client
        self.queued = 0
        self.token: contextvars.Token[RequestEvents | None] | None = None

    def leave(self) -> None:
        """Stop counting (call in the context `CAPIClient.request_events` was called in)."""
        token, self.token = self.token, None
        if token is not None:
            # Not the context it was set in (ValueError): the counting just goes on there.
            with contextlib.suppress(ValueError):
                current_request_events.reset(token)

    def deliver(self) -> bool:
        """Block until the events counted so far are delivered or given up on, or the timeout.

        Nothing when none were queued. Flushing sends at once, without waiting for a fuller
        batch: one round trip for all of them (and for any other request's queued meanwhile).
        True when nothing is left; what is left after ``serverless_timeout`` stays queued (and
        in the outbox, if there is one). Never raises.
        """
        queued, self.queued = self.queued, 0
        if not queued:
            return True
        client = self.client
        timeout = client.config.serverless_timeout
        try:
            delivered = client.flush(timeout)
        except Exception as exc:
            log_internal_error("serverless delivery", exc)
            return False
        if not delivered:
            logger.warning(
                "capi_middleware: serverless: event(s) not delivered within "
                "serverless_timeout=%ss; they stay queued%s",
                timeout,
                " in the outbox" if client.config.outbox else " in memory",
            )
        return delivered


current_request_events: contextvars.ContextVar[RequestEvents | None] = contextvars.ContextVar(
    "capi_middleware_request_events", default=None
)
"""The `RequestEvents` of the request being served, if the client is serverless."""
