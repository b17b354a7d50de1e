"""RequestContext: what one request carries for Meta, and ``track()``.

The ASGI and WSGI adapters hand `CapturePipeline.capture` what they read from the request (peer
address, scheme, server, raw path, query string, headers as a lowercase dict); the pipeline runs
client IP resolution, cookie reading, consent and the cookie plan, and returns a `RequestContext`.
The app finds it at ``request.state.capi`` / ``environ["capi"]`` / `current()`, and calls
``ctx.track(...)``, which builds the event with `events.build_event` and hands its Meta-shaped
dict to the background sender. Nothing here does network I/O or raises into the request (except
`CAPIValidationError` with ``strict=True``).
"""

from __future__ import annotations

import contextvars
import html
import itertools
import logging
import re
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, AnyStr, Literal, NamedTuple, TypeVar

from capi_middleware import client_ip as client_ip_rules
from capi_middleware import cookies as cookie_rules
from capi_middleware import events as event_rules
from capi_middleware.client_ip import MAX_FORWARDED_HEADER
from capi_middleware.config import CAPIConfig
from capi_middleware.consent import (
    ConsentDecision,
    ConsentSignals,
    default_policy,
    evaluate,
    signals_read,
)
from capi_middleware.enhancement import EnhancementCookie, Remembered, remembered_from_user_data
from capi_middleware.errors import CAPIValidationError, Problem
from capi_middleware.pixel import render_fbq_track

if TYPE_CHECKING:
    from capi_middleware.delivery.sender import Sender

__all__ = [
    "CapturePipeline",
    "CaptureStats",
    "RequestContext",
    "TrackResult",
    "TrackStatus",
    "current",
    "is_navigation",
]

logger = logging.getLogger("capi_middleware")

TrackStatus = Literal["queued", "denied", "invalid", "dropped", "dry_run", "error"]
"""What became of one ``track()`` call.

- ``queued``: handed to the sender (in memory, or committed to the outbox with ``durable``).
- ``denied``: the visitor's consent does not allow it; nothing stored, nothing sent.
- ``invalid``: the event breaks a Meta rule (``problems`` say which); nothing sent.
- ``dropped``: the sender could not take it (queue full, closed, no pixel configured).
- ``dry_run``: built, validated and logged; ``dry_run=True`` sends nothing.
- ``error``: capi_middleware failed internally (logged); the request goes on.
"""

# Caps on what a client can make us hold or forward. Browsers send far less; past these a
# value is junk or an attack, and capping keeps capture's cost flat.
MAX_HEADER_CHARS = 8192
MAX_COOKIE_HEADER_CHARS = 16384
# Forwarding headers go to client_ip, which deals with an oversized one itself: it reads only the
# right end of X-Forwarded-For (the hops our proxies added) and ignores an oversized Forwarded.
# Capping must keep that meaning, so these keep their right end / stay visibly oversized.
_FORWARDING_CAP = MAX_FORWARDED_HEADER + 1


def cap_header(name: str, value: AnyStr) -> AnyStr:
    """A header value capped for capture: Cookie and forwarding headers by their own rules."""
    if name == "cookie":
        return value[:MAX_COOKIE_HEADER_CHARS]
    if name == "x-forwarded-for":
        return value[-_FORWARDING_CAP:] if len(value) > _FORWARDING_CAP else value
    if name == "forwarded":
        return value[:_FORWARDING_CAP]
    return value[:MAX_HEADER_CHARS]
MAX_USER_AGENT_CHARS = 1024
MAX_URL_CHARS = 4096

_EMPTY: Mapping[str, str] = MappingProxyType({})
_UNSET: Any = object()  # a lazy RequestContext attribute not worked out yet

# Memos on the request path (consent decisions, the visitor's validated cookies, parsed Cookie
# headers) are bounded in entries and in the size of what keys them, since clients choose it.
_MEMO_SIZE = 4096
_MEMO_MAX_CHARS = 4096
_COOKIE_MEMO_SIZE = 1024
_OUTCOME_MEMO_SIZE = 2048
_COOKIE_MEMO_MAX_CHARS = 2048

_FORWARDED_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host")

CAPTURED_HEADERS = frozenset(
    (
        "host",
        "user-agent",
        "cookie",
        "referer",
        "sec-gpc",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    )
)
"""The headers capture and the built-in consent policies read; adapters decode these eagerly."""
# RFC 1123 host names (underscores tolerated, as some internal names have them), an IPv4
# literal, or a bracketed IPv6 literal; then an optional port. Anything else in Host is junk.
_HOST = re.compile(
    r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\.?"
    r"|\[[0-9a-f:.]{2,45}\])(?::[0-9]{1,5})?"
)
_DEFAULT_PORT = {"http": "80", "https": "443"}
# A referrer we pass on: http(s), a host, and only visible ASCII (browsers percent-encode).
_REFERRER = re.compile(r"[Hh][Tt][Tt][Pp][Ss]?://[^\x00-\x20\x7f-\uffff/?#]+[\x21-\x7e]*")
_NOT_URL_SAFE = re.compile(r"[^\x21-\x7e]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "capi_middleware_request_context", default=None
)


def current() -> RequestContext | None:
    """The RequestContext of the request being handled, or None outside one.

    Set by the middleware around the app call, so code deep in the app (a service function, a
    signal handler) can ``capi_middleware.current().track(...)`` without being handed the request.
    """
    return _current.get()


def activate(ctx: RequestContext) -> contextvars.Token[RequestContext | None]:
    """Make ``ctx`` what `current()` returns; pass the token to `deactivate` afterwards."""
    return _current.set(ctx)


def deactivate(token: contextvars.Token[RequestContext | None]) -> None:
    """Undo `activate`."""
    _current.reset(token)


@dataclass(frozen=True)
class TrackResult:
    """What ``track()`` did with one event.

    Parameters:
        event_id: the event's id; give it to the page's ``fbq(..., {eventID})`` so Meta merges
            the pixel's event with this one (META_CAPI_REFERENCE §6).
        status: see `TrackStatus`.
        problems: every problem found (fatal ones make the status ``invalid``; others are
            values that were dropped while the event still went out).
        event_name: the Meta event name (GA4 names mapped).
        custom_data: the event's Meta-shaped custom_data, for the pixel call.
    """

    event_id: str
    status: TrackStatus
    problems: tuple[Problem, ...] = ()
    event_name: str = ""
    custom_data: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        """True when the event was accepted (queued, or built in dry-run mode)."""
        return self.status in ("queued", "dry_run")

    def fbq(self) -> str:
        """The pixel call for the same event and event_id, safe inside ``<script>``."""
        return render_fbq_track(self.event_name, self.custom_data, self.event_id)

    def pixel_snippet(self, *, nonce: str | None = None) -> str:
        """``<script>fbq(...)</script>`` for a template; ``nonce`` for a CSP ``script-src``."""
        attr = f' nonce="{html.escape(nonce, quote=True)}"' if nonce else ""
        return f"<script{attr}>{self.fbq()}</script>"


@dataclass(frozen=True)
class CaptureStats:
    """The middleware's own counters, beside the sender's delivery stats.

    Parameters:
        requests: http requests captured.
        capture_errors: requests whose capture or cookie handling failed inside this package
            (the request still went on).
        consent_denied: ``track()`` calls refused for want of consent.
        invalid: ``track()`` calls rejected as invalid, by the field of each fatal problem.
        track_errors: ``track()`` calls that failed inside this package.
        dry_run: events built and logged without sending.
        delivery: the sender's stats, or None while no event was ever tracked.
    """

    requests: int
    capture_errors: int
    consent_denied: int
    invalid: Mapping[str, int]
    track_errors: int
    dry_run: int
    delivery: Any = None


class RequestContext:
    """What one request carries for Meta, and the way to send events from it.

    Attributes (read them, don't set them):
        client_ip: the visitor's public IP (trusted proxies honoured), or None.
        user_agent: the User-Agent header (control characters removed, capped), or None.
        fbp: a valid ``_fbp`` cookie, or the one minted for this response (with consent).
        fbc: a valid ``_fbc`` cookie, or the one minted from ``fbclid`` (with consent).
        fbclid: the click id from the query string, else from the Referer, byte for byte.
        event_source_url: the page's URL as the browser asked for it.
        referrer_url: the Referer, when it is an http(s) URL.
        consent: the `ConsentDecision` for this request.
        secure: True when the visitor reached us over https.

    ``client_ip``, ``user_agent``, ``event_source_url``, ``referrer_url`` and ``cookies`` are
    worked out on first read (by ``track()`` or the app), not on every request: most requests
    never need them, and the middleware's cost is paid by every request.
    """

    __slots__ = (
        "_client_ip",
        "_cookie_header",
        "_cookies",
        "_error",
        "_event_source_url",
        "_headers",
        "_host",
        "_peer",
        "_pipeline",
        "_query_string",
        "_raw_headers",
        "_raw_map",
        "_raw_path",
        "_referer",
        "_referrer_url",
        "_remembered",
        "_response_started",
        "_scheme",
        "_server",
        "_set_cookie",
        "_user_agent",
        "consent",
        "fbc",
        "fbclid",
        "fbp",
        "secure",
    )

    def __init__(
        self,
        pipeline: CapturePipeline,
        *,
        headers: Mapping[str, str] = _EMPTY,
        cookies: Mapping[str, str] = _EMPTY,
        client_ip: str | None = None,
        user_agent: str | None = None,
        fbp: str | None = None,
        fbc: str | None = None,
        fbclid: str | None = None,
        event_source_url: str | None = None,
        referrer_url: str | None = None,
        secure: bool = False,
        consent: ConsentDecision | None = None,
        error: str | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._headers = headers
        self._raw_map: Mapping[bytes, bytes] | None = None
        self._raw_headers: Sequence[tuple[bytes, bytes]] | None = None
        self._cookie_header: str | None = None
        self._cookies: Mapping[str, str] | None = cookies
        self._error = error
        self._remembered: Remembered | None = None
        self._response_started = False
        self._set_cookie: list[str] = []
        self._peer: str | None = None
        self._scheme = "https" if secure else "http"
        self._server: Sequence[Any] | None = None
        self._raw_path: str | bytes = "/"
        self._query_string: str | bytes = ""
        self._referer: str | None = None
        self._host: Any = None
        # Given values are final; the pipeline's contexts start these as _UNSET (lazy).
        self._client_ip: Any = client_ip
        self._user_agent: Any = user_agent
        self._event_source_url: Any = event_source_url
        self._referrer_url: Any = referrer_url
        self.fbp = fbp
        self.fbc = fbc
        self.fbclid = fbclid
        self.secure = secure
        self.consent = consent if consent is not None else _UNDECIDED

    def __repr__(self) -> str:
        # IPs, user agents and click ids identify a person: show only which are present.
        present = [
            name
            for name in ("client_ip", "user_agent", "fbp", "fbc", "fbclid", "event_source_url")
            if getattr(self, name) is not None
        ]
        return f"RequestContext(present={present}, consent={self.consent!r})"

    # -- what is worked out on first read ------------------------------------------------

    @property
    def client_ip(self) -> str | None:
        """The visitor's public IP (trusted proxies honoured), or None."""
        value = self._client_ip
        if value is _UNSET:
            try:
                value = _sendable_ip(self._peer) if self._peer else None
            except Exception as exc:
                self._lazy_failed("client IP", exc)
                value = None
            self._client_ip = value
        return value  # type: ignore[no-any-return]

    @property
    def user_agent(self) -> str | None:
        """The User-Agent header (control characters removed, capped), or None."""
        value = self._user_agent
        if value is _UNSET:
            try:
                value = _clean_user_agent(self.header("user-agent"))
            except Exception as exc:
                self._lazy_failed("user agent", exc)
                value = None
            self._user_agent = value
        return value  # type: ignore[no-any-return]

    @property
    def event_source_url(self) -> str | None:
        """The page's URL as the browser asked for it, or None without a usable host."""
        value = self._event_source_url
        if value is _UNSET:
            try:
                raw_path = self._raw_path
                if isinstance(raw_path, bytes):
                    raw_path = raw_path.decode("latin-1")
                    if "?" in raw_path:  # some servers include the query in raw_path
                        raw_path = raw_path.split("?", 1)[0]
                value = _page_url(
                    self._scheme, self._page_host(), raw_path, _text(self._query_string)
                )
            except Exception as exc:
                self._lazy_failed("page URL", exc)
                value = None
            self._event_source_url = value
        return value  # type: ignore[no-any-return]

    @property
    def referrer_url(self) -> str | None:
        """The Referer, when it is an http(s) URL."""
        value = self._referrer_url
        if value is _UNSET:
            try:
                value = _clean_referrer(self._referer) if self._referer is not None else None
            except Exception as exc:
                self._lazy_failed("referrer", exc)
                value = None
            self._referrer_url = value
        return value  # type: ignore[no-any-return]

    def _page_host(self) -> str | None:
        """The host for the page URL and the cookies: Host header, else the server address."""
        host = self._host
        if host is _UNSET:
            scheme = self._scheme
            raw_map = self._raw_map
            host = _page_host(
                raw_map.get(b"host") if raw_map is not None else self.header("host"), scheme
            )
            if host is None and self._server is not None:
                host = _host_from_server(self._server, scheme)
            self._host = host
        return host  # type: ignore[no-any-return]

    def _lazy_failed(self, what: str, exc: Exception) -> None:
        # Reading an attribute must never raise into the app: count, log, and say None.
        self._pipeline.count("capture_errors")
        log_internal_error(what, exc)

    # -- ConsentSignals ---------------------------------------------------------------------

    @property
    def cookies(self) -> Mapping[str, str]:
        """The request's cookies, name -> value (first occurrence wins); read-only."""
        cookies = self._cookies
        if cookies is None:
            header = self._cookie_header
            parsed = cookie_rules.parse_cookie_header(header) if header else {}
            cookies = self._cookies = MappingProxyType(parsed)
        return cookies

    def header(self, name: str) -> str | None:
        """A request header by name (any case); repeated headers joined with ``", "``."""
        key = name.lower()
        raw_map = self._raw_map
        if raw_map is not None:
            # ASGI: decoded on demand (latin-1 decodes any byte, so a client's junk never
            # raises); Cookie keeps its larger cap.
            try:
                value = raw_map.get(key.encode("latin-1"))
            except UnicodeEncodeError:
                return None
            if value is None:
                return None
            return cap_header(key, value).decode("latin-1")
        found = self._headers.get(key)
        if found is None and self._raw_headers is not None and key not in CAPTURED_HEADERS:
            found = _read_raw_header(self._raw_headers, key)
        return found

    # -- the app's API ----------------------------------------------------------------------

    def track(
        self,
        event_name: str,
        *,
        user_data: Mapping[str, Any] | None = None,
        custom_data: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        event_time: Any = None,
        action_source: str | None = None,
        durable: bool | None = None,
        **custom_data_fields: Any,
    ) -> TrackResult:
        """Send one event to Meta in the background, with this request's match keys.

        ``client_ip_address``, ``client_user_agent``, ``fbc``, ``fbp``, ``event_source_url`` and
        ``referrer_url`` come from the request; keys given in ``user_data`` win (give one as None
        to leave it out). ``custom_data`` fields may be passed as keywords (``value=9.99,
        currency="USD"``). Never blocks on the network; never raises unless ``strict=True`` and the
        input is invalid (`CAPIValidationError`).
        """
        try:
            return self._pipeline.track(
                self,
                event_name,
                user_data=user_data,
                custom_data=custom_data,
                event_id=event_id,
                event_time=event_time,
                action_source=action_source,
                durable=durable,
                custom_data_fields=custom_data_fields,
            )
        except CAPIValidationError:
            raise  # only raised with strict=True, on purpose
        except Exception as exc:
            self._pipeline.count("track_errors")
            log_internal_error("track()", exc)
            return TrackResult(
                event_id=event_id if isinstance(event_id, str) and event_id else _new_id(),
                status="error",
                problems=(Problem("track", "internal error in capi_middleware; see the log"),),
                event_name=event_name if isinstance(event_name, str) else "",
            )

    def fbq(self, event_name: str, *, event_id: str | None = None, **custom_data: Any) -> str:
        """The pixel call ``fbq('track', name, {...}, {eventID})`` for a page to run.

        Use it with ``track(..., event_id=same_id)`` so Meta deduplicates the two.
        """
        return render_fbq_track(
            event_rules.map_event_name(event_name), custom_data, event_id or _new_id()
        )

    # -- the adapters' API ------------------------------------------------------------------

    def take_set_cookies(self) -> list[str]:
        """Set-Cookie values for the response head, and mark the response as started.

        Called by the ASGI/WSGI adapter once, when the response starts; later ``track()`` calls
        can no longer add cookies.
        """
        self._response_started = True
        cookies = self._set_cookie
        self._set_cookie = []
        return cookies

    @property
    def failed(self) -> bool:
        """True when capture failed and this context only reports errors."""
        return self._error is not None


_UNDECIDED = ConsentDecision(granted=False, reason="undecided")


class _Outcome(NamedTuple):
    """A request's capture outcome, reused for requests with the same key (`_outcome_key`)."""

    scheme: str  # normalized
    consent: ConsentDecision
    cookies: Mapping[str, str] | None  # parsed, read-only; None: parsed on first read
    host: str | None  # the page host (granted only; else worked out on first read)
    fbc: str | None  # the visitor's valid cookies (kept ones; never minted values)
    fbp: str | None
    resend: tuple[str, ...]  # Set-Cookie values that re-send kept cookies on a navigation
    mint_fbp: str | None  # Set-Cookie attributes when an _fbp must be minted, else None
    subdomain_index: int


class _CookieFacts(NamedTuple):
    """What capture reads from one Cookie header (`CapturePipeline._cookie_facts`)."""

    cookies: Mapping[str, str] | None  # parsed, read-only; None: not parsed (nothing ours in it)
    consent: tuple[str | None, ...]  # the consent policy's cookies, in `signals_read` order
    fbc: str | None  # the raw _fbc and _fbp, not yet validated
    fbp: str | None


_CAPTURE_FAILED = ConsentDecision(granted=False, reason="capture_error")


class CapturePipeline:
    """Everything derived from a config once, and the per-request capture and track steps.

    One per middleware instance; shared by every request (and thread, under WSGI).

    Parameters:
        config: the validated options.
    """

    def __init__(self, config: CAPIConfig) -> None:
        self.config = config
        self._trust = client_ip_rules.ProxyTrust(config.trusted_networks())
        self._has_trust = bool(config.trusted_proxies)
        self._cookie_domain = config.cookie_domain
        self._set_fbp = config.set_fbp
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
        self._no_cookies = _CookieFacts(None, (None,) * len(names), None, None)
        self._cookie_memo: dict[str, _CookieFacts] = {}
        # Whole capture outcomes, for the ASGI path (see capture_raw); only when everything
        # they depend on is in the key: a built-in policy and no trusted proxies.
        self._outcomes: dict[tuple[Any, ...], _Outcome] = {}
        # One C-speed scan for "is any of the policy's cookie names in the Cookie header?"
        self._consent_cookie_names = re.compile(
            "|".join(re.escape(name) for name in names) if names else "(?!)"
        )
        self._enhancement = (
            EnhancementCookie(config.enhancement_secret) if config.enhancement_secret else None
        )
        self._sender: Sender | None = None
        self._closed_sender: Sender | None = None
        self._sender_lock = threading.Lock()
        self._counts_lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        # Requests are counted without the lock: next() on itertools.count is atomic under the
        # GIL. Reading it takes one value, so stats() subtracts the reads it made.
        self._request_counter = itertools.count()
        self._request_counter_reads = 0
        self._invalid: Counter[str] = Counter()
        if not config.destinations() and not config.dry_run:
            logger.warning(
                "capi_middleware: no pixel_id/access_token configured; events will be dropped "
                "(set META_PIXEL_ID and META_ACCESS_TOKEN, or dry_run=True)"
            )

    def __repr__(self) -> str:
        return f"CapturePipeline(config={self.config!r})"

    # -- counters ---------------------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        """Add to one of the middleware's counters (thread-safe)."""
        with self._counts_lock:
            self._counts[name] += n

    def stats(self) -> CaptureStats:
        """A snapshot of the counters, with the sender's stats when it exists."""
        with self._counts_lock:
            counts = dict(self._counts)
            invalid = dict(self._invalid)
            requests = next(self._request_counter) - self._request_counter_reads
            self._request_counter_reads += 1
        sender = self._sender or self._closed_sender
        return CaptureStats(
            requests=requests,
            capture_errors=counts.get("capture_errors", 0),
            consent_denied=counts.get("consent_denied", 0),
            invalid=invalid,
            track_errors=counts.get("track_errors", 0),
            dry_run=counts.get("dry_run", 0),
            delivery=sender.stats() if sender is not None else None,
        )

    # -- capture ----------------------------------------------------------------------------

    def failed_context(self, what: str) -> RequestContext:
        """A context for a request whose capture failed: no cookies; track() reports error."""
        return RequestContext(self, consent=_CAPTURE_FAILED, error=what)

    def capture(
        self,
        *,
        peer: str | None,
        scheme: str,
        server: tuple[str, int | None] | None,
        raw_path: str,
        query_string: str,
        headers: Mapping[str, str],
        raw_headers: Sequence[tuple[bytes, bytes]] | None = None,
    ) -> RequestContext:
        """Build the RequestContext of one request. Adapters guard the call.

        Parameters:
            peer: the TCP peer's address (no port).
            scheme: ``http`` or ``https`` as the server saw it.
            server: the server's (host, port), used when the Host header is missing or junk.
            raw_path: the path as the browser sent it (percent-encoding kept), latin-1 text.
            query_string: the raw query string, latin-1 text, without ``?``.
            headers: lowercase names -> latin-1 values, repeats joined, values capped. With
                ``raw_headers`` it need only hold the `CAPTURED_HEADERS`.
            raw_headers: the ASGI header list; ``ctx.header()`` reads other headers from it
                on demand, so capture decodes only what it uses.
        """
        return self._capture(
            None, headers, raw_headers, peer, scheme, server, raw_path, query_string
        )

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
        key = None
        if self._outcome_memo_on and isinstance(query_string, bytes):
            key = self._outcome_key(header_map, scheme, query_string)
            if key is not None:
                outcome = self._outcomes.get(key)
                if outcome is not None:
                    return self._replay(outcome, header_map, peer, server, raw_path, query_string)
        return self._capture(
            header_map, _EMPTY, None, peer, scheme, server, raw_path, query_string, key
        )

    def _outcome_key(
        self, header_map: Mapping[bytes, bytes], scheme: str, query_string: bytes
    ) -> tuple[Any, ...] | None:
        """What a request's capture outcome depends on, or None when it cannot be reused.

        Without an fbclid (query or Referer) and without trusted proxies, the consent decision,
        the visitor's kept cookies and what to mint depend only on the raw Cookie and Host
        headers, the scheme and the headers the consent policy declares.
        """
        if b"fbclid" in query_string:
            return None
        referer = header_map.get(b"referer")
        if referer is not None and b"fbclid" in referer:
            return None
        cookie = header_map.get(b"cookie")
        if cookie is not None and len(cookie) > _COOKIE_MEMO_MAX_CHARS:
            return None
        host = header_map.get(b"host")
        if host is None or len(host) > 261:
            return None
        return (cookie, host, scheme, *map(header_map.get, self._consent_raw_headers or ()))

    def _replay(
        self,
        outcome: _Outcome,
        header_map: Mapping[bytes, bytes],
        peer: str | None,
        server: Sequence[Any] | None,
        raw_path: str | bytes,
        query_string: str | bytes,
    ) -> RequestContext:
        """A request whose capture outcome is known: one lookup instead of the whole rule set."""
        next(self._request_counter)
        ctx = _lazy_context(self)
        ctx._raw_map = header_map
        ctx._peer = peer
        ctx._scheme = outcome.scheme
        ctx._server = server
        ctx._raw_path = raw_path
        ctx._query_string = query_string
        ctx.secure = outcome.scheme == "https"
        raw = header_map.get(b"cookie")
        ctx._cookie_header = raw[:MAX_COOKIE_HEADER_CHARS].decode("latin-1") if raw else None
        raw = header_map.get(b"referer")
        ctx._referer = raw[:MAX_HEADER_CHARS].decode("latin-1") if raw is not None else None
        if outcome.cookies is not None:
            ctx._cookies = outcome.cookies
        if outcome.host is not None:
            ctx._host = outcome.host
        ctx.consent = outcome.consent
        ctx.fbc = outcome.fbc
        ctx.fbp = outcome.fbp
        if outcome.resend and _is_navigation(ctx):
            ctx._set_cookie.extend(outcome.resend)
        if outcome.mint_fbp is not None:
            try:
                fbp = cookie_rules.mint_fbp(
                    subdomain_index=outcome.subdomain_index, now_ms=int(time.time() * 1000)
                )
            except Exception as exc:
                self.count("capture_errors")
                log_internal_error("cookie planning", exc)
            else:
                ctx.fbp = fbp
                ctx._set_cookie.append(f"{cookie_rules.FBP_COOKIE}={fbp}{outcome.mint_fbp}")
        return ctx

    def _capture(
        self,
        raw_map: Mapping[bytes, bytes] | None,
        headers: Mapping[str, str],
        raw_headers: Sequence[tuple[bytes, bytes]] | None,
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
        next(self._request_counter)
        ctx = _lazy_context(self)
        ctx._raw_map = raw_map
        ctx._headers = headers
        ctx._raw_headers = raw_headers

        # Client IP, and scheme/host from a trusted proxy (uvicorn's proxy_headers model:
        # forwarded headers are believed only from a trusted peer).
        forwarded_host = None
        if self._has_trust:
            forwarded = {}
            for name in _FORWARDED_HEADERS:
                value = ctx.header(name)
                if value is not None:
                    forwarded[name] = value
            info = client_ip_rules.resolve_client(peer, forwarded, self._trust)
            ctx._client_ip = info.client_ip
            scheme = info.scheme or scheme
            forwarded_host = info.host
        if scheme not in _DEFAULT_PORT:
            scheme = scheme.lower()
            if scheme not in _DEFAULT_PORT:
                scheme = "https" if scheme == "wss" else "http"
        if forwarded_host is not None:
            host = _page_host(forwarded_host, scheme)
            if host is not None:
                ctx._host = host
        ctx._peer = peer
        ctx._scheme = scheme
        ctx._server = server
        ctx._raw_path = raw_path
        ctx._query_string = query_string
        secure = ctx.secure = scheme == "https"

        if raw_map is not None:  # ASGI: the two headers every request needs, decoded here
            raw = raw_map.get(b"cookie")
            cookie_header = raw[:MAX_COOKIE_HEADER_CHARS].decode("latin-1") if raw else None
            raw = raw_map.get(b"referer")
            referer = raw[:MAX_HEADER_CHARS].decode("latin-1") if raw is not None else None
        else:
            cookie_header = ctx.header("cookie")
            referer = ctx.header("referer")
        ctx._cookie_header = cookie_header
        ctx._referer = referer
        fbclid = None
        # fbclid is rare; skip the parse unless its name appears at all.
        if isinstance(query_string, bytes):
            in_query = b"fbclid" in query_string
        else:
            in_query = "fbclid" in query_string
        if in_query or (referer is not None and "fbclid" in referer):
            fbclid = ctx.fbclid = cookie_rules.extract_fbclid(_text(query_string), referer)
        if cookie_header:
            # With an outcome key the whole outcome is memoized instead (see capture_raw).
            facts = self._cookie_facts(cookie_header, remember=outcome_key is None)
            if facts.cookies is not None:
                ctx._cookies = facts.cookies
        else:
            facts = self._no_cookies

        # Consent comes before any cookie is set or any event queued.
        decision = ctx.consent = self._decide(ctx, facts.consent)
        if decision.granted:
            host = ctx._page_host()
            if host is not None:
                try:
                    kept = self._plan(
                        ctx, host, secure, facts.fbc, facts.fbp, fbclid, outcome_key is None
                    )
                except Exception as exc:
                    # Keep the request and the context; only the cookies are lost.
                    self.count("capture_errors")
                    log_internal_error("cookie planning", exc)
                    outcome_key = None
                else:
                    if outcome_key is not None and raw_map is not None:
                        self._store_granted(
                            outcome_key, raw_map, scheme, host, decision, facts, kept
                        )
                    return ctx
        # Without consent the visitor's own valid cookies are still read (never set); a
        # malformed value is ignored, never echoed back (reference §4).
        if facts.fbp is not None and cookie_rules.is_valid_fbp(facts.fbp):
            ctx.fbp = facts.fbp
        if facts.fbc is not None and cookie_rules.is_valid_fbc(facts.fbc):
            ctx.fbc = facts.fbc
        if outcome_key is not None and not decision.granted:
            # Nothing here depends on the host: it stays worked out on first read.
            self._store_outcome(
                outcome_key,
                _Outcome(
                    scheme=scheme,
                    consent=decision,
                    cookies=facts.cookies,
                    host=None,
                    fbc=ctx.fbc,
                    fbp=ctx.fbp,
                    resend=(),
                    mint_fbp=None,
                    subdomain_index=0,
                ),
            )
        return ctx

    def _store_outcome(self, key: tuple[Any, ...], outcome: _Outcome) -> None:
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
        """Keep a granted request's outcome: what it kept, re-sends and must mint."""
        if _page_host(raw_map.get(b"host"), scheme) != host:
            return  # the host came from the server address, which is not in the key
        resend = (kept.fbc_header, kept.fbp_header)
        mint = kept.fbp is None and self._set_fbp
        self._store_outcome(
            key,
            _Outcome(
                scheme=scheme,
                consent=decision,
                cookies=facts.cookies,
                host=host,
                fbc=kept.fbc,
                fbp=kept.fbp,
                resend=tuple(h for h in resend if h is not None),
                mint_fbp=kept.attributes if mint else None,
                subdomain_index=kept.subdomain_index,
            ),
        )

    def _cookie_facts(self, header: str, *, remember: bool = True) -> _CookieFacts:
        """What capture needs from a Cookie header, memoized by its text (bounded).

        A browser sends the same Cookie header on every request of a visit. A header that
        holds neither a consent cookie nor ``_fbc``/``_fbp`` is not even parsed (the
        substring tests are exact: a parsed name is a substring of the header).
        """
        facts = self._cookie_memo.get(header)
        if facts is None:
            if self._consent_cookie_names.search(header) or "_fb" in header:
                cookies = MappingProxyType(cookie_rules.parse_cookie_header(header))
                facts = _CookieFacts(
                    cookies,
                    tuple(map(cookies.get, self._consent_cookies)),
                    cookies.get(cookie_rules.FBC_COOKIE),
                    cookies.get(cookie_rules.FBP_COOKIE),
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
        raw_map = ctx._raw_map
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
    ) -> cookie_rules.KeptCookies:
        """Set ctx.fbc / ctx.fbp and the Set-Cookie values for this response (with consent).

        Meta §4: a new fbclid mints ``_fbc``, a missing ``_fbp`` is minted, on any request. The
        visitor's own valid cookies are re-sent only on a document navigation: one refresh
        per page view extends Safari's 7-day cap on script-set cookies as well as one per
        request would, without a Set-Cookie on every API call and asset (see
        `is_navigation`).

        Validating and rendering the visitor's own cookies depends only on (host, scheme,
        raw values), and a browser sends the same values on every request of a visit, so that
        half is memoized (`cookies.keep_cookies`). Minting depends on the clock: never kept.
        """
        key = (host, secure, raw_fbc, raw_fbp)
        kept = self._kept_memo.get(key)
        if kept is None:
            kept = cookie_rules.keep_cookies(
                host=_hostname(host),
                secure=secure,
                fbc=raw_fbc,
                fbp=raw_fbp,
                cookie_domain=self._cookie_domain,
                now_ms=int(time.time() * 1000),
            )
            if remember and len(raw_fbc or "") + len(raw_fbp or "") <= _MEMO_MAX_CHARS:
                _memoize(self._kept_memo, key, kept)
        fbc = kept.fbc
        fbp = kept.fbp
        navigation: bool | None = None
        set_cookie = ctx._set_cookie
        if fbclid is not None and fbclid != kept.fbc_click_id:
            fbc = cookie_rules.mint_fbc(
                fbclid, subdomain_index=kept.subdomain_index, now_ms=int(time.time() * 1000)
            )
            set_cookie.append(f"{cookie_rules.FBC_COOKIE}={fbc}{kept.attributes}")
        elif kept.fbc_header is not None:
            navigation = _is_navigation(ctx)
            if navigation:
                set_cookie.append(kept.fbc_header)
        if fbp is None:
            if self._set_fbp:
                fbp = cookie_rules.mint_fbp(
                    subdomain_index=kept.subdomain_index, now_ms=int(time.time() * 1000)
                )
                set_cookie.append(f"{cookie_rules.FBP_COOKIE}={fbp}{kept.attributes}")
        elif kept.fbp_header is not None:
            if navigation is None:
                navigation = _is_navigation(ctx)
            if navigation:
                set_cookie.append(kept.fbp_header)
        ctx.fbc = fbc
        ctx.fbp = fbp
        return kept

    # -- track ------------------------------------------------------------------------------

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
        name = event_rules.map_event_name(event_name) if isinstance(event_name, str) else ""
        for arg, value in (("user_data", user_data), ("custom_data", custom_data)):
            if value is not None and not isinstance(value, Mapping):
                problem = Problem(arg, f"must be a mapping, not {type(value).__name__}")
                if config.strict:
                    raise CAPIValidationError([problem])
                with self._counts_lock:
                    self._invalid[arg] += 1
                return TrackResult(
                    event_id=event_id or _new_id(),
                    status="invalid",
                    problems=(problem,),
                    event_name=name,
                )
        merged_custom: dict[str, Any] = dict(custom_data) if custom_data else {}
        merged_custom.update(custom_data_fields)

        if ctx._error is not None:
            return TrackResult(
                event_id=event_id or _new_id(),
                status="error",
                problems=(Problem("request", f"capture failed ({ctx._error}); see the log"),),
                event_name=name,
            )
        decision = ctx.consent
        if not decision.granted:
            self.count("consent_denied")
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
            remembered = self._remembered(ctx)
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
            with self._counts_lock:
                for problem in fatal:
                    self._invalid[problem.field] += 1
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
            self.count("dry_run")
            logger.info(
                "capi_middleware dry_run: %s event_id=%s (not sent)",
                event.event_name,
                event.event_id,
            )
            return TrackResult(status="dry_run", **result_args)

        sender = self.sender()
        outcome = sender.submit(
            event.to_dict(), durable=config.durable if durable is None else durable
        )
        if outcome.dropped or outcome.accepted == 0:
            # Queue full, sender closed or no pixel configured: counted by the sender too.
            reason = outcome.reason or "unknown"
            dropped = Problem("event", f"not queued: {reason}", fatal=outcome.accepted == 0)
            result_args["problems"] = (*built.problems, dropped)
        status: TrackStatus = "queued" if outcome.accepted > 0 else "dropped"
        return TrackResult(status=status, **result_args)

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

    # -- the enhancement cookie ---------------------------------------------------------------

    def _remembered(self, ctx: RequestContext) -> Remembered:
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


# -- helpers -----------------------------------------------------------------------------------


def _new_id() -> str:
    return uuid.uuid4().hex


def _meta_keys(user_data: Mapping[str, Any] | None) -> set[str]:
    """The Meta keys a user_data mapping sets, friendly names translated (email -> em)."""
    if not user_data:
        return set()
    from capi_middleware.normalize import FRIENDLY_KEYS

    return {FRIENDLY_KEYS.get(k, k) for k in user_data}


def _lazy_context(pipeline: CapturePipeline) -> RequestContext:
    """A RequestContext for `CapturePipeline._capture` to fill; lazy attributes unset."""
    ctx = RequestContext.__new__(RequestContext)
    ctx._pipeline = pipeline
    ctx._headers = _EMPTY
    ctx._raw_map = None
    ctx._raw_headers = None
    ctx._cookie_header = None
    ctx._cookies = None
    ctx._error = None
    ctx._remembered = None
    ctx._response_started = False
    ctx._set_cookie = []
    ctx._referer = None
    ctx._host = _UNSET
    ctx._client_ip = _UNSET
    ctx._user_agent = _UNSET
    ctx._event_source_url = _UNSET
    ctx._referrer_url = _UNSET
    ctx.fbp = None
    ctx.fbc = None
    ctx.fbclid = None
    ctx.consent = _UNDECIDED
    return ctx


def is_navigation(signals: ConsentSignals) -> bool:
    """True when the request is a page load (a document navigation), not an API call or asset.

    Fetch Metadata first: ``Sec-Fetch-Dest: document`` or ``Sec-Fetch-Mode: navigate``. A
    client that sends neither (older browsers) counts when its ``Accept`` asks for
    ``text/html``. Kept cookies are re-sent only on these (see `CapturePipeline._plan`).
    """
    dest = signals.header("sec-fetch-dest")
    mode = signals.header("sec-fetch-mode")
    if dest is None and mode is None:
        accept = signals.header("accept")
        return accept is not None and "text/html" in accept.lower()
    return (dest is not None and dest.strip(_WHITESPACE).lower() == "document") or (
        mode is not None and mode.strip(_WHITESPACE).lower() == "navigate"
    )


_WHITESPACE = " \t\r\n\x0b\x0c"  # what bytes.strip() strips: both rules strip the same


def _is_navigation(ctx: RequestContext) -> bool:
    """`is_navigation`, reading the raw ASGI header map directly when there is one."""
    raw_map = ctx._raw_map
    if raw_map is None:
        return is_navigation(ctx)
    dest = raw_map.get(b"sec-fetch-dest")
    mode = raw_map.get(b"sec-fetch-mode")
    if dest is None and mode is None:
        accept = raw_map.get(b"accept")
        return accept is not None and b"text/html" in accept.lower()
    return (dest is not None and dest.strip().lower() == b"document") or (
        mode is not None and mode.strip().lower() == b"navigate"
    )


_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


def _memoize(memo: dict[_K, _V], key: _K, value: _V, size: int | None = None) -> None:
    """Store in a bounded memo; when full, forget the older half (dicts keep insertion order)."""
    size = _MEMO_SIZE if size is None else size
    if len(memo) >= size:
        for old in list(memo)[: size // 2]:
            memo.pop(old, None)
    memo[key] = value


_ip_cache: dict[str, str | None] = {}


def _sendable_ip(peer: str) -> str | None:
    """client_ip.sendable_ip, memoized: the same visitors and proxies come back again and again."""
    try:
        return _ip_cache[peer]
    except KeyError:
        pass
    value = client_ip_rules.sendable_ip(peer)
    if len(_ip_cache) >= 4096:
        _ip_cache.clear()  # bounded; a clear is cheaper than LRU bookkeeping per request
    _ip_cache[peer] = value
    return value


_host_cache: dict[tuple[str | bytes, str], str | None] = {}


def _page_host(value: str | bytes | None, scheme: str) -> str | None:
    """The Host header as it goes in the page URL (validated, lowercased, default port dropped).

    ``value`` may be the raw ASGI bytes. Memoized: a site answers to a handful of hosts.
    Bounded, since clients choose the value.
    """
    if not value:
        return None
    key = (value, scheme)
    try:
        return _host_cache[key]
    except KeyError:
        pass
    host = _valid_host(value if isinstance(value, str) else value.decode("latin-1"))
    if host is not None and scheme in _DEFAULT_PORT:
        host = _strip_default_port(host, scheme)
    if len(_host_cache) >= 1024:
        _host_cache.clear()
    _host_cache[key] = host
    return host


def _read_raw_header(raw: Sequence[tuple[bytes, bytes]], key: str) -> str | None:
    """One header from an ASGI header list (any case), repeats joined, value capped."""
    wanted = key.encode("latin-1", "replace")
    found: list[str] = []
    for raw_name, raw_value in raw:
        if raw_name == wanted or raw_name.lower() == wanted:
            found.append(cap_header(key, raw_value).decode("latin-1"))
    if not found:
        return None
    return cap_header(key, ", ".join(found))


def _valid_host(value: str | None) -> str | None:
    """The Host header, lowercased, when it is a host name or IP literal with an optional port."""
    if not value or len(value) > 261:
        return None
    value = value.lower()
    return value if _HOST.fullmatch(value) else None


def _strip_default_port(host: str, scheme: str) -> str:
    # Browsers omit the scheme's default port from the page URL.
    default = _DEFAULT_PORT[scheme]
    if host.endswith(default) and host[: -len(default)].endswith(":"):
        return host[: -len(default) - 1]
    return host


def _host_from_server(server: Sequence[Any], scheme: str) -> str | None:
    host, port = server[0], server[1] if len(server) > 1 else None
    if not isinstance(host, str) or not host:
        return None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if port is not None and str(port) != _DEFAULT_PORT[scheme]:
        host = f"{host}:{port}"
    return _valid_host(host)


def _text(value: str | bytes) -> str:
    """A raw ASGI value as latin-1 text (every byte decodes)."""
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _hostname(host: str) -> str:
    """``host[:port]`` -> host; ``[::1]:8000`` -> ``::1``."""
    if host.startswith("["):
        return host[1 : host.index("]")]
    return host.rsplit(":", 1)[0] if ":" in host else host


def _page_url(scheme: str, host: str | None, raw_path: str, query_string: str) -> str | None:
    """scheme://host + the path and query as the browser sent them (capped, never invalid)."""
    if host is None:
        return None
    path = raw_path if raw_path.startswith("/") else "/" + raw_path
    if _NOT_URL_SAFE.search(path):
        path = _escape(path)
    url = f"{scheme}://{host}{path}"
    if query_string:
        if _NOT_URL_SAFE.search(query_string):
            query_string = _escape(query_string)
        url = f"{url}?{query_string}"
    if len(url) > MAX_URL_CHARS:
        # Keep the page, lose the tail: the query goes first (tracking parameters, mostly).
        base = f"{scheme}://{host}{path}"
        url = base if len(base) <= MAX_URL_CHARS else base[:MAX_URL_CHARS]
        if url[-1:] == "%" or url[-2:-1] == "%":
            url = url[: url.rindex("%")]  # never end inside a %XX escape
    return url


def _escape(text: str) -> str:
    """Percent-encode bytes a browser would have encoded (spaces, controls, non-ASCII)."""
    return "".join(
        c if "\x21" <= c <= "\x7e" else "".join(f"%{b:02X}" for b in c.encode("latin-1", "replace"))
        for c in text
    )


def _clean_user_agent(value: str | None) -> str | None:
    if not value:
        return None
    if len(value) > MAX_USER_AGENT_CHARS:
        value = value[:MAX_USER_AGENT_CHARS]
    if not value.isprintable():  # C-speed check; the regex only when something is off
        value = _CONTROL.sub("", value)
    value = value.strip()
    return value or None


def _clean_referrer(value: str | None) -> str | None:
    if not value or len(value) > MAX_URL_CHARS:
        return None  # a cut URL would point elsewhere; better none
    return value if _REFERRER.fullmatch(value) else None


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
