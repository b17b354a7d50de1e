"""The public request objects: `RequestContext`, what ``track()`` returns, and `current()`.

A `RequestContext` is what one request carries for Meta; `capture.CapturePipeline` builds it,
the app finds it at ``request.state.capi`` / ``environ["capi"]`` / `current()` and calls
``ctx.track(...)``, whose pipeline side lives in tracking.py (`CapturePipeline.tracker`).
Attributes the app may never read (client IP, user agent, page URL, referrer) are worked out on
first read, from the rules in page_url.py. Nothing here does network I/O or raises into the
request (except `CAPIValidationError` with ``strict=True``).
"""

from __future__ import annotations

import contextvars
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from capi_middleware import client_ip as client_ip_rules
from capi_middleware import cookies as cookie_rules
from capi_middleware import events as event_rules
from capi_middleware.captured_headers import cap_header
from capi_middleware.consent import ConsentDecision
from capi_middleware.enhancement import Remembered
from capi_middleware.errors import CAPIValidationError, Problem
from capi_middleware.page_url import (
    build_page_url,
    clean_referrer,
    clean_user_agent,
    host_from_server,
    latin1_text,
    page_host,
)
from capi_middleware.pixel import render_fbq_track

if TYPE_CHECKING:
    from capi_middleware.capture import CapturePipeline

__all__ = [
    "CaptureStats",
    "RequestContext",
    "TrackResult",
    "TrackStatus",
    "activate",
    "current",
    "deactivate",
]

TrackStatus = Literal["queued", "denied", "invalid", "dropped", "dry_run", "error"]
"""What became of one ``track()`` call.

- ``queued``: handed to the sender (in memory, or committed to the outbox with ``durable``).
- ``denied``: the visitor's consent does not allow it; nothing stored, nothing sent.
- ``invalid``: the event breaks a Meta rule (``problems`` say which); nothing sent.
- ``dropped``: the sender could not take it (queue full, closed, no pixel configured).
- ``dry_run``: built, validated and logged; ``dry_run=True`` sends nothing.
- ``error``: capi_middleware failed internally (logged); the request goes on.
"""


_EMPTY: Mapping[str, str] = MappingProxyType({})
_UNSET: Any = object()  # a lazy RequestContext attribute not worked out yet
_UNDECIDED = ConsentDecision(granted=False, reason="undecided")

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
                value = clean_user_agent(self.header("user-agent"))
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
                value = build_page_url(
                    self._scheme, self._page_host(), raw_path, latin1_text(self._query_string)
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
                value = clean_referrer(self._referer) if self._referer is not None else None
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
            host = page_host(
                raw_map.get(b"host") if raw_map is not None else self.header("host"), scheme
            )
            if host is None and self._server is not None:
                host = host_from_server(self._server, scheme)
            self._host = host
        return host  # type: ignore[no-any-return]

    def _lazy_failed(self, what: str, exc: Exception) -> None:
        # Reading an attribute must never raise into the app: count, log, and say None.
        self._pipeline.count_internal_error("capture_errors", what, exc)

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
        return self._headers.get(key)

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
            return self._pipeline.tracker.track(
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
            self._pipeline.count_internal_error("track_errors", "track()", exc)
            return TrackResult(
                event_id=event_id
                if isinstance(event_id, str) and event_id
                else event_rules.new_event_id(),
                status="error",
                problems=(Problem("track", "internal error in capi_middleware; see the log"),),
                event_name=event_name if isinstance(event_name, str) else "",
            )

    def fbq(self, event_name: str, *, event_id: str | None = None, **custom_data: Any) -> str:
        """The pixel call ``fbq('track', name, {...}, {eventID})`` for a page to run.

        Use it with ``track(..., event_id=same_id)`` so Meta deduplicates the two.
        """
        return render_fbq_track(
            event_rules.map_event_name(event_name),
            custom_data,
            event_id or event_rules.new_event_id(),
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


def lazy_context(pipeline: CapturePipeline) -> RequestContext:
    """A RequestContext for `CapturePipeline` to fill; lazy attributes unset.

    Faster than ``__init__`` on every request; sets every slot ``__init__`` sets but those
    capture fills itself (peer, scheme, server, path, query string).
    """
    ctx = RequestContext.__new__(RequestContext)
    ctx._pipeline = pipeline
    ctx._headers = _EMPTY
    ctx._raw_map = None
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
