"""Versioned schema on PostgreSQL: the numbered files of ``migrations/postgres/``, each
applied in one transaction (PostgreSQL's DDL is transactional), under an advisory lock so
that brokers starting together migrate once."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg

from durable_tq import errors
from durable_tq.backends.sqlite import migrate as sqlite_migrate

log = logging.getLogger("durable_tq.backends.postgres.migrate")

#: pg_advisory_lock key held while migrating ('dtq-migr' as 8 bytes).
MIGRATION_LOCK = 0x6474712D6D696772

Migration = sqlite_migrate.Migration


def migrations_dir() -> Path:
    packaged = resources.files("durable_tq") / "_migrations" / "postgres"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[3] / "migrations" / "postgres"


def load_migrations(folder: Path | None = None) -> list[Migration]:
    return sqlite_migrate.load_migrations(folder or migrations_dir())


def latest_version() -> int:
    return len(load_migrations())


def current_version(conn: psycopg.Connection[Any]) -> int:
    """The schema version (0: no durable_tq schema yet)."""
    row = conn.execute("SELECT to_regclass('durable_tq_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    version = conn.execute("SELECT max(version) FROM durable_tq_schema").fetchone()
    return int(version[0] or 0) if version else 0


def apply_migrations(conn: psycopg.Connection[Any], folder: Path | None = None) -> list[Migration]:
    """Bring the schema up to date on an autocommit connection; returns what was applied.

    The advisory lock makes a second broker wait while the first migrates, then find nothing
    left to do. A database newer than this durable_tq is refused.
    """
    migrations = load_migrations(folder)
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS durable_tq_schema "
            "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)"
        )
        version = current_version(conn)
        if version > len(migrations):
            raise errors.ConfigError(
                f"database schema version {version} is newer than this durable_tq knows "
                f"({len(migrations)}); upgrade durable_tq or use another database"
            )
        applied = []
        for migration in migrations[version:]:
            log.info("applying migration %04d_%s", migration.version, migration.name)
            try:
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO durable_tq_schema VALUES (%s, %s, now())",
                        (migration.version, migration.name),
                    )
            except psycopg.Error as exc:
                raise errors.StorageError(
                    f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                ) from exc
            applied.append(migration)
        return applied
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
