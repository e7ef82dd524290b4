"""Claim and enqueue cost vs. table size: the real Broker on an empty table and on a big one.

The big table holds ``--rows`` tasks, ``--finished-fraction`` of them finished (succeeded or
dead) and the rest queued across a few queues. It is filled directly with sqlite3 (the broker
would need one request per row), and ``queue_counts`` is then set from a count of the rows.
Then the same measurements run against both tables through :class:`durable_tq.core.broker.Broker`:

- enqueue, issued concurrently (group commit batches them) and one after another;
- claim + ack, one task per claim, 32 per claim, and 32 per claim across several queues;
- claim + ack on a key-limited queue (``key_concurrency`` 1) where one key is saturated with
  ``--key-tasks`` ready tasks (100,000 on the big table) and 20 other keys have room;
- sweeps with nothing to do, and ``stats`` reads.

Unless ``--skip-key-index-comparison``, a third database, a copy of the big one without the
index ``tasks_ready_by_key`` (the one key-limited claims walk), runs the same phases, its
key-limited claims reading the table without the index: what the index saves those claims,
and what keeping it costs every enqueue and claim.

Both brokers stay open and every phase runs in ``--rounds`` rounds, alternating between the two
tables, so that load from elsewhere on the machine hits both alike. Besides the wall-clock rates
(which include one commit, and with ``synchronous=FULL`` one fsync, per batch) it reports the
time spent in the claim and enqueue SQL alone, on the database thread, which is where a growing
table would show first. Finally it prints the query plans of the claim and sweep statements on
the big table, and exits with status 1 if one of them scans the tasks table.

    python benchmarks/claim_scaling.py --rows 1000000 --claims 5000 [--json results.json]
    python benchmarks/claim_scaling.py --pg postgresql://postgres@127.0.0.1:5432/postgres

With ``--pg`` the two tables are PostgreSQL databases on that server (claim_scaling_pg.py).

Results and how to read them: docs/benchmarks.md, "Claim cost vs. table size" and "The key
index: what it saves, what it costs".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

from durable_tq.backends.sqlite import queries
from durable_tq.config import Settings, load_settings
from durable_tq.core.broker import Broker, Session, TaskSpec
from durable_tq.core.sweeper import sweep_once

CLAIM_QUEUE = "bench"
OTHER_QUEUES = ("emails", "reports", "thumbnails")
QUEUES = (CLAIM_QUEUE, *OTHER_QUEUES)
BATCH = 32
WARM_UP = 400
WARM_UP_QUEUE = "warm-up"
FILL_CHUNK = 200_000
TOP_UP_CHUNK = 5_000
PAYLOAD_PAD = "x" * 80  # payloads of about 100 bytes, like a small real task
# The key-limited queue: one saturated key ("hot", its one allowed lease held all run long)
# with --key-tasks ready tasks behind it, and OTHER_KEYS keys with room.
KEY_QUEUE = "keyed"
HOT_KEY = "hot"
OTHER_KEYS = 20
HOT_TASKS_ON_EMPTY = 10  # the empty table's hot key: saturated too, with little behind it
HOT_LEASE = 86400.0  # max_lease: the hot key's lease outlives the run (no sweeper runs here)
KEY_INDEX = "tasks_ready_by_key"
# The statements that name KEY_INDEX (INDEXED BY): run without the hint on a database that
# lacks the index.
KEY_INDEX_QUERIES = ("READY_OF_KEY", "READY_UNKEYED")
NO_KEY_INDEX = "no key index"  # the label's suffix for the copy without KEY_INDEX

# The statements whose plans show whether claims and sweeps stay on their partial indexes.
PLANNED = {
    "LEASE_BEST_OF_QUEUE": {
        "now": 0.0,
        "lease": None,
        "worker_id": None,
        "queue": CLAIM_QUEUE,
        "limit": BATCH,
    },
    "READY_IN_QUEUE": (CLAIM_QUEUE, BATCH),
    "LEASE_IDS": {"now": 0.0, "lease": None, "worker_id": None, "ids": "[1, 2, 3]"},
    "ACK": (None, 0.0, 0.0, 1, "token", 0.0),
    "SWEEP_EXPIRED_LEASES": {"now": 0.0, "worker_deadline": 0.0},
    "SWEEP_DUE": {"now": 0.0},
    "SWEEP_RETENTION": {"cutoff": 0.0, "limit": 5000},
    "SWEEP_FORGOTTEN_WORKERS": {"cutoff": 0.0},
    "NEXT_DUE": (),
    "NEXT_EXPIRY": (),
    "READY_KEYS": {"queue": KEY_QUEUE},
    "READY_OF_KEY": (KEY_QUEUE, HOT_KEY, BATCH),
    "READY_UNKEYED": (KEY_QUEUE, BATCH),
    "LEASED_BY_KEY": (KEY_QUEUE,),
}


# --- measurements -------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One timed phase: ``tasks`` tasks moved in ``seconds``; latencies of its calls."""

    name: str
    tasks: int
    seconds: float
    latencies: list[float] = field(default_factory=list, repr=False)
    sql: list[float] = field(default_factory=list, repr=False)
    commits: int = 0

    def add(self, other: Measurement) -> None:
        self.tasks += other.tasks
        self.seconds += other.seconds
        self.latencies.extend(other.latencies)
        self.sql.extend(other.sql)
        self.commits += other.commits

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds else math.inf

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tasks": self.tasks,
            "seconds": round(self.seconds, 4),
            "tasks_per_s": round(self.rate, 1),
            "calls": len(self.latencies),
            "p50_ms": _ms(percentile(self.latencies, 0.50)),
            "p99_ms": _ms(percentile(self.latencies, 0.99)),
            "sql_calls": len(self.sql),
            "sql_p50_us": _us(percentile(self.sql, 0.50)),
            "sql_p99_us": _us(percentile(self.sql, 0.99)),
            "commits": self.commits,
        }


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 3)


def _us(value: float | None) -> float | None:
    return None if value is None else round(value * 1e6, 1)


class SqlTimer:
    """Times the broker's own DB-thread functions for claims and inserts (no commit, no fsync).

    The wall-clock numbers include the commit of each group; these show the SQL alone, which is
    what would grow if a statement stopped using its index.
    """

    def __init__(self, broker: Broker) -> None:
        self.samples: list[float] = []
        for name in ("_lease_tasks", "_insert"):
            setattr(broker, name, self._timed(getattr(broker, name)))

    def _timed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.samples.append(time.perf_counter() - start)

        return timed

    def take(self) -> list[float]:
        taken, self.samples = self.samples, []
        return taken


async def timed_phase(phase: Phase, broker: Broker, timer: SqlTimer) -> Measurement:
    """Run one round of ``phase`` on ``broker``."""
    timer.take()
    commits = broker.store.stats.commits
    latencies: list[float] = []
    start = time.perf_counter()
    tasks = await phase.run(broker, latencies)
    seconds = time.perf_counter() - start
    return Measurement(
        phase.name, tasks, seconds, latencies, timer.take(), broker.store.stats.commits - commits
    )


def payload(n: int) -> str:
    return json.dumps({"n": n, "pad": PAYLOAD_PAD})


def enqueue_request(queue: str, n: int, key: str | None = None) -> TaskSpec:
    return TaskSpec(queue=queue, payload=payload(n), concurrency_key=key)


async def enqueue_concurrently(
    broker: Broker, count: int, latencies: list[float], queue: str = CLAIM_QUEUE
) -> int:
    async def one(n: int) -> None:
        start = time.perf_counter()
        await broker.enqueue(queue, payload(n))
        latencies.append(time.perf_counter() - start)

    async with anyio.create_task_group() as tg:
        for n in range(count):
            tg.start_soon(one, n)
    return count


async def enqueue_sequentially(broker: Broker, count: int, latencies: list[float]) -> int:
    for n in range(count):
        start = time.perf_counter()
        await broker.enqueue(CLAIM_QUEUE, payload(n))
        latencies.append(time.perf_counter() - start)
    return count


async def ack_all(broker: Broker, tasks: list[dict[str, Any]]) -> None:
    """Ack every task concurrently, so the acks share a group commit."""

    async def one(task: dict[str, Any]) -> None:
        await broker.ack(task["task_id"], task["lease_token"])

    if len(tasks) == 1:
        await one(tasks[0])
        return
    async with anyio.create_task_group() as tg:
        for task in tasks:
            tg.start_soon(one, task)


async def claim_and_ack(
    broker: Broker, queues: list[str], per_claim: int, count: int, latencies: list[float]
) -> int:
    """Claim ``count`` tasks ``per_claim`` at a time, acking each claim's tasks before the next."""
    session = Session(greeted=True)
    done = 0
    while done < count:
        start = time.perf_counter()
        reply = await broker.claim(queues, max=min(per_claim, count - done), session=session)
        latencies.append(time.perf_counter() - start)
        tasks = reply["tasks"]
        if not tasks:
            raise RuntimeError(f"ran out of ready tasks in {queues} after {done} claims")
        await ack_all(broker, tasks)
        done += len(tasks)
    return done


async def sweep_repeatedly(broker: Broker, count: int, latencies: list[float]) -> int:
    for _ in range(count):
        start = time.perf_counter()
        now = time.time()
        await broker.store.write(
            lambda conn, batch, now=now: sweep_once(conn, batch, broker.settings, now, broker.sql)
        )
        latencies.append(time.perf_counter() - start)
    return 0


async def stats_repeatedly(broker: Broker, count: int, latencies: list[float]) -> int:
    for _ in range(count):
        start = time.perf_counter()
        await broker.stats()
        latencies.append(time.perf_counter() - start)
    return 0


async def ready_count(broker: Broker, queue: str) -> int:
    stats = await broker.stats()
    entry = stats["queues"].get(queue)
    return 0 if entry is None else int(entry["queued"])


async def top_up(broker: Broker, queue: str, wanted: int) -> None:
    """Make sure ``queue`` has at least ``wanted`` ready tasks (not timed)."""
    missing = wanted - await ready_count(broker, queue)
    while missing > 0:
        chunk = min(missing, TOP_UP_CHUNK)
        await broker.enqueue_many([enqueue_request(queue, n) for n in range(chunk)])
        missing -= chunk


async def saturate_key(broker: Broker, keyed_tasks: int) -> None:
    """``KEY_QUEUE`` limited to 1 lease per key, its hot key's one lease taken and held (not
    timed). Run while only hot tasks are ready there, so the claim takes one of them."""
    await broker.set_queue_limits(KEY_QUEUE, key_concurrency=1)
    if await ready_count(broker, KEY_QUEUE) == 0:  # the empty table: a few hot tasks
        hot = [enqueue_request(KEY_QUEUE, n, HOT_KEY) for n in range(HOT_TASKS_ON_EMPTY)]
        await broker.enqueue_many(hot)
    held = await broker.claim([KEY_QUEUE], 1, lease=HOT_LEASE, session=Session(greeted=True))
    if len(held["tasks"]) != 1:
        raise RuntimeError(f"could not lease a task of the hot key in {KEY_QUEUE}")
    # Work for the other keys, round robin, enough for every key-limited phase of the run.
    for start in range(0, keyed_tasks, TOP_UP_CHUNK):
        chunk = range(start, min(start + TOP_UP_CHUNK, keyed_tasks))
        await broker.enqueue_many(
            [enqueue_request(KEY_QUEUE, n, f"k{n % OTHER_KEYS}") for n in chunk]
        )


@contextlib.contextmanager
def key_index_hints(present: bool) -> Iterator[None]:
    """With ``present`` false, the statements that name ``KEY_INDEX`` lose the hint while the
    block runs (``INDEXED BY`` an index that is not there is an error): SQLite then plans
    them as it can without it. The broker reads ``queries.X`` at each call, and the phases
    of the databases run one after another, so the swap affects only the block."""
    if present:
        yield
        return
    saved = {name: getattr(queries, name) for name in KEY_INDEX_QUERIES}
    try:
        for name, sql in saved.items():
            hint = f"INDEXED BY {KEY_INDEX}"
            if hint not in sql:
                raise RuntimeError(f"queries.{name} no longer says {hint}; update the benchmark")
            setattr(queries, name, sql.replace(hint, ""))
        yield
    finally:
        for name, sql in saved.items():
            setattr(queries, name, sql)


@dataclass(frozen=True)
class Phase:
    """One kind of measurement; ``run`` does one round of it and returns the tasks it moved."""

    name: str
    run: Callable[[Broker, list[float]], Awaitable[int]]


def per_round(total: int, rounds: int) -> int:
    return max(1, math.ceil(total / rounds))


def plan_phases(args: argparse.Namespace) -> list[Phase]:
    claims = per_round(args.claims, args.rounds)
    one_by_one = per_round(args.sequential_enqueues, args.rounds)
    sweeps = per_round(args.sweeps, args.rounds)
    return [
        Phase(
            f"enqueue, {args.enqueues} at once",
            lambda b, lat: enqueue_concurrently(b, args.enqueues, lat),
        ),
        Phase("enqueue, one by one", lambda b, lat: enqueue_sequentially(b, one_by_one, lat)),
        Phase("claim+ack, max=1", lambda b, lat: claim_and_ack(b, [CLAIM_QUEUE], 1, claims, lat)),
        Phase(
            f"claim+ack, max={BATCH}",
            lambda b, lat: claim_and_ack(b, [CLAIM_QUEUE], BATCH, claims, lat),
        ),
        Phase(
            f"claim+ack, max={BATCH}, {len(QUEUES)} queues",
            lambda b, lat: claim_and_ack(b, list(QUEUES), BATCH, claims, lat),
        ),
        Phase(
            f"claim+ack, max={BATCH}, key-limited (1 key saturated, {OTHER_KEYS} with room)",
            lambda b, lat: claim_and_ack(b, [KEY_QUEUE], BATCH, claims, lat),
        ),
        Phase("sweep, nothing due", lambda b, lat: sweep_repeatedly(b, sweeps, lat)),
        Phase("stats read", lambda b, lat: stats_repeatedly(b, sweeps, lat)),
    ]


async def warm_up(broker: Broker, args: argparse.Namespace) -> None:
    """Untimed: first-use costs paid on a queue of its own, and enough ready tasks to claim."""
    await enqueue_concurrently(broker, WARM_UP, [], queue=WARM_UP_QUEUE)
    await claim_and_ack(broker, [WARM_UP_QUEUE], 1, WARM_UP // 2, [])
    await claim_and_ack(broker, [WARM_UP_QUEUE], BATCH, WARM_UP // 2, [])
    claims = per_round(args.claims, args.rounds) * args.rounds
    # Two single-queue phases drain CLAIM_QUEUE; the all-queues phase may take from any queue.
    await top_up(broker, CLAIM_QUEUE, 3 * claims)
    for queue in OTHER_QUEUES:
        await top_up(broker, queue, claims)
    await saturate_key(broker, claims)


async def measure(
    settings_by_label: dict[str, Settings],
    args: argparse.Namespace,
    console: Console,
    without_key_index: frozenset[str] = frozenset(),
) -> dict[str, list[Measurement]]:
    """Every phase against every database, interleaved round by round.

    All brokers stay open and each phase runs on one database right after the other (in
    alternating order), so a change in the machine's load during the run hits all alike.
    """
    phases = plan_phases(args)
    results = {label: [Measurement(p.name, 0, 0.0) for p in phases] for label in settings_by_label}
    async with contextlib.AsyncExitStack() as stack:
        brokers: dict[str, tuple[Broker, SqlTimer]] = {}
        for label, settings in settings_by_label.items():
            broker = await stack.enter_async_context(Broker(settings))
            with key_index_hints(label not in without_key_index):
                await warm_up(broker, args)
            if settings.db_url is not None:  # --pg: statistics as the sweeping broker keeps them
                import claim_scaling_pg

                await anyio.to_thread.run_sync(claim_scaling_pg.analyze, settings.db_url)
            brokers[label] = (broker, SqlTimer(broker))
        order = list(brokers)
        for round_number in range(1, args.rounds + 1):
            for index, phase in enumerate(phases):
                for label in order:
                    broker, timer = brokers[label]
                    with key_index_hints(label not in without_key_index):
                        measured = await timed_phase(phase, broker, timer)
                    results[label][index].add(measured)
            order.reverse()
            console.log(f"round {round_number}/{args.rounds} done")
    return results


# --- the big table ------------------------------------------------------------------------------


def fill_columns() -> list[str]:
    """queries.INSERT_TASK's columns plus finished_at: the rows look like the broker's own."""
    match = re.search(r"INSERT INTO tasks \(([^)]*)\)", queries.INSERT_TASK)
    if match is None:
        raise RuntimeError("cannot read the column list of queries.INSERT_TASK")
    return [c.strip() for c in match.group(1).split(",")] + ["finished_at"]


def fill_rows(
    count: int, finished_fraction: float, rng: random.Random, now: float
) -> Iterator[tuple[Any, ...]]:
    """Rows in INSERT_TASK order + finished_at; finished ones finished within the last day."""
    created = now - 2 * 86400.0
    for n in range(count):
        queue = QUEUES[n % len(QUEUES)]
        payload = json.dumps({"n": n, "pad": PAYLOAD_PAD})
        roll = rng.random()
        if roll < finished_fraction:
            state = "dead" if roll < finished_fraction * 0.05 else "succeeded"
            finished_at: float | None = now - rng.random() * 86400.0
            priority = 0
        else:
            state, finished_at, priority = "queued", None, rng.randrange(3)
        yield (
            queue,
            state,
            payload,
            priority,
            5,
            30.0,
            created,
            created,
            created,
            None,  # unique_key
            None,  # concurrency_key
            finished_at,
        )


def hot_key_rows(count: int, now: float) -> Iterator[tuple[Any, ...]]:
    """``count`` ready tasks of ``KEY_QUEUE`` on the hot key, in the order of fill_rows."""
    created = now - 86400.0
    for n in range(count):
        payload_text = json.dumps({"n": n, "pad": PAYLOAD_PAD})
        yield (KEY_QUEUE, "queued", payload_text, 0, 5, 30.0, created, created, created,
               None, HOT_KEY, None)  # fmt: skip


def fill_table(
    db_path: Path, rows: int, finished_fraction: float, seed: int, hot_tasks: int = 0
) -> float:
    """Append ``rows`` tasks in large transactions, then ``hot_tasks`` ready tasks on the hot
    key of ``KEY_QUEUE``; returns the seconds it took."""
    columns = fill_columns()
    sql = f"INSERT INTO tasks ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    rng = random.Random(seed)
    now = time.time()
    start = time.perf_counter()
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        # A scratch database: no fsync while filling, a big cache for the index updates.
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")
        rows_left = rows
        generator = fill_rows(rows, finished_fraction, rng, now)
        while rows_left > 0:
            chunk = min(rows_left, FILL_CHUNK)
            conn.execute("BEGIN")
            conn.executemany(sql, (next(generator) for _ in range(chunk)))
            conn.execute("COMMIT")
            rows_left -= chunk
        conn.execute("BEGIN")
        conn.executemany(sql, hot_key_rows(hot_tasks, now))
        conn.execute("COMMIT")
        conn.executemany(
            "INSERT OR IGNORE INTO queues (name) VALUES (?)", [(q,) for q in (*QUEUES, KEY_QUEUE)]
        )
        # The broker's writer keeps queue_counts; rows written behind its back are counted here.
        conn.execute("DELETE FROM queue_counts")
        conn.execute(
            "INSERT INTO queue_counts (queue, state, n)"
            " SELECT queue, state, count(*) FROM tasks GROUP BY queue, state"
        )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - start


def table_shape(db_path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        counts: dict[str, int] = {}
        for state, n in conn.execute("SELECT state, sum(n) FROM queue_counts GROUP BY state"):
            counts[state] = int(n)
        counts["rows"] = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
        return counts
    finally:
        conn.close()


# --- query plans --------------------------------------------------------------------------------


def query_plans(db_path: Path) -> dict[str, list[str]]:
    """EXPLAIN QUERY PLAN of the claim and sweep statements, as this database sees them."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        plans = {}
        for name, params in PLANNED.items():
            sql = getattr(queries, name)
            rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
            plans[name] = [_indent(rows, row) + row[3] for row in rows]
        return plans
    finally:
        conn.close()


def _indent(rows: list[tuple[Any, ...]], row: tuple[Any, ...]) -> str:
    depth, parent = 0, row[1]
    ids = {r[0]: r[1] for r in rows}
    while parent in ids:
        depth += 1
        parent = ids[parent]
    return "  " * depth


def full_scans(plans: dict[str, list[str]]) -> list[str]:
    """Statements that read the whole tasks table (a plan step 'SCAN tasks' with no index)."""
    return [
        name
        for name, steps in plans.items()
        if any(re.fullmatch(r"\s*SCAN (tasks|t)\b(?!.*USING).*", step) for step in steps)
    ]


def partial_indexes(db_path: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return {
            name: sql
            for name, sql in conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks'"
                " AND sql LIKE '%WHERE%' ORDER BY name"
            )
        }
    finally:
        conn.close()


# --- the run ------------------------------------------------------------------------------------


def settings_for(db_path: Path | str, args: argparse.Namespace) -> Settings:
    if isinstance(db_path, str):  # a PostgreSQL database (--pg)
        return load_settings(db_url=db_path, max_queue_depth=0, retention=7 * 86400.0)
    return load_settings(
        db_path=db_path, max_queue_depth=0, synchronous=args.synchronous, retention=7 * 86400.0
    )


def remove_database(db_path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)


async def prepare(db_path: Path, args: argparse.Namespace, rows: int) -> dict[str, Any]:
    """A fresh database at ``db_path``: schema by the broker, then ``rows`` tasks written in."""
    await anyio.to_thread.run_sync(remove_database, db_path)
    async with Broker(settings_for(db_path, args)):
        pass  # opening migrates the new file
    info: dict[str, Any] = {"fill_seconds": 0.0}
    if rows:
        seconds = await anyio.to_thread.run_sync(
            fill_table, db_path, rows, args.finished_fraction, args.seed, args.key_tasks
        )
        info["fill_seconds"] = round(seconds, 2)
    info["before"] = await anyio.to_thread.run_sync(table_shape, db_path)
    return info


def copy_without_key_index(source: Path, target: Path) -> dict[str, Any]:
    """``target``: a copy of ``source`` (closed) without ``KEY_INDEX``."""
    remove_database(target)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target, isolation_level=None)
    try:
        src.backup(dst)
        dst.execute(f"DROP INDEX {KEY_INDEX}")
        dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        src.close()
        dst.close()
    return {"fill_seconds": 0.0, "before": table_shape(target), "copy_of": str(source)}


def inspect_database(db_path: Path, key_index: bool = True) -> dict[str, Any]:
    """Size, query plans and partial indexes of a database after its measurements."""
    with key_index_hints(key_index):
        plans = query_plans(db_path)
    return {
        "db_bytes": db_path.stat().st_size,
        "plans": plans,
        "partial_indexes": partial_indexes(db_path),
    }


async def prepare_postgres(url: str, args: argparse.Namespace, rows: int) -> dict[str, Any]:
    """claim_scaling_pg: a fresh database at ``url``, schema by the broker, ``rows`` tasks."""
    import claim_scaling_pg as pg

    await anyio.to_thread.run_sync(pg.recreate, url)
    async with Broker(settings_for(url, args)):
        pass  # opening migrates the new database
    info: dict[str, Any] = {"fill_seconds": 0.0}
    if rows:
        seconds = await anyio.to_thread.run_sync(
            pg.fill_table, url, rows, args.finished_fraction, args.seed, fill_columns(),
            fill_rows, QUEUES,
        )  # fmt: skip
        info["fill_seconds"] = round(seconds, 2)
    info["before"] = await anyio.to_thread.run_sync(pg.table_shape, url)
    return info


async def run_postgres(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """``--pg``: the same measurements on two PostgreSQL databases (claim_scaling_pg)."""
    import claim_scaling_pg as pg

    report: dict[str, Any] = {"environment": environment(), "args": vars(args).copy()}
    scenarios: dict[str, dict[str, Any]] = {}
    urls: dict[str, str] = {}
    for label, rows in (("empty", 0), (f"{args.rows:,} rows", args.rows)):
        urls[label] = pg.database_url(args.pg, rows)
        console.log(f"[bold]{label}[/]: preparing {urls[label]}")
        scenarios[label] = await prepare_postgres(urls[label], args, rows)
        if rows:
            info = scenarios[label]
            console.log(f"filled {rows:,} rows in {info['fill_seconds']} s: {info['before']}")
    settings = {label: settings_for(url, args) for label, url in urls.items()}
    measured = await measure(settings, args, console)
    for label, url in urls.items():
        inspected = await anyio.to_thread.run_sync(pg.inspect_database, url, PLANNED)
        scenarios[label]["db_bytes"] = inspected.pop("db_bytes")
        scenarios[label]["measurements"] = [m.summary() for m in measured[label]]
        report["environment"]["postgresql"] = inspected.pop("postgresql")
        report.update(inspected)  # the last one wins: plans on the big table
    report["scenarios"] = scenarios
    report["full_scans"] = pg.full_scans(report["plans"])
    return report


async def run(args: argparse.Namespace, folder: Path, console: Console) -> dict[str, Any]:
    if args.pg is not None:
        return await run_postgres(args, console)
    report: dict[str, Any] = {"environment": environment(), "args": vars(args).copy()}
    report["args"]["db"] = str(folder)
    scenarios: dict[str, dict[str, Any]] = {}
    paths: dict[str, Path] = {}
    big = f"{args.rows:,} rows"
    for label, rows in (("empty", 0), (big, args.rows)):
        paths[label] = folder / f"claim_scaling_{rows}.db"
        console.log(f"[bold]{label}[/]: preparing {paths[label]}")
        scenarios[label] = await prepare(paths[label], args, rows)
        if rows:
            info = scenarios[label]
            console.log(f"filled {rows:,} rows in {info['fill_seconds']} s: {info['before']}")
    without_key_index: frozenset[str] = frozenset()
    if not args.skip_key_index_comparison:
        label = f"{big}, {NO_KEY_INDEX}"
        paths[label] = folder / f"claim_scaling_{args.rows}_no_key_index.db"
        console.log(f"[bold]{label}[/]: copying {paths[big]}")
        scenarios[label] = await anyio.to_thread.run_sync(
            copy_without_key_index, paths[big], paths[label]
        )
        without_key_index = frozenset({label})
    settings = {label: settings_for(path, args) for label, path in paths.items()}
    measured = await measure(settings, args, console, without_key_index)
    for label, path in paths.items():
        key_index = label not in without_key_index
        inspected = await anyio.to_thread.run_sync(inspect_database, path, key_index)
        scenarios[label]["db_bytes"] = inspected.pop("db_bytes")
        scenarios[label]["measurements"] = [m.summary() for m in measured[label]]
        if label == big:
            report.update(inspected)  # plans and indexes on the big table
        elif not key_index:
            report[f"plans_{NO_KEY_INDEX.replace(' ', '_')}"] = {
                name: steps for name, steps in inspected["plans"].items() if "KEY" in name
            }
    report["scenarios"] = scenarios
    report["full_scans"] = full_scans(report["plans"])
    return report


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


# --- output -------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def cost_ratio(empty: dict[str, Any], big: dict[str, Any]) -> float | None:
    """Time per task (or per call, for phases that move no tasks) on big over empty."""
    if empty["tasks"] and big["tasks"]:
        return float(empty["tasks_per_s"]) / float(big["tasks_per_s"])
    if empty["p50_ms"] and big["p50_ms"]:
        return float(big["p50_ms"]) / float(empty["p50_ms"])
    return None


def comparison_table(report: dict[str, Any], labels: list[str], title: str) -> Table:
    """Every phase on two databases side by side, and the ratios second / first."""
    base, big = (report["scenarios"][label]["measurements"] for label in labels)
    table = Table(
        title=f"{title} "
        + (
            f"(PostgreSQL {report['environment'].get('postgresql')})"
            if report["args"].get("pg")
            else f"(synchronous={report['args']['synchronous']})"
        ),
        caption="tasks/s and latency are wall clock per call, commit included; SQL is the "
        "broker's statements for the call on the database thread, without the commit. "
        f"cost x = time per task (per call for sweep/stats) on {labels[1]} / on {labels[0]}; "
        "SQL x = the same for the SQL p50.",
    )
    table.add_column("phase")
    for label in labels:
        table.add_column(f"{label}\ntasks/s", justify="right")
        table.add_column(f"{label}\np50 / p99 ms", justify="right")
        table.add_column(f"{label}\nSQL p50 / p99 us", justify="right")
    table.add_column("cost x", justify="right")
    table.add_column("SQL x", justify="right")
    for a, b in zip(base, big, strict=True):
        cells = [a["name"]]
        for m in (a, b):
            cells.append(_fmt(m["tasks_per_s"]) if m["tasks"] else "")
            cells.append(f"{_fmt(m['p50_ms'], '.2f')} / {_fmt(m['p99_ms'], '.2f')}")
            sql = f"{_fmt(m['sql_p50_us'], '.0f')} / {_fmt(m['sql_p99_us'], '.0f')}"
            cells.append(sql if m["sql_calls"] else "")
        cells.append(_fmt(cost_ratio(a, b), ".2f"))
        sql_ratio = b["sql_p50_us"] / a["sql_p50_us"] if a["sql_calls"] else None
        cells.append(_fmt(sql_ratio, ".2f"))
        table.add_row(*cells)
    return table


def render(report: dict[str, Any], console: Console) -> None:
    labels = list(report["scenarios"])
    console.print(
        comparison_table(report, labels[:2], f"Claim and enqueue cost: empty table vs. {labels[1]}")
    )
    if len(labels) > 2:
        console.print(
            comparison_table(report, labels[1:3], f"The index {KEY_INDEX}: with it vs. without it")
        )

    shapes = Table(title="Tables before the measurements")
    shapes.add_column("table")
    for column in ("rows", "succeeded", "dead", "queued", "fill s", "file MB after"):
        shapes.add_column(column, justify="right")
    for label, info in report["scenarios"].items():
        before = info["before"]
        shapes.add_row(
            label,
            *(f"{before.get(k, 0):,}" for k in ("rows", "succeeded", "dead", "queued")),
            f"{info['fill_seconds']:.1f}",
            f"{info['db_bytes'] / 1e6:,.0f}",
        )
    console.print(shapes)

    console.print(f"[bold]Query plans on the {labels[1]} table[/]")
    for name, steps in report["plans"].items():
        console.print(f"[cyan]{name}[/]")
        for step in steps:
            console.print(f"    {step}", markup=False, highlight=False)
    without = report.get(f"plans_{NO_KEY_INDEX.replace(' ', '_')}")
    if without:
        console.print(f"[bold]The key-limited claim's statements without {KEY_INDEX}[/]")
        for name, steps in without.items():
            console.print(f"[cyan]{name}[/]")
            for step in steps:
                console.print(f"    {step}", markup=False, highlight=False)
    scans = report["full_scans"]
    console.print(
        f"[red]full table scans: {', '.join(scans)}[/]"
        if scans
        else "[green]no statement above scans the tasks table; each uses an index[/]"
    )


# --- command line -------------------------------------------------------------------------------


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=positive, default=1_000_000, help="rows of the big table")
    parser.add_argument(
        "--finished-fraction",
        type=fraction,
        default=0.99,
        help="share of the big table that is finished (succeeded/dead)",
    )
    parser.add_argument(
        "--claims", type=positive, default=5000, help="tasks claimed and acked in each claim phase"
    )
    parser.add_argument(
        "--key-tasks",
        type=positive,
        default=100_000,
        help="ready tasks on the saturated key of the big table's key-limited queue",
    )
    parser.add_argument(
        "--skip-key-index-comparison",
        action="store_true",
        help=f"do not measure a copy of the big table without {KEY_INDEX}",
    )
    parser.add_argument(
        "--enqueues",
        type=positive,
        default=4000,
        help="enqueues issued at once in a task group, in every round",
    )
    parser.add_argument(
        "--sequential-enqueues",
        type=positive,
        default=1000,
        help="enqueues issued one after another",
    )
    parser.add_argument("--sweeps", type=positive, default=200, help="sweeps and stats reads timed")
    parser.add_argument(
        "--db",
        type=Path,
        default=None,
        help="folder for the benchmark databases (default: a temporary one, removed afterwards)",
    )
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL", type=str.upper)
    parser.add_argument(
        "--pg",
        default=None,
        metavar="URL",
        help="measure on PostgreSQL instead: databases durable_tq_claim_scaling_<rows> are "
        "(re)created on the server of this postgresql:// URL and left there",
    )
    parser.add_argument(
        "--rounds",
        type=positive,
        default=5,
        help="rounds each phase is split into, alternating between the two tables",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="also write the results as JSON to PATH; without PATH, print JSON instead of tables",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=args.json == "-", log_path=False)
    console.width = max(console.width, 150)  # the results table is wide; keep it whole in logs
    if args.db is None:
        folder = Path(tempfile.mkdtemp(prefix="durable_tq_claim_scaling_"))
    else:
        folder = args.db
        folder.mkdir(parents=True, exist_ok=True)
    try:
        report = anyio.run(run, args, folder, console)
    finally:
        if args.db is None:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json == "-":
        json.dump(report, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        render(report, console)
        if args.json is not None:
            Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 1 if report["full_scans"] else 0


if __name__ == "__main__":
    sys.exit(main())
