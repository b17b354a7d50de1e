"""RequestContext and CapturePipeline without any web framework: capture rules and track()."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from capi_middleware.capture.context import (
    RequestContext,
    TrackResult,
    activate,
    current,
    deactivate,
)
from capi_middleware.capture.pipeline import CapturePipeline
from capi_middleware.capture.set_cookies import is_shared_cacheable
from capi_middleware.client import CAPIClient
from capi_middleware.config import CAPIConfig
from capi_middleware.consent import site_cookie
from capi_middleware.consent.policies import ConsentDecision
from capi_middleware.errors import CAPIValidationError, Problem
from capi_middleware.normalize import sha256_hex
from capi_middleware.rules.page_url import MAX_URL_CHARS, MAX_USER_AGENT_CHARS, is_navigation

EMAIL = "john_smith@gmail.com"
EMAIL_HASH = "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"


def pipeline(**options: Any) -> CapturePipeline:
    options.setdefault("dry_run", True)
    options.setdefault("consent", True)
    return CapturePipeline(CAPIClient(CAPIConfig(**options)))


def capture(
    pipe: CapturePipeline,
    *,
    peer: str | None = "8.8.8.8",
    scheme: str = "https",
    server: tuple[str, int | None] | None = ("internal", 8000),
    path: str = "/",
    query: str = "",
    **headers: str,
) -> RequestContext:
    headers.setdefault("user_agent", "Mozilla/5.0")  # a browser's (others get no minted cookie)
    return pipe.capture(
        peer=peer,
        scheme=scheme,
        server=server,
        raw_path=path,
        query_string=query,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


@pytest.mark.parametrize(
    ("scheme", "host", "server", "path", "query", "expected"),
    [
        ("https", "shop.example.com", None, "/", "", "https://shop.example.com/"),
        ("https", "Shop.Example.COM", None, "/p", "a=1", "https://shop.example.com/p?a=1"),
        ("http", "example.com:8080", None, "/x", "", "http://example.com:8080/x"),
        # The scheme's default port is left out, as a browser's location.href does.
        ("https", "example.com:443", None, "/", "", "https://example.com/"),
        ("http", "example.com:80", None, "/", "", "http://example.com/"),
        ("https", "example.com:80", None, "/", "", "https://example.com:80/"),
        # Percent-encoding is kept as the browser sent it.
        (
            "https",
            "example.com",
            None,
            "/caf%C3%A9",
            "q=a%20b&x=%2F",
            "https://example.com/caf%C3%A9?q=a%20b&x=%2F",
        ),
        # Case-sensitive values (fbclid) byte for byte.
        (
            "https",
            "example.com",
            None,
            "/",
            "fbclid=AbC_dE-9",
            "https://example.com/?fbclid=AbC_dE-9",
        ),
        ("https", "[2001:db8::1]:8443", None, "/", "", "https://[2001:db8::1]:8443/"),
        ("https", "203.0.113.9", None, "/", "", "https://203.0.113.9/"),
        # Junk Host falls back to the server address; no server -> no URL at all.
        ("https", "evil.com/\r\nx", ("10.0.0.5", 8443), "/", "", "https://10.0.0.5:8443/"),
        ("https", "exa mple.com", ("::1", 443), "/", "", "https://[::1]/"),
        ("http", "", ("localhost", 80), "/a", "", "http://localhost/a"),
        ("https", "bad host", None, "/", "", None),
        # Bytes a browser would have percent-encoded are encoded (latin-1 text = raw bytes).
        ("https", "example.com", None, "/a b\x00", "q=\xe9", "https://example.com/a%20b%00?q=%E9"),
        ("https", "example.com", None, "no-slash", "", "https://example.com/no-slash"),
        # Unknown schemes are treated as http(s), never echoed.
        ("javascript", "example.com", None, "/", "", "http://example.com/"),
        ("wss", "example.com", None, "/", "", "https://example.com/"),
    ],
)
def test_event_source_url(
    scheme: str,
    host: str,
    server: tuple[str, int | None] | None,
    path: str,
    query: str,
    expected: str | None,
) -> None:
    ctx = capture(pipeline(), scheme=scheme, server=server, path=path, query=query, host=host)
    assert ctx.event_source_url == expected


def test_event_source_url_is_capped_query_first() -> None:
    long_query = "x=" + "a" * (MAX_URL_CHARS + 10)
    ctx = capture(pipeline(), path="/page", query=long_query, host="example.com")
    assert ctx.event_source_url == "https://example.com/page"
    long_path = "/" + "%41" * MAX_URL_CHARS
    ctx = capture(pipeline(), path=long_path, host="example.com")
    assert ctx.event_source_url is not None
    assert len(ctx.event_source_url) <= MAX_URL_CHARS
    assert not ctx.event_source_url.endswith(("%", "%4"))


@pytest.mark.parametrize(
    ("referer", "expected"),
    [
        ("https://www.facebook.com/", "https://www.facebook.com/"),
        ("http://l.facebook.com/l.php?u=x&h=y", "http://l.facebook.com/l.php?u=x&h=y"),
        ("HTTPS://Example.com/a", "HTTPS://Example.com/a"),
        ("android-app://com.facebook.katana/", None),
        ("javascript:alert(1)", None),
        ("https://", None),
        ("https:///path", None),
        ("https://a.com/x y", None),
        ("https://a.com/\r\nSet-Cookie: x=1", None),
        ("https://a.com/\xe9", None),
        ("https://a.com/" + "a" * MAX_URL_CHARS, None),
        ("", None),
    ],
)
def test_referrer_url(referer: str, expected: str | None) -> None:
    ctx = capture(pipeline(), host="example.com", referer=referer)
    assert ctx.referrer_url == expected


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        ("Mozilla/5.0 (X11)", "Mozilla/5.0 (X11)"),
        ("  Mozilla/5.0  ", "Mozilla/5.0"),
        ("Mozilla\r\n/5.0\x00", "Mozilla/5.0"),
        ("\x01\x02", None),
        ("", None),
        ("Mozilla/5.0 \xc3\xa9", "Mozilla/5.0 \xc3\xa9"),  # invalid-UTF-8 bytes kept as latin-1
        ("M" * (MAX_USER_AGENT_CHARS + 500), "M" * MAX_USER_AGENT_CHARS),
    ],
)
def test_user_agent(user_agent: str, expected: str | None) -> None:
    ctx = capture(pipeline(), host="example.com", user_agent=user_agent)
    assert ctx.user_agent == expected


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("8.8.8.8", "8.8.8.8"),
        ("2001:4860:4860::8888", "2001:4860:4860::8888"),
        ("127.0.0.1", None),
        ("10.1.2.3", None),
        ("junk", None),
        (None, None),
    ],
)
def test_client_ip_without_trusted_proxies(peer: str | None, expected: str | None) -> None:
    # Without trusted proxies, forwarding headers are the client's own claim: ignored.
    ctx = capture(pipeline(), peer=peer, host="example.com", x_forwarded_for="1.1.1.1")
    assert ctx.client_ip == expected


def test_trusted_proxy_supplies_ip_scheme_and_host() -> None:
    pipe = pipeline(trusted_proxies=("10.0.0.0/8",), trust_forwarded_host=True)
    ctx = capture(
        pipe,
        peer="10.0.0.2",
        scheme="http",
        host="internal:8000",
        x_forwarded_for="9.9.9.9, 10.0.0.7",
        x_forwarded_proto="https",
        x_forwarded_host="shop.example.com",
    )
    assert ctx.client_ip == "9.9.9.9"
    assert ctx.secure is True
    assert ctx.event_source_url == "https://shop.example.com/"
    # Without the opt-in the host is the request's own (issue 10).
    ctx = capture(
        pipeline(trusted_proxies=("10.0.0.0/8",)),
        peer="10.0.0.2",
        scheme="http",
        host="internal:8000",
        x_forwarded_for="9.9.9.9, 10.0.0.7",
        x_forwarded_proto="https",
        x_forwarded_host="shop.example.com",
    )
    assert ctx.event_source_url == "https://internal:8000/"


def test_fbp_and_fbc_cookies_validated() -> None:
    now_ms = 1_700_000_000_000
    good_fbc = f"fb.1.{now_ms}.AbC"
    good_fbp = f"fb.1.{now_ms}.123456"
    ctx = capture(
        pipeline(consent=False),
        host="example.com",
        cookie=f"_fbc={good_fbc}; _fbp={good_fbp}",
    )
    assert (ctx.fbc, ctx.fbp) == (good_fbc, good_fbp)
    ctx = capture(pipeline(consent=False), host="example.com", cookie="_fbc=AbC; _fbp=fb.1.x.y")
    assert (ctx.fbc, ctx.fbp) == (None, None)


def test_consent_signals_protocol() -> None:
    seen: dict[str, Any] = {}

    def policy(signals: Any) -> bool:
        seen["cookie"] = signals.cookies.get("cookie_consent")
        seen["gpc"] = signals.header("Sec-GPC")
        seen["missing"] = signals.header("x-nothing")
        return True

    ctx = capture(
        pipeline(consent=policy), host="example.com", cookie="cookie_consent=yes", sec_gpc="1"
    )
    assert seen == {"cookie": "yes", "gpc": "1", "missing": None}
    assert ctx.consent.granted is True


def test_denied_consent_plans_no_cookies_and_track_is_denied() -> None:
    pipe = pipeline(consent=False)
    ctx = capture(pipe, host="example.com", query="fbclid=AbC")
    assert ctx.response_cookies.take() == []
    assert ctx.fbc is None  # nothing minted without consent
    assert ctx.fbclid == "AbC"
    result = ctx.track("Purchase", value=1, currency="USD")
    assert result.status == "denied"
    assert not result.ok
    assert result.event_id
    assert pipe.client.stats().consent_denied == 1


def test_granted_consent_mints_cookies_used_by_track() -> None:
    ctx = capture(pipeline(), host="shop.example.com", query="fbclid=AbC")
    cookies = ctx.response_cookies.take()
    assert ctx.fbc is not None
    assert ctx.fbc.endswith(".AbC")
    assert ctx.fbp is not None
    assert any(c.startswith(f"_fbc={ctx.fbc};") for c in cookies)
    assert any(c.startswith(f"_fbp={ctx.fbp};") for c in cookies)
    # Once the response started, nothing is handed out twice.
    assert ctx.response_cookies.take() == []


def test_track_dry_run_result() -> None:
    pipe = pipeline()
    ctx = capture(pipe, host="example.com", user_agent="Mozilla/5.0")
    result = ctx.track("purchase", value=9.5, currency="USD", event_id="ev-1")
    assert result == TrackResult(
        event_id="ev-1",
        status="dry_run",
        problems=(),
        event_name="Purchase",  # GA4 name mapped
        custom_data=result.custom_data,
    )
    assert result.ok
    assert dict(result.custom_data) == {"value": 9.5, "currency": "USD"}
    assert pipe.client.stats().dry_run == 1
    fbq = result.fbq()
    assert fbq.startswith("fbq('track', \"Purchase\"")
    assert '"eventID": "ev-1"' in fbq
    snippet = result.pixel_snippet(nonce='n"1')
    assert snippet.startswith('<script nonce="n&quot;1">fbq(')
    assert snippet.endswith("</script>")


def test_custom_data_keyword_and_mapping_merge() -> None:
    ctx = capture(pipeline(), host="example.com", user_agent="UA")
    result = ctx.track("Purchase", custom_data={"value": 1, "currency": "EUR"}, value=2)
    assert dict(result.custom_data) == {"value": 2, "currency": "EUR"}


def test_invalid_event_reported_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    pipe = pipeline()
    ctx = capture(pipe, host="example.com", user_agent="UA")
    with caplog.at_level(logging.WARNING, logger="capi_middleware"):
        result = ctx.track("Purchase", value=10, user_data={"email": EMAIL})
    assert result.status == "invalid"
    assert any(p.fatal and p.meta_subcode == 2804010 for p in result.problems)
    assert "custom_data.currency" in pipe.client.stats().invalid
    assert EMAIL not in caplog.text
    assert EMAIL_HASH not in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"user_data": ["not", "a", "mapping"]}, "user_data"),
        ({"custom_data": 5}, "custom_data"),
    ],
)
def test_non_mapping_arguments_are_invalid(kwargs: dict[str, Any], field: str) -> None:
    ctx = capture(pipeline(), host="example.com", user_agent="UA")
    result = ctx.track("Lead", **kwargs)
    assert result.status == "invalid"
    assert result.problems[0].field == field


def test_strict_raises_validation_error() -> None:
    ctx = capture(pipeline(strict=True), host="example.com", user_agent="UA")
    with pytest.raises(CAPIValidationError) as info:
        ctx.track("Purchase", value=10)
    assert any(p.field == "custom_data.currency" for p in info.value.problems)
    with pytest.raises(CAPIValidationError):
        ctx.track("Lead", user_data=7)  # type: ignore[arg-type]


def test_strict_raises_on_dropped_values_too() -> None:
    ctx = capture(pipeline(strict=True), host="example.com", user_agent="UA")
    with pytest.raises(CAPIValidationError) as info:
        ctx.track("Lead", user_data={"email": "not-an-email"})
    assert "not-an-email" not in str(info.value)


def test_failed_context_reports_error() -> None:
    pipe = pipeline()
    ctx = pipe.failed_context("capture")
    assert ctx.failed
    assert ctx.response_cookies.take() == []
    result = ctx.track("Lead")
    assert result.status == "error"
    assert result.problems == (Problem("request", "capture failed (capture); see the log"),)
    # The pixel call keeps the event's parameters, whatever the status (TrackResult.fbq).
    purchase = ctx.track("purchase", value=5, currency="USD")
    assert purchase.fbq().startswith(
        'fbq(\'track\', "Purchase", {"value": 5, "currency": "USD"}, {"eventID": '
    )


def test_internal_error_in_track_is_reported_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipe = pipeline()
    ctx = capture(pipe, host="example.com", user_agent="UA")

    class Exploding(Mapping[str, Any]):
        """A mapping that fails when read, with personal data in the exception's message."""

        def __getitem__(self, key: str) -> Any:
            raise RuntimeError(EMAIL)

        def __iter__(self) -> Iterator[str]:
            return iter(["email"])

        def __len__(self) -> int:
            return 1

    with caplog.at_level(logging.ERROR, logger="capi_middleware"):
        result = ctx.track("Lead", user_data=Exploding())
    assert result.status == "error"
    assert pipe.client.stats().track_errors == 1
    assert "RuntimeError" in caplog.text
    assert EMAIL not in caplog.text


def test_explicit_user_data_wins_and_none_removes() -> None:
    # dry_run does not expose the payload; the delivery tests check the sent event. Here:
    # user_data overriding request values must not make the event invalid.
    ctx = capture(pipeline(), host="example.com", user_agent="Mozilla/5.0 UA")
    result = ctx.track(
        "Lead", user_data={"client_user_agent": "Other/1.0", "client_ip_address": None}
    )
    assert result.status == "dry_run"


def test_ldu_decision_passes_through() -> None:
    ldu = ConsentDecision(granted=True, ldu=True, reason="gpc")
    ctx = capture(pipeline(consent=lambda s: ldu), host="example.com", user_agent="UA")
    assert ctx.consent.ldu is True
    assert ctx.track("Lead", user_data={"email": EMAIL}).status == "dry_run"


def test_repr_shows_no_personal_data() -> None:
    ctx = capture(
        pipeline(),
        peer="8.8.8.8",
        host="example.com",
        user_agent="SecretAgent/1",
        query="fbclid=Zz",
    )
    text = repr(ctx)
    for value in ("8.8.8.8", "SecretAgent", "Zz", "example.com"):
        assert value not in text
    assert "client_ip" in text


def test_current_contextvar() -> None:
    assert current() is None
    ctx = capture(pipeline(), host="example.com")
    token = activate(ctx)
    try:
        assert current() is ctx
    finally:
        deactivate(token)
    assert current() is None


def test_ctx_fbq_maps_name_and_keeps_event_id() -> None:
    ctx = capture(pipeline(), host="example.com")
    js = ctx.fbq("add_to_cart", event_id="abc", value=3, currency="USD")
    assert js.startswith("fbq('track', \"AddToCart\"")
    assert '"eventID": "abc"' in js
    assert "trackCustom" in ctx.fbq("MyThing")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        ("", False),
        ("no-cache", False),
        ("public, max-age=60", True),
        ("max-age=60, s-maxage=600", True),
        ("private, max-age=60", False),
        ("public, no-store", False),
        ("Public", True),
    ],
)
def test_shared_cacheable(value: str | None, expected: bool) -> None:
    assert is_shared_cacheable(value) is expected


def test_enhancement_remembers_and_enriches() -> None:
    pipe = pipeline(enhancement_secret="test-secret")
    first = capture(pipe, host="example.com", scheme="http", user_agent="UA")
    assert first.track("Lead", user_data={"email": EMAIL}).ok
    cookies = first.response_cookies.take()
    remembered = [c for c in cookies if c.startswith("_capi_ud=")]
    assert len(remembered) == 1
    assert "HttpOnly" in remembered[0]
    assert "Secure" not in remembered[0]
    value = remembered[0].split(";", 1)[0].split("=", 1)[1]
    assert EMAIL not in value
    # The next request carries the cookie: the codec reads the same hash back.
    second = capture(pipe, host="example.com", user_agent="UA", cookie=f"_capi_ud={value}")
    assert second.remembered() == {"em": (sha256_hex(EMAIL),)}
    # Nothing new to remember: no cookie rewritten.
    assert second.track("PageView").ok
    assert not [c for c in second.response_cookies.take() if c.startswith("_capi_ud=")]


def test_enhancement_not_set_after_response_started() -> None:
    pipe = pipeline(enhancement_secret="test-secret")
    ctx = capture(pipe, host="example.com", user_agent="UA")
    ctx.response_cookies.take()
    assert ctx.track("Lead", user_data={"email": EMAIL}).ok
    assert ctx.response_cookies.take() == []


def test_enhancement_off_by_default() -> None:
    ctx = capture(pipeline(), host="example.com", user_agent="UA")
    assert ctx.track("Lead", user_data={"email": EMAIL}).ok
    assert not [c for c in ctx.response_cookies.take() if c.startswith("_capi_ud=")]


def test_kept_cookie_memo_never_holds_minted_values() -> None:
    pipe = pipeline()
    now_ms = 1_700_000_000_000
    cookie = f"_fbp=fb.1.{now_ms}.42; _fbc=fb.1.{now_ms}.Click"
    page = {"sec_fetch_dest": "document"}
    first = capture(pipe, host="www.example.com", cookie=cookie, **page)
    second = capture(pipe, host="www.example.com", cookie=cookie, **page)
    resent = first.response_cookies.take()
    assert resent == second.response_cookies.take()
    assert (second.fbp, second.fbc) == (f"fb.1.{now_ms}.42", f"fb.1.{now_ms}.Click")
    # A new click id mints: each request gets its own creation time and value.
    minted = [
        capture(pipe, host="www.example.com", cookie=cookie, query="fbclid=Other").fbc
        for _ in range(2)
    ]
    assert all(fbc is not None and fbc.endswith(".Other") for fbc in minted)
    fresh = [capture(pipe, host="www.example.com").fbp for _ in range(2)]
    assert fresh[0] != fresh[1]
    # What is remembered is the visitor's validated values, never a minted one: the visitor
    # comes back with the same cookies and gets them, and only them, back.
    again = capture(pipe, host="www.example.com", cookie=cookie, **page)
    assert (again.fbp, again.fbc) == (f"fb.1.{now_ms}.42", f"fb.1.{now_ms}.Click")
    assert again.response_cookies.take() == resent
    assert capture(pipe, host="www.example.com").fbp not in fresh


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"sec-fetch-dest": "document"}, True),
        ({"sec-fetch-mode": "navigate"}, True),
        ({"sec-fetch-dest": "empty", "sec-fetch-mode": "navigate"}, True),
        ({"sec-fetch-dest": "empty", "sec-fetch-mode": "cors"}, False),
        ({"sec-fetch-site": "same-origin", "accept": "text/html"}, True),
        ({"accept": "text/html"}, True),
        ({"accept": "application/xhtml+xml,text/html;q=0.9"}, True),
        ({"accept": "application/json"}, False),
        ({}, False),
    ],
)
def test_is_navigation(headers: dict[str, str], expected: bool) -> None:
    ctx = capture(
        pipeline(), host="example.com", **{k.replace("-", "_"): v for k, v in headers.items()}
    )
    assert is_navigation(ctx) is expected


def test_attributes_are_worked_out_on_first_read_and_never_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipe = pipeline()
    ctx = capture(
        pipe,
        host="shop.example.com",
        user_agent="UA/1\x00",
        referer="https://ads.example.org/x",
        path="/p",
        query="a=1",
    )
    assert ctx.client_ip == "8.8.8.8"
    assert ctx.user_agent == "UA/1"
    assert ctx.event_source_url == "https://shop.example.com/p?a=1"
    assert ctx.referrer_url == "https://ads.example.org/x"
    # A context whose raw header map holds a non-bytes value (a broken server): capture does not
    # read the user agent, so nothing fails yet; the first read returns None, and the failure is
    # counted and logged then, and nothing raises into the app.
    broken = pipe.capture_raw(
        peer="8.8.8.8",
        scheme="https",
        server=None,
        raw_path="/",
        query_string="",
        header_map={b"host": b"example.com", b"user-agent": 42},  # type: ignore[dict-item]
    )
    assert pipe.client.stats().capture_errors == 0  # not worked out yet
    with caplog.at_level(logging.ERROR, logger="capi_middleware"):
        assert broken.user_agent is None
    assert pipe.client.stats().capture_errors == 1
    assert "user agent" in caplog.text


# -- the ASGI fast path: a request's capture outcome reused ------------------------------------

NOW_FBP = "fb.1.1700000000000.42"
NOW_FBC = "fb.1.1700000000000.Click"
RETURNING = f"cookie_consent=accept; sessionid=s1; _fbp={NOW_FBP}; _fbc={NOW_FBC}"
PAGE = {"sec-fetch-dest": "document", "sec-fetch-mode": "navigate"}
XHR = {"sec-fetch-dest": "empty", "sec-fetch-mode": "cors"}

REPLAY_CASES: list[tuple[str, Any, dict[str, str], bytes]] = [
    ("no-signal", None, {}, b""),
    ("no-signal-session-cookie", None, {"cookie": "sessionid=abc"}, b"page=2"),
    ("consent-cookie-new-visitor", None, {"cookie": "cookie_consent=accept"}, b""),
    ("returning-page", None, {"cookie": RETURNING, **PAGE}, b""),
    ("returning-xhr", None, {"cookie": RETURNING, **XHR}, b""),
    ("returning-gpc", None, {"cookie": RETURNING, "sec-gpc": "1", **PAGE}, b""),
    ("rejected-with-own-cookies", None, {"cookie": f"cookie_consent=reject; _fbp={NOW_FBP}"}, b""),
    ("malformed-fbp", None, {"cookie": "cookie_consent=accept; _fbp=fb.1.1.1", **PAGE}, b""),
    ("consent-true-new", True, {}, b""),
    ("consent-true-returning", True, {"cookie": f"_fbp={NOW_FBP}", **PAGE}, b""),
    ("consent-false", False, {"cookie": RETURNING}, b""),
    ("custom-builtin", "site_cookie", {"cookie": "ok=1"}, b""),
    ("http", None, {"cookie": RETURNING, **PAGE}, b""),
]


def raw_capture(pipe: CapturePipeline, headers: dict[str, str], query: bytes, scheme: str) -> Any:
    header_map = {
        b"host": b"www.example.com",
        b"user-agent": b"UA/2",
        **{k.encode(): v.encode() for k, v in headers.items()},
    }
    return pipe.capture_raw(
        peer="8.8.8.8",
        scheme=scheme,
        server=("10.0.0.1", 8000),
        raw_path=b"/shop",
        query_string=query,
        header_map=header_map,
    )


def observed(ctx: RequestContext, given_fbp: str | None) -> dict[str, Any]:
    minted = ctx.fbp if ctx.fbp not in (None, given_fbp) else None
    cookies = ctx.response_cookies.take()
    return {
        "consent": ctx.consent,
        "fbc": ctx.fbc,
        "fbp": "<minted>" if minted else ctx.fbp,
        "set_cookie": [c.replace(minted, "<minted>") if minted else c for c in cookies],
        "cookies": dict(ctx.cookies),
        "secure": ctx.secure,
        "client_ip": ctx.client_ip,
        "user_agent": ctx.user_agent,
        "event_source_url": ctx.event_source_url,
        "referrer_url": ctx.referrer_url,
    }


@pytest.mark.parametrize(
    ("consent_option", "headers", "query"),
    [case[1:] for case in REPLAY_CASES],
    ids=[case[0] for case in REPLAY_CASES],
)
def test_a_reused_outcome_is_the_same_as_a_fresh_capture(
    consent_option: Any, headers: dict[str, str], query: bytes, request: pytest.FixtureRequest
) -> None:
    if consent_option == "site_cookie":
        consent_option = site_cookie("ok")
    scheme = "http" if request.node.callspec.id == "http" else "https"
    given_fbp = NOW_FBP if NOW_FBP in headers.get("cookie", "") else None
    # A pipeline's first request goes through the whole rule set; later ones with the same
    # key may reuse its outcome. Each must see what a fresh pipeline sees.
    expected = observed(
        raw_capture(pipeline(consent=consent_option), headers, query, scheme), given_fbp
    )
    pipe = pipeline(consent=consent_option)
    for _ in range(3):
        assert observed(raw_capture(pipe, headers, query, scheme), given_fbp) == expected
    assert pipe.client.stats().requests == 3


@pytest.mark.parametrize(
    ("headers", "query", "click"),
    [
        ({"cookie": RETURNING}, b"fbclid=NewClick", "NewClick"),
        ({"cookie": RETURNING, "referer": "https://x.example/?fbclid=Ref"}, b"", "Ref"),
    ],
)
def test_a_request_with_a_click_id_mints_its_own_fbc_every_time(
    headers: dict[str, str], query: bytes, click: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reused outcome would hand back the visitor's old _fbc, or the first request's.
    clock = [1_700_000_100.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    pipe = pipeline(consent=None)
    for _ in range(3):
        ctx = raw_capture(pipe, headers, query, "https")
        fbc = f".{int(clock[0] * 1000)}.{click}"
        assert ctx.fbc is not None
        assert ctx.fbc.endswith(fbc)
        (set_fbc,) = [c for c in ctx.response_cookies.take() if c.startswith("_fbc=")]
        assert set_fbc.split(";")[0].endswith(fbc)
        clock[0] += 1.0


def test_a_custom_policy_runs_on_every_request() -> None:
    calls: list[int] = []

    def mine(signals: Any) -> bool:
        calls.append(1)
        return True

    pipe = pipeline(consent=mine)
    for _ in range(2):
        assert raw_capture(pipe, {"cookie": RETURNING}, b"", "https").consent.granted
    assert len(calls) == 2  # a user's own policy may read anything: never a reused decision


def test_behind_a_trusted_proxy_each_request_reads_its_own_forwarded_headers() -> None:
    pipe = pipeline(consent=None, trusted_proxies=("8.8.8.8/32",))
    for proto, ip in [("https", "1.2.3.4"), ("http", "5.6.7.8")] * 2:  # the same Cookie and Host
        forwarded = {"x-forwarded-proto": proto, "x-forwarded-for": ip}
        ctx = raw_capture(pipe, {"cookie": RETURNING, **forwarded}, b"", "https")
        assert (ctx.secure, ctx.client_ip) == (proto == "https", ip)
        assert ctx.event_source_url == f"{proto}://www.example.com/shop"
