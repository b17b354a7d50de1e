"""Fixtures shared by the whole suite.

One block per concern, each with its own heading; add a new concern as a new block.
Helpers that are plain functions, not fixtures (a free port, waiting on a condition), are in
``tests/live.py``.
"""

from __future__ import annotations

import pytest

# -- the fake Graph API ----------------------------------------------------------------------
# The package's own fixtures, imported the way a shop's conftest.py does (README, "Testing"):
# ``fake_graph`` is a started FakeGraphAPI over real HTTP on 127.0.0.1, stopped after the test;
# ``fake_graph_config`` a CAPIConfig pointed at it.
from capi_middleware.testing import FakeGraphAPI, fake_graph, fake_graph_config

__all__ = ["fake", "fake_graph", "fake_graph_config"]


@pytest.fixture
def fake(fake_graph: FakeGraphAPI) -> FakeGraphAPI:
    """``fake_graph`` under the short name most tests use."""
    return fake_graph
