"""Consent policies: every built-in, the combinators, TCF v2 decoding and hostile input."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pytest

from capi_middleware.consent import (
    DENIED,
    GRANTED,
    ConsentDecision,
    TCString,
    all_of,
    always_denied,
    always_granted,
    any_of,
    default_policy,
    first_of,
    google_consent_mode,
    gpc_ldu,
    parse_tc_string,
    site_cookie,
    tcf_v2,
)
from capi_middleware.consent.policies import evaluate


@dataclass
class Signals:
    """The input type policies read (ConsentSignals), as a request would carry it."""

    cookies: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


def sig(headers: Mapping[str, str] | None = None, **cookies: str) -> Signals:
    return Signals(cookies=cookies, headers=headers or {})


def with_cookie(name: str, value: str, headers: Mapping[str, str] | None = None) -> Signals:
    return Signals(cookies={name: value}, headers=headers or {})


def outcome(answer: object) -> object:
    """A policy's answer reduced to what the tables compare: None, or (granted, ldu, reason)."""
    if isinstance(answer, ConsentDecision):
        return (answer.granted, answer.ldu, answer.reason)
    return answer


# -- a small TCF v2 core-segment encoder (bit writer), to build strings with known content ----

_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class BitWriter:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def int(self, value: int, width: int) -> None:
        assert 0 <= value < 2**width
        self.parts.append(format(value, f"0{width}b") if width else "")

    def flag(self, value: bool) -> None:
        self.int(int(value), 1)

    def flags(self, ids: Iterable[int], width: int) -> None:
        on = set(ids)
        self.parts.append("".join("1" if i + 1 in on else "0" for i in range(width)))

    def letters(self, two: str) -> None:
        for ch in two:
            self.int(ord(ch) - ord("A"), 6)

    def base64url(self) -> str:
        bits = "".join(self.parts)
        bits += "0" * (-len(bits) % 8)  # encoders pad to whole bytes
        bits += "0" * (-len(bits) % 6)
        return "".join(_B64URL[int(bits[i : i + 6], 2)] for i in range(0, len(bits), 6))


def deciseconds(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 10)


def encode_core(
    *,
    purposes: Iterable[int] = (),
    purposes_li: Iterable[int] = (),
    special_features: Iterable[int] = (),
    vendors: Iterable[int] = (),
    ranges: list[tuple[int, int]] | None = None,
    max_vendor_id: int | None = None,
    version: int = 2,
    created: str = "2024-05-01T12:00:00+00:00",
    last_updated: str = "2024-05-02T08:30:00+00:00",
    cmp_id: int = 300,
    cmp_version: int = 7,
    language: str = "FR",
    vendor_list_version: int = 48,
    policy_version: int = 4,  # TCF v2.2
    publisher_cc: str = "FR",
) -> str:
    """A TC string core segment, bit by bit as the IAB spec lays it out."""
    w = BitWriter()
    w.int(version, 6)
    w.int(deciseconds(created), 36)
    w.int(deciseconds(last_updated), 36)
    w.int(cmp_id, 12)
    w.int(cmp_version, 12)
    w.int(1, 6)  # ConsentScreen
    w.letters(language)
    w.int(vendor_list_version, 12)
    w.int(policy_version, 6)
    w.flag(False)  # IsServiceSpecific
    w.flag(False)  # UseNonStandardTexts
    w.flags(special_features, 12)
    w.flags(purposes, 24)
    w.flags(purposes_li, 24)
    w.flag(False)  # PurposeOneTreatment
    w.letters(publisher_cc)
    vendor_ids = set(vendors)
    if ranges is not None:
        top = max_vendor_id if max_vendor_id is not None else max((e for _, e in ranges), default=0)
        w.int(top, 16)
        w.flag(True)
        w.int(len(ranges), 12)
        for start, end in ranges:
            w.flag(start != end)
            w.int(start, 16)
            if start != end:
                w.int(end, 16)
    else:
        top = max_vendor_id if max_vendor_id is not None else max(vendor_ids, default=0)
        w.int(top, 16)
        w.flag(False)
        w.flags(vendor_ids, top)
    # Vendor legitimate interest section (empty) and no publisher restrictions, as CMPs write.
    w.int(0, 16)
    w.flag(False)
    w.int(0, 12)
    return w.base64url()


# -- TCF v2 decoding ------------------------------------------------------------------------

# Public vectors from the IAB's own decoder tests (InteractiveAdvertisingBureau/iabtcf-java,
# TCStringV2Test), with the values that test asserts.
IAB_FULL = "COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA"
IAB_BITFIELD = "COrEAV4OrXx94ACABBENAHCIAD-AAAAAAACAAxAAAAgAIAwgAgAAAAEAgQAAAAAEAYQAQAAAACAAAABAAA"
IAB_TWO_RANGES = "COwBOpCOwBOpCLqAAAENAPCAAAAAAAAAAAAAFfwAYFfAV-BVkAGBVYFWAAA"
IAB_ONE_RANGE = "COwBOpCOwBOpCLqAAAENAPCAAAAAAAAAAAAAFfwAQFfgUbABAUaAAA"
IAB_PURPOSES_1_2 = "COwxsONOwxsONKpAAAENAdCAAMAAAAAAAAAAAAAAAAAA"
# Prebid's tcfUtils test: purposes 1, 3, 5, 7, 9 consented; a second (vendors) segment follows.
PREBID_ODD_PURPOSES = (
    "CPh7_cXPh7_cXKMAAAENCZCAAKqAAAAAAAAAAAAAAAAA.II7Nd_X__bX9n-_7_6ft0eY1f9_r37uQzDhfNs-8F3L_W"
)


def test_iab_vector_every_core_field() -> None:
    tc = parse_tc_string(IAB_FULL)
    assert tc is not None
    assert tc.version == 2
    assert tc.created == datetime(2020, 1, 26, 17, 1, tzinfo=timezone.utc)
    assert tc.last_updated == datetime(2021, 2, 2, 17, 1, tzinfo=timezone.utc)
    assert (tc.cmp_id, tc.cmp_version, tc.consent_screen) == (675, 2, 1)
    assert (tc.vendor_list_version, tc.tcf_policy_version) == (15, 2)
    assert (tc.consent_language, tc.publisher_cc) == ("EN", "AA")
    assert tc.is_service_specific is False
    assert tc.use_non_standard_texts is False
    assert tc.purpose_one_treatment is True
    assert tc.special_feature_opt_ins == {1}
    assert tc.purposes_consent == {2, 10}
    assert tc.purposes_li_transparency == {2, 9}


@pytest.mark.parametrize(
    ("tc_string", "purposes", "vendors", "range_encoded"),
    [
        (IAB_FULL, {2, 10}, set(), False),
        (IAB_BITFIELD, {3, 4, 5, 6, 7, 8, 9}, {23, 37, 47, 48, 53, 65, 98}, False),
        (IAB_TWO_RANGES, set(), {702, 703}, True),
        (IAB_ONE_RANGE, set(), {703}, True),
        (IAB_PURPOSES_1_2, {1, 2}, set(), False),
        (PREBID_ODD_PURPOSES, {1, 3, 5, 7, 9}, set(), False),
        # with the later segments attached, and with base64 padding
        (
            IAB_BITFIELD + ".IBAgAAAgAIAwgAgAAAAEAAAACA.QAagAQAgAIAwgA.cAAAAAAAITg=",
            {3, 4, 5, 6, 7, 8, 9},
            {23, 37, 47, 48, 53, 65, 98},
            False,
        ),
        (IAB_PURPOSES_1_2 + "==", {1, 2}, set(), False),
    ],
)
def test_public_vectors_decode(
    tc_string: str, purposes: set[int], vendors: set[int], range_encoded: bool
) -> None:
    tc = parse_tc_string(tc_string)
    assert tc is not None
    assert tc.purposes_consent == purposes
    assert tc.vendor_consents == vendors
    assert tc.vendor_range_encoded is range_encoded
    for vendor in range(1, 1100):
        assert tc.has_vendor_consent(vendor) is (vendor in vendors)


def test_encoded_string_round_trips_every_field() -> None:
    s = encode_core(
        purposes=(1, 2, 3, 4, 7, 9, 10),
        purposes_li=(2, 7, 24),
        special_features=(1, 2),
        vendors=(1, 8, 755, 1024),
        language="DE",
        publisher_cc="DE",
    )
    tc = parse_tc_string(s)
    assert tc == TCString(
        version=2,
        created=datetime(2024, 5, 1, 12, tzinfo=timezone.utc),
        last_updated=datetime(2024, 5, 2, 8, 30, tzinfo=timezone.utc),
        cmp_id=300,
        cmp_version=7,
        consent_screen=1,
        consent_language="DE",
        vendor_list_version=48,
        tcf_policy_version=4,
        is_service_specific=False,
        use_non_standard_texts=False,
        special_feature_opt_ins=frozenset({1, 2}),
        purposes_consent=frozenset({1, 2, 3, 4, 7, 9, 10}),
        purposes_li_transparency=frozenset({2, 7, 24}),
        purpose_one_treatment=False,
        publisher_cc="DE",
        max_vendor_id=1024,
        vendor_range_encoded=False,
        vendor_bits=tc.vendor_bits if tc else 0,
    )
    assert tc is not None
    assert tc.vendor_consents == {1, 8, 755, 1024}


@pytest.mark.parametrize(
    ("ranges", "max_vendor_id", "inside", "outside"),
    [
        ([(755, 755)], None, {755}, {1, 754, 756}),
        ([(1, 10), (20, 20), (100, 105)], None, {1, 5, 10, 20, 100, 105}, {11, 19, 21, 99, 106}),
        ([(5, 9), (7, 12)], None, {5, 9, 12}, {4, 13}),  # overlapping ranges
        ([(1, 65535)], None, {1, 32768, 65535}, {0, 65536}),
        ([(1, 2000)], 1000, {1, 1000}, {1001, 2000}),  # ids above MaxVendorId do not count
        ([], 0, set(), {1}),
    ],
)
def test_range_encoded_vendors(
    ranges: list[tuple[int, int]], max_vendor_id: int | None, inside: set[int], outside: set[int]
) -> None:
    tc = parse_tc_string(encode_core(purposes=(1,), ranges=ranges, max_vendor_id=max_vendor_id))
    assert tc is not None
    assert tc.vendor_range_encoded
    for vendor in inside:
        assert tc.has_vendor_consent(vendor)
    for vendor in outside:
        assert not tc.has_vendor_consent(vendor)
    assert len(tc.vendor_consents) <= tc.max_vendor_id


def test_many_huge_ranges_stay_cheap_to_query() -> None:
    # 4095 entries (the 12-bit maximum) each covering every vendor id: a naive decoder
    # expanding ranges would build 268 million ids.
    tc = parse_tc_string(encode_core(ranges=[(1, 65535)] * 4095))
    assert tc is not None
    assert tc.has_vendor_consent(65535)
    assert len(tc.vendor_consents) == 65535


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        ".",
        "C",
        "CO",
        "BOEFEAyOEFEAyAHABDENAI4AAAB9vABAASA",  # a TCF v1 consent string
        encode_core(purposes=(1,), version=1),
        encode_core(purposes=(1,), version=3),
        "COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAA!",  # a character outside base64url
        "COtybn4PA+zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA",  # standard base64, not base64url
        "COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA\x00",
        "Cé" * 30,
        "🍪" * 100,
        "%43OtybnA",
        "C" + "_" * 10_000,  # MaxVendorId 65535 but too few bits for its bitfield
        encode_core(ranges=[(10, 5)]),  # a range that ends before it starts
        encode_core(ranges=[(0, 5)]),  # vendor ids start at 1
    ],
)
def test_not_a_tc_string_is_none(value: str) -> None:
    assert parse_tc_string(value) is None


def test_every_truncation_of_a_valid_string_decodes_or_is_none() -> None:
    full = encode_core(purposes=(1, 2), ranges=[(3, 9), (755, 755)])
    assert parse_tc_string(full) is not None
    header_chars = 213 // 6  # the fields before MaxVendorId
    for cut in range(len(full)):
        tc = parse_tc_string(full[:cut])
        if cut <= header_chars:
            assert tc is None, cut
        else:
            assert tc is None or tc.purposes_consent == {1, 2}, cut


def test_only_a_bounded_prefix_of_a_huge_value_is_decoded() -> None:
    # All-zero bits are a valid "no consent at all" string; past the vendor consents nothing
    # is read, so a megabyte costs no more than the spec's longest core segment.
    tc = parse_tc_string("C" + "A" * 1_000_000)
    assert tc is not None
    assert tc.purposes_consent == frozenset()
    assert tc.max_vendor_id == 0


@pytest.mark.parametrize("value", [None, 42, b"COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA"])
def test_parse_tc_string_rejects_non_strings(value: object) -> None:
    assert parse_tc_string(value) is None  # type: ignore[arg-type]


# -- tcf_v2 policy --------------------------------------------------------------------------

TC_1_7_755 = encode_core(purposes=(1, 2, 7), vendors=(12, 755))
TC_2_ONLY = encode_core(purposes=(2,), vendors=(755,))
TC_1_RANGE = encode_core(purposes=(1,), ranges=[(700, 800)])
TC_NOTHING = encode_core()


@pytest.mark.parametrize(
    ("kwargs", "cookies", "expected"),
    [
        ({}, {}, None),
        ({}, {"euconsent-v2": TC_1_7_755}, (True, False, "tcf_v2")),
        ({}, {"euconsent-v2": TC_2_ONLY}, (False, False, "tcf_v2")),
        ({}, {"euconsent-v2": TC_NOTHING}, (False, False, "tcf_v2")),
        ({}, {"euconsent-v2": f'"{TC_1_7_755}"'}, (True, False, "tcf_v2")),
        ({}, {"euconsent-v2": "not a tc string"}, None),
        ({}, {"euconsent-v2": ""}, None),
        ({"purposes": (1, 7)}, {"euconsent-v2": TC_1_7_755}, (True, False, "tcf_v2")),
        ({"purposes": (1, 7)}, {"euconsent-v2": TC_1_RANGE}, (False, False, "tcf_v2")),
        ({"purposes": (1, 3)}, {"euconsent-v2": TC_1_7_755}, (False, False, "tcf_v2")),
        ({"vendor_id": 755}, {"euconsent-v2": TC_1_7_755}, (True, False, "tcf_v2")),
        ({"vendor_id": 756}, {"euconsent-v2": TC_1_7_755}, (False, False, "tcf_v2")),
        ({"vendor_id": 755}, {"euconsent-v2": TC_1_RANGE}, (True, False, "tcf_v2")),
        ({"vendor_id": 801}, {"euconsent-v2": TC_1_RANGE}, (False, False, "tcf_v2")),
        ({"vendor_id": 755}, {"euconsent-v2": TC_2_ONLY}, (False, False, "tcf_v2")),
        ({"cookie": "tc"}, {"euconsent-v2": TC_1_7_755}, None),
        ({"cookie": "tc"}, {"tc": TC_1_7_755}, (True, False, "tcf_v2")),
        ({"purposes": (2, 10)}, {"euconsent-v2": IAB_FULL}, (True, False, "tcf_v2")),
        ({}, {"euconsent-v2": IAB_FULL}, (False, False, "tcf_v2")),
    ],
)
def test_tcf_v2_policy(
    kwargs: dict[str, object], cookies: dict[str, str], expected: object
) -> None:
    policy = tcf_v2(**kwargs)  # type: ignore[arg-type]
    assert outcome(policy(Signals(cookies=cookies))) == expected


# -- site cookie ----------------------------------------------------------------------------

COOKIEBOT = (
    "%7Bstamp%3A%27-1yRbH8zN2PpkUFbVy3Lj7Nc1P9HkjOOZb1KtNRUB1m2dt7Mv%2BcHdA%3D%3D%27%2C"
    "necessary%3Atrue%2Cpreferences%3Afalse%2Cstatistics%3Atrue%2Cmarketing%3A{m}%2C"
    "method%3A%27explicit%27%2Cver%3A1%2Cutc%3A1700000000000%2Cregion%3A%27de%27%7D"
)


GRANT_SC = (True, False, "site_cookie")
DENY_SC = (False, False, "site_cookie")
MKT = {"category": "marketing"}
OK_NOPE = {"granted": ("ok",), "denied": ("nope",)}
BOT = {"name": "CookieConsent", "category": "marketing"}


@pytest.mark.parametrize(
    ("kwargs", "cookies", "expected"),
    [
        ({}, {}, None),
        ({}, {"cookie_consent": "1"}, GRANT_SC),
        ({}, {"cookie_consent": "true"}, GRANT_SC),
        ({}, {"cookie_consent": " Accepted "}, GRANT_SC),
        ({}, {"cookie_consent": "ALL"}, GRANT_SC),
        ({}, {"cookie_consent": '"granted"'}, GRANT_SC),
        ({}, {"cookie_consent": "0"}, DENY_SC),
        ({}, {"cookie_consent": "denied"}, DENY_SC),
        ({}, {"cookie_consent": "necessary"}, DENY_SC),
        ({}, {"cookie_consent": "REJECT"}, DENY_SC),
        ({}, {"cookie_consent": "maybe"}, None),
        ({}, {"cookie_consent": ""}, None),
        ({}, {"other": "1"}, None),
        ({"name": "cc"}, {"cc": "yes", "cookie_consent": "no"}, GRANT_SC),
        (OK_NOPE, {"cookie_consent": "OK"}, GRANT_SC),
        (OK_NOPE, {"cookie_consent": "1"}, None),
        (OK_NOPE, {"cookie_consent": "nope"}, DENY_SC),
        # categories: JSON, pairs, JS-object style, percent-encoded
        (MKT, {"cookie_consent": '{"marketing": true}'}, GRANT_SC),
        (MKT, {"cookie_consent": '{"marketing": false, "stats": true}'}, DENY_SC),
        (MKT, {"cookie_consent": '{"marketing": "granted"}'}, GRANT_SC),
        (MKT, {"cookie_consent": '{"Marketing": 1}'}, GRANT_SC),
        (MKT, {"cookie_consent": '{"marketing": 0}'}, DENY_SC),
        (MKT, {"cookie_consent": '{"stats": true}'}, None),
        (MKT, {"cookie_consent": '{"marketing": null}'}, None),
        (MKT, {"cookie_consent": '{"marketing": [1]}'}, None),
        (MKT, {"cookie_consent": '{"marketing": 1.0}'}, None),
        (MKT, {"cookie_consent": "[true]"}, None),
        (MKT, {"cookie_consent": "analytics:1,marketing:1"}, GRANT_SC),
        (MKT, {"cookie_consent": "analytics:1,marketing:0"}, DENY_SC),
        (MKT, {"cookie_consent": "analytics=yes&marketing=yes"}, GRANT_SC),
        (MKT, {"cookie_consent": "Marketing: Yes | analytics: no"}, GRANT_SC),
        (MKT, {"cookie_consent": "{marketing:'true'}"}, GRANT_SC),
        (MKT, {"cookie_consent": "%7B%22marketing%22%3Atrue%7D"}, GRANT_SC),
        (MKT, {"cookie_consent": "1"}, None),
        (MKT, {"cookie_consent": "{broken"}, None),
        # Cookiebot's CookieConsent cookie, as the browser sends it
        (BOT, {"CookieConsent": COOKIEBOT.format(m="true")}, GRANT_SC),
        (BOT, {"CookieConsent": COOKIEBOT.format(m="false")}, DENY_SC),
        (
            {**BOT, "category": "statistics"},
            {"CookieConsent": COOKIEBOT.format(m="false")},
            GRANT_SC,
        ),
    ],
)
def test_site_cookie(kwargs: dict[str, object], cookies: dict[str, str], expected: object) -> None:
    policy = site_cookie(**kwargs)  # type: ignore[arg-type]
    assert outcome(policy(Signals(cookies=cookies))) == expected


# -- Google Consent Mode v2 -----------------------------------------------------------------

GRANT_CM = (True, False, "consent_mode")
DENY_CM = (False, False, "consent_mode")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ad_storage=granted&ad_user_data=granted", GRANT_CM),
        ("ad_user_data=granted&ad_storage=granted&ad_personalization=denied", GRANT_CM),
        ("ad_storage=granted,ad_user_data=granted", GRANT_CM),
        ("ad_storage:granted|ad_user_data:granted", GRANT_CM),
        ("AD_STORAGE=GRANTED&AD_USER_DATA=Granted", GRANT_CM),
        (
            '{"ad_storage":"granted","ad_user_data":"granted","analytics_storage":"denied"}',
            GRANT_CM,
        ),
        ("%7B%22ad_storage%22%3A%22granted%22%2C%22ad_user_data%22%3A%22granted%22%7D", GRANT_CM),
        ('{"ad_storage":true,"ad_user_data":true}', GRANT_CM),
        ("ad_storage=granted&ad_user_data=denied", DENY_CM),
        ("ad_storage=denied&ad_user_data=granted", DENY_CM),
        ("ad_storage=denied", DENY_CM),
        ("ad_user_data=denied", DENY_CM),
        ('{"ad_storage":"denied","ad_user_data":"denied"}', DENY_CM),
        ("ad_storage=granted", None),  # Consent Mode v1 only: ad_user_data unknown
        ("ad_user_data=granted", None),
        ("ad_storage=maybe&ad_user_data=granted", None),
        ("analytics_storage=granted", None),
        ("granted", None),
        ("", None),
        ("{", None),
        ("=&=,:|", None),
    ],
)
def test_google_consent_mode_cookie(value: str, expected: object) -> None:
    policy = google_consent_mode()
    assert outcome(policy(with_cookie("capi_consent_mode", value))) == expected


@pytest.mark.parametrize(
    ("kwargs", "signals", "expected"),
    [
        ({}, sig(), None),
        ({}, sig({"X-Consent-Mode": "ad_storage=granted&ad_user_data=granted"}), None),
        (
            {"header": "X-Consent-Mode"},
            sig({"x-consent-mode": "ad_storage=granted&ad_user_data=granted"}),
            GRANT_CM,
        ),
        (
            {"header": "X-Consent-Mode"},
            Signals(
                cookies={"capi_consent_mode": "ad_storage=denied&ad_user_data=denied"},
                headers={"X-Consent-Mode": "ad_storage=granted&ad_user_data=granted"},
            ),
            DENY_CM,  # the cookie wins
        ),
        (
            {"cookie": None, "header": "X-Consent-Mode"},
            Signals(
                cookies={"capi_consent_mode": "ad_storage=denied&ad_user_data=denied"},
                headers={"X-Consent-Mode": "ad_storage=granted&ad_user_data=granted"},
            ),
            GRANT_CM,
        ),
        (
            {"cookie": "gcm"},
            sig(gcm="ad_storage=granted&ad_user_data=granted"),
            GRANT_CM,
        ),
    ],
)
def test_google_consent_mode_sources(
    kwargs: dict[str, object], signals: Signals, expected: object
) -> None:
    policy = google_consent_mode(**kwargs)  # type: ignore[arg-type]
    assert outcome(policy(signals)) == expected


# -- GPC → LDU ------------------------------------------------------------------------------


def grants(reason: str) -> object:
    def policy(signals: object) -> ConsentDecision:
        return ConsentDecision(granted=True, reason=reason)

    return policy


def denies(reason: str) -> object:
    def policy(signals: object) -> ConsentDecision:
        return ConsentDecision(granted=False, reason=reason)

    return policy


def no_opinion(signals: object) -> None:
    return None


def raises(signals: object) -> None:
    raise RuntimeError("boom")


@pytest.mark.parametrize(
    ("inner", "headers", "expected"),
    [
        (grants("site_cookie"), {"Sec-GPC": "1"}, (True, True, "site_cookie+gpc")),
        (grants("site_cookie"), {"sec-gpc": " 1 "}, (True, True, "site_cookie+gpc")),
        (grants("site_cookie"), {}, (True, False, "site_cookie")),
        (grants("site_cookie"), {"Sec-GPC": "0"}, (True, False, "site_cookie")),
        (grants("site_cookie"), {"Sec-GPC": "true"}, (True, False, "site_cookie")),
        (grants(""), {"Sec-GPC": "1"}, (True, True, "gpc")),
        (lambda s: True, {"Sec-GPC": "1"}, (True, True, "policy+gpc")),
        (denies("site_cookie"), {"Sec-GPC": "1"}, (False, False, "site_cookie")),
        (no_opinion, {"Sec-GPC": "1"}, None),  # GPC never grants by itself
        (raises, {"Sec-GPC": "1"}, (False, False, "policy_error")),
        (
            lambda s: ConsentDecision(True, ldu=True, reason="x"),
            {"Sec-GPC": "1"},
            (True, True, "x"),
        ),
    ],
)
def test_gpc_ldu(inner: object, headers: dict[str, str], expected: object) -> None:
    policy = gpc_ldu(inner)  # type: ignore[arg-type]
    assert outcome(policy(Signals(headers=headers))) == expected


# -- combinators ----------------------------------------------------------------------------

G_A, G_B = grants("a"), grants("b")
D_A, D_B = denies("a"), denies("b")
LDU = lambda s: ConsentDecision(True, ldu=True, reason="l")  # noqa: E731


@pytest.mark.parametrize(
    ("combinator", "policies", "expected"),
    [
        (first_of, [G_A], (True, False, "a")),
        (first_of, [no_opinion, D_B, G_A], (False, False, "b")),
        (first_of, [no_opinion, G_B, D_A], (True, False, "b")),
        (first_of, [no_opinion, no_opinion], None),
        (first_of, [raises, G_A], (False, False, "policy_error")),  # fails closed
        (first_of, [lambda s: True], (True, False, "policy")),
        (first_of, [lambda s: False, G_A], (False, False, "policy")),
        (all_of, [G_A, G_B], (True, False, "a+b")),
        (all_of, [G_A, G_A], (True, False, "a")),
        (all_of, [G_A, LDU], (True, True, "a+l")),
        (all_of, [G_A, D_B], (False, False, "b")),
        (all_of, [no_opinion, D_B], (False, False, "b")),
        (all_of, [G_A, no_opinion], None),  # no opinion is not a grant
        (all_of, [no_opinion], None),
        (all_of, [G_A, raises], (False, False, "policy_error")),
        (any_of, [D_A, G_B], (True, False, "b")),
        (any_of, [G_A, G_B], (True, False, "a")),
        (any_of, [no_opinion, D_A, D_B], (False, False, "a")),
        (any_of, [no_opinion, no_opinion], None),
        (any_of, [raises, G_B], (True, False, "b")),
        (any_of, [raises, no_opinion], (False, False, "policy_error")),
        (any_of, [LDU, G_A], (True, True, "l")),
    ],
)
def test_combinators(combinator: object, policies: list[object], expected: object) -> None:
    policy = combinator(*policies)  # type: ignore[operator]
    assert outcome(policy(Signals())) == expected


def test_combinators_nest() -> None:
    policy = gpc_ldu(any_of(all_of(G_A, no_opinion), first_of(no_opinion, G_B)))
    assert outcome(policy(sig({"Sec-GPC": "1"}))) == (True, True, "b+gpc")


def test_always_policies() -> None:
    assert outcome(always_granted(Signals())) == (True, False, "always_granted")
    assert outcome(always_denied(Signals())) == (False, False, "always_denied")
    # always_granted does not read GPC itself; wrap it to honour GPC.
    assert outcome(always_granted(sig({"Sec-GPC": "1"}))) == (True, False, "always_granted")
    assert outcome(gpc_ldu(always_granted)(sig({"Sec-GPC": "1"}))) == (
        True,
        True,
        "always_granted+gpc",
    )


# -- evaluate and the default policy --------------------------------------------------------

CM_GRANTED = "ad_storage=granted&ad_user_data=granted"
POLICY_YES = (True, False, "policy")
CM_DENIED = "ad_storage=denied&ad_user_data=denied"


@pytest.mark.parametrize(
    ("policy", "signals", "expected"),
    [
        (None, sig(), (False, False, "no_signal")),
        (None, sig({"Sec-GPC": "1"}), (False, False, "no_signal")),
        (None, sig(cookie_consent="1"), (True, False, "site_cookie")),
        (None, sig({"Sec-GPC": "1"}, cookie_consent="1"), (True, True, "site_cookie+gpc")),
        (None, sig(cookie_consent="0"), (False, False, "site_cookie")),
        (None, sig(capi_consent_mode=CM_GRANTED), (True, False, "consent_mode")),
        (None, sig(**{"euconsent-v2": TC_1_7_755}), (True, False, "tcf_v2")),
        (None, sig(**{"euconsent-v2": TC_2_ONLY}), (False, False, "tcf_v2")),
        (None, sig(**{"euconsent-v2": "junk"}), (False, False, "no_signal")),
        # the site's own cookie outranks Consent Mode, which outranks TCF
        (None, sig(cookie_consent="0", capi_consent_mode=CM_GRANTED), DENY_SC),
        (None, sig(cookie_consent="1", capi_consent_mode=CM_DENIED), GRANT_SC),
        (None, sig(capi_consent_mode=CM_DENIED, **{"euconsent-v2": TC_1_7_755}), DENY_CM),
        (None, sig(cookie_consent="huh", **{"euconsent-v2": TC_1_7_755}), (True, False, "tcf_v2")),
        (True, sig(), (True, False, "not_required")),
        (True, sig({"Sec-GPC": "1"}), (True, True, "not_required+gpc")),
        (True, sig(cookie_consent="0"), (True, False, "not_required")),
        (False, sig(cookie_consent="1"), (False, False, "disabled")),
        (always_granted, sig(), (True, False, "always_granted")),
        (always_denied, sig(cookie_consent="1"), (False, False, "always_denied")),
        (no_opinion, sig(cookie_consent="1"), (False, False, "no_signal")),
        (lambda s: True, sig(), (True, False, "policy")),
        (lambda s: False, sig(), (False, False, "policy")),
        (lambda s: GRANTED, sig(), (True, False, "granted")),
        (lambda s: DENIED, sig(), (False, False, "denied")),
        (lambda s: s.header("x-consent") == "yes", sig({"X-CONSENT": "yes"}), POLICY_YES),
        (default_policy(), sig(), (False, False, "no_signal")),
    ],
)  # fmt: skip
def test_evaluate(policy: object, signals: Signals, expected: object) -> None:
    assert outcome(evaluate(policy, signals)) == expected  # type: ignore[arg-type]


def test_default_policy_denies_without_a_signal_on_its_own() -> None:
    assert outcome(default_policy()(Signals())) == (False, False, "no_signal")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING]


def test_raising_policy_is_denied_and_logged_once_without_request_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "jane.doe@example.com"

    def policy_that_raises_with_request_data(signals: Signals) -> bool:
        raise KeyError(signals.cookies["email"])

    signals = sig(email=secret)
    with caplog.at_level(logging.WARNING, logger="capi_middleware"):
        first = evaluate(policy_that_raises_with_request_data, signals)  # type: ignore[arg-type]
        second = evaluate(policy_that_raises_with_request_data, signals)  # type: ignore[arg-type]
    assert outcome(first) == outcome(second) == (False, False, "policy_error")
    records = _warnings(caplog)
    assert len(records) == 1
    message = records[0].getMessage()
    assert "policy_that_raises_with_request_data" in message
    assert "KeyError" in message
    assert secret not in message
    assert records[0].exc_info is None  # no traceback: exception text may quote request data


def test_policy_returning_an_unsupported_value_is_denied_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def policy_returning_a_string(signals: Signals) -> str:
        return "yes"

    with caplog.at_level(logging.WARNING, logger="capi_middleware"):
        decision = evaluate(policy_returning_a_string, Signals())  # type: ignore[arg-type]
    assert outcome(decision) == (False, False, "policy_error")
    assert "returned an unsupported str" in _warnings(caplog)[0].getMessage()


class BrokenSignals:
    """A signals object whose every read fails (a half-built context, say)."""

    @property
    def cookies(self) -> Mapping[str, str]:
        raise RuntimeError("no cookies")

    def header(self, name: str) -> str | None:
        raise RuntimeError("no headers")


@pytest.mark.parametrize("policy", [None, True, False, always_granted])
def test_evaluate_never_raises_on_broken_signals(policy: object) -> None:
    decision = evaluate(policy, BrokenSignals())  # type: ignore[arg-type]
    assert isinstance(decision, ConsentDecision)
    if policy is None:
        assert outcome(decision) == (False, False, "policy_error")


# -- hostile input --------------------------------------------------------------------------

HOSTILE = [
    "x" * 10_240,
    "1" * 10_240,
    "C" + "A" * 10_239,
    "C" + "_" * 10_239,
    "%" * 10_240,
    "%ZZ%",
    "%FF%FE",
    "\x00\x01\x02",
    "é" * 4000,
    "🍪" * 2000,
    "ad_storage=🍪&ad_user_data=\u202e",
    "{" * 4000,
    '{"a":' + "[" * 4000,
    '{"marketing":' * 800,
    "," * 4000,
    ":" * 4000,
    "=" * 4000,
    "marketing:1," * 340,
    '"',
    '""',
    " ",
]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_cookie_values_never_raise(value: str) -> None:
    cookies = {
        "cookie_consent": value,
        "capi_consent_mode": value,
        "euconsent-v2": value,
        "CookieConsent": value,
    }
    signals = Signals(cookies=cookies, headers={"Sec-GPC": value, "X-Consent-Mode": value})
    policies = [
        site_cookie(),
        site_cookie(category="marketing"),
        site_cookie("CookieConsent", category="marketing"),
        google_consent_mode(header="X-Consent-Mode"),
        tcf_v2(vendor_id=755),
        gpc_ldu(always_granted),
        default_policy(),
    ]
    for policy in policies:
        answer = policy(signals)
        assert answer is None or isinstance(answer, ConsentDecision)
        assert outcome(evaluate(policy, signals))[2] != "policy_error"  # type: ignore[index]
    assert isinstance(evaluate(None, signals), ConsentDecision)


def test_oversized_cookie_is_treated_as_absent() -> None:
    # Browsers keep at most ~4 KB per cookie: a longer "consent" value is not from a banner.
    long_yes = "1" + " " * 5000
    assert site_cookie()(with_cookie("cookie_consent", long_yes)) is None
    assert site_cookie()(with_cookie("cookie_consent", "1" + " " * 100)) is not None


# -- factory arguments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: site_cookie(""), "site_cookie name"),
        (lambda: site_cookie(granted="yes"), "site_cookie granted"),
        (lambda: site_cookie(denied=("no", "")), "site_cookie denied"),
        (lambda: site_cookie(granted=("yes",), denied=("YES",)), "both granted and denied"),
        (lambda: site_cookie(category=""), "site_cookie category"),
        (lambda: google_consent_mode(cookie=None, header=None), "google_consent_mode"),
        (lambda: google_consent_mode(cookie=" "), "google_consent_mode cookie"),
        (lambda: tcf_v2(purposes=()), "tcf_v2 purposes"),
        (lambda: tcf_v2(purposes=(0,)), "tcf_v2 purposes"),
        (lambda: tcf_v2(purposes=(25,)), "tcf_v2 purposes"),
        (lambda: tcf_v2(purposes=(True,)), "tcf_v2 purposes"),
        (lambda: tcf_v2(vendor_id=0), "tcf_v2 vendor_id"),
        (lambda: tcf_v2(vendor_id=65536), "tcf_v2 vendor_id"),
        (lambda: tcf_v2(cookie=""), "tcf_v2 cookie"),
        (lambda: first_of(), "first_of"),
        (lambda: all_of(G_A, "site_cookie"), "all_of"),
        (lambda: any_of(None), "any_of"),
        (lambda: gpc_ldu(True), "gpc_ldu"),
    ],
)
def test_bad_factory_arguments_name_the_parameter(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


def test_single_int_purpose_is_accepted() -> None:
    policy = tcf_v2(purposes=7)  # type: ignore[arg-type]
    assert outcome(policy(sig(**{"euconsent-v2": TC_1_7_755}))) == (True, False, "tcf_v2")
