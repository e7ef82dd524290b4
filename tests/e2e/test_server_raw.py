"""The broker's wire behaviour over raw sockets on a real loopback port (no client library).

Framing, sessions, pipelining, out-of-order replies, limits, errors and connection ends, as
PROTOCOL.md fixes them. ``raw_connect`` / ``make_server`` / ``server`` are in tests/conftest.py.
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest

from durable_tq.servers.tcp import BrokerServer

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

RawConnect = Callable[..., AbstractAsyncContextManager[Any]]
MakeServer = Callable[..., AbstractAsyncContextManager[BrokerServer]]


def error_code(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    return str(reply["error"]["code"])


async def eventually(check: Callable[[], Any], within: float = 10.0) -> None:
    """Poll ``check`` (sync or async) until it is true; fail after ``within`` seconds."""
    with anyio.fail_after(within):
        while True:
            outcome = check()
            if not isinstance(outcome, bool):
                outcome = await outcome
            if outcome:
                return
            await anyio.sleep(0.02)


# --- pipelining and ordering ---------------------------------------------------------------------


async def test_hundred_pipelined_requests_all_answered_by_id(
    server: BrokerServer, raw_connect: RawConnect
) -> None:
    async with raw_connect(server.url) as conn:
        # Pipelined requests run concurrently: the get reads a task committed beforehand.
        first = (await conn.request("enqueue", queue="pipe", payload="first"))["task_id"]
        sent: dict[Any, str] = {}
        for n in range(100):
            op = ("enqueue", "stats", "get")[n % 3]
            args: dict[str, Any] = {"queue": "pipe", "payload": n} if op == "enqueue" else {}
            if op == "get":
                args = {"task_id": first}
            request_id = f"r{n}" if n % 2 else n  # ids may be strings or integers
            await conn.send(op, id=request_id, **args)
            sent[request_id] = op
        replies = [await conn.receive() for _ in sent]
        assert sorted(map(str, (r["id"] for r in replies))) == sorted(map(str, sent))
        for reply in replies:
            op = sent[reply["id"]]
            assert reply["ok"] is True, reply
            assert {"enqueue": "task_id", "stats": "queues", "get": "task"}[op] in reply
        stats = await conn.request("stats")
        assert stats["queues"]["pipe"]["queued"] == 35


async def test_parked_claim_answers_after_later_requests(
    server: BrokerServer, raw_connect: RawConnect
) -> None:
    async with raw_connect(server.url) as worker, raw_connect(server.url) as producer:
        claim_id = await worker.send("claim", queues=["empty"], wait=5)
        stats_id = await worker.send("stats")
        first = await worker.receive()
        assert first["id"] == stats_id and first["ok"], first  # the stats overtook the claim

        started = time.monotonic()
        enqueued = await producer.request("enqueue", queue="empty", payload="wake up")
        claimed = await worker.receive()
        elapsed = time.monotonic() - started
        assert claimed["id"] == claim_id, claimed
        assert [t["task_id"] for t in claimed["tasks"]] == [enqueued["task_id"]]
        assert elapsed < 4.0  # woken by the commit, well before the 5 s wait ran out


async def test_claim_wait_runs_out_with_empty_list(
    server: BrokerServer, raw_connect: RawConnect
) -> None:
    async with raw_connect(server.url) as conn:
        reply = await conn.request("claim", queues=["nothing"], wait=0.2)
        assert reply == {"id": reply["id"], "ok": True, "tasks": []}


async def test_inflight_limit_stops_reading(
    make_server: MakeServer, raw_connect: RawConnect
) -> None:
    """With max_inflight=2 and two parked claims, the next request is not even read until a
    claim is answered: its reply can only come after a claim's."""
    async with make_server(max_inflight=2) as srv, raw_connect(srv.url) as conn:
        first_claim = await conn.send("claim", queues=["a"], wait=0.5)
        second_claim = await conn.send("claim", queues=["b"], wait=1.5)
        stats = await conn.send("stats")
        order = [(await conn.receive())["id"] for _ in range(3)]
        assert order == [first_claim, stats, second_claim]


async def test_slow_reader_is_pushed_back_not_buffered(
    make_server: MakeServer, raw_connect: RawConnect
) -> None:
    """A client that sends requests with big replies and never reads them: the broker's writes
    block, its in-flight slots fill, it stops reading, and TCP pushes back on the sender."""
    async with make_server(max_inflight=4) as srv:
        async with raw_connect(srv.url) as conn:
            big = await conn.request("enqueue", queue="big", payload="x" * 500_000)
        limit = 256 << 20  # a broker that buffers without bound would swallow all of this
        request = json.dumps({"op": "get", "task_id": big["task_id"]}).encode() + b"\n"
        chunk = request * 10_000
        sent = 0
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.setblocking(False)
            sock.send(b'{"id":0,"op":"hello","version":1}\n')
            stalled_since: float | None = None
            with anyio.fail_after(60):
                while sent < limit:
                    try:
                        sent += sock.send(chunk)
                        stalled_since = None
                    except BlockingIOError:
                        now = time.monotonic()
                        stalled_since = stalled_since or now
                        if now - stalled_since > 1.0:
                            break  # nothing accepted for a second: pushed back
                    await anyio.sleep(0.01)
            assert sent < limit, "the broker kept reading from a client that never reads"
            # The stuck connection still goes away cleanly when the client does.
            linger_abort = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # close with a reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_abort)
        await eventually(lambda: srv.broker.connections == 0)
        async with raw_connect(srv.url) as conn:
            assert (await conn.request("stats"))["ok"]


# --- framing and malformed input -----------------------------------------------------------------


async def test_bad_json_gets_bad_request_and_connection_stays_open(
    server: BrokerServer, raw_connect: RawConnect
) -> None:
    async with raw_connect(server.url) as conn:
        for line in (b"{not json", b"[1, 2, 3]", b'"text"', b"", b"\xff\xfe"):
            await conn.send_line(line)
            reply = await conn.receive()
            assert reply["id"] is None and error_code(reply) == "bad_request", (line, reply)
        await conn.send_line(b'{"id": 7, "queue": "q"}')  # no op: the id is still known
        reply = await conn.receive()
        assert reply["id"] == 7 and error_code(reply) == "bad_request"
        await conn.send_line(b'{"id": [1], "op": "stats"}')
        assert error_code(await conn.receive()) == "bad_request"
        reply = await conn.request("enqueue", queue="q", priority="high")
        assert error_code(reply) == "bad_request" and "priority" in reply["error"]["message"]
        assert (await conn.request("stats"))["ok"]


async def test_unknown_op(server: BrokerServer, raw_connect: RawConnect) -> None:
    async with raw_connect(server.url) as conn:
        reply = await conn.request("teleport", task_id=1)
        assert error_code(reply) == "unknown_op"
        assert (await conn.request("stats"))["ok"]


async def test_request_without_id_gets_null_id(
    server: BrokerServer, raw_connect: RawConnect
) -> None:
    async with raw_connect(server.url) as conn:
        await conn.send("stats", id=None)
        reply = await conn.receive()
        assert reply["id"] is None and reply["ok"] is True and "queues" in reply


async def test_frame_at_the_limit_is_read(make_server: MakeServer, raw_connect: RawConnect) -> None:
    async with make_server(max_frame_bytes=1024) as srv, raw_connect(srv.url) as conn:
        frame = b'{"id": 1, "op": "stats"}'
        await conn.send_line(frame.ljust(1024))  # exactly 1024 bytes before the newline
        assert (await conn.receive())["ok"] is True


async def test_frame_over_the_limit_closes(
    make_server: MakeServer, raw_connect: RawConnect
) -> None:
    async with make_server(max_frame_bytes=1024) as srv:
        async with raw_connect(srv.url) as conn:
            await conn.send_line(b'{"id": 1, "op": "stats"}'.ljust(1025))
            reply = await conn.receive()
            assert reply["id"] is None and error_code(reply) == "frame_too_large"
            assert await conn.at_eof()
        async with raw_connect(srv.url) as conn:
            # No newline at all: the broker gives up once it holds more than the limit.
            await conn.stream.send(b"x" * 5000)
            reply = await conn.receive()
            assert reply["id"] is None and error_code(reply) == "frame_too_large"
            assert await conn.at_eof()


async def test_many_frames_in_one_packet_and_one_frame_in_many(
    server: BrokerServer, raw_connect: RawConnect
) -> None:
    async with raw_connect(server.url) as conn:
        await conn.stream.send(b'{"id":1,"op":"stats"}\n{"id":2,"op":"stats"}\n{"id":3,"op":"st')
        # The two whole frames are answered while the third is still half-read...
        assert sorted([(await conn.receive())["id"] for _ in range(2)]) == [1, 2]
        await conn.stream.send(b'ats"}\n')
        # ...and the third once its end arrives.
        assert (await conn.receive())["id"] == 3


# --- session -------------------------------------------------------------------------------------


async def test_request_before_hello(server: BrokerServer, raw_connect: RawConnect) -> None:
    async with raw_connect(server.url, hello=False) as conn:
        reply = await conn.request("stats")
        assert error_code(reply) == "hello_required"
        assert (await conn.hello())["ok"]  # still open
        assert (await conn.request("stats"))["ok"]


async def test_hello_reply(server: BrokerServer, raw_connect: RawConnect) -> None:
    async with raw_connect(server.url, hello=False) as conn:
        reply = await conn.hello()
        assert reply["version"] == 1 and reply["server"].startswith("durable_tq/")
        assert reply["heartbeat_interval"] > 0
        assert error_code(await conn.hello()) == "conflict"  # a second hello
        assert (await conn.request("stats"))["ok"]


async def test_hello_pipelined_with_requests(server: BrokerServer, raw_connect: RawConnect) -> None:
    """Requests sent right behind hello, without waiting for its reply, are served."""
    async with raw_connect(server.url, hello=False) as conn:
        await conn.send("hello", id="h", version=1, worker={"id": "w1", "queues": ["q"]})
        await conn.send("enqueue", id="e", queue="q")
        await conn.send("heartbeat", id="b")
        replies = {r["id"]: r for r in [await conn.receive() for _ in range(3)]}
        assert all(r["ok"] for r in replies.values()), replies
        assert replies["b"]["state"] == "running"


async def test_unsupported_version_closes(server: BrokerServer, raw_connect: RawConnect) -> None:
    async with raw_connect(server.url, hello=False) as conn:
        reply = await conn.hello(version=99)
        assert error_code(reply) == "unsupported_version"
        assert await conn.at_eof()


async def test_bye_answers_last_then_closes(server: BrokerServer, raw_connect: RawConnect) -> None:
    async with raw_connect(server.url) as conn:
        enqueue_id = await conn.send("enqueue", queue="q")
        claim_id = await conn.send("claim", queues=["never"], wait=30)
        bye_id = await conn.send("bye")
        replies = [await conn.receive() for _ in range(3)]
        assert [r["id"] for r in replies][-1] == bye_id
        by_id = {r["id"]: r for r in replies}
        assert by_id[enqueue_id]["ok"] and by_id[bye_id]["ok"]
        assert by_id[claim_id]["tasks"] == []  # the parked claim ended with the connection
        assert await conn.at_eof()


async def test_silent_client_closed_after_hello_timeout(
    make_server: MakeServer, raw_connect: RawConnect
) -> None:
    async with make_server(hello_timeout=0.3) as srv:
        async with raw_connect(srv.url, hello=False) as conn:
            assert await conn.at_eof(within=10)
        async with raw_connect(srv.url, hello=False) as conn:
            # Requests other than hello do not keep a connection alive either.
            assert error_code(await conn.request("stats")) == "hello_required"
            assert await conn.at_eof(within=10)
        async with raw_connect(srv.url) as conn:  # a greeted connection is not timed out
            await anyio.sleep(0.6)
            assert (await conn.request("stats"))["ok"]


async def test_idle_timeout_spares_parked_claims(
    make_server: MakeServer, raw_connect: RawConnect
) -> None:
    async with make_server(idle_timeout=0.3) as srv, raw_connect(srv.url) as conn:
        reply = await conn.request("claim", queues=["q"], wait=1.0)
        assert reply["tasks"] == []  # waited longer than idle_timeout, still answered
        assert await conn.at_eof(within=10)  # then silent: closed


async def test_too_many_connections(make_server: MakeServer, raw_connect: RawConnect) -> None:
    async with make_server(max_connections=2) as srv:
        async with raw_connect(srv.url) as first, raw_connect(srv.url):
            async with raw_connect(srv.url, hello=False) as third:
                reply = await third.receive()
                assert reply["id"] is None and error_code(reply) == "too_many_connections"
                assert await third.at_eof()
            assert (await first.request("stats"))["connections"] == 2
        await eventually(lambda: srv.broker.connections == 0)
        async with raw_connect(srv.url) as again:
            assert (await again.request("stats"))["connections"] == 1


async def test_connections_counted_in_stats(server: BrokerServer, raw_connect: RawConnect) -> None:
    async with raw_connect(server.url) as one:
        async with raw_connect(server.url):
            assert (await one.request("stats"))["connections"] == 2
        await eventually(lambda: server.broker.connections == 1)
        assert (await one.request("stats"))["connections"] == 1


async def test_worker_connection_end_is_recorded(
    server: BrokerServer, raw_connect: RawConnect
) -> None:
    async with raw_connect(server.url, hello={"worker": {"id": "w9", "queues": ["q"]}}) as conn:
        workers = (await conn.request("workers"))["workers"]
        assert [(w["id"], w["connected"]) for w in workers] == [("w9", True)]
    async with raw_connect(server.url) as conn:

        async def gone() -> bool:
            workers = (await conn.request("workers"))["workers"]
            return [(w["id"], w["connected"]) for w in workers] == [("w9", False)]

        await eventually(gone)


# --- errors --------------------------------------------------------------------------------------


async def test_internal_error_is_short_on_the_wire_and_logged(
    server: BrokerServer,
    raw_connect: RawConnect,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(server.broker, "stats", broken)
    async with raw_connect(server.url) as conn:
        with caplog.at_level(logging.ERROR, logger="durable_tq.servers.tcp"):
            reply = await conn.request("stats")
        assert error_code(reply) == "internal"
        assert "secret" not in json.dumps(reply) and "Traceback" not in json.dumps(reply)
        assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)
        assert (await conn.request("get", task_id=1))["error"]["code"] == "not_found"  # open


# --- connection ends and leases ------------------------------------------------------------------


@pytest.mark.sqlite_only  # patches the SQLite store's commit
async def test_claim_cut_off_mid_commit_hands_its_task_back(
    server: BrokerServer,
    raw_connect: RawConnect,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client leaves while its claim's write sits in a slow group commit. The write
    commits (a lease nobody will ack); the broker must hand that task back, not strand it
    until its lease (30 s here) runs out."""
    caplog.set_level(logging.INFO, logger="durable_tq.servers.tcp")
    async with raw_connect(server.url) as producer:
        task_id = (await producer.request("enqueue", queue="slow", payload=1))["task_id"]

        store = server.broker.store
        real_commit = store._commit

        def slow_commit(conn: sqlite3.Connection, batch: list[Any]) -> None:
            time.sleep(0.5)  # on the database thread: the batch is in flight meanwhile
            real_commit(conn, batch)

        monkeypatch.setattr(store, "_commit", slow_commit)
        # Another write's slow commit is in flight: the claim waits for the next batch.
        await producer.send("enqueue", queue="other", payload=2)
        await anyio.sleep(0.1)
        async with raw_connect(server.url) as worker:
            await worker.send("claim", queues=["slow"])
            await anyio.sleep(0.2)  # read, and its write waits behind the slow commit
        monkeypatch.setattr(store, "_commit", real_commit)
        await producer.receive()  # the other enqueue's reply
        # The worker's connection is gone once its claim has finished, hand-back included.
        await eventually(lambda: server.broker.connections == 1)
        assert f"task {task_id} (queue slow): handed back" in caplog.text
        task = (await producer.request("get", task_id=task_id))["task"]
        assert task["state"] == "queued"
        assert task["attempts"] == 0  # a hand-back does not use up an attempt
        claimed = await producer.request("claim", queues=["slow"])
        assert [t["task_id"] for t in claimed["tasks"]] == [task_id]


async def test_parked_claims_end_when_the_connection_drops(
    server: BrokerServer, raw_connect: RawConnect
) -> None:
    async with raw_connect(server.url) as conn:
        await conn.send("claim", queues=["drop"], wait=60)
        await eventually(lambda: server.broker.waiters.waiting("drop") == 1)
    await eventually(lambda: server.broker.waiters.waiting("drop") == 0)
    async with raw_connect(server.url) as producer:
        task_id = (await producer.request("enqueue", queue="drop"))["task_id"]
        task = (await producer.request("get", task_id=task_id))["task"]
        assert task["state"] == "queued"


# --- graceful shutdown (in process) --------------------------------------------------------------


async def test_shutdown_ends_parked_claims_and_refuses_new_requests(
    make_server: MakeServer, raw_connect: RawConnect
) -> None:
    async with make_server() as srv:
        async with raw_connect(srv.url) as parked, raw_connect(srv.url) as idle:
            claim_id = await parked.send("claim", queues=["q"], wait=60)
            await eventually(lambda: srv.broker.waiters.waiting("q") == 1)
            srv.request_shutdown()
            reply = await parked.receive()
            assert reply["id"] == claim_id and error_code(reply) == "shutting_down"
            assert await parked.at_eof()
            notice = await idle.receive()  # an idle connection is told, then closed
            assert notice["id"] is None and error_code(notice) == "shutting_down"
            assert await idle.at_eof()
            with anyio.fail_after(10):
                await srv.wait_stopped()
        with pytest.raises(OSError), anyio.fail_after(10):
            await anyio.connect_tcp("127.0.0.1", srv.port)  # no longer listening
