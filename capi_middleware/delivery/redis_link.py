"""Every Redis command the fleet outbox sends, in one place: the connection and the scripts.

`RedisLink` knows the keys and the scripts (`redis_layout`) and turns each store operation into
one script call (a chunk of ids at most per call). It keeps no state about events and never
catches Redis's errors: the store decides what a failure means (`RedisLink.errors`).
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from capi_middleware.config import is_redis_url, redact_url
from capi_middleware.delivery.redis_codec import encode_group, unpack_msgpack
from capi_middleware.delivery.redis_layout import (
    ADD_SCRIPT,
    BOOKS_SCRIPT,
    CLAIM_SCRIPT,
    DEAD_SCRIPT,
    GROUP,
    PAUSE_SCRIPT,
    REQUEUE_SCRIPT,
    SETTLE_SCRIPT,
    Books,
    Keys,
    parse_books,
)
from capi_middleware.delivery.store import DeadLetter, NewEvent

__all__ = ["CHUNK", "RedisLink", "connect", "consumer_name", "describe", "prefix_of"]

CHUNK = 1000  # events or ids per script call (Lua's unpack has a limit of about 8,000)


def connect(outbox: Any, *, socket_timeout: float = 1.0) -> Any:
    """A ``redis.Redis`` client for ``outbox`` (a URL), or ``outbox`` itself (a client).

    Raises ImportError naming the extra when redis-py is not installed.
    """
    if not is_redis_url(outbox):
        return outbox
    try:
        import redis
    except ImportError:
        raise ImportError(
            "outbox: a redis:// outbox needs redis-py: pip install 'capi-middleware[redis]'"
        ) from None
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # Short timeouts and one immediate retry (a pooled connection Redis closed on restart): the
    # writer retries on its own, with backoff, so a slow or stopped Redis shows as an error
    # within a socket timeout instead of redis-py's own retries holding a durable put.
    return redis.Redis.from_url(
        _without_prefix(outbox)[0],
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 1),
    )


def _without_prefix(url: str) -> tuple[str, str | None]:
    """The URL without our ``prefix=`` query parameter (redis-py does not know it), and it."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), None)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), prefix


def prefix_of(outbox: Any, default: str = "capi") -> str:
    """The deployment's key prefix: ``?prefix=`` in the URL, else ``default``."""
    if is_redis_url(outbox):
        return _without_prefix(outbox)[1] or default
    return default


def describe(outbox: Any) -> str:
    """Where the outbox is, for logs: the URL without its password, or the client's host."""
    if isinstance(outbox, str):
        return redact_url(outbox)
    try:
        kwargs = outbox.connection_pool.connection_kwargs
        return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
    except AttributeError:
        return type(outbox).__name__


def consumer_name() -> str:
    """This process in the consumer group: host, pid and a random part (a reused pid differs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _redis_errors() -> tuple[type[BaseException], ...]:
    """What a Redis call raises when Redis is down, slow, restarting or refuses a command."""
    try:
        import redis
    except ImportError:  # a duck-typed client: treat any error of it as Redis failing
        return (Exception,)
    return (redis.RedisError, OSError)


def _chunks(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]


class RedisLink:
    """The scripts of one deployment on one client.

    Parameters:
        outbox: a ``redis://`` / ``rediss://`` URL (a client is made and owned here), or a
            ``redis.Redis`` client (used as is; its owner closes it).
        prefix: the deployment's key prefix.
        max_dead_letters: the dead-letter stream is trimmed to about this many entries.
        socket_timeout: seconds for one command (URLs only).
    """

    def __init__(
        self, outbox: Any, *, prefix: str, max_dead_letters: int, socket_timeout: float
    ) -> None:
        self.client = connect(outbox, socket_timeout=socket_timeout)
        self._own_client = self.client is not outbox
        self.keys = Keys.for_prefix(prefix)
        self.errors = _redis_errors()
        self._max_dead = max_dead_letters
        register = self.client.register_script
        self._add = register(ADD_SCRIPT)
        self._settle = register(SETTLE_SCRIPT)
        self._dead = register(DEAD_SCRIPT)
        self._claim = register(CLAIM_SCRIPT)
        self._pause = register(PAUSE_SCRIPT)
        self._requeue = register(REQUEUE_SCRIPT)
        self._books = register(BOOKS_SCRIPT)
        self._group_ready = False

    def ensure_group(self) -> None:
        """Create the stream and its consumer group if missing (from the stream's start)."""
        if self._group_ready:
            return
        try:
            self.client.xgroup_create(self.keys.events, GROUP, id="0", mkstream=True)
        except self.errors as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def ping(self) -> None:
        self.client.ping()
        self.ensure_group()

    def add(self, events: Sequence[NewEvent]) -> Books:
        """Add up to `CHUNK` events in one script; the books after it."""
        self.ensure_group()
        k = self.keys
        return parse_books(self._add(keys=[k.events, k.books], args=[encode_group(events)]))

    def settle(self, entries: Sequence[bytes]) -> Books:
        """Acknowledge and delete entries Meta accepted; the books after it."""
        k = self.keys
        books = None
        for chunk in _chunks(entries):
            books = parse_books(self._settle(keys=[k.events, k.books], args=[GROUP, *chunk]))
        return books if books is not None else self.books()

    def bury(self, entries: Sequence[bytes], letter: DeadLetter, *, by: str, at: float) -> Books:
        """Move entries to the dead-letter stream with why; the books after it."""
        k = self.keys
        head = [
            GROUP, letter.reason, "" if letter.code is None else letter.code,
            "" if letter.subcode is None else letter.subcode, letter.message[:1000],
            letter.fbtrace_id or "", f"{at:.3f}", by, self._max_dead,
        ]  # fmt: skip
        books = None
        for chunk in _chunks(entries):
            reply = self._dead(keys=[k.events, k.books, k.dead], args=[*head, *chunk])
            books = parse_books(reply)
        return books if books is not None else self.books()

    def books(self) -> Books:
        """The fleet's books and the stream's length, read together."""
        return parse_books(self._books(keys=[self.keys.events, self.keys.books]))

    def claim(
        self, consumer: str, count: int, *, now: float, autoclaim: bool, min_idle: float,
        cursor: str,
    ) -> tuple[list[Any], Any, list[Any]]:  # fmt: skip
        """CLAIM_SCRIPT: (pauses, the autoclaim cursor or False, flat entries)."""
        args = [GROUP, consumer, int(now * 1000), count, "1" if autoclaim else "0",
                int(min_idle * 1000), cursor]  # fmt: skip
        keys = [self.keys.events, self.keys.pauses]
        self.ensure_group()
        try:
            reply = self._claim(keys=keys, args=args)
        except self.errors as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream or group is gone (a Redis without AOF restarted, a FLUSHALL).
            self._group_ready = False
            self.ensure_group()
            reply = self._claim(keys=keys, args=args)
        pauses, next_cursor, flat = unpack_msgpack(reply)
        return pauses, next_cursor, flat

    def renew(self, consumer: str, entries: Sequence[bytes]) -> None:
        """Reset the idle time of entries this consumer holds (its lease)."""
        for chunk in _chunks(entries):
            self.client.xclaim(self.keys.events, GROUP, consumer, 0, list(chunk), justid=True)

    def forget_consumers(self, *, idle_seconds: float, keep: str) -> int:
        """Delete consumers with nothing pending that have not read for ``idle_seconds`` (hosts
        gone for good: every deploy adds a consumer name); never ``keep``. How many went."""
        gone = 0
        for c in self.client.xinfo_consumers(self.keys.events, GROUP):
            name = c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"])
            if name != keep and int(c["pending"]) == 0 and int(c["idle"]) > idle_seconds * 1000:
                gone += int(self.client.xgroup_delconsumer(self.keys.events, GROUP, name) == 0)
        return gone

    def requeue(self, entries: Sequence[bytes]) -> None:
        """Put held entries back at the stream's end for any consumer."""
        for chunk in _chunks(entries):
            self._requeue(keys=[self.keys.events], args=[GROUP, *chunk])

    def pause(self, field: str, until: float, seconds: float) -> None:
        """Pause every host (``*``) or one pixel until ``until`` (wall clock)."""
        ttl_ms = int(seconds * 1000) + 1000
        self._pause(keys=[self.keys.pauses], args=[field, int(until * 1000), ttl_ms])

    def clear_pauses(self) -> None:
        self.client.delete(self.keys.pauses)

    def close(self) -> None:
        if self._own_client:
            self.client.close()
