"""Outbox benchmark: SQLite outbox versus the memory store, and memory use while Meta is down.

    python bench/outbox.py [--events 50000] [--backlog 100000]

Prints, for each store:
- committed/s: events ``put`` one at a time (as ``track()`` does) until all are committed
  (for the outbox: on disk, as the writer thread's group commits land);
- delivered/s: events taken through the store as the sender does (claim 1000, ack) until empty;
and, in a fresh child process each, the RSS while ``--backlog`` events wait unacknowledged (an
unreachable Meta): the outbox must not hold its backlog in memory.
Figures are written into docs/outbox.md by hand; this script only measures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from capi_middleware.delivery.sqlite_store import SQLiteStore
from capi_middleware.delivery.store import NewEvent

try:
    from capi_middleware.delivery.memory_store import MemoryStore
except ImportError:  # the memory store lands separately
    MemoryStore = None  # type: ignore[assignment,misc]


def make_events(n: int, start: int = 0) -> list[NewEvent]:
    """Realistic events (~700 bytes): hashed user data, IP, UA, custom data."""
    out = []
    for i in range(start, start + n):
        body = {
            "event_name": "Purchase",
            "event_time": 1_700_000_000 + i,
            "event_id": f"{i:032x}",
            "action_source": "website",
            "event_source_url": "https://shop.example.com/checkout/thank-you",
            "user_data": {
                "em": [f"{i:064x}"],
                "ph": [f"{i + 1:064x}"],
                "client_ip_address": "203.0.113.9",
                "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
                "(KHTML, like Gecko) Chrome/126.0 Safari/537.36",
                "fbc": f"fb.1.1700000000000.IwAR{i:020d}",
                "fbp": f"fb.1.1700000000000.{i:010d}",
            },
            "custom_data": {"value": 79.99, "currency": "USD", "order_id": f"o-{i}"},
        }
        payload = json.dumps(body, separators=(",", ":")).encode()
        out.append(NewEvent("1234567890", payload, body["event_id"], body["event_time"], "website"))
    return out


def put_one_at_a_time(store: Any, events: list[NewEvent], threads: int = 1) -> float:
    """Seconds to put every event (one per call, from ``threads`` threads) until committed."""
    chunks = [events[i::threads] for i in range(threads)]

    def worker(chunk: list[NewEvent]) -> None:
        for event in chunk:
            while store.put([event]) == 0:  # max_pending reached: let the writer catch up
                store.flush(1.0)

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if hasattr(store, "flush"):
        store.flush()
    return time.perf_counter() - started


def drain(store: Any) -> tuple[int, float]:
    """Claim 1000 at a time and ack, as the sender does after Meta's 200; (events, seconds)."""
    done = 0
    started = time.perf_counter()
    while True:
        batch = store.claim(1000, lease_seconds=60, now=time.time())
        if not batch:
            break
        store.ack([e.id for e in batch])
        done += len(batch)
    return done, time.perf_counter() - started


def throughput(n: int) -> list[dict[str, Any]]:
    results = []
    events = make_events(n)
    with tempfile.TemporaryDirectory() as tmp:
        for label, kwargs, threads in (
            ("sqlite outbox (synchronous=NORMAL)", {}, 1),
            ("sqlite outbox, 4 request threads", {}, 4),
            ("sqlite outbox (synchronous=FULL)", {"synchronous": "FULL"}, 1),
        ):
            path = Path(tmp) / f"{len(results)}.sqlite3"
            store = SQLiteStore(path, **kwargs)
            seconds = put_one_at_a_time(store, events, threads)
            delivered, dseconds = drain(store)
            store.close()
            assert delivered == n, (delivered, n)
            results.append(
                {
                    "store": label,
                    "committed_per_s": n / seconds,
                    "delivered_per_s": delivered / dseconds,
                }
            )
    if MemoryStore is not None:
        store = MemoryStore(max_events=n)
        seconds = put_one_at_a_time(store, events)
        delivered, dseconds = drain(store)
        results.append(
            {
                "store": "memory store",
                "committed_per_s": n / seconds,
                "delivered_per_s": delivered / dseconds,
            }
        )
    return results


def vm_rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rss_child(kind: str, backlog: int) -> None:
    """Run in a fresh process: put ``backlog`` events, claim+retry them as an outage would."""
    step = 10_000
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "sqlite":
            store: Any = SQLiteStore(Path(tmp) / "o.sqlite3")
        else:
            assert MemoryStore is not None
            store = MemoryStore(max_events=backlog)
        make_events(step)  # warm up imports and allocator before the baseline
        before = vm_rss_kib()
        marks = []
        for start in range(0, backlog, step):
            for event in make_events(step, start):
                while store.put([event]) == 0:
                    store.flush(1.0)
            if hasattr(store, "flush"):
                store.flush()
            # Meta unreachable: the sender claims a batch, fails, schedules a retry.
            batch = store.claim(1000, lease_seconds=60, now=time.time())
            store.retry([e.id for e in batch], not_before=time.time() + 3600)
            marks.append(vm_rss_kib() - before)
        assert store.backlog() == backlog
        print(json.dumps({"before_kib": before, "growth_kib": marks}))
        store.close()


def rss(backlog: int) -> dict[str, Any]:
    out = {}
    kinds = ["sqlite"] + (["memory"] if MemoryStore is not None else [])
    for kind in kinds:
        proc = subprocess.run(
            [sys.executable, __file__, "--rss-child", kind, "--backlog", str(backlog)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[kind] = json.loads(proc.stdout)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--rss-child", choices=["sqlite", "memory"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.backlog)
        return
    print(f"{args.events} events of ~700 bytes, one put() per event")
    print(f"{'store':40} {'committed/s':>12} {'delivered/s':>12}")
    for r in throughput(args.events):
        print(f"{r['store']:40} {r['committed_per_s']:12,.0f} {r['delivered_per_s']:12,.0f}")
    print(f"\nRSS growth while {args.backlog} events wait unacknowledged (MiB, every 10k events)")
    for kind, r in rss(args.backlog).items():
        growth = " ".join(f"{g / 1024:.1f}" for g in r["growth_kib"])
        print(f"{kind:8} baseline {r['before_kib'] / 1024:.1f} MiB; growth: {growth}")


if __name__ == "__main__":
    main()
