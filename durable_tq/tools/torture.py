"""Crash testing: record what every client was told, SIGKILL the broker and its workers, check.

:func:`run_torture` starts ``python -m durable_tq serve`` on one database file and one fixed
port, producer processes that enqueue tasks (each payload carries a unique id) and consumer
processes that claim, ack, fail, release, extend, abandon and ack too late. Some consumers
(``--settle-consumers``) take the batching path instead: each ``settle`` request ends the
leases of the last round (acks, fails and releases mixed, now and then a stale token or the
same ack twice) and claims the next tasks in the same transaction, and it is their only
heartbeat. Every reply a child gets is appended to its history file before it goes on, a
settle's per-task results one line each (and a fail or release also before it is sent, as
Jepsen records invocations). Meanwhile the harness
SIGKILLs the broker at random moments (running ``PRAGMA integrity_check`` on the file while
it is down, then restarting it on the same file and port) and SIGKILLs consumers (starting
new ones). Then the chaos stops, the queue is drained, the broker is stopped, and the
database is opened read-only and held against the histories:

* every enqueue that got ``ok`` is stored (no lost writes) and reached ``succeeded``;
* no task got ``ok`` for two acks, and every ``ok`` ack is the one stored (fencing);
* an ack sent after its lease ran out was refused;
* every claim got a fresh token, and no task was claimed while another lease on it held;
* each ``enqueue_many`` is stored whole or not at all, and nothing is stored twice;
* the file passed ``integrity_check`` after every kill.

Only ``ok`` replies are promises. A request whose connection broke before its reply is
*unknown*: it may or may not have been committed, and the checks allow both.

Children run as ``python -m durable_tq.tools.torture producer|consumer ...``
(see :func:`child_main`).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
import anyio.abc

from durable_tq import errors
from durable_tq.client import AsyncClient, ClaimArgs, ClaimedTask, RequestTimeout, Settlement
from durable_tq.wire.schema import PROTOCOL_VERSION

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


def _client(port: int, worker: dict[str, Any] | None = None) -> AsyncClient:
    return AsyncClient(
        HOST,
        port,
        worker=worker,
        timeout=REQUEST_TIMEOUT,
        connect_timeout=2.0,
        connect_attempts=6,
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
    port: int,
    stop: anyio.Event,
    worker: dict[str, Any] | None,
    run: Callable[[AsyncClient, anyio.abc.TaskGroup], None],
) -> None:
    """Open a client (again and again while the broker is down) and ``run`` loops on it."""
    while not stop.is_set():
        try:
            async with _client(port, worker) as client, anyio.create_task_group() as tg:
                run(client, tg)
                await stop.wait()
        except errors.DurableTQError as exc:  # could not connect; the broker is restarting
            log.info("connecting: %s", exc)
            with anyio.move_on_after(0.2):
                await stop.wait()


# --- producer -----------------------------------------------------------------------------------


async def _produce(args: argparse.Namespace) -> None:
    history = HistoryFile(Path(args.log))
    stop = anyio.Event()

    def start(client: AsyncClient, tg: anyio.abc.TaskGroup) -> None:
        for lane in range(args.concurrency):
            rng = random.Random(f"{args.seed}/{lane}")
            tg.start_soon(_produce_lane, client, history, rng, f"{args.name}.{lane}", args, stop)

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
    parser.add_argument("--port", type=int, required=True)
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


# --- the harness --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TortureConfig:
    """How long and how hard to torture. Durations in seconds."""

    duration: float = 120.0
    kills: int = 30
    #: SIGKILLs of consumer processes; None: half of ``kills``.
    consumer_kills: int | None = None
    producers: int = 2
    consumers: int = 3
    seed: int | None = None
    #: Where the database, histories and logs go; None: a fresh temporary folder.
    workdir: Path | None = None
    #: Enqueues per second per producer process (0: as fast as it can).
    rate: float = 50.0
    #: Consumers that claim and settle through ``settle`` (batches, claims in the same
    #: transaction); None: half of them, rounded up. The rest use claim/ack/fail/release.
    settle_consumers: int | None = None
    #: Concurrent requests per child process.
    lanes: int = 4
    lease: float = 2.0
    synchronous: str = "FULL"
    drain_timeout: float = 120.0
    start_timeout: float = 30.0

    @property
    def settle_consumer_count(self) -> int:
        if self.settle_consumers is None:
            return (self.consumers + 1) // 2
        return min(self.settle_consumers, self.consumers)

    @property
    def consumer_kill_count(self) -> int:
        return self.kills // 2 if self.consumer_kills is None else self.consumer_kills


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class TortureReport:
    seed: int
    config: dict[str, Any]
    counts: dict[str, Any]
    checks: list[Check]
    workdir: str

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "seed": self.seed,
            "config": self.config,
            "counts": self.counts,
            "checks": [
                {"name": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks
            ],
            "workdir": self.workdir,
        }


def free_port() -> int:
    """A port nobody listens on now (chosen once; the broker comes back on it after a kill)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def integrity_check(db_path: Path) -> str:
    """``PRAGMA integrity_check`` on a read-only connection ("ok" when the file is sound).

    Read-only, so it leaves the write-ahead log exactly as the crash left it for the broker's
    own recovery to find.
    """
    if not db_path.exists():
        return "ok"
    try:
        conn = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        return f"cannot open: {exc}"
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.Error as exc:
        return f"failed: {exc}"
    finally:
        conn.close()
    return "; ".join(str(row[0]) for row in rows[:10])


def broker_stats(port: int, timeout: float = 2.0) -> dict[str, Any] | None:
    """``stats`` over a fresh raw connection; None when the broker does not answer."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            with sock.makefile("rwb") as stream:
                stream.write(
                    b'{"id":1,"op":"hello","version":%d,"client":"torture-probe"}\n'
                    % PROTOCOL_VERSION
                )
                stream.write(b'{"id":2,"op":"stats"}\n{"id":3,"op":"bye"}\n')
                stream.flush()
                replies = [json.loads(stream.readline()) for _ in range(2)]
    except (OSError, ValueError):
        return None
    stats = replies[1]
    if not isinstance(stats, dict) or stats.get("ok") is not True:
        return None
    return stats


def live_tasks(stats: dict[str, Any]) -> int:
    counts = stats.get("queues", {}).get(QUEUE, {})
    return sum(int(counts.get(state, 0)) for state in ("scheduled", "queued", "leased"))


class _Child:
    """One child process (broker, producer or consumer) and how it ended."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.killed = False

    def start(self) -> None:
        with (self.cwd / f"{self.name}.err").open("ab") as stderr:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                cwd=self.cwd,
                env=self.env,
            )
        self.started_at = time.monotonic()
        self.killed = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def died_on_its_own(self) -> int | None:
        """The exit code if it ended without being killed or stopped by us."""
        if self.proc is None or self.killed:
            return None
        return self.proc.poll()

    def kill(self) -> None:
        if self.proc is not None:
            self.killed = True
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; the exit code, or None when it had to be SIGKILLed."""
        if self.proc is None:
            return 0
        self.killed = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


@dataclass
class _Tally:
    broker_kills: int = 0
    consumer_kills: int = 0
    restarts: int = 0
    recoveries: list[float] = field(default_factory=list)
    integrity: list[str] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)
    drained: bool = False
    drain_seconds: float = 0.0
    final_stop: str = "not reached"


class _Torture:
    """One run of the harness: its processes, its schedule and its tally."""

    def __init__(self, config: TortureConfig, workdir: Path, seed: int, progress: Progress) -> None:
        self.config = config
        self.workdir = workdir
        self.seed = seed
        self.say = progress
        self.rng = random.Random(seed)
        self.port = free_port()
        self.db_path = workdir / "torture.db"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
        self.tally = _Tally()
        self.broker = self._broker()
        self.broker_ready = False
        self.broker_restarted = False
        self.chaos_on = False
        self.chaos_end = 0.0
        self.next_broker_kill: float | None = None
        self.producers = [self._producer(n) for n in range(config.producers)]
        self.consumers: list[_Child] = [self._consumer(n, 0) for n in range(config.consumers)]
        self.retired: list[_Child] = []

    # --- the processes ---

    def _broker(self) -> _Child:
        env = dict(self.env)
        env.update(
            DURABLE_TQ_SWEEP_INTERVAL="0.2",
            DURABLE_TQ_HEARTBEAT_INTERVAL="1",
            # Long: a lease ends by expiry or by its holder, so overlaps are exact to check.
            DURABLE_TQ_WORKER_TIMEOUT="30",
            DURABLE_TQ_RETENTION="0",
            DURABLE_TQ_SYNCHRONOUS=self.config.synchronous,
            DURABLE_TQ_MAX_CONNECTIONS="4096",
        )
        command = [
            sys.executable, "-m", "durable_tq", "serve",
            "--host", HOST, "--port", str(self.port), "--db", str(self.db_path),
        ]  # fmt: skip
        return _Child("broker", command, env, self.workdir)

    def _child_command(self, role: str, name: str, seed: str) -> list[str]:
        return [
            sys.executable, "-m", "durable_tq.tools.torture", role,
            "--port", str(self.port), "--log", str(self.workdir / f"{name}.history"),
            "--name", name, "--seed", seed, "--concurrency", str(self.config.lanes),
            "--rate", str(self.config.rate), "--lease", str(self.config.lease),
        ]  # fmt: skip

    def _producer(self, number: int) -> _Child:
        name = f"producer{number}"
        return _Child(name, self._child_command("producer", name, f"{self.seed}/p{number}"),
                      self.env, self.workdir)  # fmt: skip

    def _consumer(self, number: int, generation: int) -> _Child:
        settle = number < self.config.settle_consumer_count
        name = f"consumer{number}{'s' if settle else ''}-g{generation}"
        seed = f"{self.seed}/c{number}/{generation}"
        command = self._child_command("consumer", name, seed)
        if settle:
            command.append("--settle")
        return _Child(name, command, self.env, self.workdir)

    def _start_broker(self, *, restart: bool = True) -> None:
        self.broker.start()
        self.broker_ready = False
        self.broker_restarted = restart
        self._plan_broker_kill(starting=True)

    def _watch_broker(self) -> None:
        """Note when a (re)started broker first answers; restart it if it died by itself."""
        code = self.broker.died_on_its_own()
        if code is not None:
            self.tally.unexpected_exits.append(f"broker exited with {code}")
            self.say(f"broker exited on its own with code {code}; restarting")
            self._check_file("after the broker exited")
            self._start_broker()
            return
        if self.broker_ready:
            return
        if broker_stats(self.port, timeout=2.0) is not None:
            self.broker_ready = True
            if self.broker_restarted:
                self.tally.recoveries.append(time.monotonic() - self.broker.started_at)
            if self.next_broker_kill is None:
                self._plan_broker_kill(starting=False)
        elif time.monotonic() - self.broker.started_at > self.config.start_timeout:
            self.tally.unexpected_exits.append("broker did not answer within start_timeout")
            self.say("broker does not answer; killing and restarting it")
            self.broker.kill()
            self._check_file("after a broker that did not answer")
            self._start_broker()

    def _watch_children(self) -> None:
        for index, child in enumerate(self.consumers):
            code = child.died_on_its_own()
            if code is not None:
                self.tally.unexpected_exits.append(f"{child.name} exited with {code}")
                self._replace_consumer(index)
        for child in self.producers:
            code = child.died_on_its_own()
            if code is not None:
                self.tally.unexpected_exits.append(f"{child.name} exited with {code}")
                child.start()

    def _replace_consumer(self, index: int) -> None:
        old = self.consumers[index]
        self.retired.append(old)
        generation = int(old.name.rsplit("-g", 1)[1]) + 1
        self.consumers[index] = self._consumer(index, generation)
        self.consumers[index].start()

    def _check_file(self, when: str) -> None:
        result = integrity_check(self.db_path)
        self.tally.integrity.append(result)
        if result != "ok":
            self.say(f"integrity_check {when}: {result}")

    # --- the chaos ---

    def _plan_broker_kill(self, *, starting: bool) -> None:
        """Pick the moment of the next broker kill: mostly a while after it serves again,
        sometimes while it is still starting up (recovering the file)."""
        left = self.config.kills - self.tally.broker_kills
        if not self.chaos_on or left <= 0:
            self.next_broker_kill = None
            return
        now = time.monotonic()
        if starting:
            if self.rng.random() < STARTUP_KILL_SHARE:
                self.next_broker_kill = now + self.rng.uniform(0.05, 1.0)
            else:
                self.next_broker_kill = None  # planned once it answers
            return
        # Spread the kills left over the time left, less the time each restart takes.
        recovery = self.tally.recoveries[-1] if self.tally.recoveries else 1.0
        mean_gap = max(MIN_SERVING, (self.chaos_end - now) / left - recovery)
        self.next_broker_kill = now + self.rng.uniform(0.1, 2 * mean_gap)

    def _kill_broker(self) -> None:
        self.broker.kill()
        self.tally.broker_kills += 1
        state = "serving" if self.broker_ready else "starting up"
        self._check_file(f"after kill #{self.tally.broker_kills}")
        self._start_broker()
        self.tally.restarts += 1
        self.say(
            f"broker SIGKILLed while {state} ({self.tally.broker_kills}/{self.config.kills}); "
            f"integrity {self.tally.integrity[-1]}; restarted"
        )

    def _kill_consumer(self) -> None:
        index = self.rng.randrange(len(self.consumers))
        self.consumers[index].kill()
        self.tally.consumer_kills += 1
        self._replace_consumer(index)

    def _await_broker(self) -> None:
        deadline = time.monotonic() + self.config.start_timeout + 1.0
        while not self.broker_ready and time.monotonic() < deadline:
            self._watch_broker()
            time.sleep(TICK)

    def _await_load(self) -> None:
        """Wait (bounded) until every producer and consumer has been told something, so the
        first kill lands under load rather than while the children are still importing."""
        deadline = time.monotonic() + self.config.start_timeout
        histories = [self.workdir / f"{c.name}.history" for c in [*self.producers, *self.consumers]]
        while time.monotonic() < deadline:
            if all(path.exists() and path.stat().st_size > 0 for path in histories):
                return
            self._watch_broker()
            self._watch_children()
            time.sleep(0.1)
        self.say("not every child got going within start_timeout; starting the chaos anyway")

    def chaos(self) -> None:
        """Start everything, then kill the broker and consumers until the kills are done."""
        config = self.config
        self._start_broker(restart=False)
        self._await_broker()
        for child in [*self.producers, *self.consumers]:
            child.start()
        self._await_load()
        began = time.monotonic()
        self.chaos_end = began + config.duration
        self.chaos_on = True
        self._plan_broker_kill(starting=False)
        consumer_kills = sorted(
            began + self.rng.uniform(min(0.5, config.duration / 4), config.duration)
            for _ in range(config.consumer_kill_count if config.consumers else 0)
        )
        # Kills wait for the broker to serve between them; give up on the rest this late.
        give_up = self.chaos_end + config.duration + 60.0
        self.say(f"chaos for about {config.duration:g} s: {config.kills} broker kills")
        while True:
            now = time.monotonic()
            if self.next_broker_kill is not None and now >= self.next_broker_kill:
                self._kill_broker()
            while consumer_kills and consumer_kills[0] <= now:
                consumer_kills.pop(0)
                self._kill_consumer()
            done = self.tally.broker_kills >= config.kills and not consumer_kills
            if (now >= self.chaos_end and done) or now >= give_up:
                break
            self._watch_broker()
            self._watch_children()
            time.sleep(TICK)
        self.chaos_on = False

    # --- the end ---

    def drain(self) -> None:
        """Stop the producers, let the consumers finish everything, stop all in order."""
        self.say("chaos over: stopping producers, draining the queue")
        for child in self.producers:
            self._stop_child(child)
        began = time.monotonic()
        zero_since: float | None = None
        while time.monotonic() - began < self.config.drain_timeout:
            self._watch_broker()
            self._watch_children()
            stats = broker_stats(self.port) if self.broker_ready else None
            if stats is not None and live_tasks(stats) == 0:
                zero_since = zero_since or time.monotonic()
                if time.monotonic() - zero_since >= 0.5:
                    self.tally.drained = True
                    break
            else:
                zero_since = None
            time.sleep(0.25)
        self.tally.drain_seconds = time.monotonic() - began
        for child in self.consumers:
            self._stop_child(child)
        code = self.broker.stop()
        self.tally.final_stop = "clean (exit 0)" if code == 0 else f"exit code {code}"
        self._check_file("after the final stop")

    def _stop_child(self, child: _Child) -> None:
        # -SIGTERM: the signal came before the child had its handler in place (just started).
        code = child.stop()
        if code not in (0, -signal.SIGTERM):
            self.tally.unexpected_exits.append(f"{child.name} did not stop cleanly ({code})")

    def kill_everything(self) -> None:
        for child in [self.broker, *self.producers, *self.consumers]:
            if child.running:
                child.kill()


# --- reading the histories back -----------------------------------------------------------------


@dataclass
class History:
    """What the clients were told, from every history file of a run."""

    #: task_id -> uid, for every enqueue that got ok.
    enqueued: dict[int, str] = field(default_factory=dict)
    #: task_ids that two different ok'd enqueues were told.
    reused_ids: list[int] = field(default_factory=list)
    #: task_id -> lease tokens of the acks that got ok.
    acked: defaultdict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: First uid of an enqueue_many -> every uid it carried (whatever its outcome).
    batches: defaultdict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: (task_id, token) of acks sent after their lease ended that got ok.
    late_acks_ok: list[tuple[int, str]] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    #: task_id -> (received at, lease expires at, token) of every claim that came back.
    leases: defaultdict[int, list[tuple[float, float, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    #: Tokens a fail or release was sent for (recorded before sending, whatever came back):
    #: their lease may have ended before it expired.
    handed_back: set[str] = field(default_factory=set)
    #: "op outcome" -> how many of them were items of a settle (also in ``outcomes``).
    via_settle: Counter[str] = field(default_factory=Counter)
    #: Items sent in settle requests (whatever came back).
    settle_items: int = 0
    claims: int = 0
    redeliveries: int = 0
    malformed: int = 0


def _history_lines(workdir: Path) -> Iterator[list[str]]:
    for path in sorted(workdir.glob("*.history")):
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                yield line.split()


def read_history(workdir: Path) -> History:
    history = History()
    for fields in _history_lines(workdir):
        try:
            _read_line(history, fields)
        except (IndexError, ValueError):
            history.malformed += 1
    return history


def _read_line(history: History, fields: list[str]) -> None:
    op = fields[0]
    if op == "claim":
        history.claims += 1
        if int(fields[2]) > 1:
            history.redeliveries += 1
        history.leases[int(fields[1])].append((float(fields[5]), float(fields[4]), fields[3]))
        return
    outcome = fields[1]
    if op == "settle":  # settle <outcome> <items sent> <tasks claimed>
        history.outcomes[f"settle {outcome}"] += 1
        history.settle_items += int(fields[2])
        return
    if fields[-1] == "settle":  # one item's own result inside a settle
        history.via_settle[f"{op} {outcome}"] += 1
    if op in ("fail", "release"):
        history.handed_back.add(fields[3])
        if outcome == "sent":
            return
    if op == "enqueue" and len(fields) > 4 and fields[4] != "-":
        history.batches[fields[4]].append(fields[3])
    history.outcomes[f"{op} {outcome}"] += 1
    if outcome != "ok":
        return
    task_id = int(fields[2])
    if op == "enqueue":
        if task_id in history.enqueued:
            history.reused_ids.append(task_id)
        history.enqueued[task_id] = fields[3]
    elif op == "ack":
        history.acked[task_id].append(fields[3])
    elif op == "late_ack":
        history.late_acks_ok.append((task_id, fields[3]))


@dataclass(frozen=True)
class StoredTask:
    state: str
    uid: str | None
    lease_token: str | None


def read_database(db_path: Path) -> dict[int, StoredTask]:
    """Every task of the torture queue, read through a read-only connection."""
    conn = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT id, state, payload, lease_token FROM tasks WHERE queue = ?", (QUEUE,)
        ).fetchall()
    finally:
        conn.close()
    stored = {}
    for task_id, state, payload, token in rows:
        decoded = json.loads(payload)
        uid = decoded.get("uid") if isinstance(decoded, dict) else None
        stored[task_id] = StoredTask(state, uid, token)
    return stored


def _examples(items: list[Any], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _lease_overlaps(history: History) -> list[str]:
    """Claims handed out while an earlier lease on the same task was still held.

    A later claim received before the earlier lease's expiry was made by the broker before
    it, too (same clock). Allowed only when the earlier holder sent a fail or release.
    """
    overlaps = []
    for task_id, leases in history.leases.items():
        leases.sort()
        for (_, expires, token), (received, _, _) in itertools.pairwise(leases):
            if received < expires - 0.001 and token not in history.handed_back:
                overlaps.append(f"{task_id} ({expires - received:.3f} s early)")
    return overlaps


def check_history(history: History, stored: dict[int, StoredTask]) -> list[Check]:
    """Hold what the clients were told against what the database holds."""
    lost = [
        task_id
        for task_id, uid in history.enqueued.items()
        if task_id not in stored or stored[task_id].uid != uid
    ]
    unfinished = [
        f"{task_id} ({stored[task_id].state})"
        for task_id in history.enqueued
        if task_id in stored and stored[task_id].state != "succeeded"
    ]
    succeeded = sum(
        1
        for task_id in history.enqueued
        if task_id in stored and stored[task_id].state == "succeeded"
    )
    double_acked = [
        f"{task_id} {tokens}" for task_id, tokens in history.acked.items() if len(tokens) > 1
    ]
    undone_acks = [
        task_id
        for task_id, tokens in history.acked.items()
        if task_id not in stored
        or stored[task_id].state != "succeeded"
        or stored[task_id].lease_token not in tokens
    ]
    tokens = Counter(token for leases in history.leases.values() for _, _, token in leases)
    reused_tokens = [token for token, n in tokens.items() if n > 1]
    overlaps = _lease_overlaps(history)
    uids = Counter(task.uid for task in stored.values())
    duplicated = [uid for uid, n in uids.items() if n > 1]
    torn = [
        f"{first} ({sum(uid in uids for uid in batch)} of {len(batch)} stored)"
        for first, batch in history.batches.items()
        if 0 < sum(uid in uids for uid in batch) < len(batch)
    ]
    ok_enqueues = len(history.enqueued)
    return [
        Check(
            "every ok'd enqueue is stored (no lost writes)",
            not lost and not history.reused_ids,
            f"{ok_enqueues} ok'd, {len(lost)} missing"
            + (f": {_examples(lost)}" if lost else "")
            + (f"; ids told twice: {_examples(history.reused_ids)}" if history.reused_ids else ""),
        ),
        Check(
            "every ok'd enqueue reached succeeded (at-least-once)",
            succeeded == ok_enqueues,
            f"{succeeded} of {ok_enqueues} succeeded"
            + (f"; not: {_examples(unfinished)}" if unfinished else ""),
        ),
        Check(
            "at most one ok'd ack per task (fencing)",
            not double_acked,
            f"{sum(len(t) for t in history.acked.values())} ok'd acks on "
            f"{len(history.acked)} tasks"
            + (f"; twice: {_examples(double_acked)}" if double_acked else ""),
        ),
        Check(
            "every ok'd ack is the stored one (acks durable)",
            not undone_acks,
            f"{len(undone_acks)} not stored"
            + (f": {_examples(undone_acks)}" if undone_acks else ""),
        ),
        Check(
            "acks after the lease ended are refused (fencing)",
            not history.late_acks_ok,
            f"{history.outcomes['late_ack lease_lost']} refused with lease_lost, "
            f"{len(history.late_acks_ok)} accepted"
            + (f": {_examples(history.late_acks_ok)}" if history.late_acks_ok else ""),
        ),
        Check(
            "every claim got a fresh token and a lease of its own",
            not reused_tokens and not overlaps,
            f"{history.claims} claims, {len(reused_tokens)} tokens reused, "
            f"{len(overlaps)} handed out while leased"
            + (f": {_examples(overlaps)}" if overlaps else ""),
        ),
        Check(
            "enqueue_many stored all or nothing",
            not torn,
            f"{len(history.batches)} enqueue_many requests, {len(torn)} torn"
            + (f": {_examples(torn)}" if torn else ""),
        ),
        Check(
            "no enqueue stored twice",
            not duplicated,
            f"{len(stored)} tasks stored"
            + (f"; twice: {_examples(duplicated)}" if duplicated else ""),
        ),
    ]


def _process_checks(tally: _Tally) -> list[Check]:
    bad = [r for r in tally.integrity if r != "ok"]
    return [
        Check(
            "integrity_check ok after every kill and at the end",
            not bad,
            f"{len(tally.integrity)} checks, {len(bad)} failed"
            + (f": {_examples(bad)}" if bad else ""),
        ),
        Check(
            "queue drained after the chaos",
            tally.drained,
            f"in {tally.drain_seconds:.1f} s" if tally.drained else "timed out",
        ),
        Check(
            "processes ended only when killed or stopped",
            not tally.unexpected_exits and tally.final_stop.startswith("clean"),
            "; ".join([*tally.unexpected_exits[:5], f"broker final stop: {tally.final_stop}"]),
        ),
    ]


def _counts(tally: _Tally, history: History, stored: dict[int, StoredTask]) -> dict[str, Any]:
    recoveries = tally.recoveries
    outcomes = history.outcomes
    known = ("enqueue ok", "enqueue unknown")
    return {
        "broker kills (SIGKILL)": tally.broker_kills,
        "consumer kills (SIGKILL)": tally.consumer_kills,
        "enqueues ok": outcomes["enqueue ok"],
        "enqueues unknown (no reply)": outcomes["enqueue unknown"],
        "enqueues refused (error reply)": sum(
            n for k, n in outcomes.items() if k.startswith("enqueue ") and k not in known
        ),
        "tasks stored": len(stored),
        "claims": history.claims,
        "redeliveries (attempt > 1)": history.redeliveries,
        "acks ok": outcomes["ack ok"],
        "acks unknown (no reply)": outcomes["ack unknown"],
        "acks lease_lost": outcomes["ack lease_lost"],
        "fails ok": outcomes["fail ok"],
        "releases ok": outcomes["release ok"],
        "extends ok": outcomes["extend ok"],
        "leases abandoned": outcomes["abandon -"],
        "late acks refused": outcomes["late_ack lease_lost"],
        "settles ok": outcomes["settle ok"],
        "settles unknown (no reply)": outcomes["settle unknown"],
        "settle items sent": history.settle_items,
        "settle items ok": sum(n for k, n in history.via_settle.items() if k.endswith(" ok")),
        "settle items lease_lost": sum(
            n for k, n in history.via_settle.items() if k.endswith(" lease_lost")
        ),
        "acks ok via settle": history.via_settle["ack ok"],
        "late acks refused via settle": history.via_settle["late_ack lease_lost"],
        "restarts measured": len(recoveries),
        "max recovery s (restart to first reply)": round(max(recoveries, default=0.0), 3),
        "mean recovery s": round(sum(recoveries) / len(recoveries), 3) if recoveries else 0.0,
        "drain s": round(tally.drain_seconds, 1),
        "malformed history lines": history.malformed,
    }


def run_torture(config: TortureConfig, progress: Progress | None = None) -> TortureReport:
    """Run the whole torture test; see the module docstring. Never raises on a failed check."""
    say = progress or (lambda message: log.info("%s", message))
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(1 << 31)
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix="durable_tq-torture-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"seed {seed}, working in {workdir}")
    run = _Torture(config, workdir, seed, say)
    began = time.monotonic()
    try:
        run.chaos()
        run.drain()
    finally:
        run.kill_everything()
    history = read_history(workdir)
    try:
        stored = read_database(run.db_path)
    except sqlite3.Error as exc:
        stored = {}
        run.tally.integrity.append(f"final read failed: {exc}")
    checks = [*check_history(history, stored), *_process_checks(run.tally)]
    counts = _counts(run.tally, history, stored)
    counts["wall s"] = round(time.monotonic() - began, 1)
    settings = {
        "duration": config.duration,
        "kills": config.kills,
        "consumer_kills": config.consumer_kill_count,
        "producers": config.producers,
        "consumers": config.consumers,
        "settle_consumers": config.settle_consumer_count,
        "rate": config.rate,
        "lanes": config.lanes,
        "lease": config.lease,
        "synchronous": config.synchronous,
    }
    return TortureReport(seed, settings, counts, checks, str(workdir))


def remove_workdir(report: TortureReport) -> None:
    shutil.rmtree(report.workdir, ignore_errors=True)


def render(report: TortureReport, out: TextIO | None = None, *, kept: bool = True) -> None:
    """Print the report as two rich tables (checks, counts) and the verdict."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out)
    checks = Table(title=f"durable_tq torture: seed {report.seed}", title_justify="left")
    checks.add_column("check")
    checks.add_column("result")
    checks.add_column("detail")
    for check in report.checks:
        verdict = "[green]PASS[/]" if check.passed else "[bold red]FAIL[/]"
        checks.add_row(check.name, verdict, check.detail)
    counts = Table(title="counts", title_justify="left")
    counts.add_column("what")
    counts.add_column("value", justify="right")
    settings = {f"setting {name}": value for name, value in report.config.items()}
    for name, value in {**report.counts, **settings}.items():
        counts.add_row(name, str(value))
    console.print(checks)
    console.print(counts)
    verdict = "[green]all checks passed[/]" if report.passed else "[bold red]CHECKS FAILED[/]"
    console.print(verdict + (f" (files kept in {report.workdir})" if kept else ""))


__all__ = [
    "Check",
    "History",
    "TortureConfig",
    "TortureReport",
    "broker_stats",
    "check_history",
    "child_main",
    "integrity_check",
    "read_database",
    "read_history",
    "render",
    "run_torture",
]

if __name__ == "__main__":
    sys.exit(child_main())
