"""The typer application every command module registers on."""

from __future__ import annotations

import typer

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


@app.callback()
def _root() -> None:
    # A callback keeps typer in group mode, so `durable-tq serve` works even while serve is
    # the only command registered.
    pass
