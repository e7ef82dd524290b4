"""TLS on the broker's port (certificates from a throwaway ``trustme`` CA) and hello tokens."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme

from durable_tq import errors
from durable_tq.servers.tcp import BrokerServer

pytestmark = pytest.mark.anyio

RawConnect = Callable[..., AbstractAsyncContextManager[Any]]
MakeServer = Callable[..., AbstractAsyncContextManager[BrokerServer]]


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> dict[str, Path]:
    """A server certificate for 127.0.0.1 and localhost, as PEM files for the settings."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_pem.write_to_path(str(key_path))
    with cert_path.open("wb") as out:
        for blob in cert.cert_chain_pems:
            out.write(blob.bytes())
    return {"tls_cert": cert_path, "tls_key": key_path}


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def error_code(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    return str(reply["error"]["code"])


# --- TLS -----------------------------------------------------------------------------------------


async def test_tls_client_works(
    make_server: MakeServer,
    raw_connect: RawConnect,
    tls_files: dict[str, Path],
    client_context: ssl.SSLContext,
) -> None:
    async with make_server(**tls_files) as srv:
        assert srv.url.startswith("tls://127.0.0.1:")
        async with raw_connect(srv.url, ssl_context=client_context) as conn:
            enqueued = await conn.request("enqueue", queue="secure", payload={"n": 1})
            claimed = await conn.request("claim", queues=["secure"])
            assert [t["task_id"] for t in claimed["tasks"]] == [enqueued["task_id"]]
            bye = await conn.request("bye")
            assert bye["ok"] and await conn.at_eof()


async def test_plain_tcp_client_on_tls_port_is_closed_not_hung(
    make_server: MakeServer,
    raw_connect: RawConnect,
    tls_files: dict[str, Path],
    client_context: ssl.SSLContext,
) -> None:
    async with make_server(hello_timeout=0.5, **tls_files) as srv:
        plain_url = srv.url.replace("tls://", "tcp://")
        with anyio.fail_after(10):
            async with raw_connect(plain_url, hello=False) as conn:
                await conn.send("hello", version=1)  # plaintext where a handshake belongs
                assert await conn.at_eof()
            async with raw_connect(plain_url, hello=False) as conn:
                assert await conn.at_eof()  # silent: closed once hello_timeout passes
        # The broker is unharmed.
        async with raw_connect(srv.url, ssl_context=client_context) as conn:
            assert (await conn.request("stats"))["connections"] == 1


async def test_tls_client_against_plain_port_fails_cleanly(
    server: BrokerServer, client_context: ssl.SSLContext
) -> None:
    with anyio.fail_after(10), pytest.raises((ssl.SSLError, OSError, anyio.BrokenResourceError)):
        await anyio.connect_tcp("127.0.0.1", server.port, tls=True, ssl_context=client_context)


async def test_untrusted_certificate_is_refused_by_the_client(
    make_server: MakeServer, tls_files: dict[str, Path]
) -> None:
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)  # some other CA
    async with make_server(**tls_files) as srv:
        with anyio.fail_after(10), pytest.raises((ssl.SSLError, anyio.BrokenResourceError)):
            await anyio.connect_tcp("127.0.0.1", srv.port, tls=True, ssl_context=stranger)


async def test_unreadable_certificate_is_a_config_error(
    make_settings: Callable[..., Any], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"
    settings = make_settings(tls_cert=missing, tls_key=missing)
    with pytest.raises(errors.ConfigError, match="TLS certificate"):
        await BrokerServer(settings).serve()


# --- auth ----------------------------------------------------------------------------------------


async def test_right_token_is_accepted(make_server: MakeServer, raw_connect: RawConnect) -> None:
    async with make_server(auth_tokens=["old-token", "s3cret"]) as srv:
        async with raw_connect(srv.url, hello={"token": "s3cret"}) as conn:
            assert (await conn.request("stats"))["ok"]
        async with raw_connect(srv.url, hello={"token": "old-token"}) as conn:
            assert (await conn.request("stats"))["ok"]


@pytest.mark.parametrize("hello", [{"token": "wrong"}, {}, {"token": ""}], ids=str)
async def test_wrong_or_missing_token_is_unauthorized_and_closed(
    make_server: MakeServer, raw_connect: RawConnect, hello: dict[str, Any]
) -> None:
    async with (
        make_server(auth_tokens=["s3cret"]) as srv,
        raw_connect(srv.url, hello=False) as conn,
    ):
        reply = await conn.hello(**hello)
        assert error_code(reply) == "unauthorized"
        assert "s3cret" not in reply["error"]["message"]
        assert await conn.at_eof()


async def test_requests_pipelined_behind_a_refused_hello_are_not_run(
    make_server: MakeServer, raw_connect: RawConnect
) -> None:
    async with make_server(auth_tokens=["s3cret"]) as srv:
        async with raw_connect(srv.url, hello=False) as conn:
            await conn.send("hello", version=1, token="wrong")
            await conn.send("enqueue", queue="sneaky")
            assert error_code(await conn.receive()) == "unauthorized"
            assert await conn.at_eof()
        async with raw_connect(srv.url, hello={"token": "s3cret"}) as conn:
            assert "sneaky" not in (await conn.request("stats"))["queues"]


async def test_tls_and_token_together(
    make_server: MakeServer,
    raw_connect: RawConnect,
    tls_files: dict[str, Path],
    client_context: ssl.SSLContext,
) -> None:
    async with make_server(auth_tokens=["s3cret"], **tls_files) as srv:
        async with raw_connect(
            srv.url, ssl_context=client_context, hello={"token": "s3cret"}
        ) as conn:
            assert (await conn.request("stats"))["ok"]
        async with raw_connect(srv.url, ssl_context=client_context, hello=False) as conn:
            assert error_code(await conn.hello(token="nope")) == "unauthorized"
            assert await conn.at_eof()
