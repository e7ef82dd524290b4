"""``durable-tq worker module:attr``: import a ``Worker`` from the app and run it."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from typing import Annotated, Any

import typer

from durable_tq import errors
from durable_tq.cli._app import EXIT_OPERATION_ERROR, EXIT_UNREACHABLE, EXIT_USAGE, app
from durable_tq.worker import Worker

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

logger = logging.getLogger("durable_tq.worker")


class WorkerNotFound(Exception):
    """The target does not name a Worker we can import."""


def _import_module(name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # Only a missing target module is a usage error; a missing import inside it is a bug
        # of the app and keeps its traceback.
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise WorkerNotFound(f"cannot import {name!r} (from {cwd}): {exc}") from exc
        raise


def load_worker(target: str) -> Worker:
    """The Worker ``target`` names: ``module:attribute`` (``module`` alone when it holds one).

    The attribute may also be a function without arguments that returns a Worker.
    """
    module_name, _, attribute = target.partition(":")
    if not module_name:
        raise WorkerNotFound(f"expected module:attribute, got {target!r}")
    module = _import_module(module_name)
    found: Any
    if attribute:
        found = module
        for part in attribute.split("."):
            try:
                found = getattr(found, part)
            except AttributeError:
                raise WorkerNotFound(f"{module_name} has no attribute {attribute!r}") from None
    else:
        workers = [value for value in vars(module).values() if isinstance(value, Worker)]
        if len(workers) != 1:
            raise WorkerNotFound(
                f"{module_name} holds {len(workers)} Worker objects; name one as "
                f"{module_name}:ATTRIBUTE"
            )
        found = workers[0]
    if not isinstance(found, Worker) and callable(found):
        found = found()
    if not isinstance(found, Worker):
        raise WorkerNotFound(f"{target} is a {type(found).__name__}, not a durable_tq.Worker")
    return found


def _overrides(
    url: str | None,
    token: str | None,
    concurrency: int | None,
    queues: str | None,
    grace: float | None,
    worker_id: str | None,
) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if url is not None:
        changes["url"] = url
    if token is not None:
        changes["token"] = token
    if concurrency is not None:
        changes["concurrency"] = concurrency
    if queues is not None:
        changes["queues"] = [name for name in queues.split(",") if name.strip()]
    if grace is not None:
        changes["grace"] = grace
    if worker_id is not None:
        changes["worker_id"] = worker_id
    return changes


def _usage(message: str) -> typer.Exit:
    typer.echo(f"durable-tq worker: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


@app.command("worker")
def worker_command(
    target: Annotated[
        str,
        typer.Argument(help="The Worker to run, as module:attribute (e.g. myapp.tasks:worker)."),
    ],
    url: Annotated[
        str | None,
        typer.Option(
            envvar="DURABLE_TQ_URL",
            help="Broker address, tcp://HOST:PORT or tls://HOST:PORT (default: the Worker's).",
            show_default=False,
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="DURABLE_TQ_TOKEN", help="Auth token.", show_default=False),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Tasks run at once.", show_default=False)
    ] = None,
    queues: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated queues (default: all with a handler).", show_default=False
        ),
    ] = None,
    grace: Annotated[
        float | None,
        typer.Option(
            min=0, help="Seconds running tasks get to finish on SIGTERM.", show_default=False
        ),
    ] = None,
    worker_id: Annotated[
        str | None,
        typer.Option(
            help="How the broker knows this worker (default: the Worker's, else host-pid-random)."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run a worker: claim tasks of its queues and run their handlers until stopped.

    The module is imported from the current folder. SIGTERM or SIGINT stops gracefully (no
    new tasks; running ones get --grace seconds, then are released); a second one stops at
    once.
    """
    level = log_level.upper()
    if level not in LOG_LEVELS:
        raise _usage(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    try:
        worker = load_worker(target)
        worker.configure(**_overrides(url, token, concurrency, queues, grace, worker_id))
    except (WorkerNotFound, errors.ConfigError) as exc:
        raise _usage(str(exc)) from None
    try:
        worker.run_sync(handle_signals=True)
    except KeyboardInterrupt:  # Ctrl-C before the worker was up (signals not yet handled)
        raise typer.Exit(130) from None
    except errors.ConfigError as exc:
        raise _usage(str(exc)) from None
    except (errors.ConnectionLost, errors.ShuttingDown, errors.TooManyConnections) as exc:
        typer.echo(f"durable-tq worker: cannot reach the broker: {exc}", err=True)
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except errors.DurableTQError as exc:
        typer.echo(f"durable-tq worker: {exc.code}: {exc.message}", err=True)
        raise typer.Exit(EXIT_OPERATION_ERROR) from None
    _exit_past_stuck_threads()


def _exit_past_stuck_threads() -> None:
    """Handler threads that timed out may still run; Python would wait for them at exit."""
    stuck = [
        thread
        for thread in threading.enumerate()
        if thread is not threading.main_thread() and not thread.daemon and thread.is_alive()
    ]
    if stuck:
        logger.warning(
            "%d thread(s) of timed-out handlers still running; exiting without them", len(stuck)
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
