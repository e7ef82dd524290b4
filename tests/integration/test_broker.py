"""The broker's semantics on real SQLite files: every operation and every error it raises."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
import pytest

from durable_tq import errors
from durable_tq import protocol as p
from durable_tq.backends.sqlite.store import Batch
from durable_tq.config import Settings
from durable_tq.core.broker import Broker, Session, TaskSpec, backoff_delay

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@dataclass(frozen=True)
class TaskSpecSettle:
    """One settle item, as the broker takes it (``wire.schema.SettleItem`` is one too)."""

    task_id: int
    lease_token: str
    outcome: str
    result: str | None = None
    error: str = ""
    retry: bool = True
    delay: float | None = None


@dataclass(frozen=True)
class ClaimSpec:
    queues: list[str]
    max: int = 1
    wait: float = 0.0
    lease: float | None = None


def j(value: Any) -> str:
    """JSON text of a payload or result, as the broker takes it."""
    return p.dumps_value(value)


def plain(value: Any) -> Any:
    """A broker result with its raw JSON (payloads, results) decoded."""
    if isinstance(value, msgspec.Raw):
        return json.loads(bytes(value))
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


async def enqueue(broker: Broker, queue: str = "q", payload: Any = None, **kw: Any) -> int:
    reply = await broker.enqueue(queue=queue, payload=j(payload), **kw)
    return int(reply["task_id"])


async def claim(
    broker: Broker, *queues: str, session: Session | None = None, **kw: Any
) -> list[dict[str, Any]]:
    reply = await broker.claim(queues=list(queues or ("q",)), **kw, session=session or Session())
    return list(plain(reply["tasks"]))


async def parked(broker: Broker, count: int, queue: str | None = None) -> None:
    """Return once ``count`` claims are parked (long-polling) on the broker's waiters."""
    with anyio.fail_after(10):
        while broker.waiters.waiting(queue) < count:  # noqa: ASYNC110 - no event to wait on
            await anyio.sleep(0.001)


async def state_of(broker: Broker, task_id: int) -> str:
    return str(plain((await broker.get(task_id=task_id))["task"])["state"])


async def test_enqueue_get_roundtrip(broker: Broker) -> None:
    payload = {"to": "a@example.com", "n": [1, 2.5, None, True], "text": "héllo\n"}
    task_id = await enqueue(broker, payload=payload, priority=3, max_attempts=7, unique_key="k1")
    task = plain((await broker.get(task_id=task_id))["task"])
    assert task["payload"] == payload
    assert task["state"] == "queued"
    assert (task["priority"], task["max_attempts"], task["attempts"]) == (3, 7, 0)
    assert task["unique_key"] == "k1"
    assert task["created_at"] <= time.time()


async def test_priority_then_fifo_across_three_queues(broker: Broker) -> None:
    ids = {}
    for name, queue, priority in [
        ("a0", "a", 0),
        ("b0", "b", 0),
        ("c5", "c", 5),
        ("a5", "a", 5),
        ("b9", "b", 9),
        ("c0", "c", 0),
        ("a0b", "a", 0),
        ("b5", "b", 5),
    ]:
        ids[name] = await enqueue(broker, queue, name, priority=priority)
    got = [t["payload"] for t in await claim(broker, "a", "b", "c", max=3)]
    assert got == ["b9", "c5", "a5"]
    got += [t["payload"] for t in await claim(broker, "a", "b", "c", max=10)]
    assert got == ["b9", "c5", "a5", "b5", "a0", "b0", "c0", "a0b"]


async def test_claim_one_queue_priority_and_fifo(broker: Broker) -> None:
    for i in range(5):
        await enqueue(broker, payload=f"low{i}")
    await enqueue(broker, payload="high", priority=10)
    await enqueue(broker, payload="neg", priority=-1)
    order = [t["payload"] for t in await claim(broker, max=10)]
    assert order == ["high", "low0", "low1", "low2", "low3", "low4", "neg"]


async def test_claim_fields_and_ack_with_result(broker: Broker) -> None:
    task_id = await enqueue(broker, payload={"x": 1}, lease=12)
    (task,) = await claim(broker)
    assert task["task_id"] == task_id and task["attempt"] == 1 and task["queue"] == "q"
    assert task["lease_expires_at"] == pytest.approx(time.time() + 12, abs=2)
    await broker.ack(task_id=task_id, lease_token=task["lease_token"], result=j({"ok": 1}))
    info = plain((await broker.get(task_id=task_id))["task"])
    assert info["state"] == "succeeded" and info["result"] == {"ok": 1}
    assert info["finished_at"] is not None
    assert await claim(broker) == []


async def test_empty_claim_returns_at_once(broker: Broker) -> None:
    assert await claim(broker) == []


async def test_expired_lease_is_swept_and_reclaimed_with_new_token(broker: Broker) -> None:
    task_id = await enqueue(broker, payload="slow")
    (first,) = await claim(broker, lease=0.2)
    with anyio.fail_after(10):
        while (second := await claim(broker, wait=1)) == []:
            pass
    assert second[0]["task_id"] == task_id
    assert second[0]["lease_token"] != first["lease_token"]
    assert second[0]["attempt"] == 2
    for op in (
        broker.ack(task_id=task_id, lease_token=first["lease_token"]),
        broker.fail(task_id=task_id, lease_token=first["lease_token"], error="x"),
        broker.release(task_id=task_id, lease_token=first["lease_token"]),
        broker.extend(task_id=task_id, lease_token=first["lease_token"], lease=5),
    ):
        with pytest.raises(errors.LeaseLost):
            await op
    await broker.ack(task_id=task_id, lease_token=second[0]["lease_token"])
    assert await state_of(broker, task_id) == "succeeded"


async def test_expired_lease_gets_lease_lost_before_the_sweep(
    make_settings: Callable[..., Settings],
) -> None:
    async with Broker(make_settings(sweep_interval=3600)) as broker:  # no sweeper running
        task_id = await enqueue(broker)
        (task,) = await claim(broker, lease=0.05)
        await anyio.sleep(0.1)
        with pytest.raises(errors.LeaseLost):
            await broker.ack(task_id=task_id, lease_token=task["lease_token"])
        assert await state_of(broker, task_id) == "leased"


async def test_expired_lease_on_last_attempt_goes_dead(broker: Broker) -> None:
    task_id = await enqueue(broker, max_attempts=1)
    await claim(broker, lease=0.05)
    with anyio.fail_after(10):
        while await state_of(broker, task_id) != "dead":  # noqa: ASYNC110 - polling the DB
            await anyio.sleep(0.05)
    task = plain((await broker.get(task_id=task_id))["task"])
    assert task["last_error"] == "lease expired"
    # Counted as dead (/metrics, throughput) like a worker's fail on the last attempt.
    with anyio.fail_after(10):
        while broker.counters["dead"] < 1:  # noqa: ASYNC110 - the sweeper counts after its write
            await anyio.sleep(0.01)
    assert broker.counters["dead"] == 1 and broker.counters["failed"] == 0


async def test_throughput_rates_from_the_counters(broker: Broker) -> None:
    from durable_tq.core.throughput import ThroughputRing

    broker.throughput_ring = ring = ThroughputRing(interval=0.05, window=60)
    ring.sample(broker.now(), broker.counters)
    for _ in range(4):
        await enqueue(broker)
    for task in await claim(broker, max=3):
        await broker.ack(task_id=task["task_id"], lease_token=task["lease_token"])
    done_at = broker.now()
    with anyio.fail_after(10):  # a snapshot after the acks (the sweeper's, or the read's)
        while True:
            reply = await broker.throughput()
            if reply["samples"] and reply["samples"][-1]["at"] >= done_at:
                break
            await anyio.sleep(0.02)
    assert reply["interval"] == 0.05 and reply["window"] == 60
    counted = {name: 0.0 for name in ("enqueued", "claimed", "succeeded", "failed", "dead")}
    for sample in reply["samples"]:
        assert sample["seconds"] >= 0.05
        for name in counted:
            counted[name] += sample[name] * sample["seconds"]
    assert counted == pytest.approx(
        {"enqueued": 4, "claimed": 3, "succeeded": 3, "failed": 0, "dead": 0}
    )


async def test_fail_backs_off_growing_then_dead_at_max_attempts(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(backoff_base=0.01, backoff_cap=10, backoff_jitter=0.5)
    delays = []
    async with Broker(settings) as broker:
        task_id = await enqueue(broker, max_attempts=4)
        for attempt in range(1, 5):
            # Make the task ready now, whatever its backoff: claim needs it queued (and the
            # counts must hear of the move, as the sweeper's own moves do).
            def make_ready(conn: Any, batch: Batch) -> None:
                cursor = conn.execute(
                    "UPDATE tasks SET state='queued' WHERE id = "
                    f"{broker.sql.PARAM} AND state='scheduled'",
                    (task_id,),
                )
                batch.moved("q", "scheduled", "queued", cursor.rowcount)

            await broker.store.write(make_ready)
            (task,) = await claim(broker)
            assert task["attempt"] == attempt
            before = time.time()
            reply = await broker.fail(
                task_id=task_id, lease_token=task["lease_token"], error=f"boom {attempt}"
            )
            if attempt < 4:
                assert reply["state"] == "scheduled"
                delays.append(reply["run_at"] - before)
            else:
                assert reply == {"state": "dead", "run_at": None}
        assert delays == sorted(delays) and delays[0] < delays[-1]
        info = plain((await broker.get(task_id=task_id))["task"])
        assert info["state"] == "dead" and info["last_error"] == "boom 4"
        assert info["attempts"] == 4


def test_backoff_grows_and_is_capped(settings: Settings) -> None:
    delays = [backoff_delay(n, settings) for n in range(1, 8)]
    assert all(a < b for a, b in itertools.pairwise(delays))
    assert backoff_delay(200, settings) <= settings.backoff_cap


async def test_fail_without_retry_goes_dead_and_with_delay_zero_requeues(broker: Broker) -> None:
    a = await enqueue(broker, payload="a")
    b = await enqueue(broker, payload="b")
    ta, tb = await claim(broker, max=2)
    reply = await broker.fail(task_id=a, lease_token=ta["lease_token"], retry=False)
    assert reply["state"] == "dead"
    reply = await broker.fail(task_id=b, lease_token=tb["lease_token"], delay=0)
    assert reply["state"] == "queued"
    (again,) = await claim(broker)
    assert again["task_id"] == b and again["attempt"] == 2


async def test_release_does_not_count_the_attempt(broker: Broker) -> None:
    task_id = await enqueue(broker)
    (task,) = await claim(broker)
    reply = await broker.release(task_id=task_id, lease_token=task["lease_token"])
    assert reply["state"] == "queued"
    (task,) = await claim(broker)
    assert task["attempt"] == 1
    reply = await broker.release(task_id=task_id, lease_token=task["lease_token"], delay=30)
    assert reply["state"] == "scheduled" and reply["run_at"] > time.time() + 25
    assert await claim(broker) == []


async def test_extend_moves_the_lease(broker: Broker) -> None:
    task_id = await enqueue(broker)
    (task,) = await claim(broker, lease=1)
    reply = await broker.extend(task_id=task_id, lease_token=task["lease_token"], lease=60)
    assert reply["lease_expires_at"] > time.time() + 50
    with pytest.raises(errors.BadRequest):
        await broker.extend(task_id=task_id, lease_token=task["lease_token"], lease=10**9)


async def test_unknown_task_is_not_found(broker: Broker) -> None:
    for op in (
        broker.get(task_id=999),
        broker.cancel(task_id=999),
        broker.ack(task_id=999, lease_token="x"),
        broker.fail(task_id=999, lease_token="x"),
        broker.release(task_id=999, lease_token="x"),
        broker.extend(task_id=999, lease_token="x", lease=1),
    ):
        with pytest.raises(errors.NotFound):
            await op


async def test_unique_key_returns_the_live_task_then_frees_when_done(broker: Broker) -> None:
    first = await broker.enqueue(queue="q", payload=j(1), unique_key="order-7")
    again = await broker.enqueue(queue="q", payload=j(2), unique_key="order-7")
    assert first["created"] is True
    assert again == {"task_id": first["task_id"], "created": False}
    other_queue = await broker.enqueue(queue="r", payload=j(3), unique_key="order-7")
    assert other_queue["created"] is True
    (task,) = await claim(broker)
    dup_while_leased = await broker.enqueue(queue="q", payload=j(4), unique_key="order-7")
    assert dup_while_leased["created"] is False
    await broker.ack(task_id=task["task_id"], lease_token=task["lease_token"])
    after = await broker.enqueue(queue="q", payload=j(5), unique_key="order-7")
    assert after["created"] is True and after["task_id"] != first["task_id"]


async def test_enqueue_many_is_all_or_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    async with Broker(make_settings(max_queue_depth=3)) as broker:
        reply = await broker.enqueue_many(
            tasks=[TaskSpec(queue="q", payload=j(i)) for i in range(2)]
        )
        assert len(reply["task_ids"]) == 2 and reply["created"] == [True, True]
        with pytest.raises(errors.Busy) as busy:
            await broker.enqueue_many(tasks=[TaskSpec(queue="q", payload=j(i)) for i in range(2)])
        assert busy.value.retry_after > 0
        stats = await broker.stats()
        assert stats["queues"]["q"]["queued"] == 2  # the failed batch left nothing behind


async def test_enqueue_many_dedupes_within_and_reports_created(broker: Broker) -> None:
    reply = await broker.enqueue_many(
        tasks=[
            TaskSpec(queue="q", payload=j(1), unique_key="u"),
            TaskSpec(queue="q", payload=j(2), unique_key="u"),
            TaskSpec(queue="q", payload=j(3)),
        ]
    )
    assert reply["task_ids"][0] == reply["task_ids"][1]
    assert reply["created"] == [True, False, True]


async def test_max_queue_depth_gives_busy(make_settings: Callable[..., Settings]) -> None:
    async with Broker(make_settings(max_queue_depth=2)) as broker:
        await enqueue(broker)
        await enqueue(broker, delay=60)
        with pytest.raises(errors.Busy):
            await enqueue(broker)
        await enqueue(broker, "other")  # other queues are not affected
        await claim(broker)  # a leased task no longer counts
        await enqueue(broker)


async def test_max_enqueue_many_is_enforced(make_settings: Callable[..., Settings]) -> None:
    async with Broker(make_settings(max_enqueue_many=3)) as broker:
        with pytest.raises(errors.BadRequest, match="max_enqueue_many"):
            await broker.enqueue_many(tasks=[TaskSpec(queue="q") for _ in range(4)])


async def test_delay_and_run_at_schedule_then_become_ready(broker: Broker) -> None:
    delayed = await enqueue(broker, payload="d", delay=0.3)
    at = await enqueue(broker, payload="at", run_at=time.time() + 0.3)
    assert await state_of(broker, delayed) == "scheduled"
    assert await claim(broker) == []
    with anyio.fail_after(10):
        got = await claim(broker, wait=5, max=2)
        while len(got) < 2:
            got += await claim(broker, wait=5)
    assert {t["task_id"] for t in got} == {delayed, at}


async def test_claim_with_wait_returns_as_soon_as_a_task_arrives(broker: Broker) -> None:
    tasks: list[dict[str, Any]] = []
    returned = anyio.Event()

    async def consumer() -> None:
        tasks.extend(await claim(broker, wait=30))
        returned.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        await parked(broker, 1)  # the claim found nothing and waits
        await enqueue(broker, payload="late")
        with anyio.fail_after(2):  # the wait was 30 s: only the enqueue can have ended it
            await returned.wait()
    assert [t["payload"] for t in tasks] == ["late"]
    assert broker.waiters.waiting() == 0


async def test_many_parked_claims_each_get_one_task(broker: Broker) -> None:
    got: list[int] = []

    async def consumer() -> None:
        got.extend(t["task_id"] for t in await claim(broker, wait=20))

    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(consumer)
            await parked(broker, 10)
            ids = [await enqueue(broker, payload=i) for i in range(10)]
    assert sorted(got) == ids


async def test_claim_wait_ends_empty_at_the_deadline(broker: Broker) -> None:
    with anyio.fail_after(10):
        assert await claim(broker, wait=0.2) == []
    assert broker.waiters.waiting() == 0


async def test_pause_stops_claims_and_resume_wakes_them(broker: Broker) -> None:
    await broker.pause(queue="q")
    task_id = await enqueue(broker)
    assert await claim(broker) == []
    stats = await broker.stats()
    assert stats["queues"]["q"]["paused"] is True

    async def resume_once_parked() -> None:
        await parked(broker, 1, "q")
        await broker.resume(queue="q")

    async with anyio.create_task_group() as tg:
        tg.start_soon(resume_once_parked)
        with anyio.fail_after(10):
            tasks = await claim(broker, wait=20)
    assert [t["task_id"] for t in tasks] == [task_id]


async def test_pause_on_unknown_queue_shows_in_stats(broker: Broker) -> None:
    await broker.pause(queue="empty")
    stats = await broker.stats()
    assert stats["queues"]["empty"]["paused"] is True
    assert stats["queues"]["empty"]["queued"] == 0


async def test_cancel_rules(broker: Broker) -> None:
    queued = await enqueue(broker, payload="queued")
    scheduled = await enqueue(broker, payload="later", delay=60)
    leased = await enqueue(broker, "other")
    (lease,) = await claim(broker, "other")
    assert (await broker.cancel(task_id=queued))["state"] == "cancelled"
    assert (await broker.cancel(task_id=queued))["state"] == "cancelled"
    assert (await broker.cancel(task_id=scheduled))["state"] == "cancelled"
    # A leased task is marked, and its worker told (issue 14): "cancelling".
    assert (await broker.cancel(task_id=leased))["state"] == "cancelling"
    # A handler that finished anyway still succeeds: the work was done.
    await broker.ack(task_id=leased, lease_token=lease["lease_token"])
    with pytest.raises(errors.Conflict):
        await broker.cancel(task_id=leased)
    dead = await enqueue(broker, payload="dead", max_attempts=1)
    (lease,) = await claim(broker)
    await broker.fail(task_id=dead, lease_token=lease["lease_token"])
    assert (await broker.cancel(task_id=dead))["state"] == "cancelled"


async def test_requeue_by_ids_and_by_queue(broker: Broker) -> None:
    ids = [await enqueue(broker, payload=i, max_attempts=1) for i in range(3)]
    live = await enqueue(broker, payload="live")
    for lease in await claim(broker, max=3):
        await broker.fail(task_id=lease["task_id"], lease_token=lease["lease_token"])
    assert [await state_of(broker, i) for i in ids] == ["dead"] * 3
    reply = await broker.requeue(task_ids=[ids[0], live, 12345])
    assert reply["count"] == 1  # only dead/cancelled tasks move
    info = plain((await broker.get(task_id=ids[0]))["task"])
    assert info["state"] == "queued" and info["attempts"] == 0
    reply = await broker.requeue(queue="q", state=p.TaskState.DEAD)
    assert reply["count"] == 2


async def test_requeue_skips_a_dead_twin_of_a_live_unique_task(broker: Broker) -> None:
    dead = await enqueue(broker, unique_key="u", max_attempts=1)
    (lease,) = await claim(broker)
    await broker.fail(task_id=dead, lease_token=lease["lease_token"])
    await enqueue(broker, unique_key="u")
    assert (await broker.requeue(task_ids=[dead]))["count"] == 0


async def test_purge_never_touches_leased(broker: Broker) -> None:
    for i in range(4):
        await enqueue(broker, payload=i)
    await enqueue(broker, payload="later", delay=60)
    (lease,) = await claim(broker)
    assert (await broker.purge(queue="q", state=p.TaskState.SCHEDULED))["count"] == 1
    assert (await broker.purge(queue="q"))["count"] == 3
    assert await state_of(broker, lease["task_id"]) == "leased"
    stats = (await broker.stats())["queues"]["q"]
    assert (stats["queued"], stats["leased"], stats["scheduled"]) == (0, 1, 0)


async def test_stats_counts_every_state(broker: Broker) -> None:
    a = await enqueue(broker)
    await enqueue(broker)
    await enqueue(broker, delay=100)
    (lease,) = await claim(broker)
    await broker.ack(task_id=a, lease_token=lease["lease_token"])
    await enqueue(broker)
    stats = await broker.stats()
    q = stats["queues"]["q"]
    assert (q["succeeded"], q["queued"], q["scheduled"], q["leased"]) == (1, 2, 1, 0)
    assert q["oldest_queued_age"] is not None and q["oldest_queued_age"] >= 0
    assert stats["workers"] == 0


async def test_list_pages_with_after_id(broker: Broker) -> None:
    ids = [await enqueue(broker, payload=i) for i in range(7)]
    await enqueue(broker, "other")
    seen: list[int] = []
    after = None
    while True:
        page = await broker.list(queue="q", state=p.TaskState.QUEUED, limit=3, after_id=after)
        seen += [t["task_id"] for t in page["tasks"]]
        after = page["next_after_id"]
        if after is None:
            break
    assert seen == ids
    all_tasks = await broker.list()
    assert len(all_tasks["tasks"]) == 8 and all_tasks["next_after_id"] is None


async def test_workers_register_heartbeat_and_state(broker: Broker) -> None:
    session = Session()
    spec = p.WorkerSpec(id="w1", queues=["q"], concurrency=2, meta={"host": "h"})
    await broker.hello(version=1, worker=spec, session=session)
    assert (await broker.heartbeat(session=session))["state"] == "running"
    await broker.worker_state(worker_id="w1", state=p.WorkerCommand.QUIET)
    assert (await broker.heartbeat(session=session))["state"] == "quiet"
    (worker,) = (await broker.workers())["workers"]
    assert worker["id"] == "w1" and worker["state"] == "quiet" and worker["concurrency"] == 2
    assert (await broker.stats())["workers"] == 1
    with pytest.raises(errors.NotFound):
        await broker.worker_state(worker_id="nope", state=p.WorkerCommand.QUIET)
    with pytest.raises(errors.Conflict):
        await broker.heartbeat(session=Session())


async def test_quiet_worker_gets_no_tasks_and_concurrency_caps_leases(broker: Broker) -> None:
    session = Session()
    spec = p.WorkerSpec(id="w", concurrency=2)
    await broker.hello(version=1, worker=spec, session=session)
    for i in range(5):
        await enqueue(broker, payload=i)
    assert len(await claim(broker, session=session, max=10)) == 2
    assert await claim(broker, session=session, max=10) == []
    assert (await broker.workers())["workers"][0]["leased"] == 2
    await broker.worker_state(worker_id="w", state=p.WorkerCommand.QUIET)
    other = Session()
    await broker.hello(version=1, worker=p.WorkerSpec(id="w2", concurrency=9), session=other)
    await broker.worker_state(worker_id="w2", state=p.WorkerCommand.QUIET)
    assert await claim(broker, session=other) == []


async def test_silent_worker_leases_are_released(make_settings: Callable[..., Settings]) -> None:
    from durable_tq.core.sweeper import Sweeper

    settings = make_settings(worker_timeout=0.3, sweep_interval=0.1)
    async with Broker(settings) as broker, anyio.create_task_group() as tg:
        tg.start_soon(Sweeper(broker).run)
        session = Session()
        await broker.hello(version=1, worker=p.WorkerSpec(id="w"), session=session)
        task_id = await enqueue(broker)
        await claim(broker, session=session, lease=3600)
        with anyio.fail_after(10):
            again = await claim(broker, wait=5)
        assert again[0]["task_id"] == task_id
        info = plain((await broker.get(task_id=task_id))["task"])
        assert info["attempts"] == 2
        tg.cancel_scope.cancel()


async def test_hello_checks_version_token_and_repeat(
    make_settings: Callable[..., Settings],
) -> None:
    async with Broker(make_settings(auth_tokens=["s3cret", "other"])) as broker:
        with pytest.raises(errors.UnsupportedVersion):
            await broker.hello(version=2, token="s3cret", session=Session())
        with pytest.raises(errors.Unauthorized):
            await broker.hello(version=1, token="wrong", session=Session())
        with pytest.raises(errors.Unauthorized):
            await broker.hello(version=1, session=Session())
        session = Session()
        reply = await broker.hello(version=1, token="other", session=session)
        assert reply["version"] == 1 and reply["heartbeat_interval"] > 0
        with pytest.raises(errors.Conflict):
            await broker.hello(version=1, token="other", session=session)


async def test_lease_over_max_lease_is_bad_request(broker: Broker) -> None:
    await enqueue(broker)
    with pytest.raises(errors.BadRequest):
        await claim(broker, lease=10**9)
    with pytest.raises(errors.BadRequest):
        await claim(broker, wait=10**6)


async def test_state_survives_close_and_reopen(settings: Settings) -> None:
    async with Broker(settings) as broker:
        done = await enqueue(broker, payload="done")
        leased = await enqueue(broker, payload="leased")
        waiting = await enqueue(broker, payload="waiting", priority=-1)
        later = await enqueue(broker, payload="later", delay=3600)
        first, second = await claim(broker, max=2)
        await broker.ack(task_id=done, lease_token=first["lease_token"])
        await broker.pause(queue="paused")
    async with Broker(settings) as broker:
        states = [await state_of(broker, t) for t in (done, leased, waiting, later)]
        assert states == ["succeeded", "leased", "queued", "scheduled"]
        # The lease that was out keeps its token until it expires.
        await broker.ack(task_id=leased, lease_token=second["lease_token"])
        assert broker.paused == {"paused"}
        assert (await claim(broker))[0]["task_id"] == waiting


@pytest.mark.sqlite_only  # one broker per SQLite file; PostgreSQL takes several
async def test_second_broker_on_the_same_file_is_refused(settings: Settings) -> None:
    async with Broker(settings):
        with pytest.raises(errors.ConfigError, match="in use by another broker"):
            async with Broker(settings):
                pass


async def test_group_commit_answers_200_enqueues_in_fewer_commits(broker: Broker) -> None:
    before = broker.store.stats.commits
    results: list[int] = []

    async def one(i: int) -> None:
        results.append(await enqueue(broker, payload=i))

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(one, i)
    commits = broker.store.stats.commits - before
    assert len(set(results)) == 200
    assert commits < 200
    assert broker.store.stats.largest_batch > 1


async def test_one_bad_request_in_a_batch_does_not_spoil_the_others(broker: Broker) -> None:
    good: list[int] = []
    bad: list[Exception] = []

    async def ack_bogus() -> None:
        try:
            await broker.ack(task_id=424242, lease_token="nope")
        except errors.NotFound as exc:
            bad.append(exc)

    async def add(i: int) -> None:
        good.append(await enqueue(broker, payload=i))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(add, i)
            tg.start_soon(ack_bogus)
    assert len(good) == 20 and len(bad) == 20
    assert (await broker.stats())["queues"]["q"]["queued"] == 20


async def test_retention_deletes_old_finished_tasks(make_settings: Callable[..., Settings]) -> None:
    from durable_tq.core.sweeper import Sweeper

    async with Broker(make_settings(retention=0.2)) as broker:
        old = await enqueue(broker)
        (lease,) = await claim(broker)
        await broker.ack(task_id=old, lease_token=lease["lease_token"])
        keep = await enqueue(broker)
        await anyio.sleep(0.3)
        result = await Sweeper(broker).sweep()
        assert result.deleted == 1
        with pytest.raises(errors.NotFound):
            await broker.get(task_id=old)
        assert await state_of(broker, keep) == "queued"


async def test_task_ids_are_never_reused(broker: Broker) -> None:
    await enqueue(broker, "a")
    purged = await enqueue(broker, "b")
    await broker.purge(queue="b")
    assert await enqueue(broker, "c") > purged


async def test_a_refused_batch_does_not_leave_its_queue_unrecorded(
    make_settings: Callable[..., Settings],
) -> None:
    async with Broker(make_settings(max_queue_depth=1)) as broker:
        with pytest.raises(errors.Busy):
            await broker.enqueue_many(tasks=[TaskSpec(queue="fresh"), TaskSpec(queue="fresh")])
        await enqueue(broker, "fresh")
        rows = await broker.store.read(
            lambda conn: conn.execute("SELECT name FROM queues").fetchall()
        )
        assert rows == [("fresh",)]


async def test_oldest_queued_age_is_the_longest_wait(broker: Broker) -> None:
    first = await enqueue(broker, payload="a")
    await enqueue(broker, payload="b")
    (lease,) = await claim(broker)
    await anyio.sleep(0.3)
    await broker.fail(task_id=first, lease_token=lease["lease_token"], delay=0)
    age = (await broker.stats())["queues"]["q"]["oldest_queued_age"]
    assert age >= 0.3


async def test_a_claim_answered_before_its_commit_is_visible_to_the_next_read(
    broker: Broker,
) -> None:
    """Claims are answered before their fsync (not a durable reply); reads wait for it."""
    for i in range(20):
        task_id = await enqueue(broker, payload=i)
        (task,) = await claim(broker)
        info = plain((await broker.get(task_id=task_id))["task"])
        assert info["state"] == "leased" and info["attempts"] == 1
        await broker.ack(task_id=task_id, lease_token=task["lease_token"])


async def test_queue_counts_stay_exact_through_every_kind_of_change(
    make_settings: Callable[..., Settings],
) -> None:
    """stats and max_queue_depth read queue_counts: after a mix of every operation that moves
    or removes tasks, it must equal a count of the rows themselves."""
    from durable_tq.core.sweeper import Sweeper

    settings = make_settings(worker_timeout=0.2, retention=0.3, release_on_disconnect=True)
    async with Broker(settings) as broker:
        sweeper = Sweeper(broker)

        def counts(conn: Any) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
            kept = {(q, s): n for q, s, n in conn.execute(broker.sql.QUEUE_COUNTS) if n}
            actual = {
                (q, s): n
                for q, s, n in conn.execute(
                    "SELECT queue, state, count(*) FROM tasks GROUP BY queue, state"
                )
            }
            return kept, actual

        session = Session()
        await broker.hello(version=1, worker=p.WorkerSpec(id="w", concurrency=50), session=session)
        for queue in ("a", "b"):
            await broker.enqueue_many(
                tasks=[TaskSpec(queue=queue, payload=j(i)) for i in range(12)]
            )
        await enqueue(broker, "a", delay=0.1)
        await enqueue(broker, "b", unique_key="u")
        await enqueue(broker, "b", unique_key="u")  # a duplicate: no new row
        leases = await claim(broker, "a", "b", session=session, max=14)
        ack, fail, dead, release, expire, keep = (leases[i::6] for i in range(6))
        for t in ack:
            await broker.ack(task_id=t["task_id"], lease_token=t["lease_token"])
        for t in fail:
            await broker.fail(task_id=t["task_id"], lease_token=t["lease_token"], delay=0)
        for t in dead:
            await broker.fail(task_id=t["task_id"], lease_token=t["lease_token"], retry=False)
        for t in release:
            await broker.release(task_id=t["task_id"], lease_token=t["lease_token"])
        for t in expire:
            await broker.extend(task_id=t["task_id"], lease_token=t["lease_token"], lease=0.01)
        queued = (await broker.list(state=p.TaskState.QUEUED, limit=3))["tasks"]
        for task in queued:
            await broker.cancel(task_id=task["task_id"])
        await broker.requeue(task_ids=[queued[0]["task_id"], dead[0]["task_id"]])
        await broker.requeue(queue="a", state=p.TaskState.DEAD)
        await broker.purge(queue="b", state=p.TaskState.CANCELLED)
        kept, actual = await broker.store.read(counts)
        assert kept == actual
        assert len({state for _, state in actual}) >= 4
        await anyio.sleep(0.35)
        await sweeper.sweep()  # expired leases, due task, retention of the acked ones
        await broker.session_closed(session)  # the worker's remaining leases are released
        await broker.purge(queue="a", state=p.TaskState.SUCCEEDED)
        assert keep, "the mix must leave some leases to the disconnect"

        kept, actual = await broker.store.read(counts)
        assert kept == actual


@pytest.mark.sqlite_only  # SQLite's savepoint machinery
async def test_a_batch_that_breaks_midway_commits_nothing_and_the_next_one_works(
    broker: Broker,
) -> None:
    """A failure outside any request's own error handling (here: the savepoint machinery)
    must roll the batch back, not leave the transaction open for every later BEGIN to fail."""

    def insert_then_break(conn: Any, batch: Any) -> None:
        conn.execute("INSERT INTO queues (name) VALUES ('ghost')")  # would commit if the batch did
        conn.execute("RELEASE request")  # the writer's own RELEASE after this then fails

    with pytest.raises(errors.Internal):
        await broker.store.write(insert_then_break)
    task_id = await enqueue(broker, payload="after")
    assert await state_of(broker, task_id) == "queued"
    names = await broker.store.read(lambda conn: conn.execute("SELECT name FROM queues").fetchall())
    assert ("ghost",) not in names


async def test_a_refused_enqueue_many_does_not_count_against_the_depth_of_its_batch(
    make_settings: Callable[..., Settings],
) -> None:
    """Regression (hardening, item 12): 9, then 5 refused as busy, then 1 in one group commit
    with max_queue_depth 10 answered ok, busy, busy: the refused request's count stayed."""
    async with Broker(make_settings(max_queue_depth=10)) as broker:
        outcomes: dict[str, object] = {}

        async def send(name: str, count: int) -> None:
            try:
                tasks = [TaskSpec(queue="q", payload=j(i)) for i in range(count)]
                await broker.enqueue_many(tasks=tasks)
                outcomes[name] = "ok"
            except errors.Busy as exc:
                outcomes[name] = exc.message

        # Started in one go, the three writes land in one batch (one transaction).
        async with anyio.create_task_group() as tg:
            tg.start_soon(send, "nine", 9)
            tg.start_soon(send, "five", 5)
            tg.start_soon(send, "one", 1)
        assert broker.store.stats.commits == 1  # all three were in one transaction
        assert outcomes["nine"] == "ok" and outcomes["one"] == "ok"
        assert "holds 9 waiting tasks" in str(outcomes["five"])
        assert (await broker.stats())["queues"]["q"]["queued"] == 10


async def test_settle_mixes_valid_stale_and_unknown_leases_per_task(broker: Broker) -> None:
    ids = [await enqueue(broker, payload=i) for i in range(4)]
    session = Session()
    tasks = {t["task_id"]: t for t in await claim(broker, max=4, session=session)}
    stale = tasks[ids[3]]["lease_token"]
    # Re-lease the fourth task under a new token: the old one is now stale.
    await broker.release(task_id=ids[3], lease_token=stale)
    (again,) = await claim(broker, session=session)
    settles = [
        TaskSpecSettle(ids[0], tasks[ids[0]]["lease_token"], "ack", j({"done": 1})),
        TaskSpecSettle(ids[1], tasks[ids[1]]["lease_token"], "fail", error="boom", retry=False),
        TaskSpecSettle(ids[2], tasks[ids[2]]["lease_token"], "release", delay=0),
        TaskSpecSettle(ids[3], stale, "ack"),
        TaskSpecSettle(987654, "nope", "ack"),
    ]
    reply = plain(await broker.settle(settles=settles, session=session))
    by_id = {r["task_id"]: r for r in reply["results"]}
    assert by_id[ids[0]] == {"task_id": ids[0], "ok": True, "state": "succeeded", "run_at": None}
    assert by_id[ids[1]]["ok"] and by_id[ids[1]]["state"] == "dead"
    assert by_id[ids[2]]["ok"] and by_id[ids[2]]["state"] == "queued"
    assert by_id[ids[3]]["error"]["code"] == "lease_lost"
    assert by_id[987654]["error"]["code"] == "not_found"
    assert "tasks" not in reply and "worker_state" not in reply  # no claim, no worker
    # Nothing else was touched: the re-leased task still holds its new lease.
    assert await state_of(broker, ids[3]) == "leased"
    info = plain((await broker.get(task_id=ids[0]))["task"])
    assert info["result"] == {"done": 1}
    await broker.ack(task_id=ids[3], lease_token=again["lease_token"])


async def test_settle_with_claim_leases_after_settling_in_one_round_trip(broker: Broker) -> None:
    session = Session()
    spec = p.WorkerSpec(id="w", concurrency=1, prefetch=1)
    await broker.hello(version=1, worker=spec, session=session)
    ids = [await enqueue(broker, payload=i) for i in range(4)]
    first = await claim(broker, max=10, session=session)
    assert [t["task_id"] for t in first] == ids[:2]  # concurrency + prefetch
    settles = [TaskSpecSettle(t["task_id"], t["lease_token"], "ack") for t in first]
    claim_args = ClaimSpec(queues=["q"], max=10)
    reply = plain(await broker.settle(settles=settles, claim=claim_args, session=session))
    assert [r["ok"] for r in reply["results"]] == [True, True]
    # The freed slots were claimable in the same transaction; the heartbeat came along.
    assert [t["task_id"] for t in reply["tasks"]] == ids[2:]
    assert reply["worker_state"] == "running"
    # Full again: a settle that frees nothing claims nothing.
    assert plain(await broker.settle(settles=[], claim=claim_args, session=session))["tasks"] == []


@pytest.mark.sqlite_only  # PRAGMA synchronous
async def test_a_batch_with_any_durable_write_commits_with_full_sync(
    make_settings: Callable[..., Settings],
) -> None:
    """Claims, extends and heartbeats alone commit without waiting for the fsync; any batch
    that holds a durable write (enqueue, ack...) commits with synchronous=FULL."""
    async with Broker(make_settings()) as broker:  # no sweeper: its writes would share batches
        await _check_sync_levels(broker)


async def _check_sync_levels(broker: Broker) -> None:

    def level(conn: Any, batch: Any) -> int:
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])  # 1 NORMAL, 2 FULL

    store = broker.store
    assert await store.write(level) == 2
    before = store.stats.unsynced_commits
    assert await store.write(level, durable=False) == 1
    assert store.stats.unsynced_commits == before + 1
    assert await store.write(level) == 2  # back to FULL for the next durable batch
    levels: list[int] = []

    async def write(durable: bool) -> None:
        levels.append(await store.write(level, durable=durable))

    async with anyio.create_task_group() as tg:  # one batch: a lease write and a durable one
        tg.start_soon(write, False)
        tg.start_soon(write, True)
    assert levels == [2, 2]
    # A claim is such a write; an ack after it is durable again.
    task_id = await enqueue(broker)
    (task,) = await claim(broker)
    assert store.stats.unsynced_commits == before + 2
    await broker.ack(task_id=task_id, lease_token=task["lease_token"])
    assert store.stats.unsynced_commits == before + 2
