"""Reading a database file directly (``--db``): the broker's read queries, read-only, no lock.

Every function returns the same shape as the wire reply of the operation it stands in for, so
the commands print one way whichever source they read.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from durable_tq import broker, errors, migrate, queries, store
from durable_tq.protocol import TaskState


@contextmanager
def open_database(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a durable_tq database whose schema this version knows."""
    conn = store.open_readonly(path)
    try:
        try:
            version = migrate.current_version(conn)
        except sqlite3.Error as exc:
            raise store.storage_error(exc, f"reading {path}") from exc
        latest = migrate.latest_version()
        if version == 0:
            raise errors.ConfigError(f"{path} is not a durable_tq database (no schema version)")
        if version > latest:
            raise errors.ConfigError(
                f"{path} has schema version {version}, newer than this durable_tq knows "
                f"({latest}); use a newer durable-tq"
            )
        yield conn
    finally:
        conn.close()


def _read(conn: sqlite3.Connection, doing: str, fn: Any) -> Any:
    """Run ``fn(conn)`` in one read transaction: one consistent snapshot."""
    try:
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise store.storage_error(exc, doing) from exc


def stats(conn: sqlite3.Connection, worker_timeout: float) -> dict[str, Any]:
    """The ``stats`` reply; ``connections`` is None (only a running broker knows it).

    Mirrors ``Broker.stats`` (whose reading is a closure inside the method), query by query.
    """
    now = time.time()

    def read(conn: sqlite3.Connection) -> dict[str, Any]:
        queues: dict[str, dict[str, Any]] = {}

        def entry(name: str) -> dict[str, Any]:
            if name not in queues:
                queues[name] = {state.value: 0 for state in TaskState}
                queues[name].update(paused=False, oldest_queued_age=None)
            return queues[name]

        for name, paused in conn.execute(queries.QUEUES):
            entry(name)["paused"] = bool(paused)
        for name, state, n in conn.execute(queries.QUEUE_COUNTS):
            entry(name)[state] = n
        for name, counts in queues.items():
            if counts[TaskState.QUEUED]:
                row = conn.execute(queries.OLDEST_QUEUED, (name,)).fetchone()
                if row is not None and row[0] is not None:
                    counts["oldest_queued_age"] = max(0.0, now - row[0])
        workers = conn.execute(queries.LIVE_WORKERS, (now - worker_timeout,)).fetchone()[0]
        return {"queues": queues, "workers": workers, "connections": None}

    result: dict[str, Any] = _read(conn, "reading stats", read)
    return result


def list_tasks(
    conn: sqlite3.Connection,
    queue: str | None,
    state: str | None,
    limit: int,
    after_id: int | None,
) -> dict[str, Any]:
    """One page of the ``list`` reply, as the broker pages it."""
    clauses = ["id > ?"]
    params: list[Any] = [after_id or 0]
    if queue is not None:
        clauses.append("queue = ?")
        params.append(queue)
    if state is not None:
        clauses.append("state = ?")
        params.append(state)
    sql = (
        f"SELECT {queries.TASK_COLUMNS} FROM tasks WHERE {' AND '.join(clauses)}"
        " ORDER BY id LIMIT ?"
    )
    params.append(limit + 1)
    rows = _read(conn, "listing tasks", lambda c: c.execute(sql, params).fetchall())
    page = rows[:limit]
    next_after_id = page[-1][0] if len(rows) > limit else None
    return {"tasks": [broker.task_from_row(r) for r in page], "next_after_id": next_after_id}


def get_task(conn: sqlite3.Connection, task_id: int) -> dict[str, Any]:
    """The ``task`` object of the ``get`` reply; NotFound as the broker would say it."""
    row = _read(
        conn, "reading a task", lambda c: c.execute(queries.GET_TASK, (task_id,)).fetchone()
    )
    if row is None:
        raise errors.NotFound(f"task {task_id} does not exist", task_id=task_id)
    task: dict[str, Any] = broker.task_from_row(row)
    return task
