"""CAPIDjangoMiddleware under WSGI and ASGI Django: settings.CAPI, request.capi, cookies."""

from __future__ import annotations

import asyncio
import io
import re
from typing import Any

import httpx
import pytest
from apps import django_site

django_site.configure()

from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.management.base import SystemCheckError  # noqa: E402
from django.test import override_settings  # noqa: E402

from capi_middleware.capture.context import current  # noqa: E402
from capi_middleware.django import check_settings, get_pipeline  # noqa: E402

FBCLID = "IwAR_django-Click~1"
UA = "Mozilla/5.0 DjangoTest/1.0"
BASE = "https://shop.example.com"


def wsgi_get(capi: dict[str, Any], path: str, **kwargs: Any) -> httpx.Response:
    with override_settings(CAPI=capi):
        handler = WSGIHandler()
    transport = httpx.WSGITransport(app=handler, remote_addr="8.8.8.8")
    with httpx.Client(transport=transport, base_url=BASE, headers={"user-agent": UA}) as c:
        return c.get(path, **kwargs)


def asgi_get(capi: dict[str, Any], path: str, **kwargs: Any) -> httpx.Response:
    with override_settings(CAPI=capi):
        handler = ASGIHandler()

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=handler, client=("8.8.4.4", 1234))
        async with httpx.AsyncClient(
            transport=transport, base_url=BASE, headers={"user-agent": UA}
        ) as c:
            return await c.get(path, **kwargs)

    return asyncio.run(go())


GET = {"wsgi": wsgi_get, "asgi": asgi_get}
PEER = {"wsgi": "8.8.8.8", "asgi": "8.8.4.4"}
GRANTED = {"consent": True, "dry_run": True}


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_request_capi_holds_what_meta_matches_on(mode: str) -> None:
    response = GET[mode](GRANTED, f"/landing?fbclid={FBCLID}&x=1")
    body = response.json()
    assert body["client_ip"] == PEER[mode]
    assert body["user_agent"] == UA
    assert body["fbclid"] == FBCLID
    assert body["event_source_url"] == f"{BASE}/landing?fbclid={FBCLID}&x=1"
    assert re.fullmatch(rf"fb\.1\.\d{{13}}\.{FBCLID}", body["fbc"])


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_cookies_are_set_on_the_response_with_metas_attributes(mode: str) -> None:
    response = GET[mode](GRANTED, f"/landing?fbclid={FBCLID}")
    # Django's WSGI handler renders Set-Cookie with a leading space; servers strip it.
    values = [v.strip() for v in response.headers.get_list("set-cookie")]
    fbc_header = next(v for v in values if v.startswith("_fbc="))
    assert fbc_header.startswith(f"_fbc={response.json()['fbc']};")
    lowered = fbc_header.lower()
    for attribute in ("domain=example.com", "max-age=7776000", "path=/", "samesite=lax", "secure"):
        assert attribute in lowered
    assert "httponly" not in lowered
    assert response.cookies.get("_fbp", "").startswith("fb.1.")


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_the_views_own_cookie_survives(mode: str) -> None:
    response = GET[mode](GRANTED, f"/own-cookie?fbclid={FBCLID}")
    assert response.cookies.get("session") == "s1"
    assert response.cookies.get("_fbc", "").endswith(FBCLID)


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
@pytest.mark.parametrize("path", ["/buy", "/async-buy"])
def test_track_from_sync_and_async_views(mode: str, path: str) -> None:
    response = GET[mode](GRANTED, f"{path}?fbclid={FBCLID}")
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9a-f-]{16,}", response.json()["event_id"])
    assert current() is None  # reset after the request


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_without_consent_no_cookies(mode: str) -> None:
    response = GET[mode]({"dry_run": True}, f"/landing?fbclid={FBCLID}")
    assert response.headers.get_list("set-cookie") == []
    assert response.json()["fbc"] is None


def test_the_views_exception_is_handled_by_django_as_usual() -> None:
    assert wsgi_get(GRANTED, "/boom").status_code == 500


@pytest.mark.parametrize(
    ("capi", "message"),
    [
        ({"pixle_id": "1"}, "pixle_id"),
        ({"pixel_id": "abc", "access_token": "t"}, "pixel_id"),
        ({"trusted_proxies": ["not a network"]}, "trusted_proxies"),
        ("pixel=1", "settings.CAPI"),
    ],
)
def test_bad_settings_fail_manage_py_check_naming_the_option(capi: Any, message: str) -> None:
    with (
        override_settings(CAPI=capi, INSTALLED_APPS=["capi_middleware.django.CAPIAppConfig"]),
        pytest.raises(SystemCheckError, match=message) as info,
    ):
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())
    assert "capi_middleware.E001" in str(info.value)
    with override_settings(CAPI=capi), pytest.raises(ImproperlyConfigured, match=message):
        get_pipeline()  # the explicit call still raises


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_bad_settings_never_fail_a_request(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    capi = {"pixel_id": "abc", "access_token": "t", "consent": True}
    with caplog.at_level("ERROR", logger="capi_middleware"):
        landing = GET[mode](capi, f"/landing?fbclid={FBCLID}")
        bought = GET[mode](capi, "/buy")
    assert landing.status_code == bought.status_code == 200
    assert landing.headers.get_list("set-cookie") == []  # untouched: tracking is off
    assert landing.json()["fbclid"] is None
    assert bought.json()["status"] == "error"
    said = [r.getMessage() for r in caplog.records if "configuration error" in r.getMessage()]
    assert len(said) <= 1  # once per process and message (an earlier test may have said it)
    assert all("pixel_id [META_PIXEL_ID]" in line for line in said)


def test_manage_py_check_warns_about_what_would_drop_or_misroute_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("META_PIXEL_ID", "META_ACCESS_TOKEN", "META_DRY_RUN"):
        monkeypatch.delenv(name, raising=False)
    out = io.StringIO()
    with override_settings(CAPI={"pixel_id": "1", "access_token": "t", "test_event_code": "T1"}):
        call_command("check", stdout=out, stderr=out)
    assert "capi_middleware.W002" in out.getvalue()
    with override_settings(CAPI={"consent": True}):
        assert [m.id for m in check_settings()] == ["capi_middleware.W001"]


def test_one_pipeline_per_process_and_settings() -> None:
    with override_settings(CAPI=GRANTED):
        first = get_pipeline()
        assert get_pipeline() is first
    with override_settings(CAPI={"consent": True, "dry_run": True, "set_fbp": False}):
        assert get_pipeline() is not first


def test_env_vars_fill_what_settings_leave_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("META_PIXEL_ID", "777")
    monkeypatch.setenv("META_ACCESS_TOKEN", "env-token")
    with override_settings(CAPI={"consent": True}):
        assert get_pipeline().config.pixel_id == "777"


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_serverless_delivers_before_the_response_is_handed_back(mode: str) -> None:
    from capi_middleware.testing.fake import FAKE_ACCESS_TOKEN, FAKE_PIXEL_ID, FakeGraphAPI

    with FakeGraphAPI() as fake:
        capi = {
            "consent": True,
            "serverless": True,
            "pixel_id": FAKE_PIXEL_ID,
            "access_token": FAKE_ACCESS_TOKEN,
            "graph_url": fake.url,
            "flush_interval": 30.0,  # only the serverless delivery sends within the test
        }
        response = GET[mode](capi, "/buy")
        assert response.status_code == 200
        assert fake.event_ids == [response.json()["event_id"]]  # already there
        with override_settings(CAPI=capi):
            assert get_pipeline().client.close(5.0)


def test_get_client_is_the_middlewares_client_for_events_outside_a_request() -> None:
    from capi_middleware import ConsentDecision, Visitor
    from capi_middleware.django import get_client

    with override_settings(CAPI=GRANTED):
        client = get_client()
        assert client is get_pipeline().client
        visitor = Visitor(
            client_ip="81.2.69.160",
            user_agent=UA,
            event_source_url="https://shop.example.com/checkout",
            consent=ConsentDecision(granted=True, reason="site_cookie"),
        )
        result = client.track("Purchase", visitor=visitor, value=10, currency="EUR")
        assert result.status == "dry_run"
        assert client.stats().dry_run >= 1
