"""Reading a request's Cookie header: all of it, or only the few cookies capture needs.

Pure, bounded work whatever a visitor sends: past `MAX_COOKIE_HEADER` characters or
`MAX_COOKIE_PAIRS` pairs we stop looking rather than spend time on a hostile header.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MAX_COOKIE_HEADER", "MAX_COOKIE_PAIRS", "find_cookies", "parse_cookie_header"]

# Browsers send at most ~4 KB per cookie and servers cap a header line at 8-16 KB.
MAX_COOKIE_HEADER = 32 * 1024
MAX_COOKIE_PAIRS = 300


def parse_cookie_header(header: str) -> dict[str, str]:
    """Parse a ``Cookie`` request header into ``{name: value}``.

    Tolerant like Starlette's ``cookie_parser`` (split on ``;``, a chunk without ``=`` is a value
    with an empty name, surrounding whitespace and one pair of double quotes are stripped), but the
    *first* occurrence of a name wins: browsers send the most specific (longest path, then oldest)
    cookie first, which is the one the page's own JavaScript reads. Never raises; at most
    `MAX_COOKIE_HEADER` characters and `MAX_COOKIE_PAIRS` pairs are looked at.
    """
    if not isinstance(header, str) or not header:
        return {}
    if len(header) > MAX_COOKIE_HEADER:
        # Cut at a separator so no value is read truncated (a cut _fbp could still look valid).
        cut = header.rfind(";", 0, MAX_COOKIE_HEADER)
        header = header[:cut] if cut > 0 else ""
    cookies: dict[str, str] = {}
    for chunk in header.split(";", MAX_COOKIE_PAIRS)[:MAX_COOKIE_PAIRS]:
        name, equals, value = chunk.partition("=")
        if not equals:
            name, value = "", chunk
        name = name.strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if (name or value) and name not in cookies:
            cookies[name] = value
    return cookies


def find_cookies(header: str, names: Sequence[str]) -> dict[str, str] | None:
    """``parse_cookie_header(header)`` restricted to ``names``, found with ``str.find``.

    Capture needs three to five cookies of a header that often holds thirty (analytics, session,
    A/B tests); building the whole dict in Python is most of the cost of a visitor's first
    request. Same rules as `parse_cookie_header` (first occurrence wins, whitespace and one pair
    of double quotes stripped; tests/test_cookies.py compares the two on generated headers).
    Returns None when the header is past `parse_cookie_header`'s caps: the caller parses it.
    """
    if len(header) > MAX_COOKIE_HEADER or header.count(";") >= MAX_COOKIE_PAIRS:
        return None
    found: dict[str, str] = {}
    for name in names:
        # A name parse_cookie_header can never produce (empty, padded, with "=" or ";") is skipped.
        if not name or name != name.strip() or "=" in name or ";" in name:
            continue
        at = header.find(name)
        while at >= 0:
            after = at + len(name)
            # The chunk is what lies between two ";"; its name is what precedes its first "=".
            chunk_start = header.rfind(";", 0, at) + 1
            chunk_end = header.find(";", after)
            if chunk_end < 0:
                chunk_end = len(header)
            equals = header.find("=", after, chunk_end)
            if (
                equals >= 0
                and not header[chunk_start:at].strip()
                and not header[after:equals].strip()
            ):
                value = header[equals + 1 : chunk_end].strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                found[name] = value
                break  # the first occurrence wins
            at = header.find(name, after)
    return found
