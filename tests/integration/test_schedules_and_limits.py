"""Schedules fired by the broker (with an injected ``now``) and per-queue limits, on real SQLite."""

from __future__ import annotations

import time

import anyio
import pytest

from durable_tq import errors
from durable_tq.core import scheduler
from durable_tq.core.broker import Broker, Session

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


async def schedule_tasks(broker: Broker, name: str) -> list[tuple[str, str]]:
    sql = f"SELECT unique_key, payload FROM tasks WHERE unique_key LIKE {broker.sql.PARAM}"
    rows = await broker.store.read(
        lambda conn: conn.execute(sql + " ORDER BY id", (f"schedule:{name}:%",)).fetchall()
    )
    return [tuple(row) for row in rows]


# --- schedules ------------------------------------------------------------------------------------


async def test_upsert_is_idempotent_and_a_changed_spec_is_recomputed(broker: Broker) -> None:
    first = await broker.schedule_upsert("hourly", "q", every=3600, payload='{"a":1}')
    assert first["change"] == "created"
    next_run = first["schedule"]["next_run_at"]
    assert next_run % 3600 == 0 and next_run > time.time()
    again = await broker.schedule_upsert("hourly", "q", every=3600, payload='{"a":1}')
    assert again["change"] == "unchanged"
    assert again["schedule"]["next_run_at"] == next_run
    changed = await broker.schedule_upsert("hourly", "q", cron="*/5 * * * *", payload='{"a":1}')
    assert changed["change"] == "updated"
    assert changed["schedule"]["next_run_at"] % 300 == 0
    listed = (await broker.schedule_list())["schedules"]
    assert [s["name"] for s in listed] == ["hourly"] and listed[0]["cron"] == "*/5 * * * *"


async def test_two_registrations_of_the_same_schedule_do_not_double_it(broker: Broker) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(lambda: broker.schedule_upsert("twice", "q", every=60))
    (schedule,) = (await broker.schedule_list())["schedules"]
    fired = await scheduler.fire_schedules(broker, now=schedule["next_run_at"])
    assert fired.fired == 1
    assert len(await schedule_tasks(broker, "twice")) == 1


async def test_slot_boundaries_fire_once(broker: Broker) -> None:
    schedule = (await broker.schedule_upsert("minute", "q", every=60, payload="7"))["schedule"]
    slot = schedule["next_run_at"]
    assert (await scheduler.fire_schedules(broker, now=slot - 0.001)).fired == 0
    assert (await scheduler.fire_schedules(broker, now=slot)).fired == 1
    assert (await scheduler.fire_schedules(broker, now=slot + 0.5)).fired == 0  # same slot
    (after,) = (await broker.schedule_list())["schedules"]
    assert after["next_run_at"] == slot + 60 and after["last_slot"] == slot
    assert (await scheduler.fire_schedules(broker, now=slot + 60)).fired == 1
    keys = [key for key, _ in await schedule_tasks(broker, "minute")]
    assert keys == [scheduler.slot_key("minute", slot), scheduler.slot_key("minute", slot + 60)]
    assert all(payload == "7" for _, payload in await schedule_tasks(broker, "minute"))


@pytest.mark.parametrize(("missed", "expected"), [("latest", 1), ("none", 0)])
async def test_an_hour_of_downtime_fires_at_most_once(
    broker: Broker, missed: str, expected: int
) -> None:
    slot = (await broker.schedule_upsert("m", "q", every=300, missed=missed))["schedule"][
        "next_run_at"
    ]
    later = slot + 3600 + 150  # 13 slots passed while "down", the last 150 s ago
    fired = await scheduler.fire_schedules(broker, now=later)
    assert fired.fired == expected
    tasks = await schedule_tasks(broker, "m")
    assert len(tasks) == expected
    if expected:
        assert tasks[0][0] == scheduler.slot_key("m", slot + 3600)  # the latest missed slot
    (after,) = (await broker.schedule_list())["schedules"]
    assert after["next_run_at"] == slot + 3900
    assert (await scheduler.fire_schedules(broker, now=later + 1)).fired == 0


async def test_cron_in_a_time_zone_fires_on_its_local_slot(broker: Broker) -> None:
    schedule = (await broker.schedule_upsert("paris", "q", cron="0 9 * * *", tz="Europe/Paris"))[
        "schedule"
    ]
    slot = schedule["next_run_at"]
    from datetime import datetime
    from zoneinfo import ZoneInfo

    assert datetime.fromtimestamp(slot, ZoneInfo("Europe/Paris")).hour == 9
    assert (await scheduler.fire_schedules(broker, now=slot)).fired == 1


async def test_pause_resume_remove(broker: Broker) -> None:
    slot = (await broker.schedule_upsert("p", "q", every=60))["schedule"]["next_run_at"]
    paused = (await broker.schedule_pause("p"))["schedule"]
    assert paused["paused"] is True
    assert (await scheduler.fire_schedules(broker, now=slot + 600)).fired == 0
    resumed = (await broker.schedule_resume("p"))["schedule"]
    assert resumed["paused"] is False and resumed["next_run_at"] > time.time()
    await broker.schedule_remove("p")
    assert (await broker.schedule_list())["schedules"] == []
    with pytest.raises(errors.NotFound):
        await broker.schedule_remove("p")
    with pytest.raises(errors.NotFound):
        await broker.schedule_pause("p")


@pytest.mark.parametrize(
    "args",
    [
        {"cron": "* * *"},
        {"cron": "*/5 * * * *", "tz": "Mars/Olympus"},
        {"every": 60, "tz": "UTC"},
        {"cron": "0 0 30 2 *"},
    ],
    ids=str,
)
async def test_bad_schedules_are_refused(broker: Broker, args: dict[str, object]) -> None:
    with pytest.raises(errors.BadRequest):
        await broker.schedule_upsert("bad", "q", **args)  # type: ignore[arg-type]
    assert (await broker.schedule_list())["schedules"] == []


# --- limits ---------------------------------------------------------------------------------------


async def claim(broker: Broker, queue: str, n: int, wait: float = 0.0) -> list[dict[str, object]]:
    return (await broker.claim([queue], n, wait, session=Session(greeted=True)))["tasks"]


async def test_max_leased(broker: Broker) -> None:
    for n in range(6):
        await broker.enqueue("ml", str(n))
    info = await broker.set_queue_limits("ml", max_leased=2)
    assert info["limits"]["max_leased"] == 2
    first = await claim(broker, "ml", 10)
    assert len(first) == 2
    assert await claim(broker, "ml", 10) == []
    # A parked claim is woken when a lease ends.
    async with anyio.create_task_group() as tg:
        got: list[object] = []

        async def park() -> None:
            got.extend(await claim(broker, "ml", 5, wait=5))

        tg.start_soon(park)
        await anyio.sleep(0.1)
        started = time.monotonic()
        await broker.ack(first[0]["task_id"], first[0]["lease_token"])  # type: ignore[arg-type]
    assert len(got) == 1 and time.monotonic() - started < 0.9
    stats = await broker.stats()
    assert stats["queues"]["ml"]["leased"] == 2
    assert stats["queues"]["ml"]["limits"]["max_leased"] == 2
    await broker.set_queue_limits("ml", max_leased=0)  # removed
    assert len(await claim(broker, "ml", 10)) == 3


async def test_key_concurrency_skips_saturated_keys(broker: Broker) -> None:
    await broker.set_queue_limits("kc", key_concurrency=1)
    for n in range(5):
        await broker.enqueue("kc", str(n), priority=10, concurrency_key="hot")
    await broker.enqueue("kc", '"b"', concurrency_key="cold")
    await broker.enqueue("kc", '"free"')
    tasks = await claim(broker, "kc", 10)
    assert len(tasks) == 3  # one "hot", the "cold", the unkeyed one
    assert await claim(broker, "kc", 10) == []
    hot = tasks[0]
    await broker.ack(hot["task_id"], hot["lease_token"])  # type: ignore[arg-type]
    again = await claim(broker, "kc", 10)
    assert len(again) == 1


async def test_rate_limit_hands_out_burst_then_refills(broker: Broker) -> None:
    for n in range(10):
        await broker.enqueue("r", str(n))
    info = await broker.set_queue_limits("r", rate=10, burst=3)
    assert info["tokens"] == 3
    assert len(await claim(broker, "r", 10)) == 3
    assert await claim(broker, "r", 10) == []
    started = time.monotonic()
    tasks = await claim(broker, "r", 10, wait=2)  # parked until a token is back
    assert len(tasks) == 1
    assert 0.05 < time.monotonic() - started < 0.5


async def test_limits_survive_a_restart(settings: object) -> None:
    from durable_tq.config import Settings

    assert isinstance(settings, Settings)
    async with Broker(settings) as first:
        await first.set_queue_limits("persist", rate=5, burst=2, max_leased=3, key_concurrency=1)
    async with Broker(settings) as second:
        info = await second.queue_info("persist")
        assert info["limits"] == {"rate": 5, "burst": 2, "max_leased": 3, "key_concurrency": 1}
        assert info["tokens"] == 2  # a restart starts the bucket full


async def test_queue_info(broker: Broker) -> None:
    with pytest.raises(errors.NotFound):
        await broker.queue_info("nothing")
    await broker.enqueue("qi", "1")
    info = await broker.queue_info("qi")
    assert info["counts"]["queued"] == 1 and info["limits"]["rate"] is None
