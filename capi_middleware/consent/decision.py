"""What a consent decision is, what a policy may look at, and what a built-in policy reads.

The vocabulary shared by the policies and combinators (`capi_middleware.consent.policies`) and
the readers of each signal (`capi_middleware.consent.readers`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "DENIED",
    "GRANTED",
    "NO_SIGNAL_REASON",
    "ConsentDecision",
    "ConsentPolicy",
    "ConsentSignals",
    "SignalsRead",
    "declare_reads",
    "reads_of",
]


@dataclass(frozen=True)
class ConsentDecision:
    """The answer for one request.

    Parameters:
        granted: cookies may be set and events sent.
        ldu: send events with Meta's Limited Data Use (``data_processing_options: ["LDU"]``),
            e.g. because the visitor sent ``Sec-GPC: 1``. Only meaningful when granted.
        reason: a short machine-friendly label for counters and logs: ``"site_cookie"``,
            ``"consent_mode"``, ``"tcf_v2"``, ``"site_cookie+gpc"``, ``"no_signal"``,
            ``"policy_error"``, ... Never holds request data.
    """

    granted: bool
    ldu: bool = False
    reason: str = ""


GRANTED = ConsentDecision(granted=True, reason="granted")
DENIED = ConsentDecision(granted=False, reason="denied")

NO_SIGNAL_REASON = "no_signal"
"""The reason of a default-policy denial for want of any consent signal (not a "no")."""


class ConsentSignals(Protocol):
    """What a policy may look at. `RequestContext` satisfies it."""

    @property
    def cookies(self) -> Mapping[str, str]: ...

    def header(self, name: str) -> str | None:
        """The request header ``name`` (case-insensitive), or None."""
        ...


ConsentPolicy = Callable[[ConsentSignals], bool | ConsentDecision | None]


@dataclass(frozen=True)
class SignalsRead:
    """Every cookie and header a built-in policy looks at (names as given, headers lowercase).

    A built-in policy's answer is a pure function of these values, so a caller may reuse the
    decision for a request that carries the same values (the middleware does, bounded).
    """

    cookies: tuple[str, ...]
    headers: tuple[str, ...]


# Built-in policies and what they read; user callables are absent (their reads are unknown).
_reads: weakref.WeakKeyDictionary[Callable[..., object], SignalsRead] = weakref.WeakKeyDictionary()


def declare_reads(
    policy: ConsentPolicy, cookies: Iterable[str] = (), headers: Iterable[str] = ()
) -> ConsentPolicy:
    """Record that built-in ``policy`` reads only these cookies and headers; returns it."""
    _reads[policy] = SignalsRead(
        cookies=tuple(dict.fromkeys(cookies)),
        headers=tuple(dict.fromkeys(h.lower() for h in headers)),
    )
    return policy


def reads_of(policy: object) -> SignalsRead | None:
    """What built-in ``policy`` reads (`declare_reads`); None for any other callable."""
    try:
        read: SignalsRead | None = _reads.get(policy)  # type: ignore[call-overload]
        return read
    except TypeError:  # not weak-referenceable or not hashable: certainly not one of ours
        return None
