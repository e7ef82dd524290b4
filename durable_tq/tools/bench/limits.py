"""What SQLite itself allows on this disk: inserts committed one row and 100 rows at a time,
with the broker's pragmas (WAL, the chosen ``synchronous``), no broker involved; into a bare
table, and into the broker's own schema.

Every broker figure can then be read against it: a broker doing one commit per request can at
best match the single-row rate; group commit is how it gets beyond it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from durable_tq.backends.sqlite import migrate, queries
from durable_tq.tools.bench.report import Latency

ROWS_PER_COMMIT = (1, 100)
#: ``plain``: one bare table, the ceiling of SQLite and the disk. ``durable_tq``: the broker's
#: own schema (its indexes and counter triggers) and its insert, the ceiling for an enqueue.
SCHEMAS = ("plain", "durable_tq")

_PLAIN_TABLE = (
    "CREATE TABLE tasks (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, payload TEXT NOT NULL,"
    " created_at REAL NOT NULL)"
)
_PLAIN_INSERT = "INSERT INTO tasks (queue, payload, created_at) VALUES (?, ?, ?)"


def _connect(path: Path, synchronous: str, schema: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA cache_size = -32768")
    if schema == "plain":
        conn.execute(_PLAIN_TABLE)
    else:
        migrate.apply_migrations(conn)
    return conn


def _insert(conn: sqlite3.Connection, schema: str, payload: str, rows: int) -> None:
    now = time.time()
    if schema == "plain":
        conn.executemany(_PLAIN_INSERT, [("limits", payload, now)] * rows)
        return
    # What Broker._insert runs for a plain enqueue: the task row, then its queue's row.
    task = ("limits", "queued", payload, 0, 5, 30.0, now, now, now, None, None)
    conn.executemany(queries.INSERT_TASK, [task] * rows)
    conn.execute(queries.INSERT_QUEUE, ("limits",))


def measure_commits(
    path: Path,
    synchronous: str,
    rows_per_commit: int,
    seconds: float,
    payload_bytes: int,
    schema: str = "plain",
) -> dict[str, Any]:
    """Commit ``rows_per_commit`` inserts at a time for ``seconds``; rates and commit times."""
    remove_database(path)
    conn = _connect(path, synchronous, schema)
    payload = '{"p":"' + "x" * max(0, payload_bytes - 8) + '"}'
    durations: list[float] = []
    try:
        started = time.perf_counter()
        deadline = started + seconds
        while True:
            begun = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            _insert(conn, schema, payload, rows_per_commit)
            conn.execute("COMMIT")
            ended = time.perf_counter()
            durations.append(ended - begun)
            if ended >= deadline:
                break
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
        remove_database(path)
    latency = Latency.of_seconds("commit", durations)
    assert latency is not None
    commits = len(durations)
    return {
        "schema": schema,
        "rows_per_commit": rows_per_commit,
        "commits": commits,
        "seconds": elapsed,
        "commits_per_second": commits / elapsed,
        "rows_per_second": commits * rows_per_commit / elapsed,
        "commit_p50_ms": latency.p50_ms,
        "commit_p99_ms": latency.p99_ms,
        "latency": latency,
    }


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
