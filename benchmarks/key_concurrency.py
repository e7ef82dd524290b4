"""Claim cost of a key-limited queue with 100k ready tasks on one saturated key.

Runs the broker's own claim (``Broker.claim`` through the group-commit writer) on a real SQLite
file: one key ``hot`` holds N ready tasks and has its ``key_concurrency`` worth leased, a few
other keys have work. A claim must skip ``hot``'s tasks through the index, so its cost should
not move between N = 1k and N = 100k. Usage: ``python benchmarks/key_concurrency.py``.
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from durable_tq.backends.sqlite import migrate
from durable_tq.config import load_settings
from durable_tq.core.broker import Broker, Session

OTHER_KEYS = 20
CLAIMS = 200


def fill(path: Path, hot_tasks: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    migrate.apply_migrations(conn)
    now = time.time()
    rows = [("kq", "queued", "null", 0, 5, 30.0, now, now, now, "hot")] * hot_tasks
    rows += [
        ("kq", "queued", "null", 0, 5, 30.0, now, now, now, f"k{n % OTHER_KEYS}")
        for n in range(CLAIMS * 2)
    ]
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO tasks (queue, state, payload, priority, max_attempts, lease_seconds, run_at,"
        " created_at, updated_at, concurrency_key) VALUES (?,?,?,?,?,?,?,?,?,?)",
        rows,
    )
    conn.execute("INSERT INTO queue_counts VALUES ('kq', 'queued', ?)", (hot_tasks + CLAIMS * 2,))
    conn.execute("INSERT INTO queues (name, key_concurrency) VALUES ('kq', 1)")
    conn.execute("COMMIT")
    conn.close()


async def measure(hot_tasks: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.db"
        fill(path, hot_tasks)
        settings = load_settings(db_path=path, synchronous="NORMAL")
        session = Session(greeted=True)
        async with Broker(settings) as broker:
            # Saturate "hot": its one allowed lease is out.
            first = await broker.claim(["kq"], 1, session=session)
            assert first["tasks"], "nothing claimed"
            times = []
            for _ in range(CLAIMS):
                started = time.perf_counter()
                got = (await broker.claim(["kq"], 1, session=session))["tasks"]
                times.append(time.perf_counter() - started)
                for task in got:  # keep the other keys flowing
                    await broker.ack(task["task_id"], task["lease_token"])
            return statistics.median(times) * 1e6, sorted(times)[int(len(times) * 0.99)] * 1e6


async def main() -> None:
    print("ready tasks on the saturated key | claim median (us) | p99 (us)")
    for hot in (1_000, 10_000, 100_000):
        median, p99 = await measure(hot)
        print(f"{hot:>32,} | {median:>17.0f} | {p99:>8.0f}")


if __name__ == "__main__":
    anyio.run(main)
