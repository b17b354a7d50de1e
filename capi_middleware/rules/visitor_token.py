"""The visitor token: a Visitor's dict form, signed, compressed and kept short, and read back.

`Visitor.to_token` / `Visitor.from_token` are the public way in; this module is their codec and
works on the dict form (`Visitor.to_dict` / `Visitor.from_dict`), which validates every field of
what `read_token` returns. The token is signed (itsdangerous, HMAC-SHA256, timestamped) and
compact, for a payment provider's metadata value (Stripe allows 500 characters per value): a
positional JSON row, deflated with a preset dictionary, base64url. When it would be longer than
``max_length``, the URLs' query strings and fragments go first, then the referrer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
import zlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner

__all__ = ["TOKEN_MAX_AGE", "TOKEN_MAX_LENGTH", "make_token", "read_token"]

TOKEN_MAX_AGE = 7 * 86_400
"""`Visitor.from_token`'s default ``max_age``: Meta takes no event older than 7 days."""
TOKEN_MAX_LENGTH = 500
"""`Visitor.to_token`'s default ``max_length``: Stripe's limit for one metadata value."""

_VERSION = 1
_SALT = "capi-middleware.visitor.v1"
# Tokens longer than this were not made by to_token; they are refused before any work.
_MAX_TOKEN_CHARS = 8192
_MAX_INFLATED = 16_384
# The row's layout (`_pack`): these orders are part of the token's format. The consent is its
# position in _CONSENTS; the match keys fill row[1:7].
_CONSENTS = ("granted", "ldu", "denied")
_MATCH_KEYS = ("client_ip", "user_agent", "fbc", "fbp", "event_source_url", "referrer_url")

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


def make_token(data: Mapping[str, Any], secret: str | bytes, max_length: int | None) -> str:
    """`Visitor.to_token`: ``data`` (a `Visitor.to_dict`) signed now, within ``max_length``.

    Kept within ``max_length`` (None: no limit) by dropping the query strings and fragments of
    the two URLs, then the referrer; raises ValueError when even that is too long.
    """
    signed_at = int(time.time())
    signer = _signer(secret, signed_at)
    candidate = data
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


def read_token(token: str | bytes, secret: str | bytes, max_age: int | None) -> dict[str, Any]:
    """`Visitor.from_token`: the dict a `make_token` signed, after checking signature and age.

    Raises ``ValueError`` saying what is wrong: not a token, a bad signature (tampered, or
    another secret), expired, or a malformed body. The values are not validated here:
    `Visitor.from_dict` does that.
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
    return _unpack(payload, int(signed.timestamp()))


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


def _pack(data: Mapping[str, Any], signed_at: int) -> bytes:
    """JSON list (positional, no keys) -> zlib with the preset dictionary -> base64url.

    ``captured_at`` is kept as seconds before the signature's own timestamp (usually a few
    digits instead of ten).
    """
    row = [
        _VERSION,
        *(data[name] for name in _MATCH_KEYS),
        _CONSENTS.index(data["consent"]),
        data["consent_reason"],
        data["ldu_country"],
        data["ldu_state"],
        signed_at - data["captured_at"],
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


def _without_queries(data: Mapping[str, Any]) -> Mapping[str, Any]:
    return {
        **data,
        "event_source_url": _strip_query(data["event_source_url"]),
        "referrer_url": _strip_query(data["referrer_url"]),
    }


def _without_referrer(data: Mapping[str, Any]) -> Mapping[str, Any]:
    return {**data, "referrer_url": None}
