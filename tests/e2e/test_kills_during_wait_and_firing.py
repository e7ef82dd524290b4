"""``wait`` and schedule firings across SIGKILLs of a real broker process (issues 14 and 15).

* A client's ``wait`` is on the wire when the broker is SIGKILLed (twice); the client
  reconnects and waits again, and returns the task once a worker has finished it.
* The broker is SIGKILLed again and again while it fires a burst of schedules (hundreds of
  them share each slot, so a firing transaction lasts a while); the kills are aimed into the
  firing, and the broker's own log shows that some landed inside it (it logged firings that
  the database does not hold as its own). Every slot still fired at most once, the
  interrupted slot fired after the restart (when the restart came within the slot), and no
  slot was lost while the broker was seen serving (durable_tq.tools.torture.flows).
"""

from __future__ import annotations

import logging
import random
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import anyio
import pytest

from durable_tq import errors
from durable_tq.client import AsyncClient, Settlement, TaskInfo
from durable_tq.tools.torture import Prober, flows
from tests.conftest import BrokerProcess
from tests.e2e.test_worker import LIMIT, make_worker, running, until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

QUEUE = "burst"
EVERY = 3.0
#: Schedules sharing each slot: one firing transaction inserts and advances this many (fewer
#: than scheduler.FIRE_BATCH: one transaction).
SCHEDULES = 400
#: Kills land at a random moment this long after a slot starts (a firing of SCHEDULES
#: schedules logs its lines from a few ms to a few tens of ms after it, then commits).
KILL_WITHIN = 0.04
#: Kills at most before giving up on landing one inside a firing.
MAX_KILLS = 12


def _start(broker: BrokerProcess) -> None:
    broker.start()


# --- wait across a broker kill -------------------------------------------------------------------


@pytest.mark.timeout(180)
async def test_wait_rides_out_broker_kills_and_returns_the_result(
    serve_subprocess: Callable[..., BrokerProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="durable_tq.client")
    broker = await anyio.to_thread.run_sync(serve_subprocess)
    got: list[TaskInfo] = []
    async with AsyncClient.from_url(broker.url, reconnect_timeout=5.0) as client:
        task_id = (await client.enqueue("waited", {"n": 7})).task_id

        async def wait_for_it() -> None:
            got.append(await client.wait(task_id, timeout=LIMIT * 4))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_it)
            for _ in range(2):
                await _wait_is_held_by_the_broker(client, task_id)
                before = _waits_again(caplog)
                await anyio.to_thread.run_sync(broker.kill)
                # The wait broke off with the connection and is being sent again.
                await until(lambda before=before: _waits_again(caplog) > before)
                assert got == []
                await anyio.to_thread.run_sync(lambda: _start(broker))  # same file and port
            await _wait_is_held_by_the_broker(client, task_id)
            worker = make_worker(broker.url)

            @worker.task("waited")
            async def handle(payload: dict[str, int]) -> int:
                return payload["n"] * 6

            async with running(worker):
                with anyio.fail_after(LIMIT):
                    while not got:  # noqa: ASYNC110 (the waiter fills it)
                        await anyio.sleep(0.05)
    (task,) = got
    assert task.task_id == task_id and task.state == "succeeded" and task.result == 42
    assert _waits_again(caplog) >= 2


async def _wait_is_held_by_the_broker(client: AsyncClient, task_id: int) -> None:
    """Once every task here is blocked, the waiter has sent its ``wait`` and waits for the
    reply; a ``get`` answered on the same connection after it shows the broker read it."""
    await anyio.wait_all_tasks_blocked()
    with anyio.fail_after(LIMIT):
        while True:
            try:
                task = await client.get(task_id)
                break
            except errors.ConnectionLost:  # still reconnecting
                await anyio.sleep(0.1)
    assert task.state == "queued"
    await anyio.wait_all_tasks_blocked()


def _waits_again(caplog: pytest.LogCaptureFixture) -> int:
    return sum("waiting again" in r.getMessage() for r in caplog.records)


# --- kills during a burst of schedule firings ----------------------------------------------------

_FIRED = re.compile(
    r"^(?P<at>\S+ \S+) INFO durable_tq.core.scheduler: schedule (?P<name>\S+) fired for slot "
    r"(?P<slot>[\d.]+)$"
)


@dataclass
class _Instance:
    """One broker process: its life, and the firings it logged (inside its transactions)."""

    life: flows.BrokerLife
    logged: dict[tuple[str, float], float] = field(default_factory=dict)


def _logged_firings(log_text: str) -> list[dict[tuple[str, float], float]]:
    """Per start of the broker (its log has a ``--- start #n`` line each time): every firing
    it logged, (schedule, slot) -> when it logged it."""
    sections: list[dict[tuple[str, float], float]] = []
    for line in log_text.splitlines():
        if line.startswith("--- start #"):
            sections.append({})
            continue
        match = _FIRED.match(line)
        if match and sections:
            at = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            sections[-1][(match["name"], float(match["slot"]))] = at
    return sections


def _stored_firings(db_path: Path) -> dict[tuple[str, float], list[float]]:
    conn = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT unique_key, created_at FROM tasks WHERE queue = ?", (QUEUE,)
        ).fetchall()
    finally:
        conn.close()
    stored: dict[tuple[str, float], list[float]] = {}
    for key, created_at in rows:
        _, name, slot = key.rsplit(":", 2)
        stored.setdefault((name, float(slot)), []).append(created_at)
    return stored


def _rolled_back(
    killed: _Instance, restarted: _Instance, stored: dict[tuple[str, float], list[float]]
) -> list[tuple[str, float]]:
    """Firings the killed broker logged but did not commit: no task for them, or only one
    the restarted broker created."""
    return [
        key
        for key in killed.logged
        if all(at >= restarted.life.started for at in stored.get(key, []))
    ]


async def _consume(url: str, done: anyio.Event) -> None:
    """Ack every fired task, riding out the kills: a slot fired twice would then show as a
    second task instead of being turned away by the live task's unique key."""
    async with AsyncClient.from_url(url, reconnect_timeout=5.0) as client:
        while not done.is_set():
            try:
                tasks = await client.claim([QUEUE], max=500, wait=0.5)
                if tasks:
                    await client.settle([Settlement.ack(t.task_id, t.lease_token) for t in tasks])
            except errors.DurableTQError:
                await anyio.sleep(0.1)


@dataclass
class _Interrupted:
    """A slot whose firing a kill cut off, and the broker that came back after it."""

    slot: float
    restarted: _Instance
    #: When the restarted broker first fired (its clock), once it has.
    first_firing: float | None = None

    @property
    def back_within_the_slot(self) -> bool:
        return self.first_firing is not None and self.first_firing < self.slot + EVERY


async def _first_firing(db_path: Path, since: float) -> float:
    """When the broker started at ``since`` first fired (it fires at start-up: it missed a
    slot)."""
    with anyio.fail_after(LIMIT):
        while True:
            created = [at for ats in _stored_firings(db_path).values() for at in ats]
            mine = [at for at in created if at >= since]
            if mine:
                return min(mine)
            await anyio.sleep(0.05)


@pytest.mark.timeout(240)
async def test_kills_during_schedule_firings_fire_each_slot_once(
    serve_subprocess: Callable[..., BrokerProcess],
) -> None:
    rng = random.Random()
    broker = await anyio.to_thread.run_sync(
        lambda: serve_subprocess(env={"DURABLE_TQ_SWEEP_INTERVAL": "0.1"})
    )
    instances = [_Instance(flows.BrokerLife(time.time(), time.time()))]
    async with AsyncClient.from_url(broker.url) as client, anyio.create_task_group() as tg:
        for n in range(SCHEDULES):
            tg.start_soon(lambda n=n: client.schedule_upsert(f"b{n:03d}", queue=QUEUE, every=EVERY))
    prober = Prober(broker.port)
    prober.start()
    done = anyio.Event()
    interrupted: list[_Interrupted] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_consume, broker.url, done)
            while len(instances) <= MAX_KILLS and not (
                any(i.back_within_the_slot for i in interrupted) and len(instances) > 3
            ):
                # A random moment of the firing at the next slot (it lasts a few tens of ms).
                slot = (time.time() // EVERY + 1) * EVERY
                await anyio.sleep(slot + rng.uniform(0.0, KILL_WITHIN) - time.time())
                instances[-1].life.ended, instances[-1].life.how = time.time(), "killed"
                await anyio.to_thread.run_sync(broker.kill)
                restarted = _Instance(flows.BrokerLife(time.time()))
                instances.append(restarted)
                await anyio.to_thread.run_sync(lambda: _start(broker))
                restarted.life.ready = time.time()
                first = await _first_firing(broker.db_path, restarted.life.started)
                sections = _logged_firings(broker.log_text())
                for instance, logged in zip(instances, sections, strict=True):
                    instance.logged = logged
                cut = _rolled_back(instances[-2], restarted, _stored_firings(broker.db_path))
                if cut:
                    interrupted.append(_Interrupted(max(s for _, s in cut), restarted, first))
            await anyio.sleep(2 * EVERY)  # two more slots served after the last restart
            done.set()
        prober.stop()
        instances[-1].life.ended, instances[-1].life.how = time.time(), "stopped"
        assert await anyio.to_thread.run_sync(broker.terminate) == 0
    finally:
        prober.stop()

    kills = len(instances) - 1
    came_back = [i for i in interrupted if i.back_within_the_slot]
    assert came_back, (
        f"{kills} kills, {len(interrupted)} inside a firing, none restarted within its slot"
    )
    stored = _stored_firings(broker.db_path)
    # A firing the kill cut off left nothing behind, and a broker back within that slot
    # (missed = latest: it is still the latest due) fired it for every schedule, once.
    for cut in came_back:
        for n in range(SCHEDULES):
            (created_at,) = stored[(f"b{n:03d}", cut.slot)]
            assert created_at >= cut.restarted.life.started

    schedules, firings = flows.read_schedules(broker.db_path, queue=QUEUE)
    checks, counts = flows.check_schedules(
        schedules, firings, [i.life for i in instances], prober.probes
    )
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.passed]
    assert not failed, failed
    assert len(schedules) == SCHEDULES
    print(
        f"{kills} kills, {len(interrupted)} inside a firing ({len(came_back)} restarted "
        f"within the slot and fired it), {counts['schedule firings']} firings, "
        f"{counts['schedule slots owed while serving']} slots owed, every slot at most once"
    )
