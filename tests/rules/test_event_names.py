"""near_standard_name: a custom event name one edit away from a standard one is a likely typo."""

from __future__ import annotations

import pytest

from capi_middleware.rules.events import STANDARD_EVENTS, near_standard_name


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("Purchse", "Purchase"),  # a letter dropped
        ("Purchasee", "Purchase"),  # a letter added
        ("xPurchase", "Purchase"),
        ("AddToCard", "AddToCart"),  # a letter changed
        ("Purhcase", "Purchase"),  # neighbours swapped
        ("Serach", "Search"),
        ("PURCHASE", "Purchase"),  # case only
        ("addtocart", "AddToCart"),
        ("ViewConent", "ViewContent"),
        ("CompleteRegistraton", "CompleteRegistration"),
        ("Leads", "Lead"),
        ("Donat", "Donate"),
        ("Purchase", None),  # standard
        ("MyCustomEvent", None),
        ("Prchse", None),  # two edits
        ("Sign", None),
        ("", None),
        ("P", None),
    ],
)
def test_near_standard_name(name: str, meant: str | None) -> None:
    assert near_standard_name(name) == meant


@pytest.mark.parametrize("standard", sorted(STANDARD_EVENTS))
def test_no_standard_name_is_taken_for_a_typo(standard: str) -> None:
    assert near_standard_name(standard) is None
