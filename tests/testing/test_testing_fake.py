"""FakeGraphAPI answers like Meta: its checks, its faults, and both ways to reach it."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from capi_middleware.config import CAPIConfig
from capi_middleware.testing import (
    FAKE_ACCESS_TOKEN,
    FAKE_PIXEL_ID,
    FakeGraphAPI,
    fake_graph,
    fake_graph_config,
)

__all__ = ["fake_graph", "fake_graph_config"]  # the fixtures, imported the way users do

H = hashlib.sha256(b"x").hexdigest()
PATH = f"/v26.0/{FAKE_PIXEL_ID}/events"


def event(**changes: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": int(time.time()),
        "event_id": uuid.uuid4().hex,
        "action_source": "website",
        "event_source_url": "https://shop.example/",
        "user_data": {"em": [H], "client_user_agent": "ua"},
        "custom_data": {"value": 1.0, "currency": "EUR"},
    }
    for key, value in changes.items():
        if value is ...:
            e.pop(key, None)
        else:
            e[key] = value
    return e


def body(events: list[Any], token: str | None = FAKE_ACCESS_TOKEN, **extra: Any) -> bytes:
    doc: dict[str, Any] = {"data": events, **extra}
    if token is not None:
        doc["access_token"] = token
    return json.dumps(doc).encode()


@pytest.fixture
def client(fake: FakeGraphAPI) -> Iterator[httpx.Client]:
    """The fake answering in process, through its transport (no socket)."""
    with httpx.Client(transport=fake.transport(), base_url="https://graph.facebook.com") as c:
        yield c


def post(client: httpx.Client, content: bytes, path: str = PATH) -> httpx.Response:
    return client.post(path, content=content, headers={"content-type": "application/json"})


# -- Meta's checks ------------------------------------------------------------------------------

DAY = 86_400
BAD_EVENTS = [
    # (changes to a good event, expected error_subcode; None: code 100 without a subcode)
    ({"event_name": ...}, None),
    ({"event_name": ""}, None),
    ({"event_time": ...}, None),
    ({"event_time": "yesterday"}, None),
    ({"event_time": True}, None),
    ({"event_time": int(time.time()) - 8 * DAY}, 2804003),
    ({"event_time": int(time.time()) - 63 * DAY, "action_source": "physical_store"}, 2804003),
    ({"action_source": ...}, None),
    ({"action_source": "web"}, None),
    ({"event_id": ...}, None),
    ({"event_id": ""}, None),
    ({"user_data": ...}, 2804050),
    ({"user_data": {}}, 2804050),
    ({"user_data": {"em": "john@example.com"}}, 2804016),
    ({"user_data": {"em": [H, "john@example.com"]}}, 2804016),
    ({"user_data": {"ph": ["16505551234"]}}, 2804016),
    ({"user_data": {"country": "us"}}, 2804016),
    ({"user_data": {"em": [H], "fbc": "IwAR123"}}, 2804001),
    ({"user_data": {"em": [H], "fbc": "fb.1.notatime.IwAR"}}, 2804001),
    ({"custom_data": {"value": 1.0}}, 2804010),
    ({"custom_data": {"value": 1.0, "currency": "EURO"}}, 2804010),
    ({"custom_data": ...}, 2804010),
    ({"custom_data": {"value": 1, "currency": "USD", "contents": [{"quantity": 1}]}}, 2804019),
    ({"custom_data": {"value": 1, "currency": "USD", "contents": [{"id": ""}]}}, 2804019),
    ({"custom_data": {"value": 1, "currency": "USD", "contents": "sku1"}}, 2804019),
    ({"event_name": "Lead", "custom_data": {"contents": [{"id": None}]}}, 2804019),
    ({"custom_data": "not an object"}, None),
]


@pytest.mark.parametrize(("changes", "subcode"), BAD_EVENTS)
def test_one_bad_event_rejects_the_whole_request(
    fake: FakeGraphAPI, client: httpx.Client, changes: dict[str, Any], subcode: int | None
) -> None:
    response = post(client, body([event(), event(**changes), event()]))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 100
    assert error.get("error_subcode") == subcode
    assert error["type"] == "OAuthException"
    assert error["fbtrace_id"]
    assert error["error_user_msg"].startswith("data[1]")
    assert fake.events == []


GOOD_EVENTS = [
    {},
    {"event_name": "CustomThing", "custom_data": ...},
    {"event_name": "Lead", "custom_data": {"contents": [{"id": 7, "quantity": 1}]}},
    {"event_time": int(time.time()) - 30 * DAY, "action_source": "physical_store"},
    {"user_data": {"em": [H.upper()], "external_id": ["raw-id-is-allowed"]}},
    {"user_data": {"client_ip_address": "203.0.113.9", "client_user_agent": "ua"}},
    {"user_data": {"em": [H], "fbc": "fb.1.1700000000000.IwAR_Ab-c.AbCdEfGh"}},
]


@pytest.mark.parametrize("changes", GOOD_EVENTS)
def test_valid_events_are_accepted_and_recorded(
    fake: FakeGraphAPI, client: httpx.Client, changes: dict[str, Any]
) -> None:
    e = event(**changes)
    response = post(client, body([e]))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["events_received"] == 1
    assert answer["messages"] == []
    assert answer["fbtrace_id"]
    assert fake.events == [e]
    assert fake.events_for(FAKE_PIXEL_ID) == [e]
    assert fake.event_ids == [e["event_id"]]


@pytest.mark.parametrize(
    ("content", "code", "subcode"),
    [
        (body([event()], token=None), 190, None),
        (body([event()], token="EAAB-someone-else"), 190, None),
        (body([]), 100, None),
        (body([event()] * 1001), 100, None),
        (json.dumps({"data": "x", "access_token": FAKE_ACCESS_TOKEN}).encode(), 100, None),
        (b"{not json", 100, None),
        (b"[1, 2]", 100, None),
        (b'{"data": [{"event_time": NaN}], "access_token": "t"}', 100, None),
    ],
    ids=[
        "no token",
        "wrong token",
        "no data",
        "1001",
        "data not a list",
        "bad json",
        "list",
        "NaN",
    ],
)
def test_request_level_errors(
    client: httpx.Client, content: bytes, code: int, subcode: int | None
) -> None:
    response = post(client, content)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    assert error.get("error_subcode") == subcode


def test_unknown_pixel_is_subcode_33(client: httpx.Client, fake: FakeGraphAPI) -> None:
    fake.pixel_ids = ("42",)
    error = post(client, body([event()])).json()["error"]
    assert (error["code"], error["error_subcode"]) == (100, 33)
    assert post(client, body([event()]), path="/v26.0/42/events").status_code == 200


def test_unknown_path_is_code_2500(client: httpx.Client) -> None:
    response = post(client, body([event()]), path="/v26.0/me/feed")
    assert response.json()["error"]["code"] == 2500


def test_appsecret_proof_is_checked_when_a_secret_is_set(
    client: httpx.Client, fake: FakeGraphAPI
) -> None:
    fake.app_secret = "s3cret"
    missing = post(client, body([event()])).json()["error"]
    assert missing["code"] == 100
    assert "appsecret_proof" in missing["message"]
    proof = hmac.new(b"s3cret", FAKE_ACCESS_TOKEN.encode(), hashlib.sha256).hexdigest()
    assert post(client, body([event()], appsecret_proof=proof)).status_code == 200


def test_sdk_style_bodies_are_accepted(client: httpx.Client, fake: FakeGraphAPI) -> None:
    # Meta's Python SDK sends each event as a JSON string, as JSON or as a form.
    e1, e2 = event(), event()
    as_json = post(client, body([json.dumps(e1)]))
    form = urlencode({"data": json.dumps([json.dumps(e2)]), "access_token": FAKE_ACCESS_TOKEN})
    as_form = client.post(
        PATH, content=form, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert (as_json.status_code, as_form.status_code) == (200, 200)
    assert fake.events == [e1, e2]


def test_validate_false_only_counts(client: httpx.Client, fake: FakeGraphAPI) -> None:
    fake.validate = False
    response = post(client, body([event(event_time=1)]))
    assert response.json()["events_received"] == 1


# -- faults -------------------------------------------------------------------------------------


def test_fail_next_then_normal_answers(client: httpx.Client, fake: FakeGraphAPI) -> None:
    fake.fail_next(2, status=503)
    first = post(client, body([event()]))
    assert first.status_code == 503
    error = first.json()["error"]
    assert (error["code"], error["is_transient"]) == (2, True)
    assert post(client, body([event()])).status_code == 503
    assert post(client, body([event()])).status_code == 200
    assert len(fake.events) == 1
    assert [r.status for r in fake.requests] == [503, 503, 200]


def test_fail_next_with_code_subcode_and_headers(client: httpx.Client, fake: FakeGraphAPI) -> None:
    fake.fail_next(status=400, code=100, subcode=2804050, message="too little", retry_after=3)
    response = post(client, body([event()]))
    error = response.json()["error"]
    assert (error["code"], error["error_subcode"], error["message"]) == (100, 2804050, "too little")
    assert response.headers["retry-after"] == "3"


def test_rate_limit_token_error_and_odd_answers(client: httpx.Client, fake: FakeGraphAPI) -> None:
    fake.rate_limit(1, retry_after=2)
    fake.rate_limit(1, code=80004)
    fake.token_error()
    fake.html_502()
    fake.empty_200()
    fake.bad_json()
    fake.wrong_count()
    answers = [post(client, body([event(), event()])) for _ in range(7)]
    assert answers[0].status_code == 429
    assert answers[0].headers["retry-after"] == "2"
    assert answers[0].json()["error"]["code"] == 4
    assert answers[1].json()["error"]["code"] == 80004
    assert answers[2].json()["error"]["code"] == 190
    assert answers[3].status_code == 502
    assert answers[3].headers["content-type"] == "text/html"
    assert (answers[4].status_code, answers[4].content) == (200, b"")
    assert answers[5].status_code == 200
    with pytest.raises(ValueError, match="Expecting"):
        answers[5].json()
    assert answers[6].json()["events_received"] == 1
    assert fake.events == []  # none of these is a delivery
    assert post(client, body([event()])).json()["events_received"] == 1


def test_poison_rejects_any_request_carrying_the_event(
    client: httpx.Client, fake: FakeGraphAPI
) -> None:
    bad = event()
    fake.poison(bad["event_id"], subcode=2804019)
    error = post(client, body([event(), bad])).json()["error"]
    assert (error["code"], error["error_subcode"]) == (100, 2804019)
    assert post(client, body([event()])).status_code == 200
    fake.unpoison(bad["event_id"])
    assert post(client, body([bad])).status_code == 200


def test_transport_down_hang_and_latency(fake: FakeGraphAPI) -> None:
    timeout = httpx.Timeout(0.2)
    with httpx.Client(transport=fake.transport(), timeout=timeout) as client:
        url = f"https://graph.facebook.com{PATH}"
        with fake.outage(), pytest.raises(httpx.ConnectError):
            client.post(url, content=body([event()]))
        fake.hang_next(1, seconds=5)
        with pytest.raises(httpx.ReadTimeout):
            client.post(url, content=body([event()]))
        fake.latency = 1.0
        with pytest.raises(httpx.ReadTimeout):
            client.post(url, content=body([event()]))
        fake.latency = 0.01
        assert client.post(url, content=body([event()])).status_code == 200
    assert fake.attempts == 3  # the timed-out latency request never reached the handler
    assert [r.status for r in fake.requests] == [0, 0, 200]


def test_records_and_reset(client: httpx.Client, fake: FakeGraphAPI) -> None:
    e = event()
    post(client, body([e], test_event_code="TEST1"))
    (request,) = fake.requests
    assert request.method == "POST"
    assert request.path == PATH
    assert request.pixel_id == FAKE_PIXEL_ID
    assert request.headers["content-type"] == "application/json"
    assert request.json()["test_event_code"] == "TEST1"
    assert request.event_ids == [e["event_id"]]
    assert json.loads(request.answer)["events_received"] == 1
    assert not fake.wait_for_events(2, timeout=0.05)
    fake.fail_next(3)
    fake.reset()
    assert (fake.events, fake.requests, fake.attempts) == ([], [], 0)
    assert post(client, body([event()])).status_code == 200


def test_on_request_sees_body_and_answer(client: httpx.Client, fake: FakeGraphAPI) -> None:
    seen: list[tuple[str, Mapping[str, Any], Mapping[str, Any]]] = []
    fake.on_request = lambda pixel, sent, answer: seen.append((pixel, sent, answer))
    e = event()
    post(client, body([e]))
    ((pixel, sent, answer),) = seen
    assert pixel == FAKE_PIXEL_ID
    assert sent["data"] == [e]
    assert answer["events_received"] == 1


# -- real HTTP ----------------------------------------------------------------------------------


def test_real_server_answers_drops_and_stops_cleanly() -> None:
    fake = FakeGraphAPI()
    with pytest.raises(RuntimeError, match="start"):
        _ = fake.url
    with fake, httpx.Client(base_url=fake.url, timeout=5) as client:
        assert fake.url.startswith("http://127.0.0.1:")
        ok = client.post(PATH, content=body([event()]))
        assert ok.status_code == 200
        assert ok.headers["content-type"] == "application/json"
        fake.down = True
        with pytest.raises(httpx.TransportError):
            client.post(PATH, content=body([event()]))
        fake.down = False
        fake.hang_next(1, seconds=5)
        with pytest.raises(httpx.ReadTimeout):
            client.post(PATH, content=body([event()]), timeout=0.2)
        assert client.post(PATH, content=body([event()])).status_code == 200
    assert len(fake.events) == 2
    fake.stop()  # idempotent


def test_real_server_is_thread_safe() -> None:
    with FakeGraphAPI() as fake:

        def send() -> None:
            with httpx.Client(base_url=fake.url, timeout=5) as client:
                for _ in range(10):
                    client.post(PATH, content=body([event(), event()]))

        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert fake.wait_for_events(160, timeout=5)
        assert len(set(fake.event_ids)) == 160
        assert len(fake.requests) == 80


def test_fixtures_give_a_started_fake_and_a_config(
    fake_graph: FakeGraphAPI, fake_graph_config: CAPIConfig
) -> None:
    assert fake_graph_config.graph_url == fake_graph.url
    assert fake_graph_config.pixel_id == FAKE_PIXEL_ID
    assert fake_graph_config.access_token == fake_graph.access_token
    url = fake_graph_config.events_url(FAKE_PIXEL_ID)
    response = httpx.post(url, content=body([event()]), timeout=5)
    assert response.status_code == 200
    assert repr(fake_graph).startswith("FakeGraphAPI(http://127.0.0.1:")
