"""cookies: _fbc/_fbp formats, fbclid extraction, cookie domain, minting, Set-Cookie, the plan."""

from __future__ import annotations

import random
import re

import pytest

from capi_middleware.rules.cookie_domain import cookie_domain_for, subdomain_index
from capi_middleware.rules.cookie_header import MAX_COOKIE_HEADER, find_cookies, parse_cookie_header
from capi_middleware.rules.cookies import (
    COOKIE_MAX_AGE,
    FBC_COOKIE,
    FBP_COOKIE,
    CookiePlan,
    extract_fbclid,
    fbc_click_id,
    is_valid_fbc,
    is_valid_fbp,
    mint_fbc,
    mint_fbp,
    plan_cookies,
    render_set_cookie,
)

NOW = 1_760_000_000_000  # fixed "now" for plan_cookies (2025-10-09)
T = "1700000000000"  # a past creation time (2023-11-14)
CLICK = "IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk"
AEM = "IwZXh0bgNhZW0CMTEAAR2x_aem_AbCdEfGhIjKlMnOpQrStUv"
APPENDIX = "AQIBAQAB"  # what Meta's Parameter Builder appends: 8 base64url characters

VALID_FBC = [
    f"fb.1.{T}.{CLICK}",
    f"fb.0.{T}.abc",
    f"fb.2.{T}.abc",
    f"fb.12.{T}.abc",
    f"fb.1.{T}.{AEM}",
    f"fb.1.{T}.a~b_c-d",
    f"fb.1.{T}.{'a' * 1000}",
    f"fb.1.{T}.{CLICK}.{APPENDIX}",
    f"fb.1.{T}.{CLICK}.Ag",
    f"fb.1.{T}.abc.A-_zA-_z",
    "fb.1.1262304000000.abc",  # the earliest creation time believed (2010-01-01)
]

INVALID_FBC = [
    "",
    "fb",
    f"fb.1.{T}",
    f"fb.1.{T}.",
    f"FB.1.{T}.abc",
    f"fc.1.{T}.abc",
    f".fb.1.{T}.abc",
    f"fb..{T}.abc",
    f"fb.a.{T}.abc",
    f"fb.01.{T}.abc",
    f"fb.100.{T}.abc",
    f"fb.-1.{T}.abc",
    "fb.1.170000000000.abc",  # 12 digits
    "fb.1.1700000000.abc",  # seconds, not milliseconds
    "fb.1.17000000000000.abc",  # 14 digits
    "fb.1.1262303999999.abc",  # before 2010
    "fb.1.9999999999999.abc",  # far future
    f"fb.1.{T}.abc.ABC",  # 3-character appendix
    f"fb.1.{T}.abc.AQIBAQABX",  # 9-character appendix
    f"fb.1.{T}.abc.AQIB+QAB",
    f"fb.1.{T}.abc.{APPENDIX}.{APPENDIX}",  # six segments
    f"fb.1.{T}.abc\r\nSet-Cookie: evil=1",
    f"fb.1.{T}.abc;Domain=evil.com",
    f"fb.1.{T}.abc\n",  # a "$" regex would accept this
    f"fb.1.{T}.ab c",
    f'fb.1.{T}."abc"',
    f"fb.1.{T}.abc\u00e9",
    f"fb.1.{T}.abc\x00",
    f"fb.1.{T}.%41bc",
    f"fb.1.{T}.a+b",
    "fb.1.\uff11700000000000.abc",  # fullwidth digit
    "fb.1.\u0661\u0667\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660.abc",
    f"fb.1.{T}.{'a' * 1001}",
    f"fb.1.{T}.{'a' * 10_240}",
    f" fb.1.{T}.abc",
]

VALID_FBP = [
    f"fb.1.{T}.1234567890",
    f"fb.0.{T}.0",
    f"fb.2.{T}.2147483647",
    f"fb.1.{T}.7",
    f"fb.1.{T}.1234567890.{APPENDIX}",
    f"fb.1.{T}.1234567890.AQ",
]

INVALID_FBP = [
    "",
    f"fb.1.{T}",
    f"fb.1.{T}.2147483648",  # past the pixel's range
    f"fb.1.{T}.99999999999",
    f"fb.1.{T}.-1",
    f"fb.1.{T}.01",
    f"fb.1.{T}.abc",
    f"fb.1.{T}.12 34",
    f"fb.1.{T}.1234.ABC",
    f"fb.1.{T}.1234\r\nSet-Cookie: x=1",
    f"fb.1.{T}.1234\n",
    "fb.1.1700000000.1234",
    "fb.1.9999999999999.1234",
    f"fb.x.{T}.1234",
    f"fb.1.{T}.\u0661\u0662",
    f"fb.1.{T}.{'1' * 10_240}",
    f"fb.1.{T}.1234.{APPENDIX}.AQ",
]


# §4: a fifth segment is exactly 8 base64url characters or one of six legacy tokens.
VALID_FIFTH_SEGMENTS = ["AQ", "Ag", "Aw", "BA", "BQ", "Bg", APPENDIX, "A-_zA-_z", "________"]
INVALID_FIFTH_SEGMENTS = [
    "AB",  # two base64url characters, but not a token Meta wrote
    "aq",  # tokens are case-sensitive
    "AG",
    "Ah",
    "BR",
    "Bh",
    "00",
    "--",
    "A",
    "AQA",
    "AQIBAQA",  # 7
    "AQIBAQABX",  # 9
    "AQIB+QAB",  # base64, not base64url
    "AQIB/QAB",
    "AQIBAQA=",  # padding
    "",
    "AQ ",
]


def plan_visitor_cookies(fbc: str, fbp: str) -> CookiePlan:
    return plan_cookies(
        host="shop.example.com",
        secure=True,
        cookies={"_fbc": fbc, "_fbp": fbp},
        fbclid=None,
        cookie_domain=None,
        set_fbp=False,
        now_ms=NOW,
    )


@pytest.mark.parametrize("segment", VALID_FIFTH_SEGMENTS)
def test_a_valid_fifth_segment_passes_unchanged(segment: str) -> None:
    fbc = f"fb.1.{T}.{CLICK}.{segment}"
    fbp = f"fb.1.{T}.1234567890.{segment}"
    assert is_valid_fbc(fbc)
    assert fbc_click_id(fbc) == CLICK
    assert is_valid_fbp(fbp)
    plan = plan_visitor_cookies(fbc, fbp)
    assert (plan.fbc, plan.fbp) == (fbc, fbp)
    assert [h.split(";")[0] for h in plan.set_cookie] == [f"_fbc={fbc}", f"_fbp={fbp}"]


@pytest.mark.parametrize("segment", INVALID_FIFTH_SEGMENTS)
def test_any_other_fifth_segment_is_malformed(segment: str) -> None:
    fbc = f"fb.1.{T}.{CLICK}.{segment}"
    fbp = f"fb.1.{T}.1234567890.{segment}"
    assert not is_valid_fbc(fbc)
    assert fbc_click_id(fbc) is None
    assert not is_valid_fbp(fbp)
    plan = plan_visitor_cookies(fbc, fbp)
    assert (plan.fbc, plan.fbp, plan.set_cookie) == (None, None, ())  # ignored, never echoed


@pytest.mark.parametrize("value", VALID_FBC)
def test_valid_fbc(value: str) -> None:
    assert is_valid_fbc(value)


@pytest.mark.parametrize("value", INVALID_FBC)
def test_invalid_fbc(value: str) -> None:
    assert not is_valid_fbc(value)
    assert fbc_click_id(value) is None


@pytest.mark.parametrize("value", VALID_FBP)
def test_valid_fbp(value: str) -> None:
    assert is_valid_fbp(value)


@pytest.mark.parametrize("value", INVALID_FBP)
def test_invalid_fbp(value: str) -> None:
    assert not is_valid_fbp(value)


@pytest.mark.parametrize("value", [None, 1, b"fb.1.1700000000000.abc"])
def test_non_strings_are_not_valid(value: object) -> None:
    assert not is_valid_fbc(value)  # type: ignore[arg-type]
    assert not is_valid_fbp(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "click_id"),
    [
        (f"fb.1.{T}.{CLICK}", CLICK),
        (f"fb.1.{T}.{CLICK}.{APPENDIX}", CLICK),
        (f"fb.1.{T}.{AEM}.Ag", AEM),
        (f"fb.1.{T}.AbC", "AbC"),
    ],
)
def test_fbc_click_id(value: str, click_id: str) -> None:
    assert fbc_click_id(value) == click_id


# -- parse_cookie_header --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", {}),
        (f"_fbp=fb.1.{T}.1; _fbc=fb.1.{T}.abc", {"_fbp": f"fb.1.{T}.1", "_fbc": f"fb.1.{T}.abc"}),
        ("a=1; a=2", {"a": "1"}),
        ("a=1;b=2", {"a": "1", "b": "2"}),
        ("  a = 1 ; ", {"a": "1"}),
        ('a="quoted"', {"a": "quoted"}),
        ('a="', {"a": '"'}),
        ("novalue", {"": "novalue"}),
        ("a=b=c", {"a": "b=c"}),
        ("a=; b=2", {"a": "", "b": "2"}),
        (";;; ;", {}),
        ("name=v\u00e4lue", {"name": "v\u00e4lue"}),
        ("=x; =y", {"": "x"}),
        ("a=1, b=2", {"a": "1, b=2"}),
    ],
)
def test_parse_cookie_header(header: str, expected: dict[str, str]) -> None:
    assert parse_cookie_header(header) == expected


def _generated_cookie_headers(count: int) -> list[str]:
    """Cookie headers built from the pieces that trip parsers: padding (including the
    non-ASCII whitespace str.strip() removes), quotes, empty and nameless chunks, repeated and
    look-alike names, "=" inside values."""
    rng = random.Random(20261129)
    names = ["_fbp", "_fbc", "cookie_consent", "_fbpx", "x_fbp", "", "a", "_FBP", "consent"]
    pads = ["", " ", "  ", "\t", "\xa0", "\x85", "\x0b"]
    values = ["", "1", '"q"', '"', "fb.1.2.3", "a=b", "  v  ", '""', "x\xa0"]
    headers = []
    for _ in range(count):
        chunks = []
        for _ in range(rng.randint(0, 8)):
            name, value = rng.choice(names), rng.choice(values)
            pad = rng.choice(pads)
            if rng.random() < 0.1:
                chunks.append(pad + value)  # no "=" at all
            else:
                chunks.append(f"{pad}{name}{rng.choice(pads)}={rng.choice(pads)}{value}{pad}")
        headers.append(rng.choice([";", "; ", " ;"]).join(chunks))
    return headers


def test_find_cookies_agrees_with_parse_cookie_header() -> None:
    # capture picks out its few cookies with find_cookies; the answer must be the full parse's.
    wanted = ("_fbp", "_fbc", "cookie_consent")
    for header in _generated_cookie_headers(3000):
        parsed = parse_cookie_header(header)
        expected = {name: parsed[name] for name in wanted if name in parsed}
        assert find_cookies(header, wanted) == expected, repr(header)


def test_find_cookies_leaves_oversized_headers_to_the_full_parse() -> None:
    assert find_cookies("a=1;" * 400, ("a",)) is None  # more pairs than parse looks at
    assert find_cookies("a=" + "x" * 40_000, ("a",)) is None
    assert find_cookies("a=1; =2; b=3", ("", "b", " a", "c=d")) == {"b": "3"}


def test_parse_cookie_header_non_string() -> None:
    assert parse_cookie_header(None) == {}  # type: ignore[arg-type]
    assert parse_cookie_header(b"a=1") == {}  # type: ignore[arg-type]


def test_parse_cookie_header_huge_header_is_capped_at_a_separator() -> None:
    filler = "; ".join(f"c{i}={'x' * 100}" for i in range(400))  # ~43 KB
    early = parse_cookie_header(f"_fbp=fb.1.{T}.12345; {filler}")
    assert early["_fbp"] == f"fb.1.{T}.12345"
    late = parse_cookie_header(f"{filler}; _fbp=fb.1.{T}.12345")
    assert "_fbp" not in late
    # The cut never leaves a truncated value behind.
    header = "a=" + "1" * (MAX_COOKIE_HEADER - 10) + "; b=" + "2" * 100
    assert parse_cookie_header(header) == {"a": "1" * (MAX_COOKIE_HEADER - 10)}
    assert parse_cookie_header("a=" + "1" * (MAX_COOKIE_HEADER + 5)) == {}


def test_parse_cookie_header_caps_pairs() -> None:
    header = "; ".join(f"c{i}=v" for i in range(1000)) + "; _fbc=late"
    cookies = parse_cookie_header(header)
    assert len(cookies) <= 300
    assert "_fbc" not in cookies


# -- extract_fbclid -------------------------------------------------------------------------------

LANDING = "https://shop.example.com/landing"


@pytest.mark.parametrize(
    ("query", "referer", "expected"),
    [
        (f"fbclid={CLICK}", None, CLICK),
        ("a=1&fbclid=AbC&b=2", None, "AbC"),  # case kept
        (f"fbclid={AEM}", None, AEM),
        ("fbclid=abc%2Ddef", None, "abc-def"),
        ("fbclid=abc%5f", None, "abc_"),
        ("fbclid=abc%7E", None, "abc~"),
        ("fbclid=a~b", None, "a~b"),
        ("fbclid=abc+def", None, None),  # "+" is neither altered into a space nor accepted
        ("fbclid=abc%20def", None, None),
        ("fbclid=abc%2Bdef", None, None),
        ("fbclid=abc%ZZ", None, None),
        ("fbclid=abc%", None, None),
        ("fbclid=abc%C3%A9", None, None),
        ("fbclid=abc%FF", None, None),
        ("fbclid=\u00e9", None, None),
        ("fbclid=a.b", None, None),
        ("fbclid=abc;x=1", None, None),
        ("fbclid=abc%0D%0ASet-Cookie:x", None, None),
        ("fbclid=" + "a" * 1000, None, "a" * 1000),
        ("fbclid=" + "a" * 1001, None, None),
        ("fbclid=" + "%61" * 1000, None, "a" * 1000),
        ("fbclid=" + "a" * 10_240, None, None),
        ("FBCLID=abc", None, None),  # parameter names are case-sensitive
        ("fb%63lid=abc", None, "abc"),
        ("fbclid=&fbclid=second", None, "second"),
        ("fbclid=first&fbclid=second", None, "first"),
        ("fbclid", None, None),
        ("xfbclid=abc&fbclidx=def", None, None),
        ("", f"{LANDING}?fbclid=fromref", "fromref"),
        ("utm_source=fb", f"{LANDING}?utm=1&fbclid=fromref", "fromref"),
        ("fbclid=fromquery", f"{LANDING}?fbclid=fromref", "fromquery"),
        ("fbclid=bad%20one", f"{LANDING}?fbclid=fromref", None),  # the query decides
        ("fbclid=", f"{LANDING}?fbclid=fromref", "fromref"),
        ("", f"{LANDING}?x=1#fbclid=frag", None),
        ("", f"{LANDING}?fbclid=ref#top", "ref"),
        ("", LANDING, None),
        ("", "http://[::1", None),
        ("", "https://\u00e9.example/?fbclid=ok", "ok"),
        ("", "?fbclid=bare", "bare"),
        ("", "", None),
        ("", None, None),
    ],
)
def test_extract_fbclid(query: str, referer: str | None, expected: str | None) -> None:
    assert extract_fbclid(query, referer) == expected


def test_extract_fbclid_non_strings() -> None:
    assert extract_fbclid(None, None) is None  # type: ignore[arg-type]
    assert extract_fbclid(b"fbclid=abc", b"x?fbclid=abc") is None  # type: ignore[arg-type]


# -- cookie domain and subdomain index ------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com", "example.com"),
        ("www.example.com", "example.com"),
        ("a.b.example.com", "example.com"),
        ("www.example.co.uk", "example.co.uk"),  # never co.uk
        ("example.co.uk", "example.co.uk"),
        ("co.uk", None),
        ("com", None),
        ("localhost", None),
        ("localhost:8000", None),
        ("WWW.Example.COM:8080", "example.com"),
        ("127.0.0.1", None),
        ("127.0.0.1:8000", None),
        ("8.8.8.8", None),
        ("1.2.3", None),  # a browser reads this as an IPv4 address
        ("[::1]", None),
        ("[::1]:8080", None),
        ("::1", None),
        ("[2606:4700:4700::1111]:443", None),
        ("foo.github.io", "foo.github.io"),  # the PSL's private section counts, as in browsers
        ("a.foo.github.io", "foo.github.io"),
        ("github.io", None),
        ("shop.example.appspot.com", "example.appspot.com"),
        ("www.xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("b\u00fccher.de", None),
        ("example.com.", None),
        ("", None),
        ("exa mple.com", None),
        ("ex_ample.com", None),
        ("example.com:abc", None),
        ("-example.com", None),
        ("a" * 300, None),
        ("a." * 140 + "com", None),
    ],
)
def test_cookie_domain_for(host: str, expected: str | None) -> None:
    assert cookie_domain_for(host, None) == expected


@pytest.mark.parametrize(
    ("host", "override", "expected"),
    [
        ("shop.example.com", "example.com", "example.com"),
        ("example.com", "example.com", "example.com"),
        ("shop.example.com", "shop.example.com", "shop.example.com"),
        ("shop.example.com:8443", ".Example.com", "example.com"),
        ("www.example.co.uk", "www.example.co.uk", "www.example.co.uk"),
        ("evil.com", "example.com", None),  # the browser would reject it: host-only instead
        ("notexample.com", "example.com", None),
        ("www.example.co.uk", "co.uk", None),  # a public suffix is never a cookie domain
        ("127.0.0.1", "example.com", None),
        ("localhost", "localhost", None),
        ("shop.example.com", "exa mple.com", None),
    ],
)
def test_cookie_domain_override(host: str, override: str, expected: str | None) -> None:
    assert cookie_domain_for(host, override) == expected


@pytest.mark.parametrize(
    ("domain", "host", "expected"),
    [
        ("example.com", "www.example.com", 1),
        ("example.co.uk", "www.example.co.uk", 2),
        ("www.example.com", "www.example.com", 2),
        ("com", "com", 0),
        (None, "localhost", 0),
        (None, "localhost:8000", 0),
        (None, "127.0.0.1", 0),
        (None, "[::1]:8080", 0),
        (None, "github.io", 1),
        (None, "exa mple.com", 0),
    ],
)
def test_subdomain_index(domain: str | None, host: str, expected: int) -> None:
    assert subdomain_index(domain, host) == expected


# -- minting and rendering ------------------------------------------------------------------------


def test_mint_fbc_keeps_click_id_byte_for_byte() -> None:
    value = mint_fbc(AEM, subdomain_index=1, now_ms=NOW)
    assert value == f"fb.1.{NOW}.{AEM}"
    assert is_valid_fbc(value)
    assert fbc_click_id(value) == AEM


@pytest.mark.parametrize("fbclid", ["", "a.b", "a b", "abc\r\n", "a" * 1001, "\u00e9"])
def test_mint_fbc_rejects_what_extract_would_not_return(fbclid: str) -> None:
    with pytest.raises(ValueError, match="fbclid"):
        mint_fbc(fbclid, subdomain_index=1, now_ms=NOW)


@pytest.mark.parametrize(
    ("index", "now_ms", "match"),
    [
        (-1, NOW, "subdomain_index"),
        (100, NOW, "subdomain_index"),
        (True, NOW, "subdomain_index"),
        (1, 1_700_000_000, "now_ms"),
        (1, 10**13, "now_ms"),
    ],
)
def test_mint_rejects_bad_numbers(index: int, now_ms: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mint_fbc("abc", subdomain_index=index, now_ms=now_ms)
    with pytest.raises(ValueError, match=match):
        mint_fbp(subdomain_index=index, now_ms=now_ms)


def test_mint_fbp_format_and_range() -> None:
    values = [mint_fbp(subdomain_index=2, now_ms=NOW) for _ in range(200)]
    for value in values:
        match = re.fullmatch(rf"fb\.2\.{NOW}\.(0|[1-9][0-9]*)", value)
        assert match is not None
        assert 0 <= int(match[1]) <= 2_147_483_647
        assert is_valid_fbp(value)
    assert len(set(values)) > 190


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"domain": "example.com", "secure": True},
            f"_fbc=fb.1.{T}.abc; Path=/; Domain=example.com; Max-Age=7776000; SameSite=Lax; Secure",
        ),
        (
            {"domain": None, "secure": False},
            f"_fbc=fb.1.{T}.abc; Path=/; Max-Age=7776000; SameSite=Lax",
        ),
        (
            {"domain": "example.co.uk", "secure": False, "max_age": 0},
            f"_fbc=fb.1.{T}.abc; Path=/; Domain=example.co.uk; Max-Age=0; SameSite=Lax",
        ),
    ],
)
def test_render_set_cookie_exact(kwargs: dict[str, object], expected: str) -> None:
    header = render_set_cookie(FBC_COOKIE, f"fb.1.{T}.abc", **kwargs)  # type: ignore[arg-type]
    assert header == expected
    assert "httponly" not in header.lower()


@pytest.mark.parametrize(
    ("name", "value", "domain", "max_age"),
    [
        ("_fbc", "abc;Domain=evil.com", None, COOKIE_MAX_AGE),
        ("_fbc", "abc\r\nSet-Cookie: x=1", None, COOKIE_MAX_AGE),
        ("_fbc", "a b", None, COOKIE_MAX_AGE),
        ("_fbc", '"abc"', None, COOKIE_MAX_AGE),
        ("_fbc", "ab\u00e9", None, COOKIE_MAX_AGE),
        ("_fbc", "", None, COOKIE_MAX_AGE),
        ("_fbc", "a" * 5000, None, COOKIE_MAX_AGE),
        ("_f bc", "abc", None, COOKIE_MAX_AGE),
        ("_fbc=x", "abc", None, COOKIE_MAX_AGE),
        ("", "abc", None, COOKIE_MAX_AGE),
        ("_fbc", "abc", "evil.com; Secure", COOKIE_MAX_AGE),
        ("_fbc", "abc", ".example.com", COOKIE_MAX_AGE),
        ("_fbc", "abc", "localhost", COOKIE_MAX_AGE),
        ("_fbc", "abc", "Example.com", COOKIE_MAX_AGE),
        ("_fbc", "abc", None, -1),
        ("_fbc", "abc", None, True),
    ],
)
def test_render_set_cookie_refuses_unsafe_input(
    name: str, value: str, domain: str | None, max_age: int
) -> None:
    with pytest.raises(ValueError, match="render_set_cookie"):
        render_set_cookie(name, value, domain=domain, secure=True, max_age=max_age)


# -- plan_cookies ---------------------------------------------------------------------------------


def plan(
    cookies: dict[str, str] | None = None,
    *,
    fbclid: str | None = None,
    host: str = "www.example.com",
    secure: bool = True,
    cookie_domain: str | None = None,
    set_fbp: bool = True,
) -> CookiePlan:
    return plan_cookies(
        host=host,
        secure=secure,
        cookies=cookies or {},
        fbclid=fbclid,
        cookie_domain=cookie_domain,
        set_fbp=set_fbp,
        now_ms=NOW,
    )


def sc(name: str, value: str, domain: str | None = "example.com", secure: bool = True) -> str:
    return render_set_cookie(name, value, domain=domain, secure=secure)


FBC_OLD = f"fb.1.{T}.{CLICK}"
FBP_OLD = f"fb.1.{T}.1234567890"


def test_plan_nothing_known_mints_fbp_only() -> None:
    result = plan()
    assert result.fbc is None
    assert result.fbp is not None
    assert re.fullmatch(rf"fb\.1\.{NOW}\.[0-9]+", result.fbp)
    assert result.set_cookie == (sc(FBP_COOKIE, result.fbp),)
    assert result.set_cookie[0] == (
        f"_fbp={result.fbp}; Path=/; Domain=example.com; Max-Age=7776000; SameSite=Lax; Secure"
    )


def test_plan_without_set_fbp_sets_nothing() -> None:
    assert plan(set_fbp=False) == CookiePlan(fbc=None, fbp=None, minted=(), refresh=())


def test_plan_fbclid_mints_fbc_with_now_and_index() -> None:
    result = plan(fbclid=AEM)
    assert result.fbc == f"fb.1.{NOW}.{AEM}"
    assert result.fbp is not None
    assert result.set_cookie == (sc(FBC_COOKIE, result.fbc), sc(FBP_COOKIE, result.fbp))


def test_plan_same_click_id_keeps_cookie_and_creation_time() -> None:
    result = plan({FBC_COOKIE: FBC_OLD, FBP_COOKIE: FBP_OLD}, fbclid=CLICK)
    assert result == CookiePlan(
        fbc=FBC_OLD,
        fbp=FBP_OLD,
        minted=(),
        refresh=(sc(FBC_COOKIE, FBC_OLD), sc(FBP_COOKIE, FBP_OLD)),
    )


def test_plan_same_click_id_keeps_parameter_builder_appendix() -> None:
    fbc = f"{FBC_OLD}.{APPENDIX}"
    fbp = f"{FBP_OLD}.Ag"
    result = plan({FBC_COOKIE: fbc, FBP_COOKIE: fbp}, fbclid=CLICK)
    assert (result.fbc, result.fbp) == (fbc, fbp)
    assert result.set_cookie == (sc(FBC_COOKIE, fbc), sc(FBP_COOKIE, fbp))


def test_plan_new_click_id_replaces_fbc_but_never_fbp() -> None:
    result = plan({FBC_COOKIE: FBC_OLD, FBP_COOKIE: FBP_OLD}, fbclid="NewClick")
    assert result.fbc == f"fb.1.{NOW}.NewClick"
    assert result.fbp == FBP_OLD
    assert result.minted == (sc(FBC_COOKIE, result.fbc),)
    assert result.refresh == (sc(FBP_COOKIE, FBP_OLD),)


def test_plan_click_id_comparison_is_case_sensitive() -> None:
    result = plan({FBC_COOKIE: f"fb.1.{T}.abc"}, fbclid="ABC")
    assert result.fbc == f"fb.1.{NOW}.ABC"


def test_plan_no_fbclid_keeps_and_resends_valid_cookies() -> None:
    result = plan({FBC_COOKIE: FBC_OLD, FBP_COOKIE: FBP_OLD}, set_fbp=False)
    assert result == CookiePlan(
        fbc=FBC_OLD,
        fbp=FBP_OLD,
        minted=(),
        refresh=(sc(FBC_COOKIE, FBC_OLD), sc(FBP_COOKIE, FBP_OLD)),
    )


INJECTIONS = [
    f"fb.1.{T}.abc\r\nSet-Cookie: evil=1",
    f"fb.1.{T}.abc; Domain=evil.com",
    "x" * 10_240,
    f"fb.1.{T}.ab\u00e9",
    "fb.1.9999999999999.123",
]


@pytest.mark.parametrize("bad", INJECTIONS)
def test_plan_never_echoes_invalid_cookies(bad: str) -> None:
    result = plan({FBC_COOKIE: bad, FBP_COOKIE: bad})
    assert result.fbc is None
    assert result.fbp is not None
    assert result.fbp != bad
    assert len(result.set_cookie) == 1
    assert all(bad not in header for header in result.set_cookie)
    assert all("\r" not in h and "\n" not in h and "evil" not in h for h in result.set_cookie)


@pytest.mark.parametrize("bad", INJECTIONS)
def test_plan_replaces_invalid_fbc_when_there_is_a_click(bad: str) -> None:
    result = plan({FBC_COOKIE: bad}, fbclid="Fresh")
    assert result.fbc == f"fb.1.{NOW}.Fresh"


@pytest.mark.parametrize("fbclid", ["a b", "a.b", "abc\r\n", "a" * 1001, ""])
def test_plan_ignores_an_fbclid_that_is_not_a_click_id(fbclid: str) -> None:
    result = plan({FBC_COOKIE: FBC_OLD}, fbclid=fbclid, set_fbp=False)
    assert result.fbc == FBC_OLD
    assert result.set_cookie == (sc(FBC_COOKIE, FBC_OLD),)


@pytest.mark.parametrize(
    ("created_ms", "kept"),
    [
        (NOW, True),
        (NOW + 7 * 24 * 3600 * 1000, True),  # a browser clock up to a week ahead
        (NOW + 7 * 24 * 3600 * 1000 + 1, False),
        (1_262_304_000_000, True),
        (1_262_303_999_999, False),
    ],
)
def test_plan_creation_time_window(created_ms: int, kept: bool) -> None:
    fbp = f"fb.1.{created_ms}.42"
    result = plan({FBP_COOKIE: fbp})
    assert (result.fbp == fbp) is kept


@pytest.mark.parametrize(
    ("host", "cookie_domain", "domain", "index"),
    [
        ("www.example.com", None, "example.com", 1),
        ("example.com", None, "example.com", 1),
        ("www.example.co.uk", None, "example.co.uk", 2),
        ("shop.foo.github.io", None, "foo.github.io", 2),
        ("localhost:8000", None, None, 0),
        ("127.0.0.1:8000", None, None, 0),
        ("[::1]:8000", None, None, 0),
        ("github.io", None, None, 1),
        ("a.b.shop.example.com", "shop.example.com", "shop.example.com", 2),
        ("other.org", "example.com", None, 1),
    ],
)
def test_plan_domain_and_subdomain_index(
    host: str, cookie_domain: str | None, domain: str | None, index: int
) -> None:
    result = plan(fbclid="Click", host=host, cookie_domain=cookie_domain, secure=False)
    assert result.fbc == f"fb.{index}.{NOW}.Click"
    assert result.fbp is not None
    assert result.fbp.startswith(f"fb.{index}.{NOW}.")
    assert result.set_cookie == (
        sc(FBC_COOKIE, result.fbc, domain, secure=False),
        sc(FBP_COOKIE, result.fbp, domain, secure=False),
    )
    for header in result.set_cookie:
        assert ("Domain=" in header) is (domain is not None)
        assert "Secure" not in header
        assert "HttpOnly" not in header


def test_plan_mints_fbp_and_refreshes_a_valid_fbc() -> None:
    result = plan({FBC_COOKIE: FBC_OLD})
    assert result.fbc == FBC_OLD
    assert result.fbp is not None
    assert result.minted == (sc(FBP_COOKIE, result.fbp),)
    assert result.refresh == (sc(FBC_COOKIE, FBC_OLD),)
    # A page load gets both: the new one first.
    assert result.set_cookie == (sc(FBP_COOKIE, result.fbp), sc(FBC_COOKIE, FBC_OLD))
