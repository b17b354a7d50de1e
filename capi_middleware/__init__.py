"""capi-middleware: Meta's Conversions API from your Python web server.

The public names live here; everything else is an implementation detail. Framework adapters that
pull in a framework (``capi_middleware.django``) and the test kit (``capi_middleware.testing``)
are imported from their modules.
"""

from __future__ import annotations

from capi_middleware.asgi import CAPIMiddleware
from capi_middleware.capture.context import RequestContext, current
from capi_middleware.client import CAPIClient
from capi_middleware.config import CAPIConfig, Destination
from capi_middleware.consent.policies import ConsentDecision
from capi_middleware.delivery.stats import DeliveryStats
from capi_middleware.errors import CAPIValidationError, Problem
from capi_middleware.results import CaptureStats, TrackResult, TrackStatus
from capi_middleware.visitor import Visitor
from capi_middleware.wsgi import CAPIWSGIMiddleware

__version__ = "0.1.0"

__all__ = [
    "CAPIClient",
    "CAPIConfig",
    "CAPIMiddleware",
    "CAPIValidationError",
    "CAPIWSGIMiddleware",
    "CaptureStats",
    "ConsentDecision",
    "DeliveryStats",
    "Destination",
    "Problem",
    "RequestContext",
    "TrackResult",
    "TrackStatus",
    "Visitor",
    "__version__",
    "current",
]
