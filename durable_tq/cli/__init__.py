"""The ``durable-tq`` command line: one module per group of commands, one shared typer app."""

from __future__ import annotations

# Each import registers its commands on ``app``.
from durable_tq.cli import admin, bench, ops, serve, tasks, torture, worker  # noqa: F401
from durable_tq.cli._app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
