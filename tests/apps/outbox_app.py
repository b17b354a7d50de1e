"""Apps for the outbox crash tests (tests/test_outbox_processes.py), run by real servers.

``uvicorn apps.outbox_app:asgi`` or ``gunicorn apps.outbox_app:wsgi``. As in production,
pixel_id, access_token, graph_url and the outbox (a SQLite path, or a ``redis://`` URL for the
fleet tests in tests/delivery/test_redis_fleet.py) come from the ``META_*`` environment.
The knobs a crash test needs come from ``CAPI_TEST_*`` variables (all optional):

- ``CAPI_TEST_SHUTDOWN_TIMEOUT``, ``CAPI_TEST_MAX_QUEUE``: the `CAPIConfig` options.
- ``CAPI_TEST_PARTNER_AGENT``: sent in every Graph request body, so the fake's records say
  which process sent a batch.
- ``CAPI_TEST_LEASE_SECONDS``, ``CAPI_TEST_BACKOFF_CAP``: the sender's tunables. The lease has
  no config option (the sender takes at least 60 s), and a crash test can not wait a minute for
  a killed process's leases to run out.
- ``CAPI_TEST_MAX_BYTES``: open the outbox with ``SQLiteStore(max_bytes=...)`` to play a full
  disk (the sender has no option for it).

Routes: ``GET /health`` (tracks nothing), ``POST /buy?n=N`` (a Purchase tracked with
``durable=True``; answers its event_id and status), ``GET /stats`` (the middleware's stats, and
``idle_looks``: see `WatchedStore`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from capi_middleware import CAPIMiddleware, CAPIWSGIMiddleware, RequestContext
from capi_middleware.config import CAPIConfig, is_redis_outbox
from capi_middleware.delivery.sender import get_sender
from capi_middleware.delivery.sqlite_store import SQLiteStore
from capi_middleware.delivery.store import StoredEvent


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name)
    return float(raw) if raw else None


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    return int(raw) if raw else None


def _options() -> dict[str, Any]:
    options: dict[str, Any] = {"consent": True, "flush_interval": 0.05}
    shutdown_timeout = _env_float("CAPI_TEST_SHUTDOWN_TIMEOUT")
    if shutdown_timeout is not None:
        options["shutdown_timeout"] = shutdown_timeout
    max_queue = _env_int("CAPI_TEST_MAX_QUEUE")
    if max_queue is not None:
        options["max_queue"] = max_queue
    partner_agent = os.environ.get("CAPI_TEST_PARTNER_AGENT")
    if partner_agent:
        options["partner_agent"] = partner_agent
    return options


class WatchedStore(SQLiteStore):
    """The outbox, counting the sender's looks into it that found nothing due.

    ``GET /stats`` answers ``idle_looks``: the empty claims since the last one that leased
    events. After a delivery, one or more means the sender has finished that round and is idle.
    """

    idle_looks = 0

    def claim(self, limit: int, *, lease_seconds: float, now: float) -> list[StoredEvent]:
        claimed = super().claim(limit, lease_seconds=lease_seconds, now=now)
        WatchedStore.idle_looks = 0 if claimed else WatchedStore.idle_looks + 1
        return claimed


def _tune_sender(config: CAPIConfig) -> None:
    """Create this process's sender now, with the test's tunables, if any were given.

    ``get_sender`` returns the same sender to the middleware on its first ``track()``. Creating
    it starts no thread and sends nothing.
    """
    lease = _env_float("CAPI_TEST_LEASE_SECONDS")
    backoff_cap = _env_float("CAPI_TEST_BACKOFF_CAP")
    max_bytes = _env_int("CAPI_TEST_MAX_BYTES")
    if lease is None and backoff_cap is None and max_bytes is None:
        return
    store = None
    if isinstance(config.outbox, str) and config.outbox and not is_redis_outbox(config.outbox):
        if max_bytes is not None:
            store = WatchedStore(
                config.outbox, max_bytes=max_bytes, max_events=config.max_queue, reopen_interval=0.5
            )
        else:  # as the sender opens it
            store = WatchedStore(config.outbox, max_events=config.max_queue)
    sender = get_sender(config, store=store)
    if lease is not None:
        sender.lease_seconds = lease
    if backoff_cap is not None:
        sender.backoff_cap = backoff_cap
        sender.backoff_base = min(sender.backoff_base, backoff_cap)


def _plain(value: Any) -> Any:
    """Stats dataclasses (with read-only mappings inside) as plain JSON-able values."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _buy(ctx: RequestContext, n: str) -> dict[str, Any]:
    result = ctx.track(
        "Purchase",
        value=19.99,
        currency="USD",
        user_data={"email": f"buyer{n}@example.com"},
        durable=True,
    )
    return {
        "event_id": result.event_id,
        "status": result.status,
        "problems": [str(p) for p in result.problems],
        "pid": os.getpid(),
    }


# -- ASGI (Starlette) ----------------------------------------------------------------------


def _health(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid()})


def _buy_endpoint(request: Request) -> JSONResponse:
    # A sync endpoint: durable=True waits for the outbox commit, so it runs in the threadpool,
    # not on the event loop.
    return JSONResponse(_buy(request.state.capi, request.query_params.get("n", "0")))


def _stats(request: Request) -> JSONResponse:
    return JSONResponse({**_plain(asgi.stats()), "idle_looks": WatchedStore.idle_looks})


asgi = CAPIMiddleware(
    Starlette(
        routes=[
            Route("/health", _health),
            Route("/buy", _buy_endpoint, methods=["POST"]),
            Route("/stats", _stats),
        ]
    ),
    **_options(),
)
_tune_sender(asgi.config)


# -- WSGI ----------------------------------------------------------------------------------

StartResponse = Callable[..., Any]


def _wsgi_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/buy" and environ.get("REQUEST_METHOD") == "POST":
        query = dict(p.partition("=")[::2] for p in environ.get("QUERY_STRING", "").split("&"))
        doc: Any = _buy(environ["capi"], query.get("n", "0"))
    elif path == "/stats":
        doc = {**_plain(wsgi.stats()), "idle_looks": WatchedStore.idle_looks}
    elif path == "/health":
        doc = {"pid": os.getpid()}
    else:
        start_response("404 Not Found", [("content-type", "text/plain")])
        return [b"not found"]
    body = json.dumps(doc).encode()
    start_response("200 OK", [("content-type", "application/json")])
    return [body]


wsgi = CAPIWSGIMiddleware(_wsgi_app, **_options())
