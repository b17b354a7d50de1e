"""Tracking from anywhere: client.track() versus ctx.track(), and serverless versus background.

    python bench/anywhere.py [--calls 1000] [--rounds 21] [--requests 400]

1. The cost of one ``track()`` call, in the same run: ``ctx.track()`` on a fresh request's
   context (its first track, as a request makes it) and ``client.track(visitor=v)`` with a
   Visitor taken from an identical request. Both build, normalize, hash, validate and queue a
   Purchase with the same user data; nothing is sent while they are timed (a 60 s batch timer).
   Target: within 10%. Rounds alternate the order; the figure is each one's median round, in
   the thread's CPU time (``time.thread_time``: the shared machine's other load left out).
2. Request latency of an ASGI app behind ``CAPIMiddleware`` (in process, ``httpx.ASGITransport``)
   with the fake Graph API on loopback in a child process: ``serverless=True`` against the
   default background mode, for requests that track a Purchase and requests that track nothing.
   Target: serverless adds at most one round trip to the fake per tracking request (counted),
   and nothing to the others. p50 / p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import Any

import httpx
from fake_process import fake_process
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from capi_middleware import CAPIClient, CAPIMiddleware, RequestContext, Visitor
from capi_middleware.capture.pipeline import CapturePipeline
from capi_middleware.testing.fake import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID

UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
NOW_MS = int(time.time() * 1000)
HEADERS = {
    b"host": b"shop.example.com",
    b"user-agent": UA.encode(),
    b"accept": b"text/html",
    b"referer": b"https://l.facebook.com/",
    b"cookie": f"cookie_consent=accept; _fbp=fb.1.{NOW_MS}.1234567890".encode(),
}
USER_DATA = {"email": "John.Smith@Example.com", "phone": "+1 (650) 555-1234"}


# -- the fake, in a child process -----------------------------------------------------------------


def graph_requests(client: CAPIClient) -> int:
    """How many Graph requests the client's sender has made so far."""
    delivery = client.stats().delivery
    return 0 if delivery is None else delivery.requests


# -- 1. client.track() versus ctx.track() --------------------------------------------------------


def contexts(pipeline: CapturePipeline, n: int) -> list[RequestContext]:
    return [
        pipeline.capture_raw(
            peer="81.2.69.160",
            scheme="https",
            server=None,
            raw_path=f"/checkout/{i}".encode(),  # a different page each: no memo shortcut
            query_string=b"",
            header_map=dict(HEADERS),
        )
        for i in range(n)
    ]


# This thread's CPU time: what the calls cost, not how long the shared machine kept us waiting.
clock = time.thread_time


def time_ctx_track(ctxs: list[RequestContext]) -> float:
    start = clock()
    for ctx in ctxs:
        ctx.track("Purchase", user_data=USER_DATA, value=79.99, currency="USD")
    return (clock() - start) / len(ctxs)


def time_client_track(client: CAPIClient, visitors: list[Visitor]) -> float:
    track = client.track
    start = clock()
    for visitor in visitors:
        track("Purchase", visitor=visitor, user_data=USER_DATA, value=79.99, currency="USD")
    return (clock() - start) / len(visitors)


def worked_out(ctxs: list[RequestContext]) -> list[RequestContext]:
    """Contexts whose lazy match keys are already read, as a Visitor holds them."""
    for ctx in ctxs:
        _ = (ctx.client_ip, ctx.user_agent, ctx.event_source_url, ctx.referrer_url)
    return ctxs


def bench_track(url: str, calls: int, rounds: int) -> dict[str, float]:
    client = CAPIClient(
        pixel_id=FAKE_PIXEL_ID,
        access_token=FAKE_ACCESS_TOKEN,
        graph_url=url,
        max_queue=10**7,
        flush_interval=60.0,  # queued, not sent, while timed
        batch_size=1000,
    )
    pipeline = CapturePipeline(client)
    # Warm up every path (imports, memos, the sender thread).
    time_ctx_track(contexts(pipeline, 200))
    time_client_track(client, [ctx.visitor() for ctx in contexts(pipeline, 200)])
    runs: dict[str, list[float]] = {"ctx": [], "ctx_first": [], "client": []}
    for r in range(rounds):
        batches = {
            # The same work as client.track: the request's match keys already worked out.
            "ctx": worked_out(contexts(pipeline, calls)),
            # A request's first track(), which also works out IP, user agent and page URL.
            "ctx_first": contexts(pipeline, calls),
            "client": [ctx.visitor() for ctx in contexts(pipeline, calls)],
        }
        gc.collect()
        names = ["ctx", "client", "ctx_first"]
        if r % 2:
            names.reverse()
        for name in names:
            gc.disable()
            try:
                if name == "client":
                    runs[name].append(time_client_track(client, batches[name]))  # type: ignore[arg-type]
                else:
                    runs[name].append(time_ctx_track(batches[name]))  # type: ignore[arg-type]
            finally:
                gc.enable()
    stats = client.stats()
    assert stats.delivery is not None
    assert stats.delivery.enqueued >= 3 * calls * rounds, stats
    client.close(30.0)
    result = {f"{name}_us": statistics.median(times) * 1e6 for name, times in runs.items()}
    result["ratio"] = result["client_us"] / result["ctx_us"]
    return result


# -- 2. serverless versus background -------------------------------------------------------------


async def buy(request: Request) -> JSONResponse:
    result = request.state.capi.track("Purchase", user_data=USER_DATA, value=79.99, currency="USD")
    return JSONResponse({"status": result.status})


async def browse(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def latencies(app: Any, path: str, n: int) -> list[float]:
    transport = httpx.ASGITransport(app=app, client=("81.2.69.160", 1))
    headers = {k.decode(): v.decode() for k, v in HEADERS.items()}
    out = []
    async with httpx.AsyncClient(transport=transport, base_url="https://shop.example.com") as c:
        for _ in range(20):  # warm-up
            await c.get(path, headers=headers)
        for _ in range(n):
            start = time.perf_counter()
            response = await c.get(path, headers=headers)
            out.append(time.perf_counter() - start)
            assert response.status_code == 200
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


def bench_latency(url: str, requests: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for mode in ("background", "serverless"):
        client = CAPIClient(
            pixel_id=FAKE_PIXEL_ID,
            access_token=FAKE_ACCESS_TOKEN,
            graph_url=url,
            serverless=mode == "serverless",
        )
        app = CAPIMiddleware(
            Starlette(routes=[Route("/buy", buy), Route("/browse", browse)]), client=client
        )
        for path in ("/buy", "/browse"):
            client.flush(10.0)
            before = graph_requests(client)
            times = asyncio.run(latencies(app, path, requests))
            during = graph_requests(client) - before
            results[f"{mode} {path}"] = {
                "p50": percentile(times, 50),
                "p99": percentile(times, 99),
                "graph_requests_per_request": during / (requests + 20),
            }
        client.close(30.0)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    with fake_process() as url:
        track = bench_track(url, args.calls, args.rounds)
        print(
            f"track(): ctx.track {track['ctx_us']:.1f} µs, client.track(visitor=) "
            f"{track['client_us']:.1f} µs per call; ratio {track['ratio']:.3f} "
            f"(median of {args.rounds} rounds of {args.calls}); a request's first ctx.track, "
            f"which also works out its IP, user agent and URL: {track['ctx_first_us']:.1f} µs"
        )
        for name, row in bench_latency(url, args.requests).items():
            print(
                f"{name:20s} p50 {row['p50']:6.2f} ms  p99 {row['p99']:6.2f} ms  "
                f"Graph requests per app request {row['graph_requests_per_request']:.2f}"
            )


if __name__ == "__main__":
    main()
