"""The page's half of deduplication: an ``fbq('track', ...)`` call carrying the server's event id.

Meta merges a pixel event and a server event with the same name and event id (META_CAPI_REFERENCE
§6), so the page must send the id the server sends, under the same (GA4-mapped) name, with the
same custom data. The output is meant to sit inside an HTML ``<script>`` element: the JSON is
escaped so that no value can close the element or break the script.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from capi_middleware.errors import CAPIValidationError
from capi_middleware.rules.custom_data import map_custom_data
from capi_middleware.rules.events import STANDARD_EVENTS, map_event_name

__all__ = ["render_fbq_track", "script_safe_json"]

# `</script>` or `<!--` inside a string would end or alter the script element; U+2028 and
# U+2029 end a line in older JavaScript engines. JSON's \uXXXX escapes are valid JavaScript.
_SCRIPT_ESCAPES = str.maketrans(
    {
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)


def script_safe_json(value: object) -> str:
    """JSON that is safe inside an HTML ``<script>`` element; NaN/Infinity raise ValueError."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False).translate(_SCRIPT_ESCAPES)


def render_fbq_track(event_name: str, custom_data: Mapping[str, Any] | None, event_id: str) -> str:
    """The pixel call for a server event: ``fbq('track', "Purchase", {...}, {"eventID": ...});``.

    GA4 names and ecommerce fields are mapped exactly as `capi_middleware.rules.events.build_event`
    maps them; non-standard names use ``trackCustom``. Raises ValueError (a
    `CAPIValidationError` for bad custom data) for an empty name or id, or for custom data
    that cannot be sent (NaN, Infinity, an item without an id).
    """
    if not isinstance(event_name, str) or not event_name.strip():
        raise ValueError("event_name: must be a non-empty string")
    if not isinstance(event_id, str) or not event_id.strip():
        raise ValueError("event_id: must be a non-empty string")
    name = map_event_name(event_name.strip())
    params, problems = map_custom_data(custom_data)
    fatal = [p for p in problems if p.fatal]
    if fatal:
        raise CAPIValidationError(fatal)
    method = "track" if name in STANDARD_EVENTS else "trackCustom"
    return (
        f"fbq('{method}', {script_safe_json(name)}, {script_safe_json(params)}, "
        f"{script_safe_json({'eventID': event_id})});"
    )
