"""``durable-tq worker --processes N``: a supervisor and N real worker processes.

The broker is a subprocess, the pool is ``python -m durable_tq worker app:worker --processes 2``,
the tasks come from the blocking client. Handlers mark each run with a file named after their
pid and wait for a ``go`` file, so the test decides when tasks finish. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from durable_tq import Client

pytestmark = pytest.mark.slow

LIMIT = 60.0

APP = """
import os
import time
from pathlib import Path

from durable_tq import Worker

HERE = Path(__file__).parent
worker = Worker(concurrency=1, wait=0.5)


@worker.task("cpu")
def crunch(payload, ctx):
    (HERE / "runs" / f"{ctx.task_id}-{os.getpid()}").touch()
    while not (HERE / "go").exists():
        time.sleep(0.02)
    return os.getpid()
"""


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + LIMIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def run_pids(folder: Path) -> set[int]:
    return {int(path.name.rsplit("-", 1)[1]) for path in (folder / "runs").iterdir()}


def test_two_processes_run_tasks_and_survive_a_killed_child(
    tmp_path: Path, serve_subprocess: Callable[..., object]
) -> None:
    broker = serve_subprocess()
    url = broker.url  # type: ignore[attr-defined]
    folder = tmp_path / "app"
    (folder / "runs").mkdir(parents=True)
    (folder / "app.py").write_text(textwrap.dedent(APP))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
    log_path = folder / "pool.log"
    command = [sys.executable, "-m", "durable_tq", "worker", "app:worker", "--processes", "2"]
    command += ["--url", url, "--worker-id", "pool"]
    with log_path.open("wb") as log:
        pool = subprocess.Popen(
            command,
            cwd=folder,
            env=env,
            stdout=log,
            stderr=log,
        )
    try:
        with Client.from_url(url) as client:
            ids = [client.enqueue("cpu", n).task_id for n in range(6)]
            # Each process runs one task at a time and holds it until "go": two run at once,
            # in two different processes.
            wait_until(lambda: len(run_pids(folder)) == 2, "runs in two processes")
            children = psutil.Process(pool.pid).children()
            assert sorted(c.pid for c in children) == sorted(run_pids(folder))
            workers = {w.id: w for w in client.workers()}
            assert {"pool-1", "pool-2"} <= set(workers)

            # kill -9 one child: the supervisor starts another in its slot.
            victim = children[0].pid
            os.kill(victim, signal.SIGKILL)
            wait_until(
                lambda: (
                    len([c for c in psutil.Process(pool.pid).children() if c.is_running()]) == 2
                    and victim not in {c.pid for c in psutil.Process(pool.pid).children()}
                ),
                "a new child in the killed one's place",
            )
            # The killed child's task was released when its connection closed; the survivor
            # still holds its own, so the new child takes it: a third pid runs.
            survivor = children[1].pid
            wait_until(lambda: run_pids(folder) - {victim, survivor}, "the new child running")
            (newcomer,) = run_pids(folder) - {victim, survivor}
            (folder / "go").touch()
            wait_until(
                lambda: all(client.get(i).state == "succeeded" for i in ids), "every task done"
            )
            assert {client.get(i).result for i in ids} <= {survivor, newcomer}
            last_children = psutil.Process(pool.pid).children()
        # SIGTERM: every child stops gracefully, then the supervisor exits 0.
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(LIMIT) == 0, log_path.read_text()
        assert not [c for c in last_children if c.is_running() and c.status() != "zombie"]
    finally:
        if pool.poll() is None:
            for child in psutil.Process(pool.pid).children():
                child.kill()
            pool.kill()
            pool.wait(LIMIT)
    text = log_path.read_text()
    assert "was killed by SIGKILL" in text and "starting another" in text


def test_a_bad_target_stops_the_pool_with_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
    done = subprocess.run(
        [sys.executable, "-m", "durable_tq", "worker", "nosuchmodule:worker", "--processes", "3"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )
    assert done.returncode == 2
    assert "nosuchmodule" in done.stderr
