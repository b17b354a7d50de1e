"""Which `EventStore` a sender holds: at start, in a forked child, and once it is closed.

The one place that maps the configuration to a store (``outbox`` → Redis Streams or the SQLite
outbox, else the bounded memory store). A new kind of store is chosen here and nowhere else.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence

from capi_middleware.config import CAPIConfig, is_redis_outbox
from capi_middleware.delivery.memory_store import MemoryStore
from capi_middleware.delivery.store import EventStore, NewEvent

__all__ = ["ClosedStore", "open_configured_store", "store_for_forked_child"]

logger = logging.getLogger("capi_middleware.delivery")


def open_configured_store(config: CAPIConfig) -> EventStore:
    """The store ``config`` asks for (not in a dry run): Redis Streams for a ``redis://`` outbox
    or a Redis client, the SQLite outbox for a path, else ``MemoryStore(config.max_queue)``."""
    outbox = config.outbox
    if outbox is not None and not config.dry_run:
        # The outboxes are optional machinery; import one only when asked for.
        opened: EventStore
        if is_redis_outbox(outbox):
            module = importlib.import_module("capi_middleware.delivery.redis_store")
            opened = module.RedisStore(outbox, max_events=config.max_queue)
        else:
            module = importlib.import_module("capi_middleware.delivery.sqlite_store")
            opened = module.SQLiteStore(outbox, max_events=config.max_queue)
        return opened
    return MemoryStore(config.max_queue)


def store_for_forked_child(config: CAPIConfig, store: EventStore, *, own: bool) -> EventStore:
    """The store a sender uses in a forked child; it must never re-send the parent's events.

    ``store`` is the parent's; ``own`` is False when the caller passed it in.
    """
    if own and config.outbox and not config.dry_run:
        # Reopen the outbox: a SQLite connection must not cross fork(); leases keep the parent
        # and the child from sending the same rows.
        try:
            return open_configured_store(config)
        except Exception:
            logger.exception("capi_middleware: could not reopen the outbox after fork")
            return MemoryStore(config.max_queue)
    if store.durable and not own:
        return store  # the caller's durable store; theirs to make fork-safe
    return MemoryStore(config.max_queue)


class ClosedStore(MemoryStore):
    """Stands in for a closed durable store: reports what it kept, accepts nothing."""

    def __init__(self, kept: int) -> None:
        super().__init__(1)
        self._kept = kept

    @property
    def durable(self) -> bool:
        return True

    def put(self, events: Sequence[NewEvent], *, wait: bool = False) -> int:
        return 0

    def backlog(self) -> int:
        return self._kept
