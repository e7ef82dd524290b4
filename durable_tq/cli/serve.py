"""``durable-tq serve``: run the broker in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from durable_tq import backends, config, errors
from durable_tq.cli._app import EXIT_OPERATION_ERROR, app
from durable_tq.cli._common import fail, handles_errors
from durable_tq.servers import tcp as server

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: What the gRPC listener imports, all from the grpc extra (grpcio, grpcio-health-checking,
#: grpcio-reflection, grpcio-status, protobuf).
GRPC_MODULES = ("grpc", "grpc_health.v1.health", "grpc_reflection.v1alpha.reflection",
                "grpc_status", "google.protobuf")  # fmt: skip


@app.command()
@handles_errors
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on [default: 127.0.0.1].")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="TCP port; 0 picks a free one [default: 7480].")
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            help="SQLite database file [default: ./durable_tq.db], or a "
            "postgresql://USER@HOST:PORT/DB URL (docs/postgres.md)."
        ),
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config", help="TOML settings file [default: ./durable_tq.toml if present]."
        ),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR [default: INFO].")
    ] = None,
    grpc: Annotated[
        str | None,
        typer.Option(
            "--grpc",
            metavar="HOST:PORT",
            help="Also serve the gRPC API there (needs durable_tq[grpc]) [default: off].",
        ),
    ] = None,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            metavar="HOST:PORT",
            help="Where the HTTP API listens [default: the TCP host, port + 1: 7481].",
        ),
    ] = None,
    no_http: Annotated[
        bool, typer.Option("--no-http", help="Serve no HTTP API (TCP only).")
    ] = False,
) -> None:
    """Run the broker. Settings: flags, then DURABLE_TQ_* variables, then the file, then defaults.

    Prints one line once it listens, e.g. ``durable_tq listening on tcp://127.0.0.1:7480
    (database /srv/durable_tq.db)``. SIGINT or SIGTERM stops it gracefully; a second one exits
    at once.
    """
    # Bad settings (exit 2) and a port in use (exit 1) end as every command ends: one line.
    http_host, http_port = _http_address(http)
    settings = config.load_settings(
        config_file,
        host=host,
        port=port,
        **_database_options(db),
        log_level=log_level,
        http_enabled=False if no_http else (True if http else None),
        http_host=http_host,
        http_port=http_port,
        grpc=grpc,
    )
    if settings.grpc_address is not None:
        missing = _missing_grpc_module()
        if missing is not None:
            fail(
                f"the gRPC API needs the grpc extra ({missing} cannot be imported): "
                "pip install 'durable_tq[grpc]'",
                EXIT_OPERATION_ERROR,
            )
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT, stream=sys.stderr)
    database = settings.database

    def announce(started: server.BrokerServer) -> None:
        print(f"durable_tq listening on {started.url} (database {database})", flush=True)
        if started.http is not None:
            print(f"durable_tq HTTP API on {started.http.url}", flush=True)
        if started.grpc_port is not None:
            from durable_tq.servers.grpc.listener import grpc_url

            print(f"durable_tq gRPC on {grpc_url(settings, started.grpc_port)}", flush=True)

    try:
        server.run(settings, on_listening=announce)
    except errors.ConfigError:
        raise
    except errors.DurableTQError as exc:  # storage failed while opening the database
        fail(f"cannot run the broker: {exc.message}", EXIT_OPERATION_ERROR)


def _missing_grpc_module() -> str | None:
    """The first module of the grpc extra that cannot be imported, or None. Imported, not just
    looked up: a package present but broken (or half installed) fails here, in one line,
    rather than as a traceback once the broker is starting."""
    for name in GRPC_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            return name
    return None


def _http_address(value: str | None) -> tuple[str | None, int | None]:
    """``--http HOST:PORT`` (or ``:PORT``, ``[::1]:PORT``) as (host or None, port)."""
    if value is None:
        return None, None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise errors.ConfigError(f"--http {value!r}: give HOST:PORT, e.g. 127.0.0.1:7481")
    return host.strip("[]") or None, int(port)


def _database_options(db: str | None) -> dict[str, object]:
    """``--db``: a PostgreSQL URL sets ``db_url``, anything else is the SQLite ``db_path``."""
    if db is None:
        return {}
    if backends.is_postgres_url(db):
        return {"db_url": db}
    return {"db_path": Path(db), "db_url": None}
