"""Text the command line prints that it did not write itself, made safe for a terminal.

A dead letter's message, an event id, Meta's answer: stored or received text may hold escape
sequences (``\\x1b]0;...``, ``\\x1b[2J``), carriage returns that overwrite a line, or bidi
controls that reorder it. `printable` shows each such character as a Python escape, and
`redact` takes secrets out of a text before anything else happens to it. `human_age` and
`iso_time` are the formats both ``outbox`` commands (SQLite and Redis) print times in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

__all__ = ["human_age", "iso_time", "print_dead_letters", "printable", "redact", "stored_number"]


def printable(value: object) -> str:
    """``value`` as text with every non-printable character escaped (``\\x1b``, ``\\u202e``).

    Bytes (a BLOB where text was expected) are decoded as UTF-8 with bad bytes escaped. Spaces
    stay; tabs, newlines, C0/C1 controls, DEL, format characters (bidi controls, zero-width
    joiners) and separators become escapes, so one stored value prints on one line as it is.
    """
    if isinstance(value, bytes):
        text = value.decode("utf-8", "backslashreplace")
    else:
        text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    short = _SHORT.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with each secret replaced by ``***``, also as JSON-escaped and URL-encoded.

    An answer may echo a secret inside a JSON string (``/`` written ``\\/``) or a URL.
    """
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        forms = {
            secret,
            json.dumps(secret)[1:-1],
            secret.replace("/", "\\/"),
            quote(secret, safe=""),
        }
        for form in sorted(forms, key=len, reverse=True):
            if form:
                text = text.replace(form, "***")
    return text


def human_age(seconds: float) -> str:
    """An age as a person reads it: ``42s``, ``7m``, ``3h 12m``, ``2d 4h``."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"


def stored_number(value: object) -> float | None:
    """A stored number, or None for NULL and anything that is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def iso_time(timestamp: object) -> str:
    """A stored Unix time as ISO 8601 UTC; ``-`` for NULL, the escaped text for anything else."""
    number = stored_number(timestamp)
    if number is None:
        return "-" if timestamp is None else printable(timestamp)
    try:
        return datetime.fromtimestamp(number, tz=timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):  # a time no calendar holds
        return printable(timestamp)


def print_dead_letters(letters: Sequence[Mapping[str, Any]], total: int, *, as_json: bool) -> None:
    """``outbox dead``'s listing, the same for every store: one line (or JSON object) each.

    Stored text is escaped (`printable`): a stored message must not drive the terminal.
    """
    if as_json:
        for letter in letters:
            # ensure_ascii (the default) escapes every control character too.
            print(json.dumps(letter))
        return
    if not letters:
        print("no dead letters")
        return
    for d in letters:
        code = "-" if d["code"] is None else f"{d['code']}/{d['subcode'] or '-'}"
        message = printable(d["message"])
        if len(message) > 80:
            message = message[:77] + "..."
        print(
            f"{d['time']}  {printable(d['event_id'] or '?')}  {printable(d['event_name'] or '?')}"
            f"  pixel {printable(d['pixel_id'] or '?')}  {printable(d['reason'])}  "
            f"code {printable(code)}  {message}"
        )
    print(f"({len(letters)} of {total} shown)")
