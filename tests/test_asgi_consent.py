"""Every consent path through CAPIMiddleware: cookies and events only with consent, LDU with GPC,
policies that answer bool / decision / None / raise, and the counters."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from capi_middleware import consent
from capi_middleware.asgi import CAPIMiddleware
from capi_middleware.consent.policies import ConsentDecision, ConsentSignals

pytestmark = pytest.mark.anyio


async def page(request: Request) -> Response:
    ctx = request.state.capi
    result = ctx.track("Lead", user_data={"email": "a@example.com"})
    return JSONResponse(
        {
            "granted": ctx.consent.granted,
            "ldu": ctx.consent.ldu,
            "reason": ctx.consent.reason,
            "status": result.status,
        }
    )


def make(consent_option: Any) -> tuple[Any, CAPIMiddleware]:
    middleware: list[CAPIMiddleware] = []

    def wrap(app: Any) -> CAPIMiddleware:
        mw = CAPIMiddleware(app, dry_run=True, consent=consent_option)
        middleware.append(mw)
        return mw

    app = Starlette(routes=[Route("/", page)])
    return wrap(app), middleware[0]


async def get(app: Any, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=("8.8.8.8", 1))
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.get(
            "https://example.com/?fbclid=Click1",
            headers={"user-agent": "Mozilla/5.0 UA", **headers},
        )


def by_header(signals: ConsentSignals) -> bool | None:
    value = signals.header("X-Consent")
    return None if value is None else value == "yes"


def raising(signals: ConsentSignals) -> bool:
    raise RuntimeError("policy bug")


def ldu_always(signals: ConsentSignals) -> ConsentDecision:
    return ConsentDecision(granted=True, ldu=True, reason="mine")


CASES: list[tuple[str, Any, dict[str, str], bool, bool, str]] = [
    # id, consent option, request headers, granted, ldu, track status
    ("default-no-signal", None, {}, False, False, "denied"),
    ("default-site-accept", None, {"cookie": "cookie_consent=accept"}, True, False, "dry_run"),
    ("default-site-reject", None, {"cookie": "cookie_consent=reject"}, False, False, "denied"),
    (
        "default-accept-gpc",
        None,
        {"cookie": "cookie_consent=accept", "sec-gpc": "1"},
        True,
        True,
        "dry_run",
    ),
    (
        "default-consent-mode",
        None,
        {"cookie": "capi_consent_mode=ad_storage=granted&ad_user_data=granted"},
        True,
        False,
        "dry_run",
    ),
    (
        "default-consent-mode-denied",
        None,
        {"cookie": "capi_consent_mode=ad_storage=granted&ad_user_data=denied"},
        False,
        False,
        "denied",
    ),
    ("true", True, {}, True, False, "dry_run"),
    ("true-gpc", True, {"sec-gpc": "1"}, True, True, "dry_run"),
    ("false", False, {"cookie": "cookie_consent=accept"}, False, False, "denied"),
    ("callable-yes", by_header, {"x-consent": "yes"}, True, False, "dry_run"),
    ("callable-no", by_header, {"x-consent": "no"}, False, False, "denied"),
    ("callable-no-opinion", by_header, {}, False, False, "denied"),
    ("callable-raises", raising, {"cookie": "cookie_consent=accept"}, False, False, "denied"),
    ("decision-ldu", ldu_always, {}, True, True, "dry_run"),
    (
        "site-cookie-custom",
        consent.site_cookie("my_ok"),
        {"cookie": "my_ok=1"},
        True,
        False,
        "dry_run",
    ),
    ("site-cookie-custom-absent", consent.site_cookie("my_ok"), {}, False, False, "denied"),
]


@pytest.mark.parametrize(
    ("consent_option", "headers", "granted", "ldu", "status"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_consent_paths(
    consent_option: Any, headers: dict[str, str], granted: bool, ldu: bool, status: str
) -> None:
    app, middleware = make(consent_option)
    response = await get(app, headers)
    assert response.status_code == 200
    body = response.json()
    assert (body["granted"], body["ldu"], body["status"]) == (granted, ldu, status)
    ours = [h for h in response.headers.get_list("set-cookie") if h.startswith(("_fbc=", "_fbp="))]
    if granted:
        assert {h.split("=", 1)[0] for h in ours} == {"_fbc", "_fbp"}
    else:
        assert ours == []
    assert middleware.stats().consent_denied == (0 if granted else 1)


async def test_policy_sees_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str | None, str | None]] = []

    def policy(signals: ConsentSignals) -> bool:
        seen.append((signals.cookies.get("cookie_consent"), signals.header("user-agent")))
        return True

    app, _ = make(policy)
    await get(app, {"cookie": "cookie_consent=maybe"})
    assert seen == [("maybe", "Mozilla/5.0 UA")]


async def test_policy_runs_once_per_request() -> None:
    calls: list[int] = []

    def policy(signals: ConsentSignals) -> bool:
        calls.append(1)
        return True

    app, middleware = make(policy)
    for _ in range(3):
        await get(app, {})
    assert len(calls) == 3
    assert middleware.stats().requests == 3
