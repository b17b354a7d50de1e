"""The Set-Cookie values a response gets: Meta's cookie plan, expiry on refusal, and where not.

`apply_plan` puts Meta §4's plan for a request (`plan_now`) onto its context (new ``_fbc`` from
an fbclid, a minted ``_fbp``, the visitor's own cookies re-sent on page loads); `expire_ours`
removes what we set when the visitor refuses consent (issue 10). The adapters leave ours off a
response a shared cache may store (`is_shared_cacheable`) and off a cookie the app sets itself
(`cookies_not_set_by_app`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from capi_middleware.capture.context import RequestContext
from capi_middleware.consent.policies import NO_SIGNAL_REASON
from capi_middleware.rules import cookies as cookie_rules
from capi_middleware.rules.cookie_domain import cookie_domain_for
from capi_middleware.rules.enhancement import EnhancementCookie
from capi_middleware.rules.page_url import hostname, is_navigation, is_raw_navigation

__all__ = [
    "NOT_A_REFUSAL",
    "apply_plan",
    "cookies_not_set_by_app",
    "expire_ours",
    "is_page_load",
    "is_shared_cacheable",
    "plan_now",
]

# Denials that are not the visitor's (or the site's policy's) "no": nothing is expired for them.
NOT_A_REFUSAL = frozenset(
    {NO_SIGNAL_REASON, "policy_error", "capture_error", "disabled", "always_denied"}
)


def apply_plan(ctx: RequestContext, plan: cookie_rules.CookiePlan) -> None:
    """Put a cookie plan (`cookies.plan_from_kept`) onto ``ctx``: its cookies and Set-Cookies.

    Minted cookies go out on any request; the visitor's own valid cookies are refreshed only on
    a document navigation: one refresh per page view extends Safari's 7-day cap on script-set
    cookies as well as one per request would, without a Set-Cookie on every API call and asset
    (`is_page_load`).
    """
    if plan.minted:
        ctx.response_cookies.extend(plan.minted)
    if plan.refresh and is_page_load(ctx):
        ctx.response_cookies.extend(plan.refresh)
    ctx.fbc = plan.fbc
    ctx.fbp = plan.fbp


def plan_now(
    kept: cookie_rules.KeptCookies, fbclid: str | None, set_fbp: bool
) -> cookie_rules.CookiePlan:
    """`cookies.plan_from_kept` at the current time (minting stamps the clock)."""
    return cookie_rules.plan_from_kept(
        kept, fbclid=fbclid, set_fbp=set_fbp, now_ms=int(time.time() * 1000)
    )


def is_page_load(ctx: RequestContext) -> bool:
    """`is_navigation`, reading the raw ASGI header map directly when there is one."""
    raw_map = ctx.raw_headers
    return is_navigation(ctx) if raw_map is None else is_raw_navigation(raw_map)


def expire_ours(
    ctx: RequestContext,
    secure: bool,
    cookie_header: str | None,
    *,
    set_fbp: bool,
    cookie_domain: str | None,
    enhancement: EnhancementCookie | None,
) -> tuple[str, ...]:
    """Set-Cookie values (``Max-Age=0``) that remove what we set, when consent is refused.

    Issue 10: a visitor who had consented and now says no keeps nothing of ours. What we set is
    known from the request alone, with no new tracking: a valid ``_fbc`` (we mint it from
    fbclid and re-send it on every consented page load), a valid ``_fbp`` when we mint ``_fbp``
    on this site (``set_fbp``), and our enhancement cookie, which we only ever set with
    consent. They go out on the next page load; the browser then drops them, so the next
    request carries none and nothing more is said: once. A denial that is no answer (no signal
    yet, a policy error: `NOT_A_REFUSAL`) keeps them.
    """
    names = []
    if ctx.fbc is not None:
        names.append(cookie_rules.FBC_COOKIE)
    if ctx.fbp is not None and set_fbp:
        names.append(cookie_rules.FBP_COOKIE)
    values: list[str] = []
    host = ctx.page_host() if names else None
    if host is not None:
        # The Domain they were set with, or the browser keeps them.
        domain = cookie_domain_for(hostname(host), cookie_domain)
        attributes = cookie_rules.set_cookie_attributes(domain, secure, max_age=0)
        values.extend(f"{name}={attributes}" for name in names)
    if (
        enhancement is not None
        and cookie_header is not None
        and enhancement.cookie_name in cookie_header
        and ctx.cookies.get(enhancement.cookie_name)
    ):
        values.append(enhancement.render_expiry(secure=secure))
    return tuple(values)


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


def cookies_not_set_by_app(ours: list[str], app_set_cookies: Iterable[str]) -> list[str]:
    """Our Set-Cookie values, less those for a cookie the app's own response already sets.

    Adapters append ours after the app's; two Set-Cookie headers for one name (say with
    different Domain attributes) leave the browser with two cookies (issue 10).
    """
    taken = {value.split("=", 1)[0].strip() for value in app_set_cookies}
    return [cookie for cookie in ours if cookie.split("=", 1)[0] not in taken]
