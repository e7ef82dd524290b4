"""The broker's time (issue 11, item 14): a clock seam, and leases measured with the monotonic
clock while the broker runs. Driven by a FakeClock: no sleeps; the sweeper is run by hand."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from durable_tq import errors
from durable_tq.config import Settings
from durable_tq.core.broker import Broker, Session
from durable_tq.core.clock import BrokerTime, FakeClock
from durable_tq.core.sweeper import Sweeper

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

MakeSettings = Callable[..., Settings]


async def _leased(broker: Broker, lease: float) -> tuple[int, str]:
    await broker.enqueue("q", "1")
    [task] = (await broker.claim(["q"], lease=lease, session=Session()))["tasks"]
    return task["task_id"], task["lease_token"]


async def _state(broker: Broker, task_id: int) -> str:
    return str((await broker.get(task_id))["task"]["state"])


def test_broker_time_ignores_wall_steps_and_follows_the_monotonic_clock() -> None:
    clock = FakeClock(wall=1000.0)
    broker_time = BrokerTime(clock)
    clock.step_wall(-3600)
    assert broker_time.now() == 1000.0
    clock.advance(2.5)
    assert broker_time.now() == 1002.5
    assert broker_time.wall_drift() == -3600
    broker_time.anchor()  # a restart reads the wall clock again
    assert broker_time.now() == clock.wall()


async def test_a_forward_wall_step_does_not_shorten_a_lease(make_settings: MakeSettings) -> None:
    clock = FakeClock()
    async with Broker(make_settings(), clock=clock) as broker:
        sweeper = Sweeper(broker)
        task_id, token = await _leased(broker, lease=300)
        clock.step_wall(301)  # before: time.time() said the lease had run out
        clock.advance(299)
        await sweeper.sweep()
        assert await _state(broker, task_id) == "leased"
        await broker.ack(task_id, token)
        assert await _state(broker, task_id) == "succeeded"


async def test_a_backward_wall_step_does_not_stretch_a_lease(make_settings: MakeSettings) -> None:
    clock = FakeClock()
    async with Broker(make_settings(), clock=clock) as broker:
        sweeper = Sweeper(broker)
        task_id, token = await _leased(broker, lease=1)
        clock.step_wall(-3600)  # before: the lease then lasted about an hour
        clock.advance(0.5)
        await sweeper.sweep()
        assert await _state(broker, task_id) == "leased"
        clock.advance(0.6)
        await sweeper.sweep()
        assert await _state(broker, task_id) == "queued"
        with pytest.raises(errors.LeaseLost):
            await broker.ack(task_id, token)


async def test_lease_expiry_is_checked_against_the_clock_at_settle(
    make_settings: MakeSettings,
) -> None:
    clock = FakeClock()
    async with Broker(make_settings(), clock=clock) as broker:
        task_id, token = await _leased(broker, lease=10)
        clock.advance(10.001)  # expired, even before a sweep
        with pytest.raises(errors.LeaseLost):
            await broker.ack(task_id, token)


async def test_retry_backoff_waits_for_the_clock(make_settings: MakeSettings) -> None:
    clock = FakeClock()
    settings = make_settings(backoff_base=60, backoff_cap=60, backoff_jitter=0)
    async with Broker(settings, clock=clock) as broker:
        sweeper = Sweeper(broker)
        task_id, token = await _leased(broker, lease=30)
        reply = await broker.fail(task_id, token, "boom")
        assert reply == {"state": "scheduled", "run_at": broker.now() + 60}
        clock.advance(59.9)
        await sweeper.sweep()
        assert await _state(broker, task_id) == "scheduled"
        assert (await broker.claim(["q"], session=Session()))["tasks"] == []
        clock.advance(0.2)
        await sweeper.sweep()
        [task] = (await broker.claim(["q"], session=Session()))["tasks"]
        assert (task["task_id"], task["attempt"]) == (task_id, 2)


async def test_delayed_tasks_and_retention_follow_the_clock(make_settings: MakeSettings) -> None:
    clock = FakeClock()
    async with Broker(make_settings(retention=3600), clock=clock) as broker:
        sweeper = Sweeper(broker)
        delayed = (await broker.enqueue("later", "1", delay=120))["task_id"]
        task_id, token = await _leased(broker, lease=30)
        await broker.ack(task_id, token)
        clock.step_wall(7200)  # a wall step must not make either happen early
        await sweeper.sweep()
        assert await _state(broker, delayed) == "scheduled"
        assert await _state(broker, task_id) == "succeeded"
        clock.advance(121)
        await sweeper.sweep()
        assert await _state(broker, delayed) == "queued"
        clock.advance(3600)
        await sweeper.sweep()
        with pytest.raises(errors.NotFound):
            await broker.get(task_id)


async def test_a_dead_worker_is_judged_by_the_clock(make_settings: MakeSettings) -> None:
    from durable_tq.wire.schema import WorkerSpec

    clock = FakeClock()
    async with Broker(make_settings(worker_timeout=30), clock=clock) as broker:
        session = Session()
        await broker.hello(1, worker=WorkerSpec(id="w1", concurrency=1), session=session)
        clock.step_wall(-1000)
        clock.advance(29)
        assert (await broker.workers())["workers"][0]["alive"]
        clock.advance(2)
        assert not (await broker.workers())["workers"][0]["alive"]


async def test_across_a_restart_the_wall_clock_is_the_reference(
    make_settings: MakeSettings,
) -> None:
    """Stored deadlines are Unix seconds: a broker started after a wall step judges them by
    the wall clock it reads at start-up (documented in docs/guarantees.md)."""
    clock = FakeClock()
    settings = make_settings()
    async with Broker(settings, clock=clock) as broker:
        task_id, _ = await _leased(broker, lease=300)
    clock.step_wall(301)  # while the broker was down
    async with Broker(settings, clock=clock) as broker:
        await Sweeper(broker).sweep()
        assert await _state(broker, task_id) == "queued"
