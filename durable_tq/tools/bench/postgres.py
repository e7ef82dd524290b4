"""``bench --db postgresql://...``: what the PostgreSQL server spends on the benchmark.

The brokers under test are the bench's own processes; the database server is not, but its
backend processes (one per connection, ``pg_stat_activity``) can be read like any other. The
CPU of the backends connected to the benchmark's database, summed, is PostgreSQL's share of
the work; its background processes (WAL writer, checkpointer) serve every database on the
server and are left out.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs in the dev extras

BACKENDS = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND pid != pg_backend_pid()
"""


class DatabaseWatch:
    """The CPU time of the backends serving one database, read when asked."""

    def __init__(self, url: str) -> None:
        import psycopg

        self._conn: Any = psycopg.connect(url, autocommit=True, connect_timeout=10)
        row = self._conn.execute("SHOW server_version").fetchone()
        self.version = str(row[0]) if row else "?"

    def cpu(self) -> dict[int, float]:
        """Seconds of CPU each backend of the database has used so far, by pid."""
        seconds = {}
        for (pid,) in self._conn.execute(BACKENDS).fetchall():
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(int(pid)).cpu_times()
                seconds[int(pid)] = times.user + times.system
        return seconds

    @staticmethod
    def spent(before: dict[int, float], after: dict[int, float]) -> float:
        """CPU seconds between two readings (a backend that came meanwhile counts whole;
        one that left is lost, and the brokers' connections stay)."""
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())

    def close(self) -> None:
        self._conn.close()
