"""Migrations: applied once, in order, recorded; a newer database is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from durable_tq import errors
from durable_tq.backends.sqlite import migrate

EXPECTED_OBJECTS = {
    ("table", "tasks"),
    ("table", "queues"),
    ("table", "queue_counts"),
    ("table", "workers"),
    ("index", "tasks_ready"),
    ("index", "tasks_due"),
    ("index", "tasks_lease_expiry"),
    ("index", "tasks_worker_leases"),
    ("index", "tasks_finished"),
    ("index", "tasks_queue_state"),
    ("index", "tasks_unique_live"),
    ("table", "schedules"),
    ("index", "schedules_due"),
    ("index", "tasks_ready_by_key"),
    ("index", "tasks_leased_by_key"),
    ("index", "tasks_expiry"),
    ("table", "task_deps"),
    ("index", "task_deps_parent"),
}


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def schema(conn: sqlite3.Connection) -> set[tuple[str, str]]:
    rows = conn.execute(
        "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
    ).fetchall()
    return {(t, n) for t, n in rows}


def test_migrations_from_zero_give_the_schema_we_expect(tmp_path: Path) -> None:
    conn = connect(tmp_path / "a.db")
    applied = migrate.apply_migrations(conn)
    assert [m.version for m in applied] == list(range(1, migrate.latest_version() + 1))
    assert schema(conn) == EXPECTED_OBJECTS
    assert migrate.current_version(conn) == migrate.latest_version()


def test_migrations_run_once(tmp_path: Path) -> None:
    conn = connect(tmp_path / "a.db")
    migrate.apply_migrations(conn)
    before = conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    assert migrate.apply_migrations(conn) == []
    assert conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == before


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    conn = connect(tmp_path / "a.db")
    migrate.apply_migrations(conn)
    conn.execute(f"PRAGMA user_version = {migrate.latest_version() + 1}")
    with pytest.raises(errors.ConfigError, match="newer than this durable_tq"):
        migrate.apply_migrations(conn)


def test_a_failing_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_good.sql").write_text("CREATE TABLE a (x INTEGER);\n")
    (folder / "0002_bad.sql").write_text(
        "CREATE TABLE b (x INTEGER);\nINSERT INTO nope VALUES (1);\n"
    )
    conn = connect(tmp_path / "a.db")
    with pytest.raises(errors.StorageError, match="0002_bad"):
        migrate.apply_migrations(conn, folder)
    assert migrate.current_version(conn) == 1
    assert ("table", "b") not in schema(conn)


def test_migration_files_must_be_numbered_without_gaps(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(errors.ConfigError, match="without gaps"):
        migrate.load_migrations(tmp_path)


def test_migration_3_rebuilds_tasks_with_their_rows_and_keeps_ids_unused(tmp_path: Path) -> None:
    """0003 rebuilds the tasks table (a CHECK cannot be altered): rows, indexes and the id
    sequence survive, and the new state ``waiting`` is accepted."""
    full = migrate.load_migrations()
    folder = tmp_path / "v2"
    folder.mkdir()
    for m in full[:2]:
        (folder / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)
    conn = connect(tmp_path / "a.db")
    migrate.apply_migrations(conn, folder)
    insert = (
        "INSERT INTO tasks (queue, state, payload, max_attempts, lease_seconds, run_at,"
        " created_at, updated_at, finished_at, result, unique_key)"
        " VALUES ('q', ?, '{\"n\": 1}', 5, 30, 1, 1, 1, ?, ?, ?)"
    )
    conn.execute(insert, ("queued", None, None, "k"))
    conn.execute(insert, ("succeeded", 2.0, "[1, 2]", None))
    conn.execute(insert, ("dead", 3.0, None, None))
    conn.execute("DELETE FROM tasks WHERE id = 3")  # the highest id is gone, not free
    before = conn.execute(
        "SELECT id, queue, state, payload, finished_at, result, unique_key FROM tasks"
    ).fetchall()
    migrate.apply_migrations(conn)
    assert migrate.current_version(conn) == migrate.latest_version()
    after = conn.execute(
        "SELECT id, queue, state, payload, finished_at, result, unique_key FROM tasks"
    ).fetchall()
    assert after == before
    assert schema(conn) == EXPECTED_OBJECTS
    conn.execute(insert, ("waiting", None, None, None))
    ids = [row[0] for row in conn.execute("SELECT id FROM tasks ORDER BY id")]
    assert ids == [1, 2, 4]
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(insert, ("bogus", None, None, None))
    # The live unique_key still holds.
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(insert, ("waiting", None, None, "k"))
