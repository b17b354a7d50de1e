"""The built-in readers, one per consent signal found in the wild.

`site_cookie` (a site's own banner cookie), `google_consent_mode` (Consent Mode v2
``ad_storage`` + ``ad_user_data``, relayed in a cookie or a header) and `tcf_v2` (the IAB TCF v2
``euconsent-v2`` string). Each returns a policy that answers granted, denied or ``None`` (no
opinion), tolerates junk, never raises, and does bounded work whatever the size of the value it
is handed. Each declares what it reads (`declare_reads`), so its answer may be reused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from urllib.parse import unquote

from capi_middleware.consent.decision import (
    ConsentDecision,
    ConsentPolicy,
    ConsentSignals,
    declare_reads,
)
from capi_middleware.rules.tcf import parse_tc_string

__all__ = ["google_consent_mode", "site_cookie", "tcf_v2"]

# Browsers keep at most ~4 KB per cookie; anything longer did not come from a consent banner,
# so it is treated as absent instead of being parsed.
_MAX_COOKIE_CHARS = 4096
_MAX_PAIRS = 64


# -- cookie value parsing ------------------------------------------------------------


def _cookie_text(
    signals: ConsentSignals, name: str, *, limit: int = _MAX_COOKIE_CHARS
) -> str | None:
    """The cookie's value, unquoted and percent-decoded; None when absent, empty or oversized."""
    raw = signals.cookies.get(name)
    if not isinstance(raw, str) or not raw or len(raw) > limit:
        return None
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':  # RFC 6265 allows a quoted value
        text = text[1:-1]
    if "%" in text:  # banners often encodeURIComponent() their value (Cookiebot does)
        text = unquote(text, errors="replace")
    return text.strip() or None


def _parse_pairs(text: str) -> dict[str, object]:
    """Read ``{"k": v}`` JSON or ``k:v,k=v&k:v`` pairs into a dict; junk gives ``{}``.

    The pair form also reads JS-object-like values such as Cookiebot's
    ``{necessary:true,marketing:false,method:'explicit'}``.
    """
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # deeply nested junk must not escape either
            data = None
        if isinstance(data, dict):
            return {str(k): v for k, v in list(data.items())[:_MAX_PAIRS]}
        text = text.strip("{}")
    pairs: dict[str, object] = {}
    for sep in ("&", "|", ";"):
        text = text.replace(sep, ",")
    for item in text.split(",", _MAX_PAIRS)[:_MAX_PAIRS]:
        cut = min((i for i in (item.find(":"), item.find("=")) if i > 0), default=-1)
        if cut < 0:
            continue
        key = item[:cut].strip().strip("'\"")
        value = item[cut + 1 :].strip().strip("'\"")
        if key and key not in pairs:
            pairs[key] = value
    return pairs


def _lookup(pairs: Mapping[str, object], key: str) -> object:
    if key in pairs:
        return pairs[key]
    folded = key.casefold()
    for k, v in pairs.items():
        if k.casefold() == folded:
            return v
    return None


def _word_set(parameter: str, words: Iterable[str]) -> frozenset[str]:
    if isinstance(words, str):
        raise ValueError(f"{parameter}: must be a tuple of strings, not one string")
    out = set()
    for w in words:
        if not isinstance(w, str) or not w.strip():
            raise ValueError(f"{parameter}: every entry must be a non-empty string")
        out.add(w.strip().casefold())
    return frozenset(out)


def _check_name(parameter: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{parameter}: must be a non-empty cookie or header name")


# -- site cookie ----------------------------------------------------------------------------

_SITE_GRANTED = ("1", "true", "yes", "granted", "allow", "all", "accept", "accepted")
_SITE_DENIED = (
    "0",
    "false",
    "no",
    "denied",
    "deny",
    "reject",
    "rejected",
    "decline",
    "declined",
    "none",
    "necessary",
    "essential",
)


def site_cookie(
    name: str = "cookie_consent",
    granted: Iterable[str] = _SITE_GRANTED,
    denied: Iterable[str] = _SITE_DENIED,
    *,
    category: str | None = None,
) -> ConsentPolicy:
    """Read the site's own consent cookie.

    Parameters:
        name: the cookie's name.
        granted: values (any case) that mean "yes, marketing/ads allowed".
        denied: values (any case) that mean "no".
        category: when the cookie holds several categories, as JSON (``{"marketing": true}``)
            or pairs (``analytics:1,marketing:0``, Cookiebot's ``{marketing:true,...}``), the
            key to read. JSON ``true``/``false`` are understood too.

    No cookie, or a value in neither list → ``None`` (no opinion). Reason ``"site_cookie"``.
    """
    _check_name("site_cookie name", name)
    yes = _word_set("site_cookie granted", granted)
    no = _word_set("site_cookie denied", denied)
    if yes & no:
        raise ValueError("site_cookie: a value cannot be in both granted and denied")
    if category is not None:
        _check_name("site_cookie category", category)
    grant = ConsentDecision(granted=True, reason="site_cookie")
    deny = ConsentDecision(granted=False, reason="site_cookie")

    def site_cookie_policy(signals: ConsentSignals) -> ConsentDecision | None:
        text = _cookie_text(signals, name)
        if text is None:
            return None
        value: object = text
        if category is not None:
            value = _lookup(_parse_pairs(text), category)
        if isinstance(value, bool):
            return grant if value else deny
        if isinstance(value, int):
            value = str(value)
        if not isinstance(value, str):
            return None
        word = value.strip().casefold()
        if word in yes:
            return grant
        if word in no:
            return deny
        return None

    return declare_reads(site_cookie_policy, cookies=(name,))


# -- Google Consent Mode v2 -----------------------------------------------------------------


def _consent_mode_state(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().casefold()
        if word == "granted":
            return True
        if word == "denied":
            return False
    return None


def google_consent_mode(
    cookie: str | None = "capi_consent_mode", header: str | None = None
) -> ConsentPolicy:
    """Google Consent Mode v2, relayed to the server by the page.

    Browsers do not send Consent Mode state to your server, so the page writes it to a cookie
    when it calls ``gtag('consent', 'update', ...)`` (docs/consent.md has the one-liner).
    Accepted values: ``ad_storage=granted&ad_user_data=granted`` (also ``,`` or ``|`` between
    pairs, ``:`` for ``=``), or JSON ``{"ad_storage": "granted", "ad_user_data": "granted"}``.

    Parameters:
        cookie: the cookie to read, or None.
        header: a request header carrying the same format (for ``fetch`` calls), or None.
            The cookie wins when both are present.

    Both ``ad_storage`` and ``ad_user_data`` granted → granted; either denied → denied;
    otherwise ``None``. Reason ``"consent_mode"``.
    """
    if cookie is None and header is None:
        raise ValueError("google_consent_mode: give a cookie name, a header name, or both")
    if cookie is not None:
        _check_name("google_consent_mode cookie", cookie)
    if header is not None:
        _check_name("google_consent_mode header", header)
    grant = ConsentDecision(granted=True, reason="consent_mode")
    deny = ConsentDecision(granted=False, reason="consent_mode")

    def read(signals: ConsentSignals) -> str | None:
        if cookie is not None:
            text = _cookie_text(signals, cookie)
            if text is not None:
                return text
        if header is not None:
            raw = signals.header(header)
            if isinstance(raw, str) and 0 < len(raw) <= _MAX_COOKIE_CHARS:
                return unquote(raw.strip(), errors="replace") if "%" in raw else raw.strip()
        return None

    def google_consent_mode_policy(signals: ConsentSignals) -> ConsentDecision | None:
        text = read(signals)
        if not text:
            return None
        pairs = _parse_pairs(text)
        storage = _consent_mode_state(_lookup(pairs, "ad_storage"))
        user_data = _consent_mode_state(_lookup(pairs, "ad_user_data"))
        if storage is False or user_data is False:
            return deny
        if storage and user_data:
            return grant
        return None

    return declare_reads(
        google_consent_mode_policy,
        cookies=(cookie,) if cookie is not None else (),
        headers=(header,) if header is not None else (),
    )


# -- IAB TCF v2 (the decoder lives in capi_middleware.rules.tcf) -------------------------------


def tcf_v2(
    cookie: str = "euconsent-v2",
    purposes: Iterable[int] = (1,),
    vendor_id: int | None = None,
) -> ConsentPolicy:
    """Read the IAB TCF v2 TC string a CMP stores in a cookie.

    Parameters:
        cookie: the cookie holding the TC string (``euconsent-v2`` by convention).
        purposes: TCF purpose ids that must all have consent (1 = store and/or access
            information on a device, which Meta's cookies need; add 7 for ad measurement...).
        vendor_id: a Global Vendor List id that must have consent too, or None.

    All required purposes (and the vendor) consented → granted; otherwise denied; no cookie or
    a string that does not decode → ``None``. Reason ``"tcf_v2"``.
    """
    _check_name("tcf_v2 cookie", cookie)
    required = tuple(purposes) if not isinstance(purposes, int) else (purposes,)
    if not required or any(
        isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 24 for p in required
    ):
        raise ValueError("tcf_v2 purposes: must be one or more TCF purpose ids from 1 to 24")
    if vendor_id is not None and (
        isinstance(vendor_id, bool) or not isinstance(vendor_id, int) or not 1 <= vendor_id <= 65535
    ):
        raise ValueError("tcf_v2 vendor_id: must be a Global Vendor List id from 1 to 65535")
    grant = ConsentDecision(granted=True, reason="tcf_v2")
    deny = ConsentDecision(granted=False, reason="tcf_v2")

    def tcf_v2_policy(signals: ConsentSignals) -> ConsentDecision | None:
        raw = signals.cookies.get(cookie)
        if not isinstance(raw, str) or not raw:
            return None
        tc = parse_tc_string(raw.strip().strip('"'))
        if tc is None:
            return None
        if not all(p in tc.purposes_consent for p in required):
            return deny
        if vendor_id is not None and not tc.has_vendor_consent(vendor_id):
            return deny
        return grant

    return declare_reads(tcf_v2_policy, cookies=(cookie,))
