"""NUL characters (U+0000) on the wire, on both backends.

JSON text cannot hold a raw NUL byte (a control character), so one in a frame is bad JSON on
either backend. ``\\u0000`` inside JSON text is fine: payloads, results and worker meta are
stored as the JSON text that was sent, byte for byte, on both. A *decoded* string argument
that holds U+0000 (a queue name, a key, an error or progress message...) is stored by SQLite;
PostgreSQL's text cannot hold it, so there the request is answered ``bad_request``, saying
so, and the requests around it are unaffected.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest

from durable_tq.servers.tcp import BrokerServer

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

RawConnect = Callable[..., AbstractAsyncContextManager[Any]]
NUL = "\u0000"


async def raw_reply(conn: Any, frame: bytes) -> tuple[dict[str, Any], bytes]:
    """Send one frame; its reply, parsed and as the bytes that came."""
    await conn.send_line(frame)
    with anyio.fail_after(10):
        line = await conn.buffered.receive_until(b"\n", 1 << 20)
    return json.loads(line), bytes(line)


async def test_a_payload_with_an_escaped_nul_is_stored_byte_for_byte(
    server: BrokerServer, raw_connect: RawConnect
) -> None:
    payload = b'{"text":"a\\u0000b","n":[1, 2.50]}'  # as sent: spacing and 2.50 kept
    async with raw_connect(server.url) as conn:
        reply, _ = await raw_reply(
            conn, b'{"id":1,"op":"enqueue","queue":"q","payload":%s}' % payload
        )
        assert reply["ok"], reply
        task_id = reply["task_id"]
        _, got = await raw_reply(conn, b'{"id":2,"op":"get","task_id":%d}' % task_id)
        assert b'"payload":' + payload in got
        claimed, line = await raw_reply(conn, b'{"id":3,"op":"claim","queues":["q"]}')
        assert b'"payload":' + payload in line
        (task,) = claimed["tasks"]
        result = b'{"out":"\\u0000"}'
        ack = b'{"id":4,"op":"ack","task_id":%d,"lease_token":"%s","result":%s}' % (
            task_id,
            task["lease_token"].encode(),
            result,
        )
        assert (await raw_reply(conn, ack))[0]["ok"]
        _, got = await raw_reply(conn, b'{"id":5,"op":"get","task_id":%d}' % task_id)
        assert b'"result":' + result in got


async def test_a_raw_nul_byte_is_bad_json_on_either_backend(
    server: BrokerServer, raw_connect: RawConnect
) -> None:
    async with raw_connect(server.url) as conn:
        frame = b'{"id":1,"op":"enqueue","queue":"q","payload":"a\x00b"}'
        reply, _ = await raw_reply(conn, frame)
        assert reply["ok"] is False and reply["error"]["code"] == "bad_request", reply
        assert (await conn.request("enqueue", queue="q", payload=1))["ok"]


async def test_a_nul_in_a_text_argument(
    server: BrokerServer, raw_connect: RawConnect, db_backend: str
) -> None:
    """SQLite stores it; PostgreSQL answers bad_request naming the cause. The requests
    pipelined beside it (the same group commit) are answered as if it were not there."""
    async with raw_connect(server.url) as conn:
        ids = [
            await conn.send("enqueue", queue="fine", payload=1),
            await conn.send("enqueue", queue=f"bad{NUL}queue", payload=2),
            await conn.send("enqueue", queue="fine", payload=3, unique_key=f"k{NUL}"),
            await conn.send("enqueue", queue="fine", payload=4),
        ]
        replies = [await conn.reply_to(request_id) for request_id in ids]
        assert replies[0]["ok"] and replies[3]["ok"]
        refused = replies[1:3]
        if db_backend == "sqlite":
            assert all(reply["ok"] for reply in refused), refused
        else:
            for reply in refused:
                assert reply["ok"] is False and reply["error"]["code"] == "bad_request", reply
                assert "NUL character" in reply["error"]["message"]

        # An error message and a progress message of a leased task; a list by queue (a read).
        claimed = await conn.request("claim", queues=["fine"])
        (task,) = claimed["tasks"]
        lease = {"task_id": task["task_id"], "lease_token": task["lease_token"]}
        progress = await conn.request("progress", **lease, fraction=0.5, message=f"x{NUL}")
        failed = await conn.request("fail", **lease, error=f"boom{NUL}", retry=False)
        listed = await conn.request("list", queue=f"bad{NUL}queue")
        for reply in (progress, failed, listed):
            if db_backend == "sqlite":
                assert reply["ok"], reply
            else:
                assert reply["error"]["code"] == "bad_request", reply
        if db_backend == "postgres":  # the refused fail changed nothing: the lease holds
            assert (await conn.request("ack", **lease))["ok"]
        stats = await conn.request("stats")
        assert stats["ok"] and stats["queues"]["fine"]["queued"] >= 1
