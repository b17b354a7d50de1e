"""The fleet outbox's shape in Redis: keys, entry fields, the books, and the Lua that changes them.

One deployment (a key prefix, ``capi`` by default) owns these keys:

- ``{prefix}:events``: the stream of waiting events; one consumer group, ``senders``, shared by
  every process on every host. An entry is deleted (``XACK`` + ``XDEL``) once Meta answered.
- ``{prefix}:dead``: dead letters, each the event's own fields plus ``dead_*`` fields saying why.
- ``{prefix}:books``: a hash of counters, ``enqueued``, ``delivered`` and ``dead:<reason>``, changed
  by the same script that changes the stream, so ``enqueued == delivered + dead + XLEN`` holds in
  Redis at every moment but for entries written by something else, which count as enqueued
  when they are dead-lettered as malformed.
- ``{prefix}:pauses``: a hash with a TTL: field ``*`` is a rate-limit pause of every host, a
  pixel id field a pause of that pixel (its token or permissions were refused); the values are the
  wall-clock end of each pause.

Every change of several keys is one Lua script: Redis runs it atomically, and with AOF on it is
written to the log before the client has its answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

__all__ = [
    "ADD_SCRIPT",
    "BOOKS_SCRIPT",
    "CLAIM_SCRIPT",
    "DEAD_SCRIPT",
    "GROUP",
    "PAUSE_SCRIPT",
    "REPLAY_SCRIPT",
    "REQUEUE_SCRIPT",
    "SETTLE_SCRIPT",
    "Books",
    "Keys",
    "parse_books",
]

GROUP = "senders"
ENTRY_VERSION = b"1"
ALL_PIXELS = "*"  # the pauses field that pauses every pixel (a rate limit)


class Keys(NamedTuple):
    """The Redis keys of one deployment."""

    events: str
    dead: str
    books: str
    pauses: str

    @classmethod
    def for_prefix(cls, prefix: str) -> Keys:
        return cls(f"{prefix}:events", f"{prefix}:dead", f"{prefix}:books", f"{prefix}:pauses")


class Books(NamedTuple):
    """The fleet's counters as one consistent reading."""

    waiting: int  # entries in the stream (XLEN)
    enqueued: int
    delivered: int
    dead_lettered: Mapping[str, int]


EMPTY_BOOKS = Books(0, 0, 0, {})


def parse_books(reply: Sequence[Any]) -> Books:
    """The ``{XLEN, HGETALL books}`` reply every script ends with."""
    waiting = int(reply[0])
    flat = reply[1]
    enqueued = delivered = 0
    dead: dict[str, int] = {}
    for i in range(0, len(flat) - 1, 2):
        name = flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i])
        value = int(flat[i + 1])
        if name == "enqueued":
            enqueued = value
        elif name == "delivered":
            delivered = value
        elif name.startswith("dead:") and value:
            dead[name[5:]] = value
    return Books(waiting, enqueued, delivered, dead)


_BOOKS_REPLY = "return {redis.call('XLEN', KEYS[1]), redis.call('HGETALL', KEYS[2])}"

# KEYS: events, books. ARGV: one MessagePack array (`encode_group`). Every entry gets the fields
# v (the layout's version), p (pixel id), i (event id), t (event time), s (action source) and
# d (the payload, byte for byte).
ADD_SCRIPT = f"""
local events = cmsgpack.unpack(ARGV[1])
for i = 1, #events do
  local e = events[i]
  redis.call('XADD', KEYS[1], '*', 'v', '1', 'p', e[1], 'i', e[2], 't', e[3], 's', e[4],
             'd', e[5])
end
redis.call('HINCRBY', KEYS[2], 'enqueued', #events)
{_BOOKS_REPLY}
"""

# KEYS: events, books. ARGV: group, entry ids. Counts only entries still there, so a batch two
# hosts both sent (a lease taken over) is delivered once in the books.
SETTLE_SCRIPT = f"""
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
local n = redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
redis.call('HINCRBY', KEYS[2], 'delivered', n)
{_BOOKS_REPLY}
"""

# KEYS: events, books, dead. ARGV: group, reason, code, subcode, message, fbtrace_id, dead_at,
# consumer, dead stream's approximate MAXLEN, entry ids. A malformed entry was not written by
# ADD_SCRIPT (ours are well formed), so it was never counted: it counts as enqueued now.
DEAD_SCRIPT = f"""
for i = 10, #ARGV do
  local id = ARGV[i]
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if #found > 0 then
    local f = found[1][2]
    local n = #f
    f[n + 1] = 'dead_reason'; f[n + 2] = ARGV[2]
    f[n + 3] = 'dead_code'; f[n + 4] = ARGV[3]
    f[n + 5] = 'dead_subcode'; f[n + 6] = ARGV[4]
    f[n + 7] = 'dead_message'; f[n + 8] = ARGV[5]
    f[n + 9] = 'dead_fbtrace_id'; f[n + 10] = ARGV[6]
    f[n + 11] = 'dead_at'; f[n + 12] = ARGV[7]
    f[n + 13] = 'dead_by'; f[n + 14] = ARGV[8]
    f[n + 15] = 'dead_entry'; f[n + 16] = id
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*', unpack(f))
    redis.call('XDEL', KEYS[1], id)
    if ARGV[2] == 'malformed' then redis.call('HINCRBY', KEYS[2], 'enqueued', 1) end
    redis.call('HINCRBY', KEYS[2], 'dead:' .. ARGV[2], 1)
  end
  redis.call('XACK', KEYS[1], ARGV[1], id)
end
{_BOOKS_REPLY}
"""

# KEYS: events. ARGV: group, entry ids. Entries this process held (waiting out a backoff) go
# back to the stream as new entries, so another host takes them at once instead of after the
# lease (a pod scaled in). The books do not change: the stream holds as many entries as before.
REQUEUE_SCRIPT = """
local n = 0
for i = 2, #ARGV do
  local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #found > 0 then
    redis.call('XADD', KEYS[1], '*', unpack(found[1][2]))
    redis.call('XDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
end
return n
"""

# KEYS: events, books, dead. ARGV: dead entry ids. A replayed event is a new entry (its own
# fields, without the dead_* ones) and counts as enqueued again, so the books stay balanced.
REPLAY_SCRIPT = """
local n = 0
for i = 1, #ARGV do
  local found = redis.call('XRANGE', KEYS[3], ARGV[i], ARGV[i])
  if #found > 0 then
    local f = found[1][2]
    local keep = {}
    for j = 1, #f, 2 do
      if string.sub(f[j], 1, 5) ~= 'dead_' then
        keep[#keep + 1] = f[j]; keep[#keep + 1] = f[j + 1]
      end
    end
    redis.call('XADD', KEYS[1], '*', unpack(keep))
    redis.call('XDEL', KEYS[3], ARGV[i])
    redis.call('HINCRBY', KEYS[2], 'enqueued', 1)
    n = n + 1
  end
end
return n
"""

# KEYS: events, pauses. ARGV: group, consumer, now (ms, wall clock), count, autoclaim (0/1),
# min idle (ms), autoclaim cursor. Reads the pauses first: while every pixel is paused nothing
# is claimed, so a paused fleet holds no leases. Then a dead consumer's entries (XAUTOCLAIM),
# then new ones (XREADGROUP). Reply: one MessagePack string (`unpack_msgpack`) of
# {pauses (flat), the autoclaim cursor or false, flat entries: id, v, p, i, t, s, d, id, ...}
# with false for a missing field.
CLAIM_SCRIPT = """
local pauses = redis.call('HGETALL', KEYS[2])
local now = tonumber(ARGV[3])
for i = 1, #pauses, 2 do
  if pauses[i] == '*' and tonumber(pauses[i + 1]) > now then
    return cmsgpack.pack({pauses, false, {}})
  end
end
local out = {}
local function add(entry)
  local f = entry[2]
  if not f then return end
  local v, p, i, t, s, d = false, false, false, false, false, false
  for j = 1, #f, 2 do
    local k = f[j]
    if k == 'v' then v = f[j + 1] elseif k == 'p' then p = f[j + 1]
    elseif k == 'i' then i = f[j + 1] elseif k == 't' then t = f[j + 1]
    elseif k == 's' then s = f[j + 1] elseif k == 'd' then d = f[j + 1] end
  end
  local n = #out
  out[n + 1] = entry[1]; out[n + 2] = v; out[n + 3] = p; out[n + 4] = i
  out[n + 5] = t; out[n + 6] = s; out[n + 7] = d
end
local count = tonumber(ARGV[4])
local cursor = false
if ARGV[5] == '1' then
  local taken = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[6], ARGV[7], 'COUNT',
                           count)
  cursor = taken[1]
  for _, entry in ipairs(taken[2]) do add(entry) end
  count = count - #taken[2]
end
if count > 0 then
  local new = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', count, 'STREAMS',
                         KEYS[1], '>')
  if new then
    for _, entry in ipairs(new[1][2]) do add(entry) end
  end
end
return cmsgpack.pack({pauses, cursor, out})
"""

# KEYS: pauses. ARGV: field (a pixel id or '*'), until (ms, wall clock), ttl (ms). Keeps the later
# of two pauses and never shortens the hash's TTL.
PAUSE_SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"""

# KEYS: events, books.
BOOKS_SCRIPT = _BOOKS_REPLY
