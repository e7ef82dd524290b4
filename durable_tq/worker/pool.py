"""``durable-tq worker --processes N``: N worker processes under one supervisor.

For CPU-bound handlers, as Celery's prefork pool and dramatiq's processes do. Each child is a
full worker (``python -m durable_tq worker ...``) with its own connection and its own worker
id, so the broker and ``durable-tq workers`` see each one. The supervisor imports nothing of
the app; it only starts, watches and stops the children:

- a child that exits while the pool is running is started again (at once the first time,
  then with a growing pause while it keeps dying young, so a crash loop does not spin);
- a child that exits 2 (a bad target or bad settings: starting it again cannot help) stops
  the pool, which then exits 2;
- SIGTERM or SIGINT is passed to every child (they stop gracefully); a second one is passed
  on too (the children stop at once); the supervisor exits when every child has, with 0 if
  all stopped cleanly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger("durable_tq.worker.pool")

#: A child that lived shorter than this counts as dying young (a crash loop).
YOUNG = 2.0
#: Longest pause before starting a child that keeps dying young.
MAX_RESTART_DELAY = 10.0
#: Exit code of a worker whose target or settings are wrong (docs/cli.md).
EXIT_USAGE = 2


@dataclass
class Child:
    """One slot of the pool and the process that fills it now."""

    slot: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    young_deaths: int = 0
    restart_at: float = 0.0
    exits: list[int] = field(default_factory=list)


class Pool:
    """Runs ``command(slot)`` in ``processes`` child processes until stopped."""

    def __init__(self, command: Callable[[int], Sequence[str]], processes: int) -> None:
        self.command = command
        self.children = [Child(slot) for slot in range(1, processes + 1)]
        self.signals_received = 0
        self.usage_error = False

    def run(self) -> int:
        """Supervise until every child has stopped; the exit code of the pool."""
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for child in self.children:
                self._start(child)
            log.info(
                "worker pool: %d processes (pids %s)",
                len(self.children),
                ", ".join(str(c.process.pid) for c in self.children if c.process),
            )
            while any(child.process is not None for child in self.children):
                self._reap()
                if not self.stopping:
                    self._restart_due()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self._exit_code()

    @property
    def stopping(self) -> bool:
        return self.signals_received > 0 or self.usage_error

    # --- children -----------------------------------------------------------------------------

    def _start(self, child: Child) -> None:
        argv = list(self.command(child.slot))
        child.process = subprocess.Popen(argv)
        child.started_at = time.monotonic()
        log.debug("worker pool: slot %d started as pid %d", child.slot, child.process.pid)

    def _reap(self) -> None:
        """Wait (a little) for a child to exit and deal with it."""
        try:
            pid, status = os.waitpid(-1, 0 if self.stopping else os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            return
        if pid == 0:
            time.sleep(0.1)  # nothing exited: look again soon (restarts may be due)
            return
        for child in self.children:
            if child.process is not None and child.process.pid == pid:
                child.process.returncode = os.waitstatus_to_exitcode(status)
                self._exited(child, child.process.returncode)
                return

    def _exited(self, child: Child, code: int) -> None:
        assert child.process is not None
        pid = child.process.pid
        child.process = None
        child.exits.append(code)
        if self.stopping:
            log.info("worker pool: pid %d stopped (%s)", pid, _describe(code))
            return
        if code == EXIT_USAGE:
            log.error("worker pool: pid %d exited 2 (bad target or settings); stopping", pid)
            self.usage_error = True
            self._forward(signal.SIGTERM)
            return
        lived = time.monotonic() - child.started_at
        child.young_deaths = child.young_deaths + 1 if lived < YOUNG else 0
        delay = (
            0.0 if child.young_deaths <= 1 else min(MAX_RESTART_DELAY, 0.5 * 2**child.young_deaths)
        )
        child.restart_at = time.monotonic() + delay
        log.warning(
            "worker pool: pid %d %s after %.1f s; starting another%s",
            pid,
            _describe(code),
            lived,
            f" in {delay:.1f} s" if delay else "",
        )

    def _restart_due(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.process is None and child.restart_at <= now:
                self._start(child)

    # --- signals ------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals_received += 1
        if self.signals_received == 1:
            log.info(
                "worker pool: %s: stopping every worker gracefully (send it again to stop them "
                "at once)",
                signal.Signals(signum).name,
            )
        self._forward(signum)

    def _forward(self, signum: int) -> None:
        for child in self.children:
            if child.process is None:
                child.restart_at = float("inf")  # never start it again
                continue
            # os.kill, not Popen.send_signal: that polls, and a child reaped there would never
            # reach the waitpid loop that accounts for it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid, signum)

    def _exit_code(self) -> int:
        if self.usage_error:
            return EXIT_USAGE
        last = [child.exits[-1] for child in self.children if child.exits]
        return 0 if all(code == 0 for code in last) else 1


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited {code}"


def child_command(argv: Sequence[str], processes_option: str = "--processes") -> list[str]:
    """This command line for one child: the same options, without ``--processes N``."""
    cleaned: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == processes_option:
            skip = True
            continue
        if arg.startswith(processes_option + "="):
            continue
        cleaned.append(arg)
    return [sys.executable, "-m", "durable_tq", *cleaned]
