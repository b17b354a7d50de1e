"""Phone numbers as Meta hashes them: digits only, with the country calling code (pure).

META_CAPI_REFERENCE.md §3: digits only, leading zeros dropped, and the country code must be
there. A ``+`` followed by zeros is an international call prefix (``+0044`` is ``44``). A
number written without ``+`` is read as a national number of the event's country when one is
known (libphonenumber adds the calling code and handles trunk prefixes); without a country it
keeps its digits only when they read as a valid number with a calling code, and is otherwise
rejected with ``no country code``: a national number hashed as is never matches.
"""

from __future__ import annotations

import re

import phonenumbers

from capi_middleware.rules.drops import (
    NO_COUNTRY_CODE,
    NO_DIGITS,
    TOO_MANY_DIGITS,
    TOO_SHORT,
    Reject,
)

__all__ = ["phone_digits"]

_NOT_DIGIT = re.compile(r"[^0-9]+")
# Phone input that is only digits and the separators people type: safe to reduce to digits.
_PLAIN_PHONE = re.compile(r"\+?[0-9 ()./-]+")
# A trailing extension ("ext. 12", "x12", "#12") is not part of the number Meta matches on.
_PHONE_EXTENSION = re.compile(r"\s*(?:ext\.?|extension|x|#)\s*[0-9]{1,7}\s*$", re.IGNORECASE)
_PHONE_MIN_DIGITS = 7
_PHONE_MAX_DIGITS = 15  # E.164
_NO_COUNTRY_CODE_DETAIL = (
    "no country code: write it with + and the calling code, pass the event's country, or set "
    "default_country"
)


def phone_digits(text: str, country: str | None) -> str:
    """The digits Meta hashes for one stripped phone number: E.164 without ``+``.

    ``country`` is the event's lowercase alpha-2 code, or None when unknown. Raises `Reject`
    (``no country code``, ``no digits``, ``too short``, ``too many digits``) when the number
    cannot match.
    """
    plain = _PLAIN_PHONE.fullmatch(text) is not None
    if not plain:
        text = _PHONE_EXTENSION.sub("", text)
        plain = _PLAIN_PHONE.fullmatch(text) is not None
    digits: str | None = None
    if text.startswith("+"):
        if text[1:2] == "0":
            # "+001 ...", "+0044 ...": an international call prefix typed after the "+" (the
            # pixel and Meta's builders drop the zeros, §3).
            text = "+" + text[1:].lstrip("0")
        # International format: the digits already carry the calling code. "+44 (0)..." keeps a
        # national trunk 0 that must go, and letters need a keypad map: phonenumbers for those.
        if plain and "(0" not in text:
            digits = _NOT_DIGIT.sub("", text)
        else:
            digits = _parse_phone(text, None)
    elif country is not None:
        digits = _national_phone(text, country, plain)
    else:
        digits = _without_country(text, plain)
    if digits is None:
        # Meta's rule when nothing better is known: digits only, leading zeros dropped (an
        # international "00" prefix goes with them).
        digits = _NOT_DIGIT.sub("", text).lstrip("0")
    if not digits:
        raise Reject(NO_DIGITS)
    if len(digits) < _PHONE_MIN_DIGITS:
        raise Reject(
            TOO_SHORT, f"too short for a phone number (fewer than {_PHONE_MIN_DIGITS} digits)"
        )
    if len(digits) > _PHONE_MAX_DIGITS:
        raise Reject(
            TOO_MANY_DIGITS, f"too long for a phone number (more than {_PHONE_MAX_DIGITS} digits)"
        )
    return digits


def _without_country(text: str, plain: bool) -> str | None:
    """The digits of a number written without "+" when no country is known, or raise `Reject`
    when it has no calling code (a national number can't match, §3). None: let the caller's
    digits-only rule decide (it reports no digits, too short, too long)."""
    digits = _NOT_DIGIT.sub("", text)
    if text.startswith("00") or not _PHONE_MIN_DIGITS <= len(digits) <= _PHONE_MAX_DIGITS:
        return None  # "00" is the international prefix: the calling code follows it
    if text[0] != "0" and not text.startswith("(0"):  # a leading 0 is a national trunk prefix
        # Digits typed without "+" carry a calling code only when they read as a real number
        # of the country that code names; "(616) 954-7888" would be "+61 6954 7888", no number.
        found = _parse_phone("+" + (digits if plain else text), None, valid=True)
        if found is not None:
            return found
    raise Reject(NO_COUNTRY_CODE, _NO_COUNTRY_CODE_DETAIL)


def _national_phone(text: str, cc: str, plain: bool) -> str | None:
    if plain and (cc == "us" or cc == "ca"):
        # North American Numbering Plan: 10 digits with an area code 2-9, optionally after the
        # trunk/calling code 1. This is what libphonenumber does for US/CA, ~20x faster.
        digits = _NOT_DIGIT.sub("", text)
        if len(digits) == 10 and digits[0] in "23456789":
            return "1" + digits
        if len(digits) == 11 and digits[0] == "1" and digits[1] in "23456789":
            return digits
    # libphonenumber adds the calling code, drops a national trunk prefix (UK 07... -> 447...),
    # keeps Italy's leading 0, and recognises a calling code typed without "+".
    return _parse_phone(text, cc.upper())


def _parse_phone(text: str, region: str | None, *, valid: bool = False) -> str | None:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None  # parse() does not validate: "123456" in US would become "1123456"
    if valid and not phonenumbers.is_valid_number(number):
        return None
    e164: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164.lstrip("+")
