"""What the client tells the developer: once per process, once per name, or on a failure.

Log lines and messages only, never personal data: a warning about the config when a client is
built (`warn_about_config`), the default consent policy's denial explained once
(`tell_default_denial_once`), a custom event name one edit from a standard one
(`warn_if_misspelled`), a ``dry_run="debug"`` event on stderr (`print_dry_run`), and our own
failures without the exception's message (`log_internal_error`).
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import Mapping
from typing import Any

from capi_middleware.config import CAPIConfig, misnamed_variables
from capi_middleware.errors import Problem
from capi_middleware.rules import events as event_rules
from capi_middleware.rules.describe import describe_event

__all__ = [
    "NO_SIGNAL_OWN_POLICY",
    "NO_SIGNAL_PROBLEM",
    "log_internal_error",
    "names_checked",
    "print_dry_run",
    "tell_default_denial_once",
    "warn_about_config",
    "warn_if_misspelled",
]

logger = logging.getLogger("capi_middleware")


def warn_about_config(config: CAPIConfig) -> None:
    """Warn when a new client's events go to Test Events only, or nowhere."""
    if config.test_event_code:
        logger.warning(
            "capi_middleware: test_event_code [META_TEST_EVENT_CODE] is set; events go to "
            "Test Events only (remove it in production)"
        )
    if not config.destinations() and not config.dry_run:
        typos = "".join(
            f"; {name} is set but not read: did you mean {meant}?"
            for name, meant in misnamed_variables()
        )
        logger.warning(
            "capi_middleware: no pixel_id [META_PIXEL_ID] / access_token [META_ACCESS_TOKEN] "
            "configured; events will be dropped (set both, or dry_run=True [META_DRY_RUN])%s",
            typos,
        )


# Said on a result denied for want of any consent signal, and logged once per process: the
# default policy is an EU opt-in, which a new user's first track() meets without a banner.
NO_SIGNAL_PROBLEM = Problem(
    "consent",
    "denied: the request carries no consent signal, and the default policy is EU opt-in "
    "(nothing is sent until the visitor opts in); pass consent=True where no consent banner is "
    "needed, or a policy for your banner (README: Consent; docs/consent.md)",
)
NO_SIGNAL_OWN_POLICY = Problem(
    "consent", "denied: the request carries none of the consent signals your consent policy reads"
)
_told_default_denial = threading.Event()


def tell_default_denial_once(name: str) -> None:
    """Log `NO_SIGNAL_PROBLEM` once per process, naming the first event it cost."""
    if _told_default_denial.is_set():
        return
    _told_default_denial.set()
    logger.info(
        "capi_middleware: %s event not sent: %s. (Said once per process.)",
        name or "unnamed",
        NO_SIGNAL_PROBLEM.message,
    )


# Custom event names already checked for a likely typo (bounded: names are the app's own).
# The tracking path looks a name up here before calling `warn_if_misspelled`.
names_checked: set[str] = set()
_NAMES_CHECKED_MAX = 1024


def warn_if_misspelled(name: str) -> None:
    """Warn once per name when a custom event name is one edit away from a standard one."""
    if len(names_checked) >= _NAMES_CHECKED_MAX:
        return
    names_checked.add(name)
    meant = event_rules.near_standard_name(name)
    if meant is not None:
        logger.warning(
            "capi_middleware: event name %r is not a standard event, so Meta counts it as a "
            "custom event; did you mean %r? (said once per name)",
            name[:64],
            meant,
        )


def print_dry_run(event: Mapping[str, Any]) -> None:
    """``dry_run="debug"``: the event to stderr, as a developer asked (values masked)."""
    try:
        print(describe_event(event), file=sys.stderr, flush=True)
    except Exception as exc:  # a closed or broken stderr must not cost the request
        log_internal_error("printing a dry_run event", exc)


def log_internal_error(where: str, exc: BaseException) -> None:
    """Log our own failure without the exception's message (it may quote personal data)."""
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    at = f" at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}" if last else ""
    logger.error(
        "capi_middleware: internal error in %s: %s%s; the request goes on",
        where,
        type(exc).__name__,
        at,
    )
