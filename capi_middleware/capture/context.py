"""`RequestContext`: what one request carries for Meta, and `current()`.

`capture.pipeline.CapturePipeline` builds a context per request; the app finds it at
``request.state.capi`` / ``environ["capi"]`` / `current()` and calls ``ctx.track(...)``, which
hands the event to the `CAPIClient` with the context as its match source. Attributes the app
may never read (client IP, user agent, page URL, referrer) are worked out on first read, from
the rules in rules/page_url.py. Nothing here does network I/O or raises into the request (except
`CAPIValidationError` with ``strict=True``).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from capi_middleware.capture.headers import cap_header
from capi_middleware.consent.policies import ConsentDecision
from capi_middleware.errors import CAPIValidationError, Problem
from capi_middleware.results import TrackResult
from capi_middleware.rules import client_ip as client_ip_rules
from capi_middleware.rules import events as event_rules
from capi_middleware.rules.cookie_header import parse_cookie_header
from capi_middleware.rules.enhancement import Remembered, remembered_from_user_data
from capi_middleware.rules.page_url import (
    build_page_url,
    clean_referrer,
    clean_user_agent,
    host_from_server,
    latin1_text,
    page_host,
)
from capi_middleware.rules.pixel import render_fbq_track
from capi_middleware.visitor import Visitor

if TYPE_CHECKING:
    from capi_middleware.client import CAPIClient

__all__ = [
    "LAZY",
    "RequestContext",
    "ResponseCookies",
    "activate",
    "current",
    "deactivate",
]

_EMPTY: Mapping[str, str] = MappingProxyType({})
_UNSET: Any = object()  # a lazy RequestContext attribute not worked out yet
LAZY: Any = _UNSET
"""Pass for ``host`` / ``client_ip`` to leave them to be worked out on first read."""
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


class RequestContext:
    """What one request carries for Meta, and the way to send events from it.

    Attributes (read them, don't set them):
        client_ip: the visitor's public IP (trusted proxies honoured; with consent, the IPv6
            of Meta's ``_fbi`` cookie over a request's IPv4), or None.
        user_agent: the User-Agent header (control characters removed, capped), or None.
        fbp: a valid ``_fbp`` cookie, or the one minted for this response (with consent).
        fbc: a valid ``_fbc`` cookie, or the one minted from ``fbclid`` (with consent).
        fbclid: the click id from the query string, else from the Referer, byte for byte.
        event_source_url: the page's URL as the browser asked for it.
        referrer_url: the Referer, when it is an http(s) URL.
        consent: the `ConsentDecision` for this request.
        secure: True when the visitor reached us over https.
        raw_headers: the ASGI request's headers, lowercase byte names -> raw values (each name
            once; None under WSGI), for capture's own reads.

    ``client_ip``, ``user_agent``, ``event_source_url``, ``referrer_url`` and ``cookies`` are
    worked out on first read (by ``track()`` or the app), not on every request: most requests
    never need them, and the middleware's cost is paid by every request.
    """

    __slots__ = (
        "_client",
        "_client_ip",
        "_cookie_header",
        "_cookies",
        "_error",
        "_event_source_url",
        "_headers",
        "_host",
        "_peer",
        "_query_string",
        "_raw_path",
        "_referer",
        "_referrer_url",
        "_remembered",
        "_scheme",
        "_server",
        "_user_agent",
        "consent",
        "fbc",
        "fbclid",
        "fbp",
        "raw_headers",
        "response_cookies",
        "secure",
    )

    # Limited Data Use's country and state: 0 = Meta geolocates the visitor (MatchSource).
    ldu_country = 0
    ldu_state = 0

    def __init__(
        self,
        client: CAPIClient,
        *,
        raw_map: Mapping[bytes, bytes] | None = None,
        headers: Mapping[str, str] = _EMPTY,
        peer: str | None = None,
        scheme: str = "http",
        server: Sequence[Any] | None = None,
        raw_path: str | bytes = "/",
        query_string: str | bytes = "",
        cookie_header: str | None = None,
        cookies: Mapping[str, str] | None = None,
        referer: str | None = None,
        host: str | None = _UNSET,
        client_ip: str | None = _UNSET,
        fbclid: str | None = None,
        error: str | None = None,
    ) -> None:
        """Capture (`CapturePipeline`) builds contexts; an app never needs to.

        ``headers`` (lowercase names, WSGI) or ``raw_map`` (lowercase byte names, ASGI) hold
        the request's headers; ``host`` and ``client_ip`` when capture already knows them
        (trusted proxies), else they are worked out on first read. Capture then sets
        ``consent``, ``fbc`` and ``fbp`` and fills ``response_cookies``.
        """
        self._client = client
        self.raw_headers = raw_map
        self._headers = headers
        self._peer = peer
        self._scheme = scheme
        self._server = server
        self._raw_path = raw_path
        self._query_string = query_string
        self._cookie_header = cookie_header
        self._cookies = cookies
        self._referer = referer
        self._host: Any = host
        self._client_ip: Any = client_ip
        self._user_agent: Any = _UNSET
        self._event_source_url: Any = _UNSET
        self._referrer_url: Any = _UNSET
        self._error = error
        self._remembered: Remembered | None = None
        self.secure = scheme == "https"
        self.fbclid = fbclid
        self.fbp: str | None = None
        self.fbc: str | None = None
        self.consent = _UNDECIDED
        self.response_cookies = ResponseCookies()

    def __repr__(self) -> str:
        # IPs, user agents and click ids identify a person: show only which are present.
        present = [
            name
            for name in ("client_ip", "user_agent", "fbp", "fbc", "fbclid", "event_source_url")
            if getattr(self, name) is not None
        ]
        return f"RequestContext(present={present}, consent={self.consent!r})"

    def consider_fbi(self, value: str | None) -> None:
        """Take Meta's ``_fbi`` cookie into `client_ip` (capture calls it only with consent).

        Its public IPv6 wins over the request's IPv4, and its public address fills in when the
        request has none; it never replaces an address of the request's own family
        (`client_ip_rules.client_ip_with_fbi`; docs/match-quality.md).
        """
        if value is not None:
            self._client_ip = client_ip_rules.client_ip_with_fbi(self.client_ip, value)

    # -- what is worked out on first read ------------------------------------------------

    @property
    def client_ip(self) -> str | None:
        """The visitor's public IP (trusted proxies honoured), or None."""
        value = self._client_ip
        if value is _UNSET:
            value = self._client_ip = self._first_read("client IP", self._sendable_peer)
        return value  # type: ignore[no-any-return]

    @property
    def user_agent(self) -> str | None:
        """The User-Agent header (control characters removed, capped), or None."""
        value = self._user_agent
        if value is _UNSET:
            value = self._user_agent = self._first_read("user agent", self._clean_user_agent)
        return value  # type: ignore[no-any-return]

    @property
    def event_source_url(self) -> str | None:
        """The page's URL as the browser asked for it, or None without a usable host."""
        value = self._event_source_url
        if value is _UNSET:
            value = self._event_source_url = self._first_read("page URL", self._page_url)
        return value  # type: ignore[no-any-return]

    @property
    def referrer_url(self) -> str | None:
        """The Referer, when it is an http(s) URL."""
        value = self._referrer_url
        if value is _UNSET:
            value = self._referrer_url = self._first_read("referrer", self._clean_referrer)
        return value  # type: ignore[no-any-return]

    def _first_read(self, what: str, work_out: Callable[[], str | None]) -> str | None:
        # Reading an attribute must never raise into the app: count, log, and say None.
        try:
            return work_out()
        except Exception as exc:
            self._client.count_internal_error("capture_errors", what, exc)
            return None

    def _sendable_peer(self) -> str | None:
        return client_ip_rules.sendable_ip(self._peer) if self._peer else None

    def _clean_user_agent(self) -> str | None:
        return clean_user_agent(self.header("user-agent"))

    def _page_url(self) -> str | None:
        raw_path = self._raw_path
        if isinstance(raw_path, bytes):
            raw_path = raw_path.decode("latin-1")
            if "?" in raw_path:  # some servers include the query in raw_path
                raw_path = raw_path.split("?", 1)[0]
        return build_page_url(
            self._scheme, self.page_host(), raw_path, latin1_text(self._query_string)
        )

    def _clean_referrer(self) -> str | None:
        return clean_referrer(self._referer) if self._referer is not None else None

    def page_host(self) -> str | None:
        """The host for the page URL and the cookies: Host header, else the server address."""
        host = self._host
        if host is _UNSET:
            scheme = self._scheme
            raw_map = self.raw_headers
            host = page_host(
                raw_map.get(b"host") if raw_map is not None else self.header("host"), scheme
            )
            if host is None and self._server is not None:
                host = host_from_server(self._server, scheme)
            self._host = host
        return host  # type: ignore[no-any-return]

    # -- ConsentSignals ---------------------------------------------------------------------

    @property
    def cookies(self) -> Mapping[str, str]:
        """The request's cookies, name -> value (first occurrence wins); read-only."""
        cookies = self._cookies
        if cookies is None:
            header = self._cookie_header
            parsed = parse_cookie_header(header) if header else {}
            cookies = self._cookies = MappingProxyType(parsed)
        return cookies

    def header(self, name: str) -> str | None:
        """A request header by name (any case); repeated headers joined with ``", "``."""
        key = name.lower()
        raw_map = self.raw_headers
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
        visitor: Visitor | None = None,
        **custom_data_fields: Any,
    ) -> TrackResult:
        """Send one event to Meta in the background, with this request's match keys.

        With ``visitor`` (another request's `Visitor`, e.g. in a payment webhook), the event
        carries that visitor's IP, user agent, cookies, URLs and consent instead of this
        request's own (`CAPIClient.track`).

        ``client_ip_address``, ``client_user_agent``, ``fbc``, ``fbp``, ``event_source_url`` and
        ``referrer_url`` come from the request; keys given in ``user_data`` win (give one as None
        to leave it out). ``custom_data`` fields may be passed as keywords (``value=9.99,
        currency="USD"``). Never blocks on the network; never raises unless ``strict=True`` and the
        input is invalid (`CAPIValidationError`).
        """
        client = self._client
        if visitor is not None:
            return client.track(
                event_name,
                visitor=visitor,
                user_data=user_data,
                custom_data=custom_data,
                event_id=event_id,
                event_time=event_time,
                action_source=action_source,
                durable=durable,
                **custom_data_fields,
            )
        try:
            if self._error is not None:
                return TrackResult(
                    event_id=event_id or event_rules.new_event_id(),
                    status="error",
                    problems=(Problem("request", f"capture failed ({self._error}); see the log"),),
                    event_name=event_rules.map_event_name(event_name)
                    if isinstance(event_name, str)
                    else "",
                    # The pixel call still gets the event's parameters (TrackResult.fbq).
                    pixel_data={**(custom_data or {}), **custom_data_fields},
                )
            codec = client.enhancement
            remembered = self.remembered() if codec is not None else None
            result, user = client.track_from(
                self,
                event_name,
                user_data=user_data,
                custom_data=custom_data,
                event_id=event_id,
                event_time=event_time,
                action_source=action_source,
                durable=durable,
                custom_data_fields=custom_data_fields,
                remembered=remembered,
            )
            if codec is not None and user is not None and not self.response_cookies.started:
                self._remember(remembered or {}, user)
            return result
        except CAPIValidationError:
            raise  # only raised with strict=True, on purpose
        except Exception as exc:
            client.count_internal_error("track_errors", "track()", exc)
            return TrackResult(
                event_id=event_id
                if isinstance(event_id, str) and event_id
                else event_rules.new_event_id(),
                status="error",
                problems=(Problem("track", "internal error in capi_middleware; see the log"),),
                event_name=event_name if isinstance(event_name, str) else "",
            )

    def visitor(self) -> Visitor:
        """This request's match context and consent as a `Visitor`, to store with an order.

        A webhook or a job later sends the conversion with it (``client.track(...,
        visitor=v)``). A denied request gives a denied visitor holding no match keys. Never
        raises: a value that fails validation is left out.
        """
        try:
            return Visitor.capture(self)
        except Exception as exc:
            self._client.count_internal_error("capture_errors", "visitor()", exc)
            return Visitor(consent=_UNDECIDED)

    # -- the enhancement cookie ---------------------------------------------------------------

    def remembered(self) -> Remembered:
        """The match keys this request's enhancement cookie remembers (loaded once)."""
        remembered = self._remembered
        if remembered is None:
            codec = self._client.enhancement
            remembered = {} if codec is None else codec.load(self.cookies.get(codec.cookie_name))
            self._remembered = remembered
        return remembered

    def _remember(self, before: Remembered, user_data: Mapping[str, Any]) -> None:
        codec = self._client.enhancement
        assert codec is not None
        merged = dict(before)
        merged.update(remembered_from_user_data(user_data))
        if merged == before:
            return
        self._remembered = merged
        cookie = codec.render_set_cookie(codec.dump(merged), secure=self.secure)
        # One enhancement cookie per response: a later track() replaces an earlier one.
        self.response_cookies.replace(codec.cookie_name, cookie)

    def fbq(self, event_name: str, *, event_id: str | None = None, **custom_data: Any) -> str:
        """The pixel call ``fbq('track', name, {...}, {eventID})`` for a page to run.

        Use it with ``track(..., event_id=same_id)`` so Meta deduplicates the two.
        """
        return render_fbq_track(
            event_rules.map_event_name(event_name),
            custom_data,
            event_id or event_rules.new_event_id(),
        )

    @property
    def failed(self) -> bool:
        """True when capture failed and this context only reports errors."""
        return self._error is not None


class ResponseCookies(list[str]):
    """The Set-Cookie values one request adds to its response head: a list, taken once.

    Capture appends the cookie plan's values, ``track()`` the enhancement cookie (`replace`);
    the adapter takes them all once, when the response starts (`take`), after which
    ``started`` is True and ``track()`` adds nothing more. A plain list underneath, so the
    check every response makes (is there anything to add?) costs nothing.
    """

    started = False

    def __repr__(self) -> str:
        # Cookie values identify a visitor: show only their names.
        names = [value.split("=", 1)[0] for value in self]
        return f"ResponseCookies(names={names}, started={self.started})"

    def replace(self, name: str, value: str) -> None:
        """Add ``value``, dropping any earlier value for the cookie ``name``."""
        prefix = name + "="
        self[:] = [v for v in self if not v.startswith(prefix)]
        self.append(value)

    def take(self) -> list[str]:
        """The values for the response head; marks the response as started."""
        self.started = True
        values = list(self)
        self.clear()
        return values
