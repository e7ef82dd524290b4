"""Workers and brokers as real processes: signals, SIGKILL, broker restarts.

The worker app is a module written to the test's temp folder and run with
``python -m durable_tq worker app:worker``; its handler marks each run with a file and waits
until the test creates a ``go`` file, so tests decide when tasks finish without timing
guesses. Every wait is bounded.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from durable_tq import TaskContext, Worker
from durable_tq.client import AsyncClient
from durable_tq.config import Settings
from durable_tq.core.clock import FakeClock
from durable_tq.servers.tcp import BrokerServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

LIMIT = 60.0
EXAMPLE_APP = Path(__file__).resolve().parents[2] / "examples" / "emails"

APP = """
import os
import time
from pathlib import Path

import anyio

from durable_tq import TaskContext, Worker

HERE = Path(__file__).parent
worker = Worker(concurrency=3, wait=0.5)


@worker.task("jobs")
async def job(payload, ctx: TaskContext):
    (HERE / "runs" / f"{ctx.task_id}-{ctx.attempt}").touch()
    while not (HERE / "go").exists():
        await anyio.sleep(0.05)
    return payload


@worker.task("blocking")
def blocking(payload, ctx: TaskContext):
    (HERE / "runs" / f"{ctx.task_id}-{ctx.attempt}").touch()
    while not (HERE / "go").exists():  # a sync handler: nothing can interrupt this loop
        time.sleep(0.05)
    return payload
"""


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


class WorkerProcess:
    """``python -m durable_tq worker app:worker`` in ``folder``, stderr to ``worker.log``."""

    def __init__(
        self,
        folder: Path,
        url: str,
        *args: str,
        target: str = "app:worker",
        log: Path | None = None,
    ) -> None:
        self.folder = folder
        self.log_path = log or folder / "worker.log"
        env = child_env()
        command = [sys.executable, "-m", "durable_tq", "worker", target, "--url", url]
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [*command, *args],
                cwd=folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for_log(self, text: str) -> None:
        with anyio.fail_after(LIMIT):
            while True:
                if text in self.log():
                    return
                if self.proc.poll() is not None:
                    raise AssertionError(f"the worker exited early:\n{self.log()}")
                await anyio.sleep(0.05)

    async def wait(self) -> int:
        """The exit code (bounded); the broker on the test's loop keeps serving meanwhile."""
        return await anyio.to_thread.run_sync(self.proc.wait, LIMIT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(LIMIT)


@pytest.fixture
def app_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "app"
    (folder / "runs").mkdir(parents=True)
    (folder / "app.py").write_text(textwrap.dedent(APP))
    return folder


@pytest.fixture
def start_worker(app_folder: Path) -> Any:
    started: list[WorkerProcess] = []

    def start(url: str, *args: str) -> WorkerProcess:
        process = WorkerProcess(app_folder, url, *args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def runs(folder: Path) -> list[tuple[int, int]]:
    """(task_id, attempt) of every run the app started."""
    found = []
    for marker in (folder / "runs").iterdir():
        task_id, attempt = marker.name.split("-")
        found.append((int(task_id), int(attempt)))
    return sorted(found)


async def until_runs(folder: Path, count: int) -> None:
    with anyio.fail_after(LIMIT):
        while True:
            if len(runs(folder)) >= count:
                return
            await anyio.sleep(0.05)


def in_process_worker(url: str, seen: list[tuple[int, int]]) -> Worker:
    """A worker that finishes ``jobs`` tasks at once, recording (task_id, attempt)."""
    worker = Worker(url=url, wait=0.5, heartbeat_interval=0.2, concurrency=4)

    @worker.task("jobs")
    async def job(payload: Any, ctx: TaskContext) -> Any:
        seen.append((ctx.task_id, ctx.attempt))
        return payload

    return worker


async def all_states(client: AsyncClient, ids: list[int]) -> list[str]:
    return [(await client.get(task_id)).state for task_id in ids]


# ----------------------------------------------------------------------- SIGTERM, SIGKILL


async def test_sigterm_releases_prefetched_tasks_at_once(
    broker_url: str, app_folder: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    """``--prefetch``: held beyond the slots; on SIGTERM the unstarted ones go back at once,
    while the running one keeps its grace period."""
    async with AsyncClient.from_url(broker_url) as client:
        ids = [(await client.enqueue("jobs", n)).task_id for n in range(4)]
        worker = start_worker(
            broker_url, "--concurrency", "1", "--prefetch", "3", "--grace", str(LIMIT)
        )
        await until_runs(app_folder, 1)
        with anyio.fail_after(LIMIT):
            while await all_states(client, ids) != ["leased"] * 4:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        worker.proc.send_signal(signal.SIGTERM)
        (running,) = [task_id for task_id, _ in runs(app_folder)]
        rest = [task_id for task_id in ids if task_id != running]
        with anyio.fail_after(LIMIT):
            while await all_states(client, rest) != ["queued"] * 3:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        assert (await client.get(running)).state == "leased"
        (app_folder / "go").touch()
        assert await worker.wait() == 0
        assert len(runs(app_folder)) == 1
        assert (await client.get(running)).state == "succeeded"


async def test_sigterm_lets_running_tasks_finish(
    broker_url: str, app_folder: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    async with AsyncClient.from_url(broker_url) as client:
        ids = [(await client.enqueue("jobs", n)).task_id for n in range(6)]
        worker = start_worker(broker_url, "--grace", str(LIMIT))
        await until_runs(app_folder, 3)  # three slots busy, three tasks still queued
        worker.proc.send_signal(signal.SIGTERM)
        await worker.wait_for_log("received SIGTERM")
        (app_folder / "go").touch()
        assert await worker.wait() == 0

        first = runs(app_folder)
        assert len(first) == 3
        for task_id, attempt in first:
            task = await client.get(task_id)
            assert (task.state, task.attempts, attempt) == ("succeeded", 1, 1)
        left = [task_id for task_id in ids if task_id not in {t for t, _ in first}]
        assert await all_states(client, left) == ["queued"] * 3

        seen: list[tuple[int, int]] = []
        with anyio.fail_after(LIMIT):
            await in_process_worker(broker_url, seen).drain()
        assert sorted(seen) == [(task_id, 1) for task_id in sorted(left)]
        assert await all_states(client, ids) == ["succeeded"] * 6


async def test_sigterm_releases_tasks_after_grace(
    broker_url: str, app_folder: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    async with AsyncClient.from_url(broker_url) as client:
        ids = [(await client.enqueue("jobs", n)).task_id for n in range(3)]
        worker = start_worker(broker_url, "--grace", "0.3")
        await until_runs(app_folder, 3)
        worker.proc.send_signal(signal.SIGTERM)
        assert await worker.wait() == 0
        assert "released" in worker.log()
        for task_id in ids:
            task = await client.get(task_id)
            assert (task.state, task.attempts) == ("queued", 0)

        seen: list[tuple[int, int]] = []
        with anyio.fail_after(LIMIT):
            await in_process_worker(broker_url, seen).drain()
        assert await all_states(client, ids) == ["succeeded"] * 3
        assert sorted(seen) == [(task_id, 1) for task_id in ids]  # released: attempt reused


async def test_sigterm_does_not_wait_for_a_stuck_sync_handler(
    broker_url: str, app_folder: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    """A thread cannot be stopped: its task is released and the process exits anyway."""
    async with AsyncClient.from_url(broker_url) as client:
        task_id = (await client.enqueue("blocking", "x")).task_id
        worker = start_worker(broker_url, "--grace", "0.3")
        await until_runs(app_folder, 1)
        worker.proc.send_signal(signal.SIGTERM)
        assert await worker.wait() == 0
        assert "exiting without them" in worker.log()
        task = await client.get(task_id)
        assert (task.state, task.attempts) == ("queued", 0)


async def test_second_sigterm_stops_at_once(
    broker_url: str, app_folder: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    async with AsyncClient.from_url(broker_url) as client:
        ids = [(await client.enqueue("jobs", n)).task_id for n in range(2)]
        worker = start_worker(broker_url, "--grace", "3600")
        await until_runs(app_folder, 2)
        worker.proc.send_signal(signal.SIGTERM)
        await worker.wait_for_log("received SIGTERM")
        worker.proc.send_signal(signal.SIGTERM)
        assert await worker.wait() == 0
        assert await all_states(client, ids) == ["queued"] * 2


@pytest.fixture
async def short_timeout_url(
    make_server: Callable[..., AbstractAsyncContextManager[BrokerServer]],
) -> AsyncIterator[str]:
    """A broker that declares a silent worker dead after 1.5 s (heartbeats every 0.2 s)."""
    async with make_server(heartbeat_interval=0.2, worker_timeout=1.5) as started:
        yield started.url


async def test_sigkill_tasks_go_to_another_worker(
    short_timeout_url: str, app_folder: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    url = short_timeout_url
    async with AsyncClient.from_url(url) as client:
        ids = [(await client.enqueue("jobs", n)).task_id for n in range(3)]
        worker = start_worker(url)
        await until_runs(app_folder, 3)
        worker.kill()  # SIGKILL: no release, no goodbye
        assert await all_states(client, ids) == ["leased"] * 3

        seen: list[tuple[int, int]] = []
        with anyio.fail_after(LIMIT):
            await in_process_worker(url, seen).drain()
        assert sorted(seen) == [(task_id, 2) for task_id in ids]
        assert await all_states(client, ids) == ["succeeded"] * 3


@asynccontextmanager
async def clocked_server(settings: Settings, clock: FakeClock) -> AsyncIterator[BrokerServer]:
    """A broker on a loopback port whose time moves only when the test says (leases expire
    when the test advances ``clock``, not after a sleep)."""
    async with anyio.create_task_group() as tg:
        server: BrokerServer = await tg.start(BrokerServer(settings, clock=clock).serve)
        try:
            yield server
        finally:
            server.request_shutdown()
            with anyio.fail_after(LIMIT):
                await server.wait_stopped()


async def test_revoke_of_a_task_whose_worker_was_sigkilled(
    make_settings: Callable[..., Settings],
    app_folder: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """The worker holding a task is SIGKILLed, then ``durable-tq cancel`` marks the task: when
    its lease runs out it ends ``cancelled``, and the worker still running never gets it."""
    clock = FakeClock(wall=time.time(), monotonic=time.monotonic())
    lease = 600.0
    # Silent workers are not the point here: only the lease running out ends the task.
    settings = make_settings(heartbeat_interval=0.2, worker_timeout=lease * 10)
    async with (
        clocked_server(settings, clock) as server,
        AsyncClient.from_url(server.url) as client,
    ):
        url = server.url
        task_id = (await client.enqueue("jobs", "doomed", lease=lease)).task_id
        doomed = start_worker(url)
        await until_runs(app_folder, 1)
        doomed.kill()  # SIGKILL: its lease stays held, nobody will settle it
        assert (await client.get(task_id)).state == "leased"

        seen: list[tuple[int, int]] = []
        survivor = in_process_worker(url, seen)
        async with running(survivor):
            done = await anyio.run_process(
                [sys.executable, "-m", "durable_tq", "cancel", str(task_id), "--url", url],
                env=child_env(),
                check=False,
            )
            assert done.returncode == 0, done.stderr.decode()
            assert "is being cancelled" in done.stdout.decode()
            task = await client.get(task_id)
            assert (task.state, task.cancel_requested) == ("leased", True)

            clock.advance(lease + 1)  # the lease runs out; the sweeper sees it at once
            task = await client.wait(task_id, timeout=LIMIT)
            assert task.state == "cancelled"
            assert task.last_error == "cancelled; its lease ran out"
            assert task.attempts == 1

            # The survivor was claiming all along: a task enqueued now runs there, and the
            # cancelled one never did.
            marker = (await client.enqueue("jobs", "marker")).task_id
            assert (await client.wait(marker, timeout=LIMIT)).state == "succeeded"
        assert seen == [(marker, 1)]
        assert runs(app_folder) == [(task_id, 1)]


# ----------------------------------------------------------------------- broker restarts


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(LIMIT):
        while True:
            if condition():
                return
            await anyio.sleep(0.02)


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await until(lambda: worker.running)
        try:
            yield
        finally:
            worker.stop()


async def until_succeeded(url: str, ids: list[int]) -> None:
    async with AsyncClient.from_url(url, connect_attempts=20) as client:
        with anyio.fail_after(LIMIT):
            while True:
                if await all_states(client, ids) == ["succeeded"] * len(ids):
                    return
                await anyio.sleep(0.05)


@pytest.mark.parametrize("graceful", [True, False], ids=["sigterm", "sigkill"])
async def test_broker_restart_while_the_worker_is_idle(
    serve_subprocess: Callable[..., Any], graceful: bool
) -> None:
    broker = serve_subprocess()
    seen: list[tuple[int, int]] = []
    worker = in_process_worker(broker.url, seen)
    async with running(worker):
        async with AsyncClient.from_url(broker.url) as client:
            first = (await client.enqueue("jobs", "before")).task_id
        await until_succeeded(broker.url, [first])

        await anyio.to_thread.run_sync(lambda: broker.restart(graceful=graceful))

        async with AsyncClient.from_url(broker.url) as client:
            ids = [(await client.enqueue("jobs", n)).task_id for n in range(5)]
        await until_succeeded(broker.url, ids)
    assert sorted(seen) == [(task_id, 1) for task_id in [first, *ids]]


@pytest.mark.parametrize("graceful", [True, False], ids=["sigterm", "sigkill"])
async def test_broker_restart_while_tasks_run(
    serve_subprocess: Callable[..., Any], graceful: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Tasks finish while the broker is down; their acks go through once it is back.

    With SIGKILL the test also waits until the client gave up reconnecting and the worker
    kept the acks (logged ``could not ack``), so that path is taken for sure.
    """
    caplog.set_level(logging.WARNING, "durable_tq.worker")
    broker = serve_subprocess()
    finish = anyio.Event()
    started: list[int] = []
    returned: list[int] = []
    worker = Worker(url=broker.url, wait=0.5, concurrency=4, lease=60.0)

    @worker.task("jobs")
    async def job(payload: int, ctx: TaskContext) -> int:
        started.append(ctx.task_id)
        await finish.wait()
        returned.append(ctx.task_id)
        return payload * 2

    async with AsyncClient.from_url(broker.url) as client:
        ids = [(await client.enqueue("jobs", n)).task_id for n in range(4)]
    async with running(worker):
        await until(lambda: len(started) == 4)
        await anyio.to_thread.run_sync(broker.terminate if graceful else broker.kill)
        finish.set()  # the handlers return while there is no broker
        await until(lambda: len(returned) == 4)
        if not graceful:
            await until(lambda: any("could not ack" in r.getMessage() for r in caplog.records))
        await anyio.to_thread.run_sync(lambda: broker.start(port=broker.port))
        await until_succeeded(broker.url, ids)
    assert sorted(started) == ids  # each ran once
    async with AsyncClient.from_url(broker.url) as client:
        for n, task_id in enumerate(ids):
            task = await client.get(task_id)
            assert (task.attempts, task.result) == (1, n * 2)
    assert not any("lease lost" in r.getMessage() for r in caplog.records)


async def test_worker_cli_reports_a_bad_target(app_folder: Path) -> None:
    result = await anyio.run_process(
        [sys.executable, "-m", "durable_tq", "worker", "app:nothing_here"],
        cwd=app_folder,
        check=False,
    )
    assert result.returncode == 2
    assert b"no attribute 'nothing_here'" in result.stderr


async def test_the_example_app(broker_url: str, tmp_path: Path) -> None:
    """examples/emails: the worker and the producer, as the docs tell users to run them."""
    example = EXAMPLE_APP
    worker = WorkerProcess(example, broker_url, target="tasks:worker", log=tmp_path / "w.log")
    try:
        await worker.wait_for_log("connected to")
        with anyio.fail_after(LIMIT):
            result = await anyio.run_process(
                [sys.executable, "producer.py"],
                cwd=example,
                env=child_env(DURABLE_TQ_URL=broker_url),
                check=False,
            )
        assert result.returncode == 0, result.stderr.decode()
        lines = result.stdout.decode().splitlines()
        assert len(lines) == 5
        assert "succeeded after 1 attempt(s)" in lines[0]
        assert "succeeded after 2 attempt(s)" in lines[1]
        assert "dead after 1 attempt(s): Fail: not an email address" in lines[2]
        assert all("succeeded" in line for line in lines[3:])
        worker.proc.send_signal(signal.SIGTERM)
        assert await worker.wait() == 0
        # No handler timed out: a clean stop has nothing to say about stuck threads.
        assert "timed-out handlers" not in (tmp_path / "w.log").read_text()
    finally:
        worker.kill()
