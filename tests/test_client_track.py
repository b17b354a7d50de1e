"""CAPIClient.track(): events from a webhook, a job or a script, with or without a Visitor.

Real parts throughout: the client's own sender, over HTTP to the fake Graph API on 127.0.0.1.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from capi_middleware import (
    CAPIClient,
    CAPIMiddleware,
    CAPIValidationError,
    ConsentDecision,
    Visitor,
)
from capi_middleware.normalize import sha256_hex
from capi_middleware.testing.fake import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID, FakeGraphAPI

EMAIL = "shopper@example.com"
NOW_MS = int(time.time() * 1000)
SHOPPER_UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15"


def options(fake: FakeGraphAPI, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "pixel_id": FAKE_PIXEL_ID,
        "access_token": FAKE_ACCESS_TOKEN,
        "graph_url": fake.url,
        "flush_interval": 0.01,
    }
    base.update(extra)
    return base


def shopper(**changes: Any) -> Visitor:
    values: dict[str, Any] = {
        "client_ip": "81.2.69.160",
        "user_agent": SHOPPER_UA,
        "fbc": f"fb.1.{NOW_MS}.AbCdEf123",
        "fbp": f"fb.1.{NOW_MS}.1234567890",
        "event_source_url": "https://shop.example.com/checkout",
        "referrer_url": "https://l.facebook.com/",
        "consent": ConsentDecision(granted=True, reason="site_cookie"),
        "captured_at": int(time.time()),
    }
    values.update(changes)
    return Visitor(**values)


def test_a_visitor_s_event_carries_its_match_context(fake: FakeGraphAPI) -> None:
    paid_at = int(time.time()) - 3600
    with CAPIClient(**options(fake)) as client:
        result = client.track(
            "Purchase",
            visitor=shopper(),
            user_data={"email": EMAIL},
            value=79.99,
            currency="EUR",
            event_id="order-1042-purchase",
            event_time=paid_at,
        )
        assert result.status == "queued", result.problems
        assert result.event_id == "order-1042-purchase"
        assert client.flush(5.0)
    (event,) = fake.events
    assert event["event_time"] == paid_at
    assert event["event_source_url"] == "https://shop.example.com/checkout"
    assert event["referrer_url"] == "https://l.facebook.com/"
    assert event["action_source"] == "website"
    user = event["user_data"]
    assert user["client_ip_address"] == "81.2.69.160"
    assert user["client_user_agent"] == SHOPPER_UA
    assert user["fbc"] == f"fb.1.{NOW_MS}.AbCdEf123"
    assert user["fbp"] == f"fb.1.{NOW_MS}.1234567890"
    assert user["em"] == [sha256_hex(EMAIL)]
    assert "data_processing_options" not in event
    stats = client.stats()
    assert stats.delivery is not None
    assert stats.delivery.delivered == 1


def test_the_app_s_keys_win_over_the_visitor_s(fake: FakeGraphAPI) -> None:
    # The visitor's keys go in as captured; a key the app gives replaces it (normalized like
    # any user_data), and a key given as None leaves it out.
    with CAPIClient(**options(fake)) as client:
        result = client.track(
            "Lead",
            visitor=shopper(),
            user_data={"client_user_agent": "  Other/1.0 ", "fbp": None, "email": EMAIL},
        )
        assert result.status == "queued", result.problems
        assert client.flush(5.0)
    (event,) = fake.events
    user = event["user_data"]
    assert user["client_user_agent"] == "Other/1.0"
    assert "fbp" not in user
    assert user["client_ip_address"] == "81.2.69.160"
    assert user["fbc"] == f"fb.1.{NOW_MS}.AbCdEf123"
    assert user["em"] == [sha256_hex(EMAIL)]


def test_an_ldu_visitor_sends_limited_data_use(fake: FakeGraphAPI) -> None:
    visitor = Visitor.from_dict(
        {**shopper().to_dict(), "consent": "ldu", "ldu_country": 1, "ldu_state": 1000}
    )
    with CAPIClient(**options(fake)) as client:
        assert client.track("Lead", visitor=visitor).status == "queued"
        assert client.flush(5.0)
    (event,) = fake.events
    assert event["data_processing_options"] == ["LDU"]
    assert event["data_processing_options_country"] == 1
    assert event["data_processing_options_state"] == 1000


def test_without_a_visitor_the_basis_must_be_stated(fake: FakeGraphAPI) -> None:
    with CAPIClient(**options(fake)) as client:
        result = client.track("Lead", action_source="system_generated", user_data={"email": EMAIL})
        assert result.status == "denied"
        (problem,) = result.problems
        assert problem.field == "consent"
        assert "consent=True" in problem.message
        assert client.stats().consent_denied == 1
        stated = client.track(
            "Lead", action_source="system_generated", consent=True, user_data={"email": EMAIL}
        )
        assert stated.status == "queued", stated.problems
        assert client.flush(5.0)
    (event,) = fake.events
    assert event["action_source"] == "system_generated"
    # No request, so no request keys: only what the caller gave.
    assert set(event["user_data"]) == {"em"}
    assert "event_source_url" not in event


def test_a_client_with_consent_true_is_the_basis(fake: FakeGraphAPI) -> None:
    with CAPIClient(**options(fake, consent=True)) as client:
        result = client.track(
            "Lead", action_source="phone_call", user_data={"phone": "+4915112345678"}
        )
        assert result.status == "queued", result.problems
        assert client.track("Lead", action_source="phone_call", consent=False).status == "denied"
        assert client.flush(5.0)
    assert len(fake.events) == 1


def test_a_denied_visitor_stays_denied(fake: FakeGraphAPI) -> None:
    denied = shopper(consent=ConsentDecision(granted=False, reason="no_signal"))
    with CAPIClient(**options(fake, consent=True)) as client:
        # Neither the call's nor the client's consent=True overrides the visitor's own decision.
        assert (
            client.track("Purchase", visitor=denied, consent=True, value=1, currency="EUR").status
            == "denied"
        )
        assert client.track("Purchase", visitor=denied, value=1, currency="EUR").status == "denied"
        # consent=False on the call denies a granted visitor.
        assert (
            client.track(
                "Purchase", visitor=shopper(), consent=False, value=1, currency="EUR"
            ).status
            == "denied"
        )
        assert client.stats().consent_denied == 3
        assert client.flush(5.0)
    assert fake.events == []


def test_event_time_past_metas_window_is_invalid_with_its_subcode(fake: FakeGraphAPI) -> None:
    with CAPIClient(**options(fake)) as client:
        result = client.track(
            "Purchase",
            visitor=shopper(),
            value=5,
            currency="EUR",
            event_time=time.time() - 8 * 86_400,
        )
    assert result.status == "invalid"
    assert any(p.field == "event_time" and p.meta_subcode == 2804003 for p in result.problems)
    assert fake.events == []


def test_a_visitor_that_is_not_a_visitor_is_invalid(fake: FakeGraphAPI) -> None:
    with CAPIClient(**options(fake)) as client:
        result = client.track("Purchase", visitor=shopper().to_dict(), value=5, currency="EUR")  # type: ignore[arg-type]
        assert result.status == "invalid"
        assert result.problems[0].field == "visitor"
        assert "from_dict" in result.problems[0].message
        bad = client.track("Lead", consent="yes")  # type: ignore[arg-type]
        assert bad.status == "invalid"
        assert bad.problems[0].field == "consent"
    with CAPIClient(**options(fake, strict=True)) as strict, pytest.raises(CAPIValidationError):
        strict.track("Purchase", visitor={"client_ip": "1.2.3.4"}, value=5, currency="EUR")  # type: ignore[arg-type]


def test_from_env_and_the_context_manager(fake: FakeGraphAPI) -> None:
    environ = {
        "META_PIXEL_ID": FAKE_PIXEL_ID,
        "META_ACCESS_TOKEN": FAKE_ACCESS_TOKEN,
        "META_GRAPH_URL": fake.url,
    }
    with CAPIClient.from_env(environ, consent=True) as client:
        assert client.track(
            "Subscribe", action_source="system_generated", user_data={"external_id": "crm-77"}
        ).ok
    # Leaving the block closed the client, which flushed: the event is there.
    assert len(fake.events) == 1
    assert client.stats().delivery is not None


# -- a webhook: ctx.track(..., visitor=v) inside another request ---------------------------------

SECRET = "webhook-visitor-secret"


async def checkout(request: Request) -> JSONResponse:
    return JSONResponse({"token": request.state.capi.visitor().to_token(SECRET)})


async def webhook(request: Request) -> JSONResponse:
    body = await request.json()
    visitor = Visitor.from_token(body["visitor"], SECRET)
    result = request.state.capi.track(
        "Purchase", visitor=visitor, value=20, currency="EUR", user_data={"email": EMAIL}
    )
    return JSONResponse({"status": result.status, "event_id": result.event_id})


@pytest.mark.anyio
async def test_a_webhook_sends_the_shoppers_context_not_its_own(fake: FakeGraphAPI) -> None:
    client = CAPIClient(**options(fake))
    # The site's own consent cookie grants; the webhook carries none (the default policy).
    app = CAPIMiddleware(
        Starlette(
            routes=[Route("/checkout", checkout), Route("/webhook", webhook, methods=["POST"])]
        ),
        client=client,
    )
    assert app.client is client
    shop = httpx.ASGITransport(app=app, client=("81.2.69.160", 50123))
    async with httpx.AsyncClient(transport=shop, base_url="https://shop.example.com") as browser:
        page = await browser.get(
            "/checkout?fbclid=AbC123",
            headers={
                "user-agent": SHOPPER_UA,
                "accept": "text/html",
                "cookie": "cookie_consent=granted",
            },
        )
    token = page.json()["token"]
    provider = httpx.ASGITransport(app=app, client=("54.187.174.169", 443))
    async with httpx.AsyncClient(transport=provider, base_url="https://shop.example.com") as stripe:
        answer = await stripe.post(
            "/webhook",
            json={"visitor": token},
            headers={"user-agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"},
        )
    assert answer.json()["status"] == "queued"
    assert client.close(5.0)
    (event,) = fake.events
    user = event["user_data"]
    assert user["client_ip_address"] == "81.2.69.160"
    assert user["client_user_agent"] == SHOPPER_UA
    assert user["fbc"].endswith(".AbC123")
    assert user["fbp"].startswith("fb.1.")
    assert event["event_source_url"] == "https://shop.example.com/checkout?fbclid=AbC123"
