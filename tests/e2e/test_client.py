"""The client library against a real broker on a real port (and a few scripted fake brokers).

``broker_url`` comes from tests/conftest.py: ``tcp://127.0.0.1:PORT`` of an in-process broker
on a fresh database. The blocking ``Client`` runs in a worker thread so the broker (which may
share the test's event loop) keeps serving while the client blocks.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import anyio.abc
import pytest

from durable_tq import errors
from durable_tq.client import (
    AsyncClient,
    ClaimedTask,
    Client,
    EnqueueRequest,
    EnqueueResult,
    FailResult,
    RequestTimeout,
    Stats,
    TaskInfo,
    TaskPage,
    WorkerInfo,
)
from durable_tq.servers.tcp import BrokerServer

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

MISSING_TASK_ID = 987_654_321


@pytest.fixture
async def client(broker_url: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient.from_url(broker_url) as opened:
        yield opened


async def claim_one(client: AsyncClient, queue: str, **kwargs: Any) -> ClaimedTask:
    tasks = await client.claim([queue], **kwargs)
    assert len(tasks) == 1, tasks
    return tasks[0]


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = anyio.current_time() + within
    while anyio.current_time() < deadline:
        if await check():
            return
        await anyio.sleep(0.02)
    raise AssertionError(f"still not true after {within} s")


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    async def check() -> bool:
        return condition()

    await eventually(check, within)


# ------------------------------------------------------------------------------ the session


async def test_hello_reply_is_kept(client: AsyncClient) -> None:
    assert client.server
    assert client.protocol_version == 1
    assert client.heartbeat_interval is not None and client.heartbeat_interval > 0
    assert client.connected
    assert "connected" in repr(client)


async def test_aclose_ends_the_client(broker_url: str) -> None:
    async with AsyncClient.from_url(broker_url) as opened:
        await opened.aclose()
        assert "closed" in repr(opened)
        with pytest.raises(errors.ConnectionLost):
            await opened.stats()


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connect_refused_raises_connection_lost() -> None:
    with pytest.raises(errors.ConnectionLost) as caught:
        async with AsyncClient("127.0.0.1", _free_port(), connect_attempts=2):
            pass
    assert "2 attempt" in str(caught.value)


# ----------------------------------------------------------------------------- operations


async def test_enqueue_and_get(client: AsyncClient) -> None:
    payload = {"to": "a@example.com", "tags": ["x", "ü"], "n": 1.5, "none": None}
    before = time.time()
    result = await client.enqueue("emails", payload, priority=3, max_attempts=2)
    assert isinstance(result, EnqueueResult)
    assert result.created is True

    task = await client.get(result.task_id)
    assert isinstance(task, TaskInfo)
    assert task.task_id == result.task_id
    assert task.queue == "emails"
    assert task.state == "queued"
    assert task.payload == payload
    assert task.priority == 3
    assert task.attempts == 0
    assert task.max_attempts == 2
    assert task.created_at >= before - 1
    assert task.updated_at >= task.created_at
    assert task.lease_expires_at is None
    assert task.worker_id is None
    assert task.last_error is None
    assert task.result is None
    assert task.unique_key is None


async def test_enqueue_null_payload_is_sent(client: AsyncClient) -> None:
    result = await client.enqueue("q", None)
    assert (await client.get(result.task_id)).payload is None


async def test_unique_key_returns_the_live_task(client: AsyncClient) -> None:
    first = await client.enqueue("q", {"n": 1}, unique_key="report-42")
    second = await client.enqueue("q", {"n": 2}, unique_key="report-42")
    assert first.created is True
    assert second.created is False
    assert second.task_id == first.task_id
    assert (await client.get(first.task_id)).unique_key == "report-42"


async def test_delay_and_run_at_schedule(client: AsyncClient) -> None:
    delayed = await client.enqueue("q", 1, delay=60)
    at = time.time() + 120
    timed = await client.enqueue("q", 2, run_at=at)
    delayed_task = await client.get(delayed.task_id)
    timed_task = await client.get(timed.task_id)
    assert delayed_task.state == "scheduled"
    assert delayed_task.run_at is not None and delayed_task.run_at > time.time() + 50
    assert timed_task.state == "scheduled"
    assert timed_task.run_at == pytest.approx(at, abs=1)
    assert await client.claim(["q"]) == []


async def test_enqueue_many_keeps_order(client: AsyncClient) -> None:
    results = await client.enqueue_many(
        [
            {"queue": "bulk", "payload": {"i": 0}},
            EnqueueRequest(queue="bulk", payload={"i": 1}, priority=5),
            {"queue": "bulk", "payload": {"i": 2}, "unique_key": "k"},
            {"queue": "bulk", "payload": {"i": 3}, "unique_key": "k"},
        ]
    )
    assert [r.created for r in results] == [True, True, True, False]
    assert results[3].task_id == results[2].task_id
    for i, result in enumerate(results[:3]):
        assert (await client.get(result.task_id)).payload == {"i": i}
    assert await client.enqueue_many([]) == []


async def test_claim_ack_stores_result(client: AsyncClient) -> None:
    enqueued = await client.enqueue("work", {"job": 1}, priority=2)
    task = await claim_one(client, "work", lease=30)
    assert task.task_id == enqueued.task_id
    assert task.queue == "work"
    assert task.payload == {"job": 1}
    assert task.priority == 2
    assert task.attempt == 1
    assert task.lease_token
    assert task.lease_expires_at == pytest.approx(time.time() + 30, abs=5)
    assert (await client.get(task.task_id)).state == "leased"

    await client.ack(task.task_id, task.lease_token, result={"sent": True})
    done = await client.get(task.task_id)
    assert done.state == "succeeded"
    assert done.result == {"sent": True}


async def test_claim_by_priority_then_fifo(client: AsyncClient) -> None:
    low = await client.enqueue("prio", "low", priority=0)
    high = await client.enqueue("prio", "high", priority=10)
    low2 = await client.enqueue("prio", "low2", priority=0)
    tasks = await client.claim("prio", max=3)
    assert [t.task_id for t in tasks] == [high.task_id, low.task_id, low2.task_id]


async def test_claim_across_queues(client: AsyncClient) -> None:
    await client.enqueue("a", "a", priority=1)
    b = await client.enqueue("b", "b", priority=5)
    tasks = await client.claim(["a", "b"])
    assert [t.task_id for t in tasks] == [b.task_id]


async def test_fail_retry_dead_and_requeue(client: AsyncClient) -> None:
    enqueued = await client.enqueue("f", "x", max_attempts=3)
    task = await claim_one(client, "f")
    later = await client.fail(task.task_id, task.lease_token, "boom", delay=60)
    assert isinstance(later, FailResult)
    assert later.state == "scheduled"
    assert later.run_at is not None and later.run_at > time.time() + 50
    info = await client.get(enqueued.task_id)
    assert info.state == "scheduled"
    assert info.last_error == "boom"
    assert info.attempts == 1

    other = await client.enqueue("f", "y")
    task = await claim_one(client, "f")
    assert task.task_id == other.task_id
    dead = await client.fail(task.task_id, task.lease_token, "fatal", retry=False)
    assert dead.state == "dead"
    assert dead.run_at is None

    assert await client.requeue([other.task_id, enqueued.task_id]) == 1  # scheduled is skipped
    again = await client.get(other.task_id)
    assert again.state == "queued"
    assert again.attempts == 0


async def test_fail_without_delay_retries(client: AsyncClient) -> None:
    await client.enqueue("r", "x", max_attempts=5)
    task = await claim_one(client, "r")
    result = await client.fail(task.task_id, task.lease_token, "transient")
    assert result.state in ("scheduled", "queued")
    assert result.run_at is not None


async def test_release_does_not_count_the_attempt(client: AsyncClient) -> None:
    enqueued = await client.enqueue("rel", "x")
    task = await claim_one(client, "rel")
    await client.release(task.task_id, task.lease_token)
    info = await client.get(enqueued.task_id)
    assert info.state == "queued"
    again = await claim_one(client, "rel")
    assert again.attempt == 1
    assert again.lease_token != task.lease_token
    await client.release(again.task_id, again.lease_token, delay=60)
    assert (await client.get(enqueued.task_id)).state == "scheduled"


async def test_extend_moves_the_lease(client: AsyncClient) -> None:
    await client.enqueue("ext", "x")
    task = await claim_one(client, "ext", lease=5)
    expires = await client.extend(task.task_id, task.lease_token, 300)
    assert isinstance(expires, float)
    assert expires > task.lease_expires_at + 200
    assert (await client.get(task.task_id)).lease_expires_at == pytest.approx(expires)


async def test_cancel(client: AsyncClient) -> None:
    queued = await client.enqueue("c", "x")
    assert await client.cancel(queued.task_id) == "cancelled"
    assert await client.cancel(queued.task_id) == "cancelled"  # repeating is fine
    assert (await client.get(queued.task_id)).state == "cancelled"

    await client.enqueue("c", "y")
    leased = await claim_one(client, "c")
    # A running task is told to stop (issue 14); a finished one cannot be cancelled.
    assert await client.cancel(leased.task_id) == "cancelling"
    await client.ack(leased.task_id, leased.lease_token)
    with pytest.raises(errors.Conflict):
        await client.cancel(leased.task_id)

    assert await client.requeue(queue="c", state="cancelled") == 1
    assert (await client.get(queued.task_id)).state == "queued"


async def test_stats_pause_resume(client: AsyncClient) -> None:
    await client.enqueue("s", "x")
    await client.enqueue("s", "y", delay=60)
    stats = await client.stats()
    assert isinstance(stats, Stats)
    queue = stats.queues["s"]
    assert queue.queued == 1
    assert queue.scheduled == 1
    assert queue.leased == 0
    assert queue.paused is False
    assert queue.oldest_queued_age is not None and queue.oldest_queued_age >= 0
    assert stats.connections >= 1

    await client.pause("s")
    await client.pause("empty-queue")  # queues exist implicitly
    stats = await client.stats()
    assert stats.queues["s"].paused is True
    assert stats.queues["empty-queue"].paused is True
    assert stats.queues["empty-queue"].oldest_queued_age is None
    await client.enqueue("s", "z")  # a paused queue still takes enqueues
    assert await client.claim("s") == []

    await client.resume("s")
    assert len(await client.claim("s", max=10)) == 2


async def test_list_pages_and_iter(client: AsyncClient) -> None:
    ids = [(await client.enqueue("l", i)).task_id for i in range(5)]
    await client.enqueue("other", "x")
    first = await client.list_tasks("l", limit=2)
    assert isinstance(first, TaskPage)
    assert [t.task_id for t in first.tasks] == ids[:2]
    assert first.next_after_id is not None
    seen = [t.task_id for t in first.tasks]
    after = first.next_after_id
    while after is not None:
        page = await client.list_tasks("l", limit=2, after_id=after)
        seen += [t.task_id for t in page.tasks]
        after = page.next_after_id
    assert seen == ids

    assert [t.task_id async for t in client.iter_tasks("l", page_size=2)] == ids
    await client.cancel(ids[0])
    cancelled = await client.list_tasks(state="cancelled")
    assert [t.task_id for t in cancelled.tasks] == [ids[0]]
    assert cancelled.next_after_id is None


async def test_purge(client: AsyncClient) -> None:
    keep = await client.enqueue("p", "leased")
    await claim_one(client, "p")
    dead_one = await client.enqueue("p", "dead")
    await client.enqueue("p", "queued")
    await client.enqueue("p", "scheduled", delay=60)
    task = await claim_one(client, "p")
    assert task.task_id == dead_one.task_id
    await client.fail(task.task_id, task.lease_token, "x", retry=False)

    assert await client.purge("p", "dead") == 1
    assert await client.purge("p") == 2
    remaining = await client.list_tasks("p")
    assert [t.task_id for t in remaining.tasks] == [keep.task_id]


async def test_worker_registration_heartbeat_and_state(broker_url: str) -> None:
    registration = {"id": "w-1", "queues": ["jobs"], "concurrency": 4, "meta": {"host": "h"}}
    async with (
        AsyncClient.from_url(broker_url, worker=registration) as worker,
        AsyncClient.from_url(broker_url) as admin,
    ):
        assert worker.worker_id == "w-1"
        assert "w-1" in repr(worker)
        assert await worker.heartbeat() == "running"
        with pytest.raises(errors.Conflict):
            await admin.heartbeat()  # not a registered worker

        listed = {w.id: w for w in await admin.workers()}
        assert isinstance(listed["w-1"], WorkerInfo)
        assert listed["w-1"].queues == ["jobs"]
        assert listed["w-1"].concurrency == 4
        assert listed["w-1"].state == "running"
        assert (await admin.stats()).workers >= 1

        await admin.enqueue("jobs", "x")
        await claim_one(worker, "jobs")
        assert {w.id: w for w in await admin.workers()}["w-1"].leased == 1

        await admin.worker_state("w-1", "quiet")
        assert await worker.heartbeat() == "quiet"
        await admin.worker_state("w-1", "terminate")
        assert await worker.heartbeat() == "terminate"
        with pytest.raises(errors.NotFound):
            await admin.worker_state("no-such-worker", "quiet")


async def test_request_for_any_op(client: AsyncClient) -> None:
    reply = await client.request("enqueue", {"queue": "raw"}, payload=[1, 2])
    assert set(reply) >= {"task_id", "created"}
    assert "ok" not in reply and "id" not in reply
    with pytest.raises(errors.UnknownOp):
        await client.request("no_such_op")


# --------------------------------------------------------------------------------- errors


async def test_error_mapping(client: AsyncClient) -> None:
    with pytest.raises(errors.NotFound):
        await client.get(MISSING_TASK_ID)
    with pytest.raises(errors.NotFound):
        await client.cancel(MISSING_TASK_ID)

    await client.enqueue("e", "x")
    task = await claim_one(client, "e")
    with pytest.raises(errors.LeaseLost):
        await client.ack(task.task_id, "not-the-token")
    await client.release(task.task_id, task.lease_token)
    with pytest.raises(errors.LeaseLost):  # fencing: the old token is dead
        await client.ack(task.task_id, task.lease_token)
    with pytest.raises(errors.LeaseLost):
        await client.extend(task.task_id, task.lease_token, 10)

    with pytest.raises(errors.BadRequest):
        await client.enqueue("e", "x", delay=1, run_at=time.time())
    with pytest.raises(errors.BadRequest):
        await client.enqueue("e", "x", lease=0)
    with pytest.raises(errors.BadRequest):  # caught before sending
        await client.enqueue("e", {"nan": float("nan")})
    # Errors leave the connection usable.
    assert client.connected
    assert isinstance(await client.stats(), Stats)


async def test_lease_expiry_gives_lease_lost(client: AsyncClient) -> None:
    await client.enqueue("exp", "x")
    task = await claim_one(client, "exp", lease=0.2)
    await anyio.sleep(0.4)
    with pytest.raises(errors.LeaseLost):
        await client.ack(task.task_id, task.lease_token)


# ------------------------------------------------------------------ brokers with limits


MakeServer = Callable[..., AbstractAsyncContextManager[Any]]


async def test_busy_queue_is_retried_until_there_is_room(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="durable_tq.client")
    async with (
        make_server(max_queue_depth=1) as server,
        AsyncClient.from_url(server.url) as client,
    ):
        await client.enqueue("full", 1)
        result: list[EnqueueResult] = []

        async def enqueue_when_there_is_room() -> None:
            result.append(await client.enqueue("full", 2))

        def refused_busy() -> bool:
            return any("broker busy" in record.getMessage() for record in caplog.records)

        async with anyio.create_task_group() as tg:
            tg.start_soon(enqueue_when_there_is_room)
            await wait_until(refused_busy)
            assert result == []  # refused with busy, waiting for retry_after
            task = await claim_one(client, "full")
            await client.ack(task.task_id, task.lease_token)
        assert len(result) == 1
        assert (await client.get(result[0].task_id)).payload == 2

        async with AsyncClient.from_url(server.url, busy_retries=0) as impatient:
            with pytest.raises(errors.Busy) as caught:
                await impatient.enqueue("full", 3)
        assert caught.value.retry_after > 0


async def test_token(make_server: MakeServer) -> None:
    async with make_server(auth_tokens=["s3cret"]) as server:
        async with AsyncClient.from_url(server.url, token="s3cret") as client:
            assert isinstance(await client.stats(), Stats)
        url_with_token = server.url.replace("tcp://", "tcp://s3cret@")
        async with AsyncClient.from_url(url_with_token) as client:
            assert isinstance(await client.stats(), Stats)
        for token in ("wrong", None):
            with pytest.raises(errors.Unauthorized):
                async with AsyncClient.from_url(server.url, token=token):
                    pass


async def test_too_many_connections(make_server: MakeServer) -> None:
    async with (
        make_server(max_connections=1) as server,
        AsyncClient.from_url(server.url) as first,
    ):
        with pytest.raises(errors.ConnectionLost) as caught:
            async with AsyncClient.from_url(server.url, connect_attempts=2):
                pass
        assert isinstance(caught.value.__cause__, errors.TooManyConnections)
        assert "after 2 attempt" in str(caught.value)
        assert isinstance(await first.stats(), Stats)


# ----------------------------------------------------------------------------- pipelining


async def test_200_concurrent_enqueues_share_one_connection(client: AsyncClient) -> None:
    results: dict[int, EnqueueResult] = {}

    async def enqueue(i: int) -> None:
        results[i] = await client.enqueue("pipe", {"i": i})

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(enqueue, i)
    assert len({r.task_id for r in results.values()}) == 200
    assert (await client.stats()).queues["pipe"].queued == 200
    assert len(client._connections) == 1


async def test_parked_claim_does_not_block_later_requests(
    server: BrokerServer, client: AsyncClient
) -> None:
    claimed: list[ClaimedTask] = []

    async def park() -> None:
        claimed.extend(await client.claim(["parked"], wait=10))

    async with anyio.create_task_group() as tg:
        tg.start_soon(park)
        await wait_until(lambda: server.broker.waiters.waiting("parked") == 1)
        with anyio.fail_after(2):  # answered while the claim is still parked
            stats = await client.stats()
            assert "parked" not in stats.queues or stats.queues["parked"].leased == 0
            enqueued = await client.enqueue("parked", "wake up")
    assert [t.task_id for t in claimed] == [enqueued.task_id]


async def test_claim_wait_returns_empty_when_nothing_comes(client: AsyncClient) -> None:
    started = anyio.current_time()
    assert await client.claim(["nothing"], wait=0.3) == []
    assert anyio.current_time() - started >= 0.25


async def test_abandoned_claim_hands_its_task_back(
    client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="durable_tq.client")
    with pytest.raises(RequestTimeout):
        await client.claim(["orphan"], wait=5, timeout=0.2)
    enqueued = await client.enqueue("orphan", "x")  # the broker gives it to the parked claim

    await wait_until(lambda: "its claim was abandoned" in caplog.text)
    assert (await client.get(enqueued.task_id)).state == "queued"
    task = await claim_one(client, "orphan")
    assert task.attempt == 1  # the abandoned lease did not count


# ------------------------------------------------------------------------------ reconnects


class CuttableProxy:
    """A TCP relay to the broker whose connections the test can cut, like a network fault."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._scopes: set[anyio.CancelScope] = set()
        self.accepted = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            task_status.started()
            await listener.serve(self._relay)

    def cut(self) -> None:
        for scope in list(self._scopes):
            scope.cancel()

    async def _relay(self, downstream: anyio.abc.SocketStream) -> None:
        self.accepted += 1
        async with downstream:
            with anyio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    upstream = await anyio.connect_tcp(self.target_host, self.target_port)
                    async with upstream, anyio.create_task_group() as tg:
                        tg.start_soon(self._pump, downstream, upstream, tg.cancel_scope)
                        tg.start_soon(self._pump, upstream, downstream, tg.cancel_scope)
                finally:
                    self._scopes.discard(scope)

    @staticmethod
    async def _pump(
        source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream, scope: anyio.CancelScope
    ) -> None:
        try:
            async for chunk in source:
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        scope.cancel()


@pytest.fixture
async def proxy(broker_url: str) -> AsyncIterator[CuttableProxy]:
    host_port = broker_url.split("://", 1)[1]
    host, port = host_port.rsplit(":", 1)
    relay = CuttableProxy(host, int(port))
    async with anyio.create_task_group() as tg:
        await tg.start(relay.run)
        yield relay
        tg.cancel_scope.cancel()


async def test_bye_then_next_request_reconnects(client: AsyncClient) -> None:
    await client.bye()
    assert not client.connected
    stats = await client.stats()
    assert isinstance(stats, Stats)
    assert client.connected


async def test_reconnects_after_the_connection_is_cut(proxy: CuttableProxy) -> None:
    async with AsyncClient("127.0.0.1", proxy.port) as client:
        enqueued = await client.enqueue("rc", "x")
        proxy.cut()
        await wait_until(lambda: not client.connected)
        assert (await client.get(enqueued.task_id)).state == "queued"
        assert client.connected
        assert proxy.accepted == 2


async def test_in_flight_request_raises_connection_lost(
    server: BrokerServer, proxy: CuttableProxy
) -> None:
    async with AsyncClient("127.0.0.1", proxy.port) as client:
        outcome: list[BaseException] = []

        async def park() -> None:
            try:
                await client.claim(["cut"], wait=10)
            except errors.ConnectionLost as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(park)
            # The claim reached the broker and is parked there: it is in flight when cut.
            await wait_until(lambda: server.broker.waiters.waiting("cut") == 1)
            proxy.cut()
        assert len(outcome) == 1  # never silently re-sent
        assert isinstance((await client.stats()), Stats)


async def test_worker_registers_again_after_reconnect(
    proxy: CuttableProxy, broker_url: str
) -> None:
    async with (
        AsyncClient("127.0.0.1", proxy.port, worker={"id": "w-rc"}) as worker,
        AsyncClient.from_url(broker_url) as admin,
    ):
        assert await worker.heartbeat() == "running"
        proxy.cut()
        await wait_until(lambda: not worker.connected)
        assert await worker.heartbeat() == "running"  # hello re-sent with the registration
        assert "w-rc" in {w.id for w in await admin.workers()}


# ------------------------------------------------------------------------- blocking Client


def _blocking_scenario(broker_url: str) -> None:
    with Client.from_url(broker_url) as client:
        assert client.server
        assert "Client" in repr(client)
        enqueued = client.enqueue("sync", {"n": 1}, priority=1)
        many = client.enqueue_many([{"queue": "sync", "payload": {"n": 2}}])
        assert len(many) == 1
        assert client.get(enqueued.task_id).state == "queued"

        task = client.claim("sync", lease=30)[0]
        assert task.task_id == enqueued.task_id
        assert client.extend(task.task_id, task.lease_token, 60) > time.time()
        client.release(task.task_id, task.lease_token)
        task = client.claim(["sync"])[0]
        client.ack(task.task_id, task.lease_token, "done")
        assert client.get(task.task_id).result == "done"

        task = client.claim(["sync"])[0]
        assert client.fail(task.task_id, task.lease_token, "no", retry=False).state == "dead"
        assert client.requeue([task.task_id]) == 1
        assert client.cancel(task.task_id) == "cancelled"
        assert client.requeue(queue="sync", state="cancelled") == 1

        client.pause("sync")
        assert client.stats().queues["sync"].paused
        client.resume("sync")
        assert len(client.list_tasks("sync").tasks) == 2
        assert len(list(client.iter_tasks("sync", page_size=1))) == 2
        assert client.purge("sync", "queued") == 1
        assert isinstance(client.workers(), list)
        assert "task_id" in client.request("enqueue", queue="sync", payload=None)

        with pytest.raises(errors.NotFound):
            client.get(MISSING_TASK_ID)
        with pytest.raises(errors.NotFound):
            client.worker_state("nobody", "quiet")
        with pytest.raises(errors.Conflict):
            client.heartbeat()

        client.bye()
        assert client.stats().connections >= 1  # reconnected
    with pytest.raises(errors.ConnectionLost):
        client.stats()
    client.close()  # twice is fine


async def test_blocking_client(broker_url: str) -> None:
    await anyio.to_thread.run_sync(_blocking_scenario, broker_url)


def _threads_share_one_client(broker_url: str) -> None:
    with Client.from_url(broker_url) as client:
        ids: list[int] = []
        lock = threading.Lock()

        def produce() -> None:
            for i in range(25):
                task_id = client.enqueue("threads", i).task_id
                with lock:
                    ids.append(task_id)

        threads = [threading.Thread(target=produce) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(ids)) == 100
        assert client.stats().queues["threads"].queued == 100


async def test_blocking_client_is_thread_safe(broker_url: str) -> None:
    await anyio.to_thread.run_sync(_threads_share_one_client, broker_url)


def _worker_scenario(broker_url: str) -> None:
    with Client.from_url(broker_url, worker={"id": "sync-worker"}) as client:
        assert client.heartbeat() == "running"
        assert client.heartbeat_interval is not None


async def test_blocking_worker_client(broker_url: str) -> None:
    await anyio.to_thread.run_sync(_worker_scenario, broker_url)


def test_blocking_client_rides_through_broker_restarts(
    serve_subprocess: Callable[..., Any],
) -> None:
    broker = serve_subprocess()
    with Client.from_url(broker.url, reconnect_timeout=60) as client:
        enqueued = client.enqueue("restart", {"n": 1})
        broker.restart(graceful=True)
        # The old connection is gone; the next request reconnects and sees the durable task.
        assert client.get(enqueued.task_id).state == "queued"
        broker.restart(graceful=False)  # SIGKILL
        assert client.get(enqueued.task_id).payload == {"n": 1}


async def test_unclosed_blocking_client_does_not_hang_interpreter_exit(broker_url: str) -> None:
    script = (
        "from durable_tq.client import Client\n"
        f"client = Client.from_url({broker_url!r})\n"
        "print(client.stats().connections)\n"
    )
    with anyio.fail_after(30):
        done = await anyio.run_process([sys.executable, "-c", script])
    assert int(done.stdout) >= 1


# ------------------------------------------------------------------------------------ URLs


def test_from_url() -> None:
    plain = AsyncClient.from_url("tcp://example.com:9000")
    assert (plain.host, plain.port, plain.url) == ("example.com", 9000, "tcp://example.com:9000")
    default = AsyncClient.from_url("tcp://")
    assert (default.host, default.port) == ("127.0.0.1", 7480)
    secure = AsyncClient.from_url("tls://s3cret@broker.internal")
    assert secure.url == "tls://broker.internal:7480"
    assert secure._token == "s3cret"
    assert "s3cret" not in repr(secure)
    overridden = AsyncClient.from_url("tcp://a@h:1", token="b")
    assert overridden._token == "b"
    with pytest.raises(errors.ConfigError):
        AsyncClient.from_url("http://h:1")
