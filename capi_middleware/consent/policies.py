"""Consent policies: may this request set Meta's cookies and send events?

A policy is a callable ``(signals) -> bool | ConsentDecision | None``; ``None`` means "no opinion"
(the signal it reads is absent or unreadable). The middleware calls `evaluate` once per request,
before any cookie is set or any event queued. Denial means no ``_fbc``/``_fbp`` cookies and no
events for that request (META_CAPI_REFERENCE §7: events and cookies need consent where the law
asks for it).

Built-in readers, one per signal found in the wild: `site_cookie` (a site's own banner cookie),
`google_consent_mode` (Consent Mode v2 ``ad_storage`` + ``ad_user_data``, relayed in a cookie),
`tcf_v2` (the IAB TCF v2 ``euconsent-v2`` string) and `gpc_ldu` (``Sec-GPC: 1`` → Meta's Limited
Data Use). Combinators `first_of`, `all_of`, `any_of` compose them. Every reader tolerates junk:
it never raises and does bounded work whatever the size of the value it is handed.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote

from capi_middleware.rules.tcf import TCString, parse_tc_string

__all__ = [
    "DENIED",
    "GRANTED",
    "NO_SIGNAL_REASON",
    "ConsentDecision",
    "ConsentPolicy",
    "ConsentSignals",
    "TCString",
    "all_of",
    "always_denied",
    "always_granted",
    "any_of",
    "default_policy",
    "evaluate",
    "first_of",
    "google_consent_mode",
    "gpc_ldu",
    "parse_tc_string",
    "signals_read",
    "site_cookie",
    "tcf_v2",
]

logger = logging.getLogger("capi_middleware.consent.policies")


@dataclass(frozen=True)
class ConsentDecision:
    """The answer for one request.

    Parameters:
        granted: cookies may be set and events sent.
        ldu: send events with Meta's Limited Data Use (``data_processing_options: ["LDU"]``),
            e.g. because the visitor sent ``Sec-GPC: 1``. Only meaningful when granted.
        reason: a short machine-friendly label for counters and logs: ``"site_cookie"``,
            ``"consent_mode"``, ``"tcf_v2"``, ``"site_cookie+gpc"``, ``"no_signal"``,
            ``"policy_error"``, ... Never holds request data.
    """

    granted: bool
    ldu: bool = False
    reason: str = ""


GRANTED = ConsentDecision(granted=True, reason="granted")
DENIED = ConsentDecision(granted=False, reason="denied")

NO_SIGNAL_REASON = "no_signal"
"""The reason of a default-policy denial for want of any consent signal (not a "no")."""
_NO_SIGNAL = ConsentDecision(granted=False, reason=NO_SIGNAL_REASON)
_POLICY_ERROR = ConsentDecision(granted=False, reason="policy_error")


class ConsentSignals(Protocol):
    """What a policy may look at. `RequestContext` satisfies it."""

    @property
    def cookies(self) -> Mapping[str, str]: ...

    def header(self, name: str) -> str | None:
        """The request header ``name`` (case-insensitive), or None."""
        ...


ConsentPolicy = Callable[[ConsentSignals], bool | ConsentDecision | None]


@dataclass(frozen=True)
class SignalsRead:
    """Every cookie and header a built-in policy looks at (names as given, headers lowercase).

    A built-in policy's answer is a pure function of these values, so a caller may reuse the
    decision for a request that carries the same values (the middleware does, bounded).
    """

    cookies: tuple[str, ...]
    headers: tuple[str, ...]


# Built-in policies and what they read; user callables are absent (their reads are unknown).
_reads: weakref.WeakKeyDictionary[Callable[..., object], SignalsRead] = weakref.WeakKeyDictionary()
_NOTHING_READ = SignalsRead(cookies=(), headers=())


def _declare(
    policy: ConsentPolicy, cookies: Iterable[str] = (), headers: Iterable[str] = ()
) -> ConsentPolicy:
    _reads[policy] = SignalsRead(
        cookies=tuple(dict.fromkeys(cookies)),
        headers=tuple(dict.fromkeys(h.lower() for h in headers)),
    )
    return policy


def _read_by(policy: object) -> SignalsRead | None:
    try:
        read: SignalsRead | None = _reads.get(policy)  # type: ignore[call-overload]
        return read
    except TypeError:  # not weak-referenceable or not hashable: certainly not one of ours
        return None


def _union(policy: ConsentPolicy, parts: Iterable[object]) -> ConsentPolicy:
    # A combinator reads what its parts read, and is knowable only when every part is.
    found = []
    for part in parts:
        read = _read_by(part)
        if read is None:
            return policy
        found.append(read)
    return _declare(
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
    return _read_by(policy)


# Browsers keep at most ~4 KB per cookie; anything longer did not come from a consent banner,
# so it is treated as absent instead of being parsed.
_MAX_COOKIE_CHARS = 4096
_MAX_PAIRS = 64


# -- evaluate -------------------------------------------------------------------------------


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


_declare(always_granted)
_declare(always_denied)


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

    inner = _read_by(policy)
    if inner is None:
        return gpc_ldu_policy
    return _declare(gpc_ldu_policy, inner.cookies, (*inner.headers, "sec-gpc"))


# -- shared cookie value parsing ------------------------------------------------------------


def _cookie_text(
    signals: ConsentSignals, name: str, *, limit: int = _MAX_COOKIE_CHARS
) -> str | None:
    """The cookie's value, unquoted and percent-decoded; None when absent, empty or oversized."""
    raw = signals.cookies.get(name)
    if not isinstance(raw, str) or not raw or len(raw) > limit:
        return None
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':  # RFC 6265 allows a quoted value
        text = text[1:-1]
    if "%" in text:  # banners often encodeURIComponent() their value (Cookiebot does)
        text = unquote(text, errors="replace")
    return text.strip() or None


def _parse_pairs(text: str) -> dict[str, object]:
    """Read ``{"k": v}`` JSON or ``k:v,k=v&k:v`` pairs into a dict; junk gives ``{}``.

    The pair form also reads JS-object-like values such as Cookiebot's
    ``{necessary:true,marketing:false,method:'explicit'}``.
    """
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # deeply nested junk must not escape either
            data = None
        if isinstance(data, dict):
            return {str(k): v for k, v in list(data.items())[:_MAX_PAIRS]}
        text = text.strip("{}")
    pairs: dict[str, object] = {}
    for sep in ("&", "|", ";"):
        text = text.replace(sep, ",")
    for item in text.split(",", _MAX_PAIRS)[:_MAX_PAIRS]:
        cut = min((i for i in (item.find(":"), item.find("=")) if i > 0), default=-1)
        if cut < 0:
            continue
        key = item[:cut].strip().strip("'\"")
        value = item[cut + 1 :].strip().strip("'\"")
        if key and key not in pairs:
            pairs[key] = value
    return pairs


def _lookup(pairs: Mapping[str, object], key: str) -> object:
    if key in pairs:
        return pairs[key]
    folded = key.casefold()
    for k, v in pairs.items():
        if k.casefold() == folded:
            return v
    return None


def _word_set(parameter: str, words: Iterable[str]) -> frozenset[str]:
    if isinstance(words, str):
        raise ValueError(f"{parameter}: must be a tuple of strings, not one string")
    out = set()
    for w in words:
        if not isinstance(w, str) or not w.strip():
            raise ValueError(f"{parameter}: every entry must be a non-empty string")
        out.add(w.strip().casefold())
    return frozenset(out)


def _check_name(parameter: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{parameter}: must be a non-empty cookie or header name")


# -- site cookie ----------------------------------------------------------------------------

_SITE_GRANTED = ("1", "true", "yes", "granted", "allow", "all", "accept", "accepted")
_SITE_DENIED = (
    "0",
    "false",
    "no",
    "denied",
    "deny",
    "reject",
    "rejected",
    "decline",
    "declined",
    "none",
    "necessary",
    "essential",
)


def site_cookie(
    name: str = "cookie_consent",
    granted: Iterable[str] = _SITE_GRANTED,
    denied: Iterable[str] = _SITE_DENIED,
    *,
    category: str | None = None,
) -> ConsentPolicy:
    """Read the site's own consent cookie.

    Parameters:
        name: the cookie's name.
        granted: values (any case) that mean "yes, marketing/ads allowed".
        denied: values (any case) that mean "no".
        category: when the cookie holds several categories, as JSON (``{"marketing": true}``)
            or pairs (``analytics:1,marketing:0``, Cookiebot's ``{marketing:true,...}``), the
            key to read. JSON ``true``/``false`` are understood too.

    No cookie, or a value in neither list → ``None`` (no opinion). Reason ``"site_cookie"``.
    """
    _check_name("site_cookie name", name)
    yes = _word_set("site_cookie granted", granted)
    no = _word_set("site_cookie denied", denied)
    if yes & no:
        raise ValueError("site_cookie: a value cannot be in both granted and denied")
    if category is not None:
        _check_name("site_cookie category", category)
    grant = ConsentDecision(granted=True, reason="site_cookie")
    deny = ConsentDecision(granted=False, reason="site_cookie")

    def site_cookie_policy(signals: ConsentSignals) -> ConsentDecision | None:
        text = _cookie_text(signals, name)
        if text is None:
            return None
        value: object = text
        if category is not None:
            value = _lookup(_parse_pairs(text), category)
        if isinstance(value, bool):
            return grant if value else deny
        if isinstance(value, int):
            value = str(value)
        if not isinstance(value, str):
            return None
        word = value.strip().casefold()
        if word in yes:
            return grant
        if word in no:
            return deny
        return None

    return _declare(site_cookie_policy, cookies=(name,))


# -- Google Consent Mode v2 -----------------------------------------------------------------


def _consent_mode_state(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().casefold()
        if word == "granted":
            return True
        if word == "denied":
            return False
    return None


def google_consent_mode(
    cookie: str | None = "capi_consent_mode", header: str | None = None
) -> ConsentPolicy:
    """Google Consent Mode v2, relayed to the server by the page.

    Browsers do not send Consent Mode state to your server, so the page writes it to a cookie
    when it calls ``gtag('consent', 'update', ...)`` (docs/consent.md has the one-liner).
    Accepted values: ``ad_storage=granted&ad_user_data=granted`` (also ``,`` or ``|`` between
    pairs, ``:`` for ``=``), or JSON ``{"ad_storage": "granted", "ad_user_data": "granted"}``.

    Parameters:
        cookie: the cookie to read, or None.
        header: a request header carrying the same format (for ``fetch`` calls), or None.
            The cookie wins when both are present.

    Both ``ad_storage`` and ``ad_user_data`` granted → granted; either denied → denied;
    otherwise ``None``. Reason ``"consent_mode"``.
    """
    if cookie is None and header is None:
        raise ValueError("google_consent_mode: give a cookie name, a header name, or both")
    if cookie is not None:
        _check_name("google_consent_mode cookie", cookie)
    if header is not None:
        _check_name("google_consent_mode header", header)
    grant = ConsentDecision(granted=True, reason="consent_mode")
    deny = ConsentDecision(granted=False, reason="consent_mode")

    def read(signals: ConsentSignals) -> str | None:
        if cookie is not None:
            text = _cookie_text(signals, cookie)
            if text is not None:
                return text
        if header is not None:
            raw = signals.header(header)
            if isinstance(raw, str) and 0 < len(raw) <= _MAX_COOKIE_CHARS:
                return unquote(raw.strip(), errors="replace") if "%" in raw else raw.strip()
        return None

    def google_consent_mode_policy(signals: ConsentSignals) -> ConsentDecision | None:
        text = read(signals)
        if not text:
            return None
        pairs = _parse_pairs(text)
        storage = _consent_mode_state(_lookup(pairs, "ad_storage"))
        user_data = _consent_mode_state(_lookup(pairs, "ad_user_data"))
        if storage is False or user_data is False:
            return deny
        if storage and user_data:
            return grant
        return None

    return _declare(
        google_consent_mode_policy,
        cookies=(cookie,) if cookie is not None else (),
        headers=(header,) if header is not None else (),
    )


# -- IAB TCF v2 (the decoder lives in capi_middleware.rules.tcf) -------------------------------


def tcf_v2(
    cookie: str = "euconsent-v2",
    purposes: Iterable[int] = (1,),
    vendor_id: int | None = None,
) -> ConsentPolicy:
    """Read the IAB TCF v2 TC string a CMP stores in a cookie.

    Parameters:
        cookie: the cookie holding the TC string (``euconsent-v2`` by convention).
        purposes: TCF purpose ids that must all have consent (1 = store and/or access
            information on a device, which Meta's cookies need; add 7 for ad measurement...).
        vendor_id: a Global Vendor List id that must have consent too, or None.

    All required purposes (and the vendor) consented → granted; otherwise denied; no cookie or
    a string that does not decode → ``None``. Reason ``"tcf_v2"``.
    """
    _check_name("tcf_v2 cookie", cookie)
    required = tuple(purposes) if not isinstance(purposes, int) else (purposes,)
    if not required or any(
        isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 24 for p in required
    ):
        raise ValueError("tcf_v2 purposes: must be one or more TCF purpose ids from 1 to 24")
    if vendor_id is not None and (
        isinstance(vendor_id, bool) or not isinstance(vendor_id, int) or not 1 <= vendor_id <= 65535
    ):
        raise ValueError("tcf_v2 vendor_id: must be a Global Vendor List id from 1 to 65535")
    grant = ConsentDecision(granted=True, reason="tcf_v2")
    deny = ConsentDecision(granted=False, reason="tcf_v2")

    def tcf_v2_policy(signals: ConsentSignals) -> ConsentDecision | None:
        raw = signals.cookies.get(cookie)
        if not isinstance(raw, str) or not raw:
            return None
        tc = parse_tc_string(raw.strip().strip('"'))
        if tc is None:
            return None
        if not all(p in tc.purposes_consent for p in required):
            return deny
        if vendor_id is not None and not tc.has_vendor_consent(vendor_id):
            return deny
        return grant

    return _declare(tcf_v2_policy, cookies=(cookie,))


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


_declare(_consent_not_required)


_DEFAULT = default_policy()
_NOT_REQUIRED = gpc_ldu(_consent_not_required)  # ``consent=True``: GPC still means LDU
