"""The Redis Streams outbox against a real redis-server (tests/conftest.py), never a mock.

Each test has its own key prefix on the session's server, so tests do not see each other's
streams. Outage tests start a private server of their own and stop it. Every test that runs a
sender ends by checking the books: enqueued == delivered + dead_lettered + dropped + backlog.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis
from conftest import RedisServer
from live import free_port, wait_until

from capi_middleware import CAPIMiddleware
from capi_middleware.config import CAPIConfig
from capi_middleware.delivery.redis_store import RedisStore
from capi_middleware.delivery.sender import Sender
from capi_middleware.delivery.stats import DeliveryStats
from capi_middleware.delivery.store import DeadLetter, NewEvent, SharedStore, StoredEvent
from capi_middleware.testing import FAKE_PIXEL_ID, FakeGraphAPI

WAIT = 10.0


def claim_until(store: RedisStore, count: int, *, lease: float = 60) -> list[StoredEvent]:
    """Claim until ``count`` events were handed out, or the wait ran out."""
    got: list[StoredEvent] = []
    deadline = time.monotonic() + WAIT
    while len(got) < count and time.monotonic() < deadline:
        got.extend(store.claim(500, lease_seconds=lease, now=time.time()))
        time.sleep(0.01)
    return got


def assert_balanced(stats: DeliveryStats) -> DeliveryStats:
    assert stats.enqueued == stats.accounted, stats
    return stats


def new_event(n: int, *, pixel_id: str = FAKE_PIXEL_ID, age: float = 0) -> NewEvent:
    body = {
        "event_name": "Purchase",
        "event_time": int(time.time() - age),
        "event_id": f"ev-{n}",
        "action_source": "website",
        "user_data": {"em": ["a" * 64], "client_user_agent": "pytest"},
        "custom_data": {"value": 1.0, "currency": "USD"},
    }
    return NewEvent(
        pixel_id, json.dumps(body).encode(), f"ev-{n}", int(body["event_time"]), "website"
    )


@pytest.fixture
def outbox(redis_server: RedisServer) -> str:
    """A Redis outbox URL of the session's server with a key prefix of this test's own."""
    return f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def stores() -> Iterator[list[RedisStore]]:
    made: list[RedisStore] = []
    yield made
    for s in made:
        s.close(2.0)


@pytest.fixture
def senders() -> Iterator[list[Sender]]:
    made: list[Sender] = []
    yield made
    for s in made:
        s.close(1.0)
        assert_balanced(s.stats())


@pytest.fixture
def make_sender(fake_graph: FakeGraphAPI, senders: list[Sender]) -> Callable[..., Sender]:
    def make(outbox: Any, **options: Any) -> Sender:
        config = CAPIConfig(
            pixel_id=FAKE_PIXEL_ID,
            access_token=fake_graph.access_token,
            graph_url=fake_graph.url,
            flush_interval=0.02,
            timeout=2.0,
            outbox=outbox,
            **options,
        )
        sender = Sender(config)
        sender.backoff_base = 0.02
        sender.backoff_cap = 0.1
        sender.lease_seconds = 2.0
        sender.outbox_poll = 0.1
        senders.append(sender)
        return sender

    return make


def event_dict(n: int, *, age: float = 0) -> dict[str, Any]:
    return json.loads(new_event(n, age=age).payload)  # type: ignore[no-any-return]


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://cache.internal:6380/2",
        "REDIS://localhost",
        "redis://:secret@localhost:6379/0?prefix=shop",
    ],
)
def test_config_accepts_redis_urls(url: str) -> None:
    assert CAPIConfig(outbox=url).outbox == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://", "names no host"),
        ("redis://localhost:99999/0", "bad host or port"),
        ("redis://localhost:6379/zero", "database number"),
        ("http://localhost:6379", "redis:// or rediss://"),
        ("", "must not be empty"),
    ],
)
def test_config_rejects_bad_outbox_naming_the_option(url: str, says: str) -> None:
    with pytest.raises(ValueError, match="outbox") as info:
        CAPIConfig(outbox=url)
    assert says in str(info.value)
    assert "META_OUTBOX" in str(info.value)


def test_config_from_env_rejects_a_bad_url() -> None:
    with pytest.raises(ValueError, match=r"outbox \[META_OUTBOX\]"):
        CAPIConfig.from_env({"META_OUTBOX": "redis://host:port/0"})


def test_a_password_in_the_url_is_never_shown() -> None:
    config = CAPIConfig(outbox="redis://user:s3cret-pw@localhost:6379/0")
    assert "s3cret-pw" not in repr(config)
    with pytest.raises(ValueError) as info:
        CAPIConfig(outbox="redis://user:s3cret-pw@localhost:6379/x")
    assert "s3cret-pw" not in str(info.value)
    store = RedisStore("redis://user:s3cret-pw@127.0.0.1:1/0", socket_timeout=0.2)
    try:
        assert "s3cret-pw" not in repr(store)
    finally:
        store.close(1.0)


def test_config_accepts_a_redis_client_and_rejects_other_objects(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    assert CAPIConfig(outbox=client).outbox is client
    with pytest.raises(ValueError, match=r"redis\.Redis client"):
        CAPIConfig(outbox=object())


# -- the store -------------------------------------------------------------------------------


def test_put_claim_ack_retry_dead_letter_and_the_books(
    outbox: str, stores: list[RedisStore]
) -> None:
    store = RedisStore(outbox)
    stores.append(store)
    events = [new_event(i) for i in range(30)]
    assert store.put(events, wait=True) == 30
    assert store.durable
    assert store.books().backlog == 30
    assert store.books().enqueued == 30
    claimed = store.claim(20, lease_seconds=60, now=time.time())
    assert [e.event_id for e in claimed] == [f"ev-{i}" for i in range(20)]  # oldest first
    assert claimed[0].payload == events[0].payload  # byte for byte
    store.ack([e.id for e in claimed[:10]])
    store.retry([e.id for e in claimed[10:15]], not_before=time.time() + 0.3)
    store.dead_letter(
        [e.id for e in claimed[15:]], DeadLetter("invalid_event", code=100, subcode=2804019)
    )
    books = store.books()
    assert books.delivered == 10
    assert books.dead_lettered == {"invalid_event": 5}
    assert books.backlog == 15
    assert books.enqueued == 30
    rest = store.claim(100, lease_seconds=60, now=time.time())
    assert [e.event_id for e in rest] == [f"ev-{i}" for i in range(20, 30)]  # retries not due
    later = store.claim(100, lease_seconds=60, now=time.time() + 0.5)
    assert [(e.event_id, e.attempts) for e in later] == [(f"ev-{i}", 1) for i in range(10, 15)]
    store.ack([e.id for e in rest + later])
    assert store.books().backlog == 0
    dead = redis.Redis.from_url(outbox.split("?")[0]).xrange(store.keys.dead)
    assert len(dead) == 5
    assert dead[0][1][b"dead_reason"] == b"invalid_event"
    assert dead[0][1][b"dead_subcode"] == b"2804019"
    assert dead[0][1][b"i"] == b"ev-15"


def test_two_consumers_share_one_stream_and_each_entry_goes_to_one(
    outbox: str, stores: list[RedisStore]
) -> None:
    a, b = RedisStore(outbox), RedisStore(outbox)
    stores += [a, b]
    assert a.consumer != b.consumer
    a.put([new_event(i) for i in range(50)], wait=True)
    got_a = a.claim(20, lease_seconds=60, now=time.time())
    got_b = b.claim(100, lease_seconds=60, now=time.time())
    assert len(got_a) == 20
    assert len(got_b) == 30
    assert not {e.event_id for e in got_a} & {e.event_id for e in got_b}
    a.ack([e.id for e in got_a])
    b.ack([e.id for e in got_b])
    assert wait_until(lambda: a.books().backlog == 0 and a.books().delivered == 50)


def test_a_dead_consumers_entries_are_taken_over_once_its_lease_ran_out(
    outbox: str, redis_server: RedisServer, stores: list[RedisStore]
) -> None:
    store = RedisStore(outbox)
    stores.append(store)
    store.put([new_event(i) for i in range(5)], wait=True)
    client = redis.Redis.from_url(redis_server.url)
    # A consumer that claims and dies: it never renews, acknowledges or hands anything back.
    client.xreadgroup("senders", "dead-host:1:0", {store.keys.events: ">"}, count=5)
    assert store.claim(10, lease_seconds=0.3, now=time.time()) == []
    # Nothing until the dead consumer's lease has run out (what the test is about): claim_until
    # asks again until it has.
    taken = claim_until(store, 5, lease=0.3)
    assert sorted(e.event_id for e in taken) == [f"ev-{i}" for i in range(5)]
    store.ack([e.id for e in taken])
    assert client.xlen(store.keys.events) == 0


def test_a_live_consumer_keeps_its_lease_by_renewing_it(
    outbox: str, stores: list[RedisStore]
) -> None:
    holder, other = RedisStore(outbox), RedisStore(outbox)
    stores += [holder, other]
    holder.put([new_event(1)], wait=True)
    (held,) = holder.claim(1, lease_seconds=0.3, now=time.time())
    holder.retry([held.id], not_before=time.time() + 60)  # a long backoff
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert other.claim(10, lease_seconds=0.3, now=time.time()) == []
        time.sleep(0.05)


def test_foreign_and_malformed_entries_are_dead_lettered_with_a_reason(
    outbox: str, redis_server: RedisServer, stores: list[RedisStore]
) -> None:
    store = RedisStore(outbox)
    stores.append(store)
    client = redis.Redis.from_url(redis_server.url)
    client.xgroup_create(store.keys.events, "senders", id="0", mkstream=True)
    client.xadd(store.keys.events, {"order": "42"})  # another program's entry
    client.xadd(store.keys.events, {"v": "1", "p": "1", "i": "x", "t": "soon", "s": "website",
                                    "d": "{}"})  # fmt: skip
    client.xadd(store.keys.events, {"v": "9", "p": "1"})
    store.put([new_event(7)], wait=True)
    got = store.claim(10, lease_seconds=60, now=time.time())
    assert [e.event_id for e in got] == ["ev-7"]
    dead = {e[1][b"dead_message"]: e[1] for e in client.xrange(store.keys.dead)}
    assert set(dead) == {
        b"not a capi-middleware entry",
        b"a field is not readable",
        b"unknown entry version",
    }
    assert all(d[b"dead_reason"] == b"malformed" for d in dead.values())
    store.ack([got[0].id])
    books = store.books()
    assert books.dead_lettered == {"malformed": 3}
    assert books.enqueued == books.delivered + 3 + books.backlog


def test_put_is_bounded_by_max_events(outbox: str, stores: list[RedisStore]) -> None:
    store = RedisStore(outbox, max_events=10)
    stores.append(store)
    assert store.put([new_event(i) for i in range(8)], wait=True) == 8
    assert store.put([new_event(i) for i in range(8, 16)], wait=True) == 2


# -- Redis down, slow or restarted -------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_down_buffers_in_memory_serves_claims_and_drains_when_back(
    private_redis: RedisServer, stores: list[RedisStore], caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(private_redis.url, reconnect_max=0.1, socket_timeout=0.5)
    stores.append(store)
    store.put([new_event(0)], wait=True)
    private_redis.stop()
    started = time.monotonic()
    for i in range(1, 201):
        assert store.put([new_event(i)], wait=True) == 1
    assert time.monotonic() - started < 3.0  # never a request held for Redis
    assert wait_until(lambda: not store.durable)
    books = store.books()
    assert books.backlog == 201
    assert books.enqueued == 201
    got = store.claim(50, lease_seconds=60, now=time.time())  # the memory buffer is served
    assert len(got) == 50
    store.ack([e.id for e in got[:40]])
    store.retry([e.id for e in got[40:]], not_before=0.0)
    assert store.books().delivered == 40
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert 1 <= len(errors) <= 5  # once per kind of failure, not once per event
    private_redis.start()
    client = redis.Redis.from_url(private_redis.url)
    assert wait_until(lambda: store.durable and client.xlen(store.keys.events) == 161)
    books = store.books()
    assert books.enqueued == books.delivered + books.backlog == 201
    rest = claim_until(store, 161)
    store.ack([e.id for e in rest])
    assert wait_until(lambda: store.books().backlog == 0)
    assert store.books().delivered == 201


def test_redis_restart_with_aof_keeps_what_it_acknowledged(
    private_redis: RedisServer, stores: list[RedisStore]
) -> None:
    store = RedisStore(private_redis.url, reconnect_max=0.1, socket_timeout=0.5)
    stores.append(store)
    assert store.put([new_event(i) for i in range(100)], wait=True) == 100
    claimed = store.claim(10, lease_seconds=60, now=time.time())
    store.ack([e.id for e in claimed])
    private_redis.stop()
    private_redis.start()
    client = redis.Redis.from_url(private_redis.url)
    assert client.xlen(store.keys.events) == 90
    assert client.hget(store.keys.books, "delivered") == b"10"
    got = claim_until(store, 90)
    assert sorted(e.event_id for e in got) == sorted(f"ev-{i}" for i in range(10, 100))


def test_a_store_that_cannot_reach_redis_never_raises(stores: list[RedisStore]) -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.2)
    stores.append(store)
    assert store.put([new_event(1)], wait=True) == 1
    assert store.claim(10, lease_seconds=60, now=time.time())[0].event_id == "ev-1"
    assert isinstance(store, SharedStore)


# -- through the sender ------------------------------------------------------------------------


def test_the_middleware_delivers_through_redis_and_the_books_balance(
    outbox: str, fake_graph: FakeGraphAPI
) -> None:
    async def shop(scope: Any, receive: Any, send: Any) -> None:
        result = scope["state"]["capi"].track(
            "Purchase", value=1.0, currency="USD", user_data={"email": "b@example.com"}
        )
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": result.status.encode()})

    middleware = CAPIMiddleware(
        shop, pixel_id=FAKE_PIXEL_ID, access_token=fake_graph.access_token,
        graph_url=fake_graph.url, outbox=outbox, consent=True, flush_interval=0.02,
    )  # fmt: skip

    async def buy(n: int) -> list[str]:
        transport = httpx.ASGITransport(app=middleware, client=("8.8.8.8", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="https://shop.example") as c:
            return [(await c.post("/buy")).text for _ in range(n)]

    try:
        assert anyio.run(buy, 25) == ["queued"] * 25
        assert middleware.flush(10)
        assert len(set(fake_graph.event_ids)) == 25
        stats = assert_balanced(middleware.stats().delivery)
        assert stats.delivered == 25
        assert stats.backlog == 0
    finally:
        middleware.close()


def test_the_sender_enforces_metas_window_on_redis_events(
    outbox: str, make_sender: Callable[..., Sender], fake_graph: FakeGraphAPI
) -> None:
    sender = make_sender(outbox)
    assert sender.submit(event_dict(1, age=8 * 86400)).ok
    assert sender.submit(event_dict(2)).ok
    assert sender.flush(10)
    stats = assert_balanced(sender.stats())
    assert stats.dead_lettered == {"too_old": 1}
    assert stats.delivered == 1
    assert fake_graph.event_ids == ["ev-2"]


def test_a_429_seen_by_one_sender_pauses_the_others(
    outbox: str, make_sender: Callable[..., Sender], fake_graph: FakeGraphAPI
) -> None:
    first, second = make_sender(outbox), make_sender(outbox)
    fake_graph.rate_limit(1, retry_after=1.5)
    assert first.submit(event_dict(1)).ok
    assert wait_until(lambda: fake_graph.attempts >= 1)
    assert wait_until(lambda: first.stats().pause_reason == "rate_limited")
    paused_at = time.monotonic()
    assert second.submit(event_dict(2)).ok
    assert wait_until(lambda: fake_graph.attempts >= 2 and len(fake_graph.event_ids) == 2)
    # Nobody sent during the pause: the second sender waited for the first one's 429 too.
    assert time.monotonic() - paused_at >= 1.0
    assert sorted(fake_graph.event_ids) == ["ev-1", "ev-2"]
    for s in (first, second):
        assert s.flush(5)
    assert_balanced(second.stats())


def test_a_new_sender_delivers_what_the_stream_holds_without_traffic(
    outbox: str, make_sender: Callable[..., Sender], fake_graph: FakeGraphAPI
) -> None:
    earlier = RedisStore(outbox)
    earlier.put([new_event(i) for i in range(5)], wait=True)
    earlier.close(2.0)  # a host that stopped with events still waiting
    sender = make_sender(outbox)
    assert wait_until(lambda: len(fake_graph.event_ids) == 5)
    assert sorted(fake_graph.event_ids) == [f"ev-{i}" for i in range(5)]
    assert wait_until(lambda: sender.stats().backlog == 0)
    stats = assert_balanced(sender.stats())
    assert stats.delivered == 5


def test_consumers_gone_for_good_are_forgotten_but_not_while_they_hold_entries(
    outbox: str, redis_server: RedisServer, stores: list[RedisStore]
) -> None:
    store = RedisStore(outbox, forget_consumers_after=0.2)
    stores.append(store)
    store.put([new_event(1)], wait=True)
    client = redis.Redis.from_url(redis_server.url)
    events = store.keys.events
    client.xgroup_createconsumer(events, "senders", "gone-idle:1:0")  # holds nothing
    client.xreadgroup("senders", "gone-holding:2:0", {events: ">"}, count=1)  # holds ev-1

    def names() -> set[str]:
        return {c["name"].decode() for c in client.xinfo_consumers(events, "senders")}

    assert {"gone-idle:1:0", "gone-holding:2:0"} <= names()
    time.sleep(0.25)  # both consumers go idle for longer than forget_consumers_after
    assert wait_until(
        lambda: (
            not store.claim(10, lease_seconds=60, now=time.time())
            and "gone-idle:1:0" not in names()
        )
    )
    assert "gone-holding:2:0" in names()  # its entry would be stranded: kept until taken over


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_sends_through_its_own_consumer_and_never_the_parents_events(
    outbox: str, make_sender: Callable[..., Sender], fake_graph: FakeGraphAPI
) -> None:
    sender = make_sender(outbox)
    assert sender.submit(event_dict(1)).ok
    assert sender.flush(10)
    pid = os.fork()  # gunicorn --preload: the middleware was built in the master
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 3
        try:
            code = 0 if sender.submit(event_dict(2)).ok and sender.flush(10) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert wait_until(lambda: sorted(fake_graph.event_ids) == ["ev-1", "ev-2"])
    assert sender.submit(event_dict(3)).ok  # the parent goes on with its own consumer
    assert sender.flush(10)
    assert sorted(fake_graph.event_ids) == ["ev-1", "ev-2", "ev-3"]
