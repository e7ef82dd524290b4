"""The typer application every command module registers on."""

from __future__ import annotations

import os
from typing import Annotated

import typer

import durable_tq

app = typer.Typer(
    name="durable-tq",
    help="durable_tq: a durable task queue on SQLite. Run the broker, workers, and inspect queues.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Exit codes of every command (docs/cli.md).
EXIT_OK = 0
EXIT_OPERATION_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

#: Turned on by ``--traceback``: failing commands and worker logs show whole Python traces.
DEBUG_ENV = "DURABLE_TQ_DEBUG"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"durable-tq {durable_tq.__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_show_version,
            help="Print the version and exit.",
        ),
    ] = False,
    traceback: Annotated[
        bool,
        typer.Option(
            "--traceback",
            help="On failure, print the whole Python trace before the error line (any command "
            "takes it, anywhere on the line; also DURABLE_TQ_DEBUG=1).",
        ),
    ] = False,
) -> None:
    # A callback keeps typer in group mode. --traceback after a command name is taken out
    # of the arguments by main() before typer sees them; here it is only documented.
    if traceback:
        os.environ[DEBUG_ENV] = "1"
