"""The dashboard's server side over plain HTTP (httpx, no browser): its pages and files, the
login that sets the token cookie, the cookie accepted by /v1, and cross-site changes refused.
The pages themselves are driven in Chromium by tests/browser/test_dashboard.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request

from durable_tq.config import load_settings
from durable_tq.servers.http import auth
from durable_tq.servers.http.dashboard import STATIC_TYPES, Dashboard, is_loopback
from durable_tq.servers.tcp import BrokerServer

pytestmark = pytest.mark.anyio

ADMIN = "admin-secret"
PRODUCER = "producer-secret"
TOKENS = [{"token": ADMIN, "role": "admin"}, {"token": PRODUCER, "role": "producer"}]
Dash = Callable[..., AbstractAsyncContextManager[tuple[BrokerServer, httpx.AsyncClient]]]


@pytest.fixture
def dash(make_server: Callable[..., Any]) -> Dash:
    """``async with dash(**settings) as (server, http)``: a broker and an httpx client on its
    HTTP listener that keeps cookies, as a browser would."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[tuple[BrokerServer, httpx.AsyncClient]]:
        async with (
            make_server(**overrides) as server,
            httpx.AsyncClient(base_url=server.http.url, timeout=30) as http,
        ):
            yield server, http

    return start


async def test_the_root_serves_the_dashboard_with_its_files(dash: Dash) -> None:
    async with dash() as (server, http):
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert 'data-role="admin"' in page.text
        # The footer says the dashboard is open, naming the bound port (not a configured 0).
        assert "No tokens configured" in page.text
        assert f"127.0.0.1:{server.http.port}" in page.text
        for name, content_type in STATIC_TYPES.items():
            reply = await http.get(f"/static/{name}")
            assert reply.status_code == 200, name
            assert reply.headers["content-type"] == content_type
            again = await http.get(
                f"/static/{name}", headers={"If-None-Match": reply.headers["etag"]}
            )
            assert again.status_code == 304 and again.content == b""
        assert (await http.get("/static/../app.py")).status_code == 404
        assert (await http.get("/static/nothing.js")).status_code == 404
        # No tokens: there is nothing to log in to.
        login = await http.get("/login")
        assert login.status_code == 303 and login.headers["location"] == "/"


async def test_login_sets_an_httponly_strict_cookie_that_the_api_accepts(dash: Dash) -> None:
    async with dash(auth_tokens=TOKENS) as (_, http):
        first = await http.get("/")
        assert first.status_code == 303 and first.headers["location"] == "/login"
        assert (await http.get("/v1/stats")).status_code == 401
        form = await http.get("/login")
        assert form.status_code == 200 and 'name="token"' in form.text

        wrong = await http.post("/login", data={"token": "guess"})
        assert wrong.status_code == 401
        assert "not one of this broker" in wrong.text
        assert auth.COOKIE not in http.cookies

        right = await http.post("/login", data={"token": ADMIN})
        assert right.status_code == 303 and right.headers["location"] == "/"
        set_cookie = right.headers["set-cookie"]
        assert set_cookie.startswith(f"{auth.COOKIE}=")
        for attribute in ("HttpOnly", "SameSite=strict", "Path=/"):
            assert attribute.lower() in set_cookie.lower(), set_cookie
        assert "secure" not in set_cookie.lower()  # plain HTTP here; HTTPS adds Secure

        page = await http.get("/")
        assert page.status_code == 200 and 'data-role="admin"' in page.text
        assert "Log out" in page.text
        assert (await http.get("/v1/stats")).status_code == 200
        await http.post("/v1/queues/q/tasks", json={}, headers={auth.CSRF_HEADER: "1"})

        # A change authenticated by the cookie needs the CSRF header.
        refused = await http.post("/v1/queues/q/pause")
        assert refused.status_code == 403
        assert "X-Durable-TQ-CSRF" in refused.json()["error"]["message"]
        assert (await http.post("/v1/queues/q/pause", headers={auth.CSRF_HEADER: "1"})).is_success

        out = await http.post("/logout")
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert auth.COOKIE not in http.cookies
        assert (await http.get("/v1/stats")).status_code == 401


async def test_a_producer_cookie_reads_but_may_not_change(dash: Dash) -> None:
    async with dash(auth_tokens=TOKENS) as (_, http):
        assert (await http.post("/login", data={"token": PRODUCER})).status_code == 303
        page = await http.get("/")
        assert 'data-role="producer"' in page.text and "read only" in page.text
        assert (await http.get("/v1/throughput")).status_code == 200
        reply = await http.post("/v1/queues/q/pause", headers={auth.CSRF_HEADER: "1"})
        assert reply.status_code == 403 and reply.json()["error"]["code"] == "forbidden"


async def test_a_bearer_header_wins_over_the_cookie(dash: Dash) -> None:
    async with dash(auth_tokens=TOKENS) as (_, http):
        await http.post("/login", data={"token": ADMIN})
        reply = await http.post(
            "/v1/queues/q/pause", headers={"Authorization": f"Bearer {PRODUCER}"}
        )
        assert reply.status_code == 403  # the producer header, not the admin cookie
        reply = await http.post("/v1/queues/q/pause", headers={"Authorization": "Bearer nope"})
        assert reply.status_code == 401
        http.cookies.set(auth.COOKIE, "not base64 of anything!")
        assert (await http.get("/v1/stats")).status_code == 401


@pytest.mark.parametrize("tokens", [False, True], ids=["open", "tokens"])
async def test_cross_site_changes_are_refused(dash: Dash, tokens: bool) -> None:
    async with dash(auth_tokens=TOKENS if tokens else []) as (server, http):
        bearer = {"Authorization": f"Bearer {ADMIN}"} if tokens else {}
        own = server.http.url
        for headers in (
            {"Origin": "https://evil.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site", "Origin": own},
        ):
            reply = await http.post("/v1/queues/q/pause", headers={**bearer, **headers})
            assert reply.status_code == 403, headers
            assert "refused" in reply.json()["error"]["message"]
        # Reads are not changes; the own origin and clients without browser headers pass.
        assert (await http.get("/v1/stats", headers={**bearer, "Origin": "https://x"})).is_success
        same = {"Origin": own, "Sec-Fetch-Site": "same-origin"}
        assert (await http.post("/v1/queues/q/pause", headers={**bearer, **same})).is_success
        assert (await http.post("/v1/queues/q/resume", headers=bearer)).is_success
        if tokens:  # logging in from another site is refused too
            login = await http.post(
                "/login", data={"token": ADMIN}, headers={"Origin": "https://evil.example"}
            )
            assert login.status_code == 403 and auth.COOKIE not in http.cookies


async def test_open_dashboard_is_refused_off_loopback() -> None:
    """No tokens and a listener other machines can reach: the pages say why and stop there.
    (The app is built for 0.0.0.0 and called in memory: nothing is bound.)"""
    settings = load_settings(http_host="0.0.0.0", http_port=7481, auth_tokens=[])
    protected = load_settings(http_host="0.0.0.0", http_port=7481, auth_tokens=[ADMIN])
    for these, status in ((settings, 403), (protected, 303)):
        app = Starlette(routes=Dashboard(these).routes())
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://broker:7481") as client:
            page = await client.get("/")
        assert page.status_code == status
        if status == 403:
            assert "not a loopback address" in page.text and "auth_tokens" in page.text
            assert "broker:7481" in page.text


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False),
     ("broker.internal", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("token", ["plain", "with space; and=semicolon", "ünïcode-✓", "a" * 500])
def test_any_token_fits_the_cookie(token: str) -> None:
    value = auth.cookie_value(token)
    assert value.isascii() and ";" not in value and " " not in value
    scope = {"type": "http", "headers": [(b"cookie", f"{auth.COOKIE}={value}".encode())]}
    assert auth.cookie_token(Request(scope)) == token
