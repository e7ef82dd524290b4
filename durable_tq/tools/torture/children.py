"""The torture test's child processes: producers and consumers that write every request and
its reply to a history file."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from durable_tq import errors
from durable_tq.client import AsyncClient, ClaimArgs, ClaimedTask, RequestTimeout, Settlement

log = logging.getLogger("durable_tq.tools.torture")

QUEUE = "torture"
HOST = "127.0.0.1"
#: Attempts per task: more than any crash loop can use, so no task is buried as ``dead``
#: (a dead task would hide whether at-least-once held).
MAX_ATTEMPTS = 1_000_000
#: Bound on one request of a child; a reply that does not come in time is "unknown".
REQUEST_TIMEOUT = 10.0
#: Bound on a graceful stop of any process before it is called a failure and killed.
STOP_TIMEOUT = 30.0
#: The harness looks at its processes this often.
TICK = 0.02
#: Mean time a restarted broker serves before its next kill, at least (seconds).
MIN_SERVING = 1.0
#: Share of broker kills that land while it starts up (recovers the file) instead of serving.
STARTUP_KILL_SHARE = 0.15

Progress = Callable[[str], None]


# --- what a child was told ----------------------------------------------------------------------


class HistoryFile:
    """An append-only record of replies, one line per event.

    Each line goes out in one ``write`` on an ``O_APPEND`` file, so a SIGKILL never leaves
    half a line, and what was written survives the process (no fsync: the machine does not
    crash, only processes do).
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(self, *fields: object) -> None:
        os.write(self._fd, (" ".join(str(f) for f in fields) + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)


def outcome_of(exc: errors.DurableTQError) -> str:
    """``unknown`` when the request may or may not have been carried out, else its code."""
    if isinstance(exc, errors.ConnectionLost | RequestTimeout | errors.ShuttingDown):
        return "unknown"
    return exc.code


def _client(
    port: int, worker: dict[str, Any] | None = None, *, connect_attempts: int = 6
) -> AsyncClient:
    return AsyncClient(
        HOST,
        port,
        worker=worker,
        timeout=REQUEST_TIMEOUT,
        connect_timeout=2.0,
        connect_attempts=connect_attempts,
        reconnect_timeout=10.0,
        claim_margin=REQUEST_TIMEOUT,
    )


async def _watch_stop(stop: anyio.Event) -> None:
    """SIGTERM or SIGINT: finish what is in flight, then exit."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
            return


async def _keep_connected(
    ports: list[int],
    stop: anyio.Event,
    worker: dict[str, Any] | None,
    run: Callable[[AsyncClient, anyio.abc.TaskGroup], None],
) -> None:
    """Open a client (again and again while the broker is down) and ``run`` loops on it.

    With several ports (brokers on one PostgreSQL database) a client whose connection breaks
    is left, with whatever was in flight on it, and the next broker is tried: a killed
    broker's clients move to one that serves, as a real deployment's would.
    """
    several = len(ports) > 1
    for port in itertools.cycle(ports):
        if stop.is_set():
            return
        try:
            client = _client(port, worker, connect_attempts=1 if several else 6)
            async with client, anyio.create_task_group() as tg:
                run(client, tg)
                if several:
                    tg.start_soon(_leave_when_lost, client, stop, tg.cancel_scope)
                await stop.wait()
        except errors.DurableTQError as exc:  # could not connect; the broker is restarting
            log.info("connecting: %s", exc)
            with anyio.move_on_after(0.05 if several else 0.2):
                await stop.wait()


async def _leave_when_lost(
    client: AsyncClient, stop: anyio.Event, scope: anyio.CancelScope
) -> None:
    """Cancel ``scope`` (the client's loops) once its connection is gone."""
    while not stop.is_set():
        if not client.connected:
            log.info("lost %s; moving to the next broker", client.url)
            scope.cancel()
            return
        with anyio.move_on_after(0.05):
            await stop.wait()


# --- producer -----------------------------------------------------------------------------------


async def _produce(args: argparse.Namespace) -> None:
    history = HistoryFile(Path(args.log))
    stop = anyio.Event()

    starts = itertools.count()

    def start(client: AsyncClient, tg: anyio.abc.TaskGroup) -> None:
        # Lanes begin again on each broker they move to: new uids ("p0.1m2-7") and seeds.
        moved = next(starts)
        again = f"m{moved}" if moved else ""
        for lane in range(args.concurrency):
            rng = random.Random(f"{args.seed}/{lane}{again}")
            name = f"{args.name}.{lane}{again}"
            tg.start_soon(_produce_lane, client, history, rng, name, args, stop)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_stop, stop)
            await _keep_connected(args.port, stop, None, start)
            tg.cancel_scope.cancel()
    finally:
        history.close()


async def _produce_lane(
    client: AsyncClient,
    history: HistoryFile,
    rng: random.Random,
    name: str,
    args: argparse.Namespace,
    stop: anyio.Event,
) -> None:
    rate = args.rate / args.concurrency
    numbers = itertools.count(1)
    while not stop.is_set():
        size = 1 if rng.random() >= 0.1 else rng.randint(2, 5)
        uids = [f"{name}-{next(numbers)}" for _ in range(size)]
        batch = uids[0] if size > 1 else "-"  # enqueue_many: all of it or nothing
        tasks = [
            {"queue": QUEUE, "payload": {"uid": uid, "pad": "x" * rng.randint(0, 200)},
             "max_attempts": MAX_ATTEMPTS}
            for uid in uids
        ]  # fmt: skip
        try:
            if size == 1:
                task_ids = [(await client.request("enqueue", tasks[0]))["task_id"]]
            else:
                task_ids = [r.task_id for r in await client.enqueue_many(tasks)]
        except errors.DurableTQError as exc:
            outcome = outcome_of(exc)
            for uid in uids:
                history.record("enqueue", outcome, "-", uid, batch)
            if outcome == "unknown":
                await anyio.sleep(0.05)
        else:
            for task_id, uid in zip(task_ids, uids, strict=True):
                history.record("enqueue", "ok", task_id, uid, batch)
        if rate > 0:
            await anyio.sleep(rng.expovariate(rate))


# --- consumer -----------------------------------------------------------------------------------


async def _consume(args: argparse.Namespace) -> None:
    history = HistoryFile(Path(args.log))
    stop = anyio.Event()
    worker = {"id": args.name, "queues": [QUEUE], "concurrency": 1000}

    def start(client: AsyncClient, tg: anyio.abc.TaskGroup) -> None:
        if not args.settle:
            # A settle consumer has no heartbeat loop: its settles must keep it alive (a
            # worker declared dead would have its leases handed out again: an overlap).
            tg.start_soon(_heartbeats, client, stop)
        for lane in range(args.concurrency):
            rng = random.Random(f"{args.seed}/{lane}")
            if args.settle:
                tg.start_soon(_settle_lane, client, history, rng, args.lease, stop)
            else:
                tg.start_soon(_consume_lane, client, history, rng, args.lease, stop, tg)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_stop, stop)
            await _keep_connected(args.port, stop, worker, start)
            tg.cancel_scope.cancel()
    finally:
        history.close()


async def _heartbeats(client: AsyncClient, stop: anyio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(errors.DurableTQError):
            await client.heartbeat(timeout=2.0)
        with anyio.move_on_after(1.0):
            await stop.wait()


async def _consume_lane(
    client: AsyncClient,
    history: HistoryFile,
    rng: random.Random,
    lease: float,
    stop: anyio.Event,
    tg: anyio.abc.TaskGroup,
) -> None:
    while not stop.is_set():
        try:
            tasks = await client.claim(QUEUE, max=2, wait=0.5, lease=lease)
        except errors.DurableTQError:
            await anyio.sleep(0.1)
            continue
        _record_claims(history, tasks)
        for task in tasks:
            await _finish(client, history, rng, task, lease, tg)


def _record_claims(history: HistoryFile, tasks: list[ClaimedTask]) -> None:
    received = time.time()
    for task in tasks:
        history.record(
            "claim",
            task.task_id,
            task.attempt,
            task.lease_token,
            f"{task.lease_expires_at:.6f}",
            f"{received:.6f}",
        )


async def _finish(
    client: AsyncClient,
    history: HistoryFile,
    rng: random.Random,
    task: ClaimedTask,
    lease: float,
    tg: anyio.abc.TaskGroup,
) -> None:
    """Work on a claimed task, then end it one of several ways (mostly ack)."""
    await anyio.sleep(rng.uniform(0.0, 0.01))
    roll = rng.random()
    call: Awaitable[Any]
    if roll < 0.01:  # the worker hangs: the lease runs out and the task comes back
        history.record("abandon", "-", task.task_id, task.lease_token)
        return
    if roll < 0.02:  # ...and then wakes up and acks with its stale token: must be refused
        tg.start_soon(_late_ack, client, history, task, lease)
        return
    if roll < 0.05:
        op = "fail"
        call = client.fail(task.task_id, task.lease_token, "torture", delay=rng.choice([0, 0.2]))
    elif roll < 0.07:
        op = "release"
        call = client.release(task.task_id, task.lease_token)
    else:
        if roll < 0.1:
            extend = client.extend(task.task_id, task.lease_token, lease)
            await _record(history, "extend", task, extend)
        op = "ack"
        call = client.ack(task.task_id, task.lease_token, {"attempt": task.attempt})
    if op != "ack":
        # Recorded before it goes out: if this process is killed before the reply is
        # recorded, the history still shows that the lease may have ended early.
        history.record(op, "sent", task.task_id, task.lease_token)
    await _record(history, op, task, call)


async def _record(history: HistoryFile, op: str, task: ClaimedTask, call: Awaitable[Any]) -> None:
    try:
        await call
    except errors.DurableTQError as exc:
        history.record(op, outcome_of(exc), task.task_id, task.lease_token)
    else:
        history.record(op, "ok", task.task_id, task.lease_token)


async def _late_ack(
    client: AsyncClient, history: HistoryFile, task: ClaimedTask, lease: float
) -> None:
    await anyio.sleep(lease + 0.5)
    await _record(history, "late_ack", task, client.ack(task.task_id, task.lease_token))


@dataclass(frozen=True)
class _Ending:
    """One lease to end in the next settle, and the op name its result is recorded under."""

    op: str
    item: Settlement
    #: Not before this (``time.time()``): a late ack waits until its lease has run out.
    due: float = 0.0


async def _settle_lane(
    client: AsyncClient,
    history: HistoryFile,
    rng: random.Random,
    lease: float,
    stop: anyio.Event,
) -> None:
    """The batching path: each settle ends the last round's leases and claims the next."""
    waiting: list[_Ending] = []  # late acks, held back until their lease has run out
    endings: list[_Ending] = []
    while not stop.is_set():
        now = time.time()
        endings += [e for e in waiting if e.due <= now]
        waiting = [e for e in waiting if e.due > now]
        for ending in endings:
            if ending.op in ("fail", "release"):
                # Before it goes out, as for the single ops: the lease may end early.
                history.record(ending.op, "sent", ending.item.task_id, ending.item.lease_token)
        claim = ClaimArgs(queues=[QUEUE], max=rng.randint(1, 4), wait=0.5, lease=lease)
        try:
            reply = await client.settle([e.item for e in endings], claim=claim)
        except errors.DurableTQError as exc:
            # No per-task results: every item shares the request's outcome. Claimed tasks
            # that never reached us run out their leases on the broker.
            outcome = outcome_of(exc)
            history.record("settle", outcome, len(endings), 0)
            for ending in endings:
                history.record(
                    ending.op, outcome, ending.item.task_id, ending.item.lease_token, "settle"
                )
            endings = []
            await anyio.sleep(0.1)
            continue
        history.record("settle", "ok", len(endings), len(reply.tasks or ()))
        for ending, result in zip(endings, reply.results, strict=True):
            code = "ok" if result.ok else str((result.error or {}).get("code", "error"))
            history.record(ending.op, code, ending.item.task_id, ending.item.lease_token, "settle")
        tasks = reply.tasks or []
        _record_claims(history, tasks)
        endings = []
        for task in tasks:
            endings += await _plan_ending(client, history, rng, task, lease, waiting)


async def _plan_ending(
    client: AsyncClient,
    history: HistoryFile,
    rng: random.Random,
    task: ClaimedTask,
    lease: float,
    waiting: list[_Ending],
) -> list[_Ending]:
    """Work on a claimed task; how its lease ends in the next settle (mostly an ack)."""
    await anyio.sleep(rng.uniform(0.0, 0.01))
    roll = rng.random()
    task_id, token = task.task_id, task.lease_token
    if roll < 0.01:
        history.record("abandon", "-", task_id, token)
        return []
    if roll < 0.02:  # acked in a settle after the lease ran out: that item must be refused
        late = Settlement.ack(task_id, token)
        waiting.append(_Ending("late_ack", late, due=task.lease_expires_at + 0.5))
        return []
    if roll < 0.05:
        delay = rng.choice([0, 0.2])
        return [_Ending("fail", Settlement.fail(task_id, token, "torture", delay=delay))]
    if roll < 0.07:
        return [_Ending("release", Settlement.release(task_id, token))]
    if roll < 0.1:
        await _record(history, "extend", task, client.extend(task_id, token, lease))
    ack = _Ending("ack", Settlement.ack(task_id, token, {"attempt": task.attempt}))
    if roll < 0.12:  # the same ack twice in one settle: the second must get lease_lost
        return [ack, ack]
    return [ack]


def child_main(argv: list[str] | None = None) -> int:
    """``python -m durable_tq.tools.torture producer|consumer``: one child of the harness."""
    parser = argparse.ArgumentParser(prog="python -m durable_tq.tools.torture")
    parser.add_argument("role", choices=["producer", "consumer"])
    parser.add_argument(
        "--port",
        type=int,
        action="append",
        required=True,
        help="the broker's port; repeated: brokers on one database, the next one on a loss",
    )
    parser.add_argument("--log", required=True, help="history file to append to")
    parser.add_argument("--name", required=True, help="uid prefix / worker id")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rate", type=float, default=50.0, help="enqueues/s (0: no limit)")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument(
        "--settle", action="store_true", help="consumer: claim and settle through settle"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    role = _produce if args.role == "producer" else _consume
    anyio.run(role, args, backend="asyncio")
    return 0
