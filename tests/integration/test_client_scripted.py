"""AsyncClient against scripted brokers: a stand-in on a real port answers each request from
a script, so retries, reply matching, refusals and broken replies are exercised exactly."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.tls import TLSListener

from durable_tq import errors
from durable_tq.client import AsyncClient, EnqueueResult, Stats

pytestmark = pytest.mark.anyio

Send = Callable[[Any], Awaitable[None]]
Close = Callable[[], Awaitable[None]]
Script = Callable[[dict[str, Any], Send, Close], Awaitable[None]]


@asynccontextmanager
async def fake_broker(
    script: Script,
    *,
    hello_error: dict[str, Any] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[int]:
    """A broker stand-in on a real port: answers hello, hands other requests to ``script``."""
    hellos = 0

    async def serve(stream: anyio.abc.ByteStream) -> None:
        nonlocal hellos
        receiver = BufferedByteReceiveStream(stream)
        lock = anyio.Lock()

        async def send(message: Any) -> None:
            async with lock:
                await stream.send(json.dumps(message).encode() + b"\n")

        async with stream, anyio.create_task_group() as tg:

            async def close() -> None:
                await stream.aclose()
                tg.cancel_scope.cancel()

            try:
                while True:
                    request = json.loads(await receiver.receive_until(b"\n", 1 << 20))
                    if request["op"] != "hello":
                        tg.start_soon(script, request, send, close)
                        continue
                    hellos += 1
                    if hello_error is not None:
                        await send({"id": request["id"], "ok": False, "error": hello_error})
                        break
                    await send(
                        {
                            "id": request["id"],
                            "ok": True,
                            "server": "fake/1",
                            "version": 1,
                            "heartbeat_interval": 1,
                            "max_frame_bytes": 4096,
                        }
                    )
            except (anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            tg.cancel_scope.cancel()

    listener: anyio.abc.Listener[Any] = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    if ssl_context is not None:
        listener = TLSListener(listener, ssl_context, standard_compatible=False)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield port
        tg.cancel_scope.cancel()


async def test_busy_is_retried_after_retry_after() -> None:
    attempts = 0

    async def script(request: dict[str, Any], send: Send, close: Close) -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:
            error = {"code": "busy", "message": "queue full", "retry_after": 0.05}
            await send({"id": request["id"], "ok": False, "error": error})
        else:
            await send({"id": request["id"], "ok": True, "task_id": 7, "created": True})

    async with fake_broker(script) as port, AsyncClient("127.0.0.1", port) as client:
        started = anyio.current_time()
        assert await client.enqueue("q", 1) == EnqueueResult(task_id=7, created=True)
        assert anyio.current_time() - started >= 0.09
    assert attempts == 3


async def test_busy_is_raised_after_busy_retries() -> None:
    attempts = 0

    async def script(request: dict[str, Any], send: Send, close: Close) -> None:
        nonlocal attempts
        attempts += 1
        error = {"code": "busy", "message": "queue full", "retry_after": 0.01}
        await send({"id": request["id"], "ok": False, "error": error})

    async with (
        fake_broker(script) as port,
        AsyncClient("127.0.0.1", port, busy_retries=2) as client,
    ):
        with pytest.raises(errors.Busy) as caught:
            await client.enqueue("q", 1)
    assert caught.value.retry_after == 0.01
    assert attempts == 3


async def test_replies_out_of_order_reach_their_requests() -> None:
    async def script(request: dict[str, Any], send: Send, close: Close) -> None:
        await anyio.sleep(0.3 if request["task_id"] == 1 else 0.0)  # the first answers last
        task = {
            "task_id": request["task_id"],
            "queue": "q",
            "state": "queued",
            "payload": None,
            "priority": 0,
            "attempts": 0,
            "max_attempts": 5,
            "run_at": 1.0,
            "created_at": 1.0,
            "updated_at": 1.0,
            "lease_expires_at": None,
            "worker_id": None,
            "last_error": None,
            "result": None,
            "unique_key": None,
            "added_later": "x",
        }
        await send({"id": request["id"], "ok": True, "task": task, "also_added": 1})

    async with fake_broker(script) as port, AsyncClient("127.0.0.1", port) as client:
        got: dict[int, int] = {}

        async def get(task_id: int) -> None:
            got[task_id] = (await client.get(task_id)).task_id

        async with anyio.create_task_group() as tg:
            for task_id in (1, 2, 3):
                tg.start_soon(get, task_id)
        assert got == {1: 1, 2: 2, 3: 3}


async def test_broker_shutting_down_fails_in_flight_requests() -> None:
    async def script(request: dict[str, Any], send: Send, close: Close) -> None:
        if request["op"] == "claim":
            await anyio.sleep(0.1)
            await send(
                {"id": None, "ok": False, "error": {"code": "shutting_down", "message": "stopping"}}
            )
            await close()
        else:
            await send(
                {"id": request["id"], "ok": True, "queues": {}, "workers": 0, "connections": 1}
            )

    async with fake_broker(script) as port, AsyncClient("127.0.0.1", port) as client:
        with pytest.raises(errors.ConnectionLost) as caught:
            await client.claim("q", wait=5)
        assert isinstance(caught.value.__cause__, errors.ShuttingDown)
        assert "shutting_down" in str(caught.value)
        assert (await client.stats()).connections == 1  # a fresh connection


async def test_refused_while_shutting_down_is_sent_again_on_a_new_connection() -> None:
    seen: list[str] = []

    async def script(request: dict[str, Any], send: Send, close: Close) -> None:
        seen.append(request["op"])
        if len(seen) == 1:  # refused: not done, and the broker closes
            error = {"code": "shutting_down", "message": "stopping"}
            await send({"id": request["id"], "ok": False, "error": error})
            await close()
        else:
            await send({"id": request["id"], "ok": True, "task_id": 3, "created": True})

    async with fake_broker(script) as port, AsyncClient("127.0.0.1", port) as client:
        assert (await client.enqueue("q", 1)).task_id == 3
    assert seen == ["enqueue", "enqueue"]


async def test_write_is_not_resent_but_read_is() -> None:
    seen: list[str] = []

    async def script(request: dict[str, Any], send: Send, close: Close) -> None:
        seen.append(request["op"])
        if seen.count(request["op"]) == 1:
            await close()  # the first of each op dies with the connection
        else:
            await send(
                {"id": request["id"], "ok": True, "queues": {}, "workers": 0, "connections": 1}
            )

    async with fake_broker(script) as port, AsyncClient("127.0.0.1", port) as client:
        with pytest.raises(errors.ConnectionLost):
            await client.enqueue("q", 1)
        assert isinstance(await client.stats(), Stats)
    assert seen == ["enqueue", "stats", "stats"]


async def test_mangled_reply_breaks_the_connection() -> None:
    async def script(request: dict[str, Any], send: Send, close: Close) -> None:
        await send("not an object")

    async with fake_broker(script) as port, AsyncClient("127.0.0.1", port) as client:
        with pytest.raises(errors.ConnectionLost):
            await client.request("stats")


async def test_unauthorized_is_not_retried() -> None:
    async def script(request: dict[str, Any], send: Send, close: Close) -> None:
        raise AssertionError("no request may follow a refused hello")

    error = {"code": "unauthorized", "message": "missing or wrong token"}
    async with fake_broker(script, hello_error=error) as port:
        with pytest.raises(errors.Unauthorized):
            async with AsyncClient("127.0.0.1", port, token="wrong"):
                pass


async def test_oversized_request_is_refused_before_sending() -> None:
    async def script(request: dict[str, Any], send: Send, close: Close) -> None:
        await send({"id": request["id"], "ok": True, "task_id": 1, "created": True})

    async with fake_broker(script) as port, AsyncClient("127.0.0.1", port) as client:
        with pytest.raises(errors.FrameTooLarge):
            await client.enqueue("q", "x" * 5000)  # the fake announced 4096 bytes
        assert (await client.enqueue("q", "small")).task_id == 1


async def test_tls(tmp_path: Any) -> None:
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    async def script(request: dict[str, Any], send: Send, close: Close) -> None:
        await send({"id": request["id"], "ok": True, "queues": {}, "workers": 0, "connections": 1})

    async with fake_broker(script, ssl_context=server_context) as port:
        url = f"tls://localhost:{port}"
        async with AsyncClient.from_url(url, ssl_context=client_context) as client:
            assert client.url == url
            assert (await client.stats()).connections == 1
        with pytest.raises(errors.ConnectionLost) as caught:  # an untrusted certificate
            async with AsyncClient.from_url(url):
                pass
        assert "after 1 attempt" in str(caught.value)  # not retried
