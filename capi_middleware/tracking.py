"""The pipeline side of ``ctx.track()``: one request's context and arguments -> a TrackResult.

`Tracker` does one thing: given a `RequestContext` and what the app passed to ``track()``, it
checks consent, fills the request's match keys into user_data (with the enhancement cookie's
remembered keys when one is configured), builds the event (`events.build_event`), applies strict
mode, refreshes the enhancement cookie, and hands the event to the pipeline's lazily started
sender, counting what it refused or dropped on the pipeline's counters. `CapturePipeline` owns
one and delegates ``track()`` to it; everything derived from config for capture stays there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from capi_middleware import events as event_rules
from capi_middleware.context import TrackResult, TrackStatus
from capi_middleware.enhancement import EnhancementCookie, Remembered, remembered_from_user_data
from capi_middleware.errors import CAPIValidationError, Problem
from capi_middleware.frozen import new_frozen

if TYPE_CHECKING:
    from capi_middleware.capture import CapturePipeline
    from capi_middleware.context import RequestContext

__all__ = ["Tracker"]

logger = logging.getLogger("capi_middleware")


class Tracker:
    """``RequestContext.track``'s pipeline side, for one `CapturePipeline`.

    Parameters:
        pipeline: the pipeline whose config, counters and sender it uses.
    """

    def __init__(self, pipeline: CapturePipeline) -> None:
        self._pipeline = pipeline
        config = pipeline.config
        self.config = config
        self._enhancement = (
            EnhancementCookie(config.enhancement_secret) if config.enhancement_secret else None
        )

    def __repr__(self) -> str:
        return f"Tracker(config={self.config!r})"

    def track(
        self,
        ctx: RequestContext,
        event_name: str,
        *,
        user_data: Mapping[str, Any] | None,
        custom_data: Mapping[str, Any] | None,
        event_id: str | None,
        event_time: Any,
        action_source: str | None,
        durable: bool | None,
        custom_data_fields: Mapping[str, Any],
    ) -> TrackResult:
        """``RequestContext.track``'s body; see there."""
        config = self.config
        pipeline = self._pipeline
        name = event_rules.map_event_name(event_name) if isinstance(event_name, str) else ""
        for arg, value in (("user_data", user_data), ("custom_data", custom_data)):
            if value is not None and not isinstance(value, Mapping):
                problem = Problem(arg, f"must be a mapping, not {type(value).__name__}")
                if config.strict:
                    raise CAPIValidationError([problem])
                pipeline.count_invalid((arg,))
                return TrackResult(
                    event_id=event_id or event_rules.new_event_id(),
                    status="invalid",
                    problems=(problem,),
                    event_name=name,
                )
        merged_custom: dict[str, Any] = dict(custom_data) if custom_data else {}
        merged_custom.update(custom_data_fields)

        if ctx._error is not None:
            return TrackResult(
                event_id=event_id or event_rules.new_event_id(),
                status="error",
                problems=(Problem("request", f"capture failed ({ctx._error}); see the log"),),
                event_name=name,
            )
        decision = ctx.consent
        if not decision.granted:
            pipeline.count("consent_denied")
            return TrackResult(
                event_id=event_id or event_rules.new_event_id(), status="denied", event_name=name
            )

        request_data: dict[str, Any] = {}
        if ctx.client_ip is not None:
            request_data["client_ip_address"] = ctx.client_ip
        if ctx.user_agent is not None:
            request_data["client_user_agent"] = ctx.user_agent
        if ctx.fbc is not None:
            request_data["fbc"] = ctx.fbc
        if ctx.fbp is not None:
            request_data["fbp"] = ctx.fbp
        remembered: Remembered = {}
        if self._enhancement is not None:
            remembered = self.remembered(ctx)
            if remembered:
                given = _meta_keys(user_data)
                for key, values in remembered.items():
                    if key not in given:
                        request_data[key] = list(values)
        if user_data:
            # Explicit keys win; a key given as None leaves the request's value out.
            request_data.update(user_data)
        user = {k: v for k, v in request_data.items() if v is not None}

        built = event_rules.build_event(
            event_name,
            user_data=user,
            custom_data=merged_custom,
            event_id=event_id,
            event_time=event_time,
            action_source=action_source,
            event_source_url=ctx.event_source_url,
            referrer_url=ctx.referrer_url,
            ldu=decision.ldu,
            default_country=config.default_country,
            hash_external_id=config.hash_external_id,
        )
        event = built.event
        if event is None:
            fatal = [p for p in built.problems if p.fatal] or list(built.problems)
            pipeline.count_invalid(problem.field for problem in fatal)
            if config.strict:
                raise CAPIValidationError(built.problems)
            logger.warning(
                "capi_middleware: %s event not sent: %s",
                name or "unnamed",
                "; ".join(str(p) for p in fatal),
            )
            return TrackResult(
                event_id=event_id or event_rules.new_event_id(),
                status="invalid",
                problems=built.problems,
                event_name=name,
            )
        if config.strict and built.problems:
            raise CAPIValidationError(built.problems)

        if self._enhancement is not None and not ctx._response_started:
            self._remember(ctx, remembered, event.user_data)

        result_args: dict[str, Any] = {
            "event_id": event.event_id,
            "problems": built.problems,
            "event_name": event.event_name,
            "custom_data": event.custom_data,
        }
        if config.dry_run:
            pipeline.count("dry_run")
            logger.info(
                "capi_middleware dry_run: %s event_id=%s (not sent)",
                event.event_name,
                event.event_id,
            )
            return new_frozen(TrackResult, {"status": "dry_run", **result_args})

        sender = pipeline.sender()
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
        # TrackResult(...) without its frozen __init__ (capi_middleware/frozen.py).
        return new_frozen(TrackResult, {"status": status, **result_args})

    # -- the enhancement cookie ---------------------------------------------------------------

    def remembered(self, ctx: RequestContext) -> Remembered:
        """The match keys this request's enhancement cookie remembers (loaded once per request)."""
        assert self._enhancement is not None
        if ctx._remembered is None:
            ctx._remembered = self._enhancement.load(ctx.cookies.get(self._enhancement.cookie_name))
        return ctx._remembered

    def _remember(
        self, ctx: RequestContext, before: Remembered, user_data: Mapping[str, Any]
    ) -> None:
        codec = self._enhancement
        assert codec is not None
        after = remembered_from_user_data(user_data)
        merged = dict(before)
        merged.update(after)
        if merged == before:
            return
        ctx._remembered = merged
        cookie = codec.render_set_cookie(codec.dump(merged), secure=ctx.secure)
        name = codec.cookie_name + "="
        # One enhancement cookie per response: a later track() replaces an earlier one.
        ctx._set_cookie = [c for c in ctx._set_cookie if not c.startswith(name)]
        ctx._set_cookie.append(cookie)


def _meta_keys(user_data: Mapping[str, Any] | None) -> set[str]:
    """The Meta keys a user_data mapping sets, friendly names translated (email -> em)."""
    if not user_data:
        return set()
    from capi_middleware.normalize import FRIENDLY_KEYS

    return {FRIENDLY_KEYS.get(k, k) for k in user_data}
