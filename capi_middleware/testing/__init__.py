"""A fake Graph API and pytest fixtures for testing an app that uses capi-middleware.

See `capi_middleware.testing.fake` for the whole story; the names below are the public kit.
"""

from __future__ import annotations

from capi_middleware.testing.fake import (
    FAKE_ACCESS_TOKEN,
    FAKE_PIXEL_ID,
    FakeGraphAPI,
    RecordedRequest,
    fake_graph,
    fake_graph_config,
)

__all__ = [
    "FAKE_ACCESS_TOKEN",
    "FAKE_PIXEL_ID",
    "FakeGraphAPI",
    "RecordedRequest",
    "fake_graph",
    "fake_graph_config",
]
