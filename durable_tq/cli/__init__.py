"""The ``durable-tq`` command line: one module per group of commands, one shared typer app."""

from __future__ import annotations

import os
import sys

# Each import registers its commands on ``app``.
from durable_tq.cli import admin, bench, ops, schedule, serve, tasks, torture, worker  # noqa: F401
from durable_tq.cli._app import DEBUG_ENV, app


def main() -> None:
    app(args=_take_traceback_flag(sys.argv[1:]))


def _take_traceback_flag(args: list[str]) -> list[str]:
    """``--traceback`` works anywhere before ``--``: it turns on DURABLE_TQ_DEBUG."""
    end = args.index("--") if "--" in args else len(args)
    if "--traceback" not in args[:end]:
        return args
    os.environ[DEBUG_ENV] = "1"
    return [arg for arg in args[:end] if arg != "--traceback"] + args[end:]


__all__ = ["app", "main"]
