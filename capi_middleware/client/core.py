"""CAPIClient: the one object that turns ``track()`` calls into events Meta receives.

It owns the validated config, the consent basis for events sent outside a request, Meta's
rules (`rules.events.build_event`), the counters and the process's background sender. A request's
`RequestContext` calls `CAPIClient.track_from` with itself as the match source; a webhook, a job
or a script calls `CAPIClient.track`. Nothing here knows about requests, adapters or capture: the
arrows point from capture to the client, never back. Where an event's match keys come from is
in `sources`, what the client tells the developer in `notices`, serverless delivery in
`serverless`.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from capi_middleware.client.notices import (
    NO_SIGNAL_OWN_POLICY,
    NO_SIGNAL_PROBLEM,
    log_internal_error,
    names_checked,
    print_dry_run,
    tell_default_denial_once,
    warn_about_config,
    warn_if_misspelled,
)
from capi_middleware.client.results import name_of, sent_result, unbuilt_result, unsent_result
from capi_middleware.client.serverless import RequestEvents, current_request_events
from capi_middleware.client.sources import NO_BASIS, UNSTATED, MatchSource, basis
from capi_middleware.config import CAPIConfig
from capi_middleware.consent.policies import NO_SIGNAL_REASON, ConsentDecision
from capi_middleware.errors import CAPIValidationError, Problem
from capi_middleware.normalize import FRIENDLY_KEYS
from capi_middleware.results import CaptureStats, MatchQuality, TrackResult, TrackStatus
from capi_middleware.rules import events as event_rules
from capi_middleware.rules.enhancement import EnhancementCookie, Remembered, site_binding
from capi_middleware.visitor import Visitor

if TYPE_CHECKING:
    from capi_middleware.delivery.sender import Sender

__all__ = ["CAPIClient"]

logger = logging.getLogger("capi_middleware")


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
            EnhancementCookie(
                config.enhancement_secret,
                site=site_binding(config.pixel_id, config.cookie_domain),
            )
            if config.enhancement_secret
            else None
        )
        self._counts_lock = threading.Lock()
        self._counts: dict[str, int] = {}  # a plain dict: count() runs on every request
        self._invalid: Counter[str] = Counter()
        self._match_quality = MatchQuality()
        self._sender: Sender | None = None
        self._closed_sender: Sender | None = None
        self._sender_lock = threading.Lock()
        self.config_error: str | None = None
        warn_about_config(config)

    @classmethod
    def disabled(cls, config_error: str) -> CAPIClient:
        """A client standing in for one whose configuration was rejected: tracking is off.

        Every ``track()`` returns status ``"error"`` with a problem quoting ``config_error``;
        nothing is stored or sent. Adapters use it so that a bad config never fails a request.
        """
        client = cls(CAPIConfig(dry_run=True))
        client.config_error = config_error
        return client

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
            self._counts[name] = self._counts.get(name, 0) + n

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
            match_keys=self._match_quality.counts(),
        )

    def match_quality(self) -> dict[str, dict[str, Any]]:
        """What Meta can match this client's events on, per event name (docs/match-quality.md).

        ``{"Purchase": {"events": 120, "keys": {"em": 0.98, "ph": 0.41, ...}, "dropped":
        {"ph": {"no country code": 7}}}}``: the events sent (queued, or built under
        ``dry_run``), the share carrying each match key, and the values dropped per key and why.
        """
        return self._match_quality.report()

    # -- tracking ---------------------------------------------------------------------------

    def track(
        self,
        event_name: str,
        *,
        visitor: Visitor | None = None,
        user_data: Mapping[str, Any] | None = None,
        custom_data: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        event_time: Any = None,
        action_source: str | None = None,
        consent: bool | ConsentDecision | None = None,
        durable: bool | None = None,
        **custom_data_fields: Any,
    ) -> TrackResult:
        """Send one event from anywhere: a webhook, a background job, a script.

        With ``visitor`` (a `Visitor` from ``ctx.visitor()``, stored with the order), the event
        carries that visitor's IP, user agent, ``_fbc``, ``_fbp``, page URL and referrer, and its
        consent decision: denied stays denied. Without one, the event has only ``user_data`` and
        needs a stated basis: ``consent=True`` here, or on the client (``CAPIClient(consent=True)``,
        e.g. for CRM uploads and ``system_generated`` events); otherwise it is ``denied`` with a
        problem naming the option. ``consent=False`` denies even with a visitor; ``consent=True``
        never overrides a visitor's denial.

        The keywords are ``ctx.track``'s: the same normalization, validation, sender and store.
        ``event_time`` may be the real conversion's time (within Meta's 7 days). Never blocks on
        the network; never raises unless ``strict=True`` and the input is invalid.
        """
        try:
            source: MatchSource | Problem
            if consent is None and isinstance(visitor, Visitor):
                source = visitor  # the usual case, first
            else:
                source = basis(visitor, consent, self.config.consent)
            if isinstance(source, Problem):
                if self.config.strict:
                    raise CAPIValidationError([source])
                self.count_invalid((source.field,))
                return unbuilt_result(event_id, "invalid", name_of(event_name), (source,))
            if source.consent is UNSTATED and self.config_error is None:
                self.count("consent_denied")
                return unbuilt_result(event_id, "denied", name_of(event_name), (NO_BASIS,))
            # Denied visitors go through track_from too: one way to say why.
            return self.track_from(
                source,
                event_name,
                user_data=user_data,
                custom_data=custom_data,
                event_id=event_id,
                event_time=event_time,
                action_source=action_source,
                durable=durable,
                custom_data_fields=custom_data_fields,
            )[0]
        except CAPIValidationError:
            raise  # only raised with strict=True, on purpose
        except Exception as exc:
            self.count_internal_error("track_errors", "track()", exc)
            return unbuilt_result(
                event_id,
                "error",
                name_of(event_name),
                (Problem("track", "internal error in capi_middleware; see the log"),),
            )

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
        if name not in event_rules.STANDARD_EVENTS and name not in names_checked:
            warn_if_misspelled(name)
        for arg, value in (("user_data", user_data), ("custom_data", custom_data)):
            if value is not None and not isinstance(value, Mapping):
                problem = Problem(arg, f"must be a mapping, not {type(value).__name__}")
                if config.strict:
                    raise CAPIValidationError([problem])
                self.count_invalid((arg,))
                return unbuilt_result(event_id, "invalid", name, (problem,)), None
        merged_custom: dict[str, Any] = dict(custom_data) if custom_data else {}
        merged_custom.update(custom_data_fields)

        if self.config_error is not None:
            problem = Problem("config", f"tracking is off: {self.config_error}")
            return unsent_result(event_id, "error", name, merged_custom, (problem,)), None
        decision = source.consent
        if not decision.granted:
            self.count("consent_denied")
            problems: tuple[Problem, ...] = ()
            if decision.reason == NO_SIGNAL_REASON:
                if config.consent is None:  # the default policy: say what it is, once
                    problems = (NO_SIGNAL_PROBLEM,)
                    tell_default_denial_once(name)
                else:
                    problems = (NO_SIGNAL_OWN_POLICY,)
            return unsent_result(event_id, "denied", name, merged_custom, problems), None

        # The source's own match keys are in Meta's form already (capture and Visitor validate
        # them: MatchSource), so they go in as they are; only what the app gives is normalized.
        clear_keys: dict[str, str] = {}
        if source.client_ip is not None:
            clear_keys["client_ip_address"] = source.client_ip
        if source.user_agent is not None:
            clear_keys["client_user_agent"] = source.user_agent
        if source.fbc is not None:
            clear_keys["fbc"] = source.fbc
        if source.fbp is not None:
            clear_keys["fbp"] = source.fbp
        given = _meta_keys(user_data)
        app_data: dict[str, Any] = {}
        if remembered:
            for key, values in remembered.items():
                if key not in given:
                    app_data[key] = list(values)
        if user_data:
            # Explicit keys win; a key given as None leaves the source's value out.
            for key in given:
                clear_keys.pop(key, None)
            app_data.update((k, v) for k, v in user_data.items() if v is not None)

        built = event_rules.build_event(
            event_name,
            user_data=app_data,
            clear_keys=clear_keys,
            custom_data=merged_custom,
            event_id=event_id,
            event_time=event_time,
            action_source=action_source,
            event_source_url=source.event_source_url,
            referrer_url=source.referrer_url,
            ldu=decision.ldu,
            ldu_country=source.ldu_country,
            ldu_state=source.ldu_state,
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
            return unbuilt_result(event_id, "invalid", name, built.problems), None
        if config.strict and built.problems:
            raise CAPIValidationError(built.problems)

        if config.dry_run:
            self.count("dry_run")
            logger.info(
                "capi_middleware dry_run: %s event_id=%s (not sent)",
                event.event_name,
                event.event_id,
            )
            if config.dry_run == "debug":
                print_dry_run(event.to_dict())
            self._match_quality.record(event.event_name, event.user_data, built.problems)
            return sent_result(event, "dry_run", built.problems), event.user_data

        sender = self.sender()
        assert built.payload is not None  # build_event encodes every event it returns
        outcome = sender.submit_json(
            built.payload,
            event_id=event.event_id,
            event_time=event.event_time,
            action_source=event.action_source,
            # Serverless: committed to a durable outbox before track() returns.
            durable=(config.durable or config.serverless) if durable is None else durable,
        )
        if config.serverless and outcome.accepted > 0:
            scope = current_request_events.get()
            if scope is not None:
                scope.queued += 1
        problems = built.problems
        if outcome.dropped or outcome.accepted == 0:
            # Queue full, sender closed or no pixel configured: counted by the sender too.
            reason = outcome.reason or "unknown"
            dropped = Problem("event", f"not queued: {reason}", fatal=outcome.accepted == 0)
            problems = (*problems, dropped)
        status: TrackStatus = "queued" if outcome.accepted > 0 else "dropped"
        if outcome.accepted > 0:
            self._match_quality.record(event.event_name, event.user_data, built.problems)
        return sent_result(event, status, problems), event.user_data

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

    # -- serverless: each request's events delivered before its call returns --------------

    def request_events(self) -> RequestEvents | None:
        """With ``serverless``, start counting the events the current request queues.

        Adapters call it before the app and `RequestEvents.finish` after it; None when the
        client is not serverless (nothing to do, nothing paid).
        """
        if not self.config.serverless:
            return None
        scope = RequestEvents(self)
        scope.token = current_request_events.set(scope)
        return scope

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


def _meta_keys(user_data: Mapping[str, Any] | None) -> set[str]:
    """The Meta keys a user_data mapping sets, friendly names translated (email -> em)."""
    if not user_data:
        return set()
    return {FRIENDLY_KEYS.get(k, k) if isinstance(k, str) else k for k in user_data}
