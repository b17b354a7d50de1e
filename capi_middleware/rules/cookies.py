"""Meta's first-party cookies: read, validate, mint and render ``_fbc`` and ``_fbp``.

Pure functions; they run on every request, so each keeps its work small and bounded and never
raises on what a visitor sends. The format and the rules are META_CAPI_REFERENCE.md §4:

* ``_fbc`` = ``fb.{subdomain_index}.{creation_time_ms}.{fbclid}``
* ``_fbp`` = ``fb.{subdomain_index}.{creation_time_ms}.{random 0..2147483647}``
* either may carry a fifth segment written by Meta's Parameter Builder: exactly 8 base64url
  characters, or one of the legacy language tokens ``AQ Ag Aw BA BQ Bg``; such values are valid
  and pass through unchanged. Any other fifth segment makes the value malformed.

A value that does not match the format is ignored and never echoed back: every value this module
renders into a ``Set-Cookie`` header was validated first (or minted here).
"""

from __future__ import annotations

import functools
import random
import re
import time
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

from capi_middleware.rules.cookie_domain import cookie_domain_for, is_domain_name, subdomain_index

__all__ = [
    "COOKIE_MAX_AGE",
    "FBC_COOKIE",
    "FBP_COOKIE",
    "CookiePlan",
    "KeptCookies",
    "extract_fbclid",
    "fbc_click_id",
    "is_valid_fbc",
    "is_valid_fbp",
    "keep_cookies",
    "mint_fbc",
    "mint_fbp",
    "plan_cookies",
    "plan_from_kept",
    "render_set_cookie",
    "set_cookie_attributes",
]

FBC_COOKIE = "_fbc"
FBP_COOKIE = "_fbp"
COOKIE_MAX_AGE = 7_776_000  # 90 days, as Meta's pixel and Parameter Builder set them.

MAX_FBCLID_LENGTH = 1000

# The earliest creation time we believe (2010-01-01, before Meta's first-party cookies existed):
# a 10-digit value is seconds, a common bug, and Meta wants milliseconds.
_MIN_CREATION_MS = 1_262_304_000_000
# A browser clock may run ahead of ours (the pixel stamps creation time with the browser's clock);
# a week of slack, so a slightly-off visitor does not get a fresh _fbp on every request.
_FUTURE_SLACK_MS = 7 * 24 * 3600 * 1000
_FBP_RANDOM_MAX = 2_147_483_647

# The click id: RFC 3986 unreserved characters, except "." -- the cookie format is dot-separated
# and Meta's own parser (capi-param-builder) splits on "." and rejects more than five segments, so a
# click id with a dot could not round-trip. Real fbclid values are base64url-like.
_CLICK_ID = rf"[A-Za-z0-9_~-]{{1,{MAX_FBCLID_LENGTH}}}"
_FBCLID_RE = re.compile(_CLICK_ID)
_FBCLID_BYTES_RE = re.compile(_CLICK_ID.encode("ascii"))
# Subdomain index: a small number without leading zeros (eTLD+1 of any real host has < 100 labels).
_INDEX = r"(0|[1-9][0-9]?)"
_CREATED = r"([0-9]{13})"
# Parameter Builder's appendix (§4): exactly 8 base64url characters, or one of the legacy
# 2-character language tokens (any other two characters are not Meta's).
_LEGACY_APPENDIX_TOKENS = ("AQ", "Ag", "Aw", "BA", "BQ", "Bg")
_APPENDIX = rf"(?:\.(?:[A-Za-z0-9_-]{{8}}|{'|'.join(_LEGACY_APPENDIX_TOKENS)}))?"
_FBC_RE = re.compile(rf"fb\.{_INDEX}\.{_CREATED}\.({_CLICK_ID}){_APPENDIX}")
_FBP_RE = re.compile(rf"fb\.{_INDEX}\.{_CREATED}\.(0|[1-9][0-9]{{0,9}}){_APPENDIX}")
_MAX_FBC_LENGTH = 3 + 3 + 14 + 1 + MAX_FBCLID_LENGTH + 9
_MAX_FBP_LENGTH = 3 + 3 + 14 + 11 + 9

# What render_set_cookie accepts: cookie names are RFC 6265 tokens we own; values are the cookie
# formats above (a strict subset of RFC 6265 cookie-octets: no ; , " \ space or controls).
_COOKIE_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_COOKIE_VALUE_RE = re.compile(r"[A-Za-z0-9._~-]{1,2048}")


def _valid_click_id(value: object) -> bool:
    return isinstance(value, str) and _FBCLID_RE.fullmatch(value) is not None


def _decode_fbclid(raw: str) -> str | None:
    """Percent-decode one raw query value and check it is a click id we can carry byte for byte.

    ``+`` is *not* turned into a space: it is not in the click-id charset either way, and a
    value with ``+`` or a space cannot be an fbclid Meta issued, so it is rejected, not altered.
    Invalid percent-escapes stay literal (and fail the charset); invalid UTF-8 fails the charset.
    """
    if "%" not in raw:
        return raw if _FBCLID_RE.fullmatch(raw) else None
    if len(raw) > 3 * MAX_FBCLID_LENGTH:
        return None
    decoded = unquote_to_bytes(raw)
    if _FBCLID_BYTES_RE.fullmatch(decoded) is None:
        return None
    return decoded.decode("ascii")


def _fbclid_in_query(query: str) -> tuple[bool, str | None]:
    """(found, value): whether a non-empty ``fbclid`` parameter is present, and its valid value."""
    if "fbclid" not in query and "%" not in query:
        return False, None
    for part in query.split("&"):
        name, _, raw = part.partition("=")
        if name != "fbclid":
            if "%" not in name or len(name) > 64:
                continue
            if unquote_to_bytes(name) != b"fbclid":
                continue
        if not raw:
            continue  # "?fbclid=" carries nothing: keep looking
        return True, _decode_fbclid(raw)
    return False, None


def extract_fbclid(query_string: str, referer: str | None) -> str | None:
    """The click id from the request's query string, or else from the Referer's.

    Meta: the fbclid is case-sensitive and must be kept byte for byte (a modified one is an
    Events Manager diagnostic). The value is percent-decoded and accepted only when it is made of
    unreserved characters ``[A-Za-z0-9_~-]`` (no ``.``: see ``_CLICK_ID``) and is at most 1000
    characters; anything else returns None, since it could not go into a cookie safely. When the
    query string carries a non-empty ``fbclid`` it decides, even if invalid: the Referer's click id
    belongs to an earlier landing. Never raises.
    """
    try:
        if isinstance(query_string, str) and query_string:
            found, value = _fbclid_in_query(query_string)
            if found:
                return value
        if isinstance(referer, str) and referer:
            start = referer.find("?")
            if start < 0:
                return None
            end = referer.find("#", start)
            query = referer[start + 1 : end if end >= 0 else len(referer)]
            return _fbclid_in_query(query)[1]
    except Exception:  # pragma: no cover - defensive: this runs inside the host app's request
        return None
    return None


# -- validating ---------------------------------------------------------------------------------


def _plausible_creation(created: str, now_ms: int) -> bool:
    return _MIN_CREATION_MS <= int(created) <= now_ms + _FUTURE_SLACK_MS


def _fbc_match(value: object, now_ms: int) -> re.Match[str] | None:
    if not isinstance(value, str) or len(value) > _MAX_FBC_LENGTH:
        return None
    match = _FBC_RE.fullmatch(value)
    if match is None or not _plausible_creation(match[2], now_ms):
        return None
    return match


def _valid_fbp(value: object, now_ms: int) -> bool:
    if not isinstance(value, str) or len(value) > _MAX_FBP_LENGTH:
        return False
    match = _FBP_RE.fullmatch(value)
    return (
        match is not None
        and _plausible_creation(match[2], now_ms)
        and int(match[3]) <= _FBP_RANDOM_MAX
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


def is_valid_fbc(value: str) -> bool:
    """True when ``value`` is a well-formed ``_fbc`` (4 segments, or 5 with Meta's appendix).

    The creation time must be 13-digit milliseconds, not before 2010 and not more than a week
    ahead of this machine's clock.
    """
    return _fbc_match(value, _now_ms()) is not None


def is_valid_fbp(value: str) -> bool:
    """True when ``value`` is a well-formed ``_fbp``: random part 0..2147483647, no leading zero."""
    return _valid_fbp(value, _now_ms())


def fbc_click_id(value: str) -> str | None:
    """The click id (fourth segment) of a valid ``_fbc``, else None."""
    match = _fbc_match(value, _now_ms())
    return match[3] if match is not None else None


# -- minting and rendering ----------------------------------------------------------------------


def _check_index(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 99:
        raise ValueError("subdomain_index: must be an integer from 0 to 99")


def _check_now(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 10**12 <= value < 10**13:
        raise ValueError("now_ms: must be Unix time in milliseconds (13 digits)")


def mint_fbc(fbclid: str, *, subdomain_index: int, now_ms: int) -> str:
    """A new ``_fbc`` value ``fb.{index}.{now_ms}.{fbclid}``; the fbclid is kept byte for byte.

    Raises ValueError on an fbclid that `extract_fbclid` would not have returned (our bug).
    """
    if not _valid_click_id(fbclid):
        raise ValueError("fbclid: not a click id extract_fbclid accepts")
    _check_index(subdomain_index)
    _check_now(now_ms)
    return f"fb.{subdomain_index}.{now_ms}.{fbclid}"


def mint_fbp(*, subdomain_index: int, now_ms: int) -> str:
    """A new ``_fbp`` value ``fb.{index}.{now_ms}.{random 0..2147483647}``, like the pixel's."""
    _check_index(subdomain_index)
    _check_now(now_ms)
    # Not a secret: a browser id with the pixel's own range (31 random bits).
    return f"fb.{subdomain_index}.{now_ms}.{random.getrandbits(31)}"


def render_set_cookie(
    name: str, value: str, *, domain: str | None, secure: bool, max_age: int = COOKIE_MAX_AGE
) -> str:
    """One ``Set-Cookie`` header value for a first-party Meta cookie.

    ``Path=/; Max-Age=...; SameSite=Lax``, ``Domain`` only when given, ``Secure`` when the page is
    https, and never ``HttpOnly``: the pixel's JavaScript must read the cookie (Meta §4). Raises
    ValueError on a name, value, domain or max-age outside the strict charset: callers pass only
    validated or minted values, so this is our bug, never header injection.
    """
    if not isinstance(name, str) or not _COOKIE_NAME_RE.fullmatch(name):
        raise ValueError("render_set_cookie: invalid cookie name")
    if not isinstance(value, str) or not _COOKIE_VALUE_RE.fullmatch(value):
        raise ValueError("render_set_cookie: invalid cookie value")
    return f"{name}={value}{set_cookie_attributes(domain, secure, max_age)}"


def set_cookie_attributes(domain: str | None, secure: bool, max_age: int = COOKIE_MAX_AGE) -> str:
    """The attributes after ``name=value`` in `render_set_cookie`'s header, from ``"; Path=/"``.

    They depend only on the domain and the scheme, so the request path renders a cookie it
    minted or validated as ``f"{name}={value}{attributes}"``. Raises ValueError like
    `render_set_cookie`. Cached (bounded): a site has a handful of cookie domains.
    """
    if domain is not None and not isinstance(domain, str):
        raise ValueError("render_set_cookie: invalid domain")
    if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0:
        raise ValueError("render_set_cookie: max_age must be a non-negative integer")
    return _attributes(domain, bool(secure), max_age)


@functools.lru_cache(maxsize=256)
def _attributes(domain: str | None, secure: bool, max_age: int) -> str:
    # Raising is never cached: an invalid domain is checked again on every call.
    if domain is not None and not is_domain_name(domain):
        raise ValueError("render_set_cookie: invalid domain")
    parts = ["", "Path=/"]
    if domain is not None:
        parts.append(f"Domain={domain}")
    parts.append(f"Max-Age={max_age}")
    parts.append("SameSite=Lax")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


# -- the per-request plan -----------------------------------------------------------------------


class CookiePlan(NamedTuple):
    """What a request's cookies come to.

    Parameters:
        fbc: the ``_fbc`` this request's events use: the visitor's valid one, or one minted now.
        fbp: likewise for ``_fbp``; None when there is none and minting is off.
        minted: ``Set-Cookie`` values for cookies minted now: every response carries them.
        refresh: ``Set-Cookie`` values re-sending the visitor's own valid cookies, so they
            outlive Safari's 7-day cap on script-set cookies: for page loads, where one refresh
            per page view does as much as one per request.
    """

    fbc: str | None
    fbp: str | None
    minted: tuple[str, ...]
    refresh: tuple[str, ...]

    @property
    def set_cookie(self) -> tuple[str, ...]:
        """Every ``Set-Cookie`` value a page load gets: the minted ones, then the refreshed."""
        return self.minted + self.refresh


class KeptCookies(NamedTuple):
    """The visitor's own ``_fbc``/``_fbp``, validated, and how to set them on a response.

    What `keep_cookies` found: it depends only on the host, the scheme and the two raw cookie
    values (a valid cookie stays valid as time passes), so a caller may reuse it for every
    request of a visit that sends the same values.

    Parameters:
        fbc: the visitor's valid ``_fbc``, or None.
        fbc_click_id: its click id (fourth segment), or None.
        fbp: the visitor's valid ``_fbp``, or None.
        subdomain_index: the subdomain index for cookies minted on this host.
        attributes: the Set-Cookie attributes for this host and scheme (`set_cookie_attributes`).
        fbc_header: the Set-Cookie value that re-sends ``fbc``, or None.
        fbp_header: likewise for ``fbp``.
    """

    fbc: str | None
    fbc_click_id: str | None
    fbp: str | None
    subdomain_index: int
    attributes: str
    fbc_header: str | None
    fbp_header: str | None


def keep_cookies(
    *,
    host: str,
    secure: bool,
    fbc: str | None,
    fbp: str | None,
    cookie_domain: str | None,
    now_ms: int,
) -> KeptCookies:
    """Validate the visitor's raw ``_fbc`` and ``_fbp`` and render their re-sent headers.

    Invalid values are dropped here, so they can never be echoed (Meta §4). The first half of
    `plan_cookies`; the second half (minting) depends on the clock and is done per request.
    """
    domain = cookie_domain_for(host, cookie_domain)
    index = subdomain_index(domain, host)
    attributes = set_cookie_attributes(domain, secure)
    fbc_match = _fbc_match(fbc, now_ms)
    kept_fbc = fbc_match.string if fbc_match is not None else None
    kept_fbp = fbp if _valid_fbp(fbp, now_ms) else None
    # Both values matched the cookie formats above, a subset of what render_set_cookie accepts.
    return KeptCookies(
        fbc=kept_fbc,
        fbc_click_id=fbc_match[3] if fbc_match is not None else None,
        fbp=kept_fbp,
        subdomain_index=index,
        attributes=attributes,
        fbc_header=f"{FBC_COOKIE}={kept_fbc}{attributes}" if kept_fbc is not None else None,
        fbp_header=f"{FBP_COOKIE}={kept_fbp}{attributes}" if kept_fbp is not None else None,
    )


def plan_cookies(
    *,
    host: str,
    secure: bool,
    cookies: Mapping[str, str],
    fbclid: str | None,
    cookie_domain: str | None,
    set_fbp: bool,
    now_ms: int,
) -> CookiePlan:
    """Decide ``_fbc`` and ``_fbp`` for one request (call only with consent).

    The visitor's cookies are validated by `keep_cookies`, then `plan_from_kept` applies the
    minting rules; valid cookies are refreshed (`CookiePlan.refresh`).
    """
    kept = keep_cookies(
        host=host,
        secure=secure,
        fbc=cookies.get(FBC_COOKIE),
        fbp=cookies.get(FBP_COOKIE),
        cookie_domain=cookie_domain,
        now_ms=now_ms,
    )
    if fbclid is not None and not _valid_click_id(fbclid):
        fbclid = None  # cannot be carried byte for byte in a cookie: ignored, never altered
    return plan_from_kept(kept, fbclid=fbclid, set_fbp=set_fbp, now_ms=now_ms)


def plan_from_kept(
    kept: KeptCookies,
    *,
    fbclid: str | None,
    set_fbp: bool,
    now_ms: int,
) -> CookiePlan:
    """Meta §4's rules on top of the visitor's validated cookies: the one place they live.

    Mint ``_fbc`` when there is an fbclid and no valid ``_fbc``, or the valid one's click id
    differs; with the same click id keep the cookie and its original creation time. Mint
    ``_fbp`` only when there is no valid one (and ``set_fbp``); never replace a valid one.
    The visitor's still-valid cookies are refreshed (`CookiePlan.refresh`). Invalid cookie
    values were ignored by `keep_cookies`; ``fbclid`` must be a valid click id (`extract_fbclid`
    returns only those).

    A plan that mints nothing depends only on ``kept``: a caller may reuse it for every request
    that brings the same cookies and no fbclid.
    """
    minted: list[str] = []
    refresh: list[str] = []
    fbc = kept.fbc
    if fbclid is not None and kept.fbc_click_id != fbclid:
        fbc = mint_fbc(fbclid, subdomain_index=kept.subdomain_index, now_ms=now_ms)
        minted.append(f"{FBC_COOKIE}={fbc}{kept.attributes}")
    elif kept.fbc_header is not None:
        refresh.append(kept.fbc_header)
    fbp = kept.fbp
    if fbp is None:
        if set_fbp:
            fbp = mint_fbp(subdomain_index=kept.subdomain_index, now_ms=now_ms)
            minted.append(f"{FBP_COOKIE}={fbp}{kept.attributes}")
    elif kept.fbp_header is not None:
        refresh.append(kept.fbp_header)
    return CookiePlan(fbc=fbc, fbp=fbp, minted=tuple(minted), refresh=tuple(refresh))
