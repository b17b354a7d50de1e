"""The examples of events sent outside the visitor's request, each run end to end.

- examples/webhook_shop: a Purchase confirmed by a signed provider webhook from another IP and
  user agent arrives with the shopper's IP, user agent, fbc, fbp and consent, and the event id
  the thank-you page's pixel uses;
- examples/jobs/tasks.py: a Celery task (eager mode: no broker) sends a renewal with the
  subscriber's stored visitor;
- examples/jobs/nightly_leads.py: a cron script with ``CAPIClient.from_env()``, run as a process.

(examples/lambda_handler is run by tests/test_serverless.py.)
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from capi_middleware import ConsentDecision, Visitor
from capi_middleware.normalize import sha256_hex
from capi_middleware.testing.fake import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID, FakeGraphAPI

ROOT = Path(__file__).resolve().parent.parent
SHOPPER_IP = "81.2.69.160"
PROVIDER_IP = "54.187.174.169"
SHOPPER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
)
FBCLID = "IwAR_webhook-Click_7"


@pytest.fixture(autouse=True)
def meta_env(fake: FakeGraphAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples read META_* as users run them: point those at the fake."""
    monkeypatch.setenv("META_PIXEL_ID", FAKE_PIXEL_ID)
    monkeypatch.setenv("META_ACCESS_TOKEN", FAKE_ACCESS_TOKEN)
    monkeypatch.setenv("META_GRAPH_URL", fake.url)


def load(relative: str) -> ModuleType:
    path = ROOT / "examples" / relative
    name = "example_" + relative.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# -- the webhook shop ----------------------------------------------------------------------------


def signed(module: ModuleType, payload: dict[str, Any]) -> tuple[bytes, str]:
    body = json.dumps(payload).encode()
    stamp = int(time.time())
    mac = hmac.new(module.WEBHOOK_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
    return body, f"t={stamp},v1={mac.hexdigest()}"


@pytest.mark.anyio
async def test_a_webhook_confirmed_purchase_carries_the_shoppers_context(
    fake: FakeGraphAPI,
) -> None:
    shop = load("webhook_shop/app.py")
    try:
        browser_transport = httpx.ASGITransport(app=shop.app, client=(SHOPPER_IP, 51000))
        async with httpx.AsyncClient(
            transport=browser_transport,
            base_url="https://shop.example.com",
            headers={"user-agent": SHOPPER_UA, "accept": "text/html"},
            cookies={"cookie_consent": "accept"},
        ) as browser:
            await browser.get(f"/?fbclid={FBCLID}")
            fbc, fbp = browser.cookies["_fbc"], browser.cookies["_fbp"]
            checkout = (
                await browser.post("/checkout", json={"email": "Ana@Example.com", "amount": 29})
            ).json()
            payment = checkout["payment"]
            assert len(payment["metadata"]["capi_visitor"]) <= 500  # fits a metadata value

            paid_at = int(time.time()) - 90
            body, signature = signed(
                shop,
                {
                    "type": "payment.paid",
                    "data": {"metadata": payment["metadata"], "paid_at": paid_at},
                },
            )
            provider_transport = httpx.ASGITransport(app=shop.app, client=(PROVIDER_IP, 443))
            async with httpx.AsyncClient(
                transport=provider_transport,
                base_url="https://shop.example.com",
                headers={"user-agent": "ProviderWebhooks/1.0 (+https://pay.example/webhooks)"},
            ) as provider:
                refused = await provider.post(
                    "/webhooks/provider", content=body, headers={"provider-signature": "t=1,v1=00"}
                )
                assert refused.status_code == 400
                answer = await provider.post(
                    "/webhooks/provider", content=body, headers={"provider-signature": signature}
                )
                assert answer.json()["status"] == "queued"
                assert "set-cookie" not in answer.headers  # no cookie for the provider
                again = await provider.post(
                    "/webhooks/provider", content=body, headers={"provider-signature": signature}
                )
                assert again.json() == {"duplicate": True}  # a provider's retry: one Purchase

            thanks = (await browser.get(payment["success_url"])).text
        pixel_id = re.search(r'"eventID": "([^"]+)"', thanks)
        assert pixel_id is not None
        assert answer.json()["event_id"] == pixel_id[1]  # the same id on both sides

        assert shop.client.flush(10.0)
        (event,) = fake.events
        assert event["event_name"] == "Purchase"
        assert event["event_id"] == pixel_id[1]
        assert event["event_time"] == paid_at
        user = event["user_data"]
        assert user["client_ip_address"] == SHOPPER_IP  # not the provider's
        assert user["client_user_agent"] == SHOPPER_UA
        assert user["fbc"] == fbc
        assert user["fbc"].endswith(FBCLID)
        assert user["fbp"] == fbp
        assert user["em"] == [sha256_hex("ana@example.com")]
        assert event["event_source_url"] == "https://shop.example.com/checkout"
        assert event["custom_data"]["value"] == 29
    finally:
        shop.client.close(5.0)


@pytest.mark.anyio
async def test_without_the_order_row_the_token_in_the_metadata_serves(fake: FakeGraphAPI) -> None:
    shop = load("webhook_shop/app.py")
    try:
        transport = httpx.ASGITransport(app=shop.app, client=(SHOPPER_IP, 51000))
        async with httpx.AsyncClient(
            transport=transport,
            base_url="https://shop.example.com",
            headers={"user-agent": SHOPPER_UA},
            cookies={"cookie_consent": "accept"},
        ) as browser:
            checkout = (
                await browser.post("/checkout", json={"email": "b@example.com", "amount": 5})
            ).json()
            shop.ORDERS[checkout["order_id"]].visitor = {}  # a row without the visitor column
            body, signature = signed(
                shop,
                {
                    "type": "payment.paid",
                    "data": {"metadata": checkout["payment"]["metadata"], "paid_at": time.time()},
                },
            )
            answer = await browser.post(
                "/webhooks/provider", content=body, headers={"provider-signature": signature}
            )
        assert answer.json()["status"] == "queued"
        assert shop.client.flush(10.0)
        assert fake.events[0]["user_data"]["client_ip_address"] == SHOPPER_IP
    finally:
        shop.client.close(5.0)


@pytest.mark.anyio
async def test_a_shopper_who_declined_gets_no_purchase_event(fake: FakeGraphAPI) -> None:
    shop = load("webhook_shop/app.py")
    try:
        transport = httpx.ASGITransport(app=shop.app, client=(SHOPPER_IP, 51000))
        async with httpx.AsyncClient(
            transport=transport,
            base_url="https://shop.example.com",
            headers={"user-agent": SHOPPER_UA},
            cookies={"cookie_consent": "reject"},
        ) as browser:
            checkout = (
                await browser.post("/checkout", json={"email": "c@example.com", "amount": 5})
            ).json()
            body, signature = signed(
                shop,
                {
                    "type": "payment.paid",
                    "data": {"metadata": checkout["payment"]["metadata"], "paid_at": time.time()},
                },
            )
            answer = await browser.post(
                "/webhooks/provider", content=body, headers={"provider-signature": signature}
            )
        assert answer.json()["status"] == "denied"
        assert shop.client.flush(5.0)
        assert fake.events == []
    finally:
        shop.client.close(5.0)


# -- the Celery task -----------------------------------------------------------------------------


def subscription(consent: ConsentDecision) -> dict[str, Any]:
    visitor = Visitor(
        client_ip=SHOPPER_IP,
        user_agent=SHOPPER_UA,
        fbp=f"fb.1.{int(time.time() * 1000) - 86_400_000}.987654321",
        event_source_url="https://shop.example.com/subscribe",
        consent=consent,
        captured_at=int(time.time()) - 86_400,
    )
    return {
        "id": "sub-42",
        "period": "2026-12",
        "customer_id": "cus-7",
        "email": "subscriber@example.com",
        "amount": 9.0,
        "currency": "EUR",
        "charged_at": int(time.time()) - 60,
        "visitor": visitor.to_dict(),  # as stored with the subscription at sign-up
    }


def test_a_celery_task_sends_the_renewal_with_the_subscribers_context(fake: FakeGraphAPI) -> None:
    tasks = load("jobs/tasks.py")
    tasks.app.conf.task_always_eager = True  # run in process, no broker: the test's worker
    tasks.app.conf.task_eager_propagates = True
    try:
        granted = tasks.report_renewal.delay(
            subscription(ConsentDecision(True, reason="site_cookie"))
        )
        assert granted.get()["status"] == "queued"
        declined = tasks.report_renewal.delay(
            subscription(ConsentDecision(False, reason="no_signal"))
        )
        assert declined.get()["status"] == "denied"
        assert tasks.client.flush(10.0)
        (event,) = fake.events
        assert event["event_name"] == "Subscribe"
        assert event["event_id"] == "renewal-sub-42-2026-12"
        assert event["user_data"]["client_ip_address"] == SHOPPER_IP
        assert event["user_data"]["client_user_agent"] == SHOPPER_UA
        assert event["custom_data"]["predicted_ltv"] == 108.0
    finally:
        tasks.client.close(5.0)


# -- the cron script -----------------------------------------------------------------------------


def run_script(
    fake: FakeGraphAPI, csv_text: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    leads = tmp_path / "leads.csv"
    leads.write_text(csv_text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("META_")}
    env.update(
        META_PIXEL_ID=FAKE_PIXEL_ID, META_ACCESS_TOKEN=FAKE_ACCESS_TOKEN, META_GRAPH_URL=fake.url
    )
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "jobs" / "nightly_leads.py"), str(leads)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


HEADER = "lead_id,email,phone,first_name,last_name,country,created_at\n"


def test_the_nightly_script_uploads_its_leads(fake: FakeGraphAPI, tmp_path: Path) -> None:
    now = int(time.time())
    rows = [
        f"L1,ana@example.com,+34 612 345 678,Ana,García,ES,{now - 3600}",
        f"L2,bo@example.com,+1 650 555 1234,Bo,Li,US,{now - 7200}",
        f"L3,cy@example.com,,Cy,Ng,GB,{now - 86_400}",
    ]
    done = run_script(fake, HEADER + "\n".join(rows) + "\n", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3 queued"
    assert sorted(fake.event_ids) == ["crm-lead-L1", "crm-lead-L2", "crm-lead-L3"]
    for event in fake.events:
        assert event["action_source"] == "system_generated"
        assert "client_ip_address" not in event["user_data"]  # no visitor, no request keys
    first = next(e for e in fake.events if e["event_id"] == "crm-lead-L1")
    assert first["user_data"]["em"] == [sha256_hex("ana@example.com")]
    assert first["event_time"] == now - 3600


def test_the_nightly_script_reports_a_lead_too_old_for_meta(
    fake: FakeGraphAPI, tmp_path: Path
) -> None:
    old = int(time.time()) - 8 * 86_400
    done = run_script(fake, HEADER + f"L9,old@example.com,,Old,Lead,US,{old}\n", tmp_path)
    assert done.returncode == 1
    assert done.stdout.strip() == "1 invalid"
    assert "event_time" in done.stderr
    assert "2804003" in done.stderr  # Meta's subcode for an event older than 7 days
    assert fake.events == []
