"""`Visitor`: one request's match context and consent, as a value you can store and sign.

A conversion is often confirmed outside the visitor's own request: a payment provider's webhook
(whose IP and user agent are the provider's), a background job, a nightly script. ``ctx.visitor()``
takes what Meta matches on from the visitor's request (IP, user agent, ``_fbc``, ``_fbp``, page
URL, referrer) with the consent decision; the webhook or job sends the event with it
(``client.track(..., visitor=v)`` or ``ctx.track(..., visitor=v)``).

Two stored forms, both validated on the way back in (a `ValueError` names the field):

- `Visitor.to_dict` / `Visitor.from_dict`: JSON-safe, for a database row next to the order;
- `Visitor.to_token` / `Visitor.from_token`: signed (itsdangerous, HMAC-SHA256, timestamped) and
  compact, for a payment provider's metadata value (Stripe allows 500 characters per value).

A visitor whose consent was denied keeps the denial and none of the match keys: there is nothing
to send, so nothing personal is stored.

This module holds the value: its fields, their checks and the dict form. The token's codec
(signing, compression, shortening) is `capi_middleware.rules.visitor_token`, which works on the
dict form; `to_token` and `from_token` call it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from capi_middleware.consent.policies import ConsentDecision
from capi_middleware.rules import client_ip as client_ip_rules
from capi_middleware.rules import cookies as cookie_rules
from capi_middleware.rules.page_url import MAX_URL_CHARS, clean_referrer, clean_user_agent
from capi_middleware.rules.validation import LDU_COUNTRIES, LDU_STATES
from capi_middleware.rules.visitor_token import (
    TOKEN_MAX_AGE,
    TOKEN_MAX_LENGTH,
    make_token,
    read_token,
)

__all__ = ["TOKEN_MAX_AGE", "TOKEN_MAX_LENGTH", "Visitor"]

_VERSION = 1
_REASON = re.compile(r"[A-Za-z0-9_.:+-]{0,64}")
# A day's slack for clocks that disagree between the web host and the worker.
_FUTURE_SLACK = 86_400
_EPOCH_2010 = 1_262_304_000
_CONSENTS = ("granted", "ldu", "denied")
_FIELDS = (
    "client_ip",
    "user_agent",
    "fbc",
    "fbp",
    "event_source_url",
    "referrer_url",
    "consent",
    "consent_reason",
    "ldu_country",
    "ldu_state",
    "captured_at",
)

_DENIED = ConsentDecision(granted=False, reason="denied")


@dataclass(frozen=True)
class Visitor:
    """A request's match context and consent decision, as a frozen, validated value.

    Get one with ``ctx.visitor()`` in the visitor's request; store it (`to_dict`, `to_token`)
    with the order; send the later event with it (``client.track(..., visitor=v)``). Every
    field is validated when a Visitor is built, so nothing unvalidated reaches Meta.

    Parameters:
        client_ip: the visitor's public IP (canonical form), or None.
        user_agent: the browser's User-Agent, or None.
        fbc: a valid ``_fbc`` click cookie, or None.
        fbp: a valid ``_fbp`` browser cookie, or None.
        event_source_url: the page's http(s) URL, or None.
        referrer_url: the page's referrer, an http(s) URL, or None.
        consent: the request's `ConsentDecision`; a denied visitor sends nothing.
        captured_at: when the visitor was captured (Unix seconds).
        ldu_country: Limited Data Use country (0 = Meta geolocates, 1 = US), with LDU.
        ldu_state: Limited Data Use state (0 = Meta geolocates, 1000 = California), with LDU.
    """

    client_ip: str | None = None
    user_agent: str | None = None
    fbc: str | None = None
    fbp: str | None = None
    event_source_url: str | None = None
    referrer_url: str | None = None
    consent: ConsentDecision = _DENIED
    captured_at: int = 0
    ldu_country: int = 0
    ldu_state: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name, check in _CHECKS.items():
            value = getattr(self, name)
            if value is not None:
                set_(self, name, check(name, value))
        consent = self.consent
        if not isinstance(consent, ConsentDecision):
            raise ValueError("consent: must be a ConsentDecision")
        _reason("consent_reason", consent.reason)
        if not consent.granted and any(getattr(self, name) is not None for name in _MATCH_KEYS):
            # A denied visitor carries nothing personal: there is nothing it may send.
            for name in _MATCH_KEYS:
                set_(self, name, None)
        set_(self, "captured_at", _captured_at("captured_at", self.captured_at))
        for name, allowed in (("ldu_country", LDU_COUNTRIES), ("ldu_state", LDU_STATES)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
                raise ValueError(f"{name}: must be one of {sorted(allowed)}")

    def __repr__(self) -> str:
        # IPs, user agents and click ids identify a person: show only which are present.
        present = [name for name in _MATCH_KEYS if getattr(self, name) is not None]
        return (
            f"Visitor(present={present}, consent={_consent_name(self.consent)!r}, "
            f"captured_at={self.captured_at})"
        )

    # -- the dict form ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (str, int and None values); `from_dict` reads it back."""
        return {
            "version": _VERSION,
            "client_ip": self.client_ip,
            "user_agent": self.user_agent,
            "fbc": self.fbc,
            "fbp": self.fbp,
            "event_source_url": self.event_source_url,
            "referrer_url": self.referrer_url,
            "consent": _consent_name(self.consent),
            "consent_reason": self.consent.reason,
            "ldu_country": self.ldu_country,
            "ldu_state": self.ldu_state,
            "captured_at": self.captured_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Visitor:
        """A Visitor from `to_dict`'s output, every field validated.

        Raises ``ValueError`` naming the field for a missing, unknown, mistyped or malformed
        one (a tampered row, an old format, a hand-made dict).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"visitor: must be a mapping, not {type(data).__name__}")
        version = data.get("version", _VERSION)
        if version != _VERSION:
            raise ValueError(f"version: unsupported visitor format {version!r}")
        unknown = sorted(str(k) for k in data if k not in _FIELDS and k != "version")
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown visitor field")
        missing = [name for name in ("consent", "captured_at") if name not in data]
        if missing:
            raise ValueError(f"{missing[0]}: missing")
        consent = data["consent"]
        if consent not in _CONSENTS:
            raise ValueError(f"consent: must be one of {', '.join(_CONSENTS)}")
        reason = data.get("consent_reason", consent)
        if not isinstance(reason, str):
            raise ValueError("consent_reason: must be a string")
        decision = ConsentDecision(
            granted=consent != "denied",
            ldu=consent == "ldu",
            reason=_reason("consent_reason", reason),
        )
        values = {name: data.get(name) for name in _MATCH_KEYS}
        return cls(
            **values,
            consent=decision,
            captured_at=data["captured_at"],
            ldu_country=data.get("ldu_country", 0),
            ldu_state=data.get("ldu_state", 0),
        )

    # -- the signed token ---------------------------------------------------------------------

    def to_token(self, secret: str | bytes, *, max_length: int | None = TOKEN_MAX_LENGTH) -> str:
        """A compact signed token (URL-safe ASCII) that `from_token` verifies and reads back.

        Signed with HMAC-SHA256 under ``secret`` and timestamped; the values are compressed, not
        encrypted (the token holds nothing the browser did not send, but keep it server-side:
        payment metadata, not a URL). When the token would be longer than ``max_length``
        (default 500, Stripe's limit per metadata value), the query strings and fragments of
        the two URLs go first, then the referrer; a token still too long raises ValueError.
        ``max_length=None`` keeps everything.
        """
        return make_token(self.to_dict(), secret, max_length)

    @classmethod
    def from_token(
        cls, token: str | bytes, secret: str | bytes, *, max_age: int | None = TOKEN_MAX_AGE
    ) -> Visitor:
        """The Visitor a `to_token` made, after checking its signature and age.

        ``max_age`` is in seconds (default 7 days, Meta's window for events; None: no limit).
        Raises ``ValueError`` saying what is wrong: not a token, a bad signature (tampered, or
        another secret), expired, or a malformed field (named).
        """
        return cls.from_dict(read_token(token, secret, max_age))

    @classmethod
    def capture(cls, source: Any, *, now: float | None = None) -> Visitor:
        """A Visitor from anything with a RequestContext's attributes (``ctx.visitor()``).

        A value that does not pass validation is left out (None) instead of raising.
        """
        decision = source.consent
        if not isinstance(decision, ConsentDecision):
            decision = _DENIED
        values: dict[str, Any] = {}
        if decision.granted:
            for name in _MATCH_KEYS:
                value = getattr(source, name)
                if value is not None:
                    try:
                        values[name] = _CHECKS[name](name, value)
                    except ValueError:
                        continue
        if not _REASON.fullmatch(decision.reason or ""):
            decision = ConsentDecision(decision.granted, decision.ldu, "policy")
        return cls(
            **values,
            consent=decision,
            captured_at=int(time.time() if now is None else now),
            ldu_country=getattr(source, "ldu_country", 0),
            ldu_state=getattr(source, "ldu_state", 0),
        )


# -- field checks --------------------------------------------------------------------------------

_MATCH_KEYS = ("client_ip", "user_agent", "fbc", "fbp", "event_source_url", "referrer_url")


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name}: must be a string or None, not {type(value).__name__}")
    return value


def _ip(name: str, value: Any) -> str:
    ip = client_ip_rules.sendable_ip(_text(name, value))
    if ip is None:
        raise ValueError(f"{name}: not a public IP address")
    return ip


def _user_agent(name: str, value: Any) -> str:
    text = _text(name, value)
    if clean_user_agent(text) != text:
        raise ValueError(f"{name}: empty, longer than 1024 characters, or has control characters")
    return text


def _fbc(name: str, value: Any) -> str:
    if not cookie_rules.is_valid_fbc(_text(name, value)):
        raise ValueError(f"{name}: not a valid _fbc value (fb.<index>.<ms>.<click id>)")
    return value  # type: ignore[no-any-return]


def _fbp(name: str, value: Any) -> str:
    if not cookie_rules.is_valid_fbp(_text(name, value)):
        raise ValueError(f"{name}: not a valid _fbp value (fb.<index>.<ms>.<random>)")
    return value  # type: ignore[no-any-return]


def _url(name: str, value: Any) -> str:
    text = _text(name, value)
    if len(text) > MAX_URL_CHARS or clean_referrer(text) != text:
        raise ValueError(f"{name}: must be an http(s) URL of visible ASCII, at most 4096 chars")
    return text


_CHECKS: dict[str, Callable[[str, Any], str]] = {
    "client_ip": _ip,
    "user_agent": _user_agent,
    "fbc": _fbc,
    "fbp": _fbp,
    "event_source_url": _url,
    "referrer_url": _url,
}


def _reason(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _REASON.fullmatch(value):
        raise ValueError(f"{name}: at most 64 letters, digits or _.:+-")
    return value


def _captured_at(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: must be Unix seconds (an integer)")
    seconds = int(value)
    if seconds == 0:
        return seconds  # a visitor made by hand, not captured from a request
    if not _EPOCH_2010 <= seconds <= time.time() + _FUTURE_SLACK:
        raise ValueError(f"{name}: not a plausible time (before 2010 or in the future)")
    return seconds


def _consent_name(decision: ConsentDecision) -> str:
    if not decision.granted:
        return "denied"
    return "ldu" if decision.ldu else "granted"
