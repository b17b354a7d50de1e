"""CAPIConfig: every option of the library, validated once.

Keyword options to `CAPIMiddleware` / `CAPIWSGIMiddleware` are the fields of this class. A value
left unset falls back to its ``META_*`` environment variable (`CAPIConfig.from_env`). Errors are
``ValueError`` naming the option; the repr never shows the access token or the app secret.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from difflib import get_close_matches
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

__all__ = ["CAPIConfig", "Destination", "misnamed_variables", "option_label"]

_PIXEL_ID = re.compile(r"^[0-9]{1,32}$")
_API_VERSION = re.compile(r"^v[0-9]{1,3}\.[0-9]{1,2}$")
_COUNTRY = re.compile(r"^[A-Za-z]{2}$")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _mask(secret: str | None) -> str:
    if not secret:
        return "None"
    return "'***'"


def _masked_repr(obj: Any, secrets: tuple[str, ...]) -> str:
    """``Name(field=value, ...)`` with every secret field shown as ``'***'``."""
    parts = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        parts.append(f"{f.name}={_mask(value) if f.name in secrets else repr(value)}")
    return f"{type(obj).__name__}({', '.join(parts)})"


@dataclass(frozen=True)
class Destination:
    """One pixel to send to, with the token that may write to it.

    Parameters:
        pixel_id: the dataset (pixel) id, digits only.
        access_token: a system-user token with ``ads_management`` on the pixel.
        app_secret: when set, ``appsecret_proof`` is sent with each request.
        test_event_code: events show under Events Manager → Test Events.
    """

    pixel_id: str
    access_token: str = field(repr=False)
    app_secret: str | None = field(default=None, repr=False)
    test_event_code: str | None = None

    def __repr__(self) -> str:
        return _masked_repr(self, ("access_token", "app_secret"))


@dataclass(frozen=True)
class CAPIConfig:
    """All options, validated when the object is built.

    Parameters:
        pixel_id: the pixel (dataset) id [META_PIXEL_ID].
        access_token: Conversions API token [META_ACCESS_TOKEN]. Never logged.
        app_secret: app secret for ``appsecret_proof`` [META_APP_SECRET]. Never logged.
        test_event_code: route events to Test Events [META_TEST_EVENT_CODE]; a warning is
            logged at start, since it must not stay on in production.
        graph_url: Graph API base URL [META_GRAPH_URL]; point it at the fake in tests.
        api_version: Graph API version, ``vNN.N`` [META_API_VERSION].
        extra_pixels: more destinations that receive every event too.
        consent: a policy ``(ctx) -> bool | ConsentDecision`` or a built-in from
            `capi_middleware.consent`; ``None`` uses the default, which requires an opt-in
            signal (lawful in the EU). ``True`` grants always (only where no consent is needed).
        trusted_proxies: IPs / CIDRs whose forwarding headers are believed
            [META_TRUSTED_PROXIES, comma-separated]; walked right to left (docs/security.md).
        forwarded_headers: which headers a trusted proxy's answer is read from
            [META_FORWARDED_HEADERS]: ``"x-forwarded"`` (default: X-Forwarded-For and
            X-Forwarded-Proto, as uvicorn, gunicorn and most proxies set them) or
            ``"forwarded"`` (RFC 7239 ``Forwarded``, only if your proxy writes it). The other
            family is ignored, since a client can send it through the proxy.
        trust_forwarded_host: take the page host from X-Forwarded-Host / ``Forwarded: host=``
            of a trusted proxy [META_TRUST_FORWARDED_HOST]; default False (the Host header).
            Even then a host outside ``cookie_domain`` (when set) is ignored.
        cookie_domain: the Domain of the ``_fbc``/``_fbp`` cookies; default: the registrable
            domain of the request's host (Public Suffix List).
        set_fbp: mint ``_fbp`` when the pixel has not (default True).
        no_cookie_paths: path prefixes (``"/webhooks/"``) of requests no browser makes
            (payment webhooks, health checks): the middleware sets no cookie on them. Whatever
            the path, a new ``_fbp``/``_fbc`` is minted only for a request a browser made (it
            has a Cookie header, a ``Sec-Fetch-*`` header, or an ``Accept`` with text/html).
        outbox: where events wait for delivery [META_OUTBOX]: None keeps them in memory; a path
            is a SQLite file (one host); a ``redis://`` or ``rediss://`` URL, or a
            ``redis.Redis`` client, is a Redis Streams outbox shared by a fleet of hosts (extra
            ``capi-middleware[redis]``; docs/fleet.md). A password in the URL is never shown.
        durable: every ``track()`` waits for the outbox commit (default False: group commit).
        dry_run: build, validate and log events; send nothing [META_DRY_RUN]. ``"debug"``
            (``META_DRY_RUN=debug``) also prints each built event to stderr: its match keys
            (hashes shortened, personal values in clear masked) and its custom_data.
        strict: ``track()`` raises on bad input instead of reporting it on the result.
        default_country: ISO 3166-1 alpha-2 used to complete phone numbers without a calling
            code when the event has no country.
        hash_external_id: hash ``external_id`` (as the pixel does); False sends it as given.
        partner_agent: sent as ``partner_agent``.
        enhancement_secret: enables the signed first-party cookie that remembers a visitor's
            hashed email / phone / external_id to enrich later events (consent-gated).
        max_queue: events held in memory at most; past it new events are dropped and counted.
        batch_size: events per Graph request, at most 1000.
        flush_interval: seconds an event may wait for a fuller batch.
        timeout: seconds for one Graph request (Meta recommends 1.5).
        shutdown_timeout: seconds ``close()`` waits for the backlog at shutdown.
        serverless: deliver (or durably store) each request's events before the app's
            ASGI/WSGI call returns, for AWS Lambda, Cloud Run and other platforms that freeze
            the process between requests [META_SERVERLESS].
        serverless_timeout: seconds a request that tracked something waits for its events
            with ``serverless`` (what is still undelivered then stays queued or in the outbox).
        on_dead_letter: called (in the sender's thread) with each dead-lettered event record.
    """

    pixel_id: str | None = None
    access_token: str | None = field(default=None, repr=False)
    app_secret: str | None = field(default=None, repr=False)
    test_event_code: str | None = None
    graph_url: str = "https://graph.facebook.com"
    api_version: str = "v26.0"
    extra_pixels: tuple[Destination, ...] = ()
    consent: Any = None
    trusted_proxies: tuple[str, ...] = ()
    forwarded_headers: str = "x-forwarded"
    trust_forwarded_host: bool = False
    cookie_domain: str | None = None
    set_fbp: bool = True
    no_cookie_paths: tuple[str, ...] = ()
    outbox: str | Any | None = None
    durable: bool = False
    dry_run: bool | Literal["debug"] = False
    strict: bool = False
    default_country: str | None = None
    hash_external_id: bool = True
    partner_agent: str | None = "capi-middleware"
    enhancement_secret: str | None = field(default=None, repr=False)
    max_queue: int = 100_000
    batch_size: int = 1000
    flush_interval: float = 0.5
    timeout: float = 1.5
    shutdown_timeout: float = 5.0
    serverless: bool = False
    serverless_timeout: float = 2.0
    on_dead_letter: Callable[[Mapping[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.pixel_id is not None:
            pid = str(self.pixel_id).strip()
            if not _PIXEL_ID.match(pid):
                # The value is never quoted: a token pasted into the wrong variable would be
                # printed at startup for all to see.
                swapped = (
                    " (this value looks like an access token)" if pid.startswith("EAA") else ""
                )
                raise _invalid(
                    "pixel_id", f"must be the pixel's numeric id, e.g. '1234567890'{swapped}"
                )
            set_(self, "pixel_id", pid)
        if self.access_token is not None and not str(self.access_token).strip():
            raise _invalid("access_token", "must not be empty")
        if (self.pixel_id is None) != (self.access_token is None) and not self.dry_run:
            missing, given = (
                ("access_token", "pixel_id")
                if self.access_token is None
                else ("pixel_id", "access_token")
            )
            raise _invalid(
                missing,
                f"not set, but {option_label(given)} is (they go together; "
                "or set dry_run=True to send nothing)",
            )
        if not (isinstance(self.dry_run, bool) or self.dry_run == "debug"):
            raise _invalid("dry_run", "must be True, False or 'debug'")
        url = str(self.graph_url).rstrip("/")
        if not url.startswith(("https://", "http://")):
            raise _invalid("graph_url", "must start with https:// (or http:// for a local fake)")
        set_(self, "graph_url", url)
        if not _API_VERSION.match(self.api_version):
            raise _invalid("api_version", "must look like 'v26.0'")
        extra = tuple(self.extra_pixels)
        for d in extra:
            if not isinstance(d, Destination):
                raise _invalid("extra_pixels", "each entry must be a capi_middleware.Destination")
            if not _PIXEL_ID.match(d.pixel_id):
                raise _invalid("extra_pixels", "pixel_id must be numeric")
        set_(self, "extra_pixels", extra)
        set_(
            self,
            "trusted_proxies",
            tuple(str(p).strip() for p in coerce_sequence(self.trusted_proxies)),
        )
        self.trusted_networks()  # validates
        paths = tuple(coerce_sequence(self.no_cookie_paths))
        for path in paths:
            if not isinstance(path, str) or not path.startswith("/") or not path.isascii():
                raise _invalid(
                    "no_cookie_paths", "each entry must be an ASCII path prefix starting with '/'"
                )
        set_(self, "no_cookie_paths", paths)
        family = self.forwarded_headers
        if isinstance(family, str):
            family = family.strip().lower()
        if family not in ("x-forwarded", "forwarded"):
            raise _invalid(
                "forwarded_headers",
                "must be 'x-forwarded' (X-Forwarded-For and X-Forwarded-Proto) or 'forwarded' "
                "(RFC 7239 Forwarded)",
            )
        set_(self, "forwarded_headers", family)
        if not isinstance(self.trust_forwarded_host, bool):
            raise _invalid("trust_forwarded_host", "must be True or False")
        if self.cookie_domain is not None:
            dom = self.cookie_domain.strip().lstrip(".").lower()
            if not dom or not re.fullmatch(r"[a-z0-9.-]+", dom) or ".." in dom:
                raise _invalid("cookie_domain", "must be a host name such as 'example.com'")
            set_(self, "cookie_domain", dom)
        if self.default_country is not None:
            if not _COUNTRY.match(self.default_country):
                raise _invalid("default_country", "must be an ISO 3166-1 alpha-2 code like 'US'")
            set_(self, "default_country", self.default_country.upper())
        if self.outbox is not None:
            set_(self, "outbox", _checked_outbox(self.outbox))
        if self.consent is not None and not (
            callable(self.consent) or isinstance(self.consent, bool)
        ):
            raise _invalid("consent", "must be a callable (ctx) -> bool | decision, or a bool")
        for name, lo, hi in (("max_queue", 1, 10**8), ("batch_size", 1, 1000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise _invalid(name, f"must be an integer from {lo} to {hi}")
        for name in ("flush_interval", "timeout", "shutdown_timeout", "serverless_timeout"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise _invalid(name, "must be a non-negative number of seconds")
        if self.timeout == 0:
            raise _invalid("timeout", "must be more than 0 seconds")
        if self.on_dead_letter is not None and not callable(self.on_dead_letter):
            raise _invalid("on_dead_letter", "must be callable")

    def __repr__(self) -> str:
        text = _masked_repr(self, ("access_token", "app_secret", "enhancement_secret"))
        if isinstance(self.outbox, str) and is_redis_url(self.outbox):
            text = text.replace(repr(self.outbox), repr(redact_url(self.outbox)))
        return text

    # -- derived values -------------------------------------------------------------------

    def destinations(self) -> tuple[Destination, ...]:
        """Every pixel an event goes to: the main one first, then `extra_pixels`."""
        main: tuple[Destination, ...] = ()
        if self.pixel_id is not None and self.access_token is not None:
            main = (
                Destination(
                    pixel_id=self.pixel_id,
                    access_token=self.access_token,
                    app_secret=self.app_secret,
                    test_event_code=self.test_event_code,
                ),
            )
        return main + self.extra_pixels

    def trusted_networks(self) -> tuple[IPNetwork, ...]:
        """`trusted_proxies` parsed; raises ValueError naming the option on a bad entry."""
        nets: list[IPNetwork] = []
        for entry in self.trusted_proxies:
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise _invalid(
                    "trusted_proxies", f"{entry!r} is not an IP address or CIDR network"
                ) from None
        return tuple(nets)

    def events_url(self, pixel_id: str) -> str:
        """The Graph endpoint for one pixel. The token goes in the body, never here."""
        return f"{self.graph_url}/{self.api_version}/{pixel_id}/events"

    def replace(self, **changes: Any) -> CAPIConfig:
        return replace(self, **changes)

    @classmethod
    def from_options(
        cls, owner: str, config: CAPIConfig | None, options: Mapping[str, Any]
    ) -> CAPIConfig:
        """What a middleware's constructor does with ``config=`` and keyword options.

        Unknown keywords raise TypeError naming ``owner``; with ``config`` the keywords override
        it, without it unset options come from the ``META_*`` variables (`from_env`).
        """
        unknown = sorted(set(options) - _OPTION_NAMES)
        if unknown:
            hints = [
                f"{name} (did you mean {close[0]}?)" if close else name
                for name in unknown
                for close in [get_close_matches(name, _OPTION_NAMES, n=1, cutoff=0.75)]
            ]
            raise TypeError(f"{owner}: unknown option(s) {', '.join(hints)}")
        if config is None:
            return cls.from_env(**options)
        return config.replace(**options) if options else config

    # -- environment ----------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> CAPIConfig:
        """Build from ``META_*`` variables; keyword ``overrides`` win over the environment.

        Reads META_PIXEL_ID, META_ACCESS_TOKEN, META_APP_SECRET, META_TEST_EVENT_CODE,
        META_GRAPH_URL, META_API_VERSION, META_OUTBOX, META_DRY_RUN, META_SERVERLESS,
        META_TRUSTED_PROXIES (comma-separated), META_FORWARDED_HEADERS,
        META_TRUST_FORWARDED_HOST, META_COOKIE_DOMAIN, META_DEFAULT_COUNTRY.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for option, var in _ENV_VARS.items():
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            if option == "dry_run":
                values[option] = _parse_dry_run(raw)
            elif option == "serverless":
                values[option] = _parse_flag(option, raw)
            elif option == "trusted_proxies":
                values[option] = tuple(p for p in (s.strip() for s in raw.split(",")) if p)
            elif option == "trust_forwarded_host":
                values[option] = _parse_flag(option, raw)
            else:
                values[option] = raw.strip()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


_OPTION_NAMES = frozenset(f.name for f in fields(CAPIConfig))

_ENV_VARS = {
    "pixel_id": "META_PIXEL_ID",
    "access_token": "META_ACCESS_TOKEN",
    "app_secret": "META_APP_SECRET",
    "test_event_code": "META_TEST_EVENT_CODE",
    "graph_url": "META_GRAPH_URL",
    "api_version": "META_API_VERSION",
    "outbox": "META_OUTBOX",
    "dry_run": "META_DRY_RUN",
    "serverless": "META_SERVERLESS",
    "trusted_proxies": "META_TRUSTED_PROXIES",
    "forwarded_headers": "META_FORWARDED_HEADERS",
    "trust_forwarded_host": "META_TRUST_FORWARDED_HOST",
    "cookie_domain": "META_COOKIE_DOMAIN",
    "default_country": "META_DEFAULT_COUNTRY",
}


def misnamed_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``META_*`` variables that are set but read by no option, each with the variable it is
    closest to (a likely typo: ``META_PIXELID`` for ``META_PIXEL_ID``). Others are left out:
    another tool may own them."""
    env = os.environ if environ is None else environ
    known = set(_ENV_VARS.values())
    found = []
    for name in sorted(env):
        if name.startswith("META_") and name not in known:
            close = get_close_matches(name, known, n=1, cutoff=0.8)
            if close:
                found.append((name, close[0]))
    return found


_REDIS_SCHEMES = ("redis://", "rediss://")


def is_redis_url(outbox: object) -> bool:
    """True when ``outbox`` is a ``redis://`` or ``rediss://`` URL."""
    return isinstance(outbox, str) and outbox[:9].lower().startswith(_REDIS_SCHEMES)


def is_redis_outbox(outbox: object) -> bool:
    """True when ``outbox`` selects the Redis Streams store (a URL or a client)."""
    return outbox is not None and (is_redis_url(outbox) or not isinstance(outbox, str))


def redact_url(url: str) -> str:
    """``url`` without its password (and user), fit for logs and reprs."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"***@{host}" + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _checked_outbox(outbox: object) -> object:
    """Validate ``outbox``: a file path, a Redis URL or a Redis client (ValueError otherwise)."""
    if isinstance(outbox, str):
        text = outbox.strip()
        if not text:
            raise ValueError("outbox [META_OUTBOX]: must not be empty")
        if is_redis_url(text):
            _check_redis_url(text)
        elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
            raise ValueError(
                "outbox [META_OUTBOX]: a URL must start with redis:// or rediss://; "
                "anything else is a SQLite file path"
            )
        return text
    if isinstance(outbox, os.PathLike):
        return os.fspath(outbox)
    if all(callable(getattr(outbox, name, None)) for name in ("xadd", "xreadgroup", "xack")):
        return outbox  # a redis.Redis client (duck-typed: config must not import redis)
    raise ValueError(
        "outbox [META_OUTBOX]: must be a SQLite file path, a redis:// or rediss:// URL, or a "
        "redis.Redis client"
    )


def _check_redis_url(url: str) -> None:
    where = f"outbox [META_OUTBOX]: {redact_url(url)!r}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"{where} is not a valid Redis URL (bad host or port)") from None
    if not parts.hostname:
        raise ValueError(f"{where} names no host (redis://host:6379/0)")
    if port == 0:
        raise ValueError(f"{where}: the port must be from 1 to 65535")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"{where}: the path must be a database number (redis://host:6379/0)")


def option_label(option: str) -> str:
    """An option's name as messages show it: with its environment variable when it has one.

    ``option_label("access_token")`` is ``"access_token [META_ACCESS_TOKEN]"``, so a message
    names the thing a user actually set, whether in code or in the environment.
    """
    var = _ENV_VARS.get(option)
    return f"{option} [{var}]" if var else option


def _invalid(option: str, message: str) -> ValueError:
    """The ValueError for a bad option: ``"pixel_id [META_PIXEL_ID]: <message>"``."""
    return ValueError(f"{option_label(option)}: {message}")


def _parse_dry_run(raw: str) -> bool | str:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    if value == "debug":
        return "debug"
    raise _invalid("dry_run", f"expected true, false or debug, got {raw!r}")


def _parse_flag(option: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise _invalid(option, f"expected true or false, got {raw!r}")


def coerce_sequence(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Accept one string or many; used for options such as ``trusted_proxies``."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)
