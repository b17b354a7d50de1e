"""CapturePipeline: everything derived from a config once, and each request's capture.

The ASGI and WSGI adapters hand `CapturePipeline.capture` / `capture_raw` what they read from
the request (peer address, scheme, server, raw path, query string, headers); the pipeline runs
client IP resolution, cookie reading, consent and the cookie plan (memoized where the answer
depends only on what keys it, bounded), returns a `RequestContext`, keeps the counters and the
lazily started sender, and delegates the pipeline side of ``ctx.track()`` to `tracking.Tracker`.
Also here: what the adapters share (`log_internal_error`, `is_shared_cacheable`).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

from capi_middleware.capture.context import LAZY, RequestContext
from capi_middleware.capture.headers import MAX_COOKIE_HEADER_CHARS, MAX_HEADER_CHARS, cap_header
from capi_middleware.client import CAPIClient, log_internal_error
from capi_middleware.consent.policies import (
    NO_SIGNAL_REASON,
    ConsentDecision,
    default_policy,
    evaluate,
    signals_read,
)
from capi_middleware.rules import client_ip as client_ip_rules
from capi_middleware.rules import cookies as cookie_rules
from capi_middleware.rules.cookie_domain import cookie_domain_for
from capi_middleware.rules.cookie_header import find_cookies, parse_cookie_header
from capi_middleware.rules.page_url import (
    DEFAULT_PORTS,
    MAX_HOST_CHARS,
    hostname,
    is_navigation,
    is_raw_navigation,
    latin1_text,
    page_host,
)

__all__ = ["CapturePipeline", "cookies_not_set_by_app", "is_shared_cacheable"]

logger = logging.getLogger("capi_middleware")

_EMPTY: Mapping[str, str] = MappingProxyType({})

# Memos on the request path (consent decisions, the visitor's validated cookies, parsed Cookie
# headers) are bounded in entries and in the size of what keys them, since clients choose it.
_MEMO_SIZE = 4096
_MEMO_MAX_CHARS = 4096
_COOKIE_MEMO_SIZE = 1024
_OUTCOME_MEMO_SIZE = 2048
_COOKIE_MEMO_MAX_CHARS = 2048

# From this Cookie header length on (about 10 cookies), capture searches it for the cookies it
# reads instead of parsing it whole: cheaper for a long header, dearer for a short one
# (bench/overhead.py has both shapes; docs/overhead.md the figures).
_SEARCH_COOKIES_FROM_CHARS = 400


class _Outcome(NamedTuple):
    """A request's capture outcome, reused for requests with the same key (see `capture_raw`)."""

    scheme: str  # normalized
    consent: ConsentDecision
    cookies: Mapping[str, str] | None  # parsed, read-only; None: parsed on first read
    host: str | None  # the page host (granted only; else worked out on first read)
    fbc: str | None  # the visitor's valid cookies (kept ones; never minted values)
    fbp: str | None
    kept: cookie_rules.KeptCookies | None  # granted: what `_apply_plan` plans from, per request
    expire: tuple[str, ...] = ()  # refused: Set-Cookie values removing ours, on page loads


class _CookieFacts(NamedTuple):
    """What capture reads from one Cookie header (`CapturePipeline._cookie_facts`)."""

    cookies: Mapping[str, str] | None  # parsed, read-only; None: not parsed (nothing ours in it)
    consent: tuple[str | None, ...]  # the consent policy's cookies, in `signals_read` order
    fbc: str | None  # the raw _fbc and _fbp, not yet validated
    fbp: str | None


_CAPTURE_FAILED = ConsentDecision(granted=False, reason="capture_error")

# Denials that are not the visitor's (or the site's policy's) "no": nothing is expired for them.
_NOT_A_REFUSAL = frozenset(
    {NO_SIGNAL_REASON, "policy_error", "capture_error", "disabled", "always_denied"}
)


class CapturePipeline:
    """Everything derived from a config once, and the per-request capture and track steps.

    One per middleware instance; shared by every request (and thread, under WSGI).

    Parameters:
        client: the client whose config it captures for and whose counters it keeps.
    """

    def __init__(self, client: CAPIClient) -> None:
        self.client = client
        config = self.config = client.config
        # One forwarded-header family, the host only on opt-in and inside the cookie domain
        # (issue 10; rules/client_ip.py).
        self._trust = client_ip_rules.ProxyTrust(
            config.trusted_networks(),
            headers=config.forwarded_headers,
            trust_host=config.trust_forwarded_host,
            site=config.cookie_domain,
        )
        self._has_trust = bool(config.trusted_proxies)
        # Peers found trusted when their forwarding headers were checked (check_forwarding_trust).
        self._trusted_peers: set[str | None] = set()
        self._cookie_domain = config.cookie_domain
        self._set_fbp = config.set_fbp
        # Paths no browser requests (webhooks): no cookie is set there, and no memo is used.
        self._no_cookie_paths = config.no_cookie_paths
        self._no_cookie_raw_paths = tuple(p.encode("ascii") for p in config.no_cookie_paths)
        self._kept_memo: dict[tuple[str, bool, str | None, str | None], cookie_rules.KeptCookies]
        self._kept_memo = {}
        consent_option = config.consent
        self._policy: Any = default_policy() if consent_option is None else consent_option
        self._consent_reads = reads = signals_read(self._policy)
        self._consent_memo: dict[
            tuple[tuple[str | None, ...], tuple[str | bytes | None, ...]], ConsentDecision
        ] = {}
        try:
            raw_names: tuple[bytes, ...] | None = tuple(
                name.encode("latin-1") for name in (reads.headers if reads is not None else ())
            )
        except UnicodeEncodeError:  # a name no request can carry: read through header()
            raw_names = None
        self._consent_raw_headers = raw_names
        self._outcome_memo_on = reads is not None and raw_names is not None and not self._has_trust
        names = reads.cookies if reads is not None else ()
        self._consent_cookies = names
        self._wanted_cookies = (*names, cookie_rules.FBC_COOKIE, cookie_rules.FBP_COOKIE)
        self._no_cookies = _CookieFacts(
            cookies=None, consent=(None,) * len(names), fbc=None, fbp=None
        )
        self._cookie_memo: dict[str, _CookieFacts] = {}
        # Whole capture outcomes, for the ASGI path (see capture_raw); only when everything
        # they depend on is in the key: a built-in policy and no trusted proxies.
        self._outcomes: dict[tuple[Any, ...], _Outcome] = {}

    def __repr__(self) -> str:
        return f"CapturePipeline(config={self.config!r})"

    def count(self, name: str, n: int = 1) -> None:
        """Add to one of the client's counters (`CAPIClient.count`)."""
        self.client.count(name, n)

    # -- capture ----------------------------------------------------------------------------

    def failed_context(self, what: str) -> RequestContext:
        """A context for a request whose capture failed: no cookies; track() reports error."""
        ctx = RequestContext(self.client, error=what)
        ctx.consent = _CAPTURE_FAILED
        return ctx

    def capture(
        self,
        *,
        peer: str | None,
        scheme: str,
        server: tuple[str, int | None] | None,
        raw_path: str,
        query_string: str,
        headers: Mapping[str, str],
    ) -> RequestContext:
        """Build the RequestContext of one request. Adapters guard the call.

        Parameters:
            peer: the TCP peer's address (no port).
            scheme: ``http`` or ``https`` as the server saw it.
            server: the server's (host, port), used when the Host header is missing or junk.
            raw_path: the path as the browser sent it (percent-encoding kept), latin-1 text.
            query_string: the raw query string, latin-1 text, without ``?``.
            headers: lowercase names -> latin-1 values, repeats joined, values capped
                (`cap_header`). ASGI uses `capture_raw`, which decodes only what it reads.
        """
        if (
            not _forwarding_checked
            and ("x-forwarded-for" in headers or "forwarded" in headers)
            and peer not in self._trusted_peers
        ):
            check_forwarding_trust(peer, headers, self._trust, self._trusted_peers)
        return self._capture(None, headers, peer, scheme, server, raw_path, query_string)

    def capture_raw(
        self,
        *,
        peer: str | None,
        scheme: str,
        server: Sequence[Any] | None,
        raw_path: str | bytes,
        query_string: str | bytes,
        header_map: Mapping[bytes, bytes],
    ) -> RequestContext:
        """`capture` for ASGI: headers as lowercase byte names -> raw byte values.

        ``header_map`` must hold each header once (repeats joined, see `asgi_header_map`);
        values are decoded only when read, and capped then. ``raw_path`` and ``query_string``
        may be the scope's bytes (a raw path may still carry the query), decoded when needed.
        """
        # Whether this request's capture outcome can be reused, and its key. Without an fbclid
        # (query or Referer) and without trusted proxies, the consent decision, the visitor's
        # kept cookies and what to mint depend only on the raw Cookie and Host headers, the
        # scheme and the headers the consent policy declares. Inline: this runs on every ASGI
        # request; the raw Cookie and Referer read here are handed on.
        key = None
        if (
            self._outcome_memo_on
            and isinstance(query_string, bytes)
            and b"fbclid" not in query_string
            and not (self._no_cookie_paths and self._no_cookies_for(raw_path))
        ):
            get = header_map.get
            cookie = get(b"cookie")
            referer = get(b"referer")
            host = get(b"host")
            if (
                (referer is None or b"fbclid" not in referer)
                and (cookie is None or len(cookie) <= _COOKIE_MEMO_MAX_CHARS)
                and host is not None
                and len(host) <= MAX_HOST_CHARS
            ):
                names = self._consent_raw_headers
                key = (cookie, host, scheme, *map(get, names)) if names else (cookie, host, scheme)
                outcome = self._outcomes.get(key)
                if outcome is not None:
                    return self._replay(
                        outcome, header_map, cookie, referer, peer, server, raw_path, query_string
                    )
        # Only here, not before a memo hit: a hit follows a miss with the same key, and behind a
        # proxy every request carries the header, so the process's first request shows it.
        if (
            not _forwarding_checked
            and (b"x-forwarded-for" in header_map or b"forwarded" in header_map)
            and peer not in self._trusted_peers
        ):
            check_forwarding_trust(peer, header_map, self._trust, self._trusted_peers)
        return self._capture(header_map, _EMPTY, peer, scheme, server, raw_path, query_string, key)

    def _replay(
        self,
        outcome: _Outcome,
        header_map: Mapping[bytes, bytes],
        raw_cookie: bytes | None,
        raw_referer: bytes | None,
        peer: str | None,
        server: Sequence[Any] | None,
        raw_path: str | bytes,
        query_string: str | bytes,
    ) -> RequestContext:
        """A request whose capture outcome is known: one lookup instead of the whole rule set."""
        self.client.count("requests")
        raw = raw_cookie
        ctx = RequestContext(
            self.client,
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
                # Only a browser gets a new _fbp (see _capture).
                browser = raw_cookie is not None or _raw_browser_made(header_map)
                self._apply_plan(ctx, outcome.kept, None, mint=browser)
            except Exception as exc:
                self.count("capture_errors")
                log_internal_error("cookie planning", exc)
        return ctx

    def _capture(
        self,
        raw_map: Mapping[bytes, bytes] | None,
        headers: Mapping[str, str],
        peer: str | None,
        scheme: str,
        server: Sequence[Any] | None,
        raw_path: str | bytes,
        query_string: str | bytes,
        outcome_key: tuple[Any, ...] | None = None,
    ) -> RequestContext:
        """Do on every request only what the consent decision and the cookies need.

        The client IP, user agent, page URL and referrer are left to first read (`track()` or
        the app); consent, fbclid and the cookie plan cannot wait, since the Set-Cookie headers
        go out with the response head.
        """
        self.client.count("requests")

        # Client IP, and scheme/host from a trusted proxy (uvicorn's proxy_headers model:
        # forwarded headers are believed only from a trusted peer).
        forwarded_host = None
        client_ip: Any = LAZY
        if self._has_trust:
            header = _header_reader(raw_map, headers)
            forwarded = {}
            for name in self._trust.header_names:
                value = header(name)
                if value is not None:
                    forwarded[name] = value
            info = client_ip_rules.resolve_client(peer, forwarded, self._trust)
            client_ip = info.client_ip
            scheme = info.scheme or scheme
            forwarded_host = info.host
        if scheme not in DEFAULT_PORTS:
            scheme = scheme.lower()
            if scheme not in DEFAULT_PORTS:
                scheme = "https" if scheme == "wss" else "http"
        host: Any = LAZY
        if forwarded_host is not None:
            forwarded_page_host = page_host(forwarded_host, scheme)
            if forwarded_page_host is not None:
                host = forwarded_page_host
        secure = scheme == "https"

        if raw_map is not None:  # ASGI: the two headers every request needs, decoded here
            raw = raw_map.get(b"cookie")
            cookie_header = raw[:MAX_COOKIE_HEADER_CHARS].decode("latin-1") if raw else None
            raw = raw_map.get(b"referer")
            referer = raw[:MAX_HEADER_CHARS].decode("latin-1") if raw is not None else None
        else:
            cookie_header = headers.get("cookie")
            referer = headers.get("referer")
        fbclid = None
        # fbclid is rare; skip the parse unless its name appears at all.
        if isinstance(query_string, bytes):
            in_query = b"fbclid" in query_string
        else:
            in_query = "fbclid" in query_string
        if in_query or (referer is not None and "fbclid" in referer):
            fbclid = cookie_rules.extract_fbclid(latin1_text(query_string), referer)
        if cookie_header:
            # With an outcome key the whole outcome is memoized instead (see capture_raw).
            facts = self._cookie_facts(cookie_header, remember=outcome_key is None)
        else:
            facts = self._no_cookies
        ctx = RequestContext(
            self.client,
            raw_map=raw_map,
            headers=headers,
            peer=peer,
            scheme=scheme,
            server=server,
            raw_path=raw_path,
            query_string=query_string,
            cookie_header=cookie_header,
            cookies=facts.cookies,
            referer=referer,
            host=host,
            client_ip=client_ip,
            fbclid=fbclid,
        )

        # Consent comes before any cookie is set or any event queued.
        decision = ctx.consent = self._decide(ctx, facts.consent)
        if decision.granted and cookie_header and "_fbi" in cookie_header:
            # Meta's Parameter Builder's IP
            ctx.consider_fbi(ctx.cookies.get(client_ip_rules.FBI_COOKIE))
        if decision.granted and not (self._no_cookie_paths and self._no_cookies_for(raw_path)):
            page = ctx.page_host()
            if page is not None:
                try:
                    # Only a browser gets a new _fbp/_fbc: a webhook, a health check or curl
                    # would otherwise be handed (and tracked with) a browser id of its own.
                    browser = cookie_header is not None or (
                        _raw_browser_made(raw_map)
                        if raw_map is not None
                        else _browser_made(headers.get)
                    )
                    kept = self._plan(
                        ctx,
                        page,
                        secure,
                        facts.fbc,
                        facts.fbp,
                        fbclid if browser else None,
                        outcome_key is None,
                        mint=browser,
                    )
                except Exception as exc:
                    # Keep the request and the context; only the cookies are lost.
                    self.count("capture_errors")
                    log_internal_error("cookie planning", exc)
                    outcome_key = None
                else:
                    if outcome_key is not None and raw_map is not None:
                        self._store_granted(
                            outcome_key, raw_map, scheme, page, decision, facts, kept
                        )
                    return ctx
        # Without consent the visitor's own valid cookies are still read (never set); a
        # malformed value is ignored, never echoed back (reference §4).
        if facts.fbp is not None and cookie_rules.is_valid_fbp(facts.fbp):
            ctx.fbp = facts.fbp
        if facts.fbc is not None and cookie_rules.is_valid_fbc(facts.fbc):
            ctx.fbc = facts.fbc
        expire: tuple[str, ...] = ()
        if (
            not decision.granted
            and decision.reason not in _NOT_A_REFUSAL
            and not (self._no_cookie_paths and self._no_cookies_for(raw_path))
        ):
            try:
                expire = self._expire_ours(ctx, secure, cookie_header)
            except Exception as exc:
                self.count("capture_errors")
                log_internal_error("expiring cookies", exc)
                outcome_key = None
            if expire and _is_navigation(ctx):
                ctx.response_cookies.extend(expire)
        if (
            outcome_key is not None
            and not decision.granted
            and _judged_for_good(facts.fbc, facts.fbp, ctx.fbc, ctx.fbp)
        ):
            # The host stays worked out on first read; the expiry values depend on it, and it
            # is in the key.
            self._store_outcome(
                outcome_key,
                _Outcome(
                    scheme=scheme,
                    consent=decision,
                    cookies=facts.cookies,
                    host=None,
                    fbc=ctx.fbc,
                    fbp=ctx.fbp,
                    kept=None,
                    expire=expire,
                ),
            )
        return ctx

    def _no_cookies_for(self, raw_path: str | bytes) -> bool:
        """True when ``raw_path`` starts with one of the ``no_cookie_paths``."""
        if isinstance(raw_path, bytes):
            return raw_path.startswith(self._no_cookie_raw_paths)
        return raw_path.startswith(self._no_cookie_paths)

    def _expire_ours(
        self, ctx: RequestContext, secure: bool, cookie_header: str | None
    ) -> tuple[str, ...]:
        """Set-Cookie values (``Max-Age=0``) that remove what we set, when consent is refused.

        Issue 10: a visitor who had consented and now says no keeps nothing of ours. What we
        set is known from the request alone, with no new tracking: a valid ``_fbc`` (we mint it
        from fbclid and re-send it on every consented page load), a valid ``_fbp`` when we mint
        ``_fbp`` on this site (``set_fbp``), and our enhancement cookie, which we only ever set
        with consent. They go out on the next page load; the browser then drops them, so the
        next request carries none and nothing more is said: once. A denial that is no answer
        (no signal yet, a policy error) keeps them.
        """
        names = []
        if ctx.fbc is not None:
            names.append(cookie_rules.FBC_COOKIE)
        if ctx.fbp is not None and self._set_fbp:
            names.append(cookie_rules.FBP_COOKIE)
        values: list[str] = []
        host = ctx.page_host() if names else None
        if host is not None:
            # The Domain they were set with, or the browser keeps them.
            domain = cookie_domain_for(hostname(host), self._cookie_domain)
            attributes = cookie_rules.set_cookie_attributes(domain, secure, max_age=0)
            values.extend(f"{name}={attributes}" for name in names)
        codec = self.client.enhancement
        if (
            codec is not None
            and cookie_header is not None
            and codec.cookie_name in cookie_header
            and ctx.cookies.get(codec.cookie_name)
        ):
            values.append(codec.render_expiry(secure=secure))
        return tuple(values)

    def _store_outcome(self, key: tuple[Any, ...], outcome: _Outcome) -> None:
        # The consent headers in the key (after cookie, host, scheme) are any size a client
        # likes: an oversized one is never kept (checked here, once per new key, not per lookup).
        for value in key[3:]:
            if value is not None and len(value) > _MEMO_MAX_CHARS:
                return
        _memoize(self._outcomes, key, outcome, _OUTCOME_MEMO_SIZE)

    def _store_granted(
        self,
        key: tuple[Any, ...],
        raw_map: Mapping[bytes, bytes],
        scheme: str,
        host: str,
        decision: ConsentDecision,
        facts: _CookieFacts,
        kept: cookie_rules.KeptCookies,
    ) -> None:
        """Keep a granted request's outcome: the visitor's validated cookies to plan from."""
        if page_host(raw_map.get(b"host"), scheme) != host:
            return  # the host came from the server address, which is not in the key
        if not _judged_for_good(facts.fbc, facts.fbp, kept.fbc, kept.fbp):
            return
        outcome = _Outcome(
            scheme=scheme,
            consent=decision,
            cookies=facts.cookies,
            host=host,
            fbc=kept.fbc,
            fbp=kept.fbp,
            kept=kept,
        )
        self._store_outcome(key, outcome)

    def _cookie_facts(self, header: str, *, remember: bool = True) -> _CookieFacts:
        """What capture needs from a Cookie header, memoized by its text (bounded).

        A browser sends the same Cookie header on every request of a visit. A header that
        holds neither a consent cookie nor ``_fbc``/``_fbp`` is not even parsed (the
        substring tests are exact: a parsed name is a substring of the header).
        """
        facts = self._cookie_memo.get(header)
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
                if len(header) > _SEARCH_COOKIES_FROM_CHARS:
                    found = find_cookies(header, self._wanted_cookies)
                if found is None:
                    found = cookies = MappingProxyType(parse_cookie_header(header))
                facts = _CookieFacts(
                    cookies=cookies,
                    consent=tuple(map(found.get, self._consent_cookies)),
                    fbc=found.get(cookie_rules.FBC_COOKIE),
                    fbp=found.get(cookie_rules.FBP_COOKIE),
                )
            else:
                facts = self._no_cookies
            if remember and len(header) <= _COOKIE_MEMO_MAX_CHARS:
                _memoize(self._cookie_memo, header, facts, _COOKIE_MEMO_SIZE)
        return facts

    def _decide(
        self, ctx: RequestContext, cookie_values: tuple[str | None, ...]
    ) -> ConsentDecision:
        """consent.evaluate, reused for requests that carry the same consent signals.

        A built-in policy's answer depends only on the cookies and headers it declares
        (`consent.signals_read`), so the decision is memoized by their values; a visitor
        without any consent cookie costs a few substring tests. A user's own callable runs on
        every request, as it may read anything.
        """
        reads = self._consent_reads
        if reads is None:
            return evaluate(self._policy, ctx)
        raw_map = ctx.raw_headers
        raw_names = self._consent_raw_headers
        if raw_map is not None and raw_names is not None:
            # Raw bytes key the memo as well as their text would.
            header_values: tuple[str | bytes | None, ...] = tuple(map(raw_map.get, raw_names))
        else:
            header_values = tuple(map(ctx.header, reads.headers))
        key = (cookie_values, header_values)
        decision = self._consent_memo.get(key)
        if decision is None:
            decision = evaluate(self._policy, ctx)
            size = sum(len(v) for part in key for v in part if v is not None)
            if size <= _MEMO_MAX_CHARS:
                _memoize(self._consent_memo, key, decision)
        return decision

    def _plan(
        self,
        ctx: RequestContext,
        host: str,
        secure: bool,
        raw_fbc: str | None,
        raw_fbp: str | None,
        fbclid: str | None,
        remember: bool = True,
        *,
        mint: bool = True,
    ) -> cookie_rules.KeptCookies:
        """Set ctx.fbc / ctx.fbp and the Set-Cookie values for this response (with consent).

        Meta §4: a new fbclid mints ``_fbc``, a missing ``_fbp`` is minted, on any request. The
        visitor's own valid cookies are re-sent only on a document navigation: one refresh
        per page view extends Safari's 7-day cap on script-set cookies as well as one per
        request would, without a Set-Cookie on every API call and asset (see
        `is_navigation`).

        Validating and rendering the visitor's own cookies depends only on (host, scheme,
        raw values), and a browser sends the same values on every request of a visit, so that
        half is memoized (`cookies.keep_cookies`), unless a value was rejected for a creation
        time ahead of the clock (`_judged_for_good`). Minting depends on the clock: never kept.
        """
        key = (host, secure, raw_fbc, raw_fbp)
        kept = self._kept_memo.get(key)
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
                and len(raw_fbc or "") + len(raw_fbp or "") <= _MEMO_MAX_CHARS
                and _judged_for_good(raw_fbc, raw_fbp, kept.fbc, kept.fbp)
            ):
                _memoize(self._kept_memo, key, kept)
        self._apply_plan(ctx, kept, fbclid, mint=mint)
        return kept

    def _apply_plan(
        self,
        ctx: RequestContext,
        kept: cookie_rules.KeptCookies,
        fbclid: str | None,
        *,
        mint: bool = True,
    ) -> None:
        """Meta §4's cookie plan for this request (`cookies.plan_from_kept`), onto ``ctx``.

        Kept cookies are re-sent only on a document navigation (`is_navigation`); minting
        depends on the clock, so it runs on every request, memoized or not.
        """
        plan = cookie_rules.plan_from_kept(
            kept,
            fbclid=fbclid,
            set_fbp=self._set_fbp and mint,
            now_ms=int(time.time() * 1000),
            resend=lambda: _is_navigation(ctx),
        )
        ctx.response_cookies.extend(plan.set_cookie)
        ctx.fbc = plan.fbc
        ctx.fbp = plan.fbp


# -- forwarding headers from a peer that is not trusted ----------------------------------------

# True once the question is settled for this process: warned, or the server itself resolves
# forwarding headers (uvicorn's --proxy-headers). Read on every request before any work.
_forwarding_checked = False

_TRUSTED_SEEN_MAX = 256

_FORWARDING_LABELS = {
    "x-forwarded-for": "X-Forwarded-For",
    "forwarded": "Forwarded",
    "x-forwarded-proto": "X-Forwarded-Proto",
    "x-forwarded-host": "X-Forwarded-Host",
}


def check_forwarding_trust(
    peer: str | None,
    headers: Mapping[Any, Any],
    trust: client_ip_rules.ProxyTrust,
    trusted_seen: set[str | None],
) -> None:
    """Warn once per process when forwarding headers arrive from a peer that is not trusted.

    Behind a proxy that is not in ``trusted_proxies`` the headers are ignored, as they must be
    (uvicorn's proxy_headers model), so no visitor IP reaches Meta (a private proxy) or the
    proxy's own IP does (a public CDN), and the page URL has the proxy's scheme and host. The
    warning names the header, the peer (a public address only to its /24 or /48: it may be a
    visitor's) and the option. Not said when the peer is an entry of X-Forwarded-For: the
    server already put the client there from the header it trusts (uvicorn
    ``--forwarded-allow-ips``). Called only while a request carries X-Forwarded-For or
    Forwarded (the headers that carry an address) from a peer not yet in ``trusted_seen``,
    where trusted peers are remembered (bounded) so that a trusted proxy costs one set lookup
    per request. Never raises.
    """
    global _forwarding_checked
    try:
        if peer is None or trust.is_trusted(peer):
            if len(trusted_seen) < _TRUSTED_SEEN_MAX:
                trusted_seen.add(peer)
            return
        raw = isinstance(next(iter(headers), ""), bytes)  # ASGI's byte names, or WSGI's text

        def header(name: str) -> str | None:
            value = headers.get(name.encode("latin-1") if raw else name)
            return value.decode("latin-1") if isinstance(value, bytes) else value

        present = [label for name, label in _FORWARDING_LABELS.items() if header(name) is not None]
        xff = header("x-forwarded-for")
        _forwarding_checked = True
        if xff is not None and peer in (part.strip() for part in xff.split(",")):
            return  # the server resolved it (its own trusted proxy)
        shown = _peer_for_log(peer)
        setting = "is not set" if not trust.networks else f"does not include {shown}"
        logger.warning(
            "capi_middleware: a request from %s carries %s, but trusted_proxies "
            "[META_TRUSTED_PROXIES] %s, so the header is ignored: the IP sent to Meta is the "
            "peer's, and the page URL's scheme and host are what the peer asked for. If %s is "
            "your proxy or CDN, add its addresses to trusted_proxies (docs/proxies.md). "
            "(Said once per process.)",
            shown,
            " and ".join(present),
            setting,
            shown,
        )
    except Exception as exc:  # a diagnostic must never cost the request
        _forwarding_checked = True
        log_internal_error("checking forwarding headers", exc)


def _peer_for_log(peer: str) -> str:
    """A peer address fit for a log line: a private one in full (a proxy, never a visitor on
    the Internet), a public one only to its /24 (IPv4) or /48 (IPv6) network, which is also
    the form a CDN's range takes in trusted_proxies."""
    try:
        ip = ipaddress.ip_address(peer.strip("[]"))
    except ValueError:
        return "a peer with an unreadable address"
    if ip.is_private or ip.is_loopback or ip.is_link_local:
        return str(ip)
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


# -- helpers -----------------------------------------------------------------------------------


def _judged_for_good(
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


def _header_reader(
    raw_map: Mapping[bytes, bytes] | None, headers: Mapping[str, str]
) -> Callable[[str], str | None]:
    """A lookup of one request header by lowercase name, over either adapter's headers."""
    if raw_map is None:
        return headers.get
    get = raw_map.get

    def header(name: str) -> str | None:
        value = get(name.encode("latin-1"))
        return None if value is None else cap_header(name, value).decode("latin-1")

    return header


def _browser_made(header: Callable[[str], str | None]) -> bool:
    """True when a request without a Cookie header still looks like a browser's own.

    Browsers send Fetch Metadata (``Sec-Fetch-*``: Chrome 76+, Firefox 90+, Safari 16.4+), ask
    for text/html when loading a page, and every one of them has sent a User-Agent beginning
    ``Mozilla/`` for 25 years. A payment provider's webhook (``Stripe/1.0``, ``Adyen HttpClient``,
    ``PayPal/...``), a load balancer's health check, curl or an HTTP library does none of these.
    `CAPIConfig.no_cookie_paths` covers a server that dresses up as a browser.
    """
    if header("sec-fetch-mode") is not None or header("sec-fetch-dest") is not None:
        return True
    user_agent = header("user-agent")
    if user_agent is not None and user_agent.startswith("Mozilla/"):
        return True
    accept = header("accept")
    return (accept is not None and "text/html" in accept.lower()) or (
        header("sec-fetch-site") is not None
    )


def _raw_browser_made(raw_map: Mapping[bytes, bytes]) -> bool:
    """`_browser_made` over raw ASGI headers."""
    if b"sec-fetch-mode" in raw_map or b"sec-fetch-dest" in raw_map or b"sec-fetch-site" in raw_map:
        return True
    user_agent = raw_map.get(b"user-agent")
    if type(user_agent) is bytes and user_agent.startswith(b"Mozilla/"):
        return True
    accept = raw_map.get(b"accept")
    return type(accept) is bytes and b"text/html" in accept.lower()


def _is_navigation(ctx: RequestContext) -> bool:
    """`is_navigation`, reading the raw ASGI header map directly when there is one."""
    raw_map = ctx.raw_headers
    return is_navigation(ctx) if raw_map is None else is_raw_navigation(raw_map)


_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


def _memoize(memo: dict[_K, _V], key: _K, value: _V, size: int | None = None) -> None:
    """Store in a bounded memo; when full, forget the older half (dicts keep insertion order)."""
    size = _MEMO_SIZE if size is None else size
    if len(memo) >= size:
        for old in list(memo)[: size // 2]:
            memo.pop(old, None)
    memo[key] = value


def is_shared_cacheable(cache_control: str | None) -> bool:
    """True when a response's Cache-Control lets a shared cache (CDN, proxy) store it.

    Adapters add no cookies to such a response: the cache would hand this visitor's minted
    ``_fbp``/``_fbc`` to every later visitor, merging strangers into one browser for Meta.
    """
    if not cache_control:
        return False
    directives = cache_control.lower()
    if "private" in directives or "no-store" in directives:
        return False
    return "public" in directives or "s-maxage" in directives


def cookies_not_set_by_app(ours: list[str], app_set_cookies: Iterable[str]) -> list[str]:
    """Our Set-Cookie values, less those for a cookie the app's own response already sets.

    Adapters append ours after the app's; two Set-Cookie headers for one name (say with
    different Domain attributes) leave the browser with two cookies (issue 10).
    """
    taken = {value.split("=", 1)[0].strip() for value in app_set_cookies}
    return [cookie for cookie in ours if cookie.split("=", 1)[0] not in taken]
