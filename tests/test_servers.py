"""Real servers, real signals: an event still queued when SIGTERM arrives is delivered on exit.

Each server runs as a subprocess on 127.0.0.1. The fake Graph API is down while the visitor buys,
so the sender's first attempt fails and the Purchase waits for a retry; the fake comes back, the
server gets SIGTERM, and the Purchase must reach the fake before the process exits: through ASGI
lifespan shutdown (uvicorn, hypercorn) or the interpreter-exit flush (gunicorn's sync workers).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from live import free_port, wait_until_serving

from capi_middleware.testing.fake import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID, FakeGraphAPI

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
FBCLID = "IwAR_server-Click_7"

SERVERS = {
    "uvicorn": [
        "-m",
        "uvicorn",
        "apps.server_apps:starlette",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--log-level",
        "warning",
    ],
    "hypercorn": ["-m", "hypercorn", "apps.server_apps:quart", "--bind", "127.0.0.1:{port}"],
    "gunicorn-sync": [
        "-m",
        "gunicorn",
        "apps.server_apps:flask",
        "--bind",
        "127.0.0.1:{port}",
        "--workers",
        "2",
        "--worker-class",
        "sync",
    ],
    # --preload builds the middleware in the master, before fork: the sender must start clean
    # in the worker that tracks.
    "gunicorn-preload": [
        "-m",
        "gunicorn",
        "apps.server_apps:flask",
        "--bind",
        "127.0.0.1:{port}",
        "--workers",
        "2",
        "--worker-class",
        "sync",
        "--preload",
    ],
}


@pytest.mark.parametrize("server", list(SERVERS))
def test_sigterm_flushes_the_queued_purchase(server: str, fake: FakeGraphAPI) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "META_PIXEL_ID": FAKE_PIXEL_ID,
        "META_ACCESS_TOKEN": FAKE_ACCESS_TOKEN,
        "META_GRAPH_URL": fake.url,
        "PYTHONPATH": str(TESTS),
        "PYTHONUNBUFFERED": "1",
    }
    args = [a.format(port=port) for a in SERVERS[server]]
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=TESTS,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_serving(f"{base}/landing", proc, logs=lambda: proc.communicate()[1])
        fake.down = True  # Meta unreachable: the Purchase has to wait in the queue
        with httpx.Client(
            base_url=base, headers={"user-agent": "Mozilla/5.0 ServerMatrix/1.0"}
        ) as c:
            landing = c.get(f"/landing?fbclid={FBCLID}").json()
            bought = c.post("/buy").json()
            fbc = c.cookies.get("_fbc")
        assert landing["fbclid"] == FBCLID
        assert fbc == landing["fbc"]
        assert bought["status"] == "queued"
        assert fake.wait_for_requests(1, timeout=30)  # the sender tried, and failed
        assert fake.events == []
        fake.down = False
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # uvicorn re-raises the signal after its graceful shutdown, so it ends "killed by SIGTERM".
    clean = (0, -signal.SIGTERM) if server == "uvicorn" else (0,)
    assert proc.returncode in clean, stderr
    purchases = [e for e in fake.events if e["event_name"] == "Purchase"]
    assert [p["event_id"] for p in purchases] == [bought["event_id"]], stderr
    assert purchases[0]["user_data"]["fbc"] == fbc
