"""Problems found in an event or in user data, named the way Meta would name them.

A `Problem` never carries a raw personal value: only the field's path, what was wrong,
and (where Meta has one) the error subcode Meta would have answered with.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["CAPIValidationError", "Problem", "unknown_key_field"]


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


# A key shown in a Problem must look like a field name: a personal value used as a key
# ({"jane.doe@example.com": ...}) has an @, digits runs or is long, and never gets here.
_NAME_LIKE = re.compile(r"[A-Za-z][A-Za-z_ -]{0,31}")


def unknown_key_field(
    container: str, key: object, known: Iterable[str]
) -> tuple[str, str, str | None]:
    """How a Problem names a key we don't know: (field, what it is, hint), never its text.

    A key is often a value put in the wrong place (``{"jane.doe@example.com": ...}``), so it is
    described by its shape: ``("user_data[?]", "unknown key of 20 characters", None)``. Only a
    near miss of one of our ``known`` names, spelled like a field name, is shown, with the name
    it misses: ``("user_data.emial", "unknown key", "did you mean 'email'?")`` (issue 10).
    """
    if not isinstance(key, str):
        return f"{container}[?]", f"unknown key of type {type(key).__name__}", None
    if _NAME_LIKE.fullmatch(key):
        near = difflib.get_close_matches(key.lower(), list(known), n=1)
        if near:
            return f"{container}.{key}", "unknown key", f"did you mean '{near[0]}'?"
    return f"{container}[?]", f"unknown key of {len(key)} characters", None
