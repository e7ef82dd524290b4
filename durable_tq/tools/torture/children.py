"""The torture test's child processes: producers and consumers that write every request and
its reply to a history file."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import random
import signal
import sys
import time
from collections import deque
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
#: Where the harness's interval schedules put their tasks (consumers claim from both queues).
TICKS = "torture-ticks"
#: The interval schedules the harness registers, name -> every (seconds), ``missed = latest``.
SCHEDULES: dict[str, float] = {"tick-1s": 1.0, "tick-2s": 2.0}
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
#: How long a producer's ``wait`` for a result may take, reconnects included.
WAIT_TIMEOUT = 300.0
#: ``wait`` requests one producer lane keeps in flight at most.
WAITS_PER_LANE = 8

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
    recent: deque[tuple[int, str]] = deque(maxlen=20)  # (task_id, uid) of ok'd enqueues
    waits = _LaneWaits()
    async with anyio.create_task_group() as waiting:
        while not stop.is_set():
            plan = _plan(rng, lambda: f"{name}-{next(numbers)}", recent)
            task_ids = await _send(client, history, plan)
            if task_ids is not None:
                recent.extend(zip(task_ids, plan.uids, strict=True))
                if plan.wait_on is not None and waits.count < WAITS_PER_LANE:
                    waits.count += 1
                    waiting.start_soon(_wait_for, client, history, task_ids[plan.wait_on], waits)
            if rate > 0:
                await anyio.sleep(rng.expovariate(rate))
        waiting.cancel_scope.cancel()  # stopping: a wait still parked is not recorded


@dataclass
class _Plan:
    """One enqueue request of a producer lane: its tasks (wire dicts), their uids, and which
    of them to ``wait`` for once it is ok'd."""

    tasks: list[dict[str, Any]]
    uids: list[str]
    wait_on: int | None = None


@dataclass
class _LaneWaits:
    count: int = 0


def _payload(
    uid: str, rng: random.Random, parents: list[str] | None = None, *, doom: bool = False
) -> dict[str, Any]:
    """A task's payload: its uid, and the uids of its parents (``after``), so the checker
    knows the dependencies from the database alone; ``doom``: consumers fail it for good."""
    payload: dict[str, Any] = {"uid": uid, "pad": "x" * rng.randint(0, 200)}
    if parents:
        payload["after"] = parents
    if doom:
        payload["doom"] = True
    return payload


def _task(payload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"queue": QUEUE, "payload": payload, "max_attempts": MAX_ATTEMPTS, **extra}


def _plan(rng: random.Random, next_uid: Callable[[], str], recent: deque[tuple[int, str]]) -> _Plan:
    """What the next request is: mostly a single enqueue, sometimes a batch, a chain or a
    fan-in (dependencies), a dependent of earlier ok'd tasks, or a delayed task to wait for."""
    roll = rng.random()
    if roll < 0.08:
        return _plan_flow(rng, next_uid)
    if roll < 0.13 and recent:
        parents = rng.sample(list(recent), min(len(recent), rng.randint(1, 3)))
        uid = next_uid()
        payload = _payload(uid, rng, [parent_uid for _, parent_uid in parents])
        task = _task(payload, after=[task_id for task_id, _ in parents])
        return _Plan([task], [uid], wait_on=0 if rng.random() < 0.3 else None)
    if roll < 0.16:  # runs a while from now: its wait is likely to ride out a broker kill
        uid = next_uid()
        task = _task(_payload(uid, rng), delay=round(rng.uniform(0.3, 3.0), 3))
        return _Plan([task], [uid], wait_on=0)
    size = 1 if roll >= 0.26 else rng.randint(2, 5)
    uids = [next_uid() for _ in range(size)]
    doom = size == 1 and rng.random() < 0.03  # a parent for later dependents to fail on
    tasks = [_task(_payload(uid, rng, doom=doom)) for uid in uids]
    return _Plan(tasks, uids, wait_on=0 if rng.random() < 0.03 else None)


def _plan_flow(rng: random.Random, next_uid: Callable[[], str]) -> _Plan:
    """An ``enqueue_many`` whose items name earlier items of the same call as parents: a
    chain (each after the one before) or a fan-in (the last after all the others). Now and
    then its first task is doomed, so every task that depends on it must end cancelled."""
    size = rng.randint(2, 6)
    uids = [next_uid() for _ in range(size)]
    chain = rng.random() < 0.5
    doomed = rng.random() < 0.2
    tasks = []
    for index, uid in enumerate(uids):
        if index == 0:
            parents = []
        elif chain:
            parents = [index - 1]
        else:
            parents = list(range(size - 1)) if index == size - 1 else []
        payload = _payload(uid, rng, [uids[p] for p in parents], doom=doomed and index == 0)
        after = {"after": [{"index": p} for p in parents]} if parents else {}
        tasks.append(_task(payload, **after))
    return _Plan(tasks, uids, wait_on=size - 1 if rng.random() < 0.5 else None)


async def _send(client: AsyncClient, history: HistoryFile, plan: _Plan) -> list[int] | None:
    """Send the request and record its reply per task; the task ids when it got ok."""
    uids = plan.uids
    batch = uids[0] if len(uids) > 1 else "-"  # enqueue_many: all of it or nothing
    try:
        if len(uids) == 1:
            task_ids = [(await client.request("enqueue", plan.tasks[0]))["task_id"]]
        else:
            task_ids = [r.task_id for r in await client.enqueue_many(plan.tasks)]
    except errors.DurableTQError as exc:
        outcome = outcome_of(exc)
        for uid in uids:
            history.record("enqueue", outcome, "-", uid, batch)
        if outcome == "unknown":
            await anyio.sleep(0.05)
        return None
    for task_id, uid in zip(task_ids, uids, strict=True):
        history.record("enqueue", "ok", task_id, uid, batch)
    return task_ids


async def _wait_for(
    client: AsyncClient, history: HistoryFile, task_id: int, waits: _LaneWaits
) -> None:
    """``wait`` for a task (the client reconnects and waits again across broker kills) and
    record what it returned: ``wait <outcome> <task> <state> <sent> <returned> <result>``."""
    started = f"{time.time():.6f}"
    try:
        task = await client.wait(task_id, timeout=WAIT_TIMEOUT)
    except errors.WaitTimeout:
        history.record("wait", "timeout", task_id, "-", started, f"{time.time():.6f}", "-")
    except errors.DurableTQError as exc:
        history.record("wait", exc.code, task_id, "-", started, f"{time.time():.6f}", "-")
    else:
        result = json.dumps(task.result, separators=(",", ":"))
        history.record("wait", "ok", task_id, task.state, started, f"{time.time():.6f}", result)
    finally:
        waits.count -= 1


# --- consumer -----------------------------------------------------------------------------------


async def _consume(args: argparse.Namespace) -> None:
    history = HistoryFile(Path(args.log))
    stop = anyio.Event()
    worker = {"id": args.name, "queues": [QUEUE, TICKS], "concurrency": 1000}

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
            tasks = await client.claim([QUEUE, TICKS], max=2, wait=0.5, lease=lease)
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
    if _doomed(task):  # fails for good: every task that depends on it must end cancelled
        history.record("fail", "sent", task.task_id, task.lease_token)
        doom = client.fail(task.task_id, task.lease_token, "doomed", retry=False)
        await _record(history, "fail", task, doom)
        return
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
    else:
        _record_ack_sent(history, task.task_id, task.lease_token)
    await _record(history, op, task, call)


def _doomed(task: ClaimedTask) -> bool:
    return isinstance(task.payload, dict) and task.payload.get("doom") is True


def _record_ack_sent(history: HistoryFile, task_id: int, token: str) -> None:
    """When an ack went out: its task cannot have succeeded before (a dependent of it
    handed out earlier was handed out too soon)."""
    history.record("ack", "sent", task_id, token, f"{time.time():.6f}")


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
            elif ending.op == "ack":
                _record_ack_sent(history, ending.item.task_id, ending.item.lease_token)
        claim = ClaimArgs(queues=[QUEUE, TICKS], max=rng.randint(1, 4), wait=0.5, lease=lease)
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
    task_id, token = task.task_id, task.lease_token
    if _doomed(task):
        return [_Ending("fail", Settlement.fail(task_id, token, "doomed", retry=False))]
    roll = rng.random()
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
