"""CapturePipeline: everything derived from a config once, and each request's capture.

The ASGI and WSGI adapters hand `CapturePipeline.capture` / `capture_raw` what they read from
the request (peer address, scheme, server, raw path, query string, headers); the pipeline runs
client IP resolution, cookie reading, consent and the cookie plan, and returns a
`RequestContext`. What it works out is memoized where the answer depends only on what keys it
(`memo`); the Set-Cookie values come from `set_cookies`, the browser test from `browser`, the
warning about untrusted forwarding headers from `forwarding`. Tracking is the client's
(``ctx.track()`` calls `CAPIClient.track_from`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from capi_middleware.capture.browser import browser_made, on_no_cookie_path, raw_browser_made
from capi_middleware.capture.context import LAZY, RequestContext
from capi_middleware.capture.forwarding import check_forwarding_trust
from capi_middleware.capture.headers import (
    MAX_COOKIE_HEADER_CHARS,
    MAX_HEADER_CHARS,
    header_reader,
)
from capi_middleware.capture.memo import (
    COOKIE_MEMO_MAX_CHARS,
    ConsentMemo,
    CookieFactsMemo,
    KeptMemo,
    Outcome,
    judged_for_good,
    replay,
    store_granted,
    store_outcome,
)
from capi_middleware.capture.set_cookies import (
    NOT_A_REFUSAL,
    apply_plan,
    expire_ours,
    is_page_load,
    plan_now,
)
from capi_middleware.client import CAPIClient, log_internal_error
from capi_middleware.consent.policies import ConsentDecision, default_policy
from capi_middleware.rules import client_ip as client_ip_rules
from capi_middleware.rules import cookies as cookie_rules
from capi_middleware.rules.page_url import (
    DEFAULT_PORTS,
    MAX_HOST_CHARS,
    latin1_text,
    page_host,
)
from capi_middleware.rules.trusted_proxies import ProxyTrust, resolve_client

__all__ = ["CapturePipeline"]

_EMPTY: Mapping[str, str] = MappingProxyType({})

_CAPTURE_FAILED = ConsentDecision(granted=False, reason="capture_error")

# True once the forwarding-headers question is settled for this process (`check_forwarding_trust`
# warned, or the server itself resolves them). Read on every request before any work.
_forwarding_checked = False


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
        # (issue 10; rules/trusted_proxies.py).
        self._trust = ProxyTrust(
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
        consent_option = config.consent
        consent = ConsentMemo(default_policy() if consent_option is None else consent_option)
        self._decide = consent.decide
        self._consent_raw_headers = raw_names = consent.raw_headers
        reads = consent.reads
        cookie_facts = CookieFactsMemo(reads.cookies if reads is not None else ())
        self._cookie_facts = cookie_facts.facts
        self._no_cookies = cookie_facts.no_cookies
        self._keep = KeptMemo(config.cookie_domain).keep
        # Whole capture outcomes, for the ASGI path (see capture_raw); only when everything
        # they depend on is in the key: a built-in policy and no trusted proxies.
        self._outcome_memo_on = reads is not None and raw_names is not None and not self._has_trust
        self._outcomes: dict[tuple[Any, ...], Outcome] = {}

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
        global _forwarding_checked
        if (
            not _forwarding_checked
            and ("x-forwarded-for" in headers or "forwarded" in headers)
            and peer not in self._trusted_peers
            and check_forwarding_trust(peer, headers, self._trust, self._trusted_peers)
        ):
            _forwarding_checked = True
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
        global _forwarding_checked
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
            and not (
                self._no_cookie_paths
                and on_no_cookie_path(raw_path, self._no_cookie_paths, self._no_cookie_raw_paths)
            )
        ):
            get = header_map.get
            cookie = get(b"cookie")
            referer = get(b"referer")
            host = get(b"host")
            if (
                (referer is None or b"fbclid" not in referer)
                and (cookie is None or len(cookie) <= COOKIE_MEMO_MAX_CHARS)
                and host is not None
                and len(host) <= MAX_HOST_CHARS
            ):
                names = self._consent_raw_headers
                key = (cookie, host, scheme, *map(get, names)) if names else (cookie, host, scheme)
                outcome = self._outcomes.get(key)
                if outcome is not None:
                    return replay(
                        self.client,
                        self._set_fbp,
                        outcome,
                        header_map,
                        cookie,
                        referer,
                        peer,
                        server,
                        raw_path,
                        query_string,
                    )
        # Only here, not before a memo hit: a hit follows a miss with the same key, and behind a
        # proxy every request carries the header, so the process's first request shows it.
        if (
            not _forwarding_checked
            and (b"x-forwarded-for" in header_map or b"forwarded" in header_map)
            and peer not in self._trusted_peers
            and check_forwarding_trust(peer, header_map, self._trust, self._trusted_peers)
        ):
            _forwarding_checked = True
        return self._capture(header_map, _EMPTY, peer, scheme, server, raw_path, query_string, key)

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
            header = header_reader(raw_map, headers)
            forwarded = {}
            for name in self._trust.header_names:
                value = header(name)
                if value is not None:
                    forwarded[name] = value
            info = resolve_client(peer, forwarded, self._trust)
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
        if decision.granted and not (
            self._no_cookie_paths
            and on_no_cookie_path(raw_path, self._no_cookie_paths, self._no_cookie_raw_paths)
        ):
            page = ctx.page_host()
            if page is not None:
                try:
                    # Only a browser gets a new _fbp/_fbc: a webhook, a health check or curl
                    # would otherwise be handed (and tracked with) a browser id of its own.
                    browser = cookie_header is not None or (
                        raw_browser_made(raw_map)
                        if raw_map is not None
                        else browser_made(headers.get)
                    )
                    # Meta §4: the visitor's own valid cookies, validated once per visit
                    # (memoized), then what this request mints and re-sends.
                    kept = self._keep(page, secure, facts.fbc, facts.fbp, outcome_key is None)
                    plan = plan_now(kept, fbclid if browser else None, self._set_fbp and browser)
                    apply_plan(ctx, plan)
                except Exception as exc:
                    # Keep the request and the context; only the cookies are lost.
                    self.count("capture_errors")
                    log_internal_error("cookie planning", exc)
                    outcome_key = None
                else:
                    if outcome_key is not None and raw_map is not None:
                        # A plan that minted nothing holds for every request with this key
                        # (no fbclid in it), unless only not being a browser's kept this
                        # request from minting an _fbp.
                        steady = not plan.minted and (browser or not self._set_fbp)
                        store_granted(
                            self._outcomes,
                            outcome_key,
                            raw_map,
                            scheme,
                            page,
                            decision,
                            facts,
                            kept,
                            plan if steady else None,
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
            and decision.reason not in NOT_A_REFUSAL
            and not (
                self._no_cookie_paths
                and on_no_cookie_path(raw_path, self._no_cookie_paths, self._no_cookie_raw_paths)
            )
        ):
            try:
                expire = expire_ours(
                    ctx,
                    secure,
                    cookie_header,
                    set_fbp=self._set_fbp,
                    cookie_domain=self._cookie_domain,
                    enhancement=self.client.enhancement,
                )
            except Exception as exc:
                self.count("capture_errors")
                log_internal_error("expiring cookies", exc)
                outcome_key = None
            if expire and is_page_load(ctx):
                ctx.response_cookies.extend(expire)
        if (
            outcome_key is not None
            and not decision.granted
            and judged_for_good(facts.fbc, facts.fbp, ctx.fbc, ctx.fbp)
        ):
            # The host stays worked out on first read; the expiry values depend on it, and it
            # is in the key.
            store_outcome(
                self._outcomes,
                outcome_key,
                Outcome(
                    scheme=scheme,
                    consent=decision,
                    cookies=facts.cookies,
                    host=None,
                    fbc=ctx.fbc,
                    fbp=ctx.fbp,
                    kept=None,
                    plan=None,
                    expire=expire,
                ),
            )
        return ctx
