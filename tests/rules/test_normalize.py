"""Per-key normalization and hashing of user_data (META_CAPI_REFERENCE.md §3)."""

from __future__ import annotations

import datetime
import hashlib
import math
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import phonenumbers
import pytest

from capi_middleware.errors import Problem
from capi_middleware.normalize import (
    CLEAR_KEYS,
    DROP_REASONS,
    FRIENDLY_KEYS,
    HASHED_KEYS,
    DroppedValue,
    NormalizedUserData,
    is_sha256_hex,
    normalize_city,
    normalize_country,
    normalize_date_of_birth,
    normalize_email,
    normalize_external_id,
    normalize_gender,
    normalize_name,
    normalize_phone,
    normalize_state,
    normalize_user_data,
    normalize_zip,
    sha256_hex,
)

# Meta's documented examples ("Customer Information Parameters").
JOHN_SMITH_HASH = "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
US_HASH = "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"


def h(value: str) -> str:
    """Independent SHA-256 for expectations (not the code under test)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


# -- the key sets ---------------------------------------------------------------------------


def test_key_sets_match_the_reference() -> None:
    assert HASHED_KEYS == (
        "em",
        "ph",
        "fn",
        "ln",
        "ge",
        "db",
        "ct",
        "st",
        "zp",
        "country",
        "external_id",
    )
    assert set(CLEAR_KEYS) == {
        "client_ip_address",
        "client_user_agent",
        "fbc",
        "fbp",
        "subscription_id",
        "fb_login_id",
        "lead_id",
        "anon_id",
        "madid",
        "page_id",
        "page_scoped_user_id",
        "ctwa_clid",
        "ig_account_id",
        "ig_sid",
    }
    assert not set(HASHED_KEYS) & set(CLEAR_KEYS)
    assert set(FRIENDLY_KEYS.values()) <= set(HASHED_KEYS)


# -- hashing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "digest"),
    [
        ("john_smith@gmail.com", JOHN_SMITH_HASH),
        ("us", US_HASH),
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("valéry", h("valéry")),
    ],
)
def test_sha256_hex(value: str, digest: str) -> None:
    assert sha256_hex(value) == digest


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (JOHN_SMITH_HASH, True),
        (JOHN_SMITH_HASH.upper(), True),
        (JOHN_SMITH_HASH[:63], False),
        (JOHN_SMITH_HASH + "0", False),
        ("g" * 64, False),
        ("0" * 64, True),
        ("", False),
        (" " + JOHN_SMITH_HASH[:63], False),
    ],
)
def test_is_sha256_hex(value: str, expected: bool) -> None:
    assert is_sha256_hex(value) is expected


# -- em --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" John_Smith@gmail.com ", "john_smith@gmail.com"),
        ("JOHN@EXAMPLE.COM", "john@example.com"),
        ("first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk"),
        ("a@b.co", "a@b.co"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("user@my-domain.com", "user@my-domain.com"),
        ("user@123.example.com", "user@123.example.com"),
        ("\tuser@example.com\n", "user@example.com"),
        ("Müller@Bücher.de", "müller@bücher.de"),
        ("a@b", None),
        ("a@b.", None),
        ("@example.com", None),
        ("john@", None),
        ("john", None),
        ("john@@example.com", None),
        ("jo hn@example.com", None),
        ("john@exa mple.com", None),
        ("john@-example.com", None),
        ("john@example-.com", None),
        ("john@example..com", None),
        ("john@example.c0m1", "john@example.c0m1"),
        ("john@example.123", None),
        ("john@ex_ample.com", None),
        ("jo\x00hn@example.com", None),
        ("x" * 65 + "@example.com", None),
        ("", None),
        ("   ", None),
        (None, None),
        (42, None),
        (["john@example.com"], None),
    ],
)
def test_normalize_email(value: object, expected: str | None) -> None:
    assert normalize_email(value) == expected


# -- ph --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "country", "expected"),
    [
        ("+1 (616) 954-78 88", None, "16169547888"),
        ("+1 (616) 954-78 88", "GB", "16169547888"),  # the + wins over any country
        ("+1.616.954.7888", None, "16169547888"),
        ("+44 7700 900123", None, "447700900123"),
        ("+44 (0) 7700 900123", None, "447700900123"),  # "(0)" is a trunk prefix, not a digit
        ("+44 (0)7700 900123", "GB", "447700900123"),
        ("07700 900123", "GB", "447700900123"),
        ("07700 900123", "gb", "447700900123"),
        ("07700 900123", "United Kingdom", "447700900123"),
        ("07700 900123", None, None),  # national, no country known: no country code
        ("(616) 954-7888", None, None),
        ("616-954-7888", None, None),
        ("6169547888", None, None),
        (6169547888, None, None),
        ("016169547888", None, None),  # a trunk 0 marks a national number
        ("011 44 7700 900123", None, None),  # 011 is only the US exit code when in the US
        ("16169547888", None, "16169547888"),  # digits that read as +1 616...: has its code
        ("1 (616) 954-7888", None, "16169547888"),
        ("447911123456", None, "447911123456"),
        ("+001 (616) 954-78 88", None, "16169547888"),  # + then zeros: a call prefix (§3)
        ("+0044 20 7946 0958", None, "442079460958"),
        ("+0044 20 7946 0958", "US", "442079460958"),
        ("+01 616 954 7888", None, "16169547888"),
        ("+00", None, None),
        ("0044 7700 900123", None, "447700900123"),
        ("0044 7700 900123", "GB", "447700900123"),
        ("011 44 7700 900123", "US", "447700900123"),
        ("447700900123", "GB", "447700900123"),
        ("(616) 954-7888", "US", "16169547888"),
        ("616-954-7888", "us", "16169547888"),
        ("6169547888", "CA", "16169547888"),
        ("1 616 954 7888", "US", "16169547888"),
        ("16169547888", "US", "16169547888"),
        (16169547888, None, "16169547888"),
        (6169547888, "US", "16169547888"),
        ("616-954-7888 ext. 123", "US", "16169547888"),
        ("+1 616 954 7888 x12", None, "16169547888"),
        ("1-800-FLOWERS", "US", "18003569377"),
        ("06 1234 5678", "IT", "390612345678"),  # Italy keeps its leading 0
        ("0170 1234567", "DE", "491701234567"),
        ("06 12 34 56 78", "FR", "33612345678"),
        ("+33 6 12 34 56 78", None, "33612345678"),
        ("(0)6-12.34.56.78", "FR", "33612345678"),
        ("12345", None, None),  # too short
        ("123456", "US", None),
        ("+1234567890123456", None, None),  # 16 digits: past E.164's 15
        ("", None, None),
        ("   ", "US", None),
        ("no digits here", None, None),
        ("--()--", "US", None),
        ("0000000", None, None),
        (True, None, None),
        (1.5e10, None, None),
        ({"number": "6169547888"}, None, None),
    ],
)
def test_normalize_phone(value: object, country: str | None, expected: str | None) -> None:
    assert normalize_phone(value, country) == expected


@pytest.mark.parametrize(
    ("value", "region"),
    [
        ("(616) 954-7888", "US"),
        ("616.954.7888", "US"),
        ("1 (212) 555-0100", "US"),
        ("(416) 555-0199", "CA"),
        ("+1 (616) 954-78 88", "US"),
        ("+44 7700 900123", "GB"),
        ("+49 170 1234567", "DE"),
        ("+33 6 12 34 56 78", "FR"),
        ("+81 90-1234-5678", "JP"),
        ("+55 11 98765-4321", "BR"),
        ("+91 98765 43210", "IN"),
    ],
)
def test_phone_fast_paths_agree_with_libphonenumber(value: str, region: str) -> None:
    # The '+' and US/CA shortcuts skip phonenumbers; they must give its exact answer.
    expected = phonenumbers.format_number(
        phonenumbers.parse(value, region), phonenumbers.PhoneNumberFormat.E164
    )[1:]
    assert normalize_phone(value, region) == expected


# -- fn / ln / ct ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("John", "john"),
        ("  JOHN  ", "john"),
        ("Valéry", "valéry"),
        ("Vale\u0301ry", "valéry"),  # decomposed é is composed (NFC) before hashing
        ("Mary-Jane", "maryjane"),
        ("O'Brien", "obrien"),
        ("Jean Paul", "jeanpaul"),
        ("Smith Jr.", "smithjr"),
        ("John3", "john3"),  # §3: names keep digits
        ("John2", "john2"),
        ("Louis XIV 2nd", "louisxiv2nd"),
        ("J0hn", "j0hn"),
        ("Anne-Marie 3", "annemarie3"),
        ("٣أحمد", "٣أحمد"),  # Arabic-Indic digit: a decimal digit too
        ("Zoë ❤️", "zoë"),  # emoji and their variation selector go whole
        ("Zoë\ufe0f", "zoë"),
        ("Jo👍🏽hn", "john"),  # skin-tone modifier with its emoji
        ("Ann 👨\u200d👩\u200d👧", "ann"),  # zero-width joiners with the family
        ("Team 1️⃣", "team"),  # a keycap takes its digit along: never half an emoji
        ("Agent 0\u20e37", "agent7"),
        ("🇫🇷 Marie", "marie"),  # flags are regional indicators
        ("Иван", "иван"),
        ("Ωμέγα", "ωμέγα"),
        ("李", "李"),
        ("محمد", "محمد"),
        ("ZOË", "zoë"),
        ("😀", None),
        ("123", "123"),
        ("-.'", None),
        ("❤️", None),
        ("\u0301", None),  # a mark with no letter before it
        ("", None),
        (None, None),
        (7, None),
    ],
)
def test_normalize_name(value: object, expected: str | None) -> None:
    assert normalize_name(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("New York", "newyork"),
        ("  san francisco ", "sanfrancisco"),
        ("St. Louis", "stlouis"),
        ("Winston-Salem", "winstonsalem"),
        ("São Paulo", "sãopaulo"),
        ("Zürich", "zürich"),
        ("München 80331", "münchen"),
        ("東京", "東京"),
        ("Paris ❤️", "paris"),  # not "paris\ufe0f"
        ("Paris\ufe0e", "paris"),
        ("São Paulo 🇧🇷", "sãopaulo"),
        ("Berlin 👋🏼", "berlin"),
        ("Köln 1️⃣", "köln"),
        ("New York 2", "newyork"),
        ("12345", None),
        ("", None),
    ],
)
def test_normalize_city(value: object, expected: str | None) -> None:
    assert normalize_city(value) == expected


# -- st --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "country", "expected"),
    [
        ("California", None, "ca"),
        ("california", "US", "ca"),
        ("CA", "US", "ca"),
        ("ca", None, "ca"),
        ("N.Y.", None, "ny"),
        ("New York", "us", "ny"),
        ("new york", "United States", "ny"),
        ("District of Columbia", "US", "dc"),
        ("Washington DC", "US", "dc"),
        ("Puerto Rico", None, "pr"),
        ("Ontario", None, "on"),
        ("ONTARIO", "CA", "on"),
        ("Québec", "CA", "qc"),
        ("Quebec", None, "qc"),
        ("British Columbia", "Canada", "bc"),
        ("BC", "CA", "bc"),
        ("Bavaria", "DE", "bavaria"),
        ("Île-de-France", "FR", "îledefrance"),
        ("NSW", "AU", "nsw"),
        ("Narnia", "US", "narnia"),  # unknown in the tables: letters only
        ("Texas", "MX", "texas"),  # outside US/CA no mapping
        ("", None, None),
        ("12", "US", None),
        (None, "US", None),
    ],
)
def test_normalize_state(value: object, country: str | None, expected: str | None) -> None:
    assert normalize_state(value, country) == expected


# -- zp --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "country", "expected"),
    [
        ("94035-1234", None, "94035"),
        ("94035-1234", "US", "94035"),
        ("940351234", "us", "94035"),
        ("94035", None, "94035"),
        (" 02134 ", "US", "02134"),
        (2134, "US", "02134"),  # an int lost its leading zero
        (94035, None, "94035"),
        ("SW1A 1AA", None, "sw1a1aa"),
        ("SW1A 1AA", "GB", "sw1a1aa"),
        ("K1A 0B1", "CA", "k1a0b1"),
        ("75008", "FR", "75008"),
        ("1234-567", "PT", "1234567"),
        ("100-0001", "JP", "1000001"),
        ("9403", "US", None),  # not a US ZIP
        ("1", None, None),  # §3: fewer than 2 characters is no postal code
        ("A", "GB", None),
        (" 7- ", "DE", None),
        (7, None, None),
        ("12", "IE", "12"),
        ("D6", None, "d6"),
        ("ABCDE", "US", None),
        ("", None, None),
        (" - ", None, None),
        ("1" * 17, "DE", None),
        (None, None, None),
        (1.0, None, None),
    ],
)
def test_normalize_zip(value: object, country: str | None, expected: str | None) -> None:
    assert normalize_zip(value, country) == expected


# -- country ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("US", "us"),
        ("us", "us"),
        ("USA", "us"),
        ("U.S.A.", "us"),
        ("United States", "us"),
        ("united states of america", "us"),
        ("Germany", "de"),
        ("germany", "de"),
        ("DEU", "de"),
        ("de", "de"),
        ("Deutschland", "de"),
        ("UK", "gb"),
        ("England", "gb"),
        ("United Kingdom", "gb"),
        ("GBR", "gb"),
        ("France", "fr"),
        ("Côte d'Ivoire", "ci"),
        ("South Korea", "kr"),
        ("Korea, Republic of", "kr"),
        ("Türkiye", "tr"),
        ("Turkey", "tr"),
        ("Netherlands", "nl"),
        ("The Netherlands", "nl"),
        (" ca ", "ca"),
        ("Narnia", None),
        ("XX", None),
        ("ZZZ", None),
        ("", None),
        (None, None),
        (1, None),
    ],
)
def test_normalize_country(value: object, expected: str | None) -> None:
    assert normalize_country(value) == expected


@pytest.mark.parametrize("value", ["United States", "USA", "US", "us", "u.s.a."])
def test_country_hash_matches_metas_example(value: str) -> None:
    assert normalize_user_data({"country": value}).data == {"country": [US_HASH]}


# -- db --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1997-02-16", "19970216"),
        ("1997-2-6", "19970206"),
        ("19970216", "19970216"),
        (19970216, "19970216"),
        ("2/16/1997", "19970216"),
        ("02/16/1997", "19970216"),
        ("2/6/1997", "19970206"),  # ambiguous: US order, February 6
        ("06/02/1997", "19970602"),  # ambiguous: US order, June 2
        ("16/02/1997", "19970216"),  # 16 > 12: day first
        ("2-16-1997", "19970216"),
        ("16.02.1997", "19970216"),
        ("1997/02/16", "19970216"),
        ("1997-02-16T08:30:00Z", "19970216"),
        (" 1997-02-16 ", "19970216"),
        (datetime.date(1997, 2, 16), "19970216"),
        (datetime.datetime(1997, 2, 16, 23, 59), "19970216"),
        ("2000-02-29", "20000229"),
        ("1900-01-01", "19000101"),
        ("1999-02-29", None),  # not a leap year
        ("1997-13-01", None),
        ("1997-02-30", None),
        ("13/13/1997", None),
        ("1899-12-31", None),
        (datetime.date(1850, 1, 1), None),
        ("2999-01-01", None),
        (datetime.date.today() + datetime.timedelta(days=1), None),
        ("16 Feb 1997", None),
        ("yesterday", None),
        ("", None),
        (None, None),
        (1997.0, None),
    ],
)
def test_normalize_date_of_birth(value: object, expected: str | None) -> None:
    assert normalize_date_of_birth(value) == expected


# -- ge --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("f", "f"),
        ("F", "f"),
        ("m", "m"),
        (" M ", "m"),
        ("female", "f"),
        ("Female", "f"),
        ("MALE", "m"),
        ("male ", "m"),
        ("x", None),
        ("woman", None),
        ("", None),
        (None, None),
        (True, None),
        (0, None),
    ],
)
def test_normalize_gender(value: object, expected: str | None) -> None:
    assert normalize_gender(value) == expected


# -- external_id -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("  ABC-123 ", "abc-123"),
        ("user 123 id", "user123id"),  # §3: whitespace inside goes, as in the pixel
        (" User  123\u00a0ID ", "user123id"),
        ("a\u3000b", "ab"),
        ("user_42", "user_42"),
        (12345, "12345"),
        ("E2C1B1B8-3C34-4A4C-9F1F-000000000000", "e2c1b1b8-3c34-4a4c-9f1f-000000000000"),
        ("", None),
        ("  ", None),
        ("a\x00b", None),
        (-5, None),
        (None, None),
        (False, None),
        ({"id": 1}, None),
    ],
)
def test_normalize_external_id(value: object, expected: str | None) -> None:
    assert normalize_external_id(value) == expected


# -- normalize_user_data -----------------------------------------------------------------------


def fields(result: NormalizedUserData) -> list[str]:
    return [p.field for p in result.problems]


def drops(result: NormalizedUserData) -> list[DroppedValue]:
    found = [p for p in result.problems if isinstance(p, DroppedValue)]
    assert len(found) == len(result.problems), "every problem here is a dropped value"
    return found


def test_metas_email_example_from_a_friendly_key() -> None:
    result = normalize_user_data({"email": " John_Smith@gmail.com "})
    assert result.data == {"em": [JOHN_SMITH_HASH]}
    assert result.problems == ()


@pytest.mark.parametrize(
    ("friendly", "meta", "value", "normalized"),
    [
        ("email", "em", "John@Example.com", "john@example.com"),
        ("phone", "ph", "+1 616 954 7888", "16169547888"),
        ("first_name", "fn", "Valéry", "valéry"),
        ("last_name", "ln", "Mary-Jane", "maryjane"),
        ("gender", "ge", "Female", "f"),
        ("date_of_birth", "db", "2/16/1997", "19970216"),
        ("city", "ct", "New York", "newyork"),
        ("state", "st", "California", "ca"),
        ("zip", "zp", "94035-1234", "94035"),
        ("zip_code", "zp", "94035", "94035"),
        ("postal_code", "zp", "SW1A 1AA", "sw1a1aa"),
        ("country", "country", "USA", "us"),
        ("external_id", "external_id", " CRM-7 ", "crm-7"),
        ("em", "em", "John@Example.com", "john@example.com"),
        ("ph", "ph", "16169547888", "16169547888"),
        ("fn", "fn", "JOHN", "john"),
        ("ln", "ln", "Smith", "smith"),
        ("ge", "ge", "m", "m"),
        ("db", "db", "19970216", "19970216"),
        ("ct", "ct", "Paris", "paris"),
        ("st", "st", "N.Y.", "ny"),
        ("zp", "zp", "10001", "10001"),
        ("Email", "em", "a@example.com", "a@example.com"),  # key case is forgiven
    ],
)
def test_every_key_spelling_is_normalized_and_hashed(
    friendly: str, meta: str, value: str, normalized: str
) -> None:
    result = normalize_user_data({friendly: value})
    assert result.data == {meta: [h(normalized)]}
    assert result.problems == ()


def test_a_typical_user_data_mapping() -> None:
    result = normalize_user_data(
        {
            "email": " John_Smith@gmail.com ",
            "phone": "(616) 954-7888",
            "first_name": "John",
            "last_name": "Smith",
            "city": "New York",
            "state": "New York",
            "zip": "10001-1234",
            "country": "United States",
            "client_ip_address": " 203.0.113.7 ",
            "client_user_agent": "Mozilla/5.0",
            "fbc": "fb.1.1554763741205.AbCdEf",
            "fbp": "fb.1.1558571054389.1098115397",
        }
    )
    assert result.problems == ()
    assert result.data == {
        "em": [JOHN_SMITH_HASH],
        "ph": [h("16169547888")],
        "fn": [h("john")],
        "ln": [h("smith")],
        "ct": [h("newyork")],
        "st": [h("ny")],
        "zp": [h("10001")],
        "country": [US_HASH],
        "client_ip_address": "203.0.113.7",
        "client_user_agent": "Mozilla/5.0",
        "fbc": "fb.1.1554763741205.AbCdEf",
        "fbp": "fb.1.1558571054389.1098115397",
    }
    for key in HASHED_KEYS:
        for digest in result.data.get(key, []):
            assert len(digest) == 64
            assert digest == digest.lower()
            assert all(c in "0123456789abcdef" for c in digest)


def test_lists_deduplicate_after_normalization_and_keep_order() -> None:
    result = normalize_user_data(
        {
            "email": ["B@example.com", " b@example.com", "a@example.com", "", "B@EXAMPLE.COM"],
            "em": "a@example.com",
            "phone": ("+1 616 954 7888", "16169547888", "+44 7700 900123"),
        }
    )
    assert result.data["em"] == [h("b@example.com"), h("a@example.com")]
    assert result.data["ph"] == [h("16169547888"), h("447700900123")]
    assert fields(result) == ["user_data.em[3]"]  # the empty one


def test_none_values_and_empty_lists_are_absent_not_problems() -> None:
    result = normalize_user_data({"email": None, "phone": [], "fbc": None, "fn": [None]})
    assert result.data == {}
    assert result.problems == ()


def test_already_hashed_values_are_lowercased_never_rehashed() -> None:
    upper = JOHN_SMITH_HASH.upper()
    result = normalize_user_data(
        {
            "em": [f"  {upper} ", "john_smith@gmail.com"],
            "ph": h("16169547888"),
            "zp": upper,
            "external_id": upper,
        }
    )
    assert result.data == {
        "em": [JOHN_SMITH_HASH],  # the hash and its plain value collapse into one
        "ph": [h("16169547888")],
        "zp": [JOHN_SMITH_HASH],
        "external_id": [JOHN_SMITH_HASH],
    }
    assert result.problems == ()


@pytest.mark.parametrize("key", CLEAR_KEYS)
def test_clear_keys_pass_through_stripped_never_hashed(key: str) -> None:
    result = normalize_user_data({key: "  Value-1.2.AbC  "})
    assert result.data == {key: "Value-1.2.AbC"}
    assert result.problems == ()


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("client_ip_address", "", "empty"),
        ("client_user_agent", "   ", "empty"),
        ("fbc", 12345, "expected a string, got int"),
        ("fbp", ["fb.1.2.3"], "single string"),
        ("client_user_agent", {"ua": "x"}, "got dict"),
        ("client_ip_address", b"203.0.113.7", "got bytes"),
        ("fbc", True, "got bool"),
        ("client_user_agent", "Mozilla\x00/5.0", "control characters"),
        ("client_user_agent", "M" * 3000, "longer than 2048"),
        ("fbc", "f" * 2000, "longer than 1024"),
    ],
)
def test_bad_clear_values_are_dropped_with_a_problem(key: str, value: object, reason: str) -> None:
    result = normalize_user_data({key: value})
    assert result.data == {}
    (problem,) = result.problems
    assert problem.field == f"user_data.{key}"
    assert reason in problem.message
    assert problem.fatal is False


@pytest.mark.parametrize("key", ["lead_id", "page_id", "subscription_id", "ig_account_id"])
def test_numeric_id_clear_keys_accept_ints(key: str) -> None:
    assert normalize_user_data({key: 1234567890}).data == {key: "1234567890"}


def test_problems_name_the_field_and_index_and_never_the_value() -> None:
    secrets = ["a@b", "jane.doe@@example.com", "12345", "Narnia", "13/13/1997", "xyzzy"]
    result = normalize_user_data(
        {
            "email": ["ok@example.com", secrets[0], secrets[1]],
            "ph": secrets[2],
            "country": secrets[3],
            "date_of_birth": secrets[4],
            "gender": secrets[5],
        }
    )
    assert result.data == {"em": [h("ok@example.com")]}
    assert fields(result) == [
        "user_data.em[1]",
        "user_data.em[2]",
        "user_data.ph",
        "user_data.country",
        "user_data.db",
        "user_data.ge",
    ]
    assert "given as 'email'" in result.problems[0].message
    for problem in result.problems:
        assert isinstance(problem, Problem)
        assert problem.fatal is False
        for secret in secrets:
            assert secret not in problem.message
            assert secret not in str(problem)
            assert secret not in repr(problem)


def test_unknown_keys_are_dropped_with_a_hint() -> None:
    result = normalize_user_data({"emial": "x@example.com", "favourite_colour": "blue", 7: "x"})
    assert result.data == {}
    # Only a near miss of our names is shown by its text (issue 10).
    assert fields(result) == ["user_data.emial", "user_data[?]", "user_data[?]"]
    assert "did you mean 'email'" in result.problems[0].message
    assert "x@example.com" not in str(result.problems)
    assert "blue" not in str(result.problems)


def test_a_long_unknown_key_is_shortened_in_the_problem() -> None:
    result = normalize_user_data({"k" * 5000: "v"})
    (problem,) = result.problems
    assert len(problem.field) < 80


def test_the_events_country_completes_phones_states_and_zips() -> None:
    gb = normalize_user_data({"phone": "07700 900123", "country": "GB", "zip": "SW1A 1AA"})
    assert gb.data["ph"] == [h("447700900123")]
    assert gb.data["zp"] == [h("sw1a1aa")]
    us = normalize_user_data({"phone": "616-954-7888", "country": ["USA"], "zip": 2134})
    assert us.data["ph"] == [h("16169547888")]
    assert us.data["zp"] == [h("02134")]
    assert us.data["country"] == [US_HASH]
    mx = normalize_user_data({"state": "Texas", "country": "Mexico"})
    assert mx.data["st"] == [h("texas")]


def test_default_country_applies_only_when_the_event_has_none() -> None:
    default = normalize_user_data({"phone": "07700 900123"}, default_country="GB")
    assert default.data == {"ph": [h("447700900123")]}  # and no country key is invented
    own = normalize_user_data({"phone": "06 12 34 56 78", "country": "FR"}, default_country="GB")
    assert own.data["ph"] == [h("33612345678")]
    hashed_country = normalize_user_data(
        {"phone": "07700 900123", "country": US_HASH}, default_country="gb"
    )
    assert hashed_country.data["ph"] == [h("447700900123")]
    nothing = normalize_user_data({"phone": "07700 900123"})
    assert nothing.data == {}  # no country: never hashed without its calling code
    assert [(p.key, p.reason) for p in drops(nothing)] == [("ph", "no country code")]
    bad_default = normalize_user_data({"phone": "07700 900123"}, default_country="Narnia")
    assert bad_default.data == {}
    assert [(p.key, p.reason) for p in drops(bad_default)] == [("ph", "no country code")]


def test_external_id_hashed_by_default_and_clear_when_asked() -> None:
    value = {"external_id": [" User-42 ", "user-42", 7, JOHN_SMITH_HASH.upper()]}
    hashed = normalize_user_data(value)
    assert hashed.data == {"external_id": [h("user-42"), h("7"), JOHN_SMITH_HASH]}
    clear = normalize_user_data(value, hash_external_id=False)
    assert clear.data == {"external_id": ["User-42", "user-42", "7", JOHN_SMITH_HASH.upper()]}
    assert clear.problems == ()


class BrokenMapping(Mapping[str, Any]):
    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        return 1


@pytest.mark.parametrize("user_data", [BrokenMapping(), None, ["email"], "email"])
def test_an_unreadable_mapping_is_a_problem_not_an_exception(user_data: Any) -> None:
    result = normalize_user_data(user_data)
    assert result.data == {}
    assert [p.field for p in result.problems] == ["user_data"]


# -- hostile input ---------------------------------------------------------------------------

HOSTILE: list[tuple[str, object]] = [
    ("empty", ""),
    ("whitespace", " \t\n "),
    ("emoji", "😀🎉🔥"),
    ("30 KB", "A" * 30_000 + "@example.com"),
    ("NUL bytes", "jo\x00hn@exa\x00mple.com"),
    ("lone surrogate", "john\ud800@example.com"),
    ("surrogate only", "\udfff"),
    ("dict", {"email": "john@example.com"}),
    ("NaN", math.nan),
    ("inf", math.inf),
    ("bytes", b"john@example.com"),
    ("object", object()),
    ("bool", True),
    ("set", {"john@example.com"}),
    ("nested list", [["john@example.com"]]),
    ("RTL override", "\u202ejohn@example.com"),
    ("zero width", "\u200b\u200b"),
    ("huge int", 10**400),
]


@pytest.mark.parametrize("key", [*HASHED_KEYS, "client_user_agent", "fbc"])
@pytest.mark.parametrize(("label", "value"), HOSTILE, ids=[label for label, _ in HOSTILE])
def test_hostile_values_never_raise_and_never_leak(key: str, label: str, value: object) -> None:
    result = normalize_user_data({key: value, "client_ip_address": "203.0.113.7"})
    assert result.data["client_ip_address"] == "203.0.113.7"
    for digests in (v for k, v in result.data.items() if k in HASHED_KEYS):
        assert all(is_sha256_hex(d) and d == d.lower() for d in digests)
    for problem in result.problems:
        assert problem.fatal is False
        assert problem.field.startswith(f"user_data.{key}")
        if isinstance(value, str) and len(value.strip()) > 2:
            assert value.strip() not in problem.message
        assert len(problem.message) < 200
    if key in HASHED_KEYS and label in ("empty", "whitespace", "dict", "NaN", "object", "bool"):
        assert key not in result.data
        assert result.problems, "a dropped value is reported"


@pytest.mark.parametrize(
    "fn",
    [
        normalize_email,
        normalize_phone,
        normalize_name,
        normalize_city,
        normalize_state,
        normalize_zip,
        normalize_country,
        normalize_date_of_birth,
        normalize_gender,
        normalize_external_id,
    ],
)
def test_per_key_functions_return_none_for_hostile_input(fn: Callable[[object], Any]) -> None:
    for _, value in HOSTILE:
        result = fn(value)
        assert result is None or isinstance(result, str)
    for value in ("", " ", "\ud800", "x" * 30_000, {"a": 1}, math.nan, b"x", object()):
        assert fn(value) is None


def test_a_nan_or_surrogate_message_names_what_was_wrong() -> None:
    result = normalize_user_data({"fn": [math.nan, "ab\ud800"], "zp": "1" * 30_000})
    messages = {p.field: p.message for p in result.problems}
    assert "NaN" in messages["user_data.fn[0]"]
    assert "surrogate" in messages["user_data.fn[1]"]
    assert "longer than 256" in messages["user_data.zp"]


# -- why a value was dropped: one key and one stable reason per dropped value ----------------


@pytest.mark.parametrize(
    ("given", "value", "default_country", "key", "reason"),
    [
        ("email", "a@b", None, "em", "not an email"),
        ("em", "   ", None, "em", "empty"),
        ("em", "x" * 400, None, "em", "too long"),
        ("em", 42, None, "em", "not text"),
        ("phone", "(616) 954-7888", None, "ph", "no country code"),
        ("ph", "07700 900123", None, "ph", "no country code"),
        ("ph", "12345", "US", "ph", "too short"),
        ("ph", "no digits here", "US", "ph", "no digits"),
        ("ph", "+1234567890123456", None, "ph", "too many digits"),
        ("first_name", "😀", None, "fn", "no letters"),
        ("ln", "-.'", None, "ln", "no letters"),
        ("city", "12345", None, "ct", "no letters"),
        ("st", "12", "US", "st", "no letters"),
        ("zip", "1", None, "zp", "too short"),
        ("zp", "9403", "US", "zp", "not a US ZIP code"),
        ("zp", " - ", None, "zp", "empty"),
        ("country", "Narnia", None, "country", "unknown country"),
        ("date_of_birth", "13/13/1997", None, "db", "not a date"),
        ("db", "1899-12-31", None, "db", "date out of range"),
        ("db", "2999-01-01", None, "db", "date out of range"),
        ("gender", "x", None, "ge", "unknown gender"),
        ("external_id", "a\x00b", None, "external_id", "control characters"),
        ("fbc", 12345, None, "fbc", "not text"),
        ("fbp", ["fb.1.2.3"], None, "fbp", "not text"),
        ("client_user_agent", "M" * 3000, None, "client_user_agent", "too long"),
        ("client_ip_address", "", None, "client_ip_address", "empty"),
    ],
)
def test_every_dropped_value_names_its_key_and_a_stable_reason(
    given: str, value: object, default_country: str | None, key: str, reason: str
) -> None:
    result = normalize_user_data({given: value}, default_country=default_country)
    assert key not in result.data
    (dropped,) = drops(result)
    assert (dropped.key, dropped.reason) == (key, reason)
    assert reason in DROP_REASONS
    assert dropped.field == f"user_data.{key}"
    assert dropped.fatal is False
    assert isinstance(dropped, Problem)  # it travels wherever problems go


def test_reasons_of_values_in_a_list_are_counted_one_by_one() -> None:
    result = normalize_user_data(
        {"phone": ["(616) 954-7888", "+1 616 954 7888", "07700 900123", "1"], "email": "a@b"}
    )
    assert result.data["ph"] == [h("16169547888")]
    assert [(p.field, p.key, p.reason) for p in drops(result)] == [
        ("user_data.ph[0]", "ph", "no country code"),
        ("user_data.ph[2]", "ph", "no country code"),
        ("user_data.ph[3]", "ph", "too short"),
        ("user_data.em", "em", "not an email"),
    ]


def test_a_phone_without_country_code_says_how_to_fix_it() -> None:
    (dropped,) = drops(normalize_user_data({"phone": "(616) 954-7888"}))
    assert "country" in dropped.message
    assert "default_country" in dropped.message
    assert "616" not in dropped.message
    assert "616" not in repr(dropped)


def test_the_missing_country_code_is_logged_once_per_process_without_the_number() -> None:
    script = (
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stderr, level=logging.INFO, format='%(message)s')\n"
        "from capi_middleware.normalize import normalize_user_data\n"
        "normalize_user_data({'phone': '+1 616 954 7888'})\n"
        "normalize_user_data({'phone': '07700 900123'}, default_country='GB')\n"
        "print('no log yet', file=sys.stderr)\n"
        "for _ in range(3):\n"
        "    normalize_user_data({'phone': ['(616) 954-7888', '07700 900123']})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = proc.stderr.splitlines()
    assert lines[0] == "no log yet"
    assert len(lines) == 2
    assert "default_country" in lines[1]
    for digits in ("616", "954", "7888", "7700", "900123"):
        assert digits not in lines[1]


# -- country names (§3): ISO's, the common English ones, and the shops' own languages ---------

# Every ISO 3166-1 country by the name people commonly write in English (written from common
# usage, not from the code's sources: where ISO's or CLDR's spelling differs, this is the test).
ENGLISH_COMMON_NAMES = """
ad Andorra|ae United Arab Emirates|af Afghanistan|ag Antigua and Barbuda|ai Anguilla|al Albania
am Armenia|ao Angola|aq Antarctica|ar Argentina|as American Samoa|at Austria|au Australia
aw Aruba|ax Åland Islands|az Azerbaijan|ba Bosnia and Herzegovina|bb Barbados|bd Bangladesh
be Belgium|bf Burkina Faso|bg Bulgaria|bh Bahrain|bi Burundi|bj Benin|bl Saint Barthélemy
bm Bermuda|bn Brunei|bo Bolivia|bq Caribbean Netherlands|br Brazil|bs Bahamas|bt Bhutan
bv Bouvet Island|bw Botswana|by Belarus|bz Belize|ca Canada|cc Cocos (Keeling) Islands
cd Democratic Republic of the Congo|cf Central African Republic|cg Republic of the Congo
ch Switzerland|ci Ivory Coast|ck Cook Islands|cl Chile|cm Cameroon|cn China|co Colombia
cr Costa Rica|cu Cuba|cv Cape Verde|cw Curaçao|cx Christmas Island|cy Cyprus|cz Czech Republic
de Germany|dj Djibouti|dk Denmark|dm Dominica|do Dominican Republic|dz Algeria|ec Ecuador
ee Estonia|eg Egypt|eh Western Sahara|er Eritrea|es Spain|et Ethiopia|fi Finland|fj Fiji
fk Falkland Islands|fm Micronesia|fo Faroe Islands|fr France|ga Gabon|gb United Kingdom
gd Grenada|ge Georgia|gf French Guiana|gg Guernsey|gh Ghana|gi Gibraltar|gl Greenland
gm Gambia|gn Guinea|gp Guadeloupe|gq Equatorial Guinea|gr Greece
gs South Georgia and the South Sandwich Islands|gt Guatemala|gu Guam|gw Guinea-Bissau
gy Guyana|hk Hong Kong|hm Heard Island and McDonald Islands|hn Honduras|hr Croatia|ht Haiti
hu Hungary|id Indonesia|ie Ireland|il Israel|im Isle of Man|in India
io British Indian Ocean Territory|iq Iraq|ir Iran|is Iceland|it Italy|je Jersey|jm Jamaica
jo Jordan|jp Japan|ke Kenya|kg Kyrgyzstan|kh Cambodia|ki Kiribati|km Comoros
kn Saint Kitts and Nevis|kp North Korea|kr South Korea|kw Kuwait|ky Cayman Islands
kz Kazakhstan|la Laos|lb Lebanon|lc Saint Lucia|li Liechtenstein|lk Sri Lanka|lr Liberia
ls Lesotho|lt Lithuania|lu Luxembourg|lv Latvia|ly Libya|ma Morocco|mc Monaco|md Moldova
me Montenegro|mf Saint Martin|mg Madagascar|mh Marshall Islands|mk North Macedonia|ml Mali
mm Myanmar|mn Mongolia|mo Macau|mp Northern Mariana Islands|mq Martinique|mr Mauritania
ms Montserrat|mt Malta|mu Mauritius|mv Maldives|mw Malawi|mx Mexico|my Malaysia|mz Mozambique
na Namibia|nc New Caledonia|ne Niger|nf Norfolk Island|ng Nigeria|ni Nicaragua|nl Netherlands
no Norway|np Nepal|nr Nauru|nu Niue|nz New Zealand|om Oman|pa Panama|pe Peru
pf French Polynesia|pg Papua New Guinea|ph Philippines|pk Pakistan|pl Poland
pm Saint Pierre and Miquelon|pn Pitcairn Islands|pr Puerto Rico|ps Palestine|pt Portugal
pw Palau|py Paraguay|qa Qatar|re Réunion|ro Romania|rs Serbia|ru Russia|rw Rwanda
sa Saudi Arabia|sb Solomon Islands|sc Seychelles|sd Sudan|se Sweden|sg Singapore
sh Saint Helena|si Slovenia|sj Svalbard and Jan Mayen|sk Slovakia|sl Sierra Leone
sm San Marino|sn Senegal|so Somalia|sr Suriname|ss South Sudan|st São Tomé and Príncipe
sv El Salvador|sx Sint Maarten|sy Syria|sz Eswatini|tc Turks and Caicos Islands|td Chad
tf French Southern Territories|tg Togo|th Thailand|tj Tajikistan|tk Tokelau|tl East Timor
tm Turkmenistan|tn Tunisia|to Tonga|tr Turkey|tt Trinidad and Tobago|tv Tuvalu|tw Taiwan
tz Tanzania|ua Ukraine|ug Uganda|um United States Minor Outlying Islands|us United States
uy Uruguay|uz Uzbekistan|va Vatican City|vc Saint Vincent and the Grenadines|ve Venezuela
vg British Virgin Islands|vi U.S. Virgin Islands|vn Vietnam|vu Vanuatu|wf Wallis and Futuna
ws Samoa|ye Yemen|yt Mayotte|za South Africa|zm Zambia|zw Zimbabwe
"""
ENGLISH = [
    tuple(entry.strip().split(" ", 1))
    for entry in ENGLISH_COMMON_NAMES.replace("\n", "|").split("|")
    if entry.strip()
]


def test_the_english_table_names_every_iso_country_once() -> None:
    import pycountry

    codes = [code for code, _ in ENGLISH]
    assert len(codes) == len(set(codes))
    assert set(codes) == {c.alpha_2.lower() for c in pycountry.countries}


@pytest.mark.parametrize(("code", "name"), ENGLISH, ids=[code for code, _ in ENGLISH])
def test_every_country_by_its_english_common_name(code: str, name: str) -> None:
    assert normalize_country(name) == code
    assert normalize_country(name.upper()) == code
    assert normalize_country(code.upper()) == code


@pytest.mark.parametrize(
    ("name", "code"),
    [
        # Named in the reference (§3) as dropped before.
        ("Brunei", "bn"),
        ("Micronesia", "fm"),
        ("Democratic Republic of the Congo", "cd"),
        ("DR Congo", "cd"),
        ("North Macedonia", "mk"),
        ("Republic of North Macedonia", "mk"),
        ("Macedonia", "mk"),
        ("Ivory Coast", "ci"),
        ("Côte d\u2019Ivoire", "ci"),  # CLDR's apostrophe
        ("South Korea", "kr"),
        ("Russia", "ru"),
        ("Vietnam", "vn"),
        ("Viet Nam", "vn"),
        ("Türkiye", "tr"),
        ("Turkiye", "tr"),
        # ISO's own short and official names keep working.
        ("Korea, Republic of", "kr"),
        ("Bolivia, Plurinational State of", "bo"),
        ("Federal Republic of Germany", "de"),
        ("Congo, The Democratic Republic of the", "cd"),
        ("Congo", "cg"),
        # Everyday names.
        ("Great Britain", "gb"),
        ("England", "gb"),
        ("UK", "gb"),
        ("USA", "us"),
        ("United States of America", "us"),
        ("Holland", "nl"),
        ("Czechia", "cz"),
        ("Burma", "mm"),
        ("Swaziland", "sz"),
        ("Timor-Leste", "tl"),
        ("Cabo Verde", "cv"),
        ("Hong Kong SAR China", "hk"),
        ("Macao", "mo"),
        ("Palestinian Territories", "ps"),
        ("UAE", "ae"),
    ],
)
def test_common_country_names(name: str, code: str) -> None:
    assert normalize_country(name) == code


@pytest.mark.parametrize(
    ("name", "code"),
    [
        # German
        ("Deutschland", "de"),
        ("Österreich", "at"),
        ("Schweiz", "ch"),
        ("Vereinigte Staaten", "us"),
        ("Vereinigtes Königreich", "gb"),
        ("Frankreich", "fr"),
        ("Spanien", "es"),
        ("Italien", "it"),
        ("Niederlande", "nl"),
        ("Russland", "ru"),
        ("Südkorea", "kr"),
        ("Türkei", "tr"),
        ("Elfenbeinküste", "ci"),
        ("Tschechien", "cz"),
        ("Polen", "pl"),
        ("Griechenland", "gr"),
        ("Dänemark", "dk"),
        ("Schweden", "se"),
        ("Belgien", "be"),
        ("Ägypten", "eg"),
        ("Nordmazedonien", "mk"),
        ("Weißrussland", "by"),
        ("Vereinigte Arabische Emirate", "ae"),
        # French
        ("Allemagne", "de"),
        ("États-Unis", "us"),
        ("Etats-Unis", "us"),
        ("Royaume-Uni", "gb"),
        ("Espagne", "es"),
        ("Belgique", "be"),
        ("Suisse", "ch"),
        ("Pays-Bas", "nl"),
        ("Russie", "ru"),
        ("Corée du Sud", "kr"),
        ("Chine", "cn"),
        ("Maroc", "ma"),
        ("Algérie", "dz"),
        ("Sénégal", "sn"),
        ("Autriche", "at"),
        ("Irlande", "ie"),
        ("Grèce", "gr"),
        ("Pologne", "pl"),
        ("Turquie", "tr"),
        ("Brésil", "br"),
        ("Mexique", "mx"),
        ("Japon", "jp"),
        ("Tunisie", "tn"),
        ("Macédoine du Nord", "mk"),
        ("Royaume Uni", "gb"),
        # Spanish
        ("Alemania", "de"),
        ("Estados Unidos", "us"),
        ("Reino Unido", "gb"),
        ("España", "es"),
        ("Espana", "es"),
        ("Francia", "fr"),
        ("Italia", "it"),
        ("México", "mx"),
        ("Países Bajos", "nl"),
        ("Suiza", "ch"),
        ("Rusia", "ru"),
        ("Corea del Sur", "kr"),
        ("Brasil", "br"),
        ("Perú", "pe"),
        ("Japón", "jp"),
        ("Costa de Marfil", "ci"),
        ("Turquía", "tr"),
        ("Bélgica", "be"),
        ("Suecia", "se"),
        ("Noruega", "no"),
        ("Dinamarca", "dk"),
        ("Polonia", "pl"),
        ("Marruecos", "ma"),
        ("Emiratos Árabes Unidos", "ae"),
        ("Arabia Saudita", "sa"),
        ("República Democrática del Congo", "cd"),
    ],
)
def test_country_names_in_german_french_and_spanish(name: str, code: str) -> None:
    assert normalize_country(name) == code


def test_country_names_hash_as_their_code() -> None:
    result = normalize_user_data({"country": ["Vereinigte Staaten", "Estados Unidos", "us"]})
    assert result.data == {"country": [US_HASH]}


def test_country_names_answer_alike_in_any_order_and_from_any_thread() -> None:
    # A fresh process, so the names load as these lookups need them: each answer must be the one
    # the tables above expect, whatever was looked up first and from however many threads.
    script = (
        "import sys, threading\n"
        "from capi_middleware.normalize import normalize_country\n"
        "names = sys.argv[1].split('|')\n"
        "expected = sys.argv[2].split('|')\n"
        "answers = {}\n"
        "def look(start):\n"
        "    for i in range(len(names)):\n"
        "        j = (start + i) % len(names)\n"
        "        answers.setdefault(j, set()).add(normalize_country(names[j]))\n"
        "threads = [threading.Thread(target=look, args=(k,)) for k in range(8)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "got = [answers[j] for j in range(len(names))]\n"
        "assert got == [{e or None} for e in expected], (got, expected)\n"
    )
    pairs = [
        ("Kongo", "cg"),  # Polish (CG) before Norwegian (CD), whichever is asked first
        ("Narnia", ""),
        ("Deutschland", "de"),
        ("Vereinigte Staaten", "us"),
        ("Corée du Sud", "kr"),
        ("Rusia", "ru"),
        ("Germany", "de"),
        ("DEU", "de"),
        ("us", "us"),
        ("Ivory Coast", "ci"),
    ]
    for ordered in (pairs, pairs[::-1]):
        subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                "|".join(n for n, _ in ordered),
                "|".join(c for _, c in ordered),
            ],
            check=True,
            timeout=120,
        )


def test_a_dropped_value_is_never_fatal_by_default_and_names_no_value() -> None:
    dropped = DroppedValue(
        "user_data.ph", "no country code; dropped", key="ph", reason="no country code"
    )
    assert dropped.fatal is False
    assert str(dropped) == "user_data.ph: no country code; dropped"
