"""Issue 14 on the broker and real SQLite: wait, revoke, progress, result expiry, dependencies."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from durable_tq import errors
from durable_tq.config import Settings
from durable_tq.core.broker import Broker, EarlierItem, Session, TaskSpec
from durable_tq.core.sweeper import Sweeper
from durable_tq.wire import schema
from tests.integration.test_broker import claim, enqueue, j, plain, state_of

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


async def task_of(broker: Broker, task_id: int) -> dict[str, Any]:
    return dict(plain((await broker.get(task_id=task_id))["task"]))


# --- wait ----------------------------------------------------------------------------------


async def test_wait_is_woken_by_the_commit_that_finishes_the_task(broker: Broker) -> None:
    task_id = await enqueue(broker, payload="x")
    replies: list[dict[str, Any]] = []

    async def wait() -> None:
        replies.append(await broker.wait(task_id=task_id, timeout=60))

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        assert broker.task_waiters[task_id]
        (lease,) = await claim(broker)
        await broker.ack(task_id=task_id, lease_token=lease["lease_token"], result=j(7))
    (reply,) = replies
    assert reply["done"] is True
    assert plain(reply["task"])["state"] == "succeeded"
    assert plain(reply["task"])["result"] == 7
    assert broker.task_waiters == {}  # nothing left behind


async def test_wait_answers_at_once_for_a_finished_task_and_times_out_otherwise(
    broker: Broker,
) -> None:
    done = await enqueue(broker)
    await broker.cancel(task_id=done)
    assert (await broker.wait(task_id=done, timeout=60))["done"] is True
    live = await enqueue(broker)
    reply = await broker.wait(task_id=live, timeout=0.05)
    assert reply["done"] is False and plain(reply["task"])["state"] == "queued"
    with pytest.raises(errors.NotFound):
        await broker.wait(task_id=10_000, timeout=1)
    with pytest.raises(errors.BadRequest):
        await broker.wait(task_id=live, timeout=broker.settings.max_wait + 1)


async def test_a_purged_task_answers_its_waiters_not_found(broker: Broker) -> None:
    task_id = await enqueue(broker)
    failures: list[BaseException] = []

    async def wait() -> None:
        try:
            await broker.wait(task_id=task_id, timeout=60)
        except errors.NotFound as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        await broker.purge(queue="q")
    assert len(failures) == 1


# --- revoke --------------------------------------------------------------------------------


async def test_cancel_of_a_leased_task_reaches_its_worker_and_ends_cancelled(
    broker: Broker,
) -> None:
    session = Session(greeted=True)
    await broker.hello(
        version=1, worker=schema.WorkerSpec(id="w1", concurrency=2), session=Session()
    )
    session.worker_id = "w1"
    task_id = await enqueue(broker)
    (lease,) = await claim(broker, session=session)
    assert (await broker.heartbeat(session=session)).get("cancel") is None
    assert (await broker.cancel(task_id=task_id))["state"] == "cancelling"
    assert (await task_of(broker, task_id))["cancel_requested"] is True
    assert (await broker.heartbeat(session=session))["cancel"] == [task_id]
    token = lease["lease_token"]
    assert (await broker.extend(task_id=task_id, lease_token=token, lease=30))["cancel"]
    assert (await broker.progress(task_id=task_id, lease_token=token, fraction=0.5))["cancel"]
    item = schema.SettleItem(task_id=task_id, lease_token=token, outcome=schema.Outcome.CANCEL)
    reply = await broker.settle(settles=[item], session=session)
    assert reply["results"][0]["state"] == "cancelled"
    task = await task_of(broker, task_id)
    assert task["state"] == "cancelled" and task["finished_at"] is not None


async def test_a_cancelled_lease_that_expires_ends_cancelled_not_queued(
    make_settings: Any,
) -> None:
    settings: Settings = make_settings(sweep_interval=0.05)
    async with Broker(settings) as broker:
        task_id = await enqueue(broker, lease=0.05, max_attempts=3)
        await claim(broker)
        await broker.cancel(task_id=task_id)
        await anyio.sleep(0.1)
        await Sweeper(broker).sweep()
        task = await task_of(broker, task_id)
        assert task["state"] == "cancelled"
        assert "cancelled" in task["last_error"]


async def test_fail_or_release_of_a_task_being_cancelled_cancels_it(broker: Broker) -> None:
    a = await enqueue(broker)
    b = await enqueue(broker)
    leases = {t["task_id"]: t["lease_token"] for t in await claim(broker, max=2)}
    await broker.cancel(task_id=a)
    await broker.cancel(task_id=b)
    assert (await broker.fail(task_id=a, lease_token=leases[a], error="x"))["state"] == (
        "cancelled"
    )
    assert (await broker.release(task_id=b, lease_token=leases[b]))["state"] == "cancelled"


# --- progress ------------------------------------------------------------------------------


async def test_progress_is_fenced_and_visible_in_get(broker: Broker) -> None:
    task_id = await enqueue(broker)
    (lease,) = await claim(broker)
    reply = await broker.progress(
        task_id=task_id, lease_token=lease["lease_token"], fraction=0.25, message="a quarter"
    )
    assert reply == {"cancel": False}
    task = await task_of(broker, task_id)
    assert (task["progress"], task["progress_message"]) == (0.25, "a quarter")
    with pytest.raises(errors.LeaseLost):
        await broker.progress(task_id=task_id, lease_token="stale", fraction=0.5)


# --- result expiry -------------------------------------------------------------------------


async def test_result_ttl_of_the_task_then_the_queue_then_retention(broker: Broker) -> None:
    own = await enqueue(broker, result_ttl=5)
    await broker.queue_settings(queue="q", result_ttl=100)
    by_queue = await enqueue(broker)
    other = await enqueue(broker, "other")
    for task_id in (own, by_queue, other):
        await broker.cancel(task_id=task_id)
    tasks = {i: await task_of(broker, i) for i in (own, by_queue, other)}
    assert tasks[own]["expires_at"] == pytest.approx(tasks[own]["finished_at"] + 5)
    assert tasks[by_queue]["expires_at"] == pytest.approx(tasks[by_queue]["finished_at"] + 100)
    retention = broker.settings.retention
    assert tasks[other]["expires_at"] == pytest.approx(tasks[other]["finished_at"] + retention)
    reply = await broker.queue_settings(queue="q")
    assert reply == {"queue": "q", "result_ttl": 100}
    assert (await broker.queue_settings(queue="q", result_ttl=None))["result_ttl"] is None


async def test_the_sweeper_deletes_expired_results(broker: Broker) -> None:
    gone = await enqueue(broker, result_ttl=0)
    kept = await enqueue(broker, result_ttl=3600)
    for task_id in (gone, kept):
        await broker.cancel(task_id=task_id)
    result = await Sweeper(broker).sweep()
    assert result.deleted == 1
    with pytest.raises(errors.NotFound):
        await broker.get(task_id=gone)
    assert await state_of(broker, kept) == "cancelled"
    stats = await broker.stats()
    assert stats["queues"]["q"]["cancelled"] == 1


# --- dependencies --------------------------------------------------------------------------


async def finish(broker: Broker, queue: str = "q", *, fail: bool = False) -> int:
    (lease,) = await claim(broker, queue)
    if fail:
        await broker.fail(task_id=lease["task_id"], lease_token=lease["lease_token"], retry=False)
    else:
        await broker.ack(task_id=lease["task_id"], lease_token=lease["lease_token"])
    return int(lease["task_id"])


async def test_a_child_waits_for_its_parents_then_is_queued(broker: Broker) -> None:
    a = await enqueue(broker, "p")
    b = await enqueue(broker, "p")
    child = await enqueue(broker, "c", after=[a, b])
    assert await state_of(broker, child) == "waiting"
    assert (await broker.stats())["queues"]["c"]["waiting"] == 1
    assert await claim(broker, "c") == []
    await finish(broker, "p")
    assert await state_of(broker, child) == "waiting"
    await finish(broker, "p")
    assert await state_of(broker, child) == "queued"
    assert (await broker.stats())["queues"]["c"]["waiting"] == 0
    assert [t["task_id"] for t in await claim(broker, "c")] == [child]


async def test_a_succeeded_parent_does_not_hold_and_a_missing_one_is_not_found(
    broker: Broker,
) -> None:
    a = await enqueue(broker)
    await finish(broker)
    assert await state_of(broker, await enqueue(broker, "c", after=[a])) == "queued"
    with pytest.raises(errors.NotFound):
        await enqueue(broker, "c", after=[999_999])
    with pytest.raises(errors.BadRequest):
        await broker.enqueue(queue="c", after=[EarlierItem(0)])


async def test_a_dead_parent_cancels_its_dependents_down_the_chain(broker: Broker) -> None:
    parent = await enqueue(broker, max_attempts=1)
    child = await enqueue(broker, "c", after=[parent])
    grandchild = await enqueue(broker, "g", after=[child])
    runs_anyway = await enqueue(broker, "r", after=[parent], on_parent_failure="run")
    await finish(broker, fail=True)
    child_task = await task_of(broker, child)
    assert child_task["state"] == "cancelled"
    assert child_task["last_error"] == f"parent task {parent} ended dead"
    assert await state_of(broker, grandchild) == "cancelled"
    assert await state_of(broker, runs_anyway) == "queued"
    late = await task_of(broker, await enqueue(broker, "c", after=[parent]))
    assert late["state"] == "cancelled"


async def test_a_chain_and_a_fan_in_in_one_enqueue_many(broker: Broker) -> None:
    chain = [
        TaskSpec("q", j(0)),
        TaskSpec("q", j(1), after=[EarlierItem(0)]),
        TaskSpec("q", j(2), after=[EarlierItem(1)]),
    ]
    fan = [TaskSpec("f", j(i)) for i in range(10)]
    fan.append(TaskSpec("sink", j("all"), after=[EarlierItem(3 + i) for i in range(10)]))
    ids = (await broker.enqueue_many(tasks=chain + fan))["task_ids"]
    assert [await state_of(broker, i) for i in ids[:3]] == ["queued", "waiting", "waiting"]
    for step in range(3):
        assert [t["task_id"] for t in await claim(broker, max=5)] == [ids[step]]
        await broker.ack(task_id=ids[step], lease_token=(await task_lease(broker, ids[step])))
    sink = ids[-1]
    for _ in range(10):
        assert await state_of(broker, sink) == "waiting"
        await finish(broker, "f")
    assert await state_of(broker, sink) == "queued"
    with pytest.raises(errors.BadRequest):
        await broker.enqueue_many(tasks=[TaskSpec("q", after=[EarlierItem(0)])])


async def task_lease(broker: Broker, task_id: int) -> str:
    rows = await broker.store.read(
        lambda conn: conn.execute(
            f"SELECT lease_token FROM tasks WHERE id = {broker.sql.PARAM}", (task_id,)
        ).fetchone()
    )
    return str(rows[0])


async def test_a_waiting_task_can_be_cancelled_and_waits_see_dependents_finish(
    broker: Broker,
) -> None:
    parent = await enqueue(broker)
    child = await enqueue(broker, "c", after=[parent])
    assert (await broker.cancel(task_id=child))["state"] == "cancelled"
    await finish(broker)
    assert await state_of(broker, child) == "cancelled"
    assert (await broker.wait(task_id=child, timeout=5))["done"] is True
