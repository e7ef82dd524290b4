"""Reading a database file directly (``--db``): the broker's read queries, read-only, no lock.

Every function returns the same shape as the wire reply of the operation it stands in for, so
the commands print one way whichever source they read.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from durable_tq import backends, errors
from durable_tq.backends.sqlite import migrate, queries, reads, store
from durable_tq.wire import codec


@contextmanager
def open_database(db: str | Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a durable_tq database whose schema this version knows."""
    if backends.is_postgres_url(str(db)):
        raise errors.ConfigError(
            "--db reads SQLite files only; for PostgreSQL give --url of any broker on the "
            "database (they all answer the same), or query it with psql"
        )
    path = Path(db)
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
    """The ``stats`` reply; ``connections`` is None (only a running broker knows it)."""
    now = time.time()
    result: dict[str, Any] = _read(
        conn, "reading stats", lambda c: reads.read_stats(c, now, worker_timeout)
    )
    result["connections"] = None
    return result


def list_tasks(
    conn: sqlite3.Connection,
    queue: str | None,
    state: str | None,
    limit: int,
    after_id: int | None,
) -> dict[str, Any]:
    """One page of the ``list`` reply, as the broker pages it."""
    page = _read(
        conn,
        "listing tasks",
        lambda c: reads.read_task_page(c, queue, state, limit, after_id),
    )
    return _as_on_the_wire(page)


def get_task(conn: sqlite3.Connection, task_id: int) -> dict[str, Any]:
    """The ``task`` object of the ``get`` reply; NotFound as the broker would say it."""
    row = _read(
        conn, "reading a task", lambda c: c.execute(queries.GET_TASK, (task_id,)).fetchone()
    )
    if row is None:
        raise errors.NotFound(f"task {task_id} does not exist", task_id=task_id)
    return _as_on_the_wire(reads.task_from_row(row))


def _as_on_the_wire(result: dict[str, Any]) -> dict[str, Any]:
    """What a client would read: raw JSON (payloads, results) decoded."""
    decoded: dict[str, Any] = json.loads(codec.encode(result))
    return decoded
