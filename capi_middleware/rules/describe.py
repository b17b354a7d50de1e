"""An event as a few readable lines, for ``dry_run="debug"``: what would be sent, safe to print.

Hashed match keys are shortened to their first 10 hex digits (enough to compare two runs);
values Meta takes in clear are masked down to what shows they are right without identifying
anyone: an IP to its network, a user agent to its first product token, ``_fbc`` / ``_fbp`` to
their version, subdomain index and creation time. custom_data is shown whole: it describes the
order, not the person.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["describe_event", "masked_value"]

_HEX = frozenset("0123456789abcdef")


def masked_value(key: str, value: Any) -> str:
    """One match key's value as ``describe_event`` shows it (lists: the first, and a count)."""
    if isinstance(value, list):
        if not value:
            return "[]"
        more = f" (+{len(value) - 1})" if len(value) > 1 else ""
        return masked_value(key, value[0]) + more
    text = str(value)
    if len(text) == 64 and set(text) <= _HEX:
        return text[:10] + "…"
    if key == "client_ip_address":
        return _masked_ip(text)
    if key == "client_user_agent":
        first = text.split(" ", 1)
        return first[0] + (" …" if len(first) > 1 else "")
    if key in ("fbc", "fbp"):
        parts = text.split(".", 3)
        return ".".join(parts[:3]) + ".…" if len(parts) == 4 else "…"
    return text[:4] + "…" if len(text) > 4 else "…"


def _masked_ip(text: str) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return "…"
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def describe_event(event: Mapping[str, Any]) -> str:
    """Meta's JSON for one event as three lines: name and id, match keys, custom_data."""
    user_data = event.get("user_data") or {}
    keys = ", ".join(f"{k}={masked_value(k, v)}" for k, v in sorted(user_data.items()))
    lines = [
        f"capi_middleware dry_run: {event.get('event_name')} event_id={event.get('event_id')} "
        f"action_source={event.get('action_source')} (not sent)",
        f"    match keys: {keys or 'none'}",
    ]
    if event.get("event_source_url"):
        lines.append(f"    event_source_url: {event['event_source_url']}")
    if event.get("data_processing_options"):
        lines.append(f"    data_processing_options: {event['data_processing_options']}")
    custom = json.dumps(event.get("custom_data") or {}, sort_keys=True, ensure_ascii=False)
    lines.append(f"    custom_data: {custom}")
    return "\n".join(lines)
