"""A fake Graph API and pytest fixtures for testing an app that uses capi-middleware.

See `capi_middleware.testing.fake` for the fake (its rules: `.oracle`; how it is reached:
`.server`), `.fixtures` for its pytest fixtures and `capi_middleware.testing.apps` for reaching an
app's client and the environment fixtures; the names below are the public kit.
"""

from __future__ import annotations

from capi_middleware.testing.apps import fake_graph_env, fake_graph_session, find_client
from capi_middleware.testing.fake import (
    FAKE_ACCESS_TOKEN,
    FAKE_PIXEL_ID,
    FakeGraphAPI,
    RecordedRequest,
)
from capi_middleware.testing.fixtures import fake_graph, fake_graph_config

__all__ = [
    "FAKE_ACCESS_TOKEN",
    "FAKE_PIXEL_ID",
    "FakeGraphAPI",
    "RecordedRequest",
    "fake_graph",
    "fake_graph_config",
    "fake_graph_env",
    "fake_graph_session",
    "find_client",
]
