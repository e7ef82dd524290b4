"""Durable schedules inside the broker: the ``schedule_*`` ops and firing due schedules.

The slot arithmetic is :mod:`durable_tq.core.schedules` (pure); this module stores schedules in the
``schedules`` table and fires them. Firing a schedule enqueues its task and moves its
``next_run_at`` in ONE transaction, and the task carries the unique key
``schedule:NAME:SLOT``: a slot is fired once, however often the firing is retried, and a broker
killed in the middle either committed both or neither. A broker that was down fires each
schedule at most once when it comes back (``schedules.fire`` picks the slot, or none).
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from msgspec import Raw

from durable_tq import errors
from durable_tq.backends.sqlite import queries
from durable_tq.backends.sqlite.store import Batch
from durable_tq.core import schedules
from durable_tq.wire.schema import TaskState

if TYPE_CHECKING:
    from durable_tq.core.broker import Broker, NewTask

log = logging.getLogger("durable_tq.core.scheduler")

Result = dict[str, Any]

#: Schedules fired per transaction at most (the rest fire in the next one, at once).
FIRE_BATCH = 500


@dataclass(frozen=True)
class ScheduleSpec:
    """What a schedule is, as given to ``schedule_upsert``; equal specs change nothing."""

    name: str
    queue: str
    cron: str | None
    tz: str | None
    every: float | None
    payload: str
    priority: int
    missed: str

    def timing(self) -> schedules.Timing:
        return schedules.Timing(cron=self.cron, tz=self.tz, every=self.every)


def schedule_from_row(row: sqlite3.Row | tuple[Any, ...]) -> Result:
    """The wire ``schedule`` object from a row of ``queries.SCHEDULE_COLUMNS``."""
    return {
        "name": row[0],
        "queue": row[1],
        "cron": row[2],
        "tz": row[3],
        "every": row[4],
        "payload": Raw(row[6]),
        "priority": row[7],
        "missed": row[8],
        "paused": bool(row[9]),
        "next_run_at": row[10],
        "last_slot": row[11],
        "created_at": row[12],
        "updated_at": row[13],
    }


def _spec_of_row(row: sqlite3.Row | tuple[Any, ...]) -> ScheduleSpec:
    return ScheduleSpec(row[0], row[1], row[2], row[3], row[4], row[6], row[7], row[8])


def slot_key(name: str, slot: float) -> str:
    """The unique key of the task fired for ``slot``: the same slot always gives the same key."""
    return f"schedule:{name}:{slot:.3f}"


def upsert(
    conn: sqlite3.Connection,
    spec: ScheduleSpec,
    timing: schedules.Timing,
    now: float,
    sql: Any = queries,
) -> tuple[Result, str]:
    """Create or update a schedule: (the schedule, "created" | "updated" | "unchanged")."""
    row = conn.execute(sql.GET_SCHEDULE, (spec.name,)).fetchone()
    if row is not None and _spec_of_row(row) == spec:
        return schedule_from_row(row), "unchanged"
    params = {
        "name": spec.name,
        "queue": spec.queue,
        "cron": spec.cron,
        "tz": spec.tz,
        "every": spec.every,
        "anchor": timing.anchor,
        "payload": spec.payload,
        "priority": spec.priority,
        "missed": spec.missed,
        "next_run_at": timing.next_after(now),
        "now": now,
    }
    conn.execute(sql.UPSERT_SCHEDULE, params)
    stored = conn.execute(sql.GET_SCHEDULE, (spec.name,)).fetchone()
    return schedule_from_row(stored), "created" if row is None else "updated"


@dataclass
class Fired:
    """What one firing transaction did."""

    tasks: list[tuple[NewTask, str]] = field(default_factory=list)
    fired: int = 0
    skipped: int = 0
    more: bool = False
    next_due: float = math.inf


def fire_due(broker: Broker, conn: sqlite3.Connection, batch: Batch, now: float) -> Fired:
    """In the writer's transaction: fire every due schedule once and move it to its next slot."""
    from durable_tq.core.broker import NewTask  # the broker imports this module

    outcome = Fired()
    rows = conn.execute(broker.sql.DUE_SCHEDULES, (now, FIRE_BATCH)).fetchall()
    for row in rows:
        spec, due_at = _spec_of_row(row), row[10]
        timing = schedules.Timing(cron=spec.cron, tz=spec.tz, every=spec.every, anchor=row[5])
        firing = schedules.fire(timing, due_at, now, spec.missed)  # type: ignore[arg-type]
        if firing is None:
            continue
        slot = firing.slot
        if slot is not None:
            task = NewTask(
                queue=spec.queue,
                state=TaskState.QUEUED,
                payload=spec.payload,
                priority=spec.priority,
                max_attempts=broker.settings.max_attempts,
                lease_seconds=broker.settings.default_lease,
                run_at=now,
                unique_key=slot_key(spec.name, slot),
            )
            try:
                _, created, state = broker._insert(conn, batch, task, now)
            except errors.Busy as exc:  # refused before it wrote anything
                log.warning("schedule %s: slot %.3f not fired: %s", spec.name, slot, exc.message)
                slot = None
            else:
                if created:
                    outcome.tasks.append((task, state))
                    outcome.fired += 1
                    log.info("schedule %s fired for slot %.3f", spec.name, slot)
        if slot is None:
            outcome.skipped += 1
        conn.execute(
            broker.sql.ADVANCE_SCHEDULE,
            {"next_run_at": firing.next, "slot": slot, "now": now, "name": spec.name,
             "due_at": due_at},
        )  # fmt: skip
    outcome.more = len(rows) >= FIRE_BATCH
    next_due = conn.execute(broker.sql.NEXT_SCHEDULE).fetchone()[0]
    outcome.next_due = math.inf if next_due is None else next_due
    return outcome


async def fire_schedules(broker: Broker, now: float | None = None) -> Fired:
    """Fire what is due at ``now`` (default: the clock), then wake the sweeper for the next."""
    moment = broker.now() if now is None else now
    fired = await broker.store.write(
        lambda conn, batch: fire_due(broker, conn, batch, moment), heavy=True
    )
    broker._after_insert(fired.tasks)
    broker._schedule_wakeup(moment if fired.more else fired.next_due)
    return fired


# --- the ops ------------------------------------------------------------------------------------


async def schedule_upsert(broker: Broker, spec: ScheduleSpec) -> Result:
    timing = spec.timing()  # checks cron, tz and every before anything is written
    now = broker.now()
    schedule, change = await broker.store.write(
        lambda conn, batch: upsert(conn, spec, timing, now, broker.sql), atomic=True
    )
    if change != "unchanged":
        log.info("schedule %s %s; next run at %.3f", spec.name, change, schedule["next_run_at"])
        broker._schedule_wakeup(schedule["next_run_at"])
    return {"schedule": schedule, "change": change}


async def schedule_list(broker: Broker) -> Result:
    rows = await broker.store.read(lambda conn: conn.execute(broker.sql.LIST_SCHEDULES).fetchall())
    return {"schedules": [schedule_from_row(r) for r in rows]}


async def schedule_remove(broker: Broker, name: str) -> Result:
    def remove(conn: sqlite3.Connection, batch: Batch) -> None:
        if conn.execute(broker.sql.DELETE_SCHEDULE, (name,)).rowcount == 0:
            raise errors.NotFound(f"schedule {name!r} does not exist")

    await broker.store.write(remove, atomic=True)
    log.info("schedule %s removed", name)
    return {}


async def schedule_set_paused(broker: Broker, name: str, paused: bool) -> Result:
    now = broker.now()

    def set_paused(conn: sqlite3.Connection, batch: Batch) -> Result:
        row = conn.execute(broker.sql.GET_SCHEDULE, (name,)).fetchone()
        if row is None:
            raise errors.NotFound(f"schedule {name!r} does not exist")
        next_run_at = None
        if not paused and row[9]:  # resumed: from the first slot after now, no catching up
            spec = _spec_of_row(row)
            timing = schedules.Timing(cron=spec.cron, tz=spec.tz, every=spec.every, anchor=row[5])
            next_run_at = timing.next_after(now)
        conn.execute(
            broker.sql.SET_SCHEDULE_PAUSED,
            {"paused": int(paused), "next_run_at": next_run_at, "now": now, "name": name},
        )
        return schedule_from_row(conn.execute(broker.sql.GET_SCHEDULE, (name,)).fetchone())

    schedule = await broker.store.write(set_paused, atomic=True)
    if not paused:
        broker._schedule_wakeup(schedule["next_run_at"])
    log.info("schedule %s %s", name, "paused" if paused else "resumed")
    return {"schedule": schedule}


def spec_from_args(
    name: str,
    queue: str,
    cron: str | None,
    tz: str | None,
    every: float | None,
    payload: Raw | str,
    priority: int,
    missed: str,
) -> ScheduleSpec:
    if missed not in schedules.MISSED_POLICIES:
        raise errors.BadRequest(f"missed: {missed!r} is not one of latest, none")
    text = payload if isinstance(payload, str) else bytes(payload).decode()
    return ScheduleSpec(name, queue, cron, tz, every, text, priority, missed)


def names(rows: Sequence[Result]) -> list[str]:
    return [str(r["name"]) for r in rows]
