"""``durable-tq serve``: run the broker in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from durable_tq import config, errors
from durable_tq.cli._app import EXIT_OPERATION_ERROR, app
from durable_tq.cli._common import fail, handles_errors
from durable_tq.servers import tcp as server

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
        Path | None, typer.Option(help="SQLite database file [default: ./durable_tq.db].")
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
) -> None:
    """Run the broker. Settings: flags, then DURABLE_TQ_* variables, then the file, then defaults.

    Prints one line once it listens, e.g. ``durable_tq listening on tcp://127.0.0.1:7480
    (database /srv/durable_tq.db)``. SIGINT or SIGTERM stops it gracefully; a second one exits
    at once.
    """
    # Bad settings (exit 2) and a port in use (exit 1) end as every command ends: one line.
    settings = config.load_settings(
        config_file, host=host, port=port, db_path=db, log_level=log_level, grpc=grpc
    )
    if settings.grpc_address is not None and importlib.util.find_spec("grpc_health") is None:
        fail(
            "the gRPC API needs the grpc extra: pip install 'durable_tq[grpc]'",
            EXIT_OPERATION_ERROR,
        )
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT, stream=sys.stderr)
    database = Path(settings.db_path).resolve()

    def announce(started: server.BrokerServer) -> None:
        print(f"durable_tq listening on {started.url} (database {database})", flush=True)
        if started.grpc_port is not None:
            from durable_tq.servers.grpc.listener import grpc_url

            print(f"durable_tq gRPC on {grpc_url(settings, started.grpc_port)}", flush=True)

    try:
        server.run(settings, on_listening=announce)
    except errors.ConfigError:
        raise
    except errors.DurableTQError as exc:  # storage failed while opening the database
        fail(f"cannot run the broker: {exc.message}", EXIT_OPERATION_ERROR)
