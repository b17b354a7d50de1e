"""An AWS Lambda function (API Gateway HTTP API) that reports its leads to Meta's Conversions API.

Lambda freezes the process as soon as the handler returns: a background thread's events would
wait, frozen, until the next invocation, or be lost when Lambda recycles the instance. With
``serverless=True`` each request's events are delivered (or committed to the outbox) before its
ASGI call returns, bounded by ``serverless_timeout``; a request that tracks nothing waits for
nothing.

Deploy:   handler = "examples.lambda_handler.app.handler"  (mangum and capi-middleware packaged)
Env:      META_PIXEL_ID, META_ACCESS_TOKEN; optionally META_OUTBOX with a rediss:// URL, so
          that what a timeout leaves behind survives the instance.

Mangum runs with ``lifespan="off"`` (Lambda has no shutdown hook to flush at), which is exactly
why delivery cannot wait for one.
"""

from __future__ import annotations

from mangum import Mangum
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from capi_middleware import CAPIClient, CAPIMiddleware

# Built once per cold start and reused while the instance is warm. consent=True: this form's
# own page asked for it (where the law asks for opt-in, use the default policy instead).
client = CAPIClient.from_env(serverless=True, consent=True)


async def lead(request: Request) -> JSONResponse:
    form = await request.json()
    result = request.state.capi.track(
        "Lead",
        user_data={"email": form.get("email")},
        content_name=form.get("form", "newsletter"),
    )
    return JSONResponse({"status": result.status, "event_id": result.event_id})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})  # tracks nothing, so it never waits for Meta


app = CAPIMiddleware(
    Starlette(routes=[Route("/lead", lead, methods=["POST"]), Route("/health", health)]),
    client=client,
)
handler = Mangum(app, lifespan="off")
