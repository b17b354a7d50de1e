"""What CAPIMiddleware costs per request.

Part 1 calls the ASGI app directly in a loop (no server, no HTTP client): a trivial app behind a
no-op pure ASGI middleware, against the same app behind CAPIMiddleware, in one run, for several
request shapes. Target: at most 10 µs added per request without track(), except where every
request is a visitor's first (nothing memoized yet): at most 20 µs (`NO_MEMO_ROWS`).

Part 2 serves the same trivial app with uvicorn (subprocesses on 127.0.0.1, one worker each,
``--no-access-log``, lifespan on, pinned to one core) behind the no-op middleware and behind
CAPIMiddleware, and loads them with a keep-alive client (``wrk`` pinned to the other core when
installed, else a small asyncio client). All servers start once; runs alternate bare / with for
each scenario, several times, and the median of each side is compared (the best is shown too).
Every request of a scenario is the same (the request mix is stated per scenario):

- (a) no consent signal, default (EU) policy: a first page view, no cookies at all.
- (b1) a consented returning visitor's page views: consent cookie + valid ``_fbp``/``_fbc``,
  ``Sec-Fetch-Dest: document``: both cookies re-sent on every response.
- (b2) the same visitor's fetch()/XHR calls (``Sec-Fetch-Dest: empty``): nothing re-sent.
- (c) ``consent=True``, new visitors: no cookies, so every response mints and sets an ``_fbp``.

Target: at least 0.95 of the bare app's requests/second.

Run: ``python bench/overhead.py`` (``--quick`` for a short smoke run, ``--no-server`` for part 1
only). Figures are recorded in docs/overhead.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from capi_middleware.asgi import CAPIMiddleware

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
NOW_MS = int(time.time() * 1000)
# A page load (document navigation), as Chrome sends it.
NAVIGATION_HEADERS: list[tuple[bytes, bytes]] = [
    (b"host", b"shop.example.com"),
    (b"connection", b"keep-alive"),
    (b"upgrade-insecure-requests", b"1"),
    (b"user-agent", UA.encode()),
    (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"sec-fetch-site", b"same-origin"),
    (b"sec-fetch-mode", b"navigate"),
    (b"sec-fetch-dest", b"document"),
    (b"accept-encoding", b"gzip, deflate, br"),
    (b"accept-language", b"en-US,en;q=0.9"),
]
# A fetch() from the page's script.
FETCH_HEADERS: list[tuple[bytes, bytes]] = [
    (b"host", b"shop.example.com"),
    (b"connection", b"keep-alive"),
    (b"user-agent", UA.encode()),
    (b"accept", b"application/json"),
    (b"sec-fetch-site", b"same-origin"),
    (b"sec-fetch-mode", b"cors"),
    (b"sec-fetch-dest", b"empty"),
    (b"accept-encoding", b"gzip, deflate, br"),
    (b"accept-language", b"en-US,en;q=0.9"),
]
BROWSER_HEADERS = NAVIGATION_HEADERS
COOKIES = (
    f"cookie_consent=accept; _ga=GA1.1.123456789.1700000000; sessionid=abc123def456; "
    f"_fbp=fb.1.{NOW_MS - 86_400_000}.1234567890; _fbc=fb.1.{NOW_MS - 86_400_000}.IwAR2xYz"
).encode()


# -- the apps ------------------------------------------------------------------------------------

BODY = b"Hello, world!"
START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
}


async def hello(scope: Scope, receive: Any, send: Any) -> None:
    """The trivial app every variant wraps."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send({**START, "headers": list(START["headers"])})
    await send({"type": "http.response.body", "body": BODY})


async def hello_tracking(scope: Scope, receive: Any, send: Any) -> None:
    """The trivial app, with one track() per request."""
    scope["state"]["capi"].track("ViewContent", content_ids=["sku-1"], value=9.5, currency="USD")
    await hello(scope, receive, send)


class NoopMiddleware:
    """The baseline: a pure ASGI middleware that wraps send, as CAPIMiddleware does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            await send(message)

        await self.app(scope, receive, send_wrapper)


class SetCookieNoop(NoopMiddleware):
    """The baseline, adding fixed Set-Cookie headers: what the server pays for the headers alone.

    Given the exact values CAPIMiddleware sends for a request shape (`set_cookies_of`), it
    separates the server's cost of serializing those headers from our own.
    """

    def __init__(self, app: ASGIApp, cookies: list[bytes]) -> None:
        super().__init__(app)
        self.cookies = [(b"set-cookie", cookie) for cookie in cookies]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *self.cookies]
            await send(message)

        await self.app(scope, receive, send_wrapper)


def set_cookies_of(app: ASGIApp, headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The Set-Cookie values ``app`` answers a plain-http request with ``headers`` with."""
    scope = {**scope_for(headers=headers), "scheme": "http", "server": ("127.0.0.1", 80)}
    sent: list[bytes] = []

    async def capture_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            sent.extend(v for k, v in message["headers"] if k == b"set-cookie")

    # uvicorn calls factories inside its running loop: run this one request in a thread.
    worker = threading.Thread(target=asyncio.run, args=(app(scope, _receive, capture_send),))
    worker.start()
    worker.join()
    return sent


def capi(app: ASGIApp, **options: Any) -> CAPIMiddleware:
    options.setdefault("consent", True)  # the costly path: cookies planned and set
    options.setdefault("dry_run", True)
    return CAPIMiddleware(app, **options)


# uvicorn factories (``--factory``): the bare app and the app behind CAPIMiddleware.
def make_bare() -> Any:
    return NoopMiddleware(hello)


def make_capi() -> Any:
    # The default consent policy (opt-in: a consent cookie grants, no signal denies).
    return capi(hello, consent=None)


def make_capi_granted() -> Any:
    # consent=True: consent is not required here, cookies are set for everyone.
    return capi(hello, consent=True)


def make_bare_b1_cookies() -> Any:
    # Scenario b1's response headers without our code: _fbc and _fbp as we re-send them.
    headers = [*NAVIGATION_HEADERS, (b"cookie", COOKIES)]
    return SetCookieNoop(hello, set_cookies_of(make_capi(), headers))


def make_bare_c_cookies() -> Any:
    # Scenario c's: one freshly minted _fbp (same length as any other).
    return SetCookieNoop(hello, set_cookies_of(make_capi_granted(), NAVIGATION_HEADERS))


# -- part 1: direct calls ------------------------------------------------------------------------


def scope_for(
    query: bytes = b"",
    cookies: bytes | None = None,
    headers: list[tuple[bytes, bytes]] = NAVIGATION_HEADERS,
) -> Scope:
    headers = list(headers)
    if cookies is not None:
        headers.append((b"cookie", cookies))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("203.0.113.7", 51234),
        "scheme": "https",
        "method": "GET",
        "root_path": "",
        "path": "/products/shoes",
        "raw_path": b"/products/shoes",
        "query_string": query,
        "headers": headers,
    }


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Message) -> None:
    return None


async def _loop(app: ASGIApp, base: Scope | list[Scope], n: int) -> float:
    copy = dict
    scopes = base if isinstance(base, list) else [base] * n
    start = time.perf_counter()
    for scope in scopes[:n]:
        await app(copy(scope), _receive, _send)
    return time.perf_counter() - start


# What a shop's pages typically also carry (analytics, consent manager, session, A/B test...):
# 21 more cookies, ~800 bytes.
SHOP_COOKIES = (
    "_ga=GA1.1.1234567890.1700000000; _ga_ABCDEF1234=GS1.1.1700000000.3.1.1700000100.0.0.0; "
    "_gid=GA1.2.987654321.1700000000; _gcl_au=1.1.1234567890.1700000000; "
    "OptanonAlertBoxClosed=2024-01-01T00:00:00.000Z; OptanonConsent=isGpcEnabled=0&datestamp="
    "Mon+Jan+01+2024&version=202301.1.0&groups=C0001%3A1%2CC0002%3A1%2CC0003%3A1; "
    "csrftoken=ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef1234567890; cart=eyJpdGVtcyI6W119; "
    "_hjSessionUser_123456=eyJpZCI6IjEyMyJ9; _hjSession_123456=eyJpZCI6IjQ1NiJ9; "
    "_uetsid=0123456789abcdef0123456789abcdef; _uetvid=fedcba9876543210fedcba9876543210; "
    "_pin_unauth=dWlkPU1qQXdNREF3; _tt_enable_cookie=1; _ttp=abcdefghijklmnop; currency=USD; "
    "locale=en-US; recently_viewed=123%2C456%2C789; _clck=abc123%7C2%7Cfgh; "
    "_clsk=xyz789%7C1700000000000%7C1; ab_test=variant_b; "
)


def many_visitors(n: int, extra_cookies: str = "") -> list[Scope]:
    """Returning visitors, each with their own cookies: no request repeats another's."""
    return [
        scope_for(
            cookies=(
                f"{extra_cookies}cookie_consent=accept; sessionid=s{i}; "
                f"_fbp=fb.1.{NOW_MS - 86_400_000}.{i}; _fbc=fb.1.{NOW_MS - 86_400_000}.IwAR{i}"
            ).encode()
        )
        for i in range(n)
    ]


def paired_us(
    baseline: ASGIApp, middleware: ASGIApp, base: Scope | list[Scope], n: int, repeats: int
) -> tuple[float, float]:
    """Best-of-``repeats`` µs per request for both apps, measured in alternating rounds.

    Alternating keeps a busy machine's drift from favouring either side; the minimum is the
    least disturbed round.
    """
    loop = asyncio.new_event_loop()
    try:
        for app in (baseline, middleware):
            loop.run_until_complete(_loop(app, base, min(n, 2000)))  # warm caches
        gc.collect()
        base_runs, capi_runs = [], []
        for _ in range(repeats):
            base_runs.append(loop.run_until_complete(_loop(baseline, base, n)))
            capi_runs.append(loop.run_until_complete(_loop(middleware, base, n)))
    finally:
        loop.close()
    return min(base_runs) / n * 1e6, min(capi_runs) / n * 1e6


# Rows where every request is a new visitor's: nothing memoized, so the 20 µs target applies.
NO_MEMO_ROWS = frozenset(
    {"returning, every request a new visitor", "  the same with a shop's 25-cookie header"}
)


def direct_scenarios(n: int) -> list[tuple[str, ASGIApp, ASGIApp, Scope | list[Scope]]]:
    fbclid = b"utm_source=fb&fbclid=IwAR2xYz_AbCdEf-1234567890"
    denied = capi(hello, consent=None)  # the default policy, no consent signal: EU first visit
    return [
        ("first visit, no fbclid (mints _fbp)", NoopMiddleware(hello), capi(hello), scope_for()),
        ("ad click: fbclid in query", NoopMiddleware(hello), capi(hello), scope_for(fbclid)),
        (
            "returning: page view, cookies re-sent",
            NoopMiddleware(hello),
            capi(hello, consent=None),
            scope_for(cookies=COOKIES),
        ),
        (
            "returning: fetch(), nothing re-sent",
            NoopMiddleware(hello),
            capi(hello, consent=None),
            scope_for(cookies=COOKIES, headers=FETCH_HEADERS),
        ),
        (
            "returning, every request a new visitor",
            NoopMiddleware(hello),
            capi(hello, consent=None),
            many_visitors(n),
        ),
        (
            "  the same with a shop's 25-cookie header",
            NoopMiddleware(hello),
            capi(hello, consent=None),
            many_visitors(n, SHOP_COOKIES),
        ),
        ("no consent signal (default policy)", NoopMiddleware(hello), denied, scope_for()),
        (
            "one track() (dry_run)",
            NoopMiddleware(hello),
            capi(hello_tracking),
            scope_for(cookies=COOKIES),
        ),
    ]


def run_direct(n: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name, baseline, middleware, scope in direct_scenarios(n):
        base_us, capi_us = paired_us(baseline, middleware, scope, n, repeats)
        rows.append(
            {
                "scenario": name,
                "noop_us": base_us,
                "capi_us": capi_us,
                "added_us": capi_us - base_us,
                "ratio": capi_us / base_us,
            }
        )
    return rows


def run_direct_with_sender(n: int, repeats: int) -> dict[str, Any]:
    """One track() per request, queued to a real sender aimed at a local fake Graph API."""
    from capi_middleware.testing.fake import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID, FakeGraphAPI

    with FakeGraphAPI(validate=False) as fake:
        middleware = capi(
            hello_tracking,
            dry_run=False,
            pixel_id=FAKE_PIXEL_ID,
            access_token=FAKE_ACCESS_TOKEN,
            graph_url=fake.url,
            max_queue=10_000_000,
        )
        scope = scope_for(cookies=COOKIES)
        base_us, capi_us = paired_us(NoopMiddleware(hello), middleware, scope, n, repeats)
        middleware.close(30)
        delivered = middleware.stats().delivery
    return {
        "scenario": "one track() (queued to a local fake)",
        "noop_us": base_us,
        "capi_us": capi_us,
        "added_us": capi_us - base_us,
        "ratio": capi_us / base_us,
        "delivered": getattr(delivered, "delivered", None),
    }


# -- part 2: uvicorn -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(cpu: int) -> list[str]:
    """``taskset -c cpu`` when possible: server and load generator each keep one core."""
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(cpu)] if taskset and (os.cpu_count() or 1) >= 2 else []


def uvicorn_command(factory: str, port: int) -> list[str]:
    """Serve ``overhead:factory`` on 127.0.0.1:port: one worker, h11, no access log, lifespan."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        f"overhead:{factory}",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
        "--lifespan",
        "on",
    ]


def start_uvicorn(
    factory: str, port: int, package_dir: str | None = None
) -> subprocess.Popen[bytes]:
    """Serve ``overhead:factory``; with ``package_dir``, its ``capi_middleware`` comes first."""
    here = Path(__file__).resolve().parent
    path = [*([package_dir] if package_dir else []), str(here), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.Popen([*pin(1), *uvicorn_command(factory, port)], env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("uvicorn did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def header_lines(headers: list[tuple[bytes, bytes]], cookies: bytes | None) -> list[str]:
    lines = [f"{k.decode()}: {v.decode()}" for k, v in headers if k not in (b"host", b"connection")]
    if cookies is not None:
        lines.append(f"cookie: {cookies.decode()}")
    return lines


# name -> (uvicorn factory for "with", request header lines, what the scenario is)
SERVER_SCENARIOS: dict[str, tuple[str, list[str], str]] = {
    "a": (
        "make_capi",
        header_lines(NAVIGATION_HEADERS, None),
        "no consent signal, default policy: page views without cookies (nothing set)",
    ),
    "b1": (
        "make_capi",
        header_lines(NAVIGATION_HEADERS, COOKIES),
        "consented returning visitor, page views: _fbc + _fbp re-sent on every response",
    ),
    "b2": (
        "make_capi",
        header_lines(FETCH_HEADERS, COOKIES),
        "consented returning visitor, fetch()/XHR: nothing re-sent",
    ),
    "c": (
        "make_capi_granted",
        header_lines(NAVIGATION_HEADERS, None),
        "consent=True, new visitors: a fresh _fbp minted and set on every response",
    ),
}


def _request(lines: list[str]) -> bytes:
    head = "GET /products/shoes HTTP/1.1\r\nHost: shop.example.com\r\n"
    return (head + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode()


async def _connection(port: int, request: bytes, stop_at: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    try:
        while time.perf_counter() < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(match[1]) if match else 0)
            done += 1
    finally:
        counts.append(done)
        writer.close()


async def _asyncio_load(
    port: int, request: bytes, seconds: float, connections: int
) -> tuple[float, int]:
    counts: list[int] = []
    start = time.perf_counter()
    stop_at = start + seconds
    await asyncio.gather(*(_connection(port, request, stop_at, counts) for _ in range(connections)))
    return sum(counts) / (time.perf_counter() - start), sum(counts)


def cpu_ns(pid: int) -> int | None:
    """Nanoseconds process ``pid`` has spent on a CPU (Linux schedstat), None elsewhere."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def load(port: int, lines: list[str], seconds: float, connections: int) -> float:
    """Requests per second against 127.0.0.1:port for ``seconds``, every request the same."""
    return load_counted(port, lines, seconds, connections)[0]


def load_counted(
    port: int, lines: list[str], seconds: float, connections: int
) -> tuple[float, int]:
    """`load`, also returning how many requests were answered (for CPU time per request)."""
    wrk = shutil.which("wrk")
    if wrk:
        headers = [arg for line in ["Host: shop.example.com", *lines] for arg in ("-H", line)]
        out = subprocess.run(
            [
                *pin(0),
                wrk,
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                *headers,
                f"http://127.0.0.1:{port}/products/shoes",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        match = re.search(r"Requests/sec:\s*([\d.]+)", out)
        total = re.search(r"(\d+) requests in", out)
        if match is None or total is None or "Non-2xx" in out or "Socket errors" in out:
            raise RuntimeError(f"wrk did not run cleanly:\n{out}")
        return float(match[1]), int(total[1])
    return asyncio.run(_asyncio_load(port, _request(lines), seconds, connections))


def check_scenarios(ports: dict[str, int]) -> None:
    """Each scenario does what it says: the right Set-Cookie headers on the 'with' side."""
    expected = {"a": set(), "b1": {"_fbc", "_fbp"}, "b2": set(), "c": {"_fbp"}}
    for name, (factory, lines, _) in SERVER_SCENARIOS.items():
        with socket.create_connection(("127.0.0.1", ports[factory])) as sock:
            sock.sendall(_request([*lines, "Connection: close"]))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        names = {
            line.split(":", 1)[1].strip().split("=", 1)[0]
            for line in head.split("\r\n")
            if line.lower().startswith("set-cookie:")
        }
        if names != expected[name]:
            raise RuntimeError(f"scenario {name}: expected cookies {expected[name]}, got {names}")


def run_server(
    seconds: float,
    rounds: int,
    connections: int,
    only: list[str] | None = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    """Alternate bare / with (/ baseline) runs per scenario; the servers start once, stay up.

    ``baseline``: a directory holding another ``capi_middleware`` package (e.g. a ``git
    archive`` of an earlier commit), served in the same run for a before/after comparison.
    """
    factories = ("make_bare", "make_capi", "make_capi_granted")
    ports = {factory: free_port() for factory in factories}
    procs = [start_uvicorn(factory, port) for factory, port in ports.items()]
    baseline_ports: dict[str, int] = {}
    if baseline:
        baseline_ports = {f: free_port() for f in ("make_capi", "make_capi_granted")}
        procs += [start_uvicorn(f, port, baseline) for f, port in baseline_ports.items()]
    scenarios = {k: v for k, v in SERVER_SCENARIOS.items() if only is None or k in only}
    sides = ("bare", "capi", "baseline") if baseline else ("bare", "capi")
    results: dict[str, dict[str, list[float]]] = {
        name: {side: [] for side in sides} for name in scenarios
    }
    # The server's own CPU time per answered request (µs), read from the kernel around each
    # run: a check on requests/s (a saturated core serves 1 / CPU time per request). On the
    # shared development VM it moved just as much; bench/instructions.py does not.
    cpu: dict[str, dict[str, list[float]]] = {
        name: {side: [] for side in sides} for name in scenarios
    }
    pids = {
        port: proc.pid
        for port, proc in zip([*ports.values(), *baseline_ports.values()], procs, strict=True)
    }

    def port_of(side: str, factory: str) -> int:
        if side == "bare":
            return ports["make_bare"]
        return ports[factory] if side == "capi" else baseline_ports[factory]

    try:
        check_scenarios(ports)
        for factory, lines, _ in scenarios.values():  # warm up every server and path
            for side in sides:
                load(port_of(side, factory), lines, 1.0, connections)
        for _ in range(rounds):
            for name, (factory, lines, _) in scenarios.items():
                # Alternate, so a busy machine's drift hits every side alike.
                for side in sides:
                    port = port_of(side, factory)
                    before = cpu_ns(pids[port])
                    rps, answered = load_counted(port, lines, seconds, connections)
                    after = cpu_ns(pids[port])
                    results[name][side].append(rps)
                    if before is not None and after is not None and answered:
                        cpu[name][side].append((after - before) / answered / 1000)
    finally:
        for proc in procs:
            stop(proc)
    summary: dict[str, Any] = {}
    for name, runs in results.items():
        bare, with_capi = statistics.median(runs["bare"]), statistics.median(runs["capi"])
        summary[name] = {
            "what": scenarios[name][2],
            "bare_rps": bare,
            "capi_rps": with_capi,
            "ratio": with_capi / bare,
            # Each run against the bare run just before it: robust to slow drift.
            "paired_ratio": statistics.median(
                c / b for c, b in zip(runs["capi"], runs["bare"], strict=True)
            ),
            "best_ratio": max(runs["capi"]) / max(runs["bare"]),
            "runs": runs,
        }
        if cpu[name]["bare"] and cpu[name]["capi"]:
            bare_cpu = statistics.median(cpu[name]["bare"])
            capi_cpu = statistics.median(cpu[name]["capi"])
            summary[name]["bare_cpu_us"] = bare_cpu
            summary[name]["capi_cpu_us"] = capi_cpu
            # Requests/s a saturated core can serve go as 1 / CPU time per request.
            summary[name]["cpu_ratio"] = bare_cpu / capi_cpu
            summary[name]["cpu_runs"] = cpu[name]
        if baseline:
            summary[name]["baseline_rps"] = statistics.median(runs["baseline"])
            summary[name]["baseline_ratio"] = statistics.median(runs["baseline"]) / bare
    return {
        "client": "wrk" if shutil.which("wrk") else "asyncio keep-alive client",
        "connections": connections,
        "seconds": seconds,
        "rounds": rounds,
        "scenarios": summary,
    }


# -- main ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--no-server", action="store_true", help="skip the uvicorn part")
    parser.add_argument("--seconds", type=float, default=5.0, help="per uvicorn load run")
    parser.add_argument("--rounds", type=int, default=5, help="uvicorn runs per app")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SERVER_SCENARIOS),
        help="uvicorn scenario(s) to run (default: all)",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also serve the capi_middleware package in DIR (e.g. `git archive <commit> "
        "capi_middleware | tar -x -C DIR`) in the same uvicorn run, for before/after",
    )
    args = parser.parse_args()
    n, repeats = (2_000, 3) if args.quick else (5_000, 15)
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"\nPart 1: direct ASGI calls, best of {repeats} x {n} requests")
    print(f"{'scenario':42} {'no-op µs':>9} {'capi µs':>9} {'added µs':>9} {'ratio':>6}")
    rows = run_direct(n, repeats)
    rows.append(run_direct_with_sender(n, repeats))
    for row in rows:
        print(
            f"{row['scenario']:42} {row['noop_us']:9.2f} {row['capi_us']:9.2f} "
            f"{row['added_us']:9.2f} {row['ratio']:6.2f}"
        )
    for memo, target in ((True, 10.0), (False, 20.0)):
        shown = [
            r
            for r in rows
            if "track" not in r["scenario"] and (r["scenario"] not in NO_MEMO_ROWS) == memo
        ]
        worst = max(r["added_us"] for r in shown)
        print(
            f"worst added without track(), {'memoized' if memo else 'first-visit'} rows: "
            f"{worst:.2f} µs (target <= {target:.0f} µs): {'OK' if worst <= target else 'OVER'}"
        )
    if args.no_server:
        if args.json:
            Path(args.json).write_text(json.dumps({"direct": rows}, indent=2))
        return
    seconds, rounds = (1.0, 1) if args.quick else (args.seconds, args.rounds)
    print(
        f"\nPart 2: uvicorn, 1 worker per app, {rounds} alternating round(s) of {seconds:.0f} s "
        "per app and scenario"
    )
    server = run_server(seconds, rounds, args.connections, args.scenario, args.baseline)
    print(f"client: {server['client']}, {server['connections']} connections")
    print(
        f"{'scenario':8} {'bare req/s':>11} {'with req/s':>11} {'ratio':>6} {'paired':>6} "
        f"{'best':>6}  verdict"
    )
    for name, row in server["scenarios"].items():
        verdict = "OK" if row["ratio"] >= 0.95 else "UNDER"
        print(
            f"{name:8} {row['bare_rps']:11.0f} {row['capi_rps']:11.0f} {row['ratio']:6.3f} "
            f"{row['paired_ratio']:6.3f} {row['best_ratio']:6.3f}  {verdict}  ({row['what']})"
        )
        for side, runs in row["runs"].items():
            print(f"{'':8} {side:8} runs {[round(x) for x in runs]}")
        if "cpu_ratio" in row:
            print(
                f"{'':8} server CPU per request: bare {row['bare_cpu_us']:.1f} µs, with "
                f"{row['capi_cpu_us']:.1f} µs (+{row['capi_cpu_us'] - row['bare_cpu_us']:.1f}); "
                f"bare/with {row['cpu_ratio']:.3f}  "
                f"{'OK' if row['cpu_ratio'] >= 0.95 else 'UNDER'}"
            )
            for side, runs in row["cpu_runs"].items():
                print(f"{'':8} {side:8} CPU µs/request {[round(x, 1) for x in runs]}")
        if "baseline_ratio" in row:
            print(f"{'':8} baseline ratio {row['baseline_ratio']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"direct": rows, "server": server}, indent=2))


if __name__ == "__main__":
    main()
