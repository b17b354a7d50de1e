"""find_client(app): the CAPIClient behind whatever a server runs (issue 12, point 5)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from apps import frameworks

from capi_middleware import CAPIClient, CAPIMiddleware, CAPIWSGIMiddleware
from capi_middleware.testing import find_client

OPTIONS: dict[str, Any] = {"dry_run": True, "consent": True}


def _asgi_get(app: Any, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("8.8.8.8", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="https://shop.test") as c:
            return await c.post(path, headers={"user-agent": "Find/1.0"})

    return asyncio.run(go())


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_add_middleware_before_the_first_request_is_the_client_requests_use(
    framework: str,
) -> None:
    app = getattr(frameworks, f"{framework}_app")(**OPTIONS)
    client = find_client(app)  # no request yet: the stack is built as Starlette would
    assert _asgi_get(app, "/buy").json()["status"] == "dry_run"
    assert find_client(app) is client
    assert client.stats().dry_run == 1


def test_a_direct_wrap_and_quart_and_flask() -> None:
    wrapped = CAPIMiddleware(lambda *a: None, **OPTIONS)
    assert find_client(wrapped) is wrapped.client
    quart = frameworks.quart_app(**OPTIONS)
    assert find_client(quart) is quart.asgi_app.client
    flask = frameworks.flask_app(**OPTIONS)
    assert isinstance(flask.wsgi_app, CAPIWSGIMiddleware)
    assert find_client(flask) is flask.wsgi_app.client


def test_a_shared_client_is_found() -> None:
    shared = CAPIClient(**OPTIONS)
    app = frameworks.fastapi_app(client=shared)
    assert find_client(app) is shared


def test_an_app_without_the_middleware_is_a_lookup_error() -> None:
    from starlette.applications import Starlette

    with pytest.raises(LookupError, match="no capi-middleware found in Starlette"):
        find_client(Starlette())
