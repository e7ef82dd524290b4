"""claim_scaling.py on PostgreSQL (``--pg URL``): the databases, the fill, the plans.

The measurements are claim_scaling.py's own (the real Broker, its claims, enqueues, sweeps and
stats, interleaved between the two tables); what differs is where the tables are: two
databases ``durable_tq_claim_scaling_<rows>`` created on the server of URL (dropped first if
they exist, left afterwards for a look), filled with ``COPY``, with ``queue_counts`` set from
a count of the rows (slot 0) and ``VACUUM ANALYZE`` run, as a day of autovacuum would have;
both are analyzed again after the warm-up (the broker here runs no sweeper to do it).
The plans are PostgreSQL's ``EXPLAIN`` of the same named statements (``backends.postgres``).
"""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any

import psycopg

from durable_tq.backends.postgres import queries as pg_queries


def database_url(server_url: str, rows: int) -> str:
    return f"{server_url.rsplit('/', 1)[0]}/durable_tq_claim_scaling_{rows}"


def recreate(url: str) -> None:
    admin_url, name = url.rsplit("/", 1)
    with psycopg.connect(f"{admin_url}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')


def fill_table(
    url: str,
    rows: int,
    finished_fraction: float,
    seed: int,
    columns: list[str],
    fill_rows: Any,
    queues: tuple[str, ...],
) -> float:
    """``rows`` tasks through COPY; queue_counts from a count; VACUUM ANALYZE. Seconds taken."""
    start = time.perf_counter()
    rng = random.Random(seed)
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SET LOCAL synchronous_commit = off")  # a scratch database
            with cur.copy(f"COPY tasks ({', '.join(columns)}) FROM STDIN") as copy:
                for row in fill_rows(rows, finished_fraction, rng, time.time()):
                    copy.write_row(row)
            cur.executemany(
                "INSERT INTO queues (name) VALUES (%s) ON CONFLICT DO NOTHING",
                [(q,) for q in queues],
            )
            # The brokers' writers keep queue_counts; rows written behind their back are
            # counted here, into the slot that holds what departed brokers left.
            cur.execute("DELETE FROM queue_counts")
            cur.execute(
                "INSERT INTO queue_counts (queue, state, slot, n)"
                " SELECT queue, state, 0, count(*) FROM tasks GROUP BY queue, state"
            )
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - start


def analyze(url: str) -> None:
    """Statistics of the tasks table as they stand, as the sweeping broker (or autovacuum)
    would have taken them by now: the broker here runs no sweeper."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE tasks")


def table_shape(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        counts = {
            state: int(n)
            for state, n in conn.execute(
                "SELECT state, sum(n) FROM queue_counts GROUP BY state"
            ).fetchall()
        }
        row = conn.execute("SELECT count(*) FROM tasks").fetchone()
        counts["rows"] = int(row[0]) if row else 0
        return counts


def inspect_database(url: str, planned: dict[str, Any]) -> dict[str, Any]:
    """Size, EXPLAIN of the claim and sweep statements, and the partial indexes."""
    with psycopg.connect(url, autocommit=True) as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        cur = psycopg.ClientCursor(conn)  # literals in the text: EXPLAIN takes no parameters
        plans = {}
        for name, params in planned.items():
            sql = getattr(pg_queries, name)
            if isinstance(params, dict) and "ids" in params:
                params = {**params, "ids": json.dumps([1, 2, 3])}
            rows = cur.execute("EXPLAIN " + sql, params or None).fetchall()
            plans[name] = [str(row[0]) for row in rows]
        indexes = dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'tasks'"
                " AND indexdef LIKE '%WHERE%' ORDER BY indexname"
            ).fetchall()
        )
        version = conn.execute("SHOW server_version").fetchone()
    return {
        "db_bytes": int(size[0]) if size else 0,
        "plans": plans,
        "partial_indexes": indexes,
        "postgresql": str(version[0]) if version else "?",
    }


def full_scans(plans: dict[str, list[str]]) -> list[str]:
    """Statements that read the whole tasks table (a ``Seq Scan on tasks``)."""
    return [
        name
        for name, steps in plans.items()
        if any(re.search(r"Seq Scan on tasks\b", step) for step in steps)
    ]
