"""Text the command line prints that it did not write itself, made safe for a terminal.

A dead letter's message, an event id, Meta's answer: stored or received text may hold escape
sequences (``\\x1b]0;...``, ``\\x1b[2J``), carriage returns that overwrite a line, or bidi
controls that reorder it. `printable` shows each such character as a Python escape, and
`redact` takes secrets out of a text before anything else happens to it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

__all__ = ["print_dead_letters", "printable", "redact"]


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
