"""Operator commands about the database and settings: migrate, backup, config."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from durable_tq import backends, config, errors
from durable_tq.backends.sqlite import migrate, store
from durable_tq.cli._app import app
from durable_tq.cli._common import (
    ConfigOption,
    JsonOption,
    UsageError,
    handles_errors,
    plural,
    print_json,
    stdout_console,
)

DbPathOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="The database file, or a postgresql:// URL (default: db_url or db_path from "
        "the settings).",
        show_default=False,
    ),
]


def _database_path(db: str | None, config_file: Path | None) -> tuple[Path, config.Settings]:
    if backends.is_postgres_url(db):
        settings = config.load_settings(config_file, db_url=db)
    else:
        settings = config.load_settings(config_file, db_path=None if db is None else Path(db))
        if db is not None:
            settings = settings.model_copy(update={"db_url": None})
    return Path(settings.db_path), settings


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


# --- migrate ------------------------------------------------------------------------------------


@app.command("migrate", rich_help_panel="Maintain")
@handles_errors
def migrate_database(
    db: DbPathOption = None,
    config_file: ConfigOption = None,
    create: Annotated[
        bool, typer.Option("--create", help="Create the database file if it does not exist.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Apply the schema migrations to the database file and print its schema version.

    The broker does this itself at start-up; this command is for upgrading ahead of time. It
    refuses while a broker holds the file.
    """
    path, settings = _database_path(db, config_file)
    if settings.db_url is not None:
        _migrate_postgres(settings.db_url, json_output)
        return
    if not path.parent.is_dir():
        raise UsageError(f"folder {path.parent} does not exist")
    existed = path.exists()
    if not existed and not create:
        raise UsageError(
            f"database {path} does not exist; add --create to make a new one (the broker also "
            "creates it when it first starts)"
        )
    lock = store.DatabaseLock(path)
    try:
        lock.acquire()
    except errors.ConfigError as exc:
        holder = _lock_holder(lock.path)
        raise errors.Conflict(
            f"{path} is in use by a running broker ({holder}); it applies migrations itself "
            "when it starts. Stop it to migrate by hand"
        ) from exc
    try:
        before, applied, after = _migrate_file(path, settings)
    finally:
        lock.release()
    latest = migrate.latest_version()
    if json_output:
        print_json(
            {
                "database": str(path),
                "created": not existed,
                "from_version": before,
                "version": after,
                "latest_version": latest,
                "applied": [f"{m.version:04d}_{m.name}" for m in applied],
            }
        )
        return
    console = stdout_console()
    if not existed:
        console.print(Text.assemble("created ", (str(path), "bold")))
    for migration in applied:
        console.print(
            Text.assemble("applied ", (f"{migration.version:04d}_{migration.name}", "green"))
        )
    state = "up to date" if after == latest else f"latest is {latest}"
    console.print(Text.assemble((str(path), "bold"), f": schema version {after} ({state})"))


def _migrate_postgres(url: str, json_output: bool) -> None:
    """PostgreSQL: migrate under the migration advisory lock; safe while brokers run (a
    broker starting meanwhile waits for the lock, then finds the schema up to date)."""
    try:
        from durable_tq.backends.postgres import migrate as pg_migrate
        from durable_tq.backends.postgres import store as pg_store
    except ImportError as exc:
        raise UsageError(
            "PostgreSQL needs the postgres extra: pip install 'durable_tq[postgres]'"
        ) from exc
    shown = pg_store.describe_url(url)
    conn = pg_store.connect(url)
    try:
        before = pg_migrate.current_version(conn)
        try:
            applied = pg_migrate.apply_migrations(conn)
        except errors.ConfigError as exc:
            raise errors.Conflict(exc.message) from exc
        after = pg_migrate.current_version(conn)
    finally:
        conn.close()
    latest = pg_migrate.latest_version()
    if json_output:
        print_json(
            {
                "database": shown,
                "created": False,
                "from_version": before,
                "version": after,
                "latest_version": latest,
                "applied": [f"{m.version:04d}_{m.name}" for m in applied],
            }
        )
        return
    console = stdout_console()
    for migration in applied:
        console.print(
            Text.assemble("applied ", (f"{migration.version:04d}_{migration.name}", "green"))
        )
    state = "up to date" if after == latest else f"latest is {latest}"
    console.print(Text.assemble((shown, "bold"), f": schema version {after} ({state})"))


def _lock_holder(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        pid = ""
    return f"pid {pid}, lock {lock_path}" if pid else f"lock {lock_path}"


def _migrate_file(
    path: Path, settings: config.Settings
) -> tuple[int, list[migrate.Migration], int]:
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise store.storage_error(exc, f"opening {path}") from exc
    try:
        store.configure(conn, settings)
        before = migrate.current_version(conn)
        try:
            applied = migrate.apply_migrations(conn)
        except errors.ConfigError as exc:  # a newer schema: the file is fine, we are too old
            raise errors.Conflict(exc.message) from exc
        return before, applied, migrate.current_version(conn)
    except sqlite3.Error as exc:
        raise store.storage_error(exc, f"migrating {path}") from exc
    finally:
        conn.close()


# --- backup -------------------------------------------------------------------------------------


def _backup_to(source_path: Path, target: Path) -> dict[str, Any]:
    """Copy ``source_path`` into ``target`` (a new file) in one step of the online backup API.

    One step (``pages=-1``) copies the whole database inside one read transaction: a consistent
    snapshot, taken while the broker keeps writing to its WAL. Copying in small steps would
    restart from the beginning every time another connection writes.
    """
    source = store.open_readonly(source_path)
    try:
        try:
            _create_owner_only(target)
            copy = sqlite3.connect(target, isolation_level=None)
        except sqlite3.Error as exc:
            raise store.storage_error(exc, f"creating {target}") from exc
        try:
            source.backup(copy)
        except sqlite3.Error as exc:
            raise store.storage_error(exc, f"copying {source_path} to {target}") from exc
        finally:
            copy.close()
    finally:
        source.close()
    return _verify(target)


def _create_owner_only(path: Path) -> None:
    """An empty file only its owner may read, whatever the umask: the copy holds every payload.
    SQLite then writes into it (and gives a journal the same mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise errors.StorageError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _verify(path: Path) -> dict[str, Any]:
    """Open the copy on its own and check it: integrity, schema version, task count."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        try:
            problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            version = migrate.current_version(conn)
            tasks = conn.execute("SELECT count(*) FROM tasks").fetchone()[0] if version else 0
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise store.storage_error(exc, f"checking the backup {path}") from exc
    if problems != ["ok"]:
        raise errors.StorageError(
            f"the backup {path} failed PRAGMA integrity_check: {'; '.join(problems[:5])}"
        )
    return {
        "pages": pages,
        "page_size": page_size,
        "bytes": pages * page_size,
        "schema_version": version,
        "tasks": tasks,
        "integrity_check": "ok",
    }


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@app.command(rich_help_panel="Maintain")
@handles_errors
def backup(
    target: Annotated[Path, typer.Argument(metavar="PATH", help="Where to write the copy.")],
    db: DbPathOption = None,
    config_file: ConfigOption = None,
    force: Annotated[bool, typer.Option("--force", help="Replace PATH if it exists.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Copy the database consistently while the broker runs (SQLite online backup).

    Needs no broker lock and never stops the broker. The copy is checked with PRAGMA
    integrity_check before it takes PATH's name.
    """
    source, settings = _database_path(db, config_file)
    if settings.db_url is not None:
        raise UsageError(
            "backup copies SQLite files; back a PostgreSQL database up with pg_dump "
            "(docs/postgres.md)"
        )
    if not source.exists():
        raise UsageError(f"database {source} does not exist")
    if target.exists() and not force:
        raise UsageError(f"{target} already exists; add --force to replace it")
    if target.resolve() == source.resolve():
        raise UsageError("PATH is the database itself")
    if not target.parent.is_dir():
        raise UsageError(f"folder {target.parent} does not exist")
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    started = time.monotonic()
    try:
        report = _backup_to(source, partial)
        _fsync(partial)
        os.replace(partial, target)
        _fsync(target.parent)
    finally:
        for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
            leftover.unlink(missing_ok=True)
    report = {
        "database": str(source),
        "backup": str(target),
        **report,
        "seconds": round(time.monotonic() - started, 3),
    }
    if json_output:
        print_json(report)
        return
    console = stdout_console()
    console.print(Text.assemble("backed up ", (str(source), "bold"), " to ", (str(target), "bold")))
    console.print(
        f"{_human_bytes(int(report['bytes']))} ({report['pages']:,} pages x "
        f"{report['page_size']:,} bytes), {plural(int(report['tasks']), 'task')}, "
        f"schema version {report['schema_version']}"
    )
    console.print(Text.assemble(("integrity_check ok", "green"), f", {report['seconds']:.2f}s"))


# --- config -------------------------------------------------------------------------------------


@app.command("config", rich_help_panel="Maintain")
@handles_errors
def show_config(
    config_file: ConfigOption = None,
    json_output: JsonOption = False,
) -> None:
    """The effective settings and where each value came from; secrets are masked."""
    path = config.find_config_file(config_file)
    settings = config.load_settings(path)
    rows = config.describe(settings, config.value_sources(path, {}))
    if json_output:
        print_json(
            {
                "config_file": None if path is None else str(path),
                "settings": {
                    name: {"value": value, "source": source} for name, value, source in rows
                },
            }
        )
        return
    table = Table(
        box=box.SIMPLE_HEAD,
        header_style="bold",
        title_justify="left",
        title=f"Settings — {path if path is not None else 'no config file'}",
    )
    table.add_column("Setting", style="bold", no_wrap=True)
    table.add_column("Value")
    table.add_column("Source", no_wrap=True)
    for name, value, source in rows:
        table.add_row(name, value, Text(source, style="dim" if source == "default" else "cyan"))
    stdout_console().print(table)
