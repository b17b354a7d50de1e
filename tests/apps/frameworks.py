"""The same two-route shop on every framework, each wired the way that framework's users would.

``GET /landing`` answers with what the request context captured; ``POST /buy`` tracks a Purchase.
Each factory takes `CAPIConfig` options and returns the app (ASGI or WSGI).
"""

from __future__ import annotations

from typing import Any

# Framework types at module level: FastAPI and Litestar resolve handler annotations from the
# module's globals (this module uses postponed annotations).
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest
from flask import Flask
from flask import request as flask_request
from litestar import Litestar, get, post
from litestar import Request as LitestarRequest
from litestar.middleware import DefineMiddleware
from quart import Quart
from quart import request as quart_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from capi_middleware.asgi import CAPIMiddleware
from capi_middleware.capture.context import RequestContext, current
from capi_middleware.wsgi import CAPIWSGIMiddleware

PRICE = 42.5
CURRENCY = "EUR"


def describe(ctx: RequestContext) -> dict[str, Any]:
    return {
        "client_ip": ctx.client_ip,
        "user_agent": ctx.user_agent,
        "fbclid": ctx.fbclid,
        "fbc": ctx.fbc,
        "fbp": ctx.fbp,
        "event_source_url": ctx.event_source_url,
        "current": current() is ctx,
    }


def buy(ctx: RequestContext) -> dict[str, Any]:
    result = ctx.track("Purchase", value=PRICE, currency=CURRENCY, order_id="order-1")
    return {"event_id": result.event_id, "status": result.status}


def starlette_app(**options: Any) -> Any:
    async def landing(request: Request) -> JSONResponse:
        return JSONResponse(describe(request.state.capi))

    async def purchase(request: Request) -> JSONResponse:
        return JSONResponse(buy(request.state.capi))

    app = Starlette(routes=[Route("/landing", landing), Route("/buy", purchase, methods=["POST"])])
    app.add_middleware(CAPIMiddleware, **options)
    return app


def fastapi_app(**options: Any) -> Any:
    app = FastAPI()
    app.add_middleware(CAPIMiddleware, **options)

    @app.get("/landing")
    def landing(request: FastAPIRequest) -> dict[str, Any]:  # a sync endpoint: runs in a thread
        return describe(request.state.capi)

    @app.post("/buy")
    async def purchase(request: FastAPIRequest) -> dict[str, Any]:
        return buy(request.state.capi)

    return app


def litestar_app(**options: Any) -> Any:
    @get("/landing", sync_to_thread=False)
    def landing(request: LitestarRequest[Any, Any, Any]) -> dict[str, Any]:
        return describe(request.state.capi)

    @post("/buy")
    async def purchase(request: LitestarRequest[Any, Any, Any]) -> dict[str, Any]:
        return buy(request.state.capi)

    return Litestar(
        route_handlers=[landing, purchase],
        middleware=[DefineMiddleware(CAPIMiddleware, **options)],
    )


def quart_app(**options: Any) -> Any:
    app = Quart(__name__)

    @app.get("/landing")
    async def landing() -> dict[str, Any]:
        ctx = current()  # framework-neutral: set by the middleware around the app call
        assert ctx is not None
        return describe(ctx)

    @app.post("/buy")
    async def purchase() -> dict[str, Any]:
        return buy(quart_request.scope["state"]["capi"])

    app.asgi_app = CAPIMiddleware(app.asgi_app, **options)  # type: ignore[method-assign]
    return app


def flask_app(**options: Any) -> Any:
    app = Flask(__name__)

    @app.get("/landing")
    def landing() -> dict[str, Any]:
        return describe(flask_request.environ["capi"])

    @app.post("/buy")
    def purchase() -> dict[str, Any]:
        return buy(flask_request.environ["capi"])

    app.wsgi_app = CAPIWSGIMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app
