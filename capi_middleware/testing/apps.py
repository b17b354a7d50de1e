"""Testing an app that uses capi-middleware: reach its client, and point it at a fake Meta.

`find_client` finds the `CAPIClient` serving an app however the middleware was added
(``app.add_middleware``, a direct wrap, Flask's ``wsgi_app``, a Django handler), so a test can
``flush()`` and read ``stats()``. The fixtures set the ``META_*`` environment once per test
session, pointing at one `FakeGraphAPI`, so that an app configured from the environment sends to
the fake whenever it is built. Why once per session: Starlette builds an ``add_middleware``
stack on the app's first request and keeps it, so a module-level app stays pointed at whatever
the environment said then; a fake started per test would leave every later test's events going
to the first test's (stopped) fake.
"""

from __future__ import annotations

from collections.abc import Iterator

from capi_middleware.client import CAPIClient
from capi_middleware.testing.fake import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID, FakeGraphAPI

__all__ = ["fake_graph_env", "fake_graph_session", "find_client"]

# Where the next layer in is kept: Starlette's built stack and each middleware's ``app``
# (Starlette, FastAPI, any ASGI middleware), Quart's ``asgi_app``, Flask's ``wsgi_app``, and
# Django's handler chain (``_middleware_chain``, wrapped functions, ``get_response``).
_INNER = ("middleware_stack", "app", "asgi_app", "wsgi_app", "_middleware_chain")
_INNER_WRAPPED = ("__wrapped__", "get_response", "pipeline")

# META_* variables that would change where or whether the fake receives events.
_CLEARED = ("META_APP_SECRET", "META_TEST_EVENT_CODE", "META_DRY_RUN", "META_OUTBOX")


def find_client(app: object) -> CAPIClient:
    """The `CAPIClient` of the capi-middleware that serves ``app``.

    ``app`` is what the server runs: a Starlette / FastAPI app (with ``add_middleware``), a
    `CAPIMiddleware` or `CAPIWSGIMiddleware`, a Quart or Flask app whose ``asgi_app`` /
    ``wsgi_app`` was wrapped, or a Django ``WSGIHandler`` / ``ASGIHandler``. For a Starlette
    app whose middleware stack is not built yet (no request so far), it is built now, exactly
    as Starlette builds it on the first request, so the client returned is the one requests
    will use. Raises LookupError when no capi-middleware is found.

    Use it to ``flush()`` before asserting on the fake, and for ``stats()``. In your own code,
    the simpler way is to build the client yourself and share it:
    ``app.add_middleware(CAPIMiddleware, client=client)``.
    """
    seen: set[int] = set()
    todo: list[object] = [app]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or obj is None:
            continue
        seen.add(id(obj))
        client = getattr(obj, "client", None)
        if isinstance(client, CAPIClient):
            return client
        if getattr(obj, "middleware_stack", False) is None and hasattr(
            obj, "build_middleware_stack"
        ):
            # Starlette's own first-request step (``Starlette.__call__``).
            obj.middleware_stack = obj.build_middleware_stack()  # type: ignore[attr-defined]
        for name in (*_INNER, *_INNER_WRAPPED):
            inner = getattr(obj, name, None)
            if inner is not None and not isinstance(inner, (str, bytes, int, float)):
                todo.append(inner)
    raise LookupError(
        f"no capi-middleware found in {type(app).__name__}; pass the app the server runs"
    )


try:
    import pytest
except ImportError:  # pytest is only needed to use the fixtures; the names exist without it

    def fake_graph_session() -> Iterator[FakeGraphAPI]:
        """Needs pytest (``pip install pytest``)."""
        raise ModuleNotFoundError("capi_middleware.testing's fixtures need pytest")

    def fake_graph_env(fake_graph_session: FakeGraphAPI) -> FakeGraphAPI:
        """Needs pytest (``pip install pytest``)."""
        raise ModuleNotFoundError("capi_middleware.testing's fixtures need pytest")

else:

    @pytest.fixture(scope="session")
    def fake_graph_session() -> Iterator[FakeGraphAPI]:
        """One started `FakeGraphAPI` for the whole session, with the environment set.

        ``META_PIXEL_ID``, ``META_ACCESS_TOKEN`` and ``META_GRAPH_URL`` point at it (and
        ``META_APP_SECRET``, ``META_TEST_EVENT_CODE``, ``META_DRY_RUN``, ``META_OUTBOX`` are
        cleared) from the first test that asks for it to the end of the session.
        """
        with FakeGraphAPI() as fake, pytest.MonkeyPatch.context() as patch:
            patch.setenv("META_PIXEL_ID", FAKE_PIXEL_ID)
            patch.setenv("META_ACCESS_TOKEN", FAKE_ACCESS_TOKEN)
            patch.setenv("META_GRAPH_URL", fake.url)
            for name in _CLEARED:
                patch.delenv(name, raising=False)
            yield fake

    @pytest.fixture
    def fake_graph_env(fake_graph_session: FakeGraphAPI) -> FakeGraphAPI:
        """The session's `FakeGraphAPI` (see `fake_graph_session`), reset for this test.

        Its recorded events, requests and scripted faults are cleared before the test. Build
        (or import) your app after this fixture has run, or let ``add_middleware`` build it on
        the first request: either way it reads the environment that points at the fake.
        """
        fake_graph_session.reset()
        return fake_graph_session
