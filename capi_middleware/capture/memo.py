"""The bounded memos on the request path, and what each remembers.

A browser sends the same Cookie header, Host and consent signals on every request of a visit, so
capture works out once what depends only on them: the facts it reads from a Cookie header
(`CookieFactsMemo`), the consent decision (`ConsentMemo`), the visitor's validated cookies
(`KeptMemo`) and, for ASGI, a request's whole outcome (`Outcome`, kept by `store_granted` /
`store_outcome`, found by `CapturePipeline.capture_raw`, turned into a context by `replay`).
Every memo is bounded in entries and in the size of what keys it, since clients choose it
(`memoize`).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

from capi_middleware.capture.browser import raw_browser_made
from capi_middleware.capture.context import LAZY, RequestContext
from capi_middleware.capture.headers import MAX_COOKIE_HEADER_CHARS, MAX_HEADER_CHARS
from capi_middleware.capture.set_cookies import apply_plan, plan_now
from capi_middleware.client import CAPIClient, log_internal_error
from capi_middleware.consent.policies import ConsentDecision, evaluate, signals_read
from capi_middleware.rules import client_ip as client_ip_rules
from capi_middleware.rules import cookies as cookie_rules
from capi_middleware.rules.cookie_header import find_cookies, parse_cookie_header
from capi_middleware.rules.page_url import hostname, is_raw_navigation, page_host

__all__ = [
    "COOKIE_MEMO_MAX_CHARS",
    "ConsentMemo",
    "CookieFacts",
    "CookieFactsMemo",
    "KeptMemo",
    "Outcome",
    "judged_for_good",
    "memoize",
    "replay",
    "store_granted",
    "store_outcome",
]

MEMO_SIZE = 4096
MEMO_MAX_CHARS = 4096
COOKIE_MEMO_SIZE = 1024
OUTCOME_MEMO_SIZE = 2048
COOKIE_MEMO_MAX_CHARS = 2048

# From this Cookie header length on (about 10 cookies), capture searches it for the cookies it
# reads instead of parsing it whole: cheaper for a long header, dearer for a short one
# (bench/overhead.py has both shapes; docs/overhead.md the figures).
SEARCH_COOKIES_FROM_CHARS = 400

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


def memoize(memo: dict[_K, _V], key: _K, value: _V, size: int = MEMO_SIZE) -> None:
    """Store in a bounded memo; when full, forget the older half (dicts keep insertion order)."""
    if len(memo) >= size:
        for old in list(memo)[: size // 2]:
            memo.pop(old, None)
    memo[key] = value


class Outcome(NamedTuple):
    """A request's capture outcome, reused for requests with the same key (see `capture_raw`)."""

    scheme: str  # normalized
    consent: ConsentDecision
    cookies: Mapping[str, str] | None  # parsed, read-only; None: parsed on first read
    host: str | None  # the page host (granted only; else worked out on first read)
    fbc: str | None  # the visitor's valid cookies (kept ones; never minted values)
    fbp: str | None
    kept: cookie_rules.KeptCookies | None  # granted: what the cookie plan is made from
    plan: cookie_rules.CookiePlan | None  # granted, when it mints nothing: the same every time
    expire: tuple[str, ...] = ()  # refused: Set-Cookie values removing ours, on page loads


class CookieFacts(NamedTuple):
    """What capture reads from one Cookie header (`CookieFactsMemo.facts`)."""

    cookies: Mapping[str, str] | None  # parsed, read-only; None: not parsed (nothing ours in it)
    consent: tuple[str | None, ...]  # the consent policy's cookies, in `signals_read` order
    fbc: str | None  # the raw _fbc and _fbp, not yet validated
    fbp: str | None


class CookieFactsMemo:
    """What capture needs from a Cookie header, memoized by its text.

    Parameters:
        consent_cookies: the cookies the consent policy reads (`signals_read`), in its order.
    """

    def __init__(self, consent_cookies: tuple[str, ...]) -> None:
        self._consent_cookies = consent_cookies
        self._wanted = (*consent_cookies, cookie_rules.FBC_COOKIE, cookie_rules.FBP_COOKIE)
        self.no_cookies = CookieFacts(
            cookies=None, consent=(None,) * len(consent_cookies), fbc=None, fbp=None
        )
        self._memo: dict[str, CookieFacts] = {}

    def facts(self, header: str, *, remember: bool = True) -> CookieFacts:
        """The facts of a non-empty Cookie header; kept (bounded) unless ``remember`` is False.

        A header that holds neither a consent cookie nor ``_fbc``/``_fbp`` is not even parsed
        (the substring tests are exact: a parsed name is a substring of the header).
        """
        facts = self._memo.get(header)
        if facts is None:
            # Substring tests (C speed; a regex alternation of the names costs several times
            # more): a parsed name is a substring of the header, so a miss means none is there.
            if "_fb" in header or any(name in header for name in self._consent_cookies):
                # A long header (a typical shop's holds 20-40 cookies) costs less to search for
                # the few cookies capture reads than to parse whole; ctx.cookies parses it if the
                # app or a consent policy reads it. A short one is parsed at once, which is
                # cheaper than searching it (bench/overhead.py has both shapes).
                cookies: Mapping[str, str] | None = None
                found: Mapping[str, str] | None = None
                if len(header) > SEARCH_COOKIES_FROM_CHARS:
                    found = find_cookies(header, self._wanted)
                if found is None:
                    found = cookies = MappingProxyType(parse_cookie_header(header))
                facts = CookieFacts(
                    cookies=cookies,
                    consent=tuple(map(found.get, self._consent_cookies)),
                    fbc=found.get(cookie_rules.FBC_COOKIE),
                    fbp=found.get(cookie_rules.FBP_COOKIE),
                )
            else:
                facts = self.no_cookies
            if remember and len(header) <= COOKIE_MEMO_MAX_CHARS:
                memoize(self._memo, header, facts, COOKIE_MEMO_SIZE)
        return facts


class ConsentMemo:
    """`consent.evaluate`, reused for requests that carry the same consent signals.

    A built-in policy's answer depends only on the cookies and headers it declares
    (`consent.signals_read`), so the decision is memoized by their values; a visitor without
    any consent cookie costs a few substring tests. A user's own callable (``reads`` None)
    runs on every request, as it may read anything.

    Parameters:
        policy: the consent policy (a built-in one, or the user's callable).
    """

    def __init__(self, policy: Any) -> None:
        self._policy = policy
        self.reads = reads = signals_read(policy)
        try:
            raw_names: tuple[bytes, ...] | None = tuple(
                name.encode("latin-1") for name in (reads.headers if reads is not None else ())
            )
        except UnicodeEncodeError:  # a name no request can carry: read through header()
            raw_names = None
        self.raw_headers = raw_names  # the headers it reads, as ASGI's byte names
        self._memo: dict[
            tuple[tuple[str | None, ...], tuple[str | bytes | None, ...]], ConsentDecision
        ] = {}

    def decide(self, ctx: RequestContext, cookie_values: tuple[str | None, ...]) -> ConsentDecision:
        """The decision for ``ctx``, whose consent cookies hold ``cookie_values``."""
        reads = self.reads
        if reads is None:
            return evaluate(self._policy, ctx)
        raw_map = ctx.raw_headers
        raw_names = self.raw_headers
        if raw_map is not None and raw_names is not None:
            # Raw bytes key the memo as well as their text would.
            header_values: tuple[str | bytes | None, ...] = tuple(map(raw_map.get, raw_names))
        else:
            header_values = tuple(map(ctx.header, reads.headers))
        key = (cookie_values, header_values)
        decision = self._memo.get(key)
        if decision is None:
            decision = evaluate(self._policy, ctx)
            size = sum(len(v) for part in key for v in part if v is not None)
            if size <= MEMO_MAX_CHARS:
                memoize(self._memo, key, decision)
        return decision


class KeptMemo:
    """The visitor's own ``_fbc``/``_fbp`` validated and rendered (`cookies.keep_cookies`).

    That depends only on (host, scheme, raw values), and a browser sends the same values on
    every request of a visit, so it is memoized, unless a value was rejected for a creation
    time ahead of the clock (`judged_for_good`). Minting depends on the clock: never kept.

    Parameters:
        cookie_domain: the configured cookie domain (``CAPIConfig.cookie_domain``).
    """

    def __init__(self, cookie_domain: str | None) -> None:
        self._cookie_domain = cookie_domain
        self._memo: dict[tuple[str, bool, str | None, str | None], cookie_rules.KeptCookies] = {}

    def keep(
        self,
        host: str,
        secure: bool,
        raw_fbc: str | None,
        raw_fbp: str | None,
        remember: bool = True,
    ) -> cookie_rules.KeptCookies:
        """What of the visitor's raw cookies stays, for a page on ``host``."""
        key = (host, secure, raw_fbc, raw_fbp)
        kept = self._memo.get(key)
        if kept is None:
            kept = cookie_rules.keep_cookies(
                host=hostname(host),
                secure=secure,
                fbc=raw_fbc,
                fbp=raw_fbp,
                cookie_domain=self._cookie_domain,
                now_ms=int(time.time() * 1000),
            )
            if (
                remember
                and len(raw_fbc or "") + len(raw_fbp or "") <= MEMO_MAX_CHARS
                and judged_for_good(raw_fbc, raw_fbp, kept.fbc, kept.fbp)
            ):
                memoize(self._memo, key, kept)
        return kept


def store_outcome(
    memo: dict[tuple[Any, ...], Outcome], key: tuple[Any, ...], outcome: Outcome
) -> None:
    """Keep a request's outcome under its key (raw Cookie, Host, scheme, consent headers)."""
    # The consent headers in the key (after cookie, host, scheme) are any size a client likes:
    # an oversized one is never kept (checked here, once per new key, not per lookup).
    for value in key[3:]:
        if value is not None and len(value) > MEMO_MAX_CHARS:
            return
    memoize(memo, key, outcome, OUTCOME_MEMO_SIZE)


def store_granted(
    memo: dict[tuple[Any, ...], Outcome],
    key: tuple[Any, ...],
    raw_map: Mapping[bytes, bytes],
    scheme: str,
    host: str,
    decision: ConsentDecision,
    facts: CookieFacts,
    kept: cookie_rules.KeptCookies,
    plan: cookie_rules.CookiePlan | None,
) -> None:
    """Keep a granted request's outcome: the visitor's validated cookies, and ``plan`` when it
    holds for every request with this key (it mints nothing: a valid ``_fbp``, or ``set_fbp``
    off), which a replay then only applies. Without one, a replay plans on the clock."""
    if page_host(raw_map.get(b"host"), scheme) != host:
        return  # the host came from the server address, which is not in the key
    if not judged_for_good(facts.fbc, facts.fbp, kept.fbc, kept.fbp):
        return
    outcome = Outcome(
        scheme=scheme,
        consent=decision,
        cookies=facts.cookies,
        host=host,
        fbc=kept.fbc,
        fbp=kept.fbp,
        kept=kept,
        plan=plan,
    )
    store_outcome(memo, key, outcome)


def replay(
    client: CAPIClient,
    set_fbp: bool,
    outcome: Outcome,
    header_map: Mapping[bytes, bytes],
    raw_cookie: bytes | None,
    raw_referer: bytes | None,
    peer: str | None,
    server: Sequence[Any] | None,
    raw_path: str | bytes,
    query_string: str | bytes,
) -> RequestContext:
    """The context of a request whose capture outcome is known (`CapturePipeline.capture_raw`
    found it by the request's key): one lookup instead of the whole rule set. ``set_fbp`` is
    the config's; the other arguments are the request's, as `capture_raw` read them.
    """
    client.count("requests")
    raw = raw_cookie
    ctx = RequestContext(
        client,
        raw_map=header_map,
        peer=peer,
        scheme=outcome.scheme,
        server=server,
        raw_path=raw_path,
        query_string=query_string,
        cookie_header=raw[:MAX_COOKIE_HEADER_CHARS].decode("latin-1") if raw else None,
        cookies=outcome.cookies,
        referer=raw_referer[:MAX_HEADER_CHARS].decode("latin-1")
        if raw_referer is not None
        else None,
        host=outcome.host if outcome.host is not None else LAZY,
    )
    ctx.consent = outcome.consent
    ctx.fbc = outcome.fbc
    ctx.fbp = outcome.fbp
    if raw and b"_fbi" in raw and outcome.consent.granted:
        ctx.consider_fbi(ctx.cookies.get(client_ip_rules.FBI_COOKIE))
    if outcome.expire and is_raw_navigation(header_map):
        ctx.response_cookies.extend(outcome.expire)  # a refusal: ours removed (issue 10)
    if outcome.kept is not None:
        try:
            plan = outcome.plan
            if plan is None:
                # Only a browser gets a new _fbp (see CapturePipeline._capture).
                browser = raw_cookie is not None or raw_browser_made(header_map)
                plan = plan_now(outcome.kept, None, set_fbp and browser)
            apply_plan(ctx, plan)
        except Exception as exc:
            client.count("capture_errors")
            log_internal_error("cookie planning", exc)
    return ctx


def judged_for_good(
    raw_fbc: str | None, raw_fbp: str | None, valid_fbc: str | None, valid_fbp: str | None
) -> bool:
    """True when the verdict on the visitor's ``_fbc``/``_fbp`` cannot change with time.

    A cookie's creation time may be at most a week ahead of our clock (cookies.py). An accepted
    value stays acceptable, and so does the verdict on one rejected for its format or for a
    creation time already past; but one rejected for a creation time ahead of the clock (a
    device clock set wrong when the pixel stamped it) may be accepted days later.
    """
    return not (
        (raw_fbc is not None and valid_fbc is None and _stamped_ahead(raw_fbc))
        or (raw_fbp is not None and valid_fbp is None and _stamped_ahead(raw_fbp))
    )


def _stamped_ahead(value: str) -> bool:
    """True when a cookie value's creation time (``fb.1.<ms>.…``) is later than now."""
    parts = value.split(".", 3)
    if len(parts) < 4:
        return False
    created = parts[2]
    return (
        0 < len(created) <= 13  # 13-digit milliseconds (cookies.py); int() stays cheap
        and created.isascii()
        and created.isdigit()
        and int(created) > time.time() * 1000
    )
