"""The fleet outbox's wire formats: a group of events going in, a claim coming out.

Both travel as one MessagePack string through Redis's bundled ``cmsgpack`` instead of dozens of
RESP parts per event: redis-py packs and parses every part in Python on the sender's threads,
which compete with the request threads for the GIL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from capi_middleware.delivery.redis_layout import ENTRY_VERSION
from capi_middleware.delivery.store import NewEvent

__all__ = ["ENTRY_FIELDS", "encode_group", "parse_entry", "unpack_msgpack"]


def encode_group(events: Sequence[NewEvent]) -> bytes:
    """Events as ADD_SCRIPT's one argument: a MessagePack array of [pixel, id, time, source,
    payload] arrays of strings, which the script reads with Redis's bundled ``cmsgpack``.

    One argument for a whole group instead of a dozen per event: redis-py packs every argument
    in Python, on the writer thread, which competes with the request threads for the GIL; and
    ``cmsgpack`` reads the payloads as they are, where JSON would escape and unescape them.
    """
    parts = [_msgpack_array(len(events))]
    for e in events:
        parts += (
            b"\x95",  # an array of five
            _msgpack_str(e.pixel_id.encode()),
            _msgpack_str(e.event_id.encode()),
            _msgpack_str(str(e.event_time).encode()),
            _msgpack_str(e.action_source.encode()),
            _msgpack_str(e.payload),
        )
    return b"".join(parts)


def _msgpack_array(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 65536:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _msgpack_str(b: bytes) -> bytes:
    # The raw / str family (fixstr, str16, str32), which every Redis's cmsgpack reads; Redis
    # 7.0's does not read the newer bin types.
    n = len(b)
    if n < 32:
        return bytes((0xA0 | n,)) + b
    if n < 65536:
        return b"\xda" + n.to_bytes(2, "big") + b
    return b"\xdb" + n.to_bytes(4, "big") + b


ENTRY_FIELDS = 6  # v, p, i, t, s, d: what CLAIM_SCRIPT returns for each entry, after its id


def parse_entry(values: Sequence[Any]) -> NewEvent | str:
    """An entry's ``v, p, i, t, s, d`` values (False where missing) as a `NewEvent`, or why it can
    not be one (a short, data-free reason)."""
    version, pixel, event_id, event_time, source, payload = values
    if version is False:
        return "not a capi-middleware entry"
    if version != ENTRY_VERSION:
        return "unknown entry version"
    names = ("p", "i", "t", "s", "d")
    for name, value in zip(names, (pixel, event_id, event_time, source, payload), strict=True):
        if value is False:
            return f"field {name!r} missing"
    try:
        pixel_id = pixel.decode("ascii")
        event = NewEvent(
            pixel_id, payload, event_id.decode(), int(event_time), source.decode("ascii")
        )
    except (UnicodeDecodeError, ValueError):
        return "a field is not readable"
    if not pixel_id.isdigit() or not payload.startswith(b"{"):
        return "pixel id or payload malformed"
    return event


def unpack_msgpack(data: bytes) -> Any:
    """Read what Redis's ``cmsgpack.pack`` wrote (arrays, maps, strings, integers, booleans).

    A claim comes back as one string instead of a RESP reply of some fifteen parts per entry,
    which redis-py would parse in Python on the sender's thread.
    """
    value, _ = _read(data, 0)
    return value


def _read(d: bytes, i: int) -> tuple[Any, int]:
    b = d[i]
    i += 1
    if b <= 0x7F:
        return b, i
    if 0xA0 <= b <= 0xBF:
        n = b & 0x1F
        return d[i : i + n], i + n
    if 0x90 <= b <= 0x9F:
        return _read_array(d, i, b & 0x0F)
    if 0x80 <= b <= 0x8F:
        return _read_map(d, i, b & 0x0F)
    if b >= 0xE0:
        return b - 0x100, i
    if b == 0xC0:
        return None, i
    if b in (0xC2, 0xC3):
        return b == 0xC3, i
    size = _SIZED.get(b)
    if size is None:
        raise ValueError(f"msgpack type 0x{b:02x} not expected from cmsgpack")
    kind, width = size
    n = int.from_bytes(d[i : i + width], "big", signed=kind == "int")
    i += width
    if kind in ("uint", "int"):
        return n, i
    if kind == "str":
        return d[i : i + n], i + n
    if kind == "array":
        return _read_array(d, i, n)
    return _read_map(d, i, n)


_SIZED = {
    0xC4: ("str", 1), 0xC5: ("str", 2), 0xC6: ("str", 4),
    0xD9: ("str", 1), 0xDA: ("str", 2), 0xDB: ("str", 4),
    0xCC: ("uint", 1), 0xCD: ("uint", 2), 0xCE: ("uint", 4), 0xCF: ("uint", 8),
    0xD0: ("int", 1), 0xD1: ("int", 2), 0xD2: ("int", 4), 0xD3: ("int", 8),
    0xDC: ("array", 2), 0xDD: ("array", 4), 0xDE: ("map", 2), 0xDF: ("map", 4),
}  # fmt: skip


def _read_array(d: bytes, i: int, n: int) -> tuple[list[Any], int]:
    out = []
    for _ in range(n):
        value, i = _read(d, i)
        out.append(value)
    return out, i


def _read_map(d: bytes, i: int, n: int) -> tuple[list[Any], int]:
    # Only an empty Lua table comes back as a map (cmsgpack can not tell it from an array).
    out = []
    for _ in range(2 * n):
        value, i = _read(d, i)
        out.append(value)
    return out, i
