"""Module-level apps for the real-server tests (``uvicorn apps.server_apps:starlette`` etc.).

pixel_id, access_token and graph_url come from the META_* environment, as in production. The
shutdown timeout is long so a retry backoff left from the fake's outage cannot cut the final
flush short on a slow machine.
"""

from __future__ import annotations

from apps import frameworks

OPTIONS = {"consent": True, "flush_interval": 0.05, "shutdown_timeout": 30.0}

starlette = frameworks.starlette_app(**OPTIONS)
quart = frameworks.quart_app(**OPTIONS)
flask = frameworks.flask_app(**OPTIONS)
