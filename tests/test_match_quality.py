"""match_quality(): per event name, the share of events sent carrying each match key, and the
values dropped per key and why, counted on a scripted mix of events and checked by hand."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from capi_middleware import CAPIClient, CAPIMiddleware
from capi_middleware.results import MATCH_KEYS
from capi_middleware.testing import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID, FakeGraphAPI

IP = {"client_ip_address": "203.0.113.7"}

# (event, user_data, custom_data) — what each event carries, and what is dropped, by hand:
SCRIPT: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    # 1: em ph external_id client_ip_address
    (
        "Purchase",
        {"email": "jane@example.com", "phone": "+1 616 954 7888", "external_id": "u1", **IP},
        {"value": 10, "currency": "USD"},
    ),
    # 2: em client_ip_address
    ("Purchase", {"email": "joe@example.com", **IP}, {"value": 5, "currency": "USD"}),
    # 3: em; ph dropped (no country code, no default_country)
    (
        "Purchase",
        {"email": "ann@example.com", "phone": "(616) 954-7888"},
        {"value": 7, "currency": "EUR"},
    ),
    # 4: ph fn; em dropped (not an email)
    (
        "Purchase",
        {"email": "not-an-email", "phone": "+44 20 7946 0958", "first_name": "Ann"},
        {"value": 1, "currency": "GBP"},
    ),
    # 5, 6: Lead: em fn ln / em
    ("Lead", {"email": "a@example.com", "first_name": "A", "last_name": "B"}, {}),
    ("Lead", {"email": "b@example.com"}, {}),
]


@pytest.fixture
def client(fake: FakeGraphAPI) -> Any:
    with CAPIClient(
        pixel_id=FAKE_PIXEL_ID,
        access_token=FAKE_ACCESS_TOKEN,
        graph_url=fake.url,
        consent=True,
    ) as client:
        yield client


def test_the_report_matches_a_hand_count(client: CAPIClient, fake: FakeGraphAPI) -> None:
    for name, user_data, custom in SCRIPT:
        result = client.track(name, action_source="system_generated", user_data=user_data, **custom)
        assert result.status == "queued", result.problems
    # Neither an invalid event nor a denied one counts: they are not sent.
    assert client.track("Purchase", action_source="system_generated", user_data=IP).status == (
        "invalid"
    )
    assert (
        client.track("Lead", action_source="system_generated", user_data=IP, consent=False).status
        == "denied"
    )
    assert client.flush(10)
    assert len(fake.events) == len(SCRIPT)

    report = client.match_quality()
    assert set(report) == {"Purchase", "Lead"}
    purchase, lead = report["Purchase"], report["Lead"]
    assert purchase["events"] == 4
    assert lead["events"] == 2
    assert set(purchase["keys"]) == set(MATCH_KEYS)  # every key listed, 0.0 when missing
    assert purchase["keys"]["em"] == 0.75
    assert purchase["keys"]["ph"] == 0.5
    assert purchase["keys"]["fn"] == 0.25
    assert purchase["keys"]["external_id"] == 0.25
    assert purchase["keys"]["client_ip_address"] == 0.5
    assert purchase["keys"]["fbp"] == 0.0
    assert purchase["dropped"] == {"ph": {"no country code": 1}, "em": {"not an email": 1}}
    assert lead["keys"]["em"] == 1.0
    assert lead["keys"]["fn"] == 0.5
    assert lead["keys"]["ln"] == 0.5
    assert lead["dropped"] == {}


def test_the_report_holds_no_personal_data(client: CAPIClient) -> None:
    client.track(
        "Purchase",
        action_source="system_generated",
        user_data={"email": "not-an-email", "phone": "(616) 954-7888", **IP},
        value=1,
        currency="USD",
    )
    text = repr(client.match_quality()) + repr(client.stats())
    assert "not-an-email" not in text
    assert "954" not in text
    assert "203.0.113.7" not in text


@pytest.mark.anyio
async def test_a_middleware_reports_its_requests_match_keys(fake: FakeGraphAPI) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["state"]["capi"].track(
                "Purchase", value=3, currency="USD", user_data={"email": "c@example.com"}
            )
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    mw = CAPIMiddleware(
        app,
        pixel_id=FAKE_PIXEL_ID,
        access_token=FAKE_ACCESS_TOKEN,
        graph_url=fake.url,
        consent=True,
    )
    transport = httpx.ASGITransport(app=mw, client=("8.8.8.8", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="https://shop.example.com") as c:
        for _ in range(3):
            response = await c.get("/buy", headers={"user-agent": "Mozilla/5.0", "accept": "*/*"})
            assert response.status_code == 204
    assert mw.flush(10)
    report = mw.match_quality()["Purchase"]
    assert report["events"] == 3
    for key in ("em", "client_ip_address", "client_user_agent"):
        assert report["keys"][key] == 1.0, key
    mw.close()


def test_prometheus_exports_the_counts(client: CAPIClient) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from capi_middleware.prometheus import CAPICollector

    for name, user_data, custom in SCRIPT:
        client.track(name, action_source="system_generated", user_data=user_data, **custom)
    registry = prometheus_client.CollectorRegistry()
    registry.register(CAPICollector(client))

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("capi_match_events_total", event="Purchase") == 4
    assert sample("capi_match_key_events_total", event="Purchase", key="em") == 3
    assert sample("capi_match_key_events_total", event="Lead", key="fn") == 1
    assert (
        sample(
            "capi_match_dropped_values_total", event="Purchase", key="ph", reason="no country code"
        )
        == 1
    )
