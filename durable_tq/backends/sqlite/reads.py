"""The reads behind ``get``, ``list`` and ``stats``: one definition of each answer, shared by
the broker (on its read connections, with its backend's ``sql``) and the offline CLI
(``--db``, SQLite)."""

from __future__ import annotations

import sqlite3
from typing import Any

from msgspec import Raw

from durable_tq.backends.sqlite import queries
from durable_tq.wire.schema import TaskState

Result = dict[str, Any]


def task_from_row(row: sqlite3.Row | tuple[Any, ...]) -> Result:
    """The wire ``task`` object from a row of ``queries.TASK_COLUMNS``; payload and result
    stay the JSON text they were stored as."""
    return {
        "task_id": row[0],
        "queue": row[1],
        "state": row[2],
        "payload": Raw(row[3]),
        "priority": row[4],
        "attempts": row[5],
        "max_attempts": row[6],
        "run_at": row[7],
        "created_at": row[8],
        "updated_at": row[9],
        "lease_expires_at": row[10],
        "worker_id": row[11],
        "last_error": row[12],
        "result": None if row[13] is None else Raw(row[13]),
        "unique_key": row[14],
        "finished_at": row[15],
        "progress": row[16],
        "progress_message": row[17],
        "cancel_requested": bool(row[18]),
        "result_ttl": row[19],
        "expires_at": row[20],
        "concurrency_key": row[21],
    }


# --- reads shared with the offline CLI (``--db``): one definition of each answer ----------


def read_task_page(
    conn: sqlite3.Connection,
    queue: str | None,
    state: str | None,
    limit: int,
    after_id: int | None,
    sql: Any = queries,
) -> Result:
    """One page of the ``list`` reply: tasks by id after ``after_id``, optionally filtered."""
    mark = sql.PARAM
    clauses: list[str] = [f"id > {mark}"]
    params: list[Any] = [after_id or 0]
    if queue is not None:
        clauses.append(f"queue = {mark}")
        params.append(queue)
    if state is not None:
        clauses.append(f"state = {mark}")
        params.append(state)
    text = (
        f"SELECT {sql.TASK_COLUMNS} FROM tasks WHERE {' AND '.join(clauses)}"
        f" ORDER BY id LIMIT {mark}"
    )
    params.append(limit + 1)
    rows = conn.execute(text, params).fetchall()
    page = rows[:limit]
    next_after_id = page[-1][0] if len(rows) > limit else None
    return {"tasks": [task_from_row(r) for r in page], "next_after_id": next_after_id}


def read_stats(
    conn: sqlite3.Connection, now: float, worker_timeout: float, sql: Any = queries
) -> Result:
    """The ``queues`` and ``workers`` fields of the ``stats`` reply."""
    queues: dict[str, Result] = {}

    def entry(name: str) -> Result:
        if name not in queues:
            queues[name] = {state.value: 0 for state in TaskState}
            queues[name].update(paused=False, oldest_queued_age=None)
        return queues[name]

    for name, paused in conn.execute(sql.QUEUES):
        entry(name)["paused"] = bool(paused)
    for name, state, n in conn.execute(sql.QUEUE_COUNTS):
        entry(name)[state] = n
    for name, counts in queues.items():
        if counts[TaskState.QUEUED]:
            oldest = conn.execute(sql.OLDEST_QUEUED, (name,)).fetchone()[0]
            if oldest is not None:
                counts["oldest_queued_age"] = max(0.0, now - oldest)
    workers = conn.execute(sql.LIVE_WORKERS, (now - worker_timeout,)).fetchone()[0]
    return {"queues": queues, "workers": workers}
