"""MemoryStore keeps the EventStore rules: bounded put, leases, oldest first, same bytes."""

from __future__ import annotations

import gc
import threading

from capi_middleware.delivery.memory_store import MemoryStore
from capi_middleware.delivery.store import DeadLetter, EventStore, NewEvent


def _new(i: int, pixel: str = "1") -> NewEvent:
    return NewEvent(pixel, f'{{"event_id":"e{i}"}}'.encode(), f"e{i}", 1_700_000_000 + i, "website")


def test_is_an_event_store() -> None:
    store: EventStore = MemoryStore(10)
    assert store.durable is False


def test_put_accepts_a_prefix_up_to_the_bound() -> None:
    store = MemoryStore(3)
    assert store.put([_new(1), _new(2)]) == 2
    assert store.put([_new(3), _new(4), _new(5)]) == 1
    assert store.backlog() == 3
    assert [e.event_id for e in store.claim(10, lease_seconds=30, now=0)] == ["e1", "e2", "e3"]


def test_claim_leases_and_does_not_hand_out_twice() -> None:
    store = MemoryStore(10)
    store.put([_new(i) for i in range(5)])
    first = store.claim(3, lease_seconds=30, now=100)
    second = store.claim(10, lease_seconds=30, now=100)
    assert [e.event_id for e in first] == ["e0", "e1", "e2"]
    assert [e.event_id for e in second] == ["e3", "e4"]
    assert store.claim(10, lease_seconds=30, now=110) == []
    assert store.backlog() == 5  # leased events still count


def test_expired_lease_comes_back() -> None:
    store = MemoryStore(10)
    store.put([_new(1)])
    assert len(store.claim(1, lease_seconds=5, now=100)) == 1
    assert store.claim(1, lease_seconds=5, now=104) == []
    again = store.claim(1, lease_seconds=5, now=106)
    assert [e.event_id for e in again] == ["e1"]


def test_retry_sets_not_before_and_counts_attempts_same_bytes() -> None:
    store = MemoryStore(10)
    store.put([_new(1)])
    (claimed,) = store.claim(1, lease_seconds=30, now=100)
    store.retry([claimed.id], not_before=200)
    assert store.next_due() == 200
    assert store.claim(1, lease_seconds=30, now=150) == []
    (again,) = store.claim(1, lease_seconds=30, now=200)
    assert again.attempts == 1
    assert again.payload == claimed.payload
    assert again.id == claimed.id


def test_ack_and_dead_letter_remove_events() -> None:
    store = MemoryStore(10)
    store.put([_new(1), _new(2), _new(3)])
    a, b, _ = store.claim(3, lease_seconds=30, now=0)
    store.ack([a.id])
    letter = DeadLetter("invalid_event", code=100, subcode=2804019, message="bad contents")
    store.dead_letter([b.id], letter)
    assert store.backlog() == 1
    assert [(s.event_id, d.reason) for s, d in store.dead_letters] == [("e2", "invalid_event")]
    store.ack([a.id, 999])  # unknown ids are ignored
    assert store.backlog() == 1


def test_next_due_none_when_empty_and_close_forgets() -> None:
    store = MemoryStore(10)
    assert store.next_due() is None
    store.put([_new(1)])
    assert store.next_due() == 0.0
    store.close()
    assert store.backlog() == 0


def test_concurrent_puts_never_exceed_the_bound() -> None:
    store = MemoryStore(1000)
    accepted: list[int] = []
    lock = threading.Lock()

    def put_many() -> None:
        for i in range(300):
            n = store.put([_new(i)])
            with lock:
                accepted.append(n)

    threads = [threading.Thread(target=put_many) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(accepted) == 1000
    assert store.backlog() == 1000


def test_a_backlog_adds_nothing_to_the_garbage_collectors_work() -> None:
    # During an outage the store may hold 100,000 events; if each were an object the cyclic
    # garbage collector tracks, every full collection (a pause of the whole process) would walk
    # them all. Rows are plain tuples of strings and numbers, which it stops tracking.
    store = MemoryStore(20_000)
    events = [_new(i) for i in range(10_000)]
    gc.collect()
    before = len(gc.get_objects())
    assert store.put(events) == 10_000
    del events
    store.claim(1000, lease_seconds=30, now=0)  # leased rows too
    store.retry([1, 2, 3], not_before=0)
    gc.collect()
    gc.collect()
    assert len(gc.get_objects()) - before < 100
    assert store.backlog() == 10_000
    assert [e.attempts for e in store.claim(3, lease_seconds=30, now=0)] == [1, 1, 1]
