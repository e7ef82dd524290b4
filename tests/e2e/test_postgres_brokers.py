"""Several brokers on one PostgreSQL database, as real processes: shared work, wake-ups across
brokers, queue settings across brokers, and a broker SIGKILLed under load."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import anyio
import pytest

from tests.conftest import BrokerProcess, RawConnection, empty_postgres

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(300)]

ServeSubprocess = Callable[..., BrokerProcess]
RawConnect = Callable[..., AbstractAsyncContextManager[RawConnection]]
SWEEPING = "this broker runs the sweeps now"
FAST = {"DURABLE_TQ_SWEEP_INTERVAL": "0.1", "DURABLE_TQ_LOG_LEVEL": "INFO"}


@pytest.fixture
def pg_url(postgres_database: str) -> str:
    empty_postgres(postgres_database)
    return postgres_database


def brokers(serve: ServeSubprocess, url: str, count: int) -> list[BrokerProcess]:
    """``count`` brokers on ``url``, started one after another: the first one sweeps."""
    started = []
    for i in range(count):
        started.append(serve(url, args=["--no-http"], env=FAST))
        if i == 0:
            wait_for_log(started[0], SWEEPING)
    return started


def wait_for_log(broker: BrokerProcess, text: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while text not in broker.log_text():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the log of {broker.url}:\n{broker.log_text()}")
        time.sleep(0.02)


async def test_a_task_enqueued_on_one_broker_wakes_a_claim_parked_on_another(
    serve_subprocess: ServeSubprocess, raw_connect: RawConnect, pg_url: str
) -> None:
    a, b, c = brokers(serve_subprocess, pg_url, 3)
    latencies = []
    async with (
        raw_connect(a.url) as producer,
        raw_connect(b.url) as worker,
        raw_connect(c.url) as waiter,
    ):
        for i in range(20):
            claim_id = await worker.send("claim", queues=["cross"], wait=20)
            await anyio.sleep(0.05)  # parked on b
            sent = time.perf_counter()
            enqueued = await producer.request("enqueue", queue="cross", payload=i)
            claimed = await worker.reply_to(claim_id)
            latencies.append(time.perf_counter() - sent)
            (task,) = claimed["tasks"]
            assert task["task_id"] == enqueued["task_id"]
            # A wait parked on c ends when b's ack commits.
            wait_id = await waiter.send("wait", task_id=task["task_id"], timeout=20)
            await anyio.sleep(0.02)
            await worker.request("ack", task_id=task["task_id"], lease_token=task["lease_token"])
            waited = await waiter.reply_to(wait_id)
            assert waited["done"] and waited["task"]["state"] == "succeeded"
        stats = await waiter.request("stats")
        assert stats["queues"]["cross"]["succeeded"] == 20
    latencies.sort()
    median, worst = latencies[len(latencies) // 2] * 1000, latencies[-1] * 1000
    print(f"cross-broker wake-up: median {median:.1f} ms, max {worst:.1f} ms")


async def test_pause_and_limits_set_on_one_broker_hold_on_the_others(
    serve_subprocess: ServeSubprocess, raw_connect: RawConnect, pg_url: str
) -> None:
    a, b = brokers(serve_subprocess, pg_url, 2)
    async with raw_connect(a.url) as admin, raw_connect(b.url) as worker:
        await admin.request("pause", queue="p")
        await admin.request("enqueue", queue="p", payload=1)
        claim_id = await worker.send("claim", queues=["p"], wait=20)
        await anyio.sleep(0.5)  # b heard of the pause: its claim stays parked
        assert claim_id not in worker.unclaimed
        await admin.request("resume", queue="p")
        claimed = await worker.reply_to(claim_id)
        assert len(claimed["tasks"]) == 1
        # max_leased set on a holds on b: one lease at a time across both brokers.
        await admin.request("set_queue_limits", queue="m", max_leased=1)
        for i in range(3):
            await admin.request("enqueue", queue="m", payload=i)
        held = (await admin.request("claim", queues=["m"], max=5))["tasks"]
        assert len(held) == 1
        assert (await worker.request("claim", queues=["m"], max=5))["tasks"] == []


async def test_sigkill_of_the_sweeping_broker_under_load_loses_nothing(
    serve_subprocess: ServeSubprocess, raw_connect: RawConnect, pg_url: str
) -> None:
    """Producers on a and b, workers on b and c, a worker on a that holds leases it never
    settles. a (the sweeper) is SIGKILLed mid-load: every acknowledged enqueue is there and
    ends succeeded, no task is acked twice, and a survivor takes the sweeps over (the dead
    worker's leases expire and are handed out again)."""
    a, b, c = brokers(serve_subprocess, pg_url, 3)
    acknowledged: set[int] = set()
    acked: dict[int, int] = {}
    stranded: set[int] = set()
    killed = anyio.Event()

    async def produce(broker: BrokerProcess, count: int) -> None:
        try:
            async with raw_connect(broker.url, within=60) as conn:
                for i in range(count):
                    reply = await conn.request("enqueue", queue="load", payload=i)
                    if reply.get("ok"):
                        acknowledged.add(reply["task_id"])
        except (OSError, anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            assert broker is a and killed.is_set()  # only the killed broker's producer stops

    async def strand(broker: BrokerProcess) -> None:
        async with raw_connect(broker.url, within=60) as conn:
            while not stranded:
                reply = await conn.request("claim", queues=["load"], max=5, wait=5, lease=1.0)
                stranded.update(t["task_id"] for t in reply["tasks"])
            await killed.wait()

    async def work(broker: BrokerProcess, done: anyio.Event) -> None:
        async with raw_connect(broker.url, within=60) as conn:
            while not done.is_set():
                reply = await conn.request("claim", queues=["load"], max=10, wait=0.2, lease=5)
                for task in reply["tasks"]:
                    settled = await conn.request(
                        "ack", task_id=task["task_id"], lease_token=task["lease_token"]
                    )
                    if settled.get("ok"):
                        acked[task["task_id"]] = acked.get(task["task_id"], 0) + 1

    async def kill_a() -> None:
        while len(acknowledged) < 20 or not stranded:  # noqa: ASYNC110 - load is the signal
            await anyio.sleep(0.01)
        a.kill()
        killed.set()

    done = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(strand, a)
        tg.start_soon(work, b, done)
        tg.start_soon(work, c, done)
        async with anyio.create_task_group() as producers:
            producers.start_soon(produce, a, 2_000)
            producers.start_soon(produce, b, 100)
            producers.start_soon(kill_a)
        with anyio.fail_after(120):
            while not acknowledged <= set(acked):  # noqa: ASYNC110 - the work is the signal
                await anyio.sleep(0.05)
        done.set()
    assert killed.is_set() and stranded
    assert all(n == 1 for n in acked.values()), "a task was acked twice"
    assert stranded <= set(acked), "the killed broker's leases were not handed out again"
    survivors = [b.log_text(), c.log_text()]
    assert any(SWEEPING in log for log in survivors), "no survivor took the sweeps over"
    assert re.search(r"Traceback", survivors[0] + survivors[1]) is None
    await check_stored(raw_connect, b.url, acknowledged, acked, stranded)


async def check_stored(
    raw_connect: RawConnect,
    url: str,
    acknowledged: set[int],
    acked: dict[int, int],
    stranded: set[int],
) -> None:
    """What the database holds after the kill: every acknowledged task succeeded, once; the
    stranded ones on their second attempt."""
    async with raw_connect(url) as conn:
        stats = (await conn.request("stats"))["queues"]["load"]
        assert stats["succeeded"] == len(acked) >= len(acknowledged)
        assert stats["leased"] == 0
        for task_id in stranded:
            task = (await conn.request("get", task_id=task_id))["task"]
            assert task["attempts"] == 2 and task["state"] == "succeeded"


async def test_a_rate_limit_holds_across_brokers(
    serve_subprocess: ServeSubprocess, raw_connect: RawConnect, pg_url: str
) -> None:
    """rate=20/s (burst 2) and 100 tasks claimed as fast as two brokers will hand them out.

    Each broker alone would let 20/s out of its own bucket (40/s together); the bucket in the
    queue's row lets 20/s out across both. Checked on the moments the leases began (each
    lease's expiry less its length, the brokers' clocks), not on how long the test took:
    in every stretch of those moments at most burst + rate x its length tasks began, plus
    one for the clocks' slack. A slow machine only spreads the moments further apart."""
    a, b = brokers(serve_subprocess, pg_url, 2)
    rate, burst, lease, total = 20.0, 2, 120.0, 100
    began: list[float] = []
    by_broker: dict[str, int] = {}
    async with raw_connect(a.url) as on_a, raw_connect(b.url) as on_b:
        await on_a.request("set_queue_limits", queue="rated", rate=rate, burst=burst)
        tasks = [{"queue": "rated", "payload": i} for i in range(total)]
        assert (await on_a.request("enqueue_many", tasks=tasks))["ok"]
        with anyio.fail_after(20):  # b has heard of the limit (notified, or its next sweep)
            while (await on_b.request("queue_info", queue="rated"))["limits"]["rate"] != rate:  # noqa: ASYNC110 - b's answer is the signal
                await anyio.sleep(0.02)

        async def claim(conn: RawConnection, name: str) -> None:
            while len(began) < total:
                reply = await conn.request("claim", queues=["rated"], max=10, wait=1, lease=lease)
                for task in reply["tasks"]:
                    began.append(task["lease_expires_at"] - lease)
                    by_broker[name] = by_broker.get(name, 0) + 1

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                tg.start_soon(claim, on_a, "a")
                tg.start_soon(claim, on_b, "b")
        info = await on_b.request("queue_info", queue="rated")
    assert len(began) == total
    assert by_broker.get("a", 0) > 0 and by_broker.get("b", 0) > 0, by_broker
    began.sort()
    over = [
        (j - i + 1, round(began[j] - began[i], 3))
        for i in range(total)
        for j in range(i, total)
        if j - i + 1 > burst + rate * (began[j] - began[i]) + 1
    ]
    assert not over, f"(tasks, seconds) handed out faster than the rate: {over[:5]}"
    assert info["limits"]["rate"] == rate and 0 <= info["tokens"] <= burst


async def test_the_sweeping_broker_keeps_the_statistics_of_tasks_fresh(
    serve_subprocess: ServeSubprocess, raw_connect: RawConnect, pg_url: str
) -> None:
    """Without statistics the partial indexes look tiny and a claim by ids reads every ready
    task; the sweeping broker analyzes tasks once enough rows changed (autovacuum may be
    off, as on this machine's server)."""
    import psycopg

    (a,) = brokers(serve_subprocess, pg_url, 1)
    async with raw_connect(a.url) as conn:
        for _ in range(3):
            tasks = [{"queue": "stats", "payload": i} for i in range(1000)]
            assert (await conn.request("enqueue_many", tasks=tasks))["ok"]
    wait_for_log(a, "analyzed tasks", within=60.0)
    with psycopg.connect(pg_url) as check:
        row = check.execute(
            "SELECT last_analyze, reltuples FROM pg_stat_user_tables s"
            " JOIN pg_class c ON c.oid = s.relid WHERE s.relname = 'tasks'"
        ).fetchone()
    assert row is not None and row[0] is not None and row[1] >= 3000


async def test_a_schedule_fires_each_slot_once_across_brokers_and_a_sweeper_kill(
    serve_subprocess: ServeSubprocess, raw_connect: RawConnect, pg_url: str
) -> None:
    """Two brokers, one schedule every second, its tasks acked as they come (so a slot fired
    twice would show as a second task: the unique key only refuses a live one). The sweeping
    broker is SIGKILLed; the other takes the sweeps over and goes on firing: no slot ever
    has two tasks, and slots fired after the takeover."""
    import psycopg

    a, b = brokers(serve_subprocess, pg_url, 2)
    stop = anyio.Event()

    async def work() -> None:
        async with raw_connect(b.url, within=60) as worker:
            while not stop.is_set():
                reply = await worker.request("claim", queues=["ticks"], max=8, wait=0.5)
                for task in reply.get("tasks", []):
                    await worker.request(
                        "ack", task_id=task["task_id"], lease_token=task["lease_token"]
                    )

    def slots() -> list[str]:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            rows = conn.execute("SELECT unique_key FROM tasks WHERE queue = 'ticks'").fetchall()
        return [key for (key,) in rows]

    async with anyio.create_task_group() as tg:
        tg.start_soon(work)
        async with raw_connect(b.url) as admin:
            spec = {"name": "tick", "queue": "ticks", "every": 1, "missed": "latest"}
            assert (await admin.request("schedule_upsert", **spec))["ok"]
        with anyio.fail_after(30):
            while len(slots()) < 3:  # noqa: ASYNC110 - polling the database
                await anyio.sleep(0.1)
        a.kill()
        wait_for_log(b, SWEEPING, within=30)
        before_takeover = len(slots())
        with anyio.fail_after(30):
            while len(slots()) < before_takeover + 3:  # noqa: ASYNC110 - polling the database
                await anyio.sleep(0.1)
        stop.set()
    fired = slots()
    assert len(fired) == len(set(fired)), sorted(fired)
    assert all(key.startswith("schedule:tick:") for key in fired)
