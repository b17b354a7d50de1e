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
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner

from capi_middleware.consent.policies import ConsentDecision
from capi_middleware.rules import client_ip as client_ip_rules
from capi_middleware.rules import cookies as cookie_rules
from capi_middleware.rules.page_url import MAX_URL_CHARS, clean_referrer, clean_user_agent
from capi_middleware.rules.validation import LDU_COUNTRIES, LDU_STATES

__all__ = ["TOKEN_MAX_AGE", "TOKEN_MAX_LENGTH", "Visitor"]

TOKEN_MAX_AGE = 7 * 86_400
"""`Visitor.from_token`'s default ``max_age``: Meta takes no event older than 7 days."""
TOKEN_MAX_LENGTH = 500
"""`Visitor.to_token`'s default ``max_length``: Stripe's limit for one metadata value."""

_VERSION = 1
_SALT = "capi-middleware.visitor.v1"
# Tokens longer than this were not made by to_token; they are refused before any work.
_MAX_TOKEN_CHARS = 8192
_MAX_INFLATED = 16_384
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

# What browsers' user agents, Meta's cookies and shop URLs are made of: zlib finds these in a
# preset dictionary, so a 300-character Facebook in-app user agent costs a few dozen bytes.
_ZDICT = (
    b"https://www.http://fb.1.fb.2.IwAR IwZXh0bgNhZW0BMAABHR"
    b"utm_source=facebook&utm_medium=paid&utm_campaign=&utm_content=&utm_term=&fbclid="
    b"/checkout/cart/products/thank-you?order="
    b"[FBAN/FBIOS;FBAV/;FBBV/;FBDV/iPhone;FBMD/iPhone;FBSN/iOS;FBSV/;FBSS/3;FBID/phone;"
    b"FBLC/en_US;FBOP/5;FBRV/0]"
    b"[FB_IAB/FB4A;FBAV/.0.0.;FBBV/;FBDM/{density=2.625,width=1080,height=2340};FBLC/en_US;"
    b"FBRV/0;FBCR/;FBMF/samsung;FBBD/samsung;FBPN/com.facebook.katana;FBDV/SM-;FBSV/14;FBOP/1;"
    b"FBCA/arm64-v8a:;] [FB_IAB/Orca-Android;FBAV/;] Instagram  Android (34/14; 420dpi; "
    b"1080x2340; samsung; SM-; en_US; Build/UP1A.231005.007; wv) "
    b" Instagram 300.0.0.00.000 Android (33/13; 480dpi; 1080x2400; Google/google; Pixel; "
    b"Mobile/15E148 Version/17.0 Mobile/15E148 Safari/604.1"
    b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    b"(KHTML, like Gecko) "
    b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    b"Version/17.1 Safari/605.1.15"
    b"Mozilla/5.0 (Linux; Android 10; K; wv) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Version/4.0 Chrome/120.0.0.0 Mobile Safari/537.36"
    b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0"
    b'[1,"'
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
        signed_at = int(time.time())
        signer = _signer(secret, signed_at)
        candidate = self
        for trim in (None, _without_queries, _without_referrer):
            if trim is not None:
                candidate = trim(candidate)
            token = signer.sign(_pack(candidate, signed_at)).decode("ascii")
            if max_length is None or len(token) <= max_length:
                return token
        raise ValueError(
            f"token: {len(token)} characters, over max_length={max_length} even without the "
            "URLs' queries and the referrer; store the visitor with to_dict() instead"
        )

    @classmethod
    def from_token(
        cls, token: str | bytes, secret: str | bytes, *, max_age: int | None = TOKEN_MAX_AGE
    ) -> Visitor:
        """The Visitor a `to_token` made, after checking its signature and age.

        ``max_age`` is in seconds (default 7 days, Meta's window for events; None: no limit).
        Raises ``ValueError`` saying what is wrong: not a token, a bad signature (tampered, or
        another secret), expired, or a malformed field (named).
        """
        if isinstance(token, str):
            try:
                raw = token.encode("ascii")
            except UnicodeEncodeError:
                raise ValueError("token: not a visitor token (non-ASCII characters)") from None
        elif isinstance(token, bytes):
            raw = token
        else:
            raise ValueError(f"token: must be a string, not {type(token).__name__}")
        if not raw or len(raw) > _MAX_TOKEN_CHARS:
            raise ValueError("token: not a visitor token (empty or too long)")
        try:
            payload, signed = _signer(secret).unsign(raw, max_age=max_age, return_timestamp=True)
        except SignatureExpired:
            raise ValueError(f"token: expired (older than max_age={max_age} seconds)") from None
        except BadSignature:
            raise ValueError(
                "token: bad signature (tampered, truncated, or signed with another secret)"
            ) from None
        return cls.from_dict(_unpack(payload, int(signed.timestamp())))

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


# -- the token's body ----------------------------------------------------------------------------


class _Signer(TimestampSigner):
    """itsdangerous' TimestampSigner whose timestamp is the one the token's body counts from."""

    signed_at: int | None = None

    def get_timestamp(self) -> int:
        return super().get_timestamp() if self.signed_at is None else self.signed_at


def _signer(secret: str | bytes, signed_at: int | None = None) -> _Signer:
    if not secret:
        raise ValueError("secret: must not be empty")
    signer = _Signer(secret, salt=_SALT, digest_method=_sha256)
    signer.signed_at = signed_at
    return signer


def _sha256(data: bytes = b"") -> Any:
    return hashlib.sha256(data)


def _pack(visitor: Visitor, signed_at: int) -> bytes:
    """JSON list (positional, no keys) -> zlib with the preset dictionary -> base64url.

    ``captured_at`` is kept as seconds before the signature's own timestamp (usually a few
    digits instead of ten).
    """
    row = [
        _VERSION,
        visitor.client_ip,
        visitor.user_agent,
        visitor.fbc,
        visitor.fbp,
        visitor.event_source_url,
        visitor.referrer_url,
        _CONSENTS.index(_consent_name(visitor.consent)),
        visitor.consent.reason,
        visitor.ldu_country,
        visitor.ldu_state,
        signed_at - visitor.captured_at,
    ]
    text = json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _ZDICT)
    packed = packer.compress(text) + packer.flush()
    return base64.urlsafe_b64encode(packed).rstrip(b"=")


def _unpack(payload: bytes, signed_at: int) -> dict[str, Any]:
    """`_pack` undone, bounded; the values are validated by `Visitor.from_dict` afterwards."""
    try:
        packed = base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4))
        unpacker = zlib.decompressobj(-15, _ZDICT)
        text = unpacker.decompress(packed, _MAX_INFLATED)
        if unpacker.unconsumed_tail or not unpacker.eof:
            raise ValueError("truncated or too large")
        row = json.loads(text.decode("utf-8"))
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise ValueError(f"token: malformed body ({type(exc).__name__})") from None
    if not isinstance(row, list) or len(row) != 12 or row[0] != _VERSION:
        raise ValueError("token: malformed body (not a version 1 visitor)")
    consent_index = row[7]
    if not isinstance(consent_index, int) or not 0 <= consent_index < len(_CONSENTS):
        raise ValueError("consent: malformed in token")
    return {
        "version": row[0],
        **dict(zip(_MATCH_KEYS, row[1:7], strict=False)),
        "consent": _CONSENTS[consent_index],
        "consent_reason": row[8],
        "ldu_country": row[9],
        "ldu_state": row[10],
        "captured_at": signed_at - row[11] if _is_int(row[11]) else row[11],
    }


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strip_query(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _without_queries(visitor: Visitor) -> Visitor:
    return _replace(
        visitor,
        event_source_url=_strip_query(visitor.event_source_url),
        referrer_url=_strip_query(visitor.referrer_url),
    )


def _without_referrer(visitor: Visitor) -> Visitor:
    return _replace(visitor, referrer_url=None)


def _replace(visitor: Visitor, **changes: Any) -> Visitor:
    return replace(visitor, **changes)
