"""``durable-tq worker module:attr``: import a ``Worker`` from the app and run it."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
import traceback
from typing import Annotated, Any

import typer

from durable_tq import errors
from durable_tq.cli._app import app
from durable_tq.cli._common import (
    CafileOption,
    ConfigOption,
    TokenOption,
    UrlOption,
    UsageError,
    handles_errors,
    unreachable,
)
from durable_tq.worker import Task, Worker

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

logger = logging.getLogger("durable_tq.worker")


class WorkerNotFound(UsageError):
    """The target does not name a Worker we can import (exit 2)."""


def _app_frame(exc: BaseException, cwd: str) -> traceback.FrameSummary | None:
    """The innermost frame of the app (under ``cwd``), else of any real file."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    in_app = [f for f in frames if os.path.abspath(f.filename).startswith(cwd + os.sep)]
    chosen = in_app or frames
    return chosen[-1] if chosen else None


def _import_module(name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except SyntaxError as exc:  # IndentationError and TabError too
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else "unknown place"
        raise WorkerNotFound(f"cannot import {name}: {exc.msg} ({where})") from exc
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise WorkerNotFound(f"cannot import {name!r} (from {cwd}): {exc}") from exc
        frame = _app_frame(exc, cwd)
        where = f" ({frame.filename}, line {frame.lineno})" if frame else ""
        raise WorkerNotFound(f"importing {name} failed: {exc}{where}") from exc
    except Exception as exc:  # the app's own code failed while it was imported
        frame = _app_frame(exc, cwd)
        where = f" ({frame.filename}, line {frame.lineno})" if frame else ""
        raise WorkerNotFound(
            f"importing {name} failed: {type(exc).__name__}: {exc}{where}"
        ) from exc


def _workers_in(module: Any) -> list[str]:
    return [name for name, value in vars(module).items() if isinstance(value, Worker)]


def _takes_no_arguments(fn: Any) -> bool:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in signature.parameters.values()
    )


def _not_a_worker(target: str, module_name: str, module: Any, what: str) -> WorkerNotFound:
    names = _workers_in(module)
    if len(names) == 1:
        hint = f" — did you mean {module_name}:{names[0]}?"
    elif names:
        hint = f" — its Workers are {', '.join(f'{module_name}:{n}' for n in names)}"
    else:
        hint = f" — {module_name} holds no Worker"
    return WorkerNotFound(f"{target} is {what}, not a Worker{hint}")


def load_worker(target: str) -> Worker:
    """The Worker ``target`` names: ``module:attribute`` (``module`` alone when it holds one).

    The attribute may also be a function without arguments that returns a Worker. Anything
    else, and an app that fails to import, is a ``WorkerNotFound`` with a one-line reason.
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
        names = _workers_in(module)
        if len(names) != 1:
            raise WorkerNotFound(
                f"{module_name} holds {len(names)} Worker objects; name one as "
                f"{module_name}:ATTRIBUTE"
            )
        found = getattr(module, names[0])
    if isinstance(found, Worker):
        return found
    if isinstance(found, Task):
        raise _not_a_worker(target, module_name, module, f"a task function (queue {found.queue!r})")
    if not callable(found) or not _takes_no_arguments(found):
        what = "a function" if callable(found) else f"a {type(found).__name__}"
        raise _not_a_worker(target, module_name, module, what)
    try:
        made = found()
    except Exception as exc:
        raise WorkerNotFound(f"calling {target}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(made, Worker):
        raise WorkerNotFound(f"{target}() returned a {type(made).__name__}, not a Worker")
    return made


def _overrides(**given: Any) -> dict[str, Any]:
    """The options given on the command line, as ``Worker.configure`` arguments."""
    changes = {name: value for name, value in given.items() if value is not None}
    queues = changes.get("queues")
    if queues is not None:
        changes["queues"] = [name for name in queues.split(",") if name.strip()]
    return changes


@app.command("worker")
@handles_errors
def worker_command(
    target: Annotated[
        str,
        typer.Argument(help="The Worker to run, as module:attribute (e.g. myapp.tasks:worker)."),
    ],
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Tasks run at once.", show_default=False)
    ] = None,
    prefetch: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Tasks held beyond --concurrency, claimed ahead so a freed slot starts its "
            "next task at once (default: the Worker's own, 0 unless the app sets it: a "
            "prefetched task waits here while an idle worker could run it; raise it for "
            "many short tasks).",
            show_default=False,
        ),
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
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            max=256,
            help="Run this many worker processes under one supervisor (for CPU-bound "
            "handlers): each its own connection and worker id; one that dies is started "
            "again; signals go to all of them.",
        ),
    ] = 1,
    connect_timeout: Annotated[
        float | None,
        typer.Option(
            "--connect-timeout",
            min=0.1,
            help="Seconds to wait for the broker at start, then exit 3 (default: wait until "
            "it is there or the worker is stopped).",
            rich_help_panel="Connection",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a worker: claim tasks of its queues and run their handlers until stopped.

    The module is imported from the current folder. The broker is found as every command
    finds it (--url, $DURABLE_TQ_URL, the settings). A worker started before its broker waits
    for it. SIGTERM or SIGINT stops gracefully (no new tasks; running ones get --grace
    seconds, then are released, and tasks prefetched but not started are released at
    once); a second one stops at once.
    """
    level = log_level.upper()
    if level not in LOG_LEVELS:
        raise UsageError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    if level == "INFO":
        # The worker says when it is connected; the client's own "connected" lines repeat it.
        logging.getLogger("durable_tq.client").setLevel(logging.WARNING)
    worker = load_worker(target)  # a bad target is exit 2 here, before any child starts
    if processes > 1:
        raise typer.Exit(_run_pool(processes, worker_id))
    worker.configure(
        **_overrides(
            url=url,
            token=token,
            cafile=cafile,
            config_file=config_file,
            connect_timeout=connect_timeout,
            concurrency=concurrency,
            prefetch=prefetch,
            queues=queues,
            grace=grace,
            worker_id=worker_id,
        )
    )
    target_url = worker.broker_target().url  # bad settings or URL: exit 2 before anything
    try:
        worker.run_sync(handle_signals=True)
    except (errors.ConnectionLost, errors.ShuttingDown, errors.TooManyConnections) as exc:
        raise unreachable(target_url, exc) from exc
    _exit_past_stuck_threads(worker)


def _run_pool(processes: int, worker_id: str | None) -> int:
    """Supervise ``processes`` children running this same command without --processes."""
    from durable_tq.worker.pool import Pool, child_command

    base = child_command(sys.argv[1:])

    def command(slot: int) -> list[str]:
        if worker_id is None:
            return base  # each child makes its own host-pid-random id
        argv = []
        for arg in base:  # a given id gets the slot number: ids must differ
            if arg == worker_id:
                arg = f"{worker_id}-{slot}"
            elif arg == f"--worker-id={worker_id}":
                arg = f"--worker-id={worker_id}-{slot}"
            argv.append(arg)
        return argv

    return Pool(command, processes).run()


def _exit_past_stuck_threads(worker: Worker) -> None:
    """Handler threads that timed out may still run; Python would wait for them at exit."""
    stuck = worker.abandoned_threads
    if stuck:
        logger.warning(
            "%d thread(s) of timed-out handlers still running; exiting without them", stuck
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
