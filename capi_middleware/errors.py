"""Problems found in an event or in user data, named the way Meta would name them.

A `Problem` never carries a raw personal value: only the field's path, what was wrong,
and (where Meta has one) the error subcode Meta would have answered with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CAPIValidationError", "Problem"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an event.

    Parameters:
        field: where, as a path: ``"custom_data.currency"``, ``"user_data.em[1]"``.
        message: what was wrong, in words a developer acts on. Never holds raw personal data.
        meta_subcode: the Graph API ``error_subcode`` Meta would have answered, when known
            (2804010 for a Purchase without currency, ...).
        fatal: True when the whole event is rejected; False when only the value was
            dropped (an email that is not an email) and the event still goes out.
    """

    field: str
    message: str
    meta_subcode: int | None = None
    fatal: bool = True

    def __str__(self) -> str:
        suffix = f" (Meta: error_subcode {self.meta_subcode})" if self.meta_subcode else ""
        return f"{self.field}: {self.message}{suffix}"


class CAPIValidationError(ValueError):
    """Raised (with ``strict=True``, or by the pure builders) when an event is invalid.

    ``problems`` lists every problem found, not just the first.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        lines = "; ".join(str(p) for p in self.problems) or "invalid event"
        super().__init__(lines)
