"""Consent: the built-in policies, their combinators, and what a decision says.

A policy is a callable ``(signals) -> bool | ConsentDecision``; `signals` is the request's
`RequestContext` (``.cookies``, ``.header(name)``). These names are the public surface, pinned by
tests/test_exported_members.py; the machinery that evaluates a policy is internal.
"""

from __future__ import annotations

from capi_middleware.consent.decision import (
    DENIED,
    GRANTED,
    ConsentDecision,
    ConsentPolicy,
    ConsentSignals,
)
from capi_middleware.consent.policies import (
    all_of,
    always_denied,
    always_granted,
    any_of,
    default_policy,
    first_of,
    gpc_ldu,
)
from capi_middleware.consent.readers import google_consent_mode, site_cookie, tcf_v2
from capi_middleware.rules.tcf import TCString, parse_tc_string

__all__ = [
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
