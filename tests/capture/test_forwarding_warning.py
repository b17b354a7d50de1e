"""Forwarding headers from a peer that is not trusted: one WARNING per process (issue 12,
point 4), naming the header, the peer and the option.

Each case runs in a fresh process (the warning is once per process), driving the app through
``httpx.ASGITransport`` / ``WSGITransport`` with the peer address a server would give.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import asyncio, json, logging, sys
import httpx
from capi_middleware import CAPIMiddleware, CAPIWSGIMiddleware

adapter, peer, headers, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
options.setdefault("dry_run", True)

async def asgi_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

def wsgi_app(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]

if adapter == "asgi":
    app = CAPIMiddleware(asgi_app, **options)
    async def go():
        transport = httpx.ASGITransport(app=app, client=(peer, 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as c:
            for _ in range(3):
                assert (await c.get("/", headers=headers)).status_code == 200
    asyncio.run(go())
else:
    app = CAPIWSGIMiddleware(wsgi_app, **options)
    transport = httpx.WSGITransport(app=app, remote_addr=peer)
    with httpx.Client(transport=transport, base_url="http://shop.test") as c:
        for _ in range(3):
            assert c.get("/", headers=headers).status_code == 200
"""


def _warnings(adapter: str, peer: str, headers: dict[str, str], **options: object) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, adapter, peer, json.dumps(headers), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if line.startswith("WARNING")]


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_a_private_proxy_without_trusted_proxies_is_named_once(adapter: str) -> None:
    (line,) = _warnings(adapter, "10.0.0.5", {"x-forwarded-for": "203.0.113.9"})
    assert line == (
        "WARNING capi_middleware: a request from 10.0.0.5 carries X-Forwarded-For, but "
        "trusted_proxies [META_TRUSTED_PROXIES] is not set, so the header is ignored: the IP "
        "sent to Meta is the peer's, and the page URL's scheme and host are what the peer asked "
        "for. If 10.0.0.5 is your proxy or CDN, add its addresses to trusted_proxies "
        "(docs/proxies.md). (Said once per process.)"
    )
    assert "203.0.113.9" not in line  # the visitor's own address is never logged


def test_a_public_peer_is_shown_only_to_its_network() -> None:
    (line,) = _warnings(
        "asgi",
        "34.120.5.77",
        {"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"},
    )
    assert "a request from 34.120.5.0/24 carries X-Forwarded-For and X-Forwarded-Proto" in line
    assert "34.120.5.77" not in line


def test_a_peer_outside_the_configured_proxies_is_named() -> None:
    (line,) = _warnings(
        "asgi", "10.9.9.9", {"forwarded": "for=203.0.113.9"}, trusted_proxies=["10.0.0.0/24"]
    )
    assert (
        "from 10.9.9.9 carries Forwarded, but trusted_proxies [META_TRUSTED_PROXIES] does not "
        "include 10.9.9.9, so the header is ignored" in line
    )


@pytest.mark.parametrize(
    ("peer", "headers", "options"),
    [
        ("10.0.0.5", {"x-forwarded-for": "203.0.113.9"}, {"trusted_proxies": ["10.0.0.0/8"]}),
        ("10.0.0.5", {}, {}),  # no forwarding header at all
        # uvicorn --forwarded-allow-ips put the client from X-Forwarded-For in scope["client"]
        ("203.0.113.9", {"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"}, {}),
    ],
)
def test_no_warning_when_the_headers_are_believed_or_absent(
    peer: str, headers: dict[str, str], options: dict[str, object]
) -> None:
    assert _warnings("asgi", peer, headers, **options) == []
