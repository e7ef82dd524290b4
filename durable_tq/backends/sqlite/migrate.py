"""Versioned schema: numbered SQL files applied in order, each in one transaction."""

from __future__ import annotations

import logging
import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from durable_tq import errors

log = logging.getLogger("durable_tq.backends.sqlite.migrate")

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, order=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations_dir() -> Path:
    """The migrations shipped in the wheel, or the repository's folder in a source checkout
    (``migrations/sqlite/``; a second backend keeps its own beside it)."""
    packaged = resources.files("durable_tq") / "_migrations" / "sqlite"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[3] / "migrations" / "sqlite"


def load_migrations(folder: Path | None = None) -> list[Migration]:
    folder = folder or migrations_dir()
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise errors.ConfigError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text("utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise errors.ConfigError(f"migrations must be numbered 1..N without gaps, got {versions}")
    return found


def current_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def latest_version() -> int:
    return len(load_migrations())


def apply_migrations(conn: sqlite3.Connection, folder: Path | None = None) -> list[Migration]:
    """Bring the schema up to date; returns what was applied. A newer database is refused.

    The version lives in ``PRAGMA user_version``, set inside the migration's own transaction,
    so a migration and its version number commit together or not at all.
    """
    migrations = load_migrations(folder)
    version = current_version(conn)
    if version > len(migrations):
        raise errors.ConfigError(
            f"database schema version {version} is newer than this durable_tq knows "
            f"({len(migrations)}); upgrade durable_tq or use another database file"
        )
    applied = []
    for migration in migrations[version:]:
        log.info("applying migration %04d_%s", migration.version, migration.name)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in split_statements(migration.sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {migration.version}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise errors.StorageError(
                f"migration {migration.version:04d}_{migration.name} failed: {exc}"
            ) from exc
        applied.append(migration)
    return applied


def split_statements(script: str) -> list[str]:
    """Split a SQL script into complete statements (triggers contain inner semicolons)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        if not buffer and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise errors.ConfigError(f"incomplete SQL statement in migration: {buffer[:80]!r}")
    return statements
