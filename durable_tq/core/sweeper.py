"""Periodic sweeps: expired leases, due scheduled tasks, silent workers, retention.

On a store shared by several brokers (PostgreSQL) one broker at a time sweeps: the one whose
``store.lead()`` holds the sweep lock; the others only re-read the queues' settings.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio

from durable_tq import errors
from durable_tq.backends.sqlite import queries
from durable_tq.backends.sqlite.store import Batch
from durable_tq.config import Settings
from durable_tq.core import scheduler
from durable_tq.core.broker import DELETED, Broker
from durable_tq.wire.schema import TaskState

log = logging.getLogger("durable_tq.core.sweeper")

#: Finished tasks deleted per sweep at most, so one sweep never holds the writer for long.
RETENTION_BATCH = 5000
#: Workers gone and silent this long are forgotten (their rows deleted).
FORGET_WORKERS_AFTER = 7 * 86400.0


@dataclass
class SweepResult:
    ready: Counter[str] = field(default_factory=Counter)
    expired: int = 0
    #: Leases that expired on their last attempt (dead) or after a cancel (cancelled).
    dead: int = 0
    #: Leases that ran out on a task whose cancel was requested (revoked, worker gone).
    cancelled: int = 0
    due: int = 0
    deleted: int = 0
    next_due: float = math.inf


def sweep_once(
    conn: sqlite3.Connection, batch: Batch, settings: Settings, now: float, sql: Any = queries
) -> SweepResult:
    """On the DB thread, in the writer's transaction: every sweep, one statement each."""
    result = SweepResult()
    rows = conn.execute(
        sql.SWEEP_EXPIRED_LEASES,
        {"now": now, "worker_deadline": now - settings.worker_timeout},
    ).fetchall()
    moved = batch.moved
    for queue, state, task_id in rows:
        moved(queue, TaskState.LEASED, state)
        if state == TaskState.QUEUED:
            result.ready[queue] += 1
            result.expired += 1
        else:  # dead, or cancelled (its cancel had been requested)
            if state == TaskState.DEAD:
                result.dead += 1
            else:
                result.cancelled += 1
            batch.finished(task_id, state)
    for (queue,) in conn.execute(sql.SWEEP_DUE, {"now": now}):
        moved(queue, TaskState.SCHEDULED, TaskState.QUEUED)
        result.ready[queue] += 1
        result.due += 1
    deleted = conn.execute(
        sql.SWEEP_EXPIRED_RESULTS, {"now": now, "limit": RETENTION_BATCH}
    ).fetchall()
    if settings.retention > 0:
        deleted += conn.execute(
            sql.SWEEP_RETENTION, {"cutoff": now - settings.retention, "limit": RETENTION_BATCH}
        ).fetchall()
        conn.execute(sql.SWEEP_FORGOTTEN_WORKERS, {"cutoff": now - FORGET_WORKERS_AFTER})
    for queue, state, task_id in deleted:
        moved(queue, state, None)
        batch.finished(task_id, DELETED)
    result.deleted = len(deleted)
    if sql.FOLD_COUNTS is not None:
        conn.execute(sql.FOLD_COUNTS)
    next_due = conn.execute(sql.NEXT_DUE).fetchone()[0]
    next_expiry = conn.execute(sql.NEXT_EXPIRY).fetchone()[0]
    result.next_due = min(
        math.inf if next_due is None else next_due,
        math.inf if next_expiry is None else next_expiry,
    )
    return result


class Sweeper:
    """Runs :func:`sweep_once` every ``sweep_interval``, and early when something falls due."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.sweeps = 0

    async def sweep(self) -> SweepResult:
        broker = self.broker
        if broker.shared or broker.queues_stale:
            await broker.reload_queues()
        if not await broker.store.lead():
            # Another broker on the database sweeps (and watches what falls due): sleep a
            # whole interval, then ask for the lock again.
            broker.next_due = math.inf
            return SweepResult()
        now = broker.now()
        # Anything timed that is written from here on must wake us again.
        broker.next_due = math.inf
        settings = broker.settings
        result = await broker.store.write(
            lambda conn, batch: sweep_once(conn, batch, settings, now, broker.sql), heavy=True
        )
        broker.next_due = min(broker.next_due, result.next_due)
        broker.notify_ready(result.ready)
        # Due schedules fire in their own transaction (each slot with its task, exactly once).
        await scheduler.fire_schedules(broker, now)
        self.sweeps += 1
        if result.expired or result.dead or result.cancelled or result.due or result.deleted:
            log.info(
                "sweep: %d leases expired, %d tasks dead, %d cancelled, %d scheduled now due, "
                "%d deleted",
                result.expired,
                result.dead,
                result.cancelled,
                result.due,
                result.deleted,
            )
        if result.deleted >= RETENTION_BATCH:
            broker.next_due = now  # more to delete: come back at once
        return result

    async def run(self) -> None:
        """Sweep until cancelled. Storage errors are logged and retried next interval."""
        interval = self.broker.settings.sweep_interval
        while True:
            self.broker.sample_throughput()
            try:
                await self.sweep()
            except errors.ShuttingDown:
                return
            except errors.DurableTQError as exc:
                log.error("sweep failed: %s", exc)
            broker = self.broker
            # Sleep until the next interval, or until the earliest task or lease falls due.
            # In the broker's time (monotonic while it runs: a wall-clock step changes nothing).
            wake_at = min(broker.now() + interval, broker.next_due)
            while True:
                delay = wake_at - broker.now()
                if delay <= 0:
                    break
                broker.due_changed = anyio.Event()
                with anyio.move_on_after(delay):
                    await broker.due_changed.wait()
                wake_at = min(wake_at, broker.next_due)
