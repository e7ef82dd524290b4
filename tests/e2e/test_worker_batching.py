"""The worker's fast path against a real broker: prefetch within ``concurrency + prefetch``,
outcomes settled in batches that also claim, and the worker state a settle reply carries.
No timing thresholds: every wait is bounded, nothing asserts on speed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from durable_tq import TaskContext, Worker
from durable_tq.client import AsyncClient

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

LIMIT = 30.0


@pytest.fixture
async def client(broker_url: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient.from_url(broker_url) as opened:
        yield opened


async def until(condition: Any) -> None:
    with anyio.fail_after(LIMIT):
        while not await condition():  # noqa: ASYNC110 (polling the broker, not a flag)
            await anyio.sleep(0.02)


async def test_leases_held_never_exceed_concurrency_plus_prefetch(
    broker_url: str, client: AsyncClient
) -> None:
    concurrency, prefetch = 2, 3
    worker = Worker(url=broker_url, concurrency=concurrency, prefetch=prefetch, wait=0.5,
                    heartbeat_interval=0.2)  # fmt: skip
    gate = anyio.Event()
    running_now = 0
    most_running = 0

    @worker.task("slow")
    async def slow(payload: Any, ctx: TaskContext) -> None:
        nonlocal running_now, most_running
        running_now += 1
        most_running = max(most_running, running_now)
        await gate.wait()
        running_now -= 1

    ids = [(await client.enqueue("slow", n)).task_id for n in range(20)]
    samples: list[int] = []

    async def held() -> bool:
        workers = await client.workers()
        leased = sum(w.leased for w in workers if w.id == worker.worker_id)
        samples.append(leased)
        stats = await client.stats()
        samples.append(stats.queues["slow"].leased)
        return leased == concurrency + prefetch

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await until(held)
        for _ in range(10):  # keep sampling while the handlers are blocked
            await held()
            await anyio.sleep(0.02)
        gate.set()
        for task_id in ids:
            await until(lambda task_id=task_id: _succeeded(client, task_id))
        worker.stop()
    assert max(samples) == concurrency + prefetch
    assert most_running <= concurrency
    (info,) = [w for w in await client.workers() if w.id == worker.worker_id]
    assert info.prefetch == prefetch


async def _succeeded(client: AsyncClient, task_id: int) -> bool:
    return (await client.get(task_id)).state == "succeeded"


async def test_outcomes_are_settled_in_batches_that_claim(
    broker_url: str, client: AsyncClient
) -> None:
    worker = Worker(url=broker_url, concurrency=8, prefetch=8, wait=0.5, heartbeat_interval=0.2)

    @worker.task("quick")
    async def quick(payload: int, ctx: TaskContext) -> int:
        await anyio.lowlevel.checkpoint()
        return payload * 2

    results = await client.enqueue_many([{"queue": "quick", "payload": n} for n in range(300)])
    with anyio.fail_after(LIMIT):
        await worker.drain()
    for n, result in enumerate(results):
        task = await client.get(result.task_id)
        assert (task.state, task.result) == ("succeeded", n * 2)


async def test_quiet_in_a_settle_reply_stops_claiming(broker_url: str, client: AsyncClient) -> None:
    # Heartbeats far apart: the quiet can only arrive through settle replies.
    worker = Worker(url=broker_url, concurrency=1, wait=0.2, heartbeat_interval=3600)
    done: list[int] = []

    @worker.task("q")
    async def handler(payload: int, ctx: TaskContext) -> None:
        if payload == 0:
            await client.worker_state(ctx.worker_id, "quiet")
        done.append(payload)

    first = (await client.enqueue("q", 0)).task_id
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await until(lambda: _succeeded(client, first))
        later = [(await client.enqueue("q", n)).task_id for n in range(1, 4)]
        # The settle of task 0 carried "quiet": nothing more is claimed.
        for _ in range(20):
            await anyio.sleep(0.02)
            states = [(await client.get(t)).state for t in later]
            assert states == ["queued"] * len(later)
        assert worker.running
        worker.stop()
    assert done == [0]


async def test_stop_releases_prefetched_tasks_at_once(broker_url: str, client: AsyncClient) -> None:
    """Held but not started: back to ``queued`` at once, while the running task still has
    its whole grace period."""
    worker = Worker(url=broker_url, concurrency=1, prefetch=3, wait=0.5, grace=LIMIT,
                    heartbeat_interval=0.2)  # fmt: skip
    gate = anyio.Event()
    started: list[int] = []

    @worker.task("held")
    async def held(payload: Any, ctx: TaskContext) -> None:
        started.append(ctx.task_id)
        await gate.wait()

    ids = [(await client.enqueue("held", n)).task_id for n in range(4)]

    async def all_leased() -> bool:
        states = [(await client.get(t)).state for t in ids]
        return states == ["leased"] * 4 and len(started) == 1

    async def prefetched_back() -> bool:
        rest = [t for t in ids if t not in started]
        return [(await client.get(t)).state for t in rest] == ["queued"] * 3

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await until(all_leased)
        worker.stop()
        await until(prefetched_back)
        # The running task is still within its grace period, and still leased.
        assert (await client.get(started[0])).state == "leased"
        for t in ids:
            task = await client.get(t)
            assert task.attempts == (1 if t in started else 0), task
        gate.set()
    assert len(started) == 1
    assert (await client.get(started[0])).state == "succeeded"
