"""Where an event's match keys and consent come from: a request, a saved visitor, or a basis.

A request's `RequestContext` and a saved `Visitor` are `MatchSource`s. An event sent outside a
request without a visitor has no request keys and needs a stated consent basis: `basis` turns
``CAPIClient.track``'s ``visitor`` and ``consent`` arguments into the source to send from.
"""

from __future__ import annotations

from typing import Protocol

from capi_middleware.consent.policies import ConsentDecision
from capi_middleware.errors import Problem
from capi_middleware.visitor import Visitor

__all__ = ["NO_BASIS", "UNSTATED", "MatchSource", "NoVisitor", "basis"]


class MatchSource(Protocol):
    """Where an event's match context comes from: a request's context, or a saved visitor.

    Its match keys are in Meta's form already: a sendable IP (`rules.client_ip.sendable_ip`),
    a cleaned user agent (`rules.page_url.clean_user_agent`), a valid ``_fbc`` and ``_fbp``.
    Capture produces only such values and `Visitor` refuses any other, so events carry them
    as they are (`rules.events.build_event`'s ``clear_keys``).
    """

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
    @property
    def ldu_country(self) -> int: ...
    @property
    def ldu_state(self) -> int: ...


class NoVisitor:
    """The match source of an event sent without a visitor: no request keys, a stated basis."""

    __slots__ = ("consent",)
    client_ip = user_agent = fbc = fbp = event_source_url = referrer_url = None
    ldu_country = ldu_state = 0

    def __init__(self, consent: ConsentDecision) -> None:
        self.consent = consent


# No basis was stated: the event is denied with `NO_BASIS` (unless tracking is off anyway).
UNSTATED = ConsentDecision(granted=False, reason="no_basis")
NO_BASIS = Problem(
    "consent",
    "no consent basis for an event outside a request: pass visitor= (a Visitor from "
    "ctx.visitor()), or consent=True on the call or on the CAPIClient",
)
_STATED = NoVisitor(ConsentDecision(granted=True, reason="stated"))
_CALL_DENIED = ConsentDecision(granted=False, reason="call")


def basis(visitor: object, consent: object, client_consent: object) -> MatchSource | Problem:
    """The match source for ``track()``'s ``visitor`` and ``consent`` arguments.

    ``client_consent`` is the client's own ``consent`` option (True: a stated basis for every
    event sent without a visitor). A problem when an argument is of the wrong type.
    """
    if consent is not None and not isinstance(consent, (bool, ConsentDecision)):
        return Problem("consent", "must be True, False, None or a ConsentDecision")
    if visitor is not None:
        if not isinstance(visitor, Visitor):
            return Problem(
                "visitor",
                "must be a capi_middleware.Visitor (Visitor.from_dict / from_token load a "
                f"stored one), not {type(visitor).__name__}",
            )
        if consent is False or (isinstance(consent, ConsentDecision) and not consent.granted):
            return NoVisitor(_CALL_DENIED)
        return visitor  # consent=True never overrides the visitor's own decision
    if consent is None:
        return _STATED if client_consent is True else NoVisitor(UNSTATED)
    if consent is True:
        return _STATED
    if consent is False:
        return NoVisitor(_CALL_DENIED)
    assert isinstance(consent, ConsentDecision)
    return NoVisitor(consent)
