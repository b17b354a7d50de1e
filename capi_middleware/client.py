"""CAPIClient: the one object that turns ``track()`` calls into events Meta receives.

It owns the validated config, the consent basis for events sent outside a request, Meta's
rules (`rules.events.build_event`), the counters and the process's background sender. A request's
`RequestContext` calls `CAPIClient.track_from` with itself as the match source; a webhook, a job
or a script calls `CAPIClient.track`. Nothing here knows about requests, adapters or capture: the
arrows point from capture to the client, never back.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections import Counter
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from capi_middleware.config import CAPIConfig
from capi_middleware.consent.policies import ConsentDecision
from capi_middleware.errors import CAPIValidationError, Problem
from capi_middleware.normalize import FRIENDLY_KEYS
from capi_middleware.results import CaptureStats, TrackResult, TrackStatus
from capi_middleware.rules import events as event_rules
from capi_middleware.rules.enhancement import EnhancementCookie, Remembered

if TYPE_CHECKING:
    from capi_middleware.delivery.sender import Sender

__all__ = ["CAPIClient", "MatchSource", "client_for", "log_internal_error"]

logger = logging.getLogger("capi_middleware")


class MatchSource(Protocol):
    """Where an event's match context comes from: a request's context, or a saved visitor."""

    @property
    def consent(self) -> ConsentDecision: ...
    @property
    def client_ip(self) -> str | None: ...
    @property
    def user_agent(self) -> str | None: ...
    @property
    def fbc(self) -> str | None: ...
    @property
    def fbp(self) -> str | None: ...
    @property
    def event_source_url(self) -> str | None: ...
    @property
    def referrer_url(self) -> str | None: ...


class CAPIClient:
    """Config, consent basis, Meta's rules, counters and the background sender, in one place.

    Parameters:
        config: a ready `CAPIConfig`; keyword options given too override its fields.
        **options: `CAPIConfig` fields (``pixel_id``, ``access_token``, ``outbox``, ...).
            Without ``config``, options left unset come from the ``META_*`` environment
            variables (`CAPIConfig.from_env`).
    """

    def __init__(self, config: CAPIConfig | None = None, **options: Any) -> None:
        config = CAPIConfig.from_options(type(self).__name__, config, options)
        self.config = config
        self.enhancement = (
            EnhancementCookie(config.enhancement_secret) if config.enhancement_secret else None
        )
        self._counts_lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._invalid: Counter[str] = Counter()
        self._sender: Sender | None = None
        self._closed_sender: Sender | None = None
        self._sender_lock = threading.Lock()
        if config.test_event_code:
            logger.warning(
                "capi_middleware: test_event_code is set; events go to Test Events only "
                "(remove it in production)"
            )
        if not config.destinations() and not config.dry_run:
            logger.warning(
                "capi_middleware: no pixel_id/access_token configured; events will be dropped "
                "(set META_PIXEL_ID and META_ACCESS_TOKEN, or dry_run=True)"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> CAPIClient:
        """A client configured from the ``META_*`` environment variables (and ``overrides``)."""
        return cls(CAPIConfig.from_env(environ, **overrides))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(config={self.config!r})"

    # -- counters ---------------------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        """Add to one of the client's counters (thread-safe)."""
        with self._counts_lock:
            self._counts[name] += n

    def count_invalid(self, fields: Iterable[str]) -> None:
        """Count ``track()`` calls rejected as invalid, once per field of each fatal problem."""
        with self._counts_lock:
            for field in fields:
                self._invalid[field] += 1

    def count_internal_error(self, counter: str, where: str, exc: Exception) -> None:
        """Count one of this package's own failures and log it (`log_internal_error`)."""
        self.count(counter)
        log_internal_error(where, exc)

    def stats(self) -> CaptureStats:
        """A snapshot of the counters, with the sender's stats once an event was tracked."""
        with self._counts_lock:
            counts = dict(self._counts)
            invalid = dict(self._invalid)
        sender = self._sender or self._closed_sender
        return CaptureStats(
            requests=counts.get("requests", 0),
            capture_errors=counts.get("capture_errors", 0),
            consent_denied=counts.get("consent_denied", 0),
            invalid=invalid,
            track_errors=counts.get("track_errors", 0),
            dry_run=counts.get("dry_run", 0),
            delivery=sender.stats() if sender is not None else None,
        )

    # -- tracking ---------------------------------------------------------------------------

    def track_from(
        self,
        source: MatchSource,
        event_name: str,
        *,
        user_data: Mapping[str, Any] | None,
        custom_data: Mapping[str, Any] | None,
        event_id: str | None,
        event_time: Any,
        action_source: str | None,
        durable: bool | None,
        custom_data_fields: Mapping[str, Any],
        remembered: Remembered | None = None,
    ) -> tuple[TrackResult, Mapping[str, Any] | None]:
        """One event with ``source``'s match keys and consent; see ``RequestContext.track``.

        ``remembered`` holds match keys a request's enhancement cookie kept (filled in where
        ``user_data`` does not give the key). Returns the result and, when the event was built,
        its normalized user_data (for the enhancement cookie).
        """
        config = self.config
        name = event_rules.map_event_name(event_name) if isinstance(event_name, str) else ""
        for arg, value in (("user_data", user_data), ("custom_data", custom_data)):
            if value is not None and not isinstance(value, Mapping):
                problem = Problem(arg, f"must be a mapping, not {type(value).__name__}")
                if config.strict:
                    raise CAPIValidationError([problem])
                self.count_invalid((arg,))
                return _result(event_id, "invalid", name, (problem,)), None
        merged_custom: dict[str, Any] = dict(custom_data) if custom_data else {}
        merged_custom.update(custom_data_fields)

        decision = source.consent
        if not decision.granted:
            self.count("consent_denied")
            return _result(event_id, "denied", name), None

        request_data: dict[str, Any] = {}
        if source.client_ip is not None:
            request_data["client_ip_address"] = source.client_ip
        if source.user_agent is not None:
            request_data["client_user_agent"] = source.user_agent
        if source.fbc is not None:
            request_data["fbc"] = source.fbc
        if source.fbp is not None:
            request_data["fbp"] = source.fbp
        if remembered:
            given = _meta_keys(user_data)
            for key, values in remembered.items():
                if key not in given:
                    request_data[key] = list(values)
        if user_data:
            # Explicit keys win; a key given as None leaves the source's value out.
            request_data.update(user_data)
        user = {k: v for k, v in request_data.items() if v is not None}

        built = event_rules.build_event(
            event_name,
            user_data=user,
            custom_data=merged_custom,
            event_id=event_id,
            event_time=event_time,
            action_source=action_source,
            event_source_url=source.event_source_url,
            referrer_url=source.referrer_url,
            ldu=decision.ldu,
            default_country=config.default_country,
            hash_external_id=config.hash_external_id,
        )
        event = built.event
        if event is None:
            fatal = [p for p in built.problems if p.fatal] or list(built.problems)
            self.count_invalid(problem.field for problem in fatal)
            if config.strict:
                raise CAPIValidationError(built.problems)
            logger.warning(
                "capi_middleware: %s event not sent: %s",
                name or "unnamed",
                "; ".join(str(p) for p in fatal),
            )
            return _result(event_id, "invalid", name, built.problems), None
        if config.strict and built.problems:
            raise CAPIValidationError(built.problems)

        result_args: dict[str, Any] = {
            "event_id": event.event_id,
            "problems": built.problems,
            "event_name": event.event_name,
            "custom_data": event.custom_data,
        }
        if config.dry_run:
            self.count("dry_run")
            logger.info(
                "capi_middleware dry_run: %s event_id=%s (not sent)",
                event.event_name,
                event.event_id,
            )
            return TrackResult(status="dry_run", **result_args), event.user_data

        sender = self.sender()
        assert built.payload is not None  # build_event encodes every event it returns
        outcome = sender.submit_json(
            built.payload,
            event_id=event.event_id,
            event_time=event.event_time,
            action_source=event.action_source,
            durable=config.durable if durable is None else durable,
        )
        if outcome.dropped or outcome.accepted == 0:
            # Queue full, sender closed or no pixel configured: counted by the sender too.
            reason = outcome.reason or "unknown"
            dropped = Problem("event", f"not queued: {reason}", fatal=outcome.accepted == 0)
            result_args["problems"] = (*built.problems, dropped)
        status: TrackStatus = "queued" if outcome.accepted > 0 else "dropped"
        return TrackResult(status=status, **result_args), event.user_data

    # -- the sender -------------------------------------------------------------------------

    def sender(self) -> Sender:
        """The process's sender for this config, obtained on first use (never at import)."""
        sender = self._sender
        if sender is None:
            with self._sender_lock:
                sender = self._sender
                if sender is None:
                    from capi_middleware.delivery.sender import get_sender

                    sender = get_sender(self.config)
                    self._sender = sender
        return sender

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every tracked event is delivered or given up on; True when all were."""
        sender = self._sender
        return True if sender is None else sender.flush(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush and stop the sender; a later track() obtains a fresh one."""
        with self._sender_lock:
            sender, self._sender = self._sender, None
            if sender is not None:
                self._closed_sender = sender  # its final stats stay readable
        if sender is None:
            return True
        return sender.close(timeout if timeout is not None else self.config.shutdown_timeout)

    def __enter__(self) -> CAPIClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def client_for(
    owner: str, client: CAPIClient | None, config: CAPIConfig | None, options: Mapping[str, Any]
) -> CAPIClient:
    """The client a middleware uses: the one given, or one built from its options."""
    if client is None:
        return CAPIClient(CAPIConfig.from_options(owner, config, dict(options)))
    if not isinstance(client, CAPIClient):
        raise ValueError(f"{owner}: client must be a CAPIClient, not {type(client).__name__}")
    if config is not None or options:
        raise ValueError(
            f"{owner}: give either client= or options, not both "
            "(the client's config is the one used)"
        )
    return client


def _result(
    event_id: str | None, status: TrackStatus, name: str, problems: tuple[Problem, ...] = ()
) -> TrackResult:
    """A result for an event that was not built (its id generated when the caller gave none)."""
    return TrackResult(
        event_id=event_id if isinstance(event_id, str) and event_id else event_rules.new_event_id(),
        status=status,
        problems=problems,
        event_name=name,
    )


def _meta_keys(user_data: Mapping[str, Any] | None) -> set[str]:
    """The Meta keys a user_data mapping sets, friendly names translated (email -> em)."""
    if not user_data:
        return set()
    return {FRIENDLY_KEYS.get(k, k) if isinstance(k, str) else k for k in user_data}


def log_internal_error(where: str, exc: BaseException) -> None:
    """Log our own failure without the exception's message (it may quote personal data)."""
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    at = f" at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}" if last else ""
    logger.error(
        "capi_middleware: internal error in %s: %s%s; the request goes on",
        where,
        type(exc).__name__,
        at,
    )
