"""The README's Quick start, as a newcomer runs it (issue 12, "done when"): under a real uvicorn,
within a minute, either the event reaches the (fake) Graph API or a log line says why not.

The Quick start's code block is written to ``main.py`` as it stands. Its explicit pixel_id and
token stay; ``META_GRAPH_URL`` (an option the code leaves unset) points it at the fake.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live import free_port, wait_until_serving

from capi_middleware.testing import FakeGraphAPI

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"


def _quick_start_code() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Quick start") :]
    match = re.search(r"```python\n(.*?)\n```", section, re.S)
    assert match is not None
    return match.group(1) + "\n"


@pytest.fixture
def shop(tmp_path: Path, fake: FakeGraphAPI) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    fake.access_token = "EAAB..."  # the Quick start's token
    (tmp_path / "main.py").write_text(_quick_start_code(), encoding="utf-8")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("META_")}
    env.update({"META_GRAPH_URL": fake.url, "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "main:app", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        # "within a minute"
        wait_until_serving(f"{base}/docs", proc, timeout=60, logs=lambda: proc.communicate()[1])
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=30)


def test_without_consent_a_log_line_says_why(shop: tuple[str, subprocess.Popen[str]]) -> None:
    base, proc = shop
    body = httpx.post(f"{base}/checkout", headers={"user-agent": "Mozilla/5.0 (quick)"}).json()
    assert body["status"] == "denied"
    assert "consent=True" in body["problems"][0]
    proc.terminate()
    _, stderr = proc.communicate(timeout=30)
    said = [line for line in stderr.splitlines() if "Purchase event not sent" in line]
    assert len(said) == 1, stderr
    assert "no consent signal" in said[0]
    assert "consent=True" in said[0]


def test_with_consent_the_event_reaches_the_fake(
    shop: tuple[str, subprocess.Popen[str]], fake: FakeGraphAPI
) -> None:
    base, _ = shop
    body = httpx.post(
        f"{base}/checkout",
        headers={"user-agent": "Mozilla/5.0 (quick)"},
        cookies={"cookie_consent": "granted"},
    ).json()
    assert body["status"] == "queued", body
    assert fake.wait_for_events(1, timeout=60)
    (event,) = fake.events
    assert event["event_name"] == "Purchase"
    assert event["event_id"] == body["event_id"]
