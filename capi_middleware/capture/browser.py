"""Telling a browser's own request from a server's: only a browser is handed a new ``_fbp``.

A webhook, a health check or curl would otherwise be given (and tracked with) a browser id of
its own. A request with a Cookie header counts as a browser's; one without is judged by the
headers every browser sends (`browser_made`, `raw_browser_made`). Paths no browser requests
(``CAPIConfig.no_cookie_paths``, for a server that dresses up as one) get no cookie at all
(`on_no_cookie_path`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

__all__ = ["browser_made", "on_no_cookie_path", "raw_browser_made"]


def browser_made(header: Callable[[str], str | None]) -> bool:
    """True when a request without a Cookie header still looks like a browser's own.

    Browsers send Fetch Metadata (``Sec-Fetch-*``: Chrome 76+, Firefox 90+, Safari 16.4+), ask
    for text/html when loading a page, and every one of them has sent a User-Agent beginning
    ``Mozilla/`` for 25 years. A payment provider's webhook (``Stripe/1.0``, ``Adyen HttpClient``,
    ``PayPal/...``), a load balancer's health check, curl or an HTTP library does none of these.
    `CAPIConfig.no_cookie_paths` covers a server that dresses up as a browser.
    """
    if header("sec-fetch-mode") is not None or header("sec-fetch-dest") is not None:
        return True
    user_agent = header("user-agent")
    if user_agent is not None and user_agent.startswith("Mozilla/"):
        return True
    accept = header("accept")
    return (accept is not None and "text/html" in accept.lower()) or (
        header("sec-fetch-site") is not None
    )


def raw_browser_made(raw_map: Mapping[bytes, bytes]) -> bool:
    """`browser_made` over raw ASGI headers."""
    if b"sec-fetch-mode" in raw_map or b"sec-fetch-dest" in raw_map or b"sec-fetch-site" in raw_map:
        return True
    user_agent = raw_map.get(b"user-agent")
    if type(user_agent) is bytes and user_agent.startswith(b"Mozilla/"):
        return True
    accept = raw_map.get(b"accept")
    return type(accept) is bytes and b"text/html" in accept.lower()


def on_no_cookie_path(
    raw_path: str | bytes, paths: tuple[str, ...], raw_paths: tuple[bytes, ...]
) -> bool:
    """True when ``raw_path`` starts with one of the ``no_cookie_paths`` (``paths``, and the
    same as bytes in ``raw_paths``)."""
    if isinstance(raw_path, bytes):
        return raw_path.startswith(raw_paths)
    return raw_path.startswith(paths)
