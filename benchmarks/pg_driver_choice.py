"""asyncpg or psycopg 3 for the PostgreSQL backend: measured on the claim/ack path.

Both drivers run the same statements against the same table on one PostgreSQL (a throwaway
database, dropped at the end): an enqueue (INSERT ... RETURNING), a claim (UPDATE ... WHERE id
IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING) and an ack (fenced UPDATE), each round
trip as the broker issues it. Two shapes:

- ``serial``: one request per transaction (one producer, one worker, one at a time);
- ``batched``: ``--batch`` requests per transaction, the broker's group commit.

The contenders are the ways the broker can drive each driver:

- ``psycopg-thread``: a sync psycopg 3 connection on a database thread, the batch of write
  functions run there in one hop (what the SQLite writer does with sqlite3);
- ``psycopg-async``: psycopg 3's AsyncConnection, one await per statement on the event loop;
- ``asyncpg``: asyncpg, one await per statement on the event loop (it has no sync API, so
  the broker's write functions would have to become async functions).

It reports requests per second (enqueue + claim + ack counted as three) and the Python
process's CPU per request (the broker's CPU cost; PostgreSQL's own is not included).

    python benchmarks/pg_driver_choice.py --url postgresql://postgres@127.0.0.1:5432/postgres

Results: docs/benchmarks.md, "PostgreSQL driver".
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
import psycopg

SCHEMA = """
CREATE TABLE tasks (
    id bigserial PRIMARY KEY, queue text NOT NULL, state text NOT NULL, payload text NOT NULL,
    priority integer NOT NULL DEFAULT 0, attempts integer NOT NULL DEFAULT 0,
    lease_token text, lease_expires_at double precision, result text
);
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, id) WHERE state = 'queued';
"""

ENQUEUE = "INSERT INTO tasks (queue, state, payload) VALUES ($1, 'queued', $2) RETURNING id"
CLAIM = """
UPDATE tasks SET state = 'leased', attempts = attempts + 1,
    lease_token = replace(gen_random_uuid()::text, '-', ''), lease_expires_at = $2
WHERE id IN (SELECT id FROM tasks WHERE state = 'queued' AND queue = $1
             ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id, lease_token
"""
ACK = """
UPDATE tasks SET state = 'succeeded', result = $3, lease_expires_at = NULL
WHERE id = $1 AND state = 'leased' AND lease_token = $2 RETURNING queue
"""


def _pg(sql: str) -> str:
    """asyncpg's $n placeholders as psycopg's %s (callers pass values in order of appearance)."""
    for n in range(3, 0, -1):
        sql = sql.replace(f"${n}", "%s")
    return sql


def cycle_psycopg(conn: psycopg.Connection[Any], per_txn: int) -> None:
    """``per_txn`` enqueue/claim/ack triples in one transaction (run on a thread)."""
    with conn.transaction():
        for _ in range(per_txn):
            conn.execute(_pg(ENQUEUE), ("bench", '{"n": 1}')).fetchone()
            task_id, token = conn.execute(_pg(CLAIM), (time.time() + 30, "bench")).fetchone()  # type: ignore[misc]
            conn.execute(_pg(ACK), ("null", task_id, token)).fetchone()


async def cycle_psycopg_async(conn: psycopg.AsyncConnection[Any], per_txn: int) -> None:
    async with conn.transaction():
        for _ in range(per_txn):
            await (await conn.execute(_pg(ENQUEUE), ("bench", '{"n": 1}'))).fetchone()
            cur = await conn.execute(_pg(CLAIM), (time.time() + 30, "bench"))
            task_id, token = await cur.fetchone()  # type: ignore[misc]
            await (await conn.execute(_pg(ACK), ("null", task_id, token))).fetchone()


async def cycle_asyncpg(conn: Any, per_txn: int) -> None:
    async with conn.transaction():
        for _ in range(per_txn):
            await conn.fetchrow(ENQUEUE, "bench", '{"n": 1}')
            row = await conn.fetchrow(CLAIM, "bench", time.time() + 30)
            await conn.fetchrow(ACK, row[0], row[1], "null")


async def timed(
    run: Callable[[], Awaitable[None]], transactions: int, per_txn: int
) -> tuple[float, float]:
    """(requests per second, CPU microseconds per request) over ``transactions`` runs."""
    for _ in range(20):  # warm-up: prepared statements, caches
        await run()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(transactions):
        await run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    requests = transactions * per_txn * 3
    return requests / wall, cpu / requests * 1e6


async def measure(url: str, transactions: int, batch: int, rounds: int) -> None:
    import asyncpg

    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(rounds):  # rounds alternate, so load from elsewhere hits all alike
        for shape, per_txn, count in (
            ("serial", 1, transactions),
            ("batched", batch, transactions // batch),
        ):
            sync_conn = psycopg.connect(url, autocommit=True)
            rate = await timed(
                lambda c=sync_conn, n=per_txn: anyio.to_thread.run_sync(cycle_psycopg, c, n),
                count,
                per_txn,
            )
            results.setdefault(("psycopg-thread", shape), []).append(rate)
            sync_conn.close()
            aconn = await psycopg.AsyncConnection.connect(url, autocommit=True)
            rate = await timed(lambda c=aconn, n=per_txn: cycle_psycopg_async(c, n), count, per_txn)
            results.setdefault(("psycopg-async", shape), []).append(rate)
            await aconn.close()
            apg = await asyncpg.connect(url)
            rate = await timed(lambda c=apg, n=per_txn: cycle_asyncpg(c, n), count, per_txn)
            results.setdefault(("asyncpg", shape), []).append(rate)
            await apg.close()
    print(f"{'driver':16} {'shape':8} {'requests/s (median)':>20} {'CPU us/request':>15}")
    for (driver, shape), values in results.items():
        rate = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        print(f"{driver:16} {shape:8} {rate:20,.0f} {cpu:15.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    name = f"durable_tq_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = args.url.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SCHEMA)
        asyncio.run(measure(url, args.transactions, args.batch, args.rounds))
    finally:
        with psycopg.connect(args.url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
