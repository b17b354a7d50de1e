"""CPU instructions per request through uvicorn, bare app vs CAPIMiddleware, under callgrind.

    python bench/instructions.py [--requests 1000] [--scenario a ...]

bench/overhead.py's part 2 measures requests/second, which on a shared 2-core machine moves by
10-20% between two runs of the *same* server. Instruction counts do not: valgrind's callgrind
counts every instruction the server process executes, the same for the same program, input and
environment whatever else the machine does. Each side of each scenario (the request shapes of
bench/overhead.py: a, b1, b2, c) is served by uvicorn (h11, one worker, the same factories as
overhead.py) under ``valgrind --tool=callgrind`` twice: once answering ``--warmup`` requests and
once answering ``--warmup + --requests``; the difference divided by ``--requests`` is the cost of
one request, start-up and warm-up cancelled out. PYTHONHASHSEED is fixed so that both runs hash
alike.

The ratio bare / with is what requests/second would be on a core where an instruction costs the
same everywhere. It leaves out cache misses (our code adds to the server's working set, so the
real ratio is somewhat lower) and the kernel's share (the same on both sides: the same bytes
cross the same sockets, bar the Set-Cookie headers). Needs valgrind (Debian: ``apt-get install
valgrind``); slow: about half a minute per run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from overhead import SERVER_SCENARIOS, _request, free_port, uvicorn_command

HERE = Path(__file__).resolve().parent
# Scenarios whose responses carry our Set-Cookie headers -> the bare app sending the same ones.
SET_COOKIE_REFERENCES = {"b1": "make_bare_b1_cookies", "c": "make_bare_c_cookies"}


def serve_and_count(factory: str, request: bytes, answers: int) -> int:
    """Instructions uvicorn executes from start to exit, having answered ``answers`` requests."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {**os.environ, "PYTHONPATH": str(HERE), "PYTHONHASHSEED": "0"}
        proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                "--dump-line=no",
                "--compress-strings=no",
                *uvicorn_command(factory, port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            sock = _connect(port, proc)
            with sock:
                for _ in range(answers):
                    sock.sendall(request)
                    _read_response(sock)
        finally:
            proc.terminate()
            proc.wait(120)
        summary = re.search(rb"^summary: (\d+)", out.read_bytes(), re.MULTILINE)
        if summary is None:
            raise RuntimeError(f"no callgrind summary for {factory}")
        return int(summary[1])


def _connect(port: int, proc: subprocess.Popen[bytes]) -> socket.socket:
    deadline = time.monotonic() + 300  # uvicorn starts slowly under valgrind
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}")
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=60)
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("uvicorn did not start under valgrind")


def _read_response(sock: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)content-length: *(\d+)", head)
    length = int(match[1]) if match else 0
    while len(body) < length:
        body += sock.recv(65536)


def per_request(factory: str, request: bytes, warmup: int, requests: int) -> float:
    base = serve_and_count(factory, request, warmup)
    more = serve_and_count(factory, request, warmup + requests)
    return (more - base) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--scenario", action="append", choices=sorted(SERVER_SCENARIOS))
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    names = args.scenario or list(SERVER_SCENARIOS)
    print(
        f"instructions per request through uvicorn (callgrind; {args.requests} requests after "
        f"{args.warmup} of warm-up, one keep-alive connection)"
    )
    print(f"{'scenario':8} {'bare':>10} {'with':>10} {'added':>9} {'bare/with':>9}  verdict")
    for name in names:
        factory, lines, what = SERVER_SCENARIOS[name]
        request = _request(lines)
        bare = per_request("make_bare", request, args.warmup, args.requests)
        with_capi = per_request(factory, request, args.warmup, args.requests)
        ratio = bare / with_capi
        print(
            f"{name:8} {bare:10,.0f} {with_capi:10,.0f} {with_capi - bare:9,.0f} {ratio:9.3f}  "
            f"{'OK' if ratio >= 0.95 else 'UNDER'}  ({what})",
            flush=True,
        )
        reference = SET_COOKIE_REFERENCES.get(name)
        if reference is not None:
            # The bare app answering with the very Set-Cookie headers we add: what the server
            # itself spends on them, apart from our code.
            headers_only = per_request(reference, request, args.warmup, args.requests)
            print(
                f"{'':8} bare + the same Set-Cookie headers: {headers_only:,.0f} "
                f"(the server's share of the headers: {headers_only - bare:,.0f}; ours: "
                f"{with_capi - headers_only:,.0f}, ratio {headers_only / with_capi:.3f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
