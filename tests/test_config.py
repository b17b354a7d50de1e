from __future__ import annotations

import pytest

from capi_middleware import CAPIConfig, Destination

TOKEN = "EAABsecret-token-value"
SECRET = "app-secret-value"


def test_minimal_config_and_defaults() -> None:
    cfg = CAPIConfig(pixel_id="123", access_token=TOKEN)
    assert cfg.graph_url == "https://graph.facebook.com"
    assert cfg.api_version == "v26.0"
    assert cfg.timeout == 1.5
    assert cfg.batch_size == 1000
    assert cfg.events_url("123") == "https://graph.facebook.com/v26.0/123/events"
    assert TOKEN not in cfg.events_url("123")
    (dest,) = cfg.destinations()
    assert dest.pixel_id == "123"
    assert dest.access_token == TOKEN


def test_repr_never_shows_secrets() -> None:
    cfg = CAPIConfig(
        pixel_id="123",
        access_token=TOKEN,
        app_secret=SECRET,
        enhancement_secret="enh-secret",
        extra_pixels=(Destination("456", access_token="other-token", app_secret="s2"),),
    )
    text = repr(cfg) + str(cfg) + repr(cfg.destinations())
    for secret in (TOKEN, SECRET, "enh-secret", "other-token", "s2'"):
        assert secret not in text
    assert "pixel_id='123'" in text


@pytest.mark.parametrize(
    ("options", "option_named"),
    [
        ({"pixel_id": "abc", "access_token": TOKEN}, "pixel_id"),
        ({"pixel_id": "123"}, "access_token"),
        ({"access_token": TOKEN}, "pixel_id"),
        ({"pixel_id": "123", "access_token": "  "}, "access_token"),
        ({"pixel_id": "1", "access_token": TOKEN, "graph_url": "ftp://x"}, "graph_url"),
        ({"pixel_id": "1", "access_token": TOKEN, "api_version": "26"}, "api_version"),
        (
            {"pixel_id": "1", "access_token": TOKEN, "trusted_proxies": ["10.0.0.0/33"]},
            "trusted_proxies",
        ),
        (
            {"pixel_id": "1", "access_token": TOKEN, "trusted_proxies": ["proxy.local"]},
            "trusted_proxies",
        ),
        (
            {"pixel_id": "1", "access_token": TOKEN, "cookie_domain": "exa mple.com"},
            "cookie_domain",
        ),
        ({"pixel_id": "1", "access_token": TOKEN, "default_country": "USA"}, "default_country"),
        ({"pixel_id": "1", "access_token": TOKEN, "consent": "yes"}, "consent"),
        ({"pixel_id": "1", "access_token": TOKEN, "batch_size": 1001}, "batch_size"),
        ({"pixel_id": "1", "access_token": TOKEN, "batch_size": 0}, "batch_size"),
        ({"pixel_id": "1", "access_token": TOKEN, "max_queue": True}, "max_queue"),
        ({"pixel_id": "1", "access_token": TOKEN, "timeout": 0}, "timeout"),
        ({"pixel_id": "1", "access_token": TOKEN, "timeout": float("nan")}, "timeout"),
        ({"pixel_id": "1", "access_token": TOKEN, "flush_interval": -1}, "flush_interval"),
        ({"pixel_id": "1", "access_token": TOKEN, "on_dead_letter": 3}, "on_dead_letter"),
        ({"pixel_id": "1", "access_token": TOKEN, "extra_pixels": ("456",)}, "extra_pixels"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, object], option_named: str) -> None:
    with pytest.raises(ValueError, match=rf"^{option_named}( \[META_[A-Z_]+\])?:") as info:
        CAPIConfig(**options)  # type: ignore[arg-type]
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(
    ("options", "label"),
    [
        ({"pixel_id": "abc", "access_token": TOKEN}, "pixel_id [META_PIXEL_ID]:"),
        ({"pixel_id": "123"}, "access_token [META_ACCESS_TOKEN]:"),
        ({"access_token": TOKEN}, "pixel_id [META_PIXEL_ID]:"),
        ({"dry_run": True, "graph_url": "ftp://x"}, "graph_url [META_GRAPH_URL]:"),
        ({"dry_run": True, "api_version": "26"}, "api_version [META_API_VERSION]:"),
        ({"dry_run": True, "trusted_proxies": ["x"]}, "trusted_proxies [META_TRUSTED_PROXIES]:"),
        ({"dry_run": True, "cookie_domain": "a b"}, "cookie_domain [META_COOKIE_DOMAIN]:"),
        ({"dry_run": True, "default_country": "USA"}, "default_country [META_DEFAULT_COUNTRY]:"),
        ({"dry_run": "yes"}, "dry_run [META_DRY_RUN]:"),
        ({"dry_run": True, "batch_size": 0}, "batch_size:"),  # no variable for this one
    ],
)
def test_every_message_about_an_option_names_its_environment_variable(
    options: dict[str, object], label: str
) -> None:
    with pytest.raises(ValueError) as info:
        CAPIConfig(**options)  # type: ignore[arg-type]
    assert str(info.value).startswith(label)


def test_a_bad_pixel_id_is_never_quoted() -> None:
    # A token pasted into META_PIXEL_ID must not end up in the startup log.
    with pytest.raises(ValueError) as info:
        CAPIConfig(pixel_id=TOKEN.replace("EAAB", "EAAG"), access_token=TOKEN)
    assert str(info.value) == (
        "pixel_id [META_PIXEL_ID]: must be the pixel's numeric id, e.g. '1234567890' "
        "(this value looks like an access token)"
    )


def test_a_missing_half_says_which_half_is_set() -> None:
    with pytest.raises(ValueError) as info:
        CAPIConfig.from_env({"META_PIXEL_ID": "123"})
    assert str(info.value) == (
        "access_token [META_ACCESS_TOKEN]: not set, but pixel_id [META_PIXEL_ID] is (they go "
        "together; or set dry_run=True to send nothing)"
    )


def test_normalizes_values() -> None:
    cfg = CAPIConfig(
        pixel_id=" 123 ",
        access_token=TOKEN,
        graph_url="http://127.0.0.1:9999/",
        cookie_domain=".Example.COM",
        default_country="us",
        trusted_proxies="10.0.0.0/8",  # type: ignore[arg-type]
    )
    assert cfg.pixel_id == "123"
    assert cfg.graph_url == "http://127.0.0.1:9999"
    assert cfg.cookie_domain == "example.com"
    assert cfg.default_country == "US"
    assert cfg.trusted_proxies == ("10.0.0.0/8",)
    assert [str(n) for n in cfg.trusted_networks()] == ["10.0.0.0/8"]


def test_dry_run_needs_no_credentials() -> None:
    cfg = CAPIConfig(dry_run=True)
    assert cfg.destinations() == ()


def test_from_env_reads_meta_variables_and_overrides_win() -> None:
    env = {
        "META_PIXEL_ID": "42",
        "META_ACCESS_TOKEN": TOKEN,
        "META_APP_SECRET": SECRET,
        "META_TEST_EVENT_CODE": "TEST123",
        "META_GRAPH_URL": "http://127.0.0.1:1234",
        "META_API_VERSION": "v25.0",
        "META_OUTBOX": "/tmp/x.sqlite3",
        "META_DRY_RUN": "true",
        "META_TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16",
        "META_DEFAULT_COUNTRY": "gb",
    }
    cfg = CAPIConfig.from_env(env, api_version="v26.0")
    assert cfg.pixel_id == "42"
    assert cfg.access_token == TOKEN
    assert cfg.app_secret == SECRET
    assert cfg.test_event_code == "TEST123"
    assert cfg.graph_url == "http://127.0.0.1:1234"
    assert cfg.api_version == "v26.0"
    assert cfg.outbox == "/tmp/x.sqlite3"
    assert cfg.dry_run is True
    assert cfg.trusted_proxies == ("10.0.0.1", "192.168.0.0/16")
    assert cfg.default_country == "GB"


def test_from_env_bad_bool_names_the_variable() -> None:
    with pytest.raises(ValueError, match=r"^dry_run \[META_DRY_RUN\]: expected true"):
        CAPIConfig.from_env({"META_DRY_RUN": "maybe"})
    assert CAPIConfig.from_env({"META_DRY_RUN": "debug"}).dry_run == "debug"


def test_from_options_rejects_unknown_keywords_and_overrides_a_config() -> None:
    with pytest.raises(TypeError, match="CAPIMiddleware: unknown option"):
        CAPIConfig.from_options("CAPIMiddleware", None, {"pixelid": "1"})
    with pytest.raises(TypeError) as info:
        CAPIConfig.from_options("X", None, {"trusted_proxy": "10.0.0.1", "colour": "red"})
    assert str(info.value) == (
        "X: unknown option(s) colour, trusted_proxy (did you mean trusted_proxies?)"
    )
    base = CAPIConfig(pixel_id="1", access_token=TOKEN)
    assert CAPIConfig.from_options("X", base, {}) is base
    assert CAPIConfig.from_options("X", base, {"dry_run": True}).dry_run is True


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_a_test_event_code_is_warned_about_at_start(
    adapter: str, caplog: pytest.LogCaptureFixture
) -> None:
    from capi_middleware import CAPIMiddleware, CAPIWSGIMiddleware

    cls = CAPIMiddleware if adapter == "asgi" else CAPIWSGIMiddleware
    with caplog.at_level("WARNING", logger="capi_middleware"):
        cls(lambda *a: None, pixel_id="1", access_token=TOKEN, test_event_code="TEST1")
    assert any(
        "test_event_code [META_TEST_EVENT_CODE] is set" in r.getMessage() for r in caplog.records
    )
    assert all(TOKEN not in r.getMessage() for r in caplog.records)
