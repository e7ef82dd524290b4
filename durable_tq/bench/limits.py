"""What SQLite itself allows on this disk: plain inserts committed one row and 100 rows at a
time, with the broker's pragmas (WAL, the chosen ``synchronous``), no broker involved.

Every broker figure can then be read against it: a broker doing one commit per request can at
best match the single-row rate; group commit is how it gets beyond it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from durable_tq.bench.report import Latency

ROWS_PER_COMMIT = (1, 100)


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA cache_size = -32768")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS tasks ("
        " id INTEGER PRIMARY KEY, queue TEXT NOT NULL, payload TEXT NOT NULL,"
        " created_at REAL NOT NULL)"
    )
    return conn


def measure_commits(
    path: Path, synchronous: str, rows_per_commit: int, seconds: float, payload_bytes: int
) -> dict[str, Any]:
    """Commit ``rows_per_commit`` inserts at a time for ``seconds``; rates and commit times."""
    conn = _connect(path, synchronous)
    payload = '{"p":"' + "x" * max(0, payload_bytes - 8) + '"}'
    durations: list[float] = []
    try:
        rows = [("limits", payload, 0.0)] * rows_per_commit
        started = time.perf_counter()
        deadline = started + seconds
        while True:
            begun = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO tasks (queue, payload, created_at) VALUES (?, ?, ?)", rows
            )
            conn.execute("COMMIT")
            ended = time.perf_counter()
            durations.append(ended - begun)
            if ended >= deadline:
                break
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    latency = Latency.of_seconds("commit", durations)
    assert latency is not None
    commits = len(durations)
    return {
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
