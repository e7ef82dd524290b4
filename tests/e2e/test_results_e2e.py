"""Issue 14 end to end: wait, revoke, progress and dependencies with real clients and workers."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from durable_tq import TaskContext, errors
from durable_tq.client import AsyncClient
from durable_tq.worker.outcome import TaskCancelled
from tests.e2e.test_worker import LIMIT, make_worker, running, until

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
async def client(broker_url: str) -> Any:
    async with AsyncClient.from_url(broker_url) as opened:
        yield opened


async def test_wait_is_woken_by_a_finish_from_another_connection(
    broker_url: str, client: AsyncClient
) -> None:
    task_id = (await client.enqueue("w", 1)).task_id
    got: list[Any] = []

    async def waiter() -> None:
        got.append(await client.wait(task_id, timeout=LIMIT))

    async with anyio.create_task_group() as tg, AsyncClient.from_url(broker_url) as other:
        tg.start_soon(waiter)
        (claimed,) = await other.claim(["w"])
        await other.ack(claimed.task_id, claimed.lease_token, result="done")
    assert got[0].state == "succeeded" and got[0].result == "done"


async def test_wait_times_out_with_a_clear_error(client: AsyncClient) -> None:
    task_id = (await client.enqueue("w", 1)).task_id
    with pytest.raises(errors.WaitTimeout) as caught:
        await client.wait(task_id, timeout=0.1)
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.task is not None and caught.value.task.state == "queued"


async def test_two_thousand_pipelined_waits_on_one_connection(make_server: Any) -> None:
    # One connection may have max_inflight requests unanswered: raised for 2,000 waits.
    async with (
        make_server(max_inflight=4096) as server,
        AsyncClient.from_url(server.url) as client,
    ):
        await _two_thousand_waits(server, client)


async def _two_thousand_waits(server: Any, client: AsyncClient) -> None:
    ids = [r.task_id for r in await client.enqueue_many([{"queue": "many"}] * 2000)]
    finished: list[int] = []

    async def wait_one(task_id: int) -> None:
        finished.append((await client.wait(task_id, timeout=LIMIT * 4)).task_id)

    async with anyio.create_task_group() as tg:
        for task_id in ids:
            tg.start_soon(wait_one, task_id)
        await until(lambda: len(server.broker.task_waiters) == len(ids))
        async with AsyncClient.from_url(server.url) as other:
            while len(finished) < len(ids):
                claimed = await other.claim(["many"], max=500)
                if claimed:
                    await other.settle([_ack(task.task_id, task.lease_token) for task in claimed])
                else:
                    await anyio.sleep(0.01)
    assert sorted(finished) == sorted(ids)
    assert server.broker.task_waiters == {}


def _ack(task_id: int, token: str) -> Any:
    from durable_tq.client import Settlement

    return Settlement.ack(task_id, token)


async def test_revoking_a_running_async_handler(broker_url: str, client: AsyncClient) -> None:
    worker = make_worker(broker_url)
    started = anyio.Event()
    reached_end: list[bool] = []

    @worker.task("slow")
    async def slow(payload: None, ctx: TaskContext) -> None:
        started.set()
        await anyio.sleep(LIMIT * 10)
        reached_end.append(True)

    task_id = (await client.enqueue("slow", None)).task_id
    async with running(worker):
        with anyio.fail_after(LIMIT):
            await started.wait()
        assert await client.cancel(task_id) == "cancelling"
        task = await client.wait(task_id, timeout=LIMIT)
    assert task.state == "cancelled"
    assert reached_end == []


async def test_revoking_a_sync_handler_that_checks_ctx_cancelled(
    broker_url: str, client: AsyncClient
) -> None:
    worker = make_worker(broker_url)
    started = threading.Event()
    saw: list[bool] = []

    @worker.task("sync")
    def busy(payload: None, ctx: TaskContext) -> None:
        started.set()
        while not ctx.cancelled:
            threading.Event().wait(0.01)
        saw.append(True)
        ctx.check_cancelled()

    task_id = (await client.enqueue("sync", None)).task_id
    async with running(worker):
        await until(started.is_set)
        assert await client.cancel(task_id) == "cancelling"
        task = await client.wait(task_id, timeout=LIMIT)
    assert task.state == "cancelled" and saw == [True]


#: How the worker learns of a revoke: only its lease renewals can tell it (a short lease, and
#: heartbeats too rare to come within the test), or only its heartbeats (a lease too long to
#: be renewed within the test).
REVOKE_PATHS = {
    "extend": {"lease": 1.0, "heartbeat_interval": LIMIT * 10},
    "heartbeat": {"lease": LIMIT * 10, "heartbeat_interval": 0.2},
}


@pytest.mark.parametrize("path", sorted(REVOKE_PATHS))
async def test_a_revoke_reaches_an_async_handler_through_either_path(
    broker_url: str, client: AsyncClient, path: str
) -> None:
    worker = make_worker(broker_url, **REVOKE_PATHS[path])
    started = anyio.Event()
    reached_end: list[bool] = []

    @worker.task("slow")
    async def slow(payload: None, ctx: TaskContext) -> None:
        started.set()
        await anyio.sleep(LIMIT * 10)
        reached_end.append(True)

    task_id = (await client.enqueue("slow", None)).task_id
    async with running(worker):
        with anyio.fail_after(LIMIT):
            await started.wait()
        assert await client.cancel(task_id) == "cancelling"
        # Bounded by LIMIT, shorter than the path not taken: only ``path`` can tell the worker.
        task = await client.wait(task_id, timeout=LIMIT)
    assert task.state == "cancelled" and task.last_error == "cancelled while running"
    assert reached_end == []


@pytest.mark.parametrize("path", sorted(REVOKE_PATHS))
async def test_a_revoke_reaches_a_sync_handler_through_either_path(
    broker_url: str, client: AsyncClient, path: str
) -> None:
    worker = make_worker(broker_url, **REVOKE_PATHS[path])
    started = threading.Event()
    raised: list[BaseException] = []

    @worker.task("sync")
    def busy(payload: None, ctx: TaskContext) -> None:
        started.set()
        while not ctx.cancelled:
            threading.Event().wait(0.01)
        try:
            ctx.check_cancelled()
        except BaseException as exc:
            raised.append(exc)
            raise

    task_id = (await client.enqueue("sync", None)).task_id
    async with running(worker):
        await until(started.is_set)
        assert await client.cancel(task_id) == "cancelling"
        task = await client.wait(task_id, timeout=LIMIT)
    assert task.state == "cancelled"
    assert [type(exc) for exc in raised] == [TaskCancelled]


async def test_a_revoked_prefetched_sync_task_never_starts(
    broker_url: str, client: AsyncClient
) -> None:
    worker = make_worker(broker_url, concurrency=1, prefetch=1)
    go_on = threading.Event()
    ran: list[int] = []

    @worker.task("one-slot")
    def hold(payload: int, ctx: TaskContext) -> int:
        ran.append(payload)
        go_on.wait(LIMIT)
        return payload

    first = (await client.enqueue("one-slot", 1)).task_id
    second = (await client.enqueue("one-slot", 2)).task_id
    try:
        async with running(worker):
            await until(lambda: ran == [1])
            with anyio.fail_after(LIMIT):  # the second is held by the worker, waiting for a slot
                while (await client.get(second)).state != "leased":  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            assert await client.cancel(second) == "cancelling"
            # It ends while the first still holds the only slot: it was never started.
            assert (await client.wait(second, timeout=LIMIT)).state == "cancelled"
            go_on.set()
            assert (await client.wait(first, timeout=LIMIT)).state == "succeeded"
    finally:
        go_on.set()
    assert ran == [1]


async def test_progress_reaches_get_and_the_last_value_is_kept(
    broker_url: str, client: AsyncClient
) -> None:
    worker = make_worker(broker_url)
    middle = anyio.Event()
    go_on = anyio.Event()

    @worker.task("p")
    async def work(payload: None, ctx: TaskContext) -> int:
        for step in range(1000):  # a tight loop: throttled to one write a second
            ctx.progress(step / 1000, f"step {step}")
        middle.set()
        await go_on.wait()
        ctx.progress(1.0, "done")
        return 1

    task_id = (await client.enqueue("p", None)).task_id
    async with running(worker):
        with anyio.fail_after(LIMIT):
            await middle.wait()
            while (await client.get(task_id)).progress is None:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        seen = await client.get(task_id)
        assert seen.progress == 0.999 and seen.progress_message == "step 999"
        go_on.set()
        task = await client.wait(task_id, timeout=LIMIT)
    assert (task.progress, task.progress_message) == (1.0, "done")


async def test_a_chain_and_a_fan_in_run_in_order_with_a_worker(
    broker_url: str, client: AsyncClient
) -> None:
    worker = make_worker(broker_url, concurrency=8)
    order: list[str] = []

    @worker.task("dag")
    async def step(payload: str) -> str:
        order.append(payload)
        return payload

    items: list[dict[str, Any]] = [
        {"queue": "dag", "payload": "a"},
        {"queue": "dag", "payload": "b", "after": [{"index": 0}]},
        {"queue": "dag", "payload": "c", "after": [{"index": 1}]},
    ]
    items += [{"queue": "dag", "payload": f"f{i}"} for i in range(10)]
    items.append(
        {"queue": "dag", "payload": "sink", "after": [{"index": 3 + i} for i in range(10)]}
    )
    ids = [r.task_id for r in await client.enqueue_many(items)]
    handle = await step.enqueue("after-sink", after=[ids[-1], ids[2]])
    async with running(worker):
        assert await handle.result(timeout=LIMIT) == "after-sink"
    assert order.index("a") < order.index("b") < order.index("c")
    assert all(order.index(f"f{i}") < order.index("sink") for i in range(10))
    assert order[-1] == "after-sink"


async def test_a_dead_parent_cancels_its_dependent(client: AsyncClient) -> None:
    parent = (await client.enqueue("d", None, max_attempts=1)).task_id
    child = (await client.enqueue("d2", None, after=[parent])).task_id
    (claimed,) = await client.claim(["d"])
    await client.fail(claimed.task_id, claimed.lease_token, "boom", retry=False)
    task = await client.wait(child, timeout=LIMIT)
    assert task.state == "cancelled" and task.last_error == f"parent task {parent} ended dead"
