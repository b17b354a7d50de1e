"""A Celery task that reports a subscription renewal to Meta, with the subscriber's own context.

The renewal is charged by a job long after the visitor left; the visitor captured at sign-up
(``ctx.visitor().to_dict()``, stored with the subscription) gives the event the subscriber's IP,
user agent, cookies and consent. One `CAPIClient` per worker process, from the ``META_*``
environment; a job never waits on Meta: ``track()`` queues, the client's sender delivers.

Run:   celery -A examples.jobs.tasks worker
Env:   META_PIXEL_ID, META_ACCESS_TOKEN, CELERY_BROKER_URL (default: memory://, for trying it)
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_shutdown

from capi_middleware import CAPIClient, Visitor

app = Celery("shop", broker=os.environ.get("CELERY_BROKER_URL", "memory://"))
client = CAPIClient.from_env()


@worker_process_shutdown.connect
def deliver_before_exit(**_: Any) -> None:
    client.close()  # what is queued is delivered (or kept in the outbox) before the worker exits


@app.task
def report_renewal(subscription: dict[str, Any]) -> dict[str, Any]:
    """Send the renewal's Subscribe event; returns the result's status and event id."""
    visitor = Visitor.from_dict(subscription["visitor"])  # validated: a bad row raises here
    result = client.track(
        "Subscribe",
        visitor=visitor,  # denied at sign-up stays denied: nothing is sent
        event_id=f"renewal-{subscription['id']}-{subscription['period']}",
        event_time=subscription["charged_at"],
        user_data={"email": subscription["email"], "external_id": subscription["customer_id"]},
        value=subscription["amount"],
        currency=subscription["currency"],
        predicted_ltv=subscription["amount"] * 12,
    )
    return {"status": result.status, "event_id": result.event_id}
