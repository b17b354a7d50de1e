"""Pytest fixtures for the fake Graph API, for your ``conftest.py``::

    from capi_middleware.testing import fake_graph, fake_graph_config  # noqa: F401

``fake_graph`` is a started `FakeGraphAPI` over real HTTP on 127.0.0.1, stopped after the test;
``fake_graph_config`` a `CAPIConfig` for `FAKE_PIXEL_ID` pointed at it. pytest is only needed
to use them.
"""

from __future__ import annotations

from collections.abc import Iterator

from capi_middleware.config import CAPIConfig
from capi_middleware.testing.fake import FAKE_PIXEL_ID, FakeGraphAPI

__all__ = ["fake_graph", "fake_graph_config"]

try:
    import pytest
except ImportError:  # pytest is only needed to use the fixtures; the names exist without it

    def fake_graph() -> Iterator[FakeGraphAPI]:
        """Needs pytest (``pip install pytest``)."""
        raise ModuleNotFoundError("capi_middleware.testing's fixtures need pytest")

    def fake_graph_config(fake_graph: FakeGraphAPI) -> CAPIConfig:
        """Needs pytest (``pip install pytest``)."""
        raise ModuleNotFoundError("capi_middleware.testing's fixtures need pytest")

else:

    @pytest.fixture
    def fake_graph() -> Iterator[FakeGraphAPI]:
        """A started `FakeGraphAPI` over real HTTP on 127.0.0.1, stopped after the test."""
        with FakeGraphAPI() as fake:
            yield fake

    @pytest.fixture
    def fake_graph_config(fake_graph: FakeGraphAPI) -> CAPIConfig:
        """A `CAPIConfig` for `FAKE_PIXEL_ID`, pointed at ``fake_graph``, flushing quickly."""
        return CAPIConfig(
            pixel_id=FAKE_PIXEL_ID,
            access_token=fake_graph.access_token,
            graph_url=fake_graph.url,
            flush_interval=0.05,
            partner_agent=None,
        )
