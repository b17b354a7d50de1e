"""The signed enhancement cookie: round trip, tampering, expiry, and what it may hold."""

from __future__ import annotations

from typing import Any

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from capi_middleware.normalize import sha256_hex
from capi_middleware.rules.enhancement import (
    ENHANCEMENT_COOKIE,
    ENHANCEMENT_MAX_AGE,
    MAX_VALUES_PER_KEY,
    EnhancementCookie,
    remembered_from_user_data,
)

SECRET = "test-enhancement-secret"
EM = sha256_hex("john_smith@gmail.com")
PH = sha256_hex("16169547888")
XID = sha256_hex("user-42")


def test_round_trip() -> None:
    codec = EnhancementCookie(SECRET)
    value = codec.dump({"em": [EM], "ph": (PH,), "external_id": [XID]})
    assert codec.load(value) == {"em": (EM,), "ph": (PH,), "external_id": (XID,)}
    # Cookie-safe characters only: no quoting needed, nothing to inject.
    assert all(c.isalnum() or c in "-_." for c in value)


def _flip_signature(value: str) -> str:
    head, _, signature = value.rpartition(".")
    return f"{head}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"


@pytest.mark.parametrize(
    "mangle",
    [
        # The signature's first character: its last one may only carry base64 padding bits.
        lambda v: _flip_signature(v),
        lambda v: "x" + v,  # payload altered
        lambda v: v.split(".")[0],  # signature removed
        lambda v: "",
        lambda v: "not.a.cookie",
        lambda v: v + "." * 3000,  # oversized
    ],
)
def test_tampered_cookie_is_ignored(mangle: Any) -> None:
    codec = EnhancementCookie(SECRET)
    assert codec.load(mangle(codec.dump({"em": [EM]}))) == {}


def test_other_secret_is_ignored() -> None:
    value = EnhancementCookie("another-secret").dump({"em": [EM]})
    assert EnhancementCookie(SECRET).load(value) == {}


def test_none_is_empty() -> None:
    assert EnhancementCookie(SECRET).load(None) == {}


class _SignedLongAgo(TimestampSigner):
    def get_timestamp(self) -> int:
        return super().get_timestamp() - ENHANCEMENT_MAX_AGE - 60


class _SignedRecently(TimestampSigner):
    def get_timestamp(self) -> int:
        return super().get_timestamp() - ENHANCEMENT_MAX_AGE + 3600


def _signed_with(signer: type[TimestampSigner], data: object) -> str:
    # The same key and salt as the codec (no site given), only the signing time differs.
    serializer = URLSafeTimedSerializer(
        SECRET, salt="capi-middleware.enhancement.v1|", signer=signer
    )
    return str(serializer.dumps(data))


def test_expired_cookie_is_ignored() -> None:
    codec = EnhancementCookie(SECRET)
    assert codec.load(_signed_with(_SignedLongAgo, {"em": [EM]})) == {}
    assert codec.load(_signed_with(_SignedRecently, {"em": [EM]})) == {"em": (EM,)}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"em": [EM]}, {"em": (EM,)}),
        ({"em": EM}, {"em": (EM,)}),
        ({"em": ["john@example.com"]}, {}),  # a raw value is never trusted or kept
        ({"em": [EM.upper()]}, {}),
        ({"em": [EM + "\n"]}, {}),
        ({"fn": [EM], "em": [EM]}, {"em": (EM,)}),  # only the remembered keys
        ({"em": [EM, EM]}, {"em": (EM,)}),
        ({"em": [1, None, EM]}, {"em": (EM,)}),
        ({"em": {"a": 1}}, {}),
        ([EM], {}),
        ("text", {}),
        (None, {}),
    ],
)
def test_signed_but_malformed_payloads(payload: object, expected: dict[str, Any]) -> None:
    codec = EnhancementCookie(SECRET)
    assert codec.load(_signed_with(TimestampSigner, payload)) == expected


def test_values_per_key_are_capped() -> None:
    many = [sha256_hex(str(i)) for i in range(10)]
    assert remembered_from_user_data({"em": many}) == {"em": tuple(many[:MAX_VALUES_PER_KEY])}


def test_unhashed_external_id_is_not_remembered() -> None:
    # hash_external_id=False sends external_id as given; the cookie never holds a raw value.
    assert remembered_from_user_data({"external_id": ["user-42"], "ph": [PH]}) == {"ph": (PH,)}


@pytest.mark.parametrize(
    ("secure", "expected"),
    [
        (True, "_capi_ud=V; Path=/; Max-Age=7776000; HttpOnly; SameSite=Lax; Secure"),
        (False, "_capi_ud=V; Path=/; Max-Age=7776000; HttpOnly; SameSite=Lax"),
    ],
)
def test_set_cookie_attributes(secure: bool, expected: str) -> None:
    assert EnhancementCookie(SECRET).render_set_cookie("V", secure=secure) == expected


def test_defaults_and_repr() -> None:
    codec = EnhancementCookie(SECRET)
    assert codec.cookie_name == ENHANCEMENT_COOKIE == "_capi_ud"
    assert codec.max_age == 90 * 86_400
    assert SECRET not in repr(codec)


def test_empty_secret_rejected() -> None:
    with pytest.raises(ValueError, match="enhancement_secret"):
        EnhancementCookie("")
