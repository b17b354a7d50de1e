"""The ``capi-middleware`` command line: check, send-test-event, demo and outbox."""

from __future__ import annotations

from capi_middleware.cli.main import main

__all__ = ["main"]
