"""new_frozen: the frozen dataclasses built without __init__ on the request path are whole."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from capi_middleware.capture.context import TrackResult
from capi_middleware.config import CAPIConfig
from capi_middleware.rules.events import BuildResult, Event, build_event
from capi_middleware.rules.frozen import new_frozen
from capi_middleware.testing.fake import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID, FakeGraphAPI

USER = {"email": "a@example.com", "client_ip_address": "203.0.113.7", "client_user_agent": "t"}


def assert_whole(instance: Any) -> None:
    """Every field set, nothing else, and equal to what __init__ makes of the same values."""
    cls = type(instance)
    names = {f.name for f in dataclasses.fields(cls)}
    assert set(vars(instance)) == names
    assert instance == cls(**vars(instance))


def test_build_event_makes_whole_events_and_results() -> None:
    built = build_event(
        "Purchase",
        user_data=USER,
        custom_data={"value": 5, "currency": "USD"},
        event_source_url="https://shop.example.com/thanks",
    )
    assert built.event is not None
    assert_whole(built.event)
    assert_whole(built)


def test_ldu_and_urls_reach_the_event() -> None:
    built = build_event(
        "Lead",
        user_data=USER,
        event_source_url="https://shop.example.com/",
        referrer_url="https://www.google.com/",
        ldu=True,
    )
    assert built.event is not None
    assert_whole(built.event)
    assert built.event.data_processing_options == ("LDU",)
    assert built.event.to_dict()["data_processing_options_country"] == 0


@pytest.mark.parametrize("dry_run", [True, False])
def test_track_results_are_whole(dry_run: bool) -> None:
    from capi_middleware.capture.pipeline import CapturePipeline
    from capi_middleware.client import CAPIClient

    with FakeGraphAPI() as fake:
        pipeline = CapturePipeline(
            CAPIClient(
                CAPIConfig(
                    pixel_id=FAKE_PIXEL_ID,
                    access_token=FAKE_ACCESS_TOKEN,
                    graph_url=fake.url,
                    consent=True,
                    dry_run=dry_run,
                )
            )
        )
        ctx = pipeline.capture(
            peer="203.0.113.7",
            scheme="https",
            server=None,
            raw_path="/checkout",
            query_string="",
            headers={"host": "shop.example.com", "user-agent": "pytest"},
        )
        result = ctx.track("Purchase", value=5, currency="USD", user_data={"email": "a@b.co"})
        assert result.status == ("dry_run" if dry_run else "queued")
        assert_whole(result)
        assert isinstance(result, TrackResult)
        pipeline.client.close(5)


def test_instances_stay_frozen() -> None:
    event = new_frozen(Event, {f.name: None for f in dataclasses.fields(Event)})
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.event_name = "x"  # type: ignore[misc]
    result = new_frozen(BuildResult, {"event": None, "problems": (), "payload": None})
    assert result == BuildResult(event=None, problems=())
    assert hash(result) == hash(BuildResult(event=None, problems=()))
