from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capi_middleware.cli.main import main
from capi_middleware.testing.fake import FakeGraphAPI

TOKEN = "cli-test-token-value"


pytestmark = pytest.mark.usefixtures("no_meta_env")


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "send-test-event", "check", "outbox"):
        assert command in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2


def test_send_test_event_reaches_the_graph_api_with_the_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("META_ACCESS_TOKEN", TOKEN)
    with FakeGraphAPI(access_token=TOKEN) as fake:
        code = main(
            [
                "send-test-event",
                "--pixel-id",
                "777",
                "--graph-url",
                fake.url,
                "--test-event-code",
                "TEST4242",
                "--email",
                " John_Smith@gmail.com ",
            ]
        )
        out = capsys.readouterr().out
        assert code == 0, out
        assert "HTTP 200" in out
        assert '"events_received": 1' in out or '"events_received":1' in out
        (request,) = fake.requests
        body = json.loads(request.body)
        assert body["test_event_code"] == "TEST4242"
        (event,) = body["data"]
        assert event["event_name"] == "PageView"
        assert event["user_data"]["em"] == [
            "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
        ]
        assert TOKEN not in out
        assert TOKEN not in request.path


def test_send_test_event_prints_meta_error_and_fails(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("META_ACCESS_TOKEN", TOKEN)
    with FakeGraphAPI(access_token="a-different-token") as fake:
        code = main(
            [
                "send-test-event",
                "--pixel-id",
                "777",
                "--graph-url",
                fake.url,
                "--test-event-code",
                "TEST1",
            ]
        )
    out = capsys.readouterr().out
    assert code == 1
    assert "190" in out  # Meta's invalid-token code, as Meta answered it
    assert TOKEN not in out


def test_send_test_event_requires_a_test_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("META_PIXEL_ID", "777")
    monkeypatch.setenv("META_ACCESS_TOKEN", TOKEN)
    assert main(["send-test-event"]) == 2
    assert "test event code" in capsys.readouterr().err


def test_bad_config_exits_2_naming_the_option(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("META_ACCESS_TOKEN", TOKEN)
    assert main(["send-test-event", "--pixel-id", "not-a-number"]) == 2
    err = capsys.readouterr().err
    assert "pixel_id [META_PIXEL_ID]:" in err
    assert TOKEN not in err


def _good_event() -> dict[str, object]:
    return {
        "event_name": "Purchase",
        "event_time": int(time.time()) - 60,
        "event_id": "order-1",
        "action_source": "website",
        "event_source_url": "https://shop.example.com/thanks",
        "user_data": {
            "em": ["62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"],
            "client_user_agent": "Mozilla/5.0",
            "client_ip_address": "8.8.8.8",
        },
        "custom_data": {"value": 10.5, "currency": "USD"},
    }


def test_check_accepts_a_valid_event(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(_good_event()))
    assert main(["check", str(path)]) == 0
    assert "event[0]: ok" in capsys.readouterr().out


def test_check_names_every_problem_as_meta_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _good_event()
    bad["event_time"] = int(time.time()) - 8 * 86400
    bad["custom_data"] = {"value": 10.5}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([_good_event(), bad]))
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "event[0]: ok" in out
    assert "event[1]: error: event_time" in out
    assert "2804003" in out
    assert "currency" in out
    assert "2804010" in out


def test_check_build_mode_reports_dropped_values_without_raw_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "input.json"
    path.write_text(
        json.dumps(
            {
                "event_name": "purchase",
                "event_source_url": "https://shop.example.com/",
                "user_data": {
                    "email": "not-an-email@",
                    "phone": "+44 7700 900123",
                    "client_user_agent": "Mozilla/5.0",
                },
                "custom_data": {"value": 3, "currency": "EUR"},
            }
        )
    )
    assert main(["check", "--build", str(path)]) == 0
    out = capsys.readouterr().out
    assert "dropped" in out
    assert "not-an-email@" not in out
    assert "event[0]: ok" in out
    # The match keys the event carries, the ones it lacks, and the drop, by name only.
    assert (
        "event[0]: match keys: ph, client_user_agent; missing: em, fn, ln, ct, st, zp, country, "
        "db, ge, external_id, client_ip_address, fbc, fbp; dropped: em (not an email)"
    ) in out


def test_check_reads_stdin_and_rejects_junk() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "capi_middleware", "check", "-"],
        input="{not json",
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("META_")},
    )
    assert proc.returncode == 2
    assert "cannot read JSON" in proc.stdout


def test_demo_smoke_runs_the_whole_flow() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "capi_middleware", "demo", "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("META_")},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "smoke: ok" in proc.stdout
    assert "Purchase" in proc.stdout
    assert "em=62a14e44f7…" in proc.stdout  # hashed values shortened
    assert "Meta (fake)" in proc.stdout
    # After the purchase, the match-quality report (issue 14): which keys the events carry.
    assert "  Purchase: 1 event(s); em 100%, client_user_agent 100%, fbc 100%, fbp 100%" in (
        proc.stdout
    )
    assert "demo-access-token" not in proc.stdout + proc.stderr
