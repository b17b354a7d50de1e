"""The tracking client: `CAPIClient` and what the adapters use of it.

Layer 2, beside capture: built on the rules, consent and delivery; capture and the adapters call
it, never the other way. `core` holds `CAPIClient`; `sources` where an event's match keys and
consent come from; `serverless` each request's events delivered before it ends; `notices` what
the client tells the developer (once per process, once per name, or on a failure);
`for_middleware` the client a middleware uses.
"""

from capi_middleware.client.core import CAPIClient
from capi_middleware.client.for_middleware import client_for, usable_client
from capi_middleware.client.notices import log_internal_error
from capi_middleware.client.serverless import RequestEvents
from capi_middleware.client.sources import MatchSource

__all__ = [
    "CAPIClient",
    "MatchSource",
    "RequestEvents",
    "client_for",
    "log_internal_error",
    "usable_client",
]
