"""serverless=True: each request's events are delivered before its call returns.

Driven the way AWS Lambda drives a function: Mangum with ``lifespan="off"`` (no shutdown hook to
flush at) handed API Gateway events; the fake Graph API must already hold the event when the
handler returns. A Lambda instance is frozen between invocations and may be killed while
frozen: a real process stopped with SIGSTOP and killed with SIGKILL loses nothing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import httpx
import pytest
from mangum import Mangum
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from capi_middleware import CAPIClient, CAPIMiddleware, CAPIWSGIMiddleware
from capi_middleware.testing.fake import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID, FakeGraphAPI

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = SimpleNamespace(function_name="shop-leads", aws_request_id="test")
BROWSER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15"


@pytest.fixture
def event_loop_for_mangum() -> Iterator[None]:
    """Mangum runs each invocation on the thread's event loop; one per test, closed after."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def api_gateway_event(path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, as Lambda hands it to the handler."""
    method = "GET" if body is None else "POST"
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "host": "abc123.execute-api.eu-west-1.amazonaws.com",
            "user-agent": BROWSER,
            "content-type": "application/json",
            "x-forwarded-proto": "https",
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.eu-west-1.amazonaws.com",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "81.2.69.160",
                "userAgent": BROWSER,
            },
            "requestId": "req-1",
            "routeKey": "$default",
            "stage": "$default",
            "time": "06/Dec/2026:16:00:00 +0000",
            "timeEpoch": int(time.time() * 1000),
        },
        "body": None if body is None else json.dumps(body),
        "isBase64Encoded": False,
    }


def load_lambda_example(monkeypatch: pytest.MonkeyPatch, fake: FakeGraphAPI) -> ModuleType:
    monkeypatch.setenv("META_PIXEL_ID", FAKE_PIXEL_ID)
    monkeypatch.setenv("META_ACCESS_TOKEN", FAKE_ACCESS_TOKEN)
    monkeypatch.setenv("META_GRAPH_URL", fake.url)
    path = ROOT / "examples" / "lambda_handler" / "app.py"
    spec = importlib.util.spec_from_file_location("example_lambda_handler", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.usefixtures("event_loop_for_mangum")
def test_the_fake_has_the_event_when_the_handler_returns(
    monkeypatch: pytest.MonkeyPatch, fake: FakeGraphAPI
) -> None:
    example = load_lambda_example(monkeypatch, fake)
    try:
        for n in range(3):
            response = example.handler(
                api_gateway_event("/lead", {"email": f"reader{n}@example.com"}), CONTEXT
            )
            assert response["statusCode"] == 200
            answer = json.loads(response["body"])
            assert answer["status"] == "queued"
            # Already there: no waiting, no polling.
            assert fake.event_ids[-1] == answer["event_id"]
        assert len(fake.events) == 3
        event = fake.events[0]
        assert event["event_name"] == "Lead"
        assert event["user_data"]["client_ip_address"] == "81.2.69.160"
        assert event["user_data"]["client_user_agent"] == BROWSER
    finally:
        example.client.close(5.0)


@pytest.mark.usefixtures("event_loop_for_mangum")
def test_one_round_trip_per_tracking_request_and_none_for_the_rest(
    monkeypatch: pytest.MonkeyPatch, fake: FakeGraphAPI
) -> None:
    example = load_lambda_example(monkeypatch, fake)
    try:
        for n in range(5):
            before = fake.attempts
            example.handler(api_gateway_event("/lead", {"email": f"r{n}@example.com"}), CONTEXT)
            assert fake.attempts - before == 1
        before = fake.attempts
        for _ in range(5):
            started = time.perf_counter()
            response = example.handler(api_gateway_event("/health"), CONTEXT)
            assert response["statusCode"] == 200
            assert time.perf_counter() - started < 1.0
        assert fake.attempts == before  # a request that tracked nothing never talks to Meta
    finally:
        example.client.close(5.0)


@pytest.mark.usefixtures("event_loop_for_mangum")
def test_background_mode_would_still_be_holding_the_event(fake: FakeGraphAPI) -> None:
    # Why serverless=True exists: the same handler without it returns before the batch timer
    # fires, and Lambda freezes the process with the event still in memory.
    async def lead(request: Request) -> JSONResponse:
        result = request.state.capi.track("Lead", user_data={"email": "a@example.com"})
        return JSONResponse({"status": result.status})

    client = CAPIClient(
        pixel_id=FAKE_PIXEL_ID,
        access_token=FAKE_ACCESS_TOKEN,
        graph_url=fake.url,
        consent=True,
        flush_interval=0.5,
    )
    app = CAPIMiddleware(Starlette(routes=[Route("/lead", lead, methods=["POST"])]), client=client)
    handler = Mangum(app, lifespan="off")
    response = handler(api_gateway_event("/lead", {}), CONTEXT)
    assert json.loads(response["body"])["status"] == "queued"
    assert fake.events == []
    assert client.close(5.0)
    assert len(fake.events) == 1


def serverless_client(fake: FakeGraphAPI, **options: Any) -> CAPIClient:
    return CAPIClient(
        pixel_id=FAKE_PIXEL_ID,
        access_token=FAKE_ACCESS_TOKEN,
        graph_url=fake.url,
        consent=True,
        serverless=True,
        flush_interval=30.0,  # only the serverless delivery can send within the test
        **options,
    )


@pytest.mark.anyio
async def test_events_tracked_after_the_response_are_delivered_before_the_call_returns(
    fake: FakeGraphAPI,
) -> None:
    client = serverless_client(fake)

    async def purchase(request: Request) -> JSONResponse:
        ctx = request.state.capi
        first = ctx.track("Purchase", value=5, currency="EUR")

        def later() -> None:  # a background task runs after the response went out
            ctx.track("Subscribe", user_data={"email": "b@example.com"})

        return JSONResponse({"id": first.event_id}, background=BackgroundTask(later))

    app = CAPIMiddleware(Starlette(routes=[Route("/", purchase)]), client=client)
    transport = httpx.ASGITransport(app=app, client=("81.2.69.160", 1))
    async with httpx.AsyncClient(transport=transport, base_url="https://shop.example.com") as c:
        response = await c.get("/", headers={"user-agent": BROWSER})
    assert response.status_code == 200
    assert sorted(e["event_name"] for e in fake.events) == ["Purchase", "Subscribe"]
    assert fake.attempts == 2  # one before the body went out, one after the background task
    client.close(5.0)


def test_wsgi_delivers_before_the_body_is_written(fake: FakeGraphAPI) -> None:
    client = serverless_client(fake)
    seen_at_body: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        environ["capi"].track("Lead", user_data={"email": "c@example.com"})
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            seen_at_body.append(len(fake.events))
            yield b"ok"

        return body()

    wrapped = CAPIWSGIMiddleware(app, client=client)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "shop.example.com",
        "SERVER_PORT": "443",
        "wsgi.url_scheme": "https",
        "REMOTE_ADDR": "81.2.69.160",
        "HTTP_USER_AGENT": BROWSER,
    }
    assert b"".join(wrapped(environ, lambda *a: None)) == b"ok"
    assert seen_at_body == [1]
    client.close(5.0)


def test_a_timeout_leaves_the_event_queued_and_the_request_answered(fake: FakeGraphAPI) -> None:
    client = serverless_client(fake, serverless_timeout=0.3)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["capi"].track("Lead", user_data={"email": "d@example.com"})
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = CAPIWSGIMiddleware(app, client=client)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "SERVER_NAME": "shop.example.com",
        "SERVER_PORT": "443",
        "wsgi.url_scheme": "https",
        "REMOTE_ADDR": "81.2.69.160",
        "HTTP_USER_AGENT": BROWSER,
    }
    fake.down = True
    started = time.perf_counter()
    assert b"".join(wrapped(environ, lambda *a: None)) == b"ok"
    assert time.perf_counter() - started < 2.0  # bounded by serverless_timeout (and a retry)
    stats = client.stats().delivery
    assert stats is not None
    assert stats.backlog == 1
    fake.down = False
    assert client.close(10.0)
    assert len(fake.events) == 1


# -- a real process, frozen and killed as Lambda does ------------------------------------------


class LambdaInstance:
    """tests/apps/lambda_runtime.py in its own process: invoke, freeze, thaw, kill."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "apps" / "lambda_runtime.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert json.loads(self.readline()) == {"ready": True}

    def readline(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, self.process.stderr.read() if self.process.stderr else ""
        return line

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(event) + "\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.readline())
        return answer

    def freeze(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no atexit, no flush, no goodbye
        self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def lambda_env(fake: FakeGraphAPI, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("META_")}
    env.update(
        META_PIXEL_ID=FAKE_PIXEL_ID,
        META_ACCESS_TOKEN=FAKE_ACCESS_TOKEN,
        META_GRAPH_URL=fake.url,
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def lead(n: int) -> dict[str, Any]:
    return api_gateway_event("/lead", {"email": f"frozen{n}@example.com"})


def test_a_frozen_and_killed_instance_loses_nothing(fake: FakeGraphAPI) -> None:
    instance = LambdaInstance(lambda_env(fake))
    try:
        ids = []
        for n in range(3):
            ids.append(json.loads(instance.invoke(lead(n))["body"])["event_id"])
            assert fake.event_ids == ids  # delivered before the handler returned
            instance.freeze()  # between invocations nothing of this process runs
            time.sleep(0.2)
            instance.thaw()
        instance.freeze()
    finally:
        instance.kill()  # Lambda reclaims the idle instance: no shutdown hook runs
    assert fake.event_ids == ids


def test_what_an_outage_leaves_waits_frozen_and_the_next_invocation_delivers_it(
    fake: FakeGraphAPI,
) -> None:
    instance = LambdaInstance(lambda_env(fake))
    try:
        fake.down = True
        lost_id = json.loads(instance.invoke(lead(1))["body"])["event_id"]  # after the timeout
        instance.freeze()
        fake.down = False
        time.sleep(1.0)
        assert fake.events == []  # frozen: the sender cannot have sent it
        instance.thaw()
        next_id = json.loads(instance.invoke(lead(2))["body"])["event_id"]
        assert next_id in fake.event_ids  # this request's own event, before its handler returned
        # What the outage left waits out its retry backoff (full jitter, up to seconds after a
        # long outage; a flush never cuts a backoff short) and then goes out: nothing is lost.
        assert fake.wait_for_events(2, timeout=30), fake.event_ids
        assert set(fake.event_ids) == {lost_id, next_id}
        instance.freeze()
    finally:
        instance.kill()


def test_with_an_outbox_what_a_killed_instance_left_is_sent_by_the_next(
    fake: FakeGraphAPI, tmp_path: Path
) -> None:
    outbox = str(tmp_path / "outbox.sqlite3")
    first = LambdaInstance(lambda_env(fake, META_OUTBOX=outbox))
    try:
        fake.down = True
        left_id = json.loads(first.invoke(lead(1))["body"])["event_id"]  # committed, not sent
        first.freeze()
    finally:
        first.kill()  # the instance is gone, and its memory with it
    fake.down = False
    assert fake.events == []
    second = LambdaInstance(lambda_env(fake, META_OUTBOX=outbox))  # a cold start
    try:
        new_id = json.loads(second.invoke(lead(2))["body"])["event_id"]
        assert fake.wait_for_events(2, timeout=10.0)
        assert set(fake.event_ids) == {left_id, new_id}
    finally:
        second.kill()


@pytest.mark.anyio
async def test_sync_endpoints_and_client_track_in_the_request_count_too(fake: FakeGraphAPI) -> None:
    # A sync endpoint runs in a worker thread with a copy of the request's context, and a
    # client.track() made during the request is the request's event as much as ctx.track().
    client = serverless_client(fake)

    def sync_lead(request: Request) -> JSONResponse:
        result = request.state.capi.track("Lead", user_data={"email": "e@example.com"})
        return JSONResponse({"status": result.status})

    async def crm_lead(request: Request) -> JSONResponse:
        result = client.track(
            "Lead", action_source="system_generated", consent=True, user_data={"email": "f@x.org"}
        )
        return JSONResponse({"status": result.status})

    app = CAPIMiddleware(
        Starlette(routes=[Route("/sync", sync_lead), Route("/crm", crm_lead)]), client=client
    )
    transport = httpx.ASGITransport(app=app, client=("81.2.69.160", 1))
    async with httpx.AsyncClient(transport=transport, base_url="https://shop.example.com") as c:
        for path, count in (("/sync", 1), ("/crm", 2)):
            response = await c.get(path, headers={"user-agent": BROWSER})
            assert response.json()["status"] == "queued"
            assert len(fake.events) == count  # already delivered when the call returned
    client.close(5.0)
