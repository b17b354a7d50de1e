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
import ipaddress
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import unquote_to_bytes

__all__ = [
    "COOKIE_MAX_AGE",
    "FBC_COOKIE",
    "FBP_COOKIE",
    "CookiePlan",
    "KeptCookies",
    "cookie_domain_for",
    "extract_fbclid",
    "fbc_click_id",
    "find_cookies",
    "is_valid_fbc",
    "is_valid_fbp",
    "keep_cookies",
    "mint_fbc",
    "mint_fbp",
    "parse_cookie_header",
    "plan_cookies",
    "plan_from_kept",
    "render_set_cookie",
    "set_cookie_attributes",
    "subdomain_index",
]

FBC_COOKIE = "_fbc"
FBP_COOKIE = "_fbp"
COOKIE_MAX_AGE = 7_776_000  # 90 days, as Meta's pixel and Parameter Builder set them.

MAX_FBCLID_LENGTH = 1000
# Work caps for what a visitor controls. Browsers send at most ~4 KB per cookie and servers cap
# a header line at 8-16 KB; past these we stop looking rather than spend time on a hostile header.
MAX_COOKIE_HEADER = 32 * 1024
MAX_COOKIE_PAIRS = 300

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
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_LABEL_RE = re.compile(_LABEL)
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")


# -- reading ------------------------------------------------------------------------------------


def parse_cookie_header(header: str) -> dict[str, str]:
    """Parse a ``Cookie`` request header into ``{name: value}``.

    Tolerant like Starlette's ``cookie_parser`` (split on ``;``, a chunk without ``=`` is a value
    with an empty name, surrounding whitespace and one pair of double quotes are stripped), but the
    *first* occurrence of a name wins: browsers send the most specific (longest path, then oldest)
    cookie first, which is the one the page's own JavaScript reads. Never raises; at most
    `MAX_COOKIE_HEADER` characters and `MAX_COOKIE_PAIRS` pairs are looked at.
    """
    if not isinstance(header, str) or not header:
        return {}
    if len(header) > MAX_COOKIE_HEADER:
        # Cut at a separator so no value is read truncated (a cut _fbp could still look valid).
        cut = header.rfind(";", 0, MAX_COOKIE_HEADER)
        header = header[:cut] if cut > 0 else ""
    cookies: dict[str, str] = {}
    for chunk in header.split(";", MAX_COOKIE_PAIRS)[:MAX_COOKIE_PAIRS]:
        name, equals, value = chunk.partition("=")
        if not equals:
            name, value = "", chunk
        name = name.strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if (name or value) and name not in cookies:
            cookies[name] = value
    return cookies


def find_cookies(header: str, names: Sequence[str]) -> dict[str, str] | None:
    """``parse_cookie_header(header)`` restricted to ``names``, found with ``str.find``.

    Capture needs three to five cookies of a header that often holds thirty (analytics, session,
    A/B tests); building the whole dict in Python is most of the cost of a visitor's first
    request. Same rules as `parse_cookie_header` (first occurrence wins, whitespace and one pair
    of double quotes stripped; tests/test_cookies.py compares the two on generated headers).
    Returns None when the header is past `parse_cookie_header`'s caps: the caller parses it.
    """
    if len(header) > MAX_COOKIE_HEADER or header.count(";") >= MAX_COOKIE_PAIRS:
        return None
    found: dict[str, str] = {}
    for name in names:
        # A name parse_cookie_header can never produce (empty, padded, with "=" or ";") is skipped.
        if not name or name != name.strip() or "=" in name or ";" in name:
            continue
        at = header.find(name)
        while at >= 0:
            after = at + len(name)
            # The chunk is what lies between two ";"; its name is what precedes its first "=".
            chunk_start = header.rfind(";", 0, at) + 1
            chunk_end = header.find(";", after)
            if chunk_end < 0:
                chunk_end = len(header)
            equals = header.find("=", after, chunk_end)
            if (
                equals >= 0
                and not header[chunk_start:at].strip()
                and not header[after:equals].strip()
            ):
                value = header[equals + 1 : chunk_end].strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                found[name] = value
                break  # the first occurrence wins
            at = header.find(name, after)
    return found


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


# -- cookie domain ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _public_suffix_list() -> Any:
    # Built once, lazily (~40 ms): the package bundles the full list, ICANN and private sections.
    # Browsers apply the private section too (github.io, appspot.com), so a cookie for
    # example.github.io must not be set on github.io.
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def _host_name(host: str) -> tuple[str, bool] | None:
    """(lowercase host name without port, is_ip) for a Host header value, or None for junk."""
    if not isinstance(host, str):
        return None
    host = host.strip().lower()
    if not host or len(host) > 260:
        return None
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isascii() and rest[1:].isdigit())):
            return None
        return (host[1:end], True)
    if host.count(":") > 1:  # an unbracketed IPv6 literal
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        return (host, True)
    name, _, port = host.partition(":")
    if port and not (port.isascii() and port.isdigit()):
        return None
    if not name or len(name) > 253:
        return None
    labels = name.split(".")
    # A numeric last label makes a browser parse the whole host as IPv4 (WHATWG URL: "1.2.3"
    # is 1.2.0.3), so treat it as an IP host.
    if labels[-1].isascii() and labels[-1].isdigit():
        return (name, True)
    if not all(_LABEL_RE.fullmatch(label) for label in labels):
        return None  # junk, non-ASCII (not punycode), or a trailing dot: host-only is safest
    return (name, False)


def _registrable_domain(name: str) -> str | None:
    if "." not in name:
        return None  # localhost and other single-label hosts
    result = _public_suffix_list().privatesuffix(name)
    return result if isinstance(result, str) else None


@functools.lru_cache(maxsize=1024)
def _cookie_domain_cached(host: str, override: str | None) -> str | None:
    parsed = _host_name(host)
    if parsed is None or parsed[1]:
        return None
    name = parsed[0]
    if override is not None:
        override = override.strip().lstrip(".").lower()
        if not _DOMAIN_RE.fullmatch(override):
            return None
        if name != override and not name.endswith("." + override):
            # A Domain the request's host is not inside would be rejected by the browser.
            return None
        # Nor will a browser accept a public suffix (co.uk, github.io) as Domain.
        return override if _registrable_domain(override) is not None else None
    return _registrable_domain(name)


def cookie_domain_for(host: str, override: str | None) -> str | None:
    """The ``Domain`` attribute for ``_fbc``/``_fbp`` on a request to ``host``; None = host-only.

    Default: the registrable domain (eTLD+1) by the Public Suffix List, ICANN and private
    sections: ``www.example.co.uk`` -> ``example.co.uk``, never ``co.uk``. None for localhost and
    other single-label hosts, IP hosts, hosts that are themselves a public suffix, and junk.
    ``override`` (the ``cookie_domain`` option) wins when the host is that domain or inside it;
    otherwise the cookie is host-only. The port is ignored. Cached per host (bounded LRU).
    """
    if not isinstance(host, str) or len(host) > 260:
        return None
    try:
        return _cookie_domain_cached(host, override)
    except Exception:  # pragma: no cover - defensive: this runs inside the host app's request
        return None


def subdomain_index(domain: str | None, host: str) -> int:
    """The second segment of a minted cookie: labels in the cookie's domain minus 1.

    ``com`` = 0, ``example.com`` = 1, ``www.example.com`` = 2 (Meta). For a host-only cookie
    (``domain`` None) the cookie's domain is the host itself, so its labels count; an IP host, or a
    host we cannot read, is 0 -- as Meta's capi-param-builder does for IP hosts, and as its count
    gives for ``localhost``.
    """
    if domain:
        return domain.count(".")
    parsed = _host_name(host)
    if parsed is None or parsed[1]:
        return 0
    return min(parsed[0].count("."), 99)


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
    if domain is not None and not _DOMAIN_RE.fullmatch(domain):
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
        set_cookie: ``Set-Cookie`` header values to append to the response.
    """

    fbc: str | None
    fbp: str | None
    set_cookie: tuple[str, ...]


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
    # Positional, in the fields' order (fbc, fbc_click_id, fbp, subdomain_index, attributes,
    # fbc_header, fbp_header): a NamedTuple built from keywords costs twice as much.
    return KeptCookies(
        kept_fbc,
        fbc_match[3] if fbc_match is not None else None,
        kept_fbp,
        index,
        attributes,
        f"{FBC_COOKIE}={kept_fbc}{attributes}" if kept_fbc is not None else None,
        f"{FBP_COOKIE}={kept_fbp}{attributes}" if kept_fbp is not None else None,
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
    minting rules; valid cookies are re-sent (see `plan_from_kept`'s ``resend``).
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
    resend: Callable[[], bool] | None = None,
) -> CookiePlan:
    """Meta §4's rules on top of the visitor's validated cookies: the one place they live.

    Mint ``_fbc`` when there is an fbclid and no valid ``_fbc``, or the valid one's click id
    differs; with the same click id keep the cookie and its original creation time. Mint
    ``_fbp`` only when there is no valid one (and ``set_fbp``); never replace a valid one.
    Minting happens on any request. The visitor's still-valid cookies are re-sent, so they
    outlive Safari's 7-day cap on script-set cookies, when ``resend()`` says so (called at most
    once; None means always). Invalid cookie values were ignored by `keep_cookies`; ``fbclid``
    must be a valid click id (`extract_fbclid` returns only those).
    """
    headers: list[str] = []
    wanted: bool | None = None if resend is not None else True
    fbc = kept.fbc
    if fbclid is not None and kept.fbc_click_id != fbclid:
        fbc = mint_fbc(fbclid, subdomain_index=kept.subdomain_index, now_ms=now_ms)
        headers.append(f"{FBC_COOKIE}={fbc}{kept.attributes}")
    elif kept.fbc_header is not None:
        if wanted is None:
            wanted = resend is None or bool(resend())
        if wanted:
            headers.append(kept.fbc_header)
    fbp = kept.fbp
    if fbp is None:
        if set_fbp:
            fbp = mint_fbp(subdomain_index=kept.subdomain_index, now_ms=now_ms)
            headers.append(f"{FBP_COOKIE}={fbp}{kept.attributes}")
    elif kept.fbp_header is not None:
        if wanted is None:
            wanted = resend is None or bool(resend())
        if wanted:
            headers.append(kept.fbp_header)
    return CookiePlan(fbc, fbp, tuple(headers))
