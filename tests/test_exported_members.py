"""The public API is pinned: adding or removing a name is a deliberate change to this list."""

from __future__ import annotations

import subprocess
import sys

import capi_middleware
import capi_middleware.consent

CONSENT_PUBLIC = [
    "DENIED",
    "GRANTED",
    "ConsentDecision",
    "ConsentPolicy",
    "ConsentSignals",
    "TCString",
    "all_of",
    "always_denied",
    "always_granted",
    "any_of",
    "default_policy",
    "first_of",
    "google_consent_mode",
    "gpc_ldu",
    "parse_tc_string",
    "site_cookie",
    "tcf_v2",
]
PUBLIC = [
    "CAPIClient",
    "CAPIConfig",
    "CAPIMiddleware",
    "CAPIValidationError",
    "CAPIWSGIMiddleware",
    "CaptureStats",
    "ConsentDecision",
    "DeliveryStats",
    "Destination",
    "Problem",
    "RequestContext",
    "TrackResult",
    "TrackStatus",
    "Visitor",
    "__version__",
    "current",
]


def test_all_is_pinned() -> None:
    assert sorted(capi_middleware.__all__) == sorted(PUBLIC)


def test_consent_surface_is_pinned() -> None:
    # The policies and combinators; the machinery that evaluates them is not public.
    assert sorted(capi_middleware.consent.__all__) == sorted(CONSENT_PUBLIC)
    assert not hasattr(capi_middleware.consent, "evaluate")
    assert not hasattr(capi_middleware.consent, "signals_read")


def test_every_exported_name_exists_and_is_documented() -> None:
    for name in capi_middleware.__all__:
        obj = getattr(capi_middleware, name)
        if name not in ("__version__", "TrackStatus"):  # TrackStatus: a Literal, see results.py
            assert obj.__doc__, f"{name} has no docstring"


def test_importing_the_package_starts_nothing_heavy() -> None:
    # One-line install: importing must not start threads, open sockets or import frameworks.
    code = (
        "import sys, threading, capi_middleware;"
        "assert threading.active_count() == 1, threading.enumerate();"
        "bad = [m for m in ('django', 'flask', 'prometheus_client', 'uvicorn') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_demo_and_the_test_kit_import_without_the_test_extras() -> None:
    # The README's demo command installs only '.[demo]': no pytest. The demo imports the fake
    # Graph API from capi_middleware.testing, whose fixtures must not need pytest to import.
    code = (
        "import sys; sys.modules['pytest'] = None;"
        "import capi_middleware.testing as t, capi_middleware.demo;"
        "assert callable(t.fake_graph) and callable(t.fake_graph_env) and t.FakeGraphAPI"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
