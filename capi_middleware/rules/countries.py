"""Country and US/Canadian state names to their codes (pure; tables built once, lazily).

Meta hashes ``country`` as the ISO 3166-1 alpha-2 code and ``st`` as the 2-letter code of a US
state or Canadian province (META_CAPI_REFERENCE.md §3), so a name must map to the code or it
matches nothing. Names are compared by `_lookup_key` (a-z only, accents folded), so "Côte
d'Ivoire", "COTE D IVOIRE" and "cote-divoire" are one key.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any

import pycountry

__all__ = ["country_code", "state_code"]

_NOT_ASCII_LETTER = re.compile(r"[^a-z]+")


def _pairs(text: str) -> dict[str, str]:
    """``"a=b c=d"`` -> ``{"a": "b", "c": "d"}``: keeps long alias tables compact."""
    return {k: v for k, _, v in (pair.partition("=") for pair in text.split())}


# Country names come from two well-kept sources: pycountry (ISO 3166's English short, official
# and common names) and CLDR's territory names through babel (the names people write, in English
# and in the languages below; the Unicode consortium keeps them current). CLDR drops its
# "alt" spellings (Ivory Coast, Turkey, Swaziland) from babel's data; this short list
# carries them and the everyday names no source has. Every name is keyed by `_lookup_key`.
_COUNTRY_ALIASES: dict[str, str] = _pairs(
    "uk=gb england=gb scotland=gb wales=gb northernireland=gb greatbritain=gb britain=gb "
    "america=us theunitedstates=us theunitedstatesofamerica=us thenetherlands=nl holland=nl "
    "turkey=tr ivorycoast=ci elfenbeinkuste=ci costademarfil=ci macedonia=mk drc=cd "
    "drcongo=cd democraticrepublicofthecongo=cd democraticrepublicofcongo=cd uae=ae burma=mm "
    "swaziland=sz easttimor=tl vatican=va palestine=ps korea=kr macau=mo sainthelena=sh "
    "weissrussland=by"
)
# CLDR languages whose names map to codes, in priority order: where two languages give one
# spelling to different countries (Norwegian "Kongo" is CD, Polish "Kongo" is CG), the first
# wins. Latin-script languages only: `_lookup_key` folds to a-z.
_COUNTRY_NAME_LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "pt", "pl", "sv", "da", "nb", "fi")

# US/Canada state spellings pycountry lacks.
_STATE_ALIASES: dict[str, dict[str, str]] = {
    "US": {"washingtondc": "dc", "dc": "dc", "usvirginislands": "vi", "virginislands": "vi"},
    "CA": {"newfoundland": "nl", "labrador": "nl", "pei": "pe", "yukonterritory": "yt"},
}


def _lookup_key(text: str) -> str:
    """ASCII a-z only, accents folded (ß as ss): the key of the country and state tables."""
    if not text.isascii():
        decomposed = unicodedata.normalize("NFKD", text.casefold())
        text = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _NOT_ASCII_LETTER.sub("", text.lower())


@functools.lru_cache(maxsize=1)
def _country_table() -> dict[str, str]:
    """Alpha-2 and alpha-3 codes, then names (as `_lookup_key`) -> lowercase alpha-2.

    The first source to claim a key keeps it, in this order: codes (no name shadows a code),
    ISO's English names, CLDR's English names, the aliases, CLDR's other languages.
    """
    from babel import Locale  # loaded here: only a country written as a name needs it

    table: dict[str, str] = {}
    iso = {country.alpha_2: country for country in pycountry.countries}
    for alpha2, country in iso.items():
        table[alpha2.lower()] = alpha2.lower()
        table[country.alpha_3.lower()] = alpha2.lower()

    def add(name: str, alpha2: str) -> None:
        key = _lookup_key(name)
        if key and alpha2 in iso:
            table.setdefault(key, alpha2.lower())

    for alpha2, country in iso.items():
        for attr in ("name", "official_name", "common_name"):
            name = getattr(country, attr, None)
            if name:
                add(name, alpha2)
    english, *others = (Locale.parse(lang).territories for lang in _COUNTRY_NAME_LANGUAGES)
    for alpha2, name in english.items():
        add(name, alpha2)
    for key, code in _COUNTRY_ALIASES.items():
        table.setdefault(key, code)
    for names in others:
        for alpha2, name in names.items():
            add(name, alpha2)
    return table


@functools.lru_cache(maxsize=4)
def _state_table(country: str) -> dict[str, str]:
    """Subdivision codes and names of one country (``"US"``/``"CA"``) -> lowercase code."""
    table: dict[str, str] = {}
    subdivisions: Any = pycountry.subdivisions  # untyped library
    for sub in subdivisions.get(country_code=country) or ():
        code = sub.code.split("-", 1)[1].lower()
        table[_lookup_key(sub.name)] = code
        table[code] = code
    table.update(_STATE_ALIASES.get(country, {}))
    return table


@functools.lru_cache(maxsize=1)
def _us_ca_state_table() -> dict[str, str]:
    # US and Canadian codes and names do not collide, so one table serves an unknown country.
    return {**_state_table("CA"), **_state_table("US")}


def country_code(value: str) -> str | None:
    """The lowercase alpha-2 code of a country code (alpha-2, alpha-3) or name, or None.

    Names: ISO's (pycountry), CLDR's in English and the languages of
    `_COUNTRY_NAME_LANGUAGES` (babel), and `_COUNTRY_ALIASES`.
    """
    if len(value) == 2 and value.isascii():
        return _country_table().get(value.lower())  # the common case: an alpha-2 code
    return _country_table().get(_lookup_key(value))


def state_code(value: str, country: str | None) -> str | None:
    """The lowercase code of a US state or Canadian province, by code or name, or None.

    ``country`` is the event's lowercase alpha-2 code: ``us`` and ``ca`` read their own table,
    None (unknown) reads both (their codes and names do not collide), any other country none.
    """
    if country is None:
        table = _us_ca_state_table()
    elif country == "us" or country == "ca":
        table = _state_table(country.upper())
    else:
        return None
    short = len(value) == 2 and value.isascii()
    return table.get(value.lower() if short else _lookup_key(value))
