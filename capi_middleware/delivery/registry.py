"""One sender per process per configuration, and the process hooks every sender needs.

- `shared` hands out the process's one sender for a key (`config_key`), creating it on first
  use and replacing a closed one.
- Every live sender (shared or not) is closed at interpreter exit (``atexit``), and reset in a
  forked child (``os.register_at_fork``), so a child never re-sends its parent's queued events
  and never uses the parent's thread, locks or connections.

The registry knows senders only through `ProcessBound`, so it sits below the sender module.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Protocol, TypeVar

import httpx

from capi_middleware.config import CAPIConfig

__all__ = ["ProcessBound", "config_key", "forget", "register_process_hooks", "shared", "track"]

logger = logging.getLogger("capi_middleware.delivery")


class ProcessBound(Protocol):
    """What the process hooks need from a sender."""

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        ...

    def close_at_exit(self) -> None:
        """Close with the configured shutdown timeout, if this process owns it and it is open."""
        ...

    def after_fork_in_child(self) -> None:
        """Start afresh in a forked child."""
        ...


T = TypeVar("T", bound=ProcessBound)

_live: weakref.WeakSet[ProcessBound] = weakref.WeakSet()
_shared: dict[Hashable, ProcessBound] = {}
_lock = threading.Lock()


def config_key(config: CAPIConfig, transport: httpx.BaseTransport | None) -> Hashable:
    """The key two configs share a sender under: equal in every option delivery depends on.

    Capture options (consent, proxies, cookies, strictness) do not matter to delivery.
    """
    fields = tuple(
        getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name not in ("consent", "trusted_proxies", "cookie_domain", "set_fbp", "strict")
    )
    try:
        hash(fields)
        key: Hashable = fields
    except TypeError:
        key = id(config)
    return (key, id(transport) if transport is not None else None)


def track(sender: ProcessBound) -> None:
    """Close ``sender`` at exit and reset it after fork (held weakly)."""
    _live.add(sender)


def shared(key: Hashable, create: Callable[[], T]) -> T:
    """The process's sender for ``key``; ``create()`` makes one when none is open."""
    with _lock:
        sender = _shared.get(key)
        if sender is None or sender.closed:
            sender = create()
            _shared[key] = sender
        return sender  # type: ignore[return-value]  # create() made every value under its key


def forget(sender: ProcessBound) -> None:
    """Drop a closed sender from the registry (the next `shared` call creates a new one)."""
    with _lock:
        for key, value in list(_shared.items()):
            if value is sender:
                del _shared[key]


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent may have held it while forking
    for sender in list(_live):
        try:
            sender.after_fork_in_child()
        except Exception:
            logger.exception("capi_middleware: resetting a sender after fork failed")


def _close_all_at_exit() -> None:
    for sender in list(_live):
        try:
            sender.close_at_exit()
        except Exception:
            logger.exception("capi_middleware: closing the sender at exit failed")


def register_process_hooks(
    at_exit: Callable[[], None] = _close_all_at_exit,
    in_child: Callable[[], None] = _after_fork_in_child,
) -> None:
    """Install the exit and fork hooks (done once, at import)."""
    atexit.register(at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=in_child)


register_process_hooks()
