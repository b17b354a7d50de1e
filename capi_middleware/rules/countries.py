"""Country and US/Canadian state names to their codes (pure; tables built once, lazily).

Meta hashes ``country`` as the ISO 3166-1 alpha-2 code and ``st`` as the 2-letter code of a US
state or Canadian province (META_CAPI_REFERENCE.md §3), so a name must map to the code or it
matches nothing. Names are compared by `_lookup_key` (a-z only, accents folded), so "Côte
d'Ivoire", "COTE D IVOIRE" and "cote-divoire" are one key.
"""

from __future__ import annotations

import functools
import re
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator
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
# wins. English first (the aliases load with it). Latin-script languages only: `_lookup_key`
# folds to a-z.
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
def _code_table() -> dict[str, str]:
    """Alpha-2 and alpha-3 codes -> lowercase alpha-2: what most events carry, and all it takes
    to read them (no names loaded)."""
    table: dict[str, str] = {}
    for country in pycountry.countries:
        table[country.alpha_2.lower()] = country.alpha_2.lower()
        table[country.alpha_3.lower()] = country.alpha_2.lower()
    return table


class _CountryNames:
    """Names (as `_lookup_key`) -> lowercase alpha-2, loaded in priority order as lookups need.

    The sources, in order: ISO's English names (pycountry), CLDR's English names plus the
    aliases, then CLDR's other languages one by one (babel). The first source to claim a key
    keeps it, and a key that is a code is left to the codes. A lookup loads sources only until
    it finds its key, so "Germany" costs no CLDR locale and "Deutschland" two; since sources
    load in order, the answer is the same as from a table built whole.
    """

    def __init__(self) -> None:
        self._table: dict[str, str] = {}
        self._loaded = 0  # sources in _table; written under _lock, read without it
        self._sources: tuple[Callable[[], Iterable[tuple[str, str]]], ...] = (
            _iso_names,
            _english_names,
            *(functools.partial(_cldr_names, lang) for lang in _COUNTRY_NAME_LANGUAGES[1:]),
        )
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        found = self._table.get(key)
        if found is not None or self._loaded == len(self._sources):
            return found
        with self._lock:
            while (found := self._table.get(key)) is None and self._loaded < len(self._sources):
                codes = _code_table()
                for name_key, alpha2 in self._sources[self._loaded]():
                    if name_key and name_key not in codes and alpha2 in codes:
                        self._table.setdefault(name_key, alpha2)
                self._loaded += 1
        return found


def _iso_names() -> Iterator[tuple[str, str]]:
    for country in pycountry.countries:
        for attr in ("name", "official_name", "common_name"):
            name = getattr(country, attr, None)
            if name:
                yield _lookup_key(name), country.alpha_2.lower()


def _english_names() -> Iterator[tuple[str, str]]:
    yield from _cldr_names("en")
    yield from _COUNTRY_ALIASES.items()


def _cldr_names(language: str) -> Iterator[tuple[str, str]]:
    from babel import Locale  # loaded here: only a country written as a name needs it

    for alpha2, name in Locale.parse(language).territories.items():
        yield _lookup_key(name), alpha2.lower()


_country_names = _CountryNames()


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
    if len(value) <= 3 and value.isascii():
        found = _code_table().get(value.lower())  # the common case: a code
        if found is not None:
            return found
    key = _lookup_key(value)
    return _code_table().get(key) or _country_names.get(key)


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
