"""Why a ``user_data`` value was dropped: a stable reason per cause, and the `Problem` that
carries it (pure).

A value that cannot be normalized is dropped, never sent raw (META_CAPI_REFERENCE.md §3). Each
drop names its Meta key and one of `DROP_REASONS`, so a match-quality counter can group drops
per key and reason without reading messages (docs/match-quality.md lists them).
"""

from __future__ import annotations

from dataclasses import dataclass

from capi_middleware.errors import Problem

__all__ = [
    "CONTROL_CHARACTERS",
    "DATE_OUT_OF_RANGE",
    "DROP_REASONS",
    "EMPTY",
    "INTERNAL_ERROR",
    "NOT_AN_EMAIL",
    "NOT_A_DATE",
    "NOT_A_US_ZIP",
    "NOT_TEXT",
    "NO_COUNTRY_CODE",
    "NO_DIGITS",
    "NO_LETTERS",
    "TOO_LONG",
    "TOO_MANY_DIGITS",
    "TOO_SHORT",
    "UNKNOWN_COUNTRY",
    "UNKNOWN_GENDER",
    "DroppedValue",
    "Reject",
]

# Why a value was dropped: short, stable phrases a counter can group on (one per cause, the
# same for every key; `DroppedValue.message` says more). Renaming one breaks dashboards.
TOO_LONG = "too long"
NOT_TEXT = "not text"
EMPTY = "empty"
CONTROL_CHARACTERS = "control characters"
NOT_AN_EMAIL = "not an email"
NO_DIGITS = "no digits"
TOO_SHORT = "too short"
TOO_MANY_DIGITS = "too many digits"
NO_COUNTRY_CODE = "no country code"
NO_LETTERS = "no letters"
UNKNOWN_COUNTRY = "unknown country"
NOT_A_US_ZIP = "not a US ZIP code"
NOT_A_DATE = "not a date"
DATE_OUT_OF_RANGE = "date out of range"
UNKNOWN_GENDER = "unknown gender"
INTERNAL_ERROR = "internal error"

DROP_REASONS: frozenset[str] = frozenset(
    {
        TOO_LONG,
        NOT_TEXT,
        EMPTY,
        CONTROL_CHARACTERS,
        NOT_AN_EMAIL,
        NO_DIGITS,
        TOO_SHORT,
        TOO_MANY_DIGITS,
        NO_COUNTRY_CODE,
        NO_LETTERS,
        UNKNOWN_COUNTRY,
        NOT_A_US_ZIP,
        NOT_A_DATE,
        DATE_OUT_OF_RANGE,
        UNKNOWN_GENDER,
        INTERNAL_ERROR,
    }
)


@dataclass(frozen=True)
class DroppedValue(Problem):
    """A `Problem` for one ``user_data`` value that was dropped, in a form a counter can group.

    Parameters (besides `Problem`'s; ``fatal`` defaults to False: the event still goes out):
        key: the Meta key the value was given for (``"ph"``, ``"em"``, ``"fbc"``, ...), whatever
            spelling the caller used (``"phone"`` is ``"ph"``).
        reason: why, one of `DROP_REASONS` (``"no country code"``, ``"not an email"``, ...).
            ``message`` says the same in words, with how to fix it. Neither holds the value.
    """

    fatal: bool = False
    key: str = ""
    reason: str = INTERNAL_ERROR


class Reject(Exception):
    """Raised by a rule when a value cannot be normalized: ``reason`` is one of `DROP_REASONS`,
    ``detail`` (default: the reason) the human message. Neither ever holds the value."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail if detail is not None else reason
