"""capi-middleware: Meta's Conversions API from your Python web server."""

from __future__ import annotations

from capi_middleware.config import CAPIConfig, Destination
from capi_middleware.errors import CAPIValidationError, Problem

__version__ = "0.1.0"

__all__ = [
    "CAPIConfig",
    "CAPIValidationError",
    "Destination",
    "Problem",
    "__version__",
]
