"""The README's Quick start shop, configured from the ``META_*`` environment as in production.

For the real-server tests (``uvicorn apps.quickstart:app``) and the in-process ones.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request

from capi_middleware import CAPIMiddleware

logging.basicConfig(level=logging.INFO)  # as the Quick start says: capi_middleware says why


def create_app(**options: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(CAPIMiddleware, **options)

    @app.post("/checkout")
    def checkout(request: Request) -> dict[str, Any]:
        result = request.state.capi.track(
            "Purchase",
            value=79.99,
            currency="USD",
            user_data={"email": "jane@example.com", "phone": "+1 616 954 7888"},
        )
        return {
            "event_id": result.event_id,
            "status": result.status,
            "problems": [str(p) for p in result.problems],
            "pixel": result.fbq(),
        }

    return app


app = create_app()
