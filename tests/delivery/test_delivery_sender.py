"""The sender against the fake Graph API over real HTTP on 127.0.0.1.

Every test ends by checking the books: enqueued == delivered + dead_lettered + dropped + backlog.
Waits are bounded polls and events (never a bare sleep that asserts timing).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from built_events import EMAIL_HASH, make_event
from live import wait_until

from capi_middleware.config import CAPIConfig, Destination
from capi_middleware.delivery.memory_store import MemoryStore
from capi_middleware.delivery.sender import Sender, get_sender
from capi_middleware.delivery.stats import DeliveryStats
from capi_middleware.delivery.store import NewEvent
from capi_middleware.testing.fake import FAKE_PIXEL_ID, FakeGraphAPI

APP_SECRET = "app-secret-never-logged"
WAIT = 10.0
SENDER_THREAD = "capi-middleware-sender"  # the worker's name, as thread dumps show it


def assert_balanced(stats: DeliveryStats) -> DeliveryStats:
    """The invariant: every enqueued event is delivered, dead-lettered, dropped or waiting."""
    assert stats.enqueued == (
        stats.delivered
        + sum(stats.dead_lettered.values())
        + sum(stats.dropped.values())
        + stats.backlog
    ), stats
    assert stats.balanced
    return stats


def assert_exactly_once(fake: FakeGraphAPI, ids: list[str], pixel_id: str | None = None) -> None:
    got = [str(e["event_id"]) for e in (fake.events_for(pixel_id) if pixel_id else fake.events)]
    assert len(got) == len(set(got)), "an event was delivered twice"
    assert sorted(got) == sorted(ids), "an event is missing"


@pytest.fixture
def senders() -> Iterator[list[Sender]]:
    made: list[Sender] = []
    yield made
    for s in made:
        s.close(0.5)
        assert_balanced(s.stats())


@pytest.fixture
def make_sender(
    fake_graph: FakeGraphAPI,
    senders: list[Sender],
) -> Callable[..., Sender]:
    def make(**options: Any) -> Sender:
        tunables = {
            k: options.pop(k)
            for k in ("backoff_base", "backoff_cap", "rate_limit_pause", "config_error_pause")
            if k in options
        }
        store = options.pop("store", None)
        values: dict[str, Any] = {
            "pixel_id": FAKE_PIXEL_ID,
            "access_token": fake_graph.access_token,
            "graph_url": fake_graph.url,
            "flush_interval": 0.05,
            "timeout": 2.0,
        }
        values.update(options)
        sender = Sender(CAPIConfig(**values), store=store)
        sender.backoff_base = 0.02
        sender.backoff_cap = 0.1
        sender.rate_limit_pause = 0.3
        sender.config_error_pause = 0.3
        for k, v in tunables.items():
            setattr(sender, k, v)
        senders.append(sender)
        return sender

    return make


def submit_all(sender: Sender, n: int, **kw: Any) -> list[str]:
    ids = []
    for _ in range(n):
        event = make_event(**kw)
        status = sender.submit(event)
        assert status.ok, status
        ids.append(event["event_id"])
    return ids


# -- the happy path ----------------------------------------------------------------------------


def test_batches_of_at_most_batch_size_and_each_event_once(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    sender = make_sender(batch_size=400)
    ids = submit_all(sender, 1000)
    assert sender.flush(WAIT)
    assert_exactly_once(fake_graph, ids)
    sizes = [len(r.event_ids) for r in fake_graph.requests]
    assert max(sizes) <= 400
    assert sum(sizes) == 1000
    stats = assert_balanced(sender.stats())
    assert (stats.enqueued, stats.delivered, stats.backlog) == (1000, 1000, 0)
    assert stats.requests == len(fake_graph.requests)


def test_request_shape_token_in_body_not_url(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    fake_graph.app_secret = APP_SECRET
    sender = make_sender(app_secret=APP_SECRET, test_event_code="TEST123", partner_agent="pa")
    ids = submit_all(sender, 3)
    assert sender.flush(WAIT)
    (request,) = fake_graph.requests
    assert request.path == f"/v26.0/{FAKE_PIXEL_ID}/events"
    assert fake_graph.access_token not in request.path
    body = request.json()
    assert body["access_token"] == fake_graph.access_token
    assert body["test_event_code"] == "TEST123"
    assert body["partner_agent"] == "pa"
    assert len(body["appsecret_proof"]) == 64
    assert request.headers["content-type"] == "application/json"
    assert request.event_ids == ids
    assert_balanced(sender.stats())


def test_extra_pixels_each_receive_every_event(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    extra = (
        Destination(pixel_id="222", access_token=fake_graph.access_token),
        Destination(pixel_id="333", access_token=fake_graph.access_token),
    )
    sender = make_sender(extra_pixels=extra)
    ids = submit_all(sender, 20)
    assert sender.flush(WAIT)
    for pixel in (FAKE_PIXEL_ID, "222", "333"):
        assert_exactly_once(fake_graph, ids, pixel)
    stats = assert_balanced(sender.stats())
    assert stats.enqueued == 60
    assert stats.delivered == 60


def test_retry_sends_the_same_bytes(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    fake_graph.fail_next(2, status=503)
    # One batch of five: the batch timer never fires before flush() (a loaded machine could
    # otherwise let it send the first event alone).
    sender = make_sender(flush_interval=30.0)
    submit_all(sender, 5)
    assert sender.flush(WAIT)
    bodies = [r.body for r in fake_graph.requests]
    assert len(bodies) == 3
    assert bodies[0] == bodies[1] == bodies[2]
    stats = assert_balanced(sender.stats())
    assert stats.retried == 10


# -- outages and odd answers -------------------------------------------------------------------


def test_outage_then_recovery_delivers_everything_exactly_once(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    sender = make_sender(batch_size=50)
    with fake_graph.outage():
        ids = submit_all(sender, 120)
        # The sender keeps trying while the Graph API is down (a compressed 30-second outage).
        assert fake_graph.wait_for_requests(6, WAIT)
        stats = assert_balanced(sender.stats())
        assert stats.delivered == 0
        assert stats.backlog == 120
        assert fake_graph.events == []
        more = submit_all(sender, 30)
    assert sender.flush(WAIT)
    assert_exactly_once(fake_graph, ids + more)
    stats = assert_balanced(sender.stats())
    assert stats.delivered == 150
    assert stats.retried > 0


@pytest.mark.parametrize(
    "fault",
    [
        lambda f: f.html_502(2),
        lambda f: f.empty_200(2),
        lambda f: f.bad_json(2),
        lambda f: f.wrong_count(2),
        lambda f: f.fail_next(2, status=500),
        lambda f: f.fail_next(2, status=400, code=2, is_transient=True),
        lambda f: f.fail_next(1, status=503, body="upstream connect error"),
        lambda f: f.fail_next(1, status=408, body=""),
    ],
    ids=["html_502", "empty_200", "bad_json", "wrong_count", "500", "code_2", "503_text", "408"],
)
def test_odd_and_transient_answers_are_retried(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
    fault: Callable[[FakeGraphAPI], None],
) -> None:
    fault(fake_graph)
    sender = make_sender()
    ids = submit_all(sender, 10)
    assert sender.flush(WAIT)
    assert_exactly_once(fake_graph, ids)
    stats = assert_balanced(sender.stats())
    assert stats.retried >= 10
    assert stats.dead_lettered == {}
    assert len(fake_graph.requests) >= 2


def test_a_hung_request_times_out_and_is_retried(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    fake_graph.hang_next(1, seconds=3)
    sender = make_sender(timeout=0.2)
    ids = submit_all(sender, 4)
    assert sender.flush(WAIT)
    assert_exactly_once(fake_graph, ids)
    assert assert_balanced(sender.stats()).retried == 4


# -- rate limits -------------------------------------------------------------------------------


def test_rate_limit_pauses_everything_and_honours_retry_after(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    fake_graph.rate_limit(1, retry_after=1)
    sender = make_sender()
    ids = submit_all(sender, 10)
    assert fake_graph.wait_for_requests(1, WAIT)
    assert wait_until(lambda: sender.stats().pause_reason == "rate_limited")
    paused = sender.stats()
    assert paused.paused_until is not None
    assert 0 < paused.paused_until - time.time() <= 1.05
    ids += submit_all(sender, 10)
    # While paused, nothing is sent, however many events arrive.
    while True:
        stats = assert_balanced(sender.stats())
        if stats.pause_reason is None:
            break
        assert len(fake_graph.requests) == 1
        assert stats.delivered == 0
        time.sleep(0.02)
    assert sender.flush(WAIT)
    assert_exactly_once(fake_graph, ids)
    assert assert_balanced(sender.stats()).delivered == 20


@pytest.mark.parametrize("code", [4, 17, 32, 613, 80004])
def test_rate_limit_codes_without_retry_after_use_the_default_pause(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
    code: int,
) -> None:
    fake_graph.rate_limit(1, code=code)
    sender = make_sender(rate_limit_pause=0.2)
    ids = submit_all(sender, 3)
    assert fake_graph.wait_for_requests(1, WAIT)
    assert wait_until(lambda: sender.stats().pause_reason == "rate_limited")
    assert sender.flush(WAIT)
    assert_exactly_once(fake_graph, ids)
    assert_balanced(sender.stats())


# -- bad events --------------------------------------------------------------------------------


def test_one_poisoned_event_in_100_is_isolated_in_few_requests(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    records: list[Mapping[str, Any]] = []
    sender = make_sender(flush_interval=5.0, on_dead_letter=records.append)
    ids = submit_all(sender, 100)
    bad = ids[37]
    fake_graph.poison(bad, subcode=2804019, message="Malformed contents")
    assert sender.flush(WAIT)
    assert_exactly_once(fake_graph, [i for i in ids if i != bad])
    requests = len(fake_graph.requests)
    assert requests <= 2 * math.log2(100) + 2, requests
    stats = assert_balanced(sender.stats())
    assert stats.dead_lettered == {"invalid_event": 1}
    assert stats.delivered == 99
    (record,) = records
    assert record["event_id"] == bad
    assert record["event_name"] == "Purchase"
    assert record["pixel_id"] == FAKE_PIXEL_ID
    assert (record["reason"], record["code"], record["subcode"]) == ("invalid_event", 100, 2804019)


def test_real_validation_errors_are_dead_lettered_with_meta_subcodes(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    records: list[Mapping[str, Any]] = []
    sender = make_sender(flush_interval=5.0, on_dead_letter=records.append)
    good = [make_event() for _ in range(6)]
    no_currency = make_event()
    del no_currency["custom_data"]["currency"]
    raw_email = make_event()
    raw_email["user_data"]["em"] = ["john@example.com"]
    bad_fbc = make_event()
    bad_fbc["user_data"]["fbc"] = "IwAR_raw_fbclid"
    for event in [*good[:3], no_currency, raw_email, *good[3:], bad_fbc]:
        sender.submit(event)
    assert sender.flush(WAIT)
    assert_exactly_once(fake_graph, [e["event_id"] for e in good])
    got = {r["event_id"]: r["subcode"] for r in records}
    assert got == {
        no_currency["event_id"]: 2804010,
        raw_email["event_id"]: 2804016,
        bad_fbc["event_id"]: 2804001,
    }
    assert assert_balanced(sender.stats()).dead_lettered == {"invalid_event": 3}


def test_a_failing_dead_letter_hook_is_logged_not_raised(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def hook(record: Mapping[str, Any]) -> None:
        raise RuntimeError("hook broke")

    sender = make_sender(on_dead_letter=hook)
    event = make_event()
    fake_graph.poison(event["event_id"])
    with caplog.at_level(logging.ERROR, logger="capi_middleware.delivery"):
        sender.submit(event)
        ids = submit_all(sender, 2)
        assert sender.flush(WAIT)
    assert "on_dead_letter hook raised" in caplog.text
    assert_exactly_once(fake_graph, ids)
    assert assert_balanced(sender.stats()).dead_lettered == {"invalid_event": 1}


# -- too old -----------------------------------------------------------------------------------


def test_too_old_events_are_never_sent(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    records: list[Mapping[str, Any]] = []
    sender = make_sender(flush_interval=5.0, on_dead_letter=records.append)
    old = make_event(age=8 * 86_400)
    store_30_days = make_event(age=30 * 86_400, action_source="physical_store")
    store_63_days = make_event(age=63 * 86_400, action_source="physical_store")
    fresh = submit_all(sender, 5)
    for e in (old, store_30_days, store_63_days):
        sender.submit(e)
    assert sender.flush(WAIT)
    assert_exactly_once(fake_graph, [*fresh, store_30_days["event_id"]])
    sent = [i for r in fake_graph.requests for i in r.event_ids]
    assert old["event_id"] not in sent
    assert store_63_days["event_id"] not in sent
    assert {r["event_id"] for r in records} == {old["event_id"], store_63_days["event_id"]}
    assert all(r["reason"] == "too_old" for r in records)
    assert assert_balanced(sender.stats()).dead_lettered == {"too_old": 2}


def test_events_ageing_out_while_retrying_are_dead_lettered_not_retried_forever(
    make_sender: Callable[..., Sender],
    fake_graph: FakeGraphAPI,
) -> None:
    # 7 days minus a moment: it expires during the outage, and is given up on at the next try.
    almost = make_event(age=7 * 86_400 - 1.5)
    sender = make_sender()
    with fake_graph.outage():
        sender.submit(almost)
        assert fake_graph.wait_for_requests(1, WAIT)
        assert wait_until(lambda: sender.stats().dead_lettered.get("too_old") == 1)
    assert sender.flush(WAIT)
    assert fake_graph.events == []
    assert_balanced(sender.stats())


# -- bad configuration -------------------------------------------------------------------------


def test_token_error_pauses_keeps_events_logs_once_and_resumes(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
    caplog: pytest.LogCaptureFixture,
) -> None:
    right = fake_graph.access_token
    fake_graph.access_token = "a-different-token"
    sender = make_sender(config_error_pause=0.05, access_token=right)
    with caplog.at_level(logging.DEBUG):
        ids = submit_all(sender, 25)
        assert fake_graph.wait_for_requests(4, WAIT)  # tried, paused, tried again...
        stats = assert_balanced(sender.stats())
        assert stats.delivered == 0
        assert stats.dead_lettered == {}
        assert stats.backlog == 25
        fake_graph.access_token = right  # the token is fixed
        assert sender.flush(WAIT)
    assert_exactly_once(fake_graph, ids)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "code=190" in errors[0].getMessage()
    assert right not in caplog.text
    assert assert_balanced(sender.stats()).delivered == 25


def test_resume_ends_a_long_config_pause_early(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    fake_graph.token_error(1)
    sender = make_sender(config_error_pause=3600)
    ids = submit_all(sender, 5)
    assert wait_until(lambda: sender.stats().pause_reason == "bad_config")
    assert not sender.flush(0.2)
    assert len(fake_graph.requests) == 1
    sender.resume()
    assert sender.flush(WAIT)
    assert_exactly_once(fake_graph, ids)
    assert sender.stats().pause_reason is None


def test_a_bad_extra_pixel_does_not_hold_up_the_main_one(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    extra = (Destination(pixel_id="222", access_token="revoked-token"),)
    sender = make_sender(extra_pixels=extra, config_error_pause=3600)
    ids = submit_all(sender, 10)
    assert wait_until(
        lambda: sender.stats().delivered == 10 and sender.stats().pause_reason == "bad_config"
    )
    assert_exactly_once(fake_graph, ids, FAKE_PIXEL_ID)
    stats = assert_balanced(sender.stats())
    assert stats.delivered == 10
    assert stats.backlog == 10
    assert stats.dead_lettered == {}


def test_wrong_app_secret_is_a_config_error_not_bad_events(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    fake_graph.app_secret = APP_SECRET
    sender = make_sender(app_secret="not-the-secret", config_error_pause=3600)
    submit_all(sender, 4)
    assert wait_until(lambda: sender.stats().pause_reason == "bad_config")
    stats = assert_balanced(sender.stats())
    assert stats.dead_lettered == {}
    assert stats.backlog == 4


# -- the secret never leaks --------------------------------------------------------------------


def test_token_and_app_secret_never_in_logs(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_graph.app_secret = APP_SECRET
    token = fake_graph.access_token
    with caplog.at_level(logging.DEBUG):
        sender = make_sender(app_secret=APP_SECRET, config_error_pause=0.05)
        fake_graph.fail_next(1, status=500)
        fake_graph.fail_next(1, status=400, code=190, message=f"bad token {token} given")
        fake_graph.rate_limit(1, retry_after=0.05)
        event = make_event()
        fake_graph.poison(event["event_id"], message=f"echo {token}")
        sender.submit(event)
        submit_all(sender, 5)
        assert sender.flush(WAIT)
        sender.close(WAIT)
    assert caplog.records, "expected log output to inspect"
    assert token not in caplog.text
    assert APP_SECRET not in caplog.text
    assert token not in repr(sender.stats())
    assert_balanced(sender.stats())


# -- dry run -----------------------------------------------------------------------------------


def test_dry_run_sends_nothing_logs_and_counts_delivered(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="capi_middleware.delivery"):
        sender = make_sender(dry_run=True)
        ids = submit_all(sender, 3)
        assert sender.flush(WAIT)
    assert fake_graph.attempts == 0
    stats = assert_balanced(sender.stats())
    assert stats.dry_run
    assert stats.delivered == 3
    assert stats.requests == 0
    assert "dry run: would send 3 event(s) to pixel" in caplog.text
    assert all(i in caplog.text for i in ids)
    assert EMAIL_HASH not in caplog.text
    assert fake_graph.access_token not in caplog.text


def test_dry_run_without_a_pixel_still_builds_and_logs(
    caplog: pytest.LogCaptureFixture, senders: list[Sender]
) -> None:
    sender = Sender(CAPIConfig(dry_run=True, flush_interval=0.01))
    senders.append(sender)
    with caplog.at_level(logging.INFO, logger="capi_middleware.delivery"):
        assert sender.submit(make_event(name="Lead")).ok
        assert sender.flush(WAIT)
    assert "Lead(" in caplog.text
    assert assert_balanced(sender.stats()).delivered == 1


# -- lifecycle, bounds and drops ---------------------------------------------------------------


def test_flush_close_and_submit_after_close(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    running = set(threading.enumerate())
    sender = make_sender(flush_interval=30.0)  # only flush/close sends the partial batch
    ids = submit_all(sender, 7)
    (worker,) = [t for t in set(threading.enumerate()) - running if t.name == SENDER_THREAD]
    assert worker.daemon
    assert sender.close(WAIT) is True
    assert_exactly_once(fake_graph, ids)
    assert not worker.is_alive()
    late = sender.submit(make_event())
    assert not late.ok
    assert late.reason == "closed"
    stats = assert_balanced(sender.stats())
    assert stats.dropped == {"closed": 1}
    assert sender.close(1) is True  # idempotent


def test_close_gives_up_on_what_it_cannot_send_and_counts_it(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    sender = make_sender(backoff_base=60, backoff_cap=60)
    with fake_graph.outage():
        submit_all(sender, 5)
        assert fake_graph.wait_for_requests(1, WAIT)
        assert sender.close(0.3) is False
    stats = assert_balanced(sender.stats())
    assert stats.dropped == {"closed": 5}
    assert stats.backlog == 0


def test_queue_full_drops_are_counted(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    sender = make_sender(max_queue=10, flush_interval=30.0)
    statuses = [sender.submit(make_event()) for _ in range(15)]
    assert sum(s.accepted for s in statuses) == 10
    assert [s.reason for s in statuses[10:]] == ["queue_full"] * 5
    stats = assert_balanced(sender.stats())
    assert stats.dropped == {"queue_full": 5}
    assert sender.flush(WAIT)
    assert len(fake_graph.events) == 10


def test_unencodable_event_is_dropped_not_raised(
    make_sender: Callable[..., Sender],
) -> None:
    sender = make_sender()
    event = make_event()
    event["custom_data"]["value"] = float("nan")
    status = sender.submit(event)
    assert (status.accepted, status.dropped, status.reason) == (0, 1, "unencodable")
    assert assert_balanced(sender.stats()).dropped == {"unencodable": 1}


class _BrokenStore(MemoryStore):
    """A store whose disk is gone: put raises."""

    def put(self, events: Any, *, wait: bool = False) -> int:
        raise OSError("disk I/O error")


def test_store_errors_are_counted_as_dropped(make_sender: Callable[..., Sender]) -> None:
    sender = make_sender(store=_BrokenStore(10))
    sender.submit(make_event())
    assert sender.flush(WAIT)
    assert assert_balanced(sender.stats()).dropped == {"store_error": 1}


class _DurableMemoryStore(MemoryStore):
    """Stands in for a durable store (the SQLite outbox has its own tests)."""

    @property
    def durable(self) -> bool:
        return True


def test_events_left_in_a_durable_store_are_sent_at_start(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    store = _DurableMemoryStore(100)
    event = make_event()
    payload = __import__("json").dumps(event).encode()
    store.put([NewEvent(FAKE_PIXEL_ID, payload, event["event_id"], event["event_time"], "website")])
    sender = make_sender(store=store)
    assert sender.stats().enqueued == 1  # carried over from "the last run"
    # Sent without waiting for new traffic.
    assert fake_graph.wait_for_events(1, WAIT)
    assert fake_graph.event_ids == [event["event_id"]]
    status = sender.submit(make_event(), durable=True)
    assert status.ok
    assert sender.flush(WAIT)
    assert len(fake_graph.events) == 2
    assert assert_balanced(sender.stats()).delivered == 2


def test_the_books_balance_at_every_read_under_load(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    sender = make_sender(batch_size=100, max_queue=500)
    fake_graph.fail_next(3, status=503)
    stop = threading.Event()
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            assert_balanced(sender.stats())
            reads += 1

    def writer() -> None:
        for _ in range(500):
            sender.submit(make_event())

    read_thread = threading.Thread(target=reader)
    read_thread.start()
    writers = [threading.Thread(target=writer) for _ in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    assert sender.flush(WAIT)
    stop.set()
    read_thread.join()
    assert reads > 10
    stats = assert_balanced(sender.stats())
    assert stats.enqueued == 2000
    assert stats.delivered + stats.dropped.get("queue_full", 0) == 2000
    assert len(fake_graph.events) == stats.delivered


def test_get_sender_is_one_per_config(fake_graph: FakeGraphAPI) -> None:
    config = CAPIConfig(
        pixel_id=FAKE_PIXEL_ID, access_token=fake_graph.access_token, graph_url=fake_graph.url
    )
    a = get_sender(config)
    try:
        assert get_sender(config) is a
        assert get_sender(config.replace(consent=True)) is a  # capture options do not matter
        b = get_sender(config.replace(batch_size=10))
        assert b is not a
        b.close(1)
        a.close(1)
        c = get_sender(config)
        assert c is not a  # a closed sender is replaced
        c.close(1)
    finally:
        a.close(1)


# -- submit_json ------------------------------------------------------------------------------


def test_submit_json_sends_the_given_bytes_once_per_destination(
    fake_graph: FakeGraphAPI, make_sender: Callable[..., Sender]
) -> None:
    # track()'s path: build_event encoded the event already; the sender must not re-encode it.
    sender = make_sender()
    event = make_event()
    payload = json.dumps(event, separators=(",", ":")).encode()
    status = sender.submit_json(
        payload,
        event_id=event["event_id"],
        event_time=event["event_time"],
        action_source="website",
    )
    assert status.ok
    assert status.accepted == 1
    assert sender.flush(WAIT)
    assert_exactly_once(fake_graph, [event["event_id"]])
    assert payload in fake_graph.requests[-1].body
    assert assert_balanced(sender.stats()).delivered == 1
    sender.close(WAIT)
    closed = sender.submit_json(
        payload, event_id=event["event_id"], event_time=event["event_time"], action_source="website"
    )
    assert (closed.accepted, closed.reason) == (0, "closed")
    assert assert_balanced(sender.stats()).dropped == {"closed": 1}


# -- fork ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_starts_empty_and_sends_only_its_own_events(
    fake_graph: FakeGraphAPI,
    make_sender: Callable[..., Sender],
) -> None:
    sender = make_sender(flush_interval=30.0)  # the parent's events wait in memory
    parent_ids = submit_all(sender, 5)
    child_id = uuid.uuid4().hex
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never return into pytest
        code = 1
        try:
            os.close(read_fd)
            fresh = sender.stats()
            ok = fresh.enqueued == 0 and fresh.backlog == 0
            sender.submit(make_event(child_id))
            ok = ok and sender.flush(WAIT) and sender.stats().delivered == 1
            os.write(write_fd, b"ok" if ok else repr(fresh).encode())
            code = 0 if ok else 2
        finally:
            os._exit(code)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    report = os.read(read_fd, 1000)
    os.close(read_fd)
    assert os.waitstatus_to_exitcode(status) == 0, report
    assert sender.flush(WAIT)
    assert_exactly_once(fake_graph, [*parent_ids, child_id])
    child_requests = [r for r in fake_graph.requests if child_id in r.event_ids]
    assert [r.event_ids for r in child_requests] == [[child_id]]
    assert assert_balanced(sender.stats()).delivered == 5
