"""The client a middleware uses: the one it was given, or one built from its options.

A middleware takes either ``client=`` or `CAPIConfig` options (`client_for`); a rejected
configuration must not fail the host app's requests, so the adapters take a disabled client in
its place (`usable_client`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from capi_middleware.client.core import CAPIClient
from capi_middleware.config import CAPIConfig

__all__ = ["client_for", "usable_client"]


def usable_client(
    owner: str, client: CAPIClient | None, config: CAPIConfig | None, options: Mapping[str, Any]
) -> CAPIClient:
    """`client_for`, but a rejected configuration gives a `CAPIClient.disabled` client.

    A middleware built with a bad config must not fail the host app's requests (Starlette
    builds ``add_middleware`` classes inside the first request): it passes requests through
    with tracking off, and says why (``client.config_error``, the adapters' log line).
    """
    try:
        return client_for(owner, client, config, options)
    except (TypeError, ValueError) as exc:
        return CAPIClient.disabled(str(exc))


def client_for(
    owner: str, client: CAPIClient | None, config: CAPIConfig | None, options: Mapping[str, Any]
) -> CAPIClient:
    """The client a middleware uses: the one given, or one built from its options."""
    if client is None:
        return CAPIClient(CAPIConfig.from_options(owner, config, dict(options)))
    if not isinstance(client, CAPIClient):
        raise ValueError(f"{owner}: client must be a CAPIClient, not {type(client).__name__}")
    if config is not None or options:
        raise ValueError(
            f"{owner}: give either client= or options, not both "
            "(the client's config is the one used)"
        )
    return client
