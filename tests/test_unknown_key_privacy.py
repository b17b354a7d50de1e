"""A personal value used as a user_data key is never echoed (issue 10, item 5).

``{"jane.doe@example.com": ...}`` is a value in the wrong place. Problems name such a key by its
shape (``unknown key of 20 characters``), in ``result.problems``, the ``strict=True`` exception and
the log; only a near miss of one of our names (``emial``) is shown, with its "did you mean".
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from capi_middleware import CAPIClient
from capi_middleware.cli.main import main
from capi_middleware.errors import CAPIValidationError

PERSONAL = "jane.doe@example.com"


def test_track_reports_the_key_by_its_shape(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="capi_middleware")
    with CAPIClient(dry_run=True, consent=True) as client:
        result = client.track(
            "Lead", user_data={PERSONAL: "x", "emial": "a@b.example", "external_id": "42"}
        )
        # No match key at all: the event is invalid, and the log says why.
        invalid = client.track("Lead", action_source="system_generated", user_data={PERSONAL: "x"})
    text = " ".join(str(p) for p in (*result.problems, *invalid.problems))
    assert PERSONAL not in text
    assert PERSONAL not in repr(result) + repr(invalid)
    assert "unknown key of 20 characters" in text
    assert "user_data.emial: unknown key, dropped; did you mean 'email'?" in text
    assert PERSONAL not in caplog.text


def test_strict_raises_without_the_key() -> None:
    client = CAPIClient(dry_run=True, consent=True, strict=True)
    with client, pytest.raises(CAPIValidationError) as raised:
        client.track("Lead", user_data={PERSONAL: "x", "external_id": "42"})
    assert PERSONAL not in str(raised.value)
    assert "unknown key of 20 characters" in str(raised.value)
    assert all(PERSONAL not in p.field for p in raised.value.problems)


def test_check_prints_the_key_by_its_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("META_PIXEL_ID", "META_ACCESS_TOKEN", "META_TEST_EVENT_CODE"):
        monkeypatch.delenv(var, raising=False)
    event = {
        "event_name": "Lead",
        "event_time": 1_900_000_000,
        "action_source": "website",
        "event_source_url": "https://example.com/",
        "user_data": {"client_user_agent": "UA", "external_id": ["a" * 64], PERSONAL: "x"},
    }
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    main(["check", str(path)])
    out = capsys.readouterr()
    assert PERSONAL not in out.out + out.err
    assert "unknown key of 20 characters" in out.out
