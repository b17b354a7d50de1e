"""The CLI a newcomer meets first (issue 12, point 7): --version, check --config-only with
nothing configured, the action_source hint from check --build, a Purchase from send-test-event.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import capi_middleware
from capi_middleware.cli.main import main
from capi_middleware.testing import FakeGraphAPI

TOKEN = "cli-first-hour-token"


pytestmark = pytest.mark.usefixtures("no_meta_env")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"capi-middleware {capi_middleware.__version__}"


def test_check_config_only_fails_when_nothing_is_configured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check", "--config-only"]) == 1
    out = capsys.readouterr().out
    assert out == "config: no pixel configured: set META_PIXEL_ID and META_ACCESS_TOKEN\n"


def test_check_config_only_passes_with_a_pixel(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("META_PIXEL_ID", "123")
    monkeypatch.setenv("META_ACCESS_TOKEN", TOKEN)
    assert main(["check", "--config-only"]) == 0
    assert capsys.readouterr().out == "config: ok (1 pixel(s))\n"


def test_check_config_only_names_the_variable_of_a_bad_option(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("META_PIXEL_ID", "123")
    assert main(["check", "--config-only"]) == 1
    assert "access_token [META_ACCESS_TOKEN]: not set" in capsys.readouterr().out


def test_check_build_on_minimal_input_points_at_action_source(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    event = tmp_path / "lead.json"
    event.write_text(json.dumps({"event_name": "Lead", "user_data": {"email": "a@b.co"}}))
    assert main(["check", "--build", str(event)]) == 1
    out = capsys.readouterr().out
    assert "event[0]: error: event_source_url: is required for website events" in out
    assert "action_source defaults to 'website'" in out
    assert "'system_generated'" in out
    event.write_text(
        json.dumps(
            {
                "event_name": "Lead",
                "action_source": "system_generated",
                "user_data": {"email": "a@b.co"},
            }
        )
    )
    assert main(["check", "--build", str(event)]) == 0
    assert capsys.readouterr().out.endswith("event[0]: ok\n")


def test_send_test_event_sends_a_purchase_with_value_and_currency(
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
                "TEST1",
                "--event-name",
                "Purchase",
                "--value",
                "79.99",
                "--currency",
                "USD",
            ]
        )
        out = capsys.readouterr().out
        assert code == 0, out
        (event,) = fake.events
    assert event["event_name"] == "Purchase"
    assert event["custom_data"] == {"value": 79.99, "currency": "USD"}
    assert TOKEN not in out


def test_send_test_event_purchase_without_currency_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("META_ACCESS_TOKEN", TOKEN)
    code = main(
        [
            "send-test-event",
            "--pixel-id",
            "777",
            "--test-event-code",
            "TEST1",
            "--event-name",
            "Purchase",
            "--value",
            "5",
        ]
    )
    assert code == 1
    assert "custom_data.currency" in capsys.readouterr().out


def test_check_names_a_misspelled_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("META_PIXELID", "123")
    monkeypatch.setenv("META_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("META_SOMETHING_ELSE", "x")  # another tool's: not ours to judge
    assert main(["check", "--config-only"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (
        "config: warning: META_PIXELID is set but not read; did you mean META_PIXEL_ID?"
    )
    assert "META_SOMETHING_ELSE" not in out
    assert TOKEN not in out
    assert "123" not in out
