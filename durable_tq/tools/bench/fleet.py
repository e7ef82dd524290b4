"""Load processes: start them, hold them at a common start line, watch them, collect results.

Every load role runs in a process of its own, forked from a clean fork server (so nothing of
the coordinator's threads or event loop is inherited). A process connects, reports ready and
waits; once all are ready the coordinator takes its "before" snapshot and releases them
together. While they run
it polls their counters (shared memory) for the progress bar, and for open-ended roles decides
when to stop them. A process that fails sends its traceback and the whole run stops.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import queue as queue_module
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from durable_tq.tools.bench import loadgen
from durable_tq.tools.bench.loadgen import LoadResult, LoadSpec

#: A process must connect and report ready within this many seconds.
STARTUP_TIMEOUT = 120.0
#: Between looks at the counters (progress bar, stop conditions).
POLL_INTERVAL = 0.05
#: Imported once by the fork server, so load processes start without importing them again.
PRELOAD_MODULES = ["durable_tq.tools.bench.loadgen", "durable_tq.client", "durable_tq.worker"]


class LoadError(Exception):
    """A load process failed (its traceback is the message), or did not start in time."""


def _process_main(
    spec: LoadSpec,
    index: int,
    messages: Any,
    go: Any,
    stop: Any,
    counters: Any,
) -> None:
    """The body of a load process."""

    def gate() -> None:
        messages.put(("ready", index, None))
        go.wait()

    counter = loadgen.Counter(counters, index)
    try:
        if spec.role in loadgen.OPEN_ENDED_ROLES:
            result = loadgen.OPEN_ENDED_ROLES[spec.role](spec, gate, counter, stop)
        else:
            result = loadgen.ROLES[spec.role](spec, gate, counter)
    except BaseException:
        messages.put(("error", index, traceback.format_exc()))
        return
    messages.put(("result", index, result))


def _context() -> multiprocessing.context.ForkServerContext:
    """Processes forked from a fresh server process that has imported the load roles once.

    Like ``spawn``, nothing of the coordinator (its threads, the progress bar) is inherited;
    unlike it, a new load process starts in milliseconds instead of importing everything again.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD_MODULES)
    return context


class Fleet:
    """The load processes of one measurement."""

    def __init__(self, specs: Sequence[LoadSpec]) -> None:
        unknown = [s.role for s in specs if s.role not in loadgen.ROLES | loadgen.OPEN_ENDED_ROLES]
        if unknown:
            raise ValueError(f"unknown load roles: {unknown}")
        self.specs = list(specs)
        self._context = _context()

    def run(
        self,
        *,
        before_start: Callable[[], None],
        on_progress: Callable[[list[int]], None],
        should_stop: Callable[[list[int]], bool] | None = None,
    ) -> list[LoadResult]:
        """Run every process to the end; their results in the order of ``specs``.

        ``before_start`` runs once all are connected, right before they are released.
        ``on_progress`` gets every process's counter, about 20 times a second.
        ``should_stop`` (given the same) decides when open-ended roles are told to stop.
        """
        ctx = self._context
        messages: Any = ctx.Queue()
        go = ctx.Event()
        stop = ctx.Event()
        counters = ctx.RawArray("q", len(self.specs))
        processes: list[multiprocessing.context.ForkServerProcess] = [
            ctx.Process(
                target=_process_main,
                args=(spec, index, messages, go, stop, counters),
                name=f"durable-tq-bench-{spec.role}-{index}",
                daemon=True,
            )
            for index, spec in enumerate(self.specs)
        ]
        results: dict[int, LoadResult] = {}
        try:
            for process in processes:
                process.start()
            self._await_ready(messages, processes)
            before_start()
            go.set()
            while len(results) < len(processes):
                progress = list(counters)
                on_progress(progress)
                if should_stop is not None and not stop.is_set() and should_stop(progress):
                    stop.set()
                self._collect(messages, results, processes)
            on_progress(list(counters))
        finally:
            stop.set()
            go.set()
            for process in processes:
                if process.pid is None:  # never started
                    continue
                process.join(10.0)
                if process.is_alive():
                    process.kill()
                    process.join(5.0)
            messages.close()
        return [results[index] for index in range(len(processes))]

    def _await_ready(
        self, messages: Any, processes: Sequence[multiprocessing.context.ForkServerProcess]
    ) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        ready = 0
        while ready < len(processes):
            try:
                kind, index, payload = messages.get(timeout=0.5)
            except queue_module.Empty:
                self._check_alive(processes)
                if time.monotonic() > deadline:
                    raise LoadError(
                        f"only {ready} of {len(processes)} load processes were ready after "
                        f"{STARTUP_TIMEOUT:.0f} s"
                    ) from None
                continue
            if kind == "error":
                raise LoadError(
                    f"load process {index} ({self.specs[index].role}) failed:\n{payload}"
                )
            ready += 1

    def _collect(
        self,
        messages: Any,
        results: dict[int, LoadResult],
        processes: Sequence[multiprocessing.context.ForkServerProcess],
    ) -> None:
        try:
            kind, index, payload = messages.get(timeout=POLL_INTERVAL)
        except queue_module.Empty:
            self._check_alive(processes, results)
            return
        if kind == "error":
            raise LoadError(f"load process {index} ({self.specs[index].role}) failed:\n{payload}")
        if kind == "result":
            results[index] = payload

    def _check_alive(
        self,
        processes: Sequence[multiprocessing.context.ForkServerProcess],
        results: dict[int, LoadResult] | None = None,
    ) -> None:
        for index, process in enumerate(processes):
            if results is not None and index in results:
                continue
            if not process.is_alive() and process.exitcode not in (None, 0):
                raise LoadError(
                    f"load process {index} ({self.specs[index].role}) died with exit code "
                    f"{process.exitcode}"
                )
