"""The process hooks a durable store needs: a flush at interpreter exit, a reopen after fork.

The SQLite and Redis stores `register` themselves when opened and `forget` themselves when
closed. At exit every open store of this process commits what it holds pending: a flush, not a
close, since the sender's own exit handler may still put events and close the store after this
runs (atexit handlers run last-registered first, and a store module is imported after the
sender's registry). In a forked child every store starts afresh on its own connection.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import weakref
from typing import Protocol

__all__ = ["ProcessHooked", "forget", "register"]


class ProcessHooked(Protocol):
    """What the hooks need from a store."""

    def flush_at_exit(self) -> None:
        """Commit what is pending, if the store is open and this process's."""
        ...

    def reopen_after_fork(self) -> None:
        """Start afresh in a forked child: own connection, threads and leases."""
        ...


_stores: weakref.WeakSet[ProcessHooked] = weakref.WeakSet()


def register(store: ProcessHooked) -> None:
    """Hook ``store`` to this process's exit and forks until `forget`."""
    _stores.add(store)


def forget(store: ProcessHooked) -> None:
    """Unhook a closed store."""
    _stores.discard(store)


def _flush_all_at_exit() -> None:
    for store in list(_stores):
        with contextlib.suppress(Exception):
            store.flush_at_exit()


def _reopen_all_in_child() -> None:
    for store in list(_stores):
        store.reopen_after_fork()


atexit.register(_flush_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reopen_all_in_child)
