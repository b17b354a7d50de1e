"""Consent policies: may this request set Meta's cookies and send events?

A policy is a callable ``(signals) -> bool | ConsentDecision | None``; ``None`` means "no opinion"
(the signal it reads is absent or unreadable). The middleware calls `evaluate` once per request,
before any cookie is set or any event queued. Denial means no ``_fbc``/``_fbp`` cookies and no
events for that request (META_CAPI_REFERENCE §7: events and cookies need consent where the law
asks for it).

Here: `evaluate` (never raises), `signals_read`, the combinators `first_of`, `all_of`, `any_of`,
`gpc_ldu` (``Sec-GPC: 1`` → Meta's Limited Data Use), `always_granted` / `always_denied` and
`default_policy`. The readers of each signal (`site_cookie`, `google_consent_mode`, `tcf_v2`)
are in `capi_middleware.consent.readers`; what a decision is, in `.decision`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from capi_middleware.consent.decision import (
    DENIED,
    GRANTED,
    NO_SIGNAL_REASON,
    ConsentDecision,
    ConsentPolicy,
    ConsentSignals,
    SignalsRead,
    declare_reads,
    reads_of,
)
from capi_middleware.consent.readers import google_consent_mode, site_cookie, tcf_v2

# The decision's vocabulary is re-exported: callers of `evaluate` read it from here.
__all__ = [
    "DENIED",
    "GRANTED",
    "NO_SIGNAL_REASON",
    "ConsentDecision",
    "ConsentPolicy",
    "ConsentSignals",
    "SignalsRead",
    "all_of",
    "always_denied",
    "always_granted",
    "any_of",
    "default_policy",
    "evaluate",
    "first_of",
    "gpc_ldu",
    "signals_read",
]

logger = logging.getLogger("capi_middleware.consent.policies")

_NOTHING_READ = SignalsRead(cookies=(), headers=())


def _union(policy: ConsentPolicy, parts: Iterable[object]) -> ConsentPolicy:
    # A combinator reads what its parts read, and is knowable only when every part is.
    found = []
    for part in parts:
        read = reads_of(part)
        if read is None:
            return policy
        found.append(read)
    return declare_reads(
        policy,
        cookies=[c for r in found for c in r.cookies],
        headers=[h for r in found for h in r.headers],
    )


def signals_read(policy: ConsentPolicy | bool | None) -> SignalsRead | None:
    """What `evaluate` reads for ``policy``, or None when it cannot be known (a user callable).

    ``None`` (the default policy), ``True``, ``False`` and the built-ins and their combinations
    are known; the answer for them depends on nothing else in the request.
    """
    if policy is None:
        policy = _DEFAULT
    elif policy is True:
        policy = _NOT_REQUIRED
    elif policy is False:
        return _NOTHING_READ
    return reads_of(policy)


# -- evaluate -------------------------------------------------------------------------------


_NO_SIGNAL = ConsentDecision(granted=False, reason=NO_SIGNAL_REASON)
_POLICY_ERROR = ConsentDecision(granted=False, reason="policy_error")


def evaluate(policy: ConsentPolicy | bool | None, signals: ConsentSignals) -> ConsentDecision:
    """Decide for one request; never raises.

    - ``None``: `default_policy` (opt-in required: no signal → denied).
    - ``True``: no consent is needed here (e.g. a US-only site), so granted; a visitor's
      ``Sec-GPC: 1`` still turns on Limited Data Use, since GPC is a legal opt-out of
      sale/sharing in several US states.
    - ``False``: denied (reason ``"disabled"``).
    - a callable: its answer; a top-level ``None`` means no signal and is denied. A policy that
      raises or returns something else is denied (reason ``"policy_error"``) and logged once.
    """
    if policy is None:
        policy = _DEFAULT
    elif policy is True:
        policy = _NOT_REQUIRED
    elif policy is False:
        return ConsentDecision(granted=False, reason="disabled")
    answer = _ask(policy, signals)
    return _NO_SIGNAL if answer is None else answer


def _ask(policy: ConsentPolicy, signals: ConsentSignals) -> ConsentDecision | None:
    """Call one policy, turning bools into decisions and failures into a denial."""
    try:
        answer = policy(signals)
    except Exception as exc:
        _warn_once(policy, f"raised {type(exc).__name__}{_where(exc)}")
        return _POLICY_ERROR
    if answer is None or isinstance(answer, ConsentDecision):
        return answer
    if isinstance(answer, bool):
        return ConsentDecision(granted=answer, reason="policy")
    _warn_once(policy, f"returned an unsupported {type(answer).__name__}")
    return _POLICY_ERROR


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(policy: object, what: str) -> None:
    # Only the policy's name, the exception class and where it was raised: an exception's
    # message may quote a cookie or header value, which is request data.
    name = _policy_name(policy)
    with _warned_lock:
        if name in _warned or len(_warned) >= 1000:
            return
        _warned.add(name)
    logger.warning(
        "consent policy %s %s; the request is treated as denied (logged once per policy)",
        name,
        what,
    )


def _policy_name(policy: object) -> str:
    name = getattr(policy, "__qualname__", None) or type(policy).__qualname__
    module = getattr(policy, "__module__", None) or type(policy).__module__
    return f"{module}.{name}"


def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"


# -- simple policies and combinators --------------------------------------------------------


def always_granted(signals: ConsentSignals) -> ConsentDecision:
    """A policy that always grants (no GPC handling: wrap it in `gpc_ldu` for that)."""
    return ConsentDecision(granted=True, reason="always_granted")


def always_denied(signals: ConsentSignals) -> ConsentDecision:
    """A policy that always denies."""
    return ConsentDecision(granted=False, reason="always_denied")


declare_reads(always_granted)
declare_reads(always_denied)


def _check_policies(combinator: str, policies: tuple[object, ...]) -> None:
    if not policies:
        raise ValueError(f"{combinator}: needs at least one policy")
    for p in policies:
        if not callable(p):
            raise ValueError(f"{combinator}: every policy must be callable, got {type(p).__name__}")


def first_of(*policies: ConsentPolicy) -> ConsentPolicy:
    """The first policy with an opinion decides; ``None`` when none has one.

    Use it to rank signals: ``first_of(site_cookie(), tcf_v2())`` believes the site's own
    cookie over the TCF string.
    """
    _check_policies("first_of", policies)

    def first_of_policy(signals: ConsentSignals) -> ConsentDecision | None:
        for policy in policies:
            answer = _ask(policy, signals)
            if answer is not None:
                return answer
        return None

    return _union(first_of_policy, policies)


def all_of(*policies: ConsentPolicy) -> ConsentPolicy:
    """Granted only when every policy grants; any denial denies.

    A policy with no opinion (``None``) does not count as a grant: if nobody denies but not
    everyone grants, the answer is ``None`` (no opinion), which `evaluate` treats as denied.
    LDU is on when any grant asks for it.
    """
    _check_policies("all_of", policies)

    def all_of_policy(signals: ConsentSignals) -> ConsentDecision | None:
        reasons: list[str] = []
        ldu = False
        undecided = False
        for policy in policies:
            answer = _ask(policy, signals)
            if answer is None:
                undecided = True
            elif not answer.granted:
                return answer
            else:
                ldu = ldu or answer.ldu
                if answer.reason and answer.reason not in reasons:
                    reasons.append(answer.reason)
        if undecided:
            return None
        return ConsentDecision(granted=True, ldu=ldu, reason="+".join(reasons) or "all_of")

    return _union(all_of_policy, policies)


def any_of(*policies: ConsentPolicy) -> ConsentPolicy:
    """Granted when any policy grants (the first grant wins); else the first denial; else None.

    A policy that raises counts as a denial, so another policy may still grant.
    """
    _check_policies("any_of", policies)

    def any_of_policy(signals: ConsentSignals) -> ConsentDecision | None:
        denial: ConsentDecision | None = None
        for policy in policies:
            answer = _ask(policy, signals)
            if answer is None:
                continue
            if answer.granted:
                return answer
            if denial is None:
                denial = answer
        return denial

    return _union(any_of_policy, policies)


# -- GPC → Limited Data Use -----------------------------------------------------------------


def _gpc_on(signals: ConsentSignals) -> bool:
    # Global Privacy Control spec: the header is exactly "1" when the visitor opted out.
    value = signals.header("sec-gpc")
    return isinstance(value, str) and value.strip() == "1"


def _apply_gpc(decision: ConsentDecision, signals: ConsentSignals) -> ConsentDecision:
    if not decision.granted or decision.ldu or not _gpc_on(signals):
        return decision
    reason = f"{decision.reason}+gpc" if decision.reason else "gpc"
    return ConsentDecision(granted=True, ldu=True, reason=reason)


def gpc_ldu(policy: ConsentPolicy) -> ConsentPolicy:
    """Honour Global Privacy Control: a grant from ``policy`` becomes a grant with LDU.

    ``Sec-GPC: 1`` is a US opt-out of sale/sharing; Meta's answer to it is Limited Data Use
    (META_CAPI_REFERENCE §2, §7). GPC never grants by itself: no opinion and denials pass
    through unchanged.
    """
    _check_policies("gpc_ldu", (policy,))

    def gpc_ldu_policy(signals: ConsentSignals) -> ConsentDecision | None:
        answer = _ask(policy, signals)
        if answer is None:
            return None
        return _apply_gpc(answer, signals)

    inner = reads_of(policy)
    if inner is None:
        return gpc_ldu_policy
    return declare_reads(gpc_ldu_policy, inner.cookies, (*inner.headers, "sec-gpc"))


# -- the default ----------------------------------------------------------------------------


def default_policy() -> ConsentPolicy:
    """The policy used when none is configured: lawful in the EU.

    The site's own cookie, then Consent Mode, then TCF, first with an opinion deciding; GPC
    turns a grant into a grant with Limited Data Use; no signal at all → denied (reason
    ``"no_signal"``), because the GDPR and ePrivacy rules ask for an opt-in.
    """
    chain = gpc_ldu(first_of(site_cookie(), google_consent_mode(), tcf_v2()))

    def default_consent_policy(signals: ConsentSignals) -> ConsentDecision:
        answer = _ask(chain, signals)
        return _NO_SIGNAL if answer is None else answer

    return _union(default_consent_policy, (chain,))


def _consent_not_required(signals: ConsentSignals) -> ConsentDecision:
    return ConsentDecision(granted=True, reason="not_required")


declare_reads(_consent_not_required)


_DEFAULT = default_policy()
_NOT_REQUIRED = gpc_ldu(_consent_not_required)  # ``consent=True``: GPC still means LDU
