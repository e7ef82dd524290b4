"""The worker runtime against a real broker on a loopback port (the ``server`` fixtures).

Every wait is bounded with ``anyio.fail_after``; nothing asserts on how fast anything ran.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import pytest

from durable_tq import Fail, Retry, TaskContext, Worker
from durable_tq.client import AsyncClient, TaskInfo
from durable_tq.servers.tcp import BrokerServer

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

#: Upper bound for any single wait in these tests; generous for slow machines.
LIMIT = 30.0


@pytest.fixture
async def client(broker_url: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient.from_url(broker_url) as opened:
        yield opened


def make_worker(url: str, **options: Any) -> Worker:
    options.setdefault("wait", 0.5)
    options.setdefault("heartbeat_interval", 0.2)
    options.setdefault("grace", 10.0)
    return Worker(url=url, **options)


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """Run ``worker`` in the background; stop it (gracefully) and wait for it on exit."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await until(lambda: worker.running)
        try:
            yield worker
        finally:
            worker.stop()


async def drain(worker: Worker) -> None:
    with anyio.fail_after(LIMIT):
        await worker.drain()


async def wait_for_state(client: AsyncClient, task_id: int, *states: str) -> TaskInfo:
    with anyio.fail_after(LIMIT):
        while True:
            task = await client.get(task_id)
            if task.state in states:
                return task
            await anyio.sleep(0.02)


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds (bounded)."""
    with anyio.fail_after(LIMIT):
        while True:
            if condition():
                return
            await anyio.sleep(0.02)


# ------------------------------------------------------------------------------ handlers run


async def test_async_handler_result_is_stored(broker_url: str, client: AsyncClient) -> None:
    worker = make_worker(broker_url, concurrency=4)
    seen: list[TaskContext] = []

    @worker.task("emails")
    async def send_email(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        seen.append(ctx)
        return {"sent": payload["to"]}

    first = await send_email.enqueue({"to": "a@example.com"})
    second = await client.enqueue("emails", {"to": "b@example.com"})
    await drain(worker)

    for result, to in ((first, "a@example.com"), (second, "b@example.com")):
        task = await client.get(result.task_id)
        assert task.state == "succeeded"
        assert task.result == {"sent": to}
        assert task.attempts == 1
    by_id = {ctx.task_id: ctx for ctx in seen}
    assert set(by_id) == {first.task_id, second.task_id}
    ctx = by_id[first.task_id]
    assert (ctx.queue, ctx.attempt, ctx.worker_id) == ("emails", 1, worker.worker_id)
    assert ctx.lease_token


async def test_sync_handler_runs_in_a_thread(broker_url: str, client: AsyncClient) -> None:
    worker = make_worker(broker_url)
    threads: list[int] = []

    @worker.task("resize")
    def resize(payload: dict[str, int]) -> int:
        threads.append(threading.get_ident())
        return payload["w"] * payload["h"]

    result = await anyio.to_thread.run_sync(lambda: resize.enqueue_sync({"w": 3, "h": 4}))
    await drain(worker)

    task = await client.get(result.task_id)
    assert (task.state, task.result) == ("succeeded", 12)
    assert threads and threads[0] != threading.get_ident()
    assert resize({"w": 2, "h": 2}) == 4  # the decorated function still works as a function


async def test_a_sync_handler_can_extend_and_enqueue(broker_url: str, client: AsyncClient) -> None:
    worker = make_worker(broker_url)
    extended: list[tuple[bool, float, float]] = []

    @worker.task("parent")
    def parent(payload: int, ctx: TaskContext) -> None:
        before = ctx.lease_expires_at
        extended.append((ctx.extend_sync(120), before, ctx.lease_expires_at))
        child.enqueue_sync(payload + 1)

    @worker.task("child")
    async def child(payload: int) -> int:
        return payload * 10

    await parent.enqueue(4)
    await drain(worker)

    [(ok, before, after)] = extended
    assert ok and after > before
    page = await client.list_tasks("child")
    assert [(t.state, t.result) for t in page.tasks] == [("succeeded", 50)]


async def test_handler_shapes(broker_url: str, client: AsyncClient) -> None:
    """Keyword-only ``ctx``, callable objects (sync and async) are handlers too."""
    worker = make_worker(broker_url)

    @worker.task("keyword")
    async def keyword(payload: int, *, ctx: TaskContext) -> list[int]:
        return [payload, ctx.attempt]

    class Doubler:
        def __call__(self, payload: int) -> int:
            return payload * 2

    class AsyncTripler:
        async def __call__(self, payload: int, ctx: TaskContext) -> int:
            return payload * 3

    doubler = worker.task("double")(Doubler())
    tripler = worker.task("triple")(AsyncTripler())
    assert not doubler.is_async and tripler.is_async and tripler.takes_context

    ids = [
        (await keyword.enqueue(7)).task_id,
        (await doubler.enqueue(7)).task_id,
        (await tripler.enqueue(7)).task_id,
    ]
    await drain(worker)
    assert [(await client.get(i)).result for i in ids] == [[7, 1], 14, 21]


async def test_concurrency_bounds_tasks_running_at_once(
    broker_url: str, client: AsyncClient
) -> None:
    worker = make_worker(broker_url, concurrency=3)
    now_running = 0
    most = 0

    @worker.task("work")
    async def work(payload: int) -> int:
        nonlocal now_running, most
        now_running += 1
        most = max(most, now_running)
        await anyio.sleep(0.02)
        now_running -= 1
        return payload

    await client.enqueue_many([{"queue": "work", "payload": n} for n in range(20)])
    await drain(worker)

    assert most <= 3
    stats = await client.stats()
    assert stats.queues["work"].succeeded == 20


# ------------------------------------------------------------------------------ failures


@pytest.fixture
async def fast_retry_url(
    make_server: Callable[..., AbstractAsyncContextManager[BrokerServer]],
) -> AsyncIterator[str]:
    """A broker whose retry backoff is a few milliseconds."""
    async with make_server(backoff_base=0.01, backoff_cap=0.05) as started:
        yield started.url


async def test_an_exception_retries_then_succeeds(fast_retry_url: str) -> None:
    worker = make_worker(fast_retry_url)
    attempts: list[int] = []

    @worker.task("flaky")
    async def flaky(payload: None, ctx: TaskContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ValueError(f"boom on attempt {ctx.attempt}")
        return "done"

    async with AsyncClient.from_url(fast_retry_url) as client:
        result = await flaky.enqueue(None, max_attempts=5)
        await drain(worker)
        task = await client.get(result.task_id)

    assert attempts == [1, 2, 3]
    assert (task.state, task.result, task.attempts) == ("succeeded", "done", 3)
    assert task.last_error is not None
    assert "ValueError: boom on attempt 2" in task.last_error
    assert "Traceback" in task.last_error


async def test_errors_are_bounded(fast_retry_url: str) -> None:
    worker = make_worker(fast_retry_url, max_error_chars=300)

    @worker.task("noisy")
    def noisy(payload: None) -> None:
        raise RuntimeError("x" * 10_000)

    async with AsyncClient.from_url(fast_retry_url) as client:
        result = await noisy.enqueue(None, max_attempts=1)
        await drain(worker)
        task = await client.get(result.task_id)
    assert task.state == "dead"
    assert task.last_error is not None
    assert task.last_error.startswith("RuntimeError: xxx")
    assert len(task.last_error) <= 300


async def test_a_nul_in_an_error_is_spelled_out(fast_retry_url: str) -> None:
    """PostgreSQL's text cannot hold U+0000: the worker writes it as \\x00 in error texts,
    so the fail is taken on either backend (the task does not hang on refused fails)."""
    worker = make_worker(fast_retry_url)

    @worker.task("binary")
    def binary(payload: None) -> None:
        raise ValueError("bad byte \x00 here")

    async with AsyncClient.from_url(fast_retry_url) as client:
        result = await binary.enqueue(None, max_attempts=1)
        await drain(worker)
        task = await client.get(result.task_id)
    assert (task.state, task.attempts) == ("dead", 1)
    assert task.last_error is not None and "ValueError: bad byte \\x00 here" in task.last_error


async def test_retry_with_delay_and_fail(fast_retry_url: str) -> None:
    worker = make_worker(fast_retry_url)
    calls: Counter[str] = Counter()

    @worker.task("later")
    async def later(payload: None, ctx: TaskContext) -> int:
        calls["later"] += 1
        if ctx.attempt == 1:
            raise Retry("not yet", delay=0.1)
        return ctx.attempt

    @worker.task("doomed")
    async def doomed(payload: None) -> None:
        calls["doomed"] += 1
        raise Fail("no such mailbox")

    async with AsyncClient.from_url(fast_retry_url) as client:
        retried = await later.enqueue(None)
        failed = await doomed.enqueue(None, max_attempts=5)
        await drain(worker)
        later_task = await client.get(retried.task_id)
        doomed_task = await client.get(failed.task_id)

    assert (later_task.state, later_task.result, later_task.attempts) == ("succeeded", 2, 2)
    assert later_task.last_error == "Retry: not yet"
    assert (doomed_task.state, doomed_task.attempts) == ("dead", 1)
    assert doomed_task.last_error == "Fail: no such mailbox"
    assert calls == {"later": 2, "doomed": 1}


async def test_a_result_that_is_not_json_fails_the_task(
    broker_url: str, client: AsyncClient
) -> None:
    worker = make_worker(broker_url)

    @worker.task("weird")
    async def weird(payload: None) -> object:
        return object()

    result = await weird.enqueue(None)
    await drain(worker)
    task = await client.get(result.task_id)
    assert (task.state, task.attempts) == ("dead", 1)
    assert task.last_error is not None and "cannot be stored as JSON" in task.last_error


async def test_async_timeout_cancels_the_run(broker_url: str, client: AsyncClient) -> None:
    worker = make_worker(broker_url)
    cancelled = anyio.Event()

    @worker.task("slow", timeout=0.2)
    async def slow(payload: None) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    result = await slow.enqueue(None, max_attempts=1)
    await drain(worker)
    task = await client.get(result.task_id)
    assert task.state == "dead"
    assert task.last_error is not None
    assert task.last_error.startswith("TimeoutError: ")
    assert "timeout of 0.2 s" in task.last_error
    assert cancelled.is_set()


async def test_sync_timeout_fails_the_task_while_the_thread_runs_on(
    broker_url: str, client: AsyncClient
) -> None:
    worker = make_worker(broker_url)
    release_thread = threading.Event()
    thread_returned = threading.Event()

    @worker.task("stuck", timeout=0.2)
    def stuck(payload: None) -> None:
        release_thread.wait(LIMIT)
        thread_returned.set()

    result = await stuck.enqueue(None, max_attempts=1)
    await drain(worker)
    task = await client.get(result.task_id)
    assert task.state == "dead"
    assert task.last_error is not None and "thread was left running" in task.last_error
    assert not thread_returned.is_set()
    release_thread.set()
    await anyio.to_thread.run_sync(thread_returned.wait, LIMIT)


# ------------------------------------------------------------------------------ leases


async def test_a_task_longer_than_its_lease_is_extended_and_runs_once(
    broker_url: str, client: AsyncClient
) -> None:
    # Lease 2 s, renewed every 0.5 s; the run takes several leases' time. Had the lease
    # lapsed, the sweeper (every 0.1 s) would requeue it and the worker would run it again.
    worker = make_worker(broker_url, lease=2.0, renew_fraction=0.25, concurrency=2)
    runs: list[int] = []

    @worker.task("long")
    async def long_task(payload: None, ctx: TaskContext) -> str:
        runs.append(ctx.attempt)
        await anyio.sleep(5.0)
        return "finished"

    result = await long_task.enqueue(None)
    await drain(worker)
    task = await client.get(result.task_id)
    assert (task.state, task.result, task.attempts) == ("succeeded", "finished", 1)
    assert runs == [1]


async def test_a_lost_lease_is_logged_not_raised(
    server: BrokerServer, client: AsyncClient, caplog: pytest.LogCaptureFixture, db_backend: str
) -> None:
    worker = make_worker(server.url)
    started = anyio.Event()
    go_on = anyio.Event()
    tokens: list[str] = []

    @worker.task("fenced")
    async def fenced(payload: None, ctx: TaskContext) -> str:
        tokens.append(ctx.lease_token)
        if ctx.attempt == 1:
            started.set()
            await go_on.wait()
        return f"attempt {ctx.attempt}"

    result = await fenced.enqueue(None)
    caplog.set_level(logging.WARNING, "durable_tq.worker")
    async with running(worker):
        with anyio.fail_after(LIMIT):
            await started.wait()
        # Another claim took the task meanwhile (as after an expired lease): a new token.
        mark = "%s" if db_backend == "postgres" else "?"
        await server.broker.store.write(
            lambda conn, batch: conn.execute(
                f"UPDATE tasks SET lease_token = 'stolen' WHERE id = {mark}", (result.task_id,)
            )
        )
        go_on.set()
        await until(lambda: _logged(caplog, "lease was lost"))
        assert worker.running
    task = await client.get(result.task_id)
    assert task.state == "leased"  # nothing the first worker sent was recorded
    assert tokens and tokens[0] != "stolen"


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


# ------------------------------------------------------------------------------ stopping


async def test_stop_lets_running_tasks_finish(broker_url: str, client: AsyncClient) -> None:
    worker = make_worker(broker_url, grace=LIMIT, concurrency=1)
    started = anyio.Event()
    finish = anyio.Event()

    @worker.task("job")
    async def job(payload: None) -> str:
        started.set()
        await finish.wait()
        return "finished"

    result = await job.enqueue(None)
    extra = await job.enqueue(None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        with anyio.fail_after(LIMIT):
            await started.wait()
        worker.stop()
        # Stopping has reached the point where it waits for the running task: it told the
        # broker to hand it nothing more (state terminate)...
        with anyio.fail_after(LIMIT):
            while not any(w.state == "terminate" for w in await client.workers()):  # noqa: ASYNC110
                await anyio.sleep(0.02)
        # ...and the worker still runs, for the task it started.
        assert worker.running
        finish.set()
    task = await client.get(result.task_id)
    assert (task.state, task.result) == ("succeeded", "finished")
    # One slot, taken until after stop(): the other task never started, and a stopping worker
    # claims nothing (a prefetched one went back without using an attempt).
    other = await client.get(extra.task_id)
    assert (other.state, other.attempts) == ("queued", 0)


async def test_stop_releases_tasks_still_running_after_grace(
    broker_url: str, client: AsyncClient
) -> None:
    worker = make_worker(broker_url, grace=0.2, concurrency=2)
    started = anyio.Event()
    cancelled = anyio.Event()

    @worker.task("endless")
    async def endless(payload: None) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    result = await endless.enqueue(None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        with anyio.fail_after(LIMIT):
            await started.wait()
        worker.stop()
    assert cancelled.is_set()
    task = await client.get(result.task_id)
    assert task.state == "queued"
    assert task.attempts == 0  # a released attempt does not count


async def test_quiet_and_terminate_from_the_broker(broker_url: str, client: AsyncClient) -> None:
    worker = make_worker(broker_url)

    @worker.task("q")
    async def handle(payload: int) -> int:
        return payload

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        first = await handle.enqueue(1)
        await wait_for_state(client, first.task_id, "succeeded")

        await client.worker_state(worker.worker_id, "quiet")
        await until(lambda: _is_quiet(worker))
        second = await handle.enqueue(2)
        assert (await client.get(second.task_id)).state == "queued"

        await client.worker_state(worker.worker_id, "running")
        await wait_for_state(client, second.task_id, "succeeded")

        await client.worker_state(worker.worker_id, "terminate")
        await until(lambda: not worker.running)


def _is_quiet(worker: Worker) -> bool:
    runtime = worker._runtime
    return runtime is not None and runtime.quiet


async def test_start_runs_in_a_thread_until_stopped(broker_url: str, client: AsyncClient) -> None:
    worker = make_worker(broker_url)
    extended: list[bool] = []

    @worker.task("bg")
    async def background(payload: str, ctx: TaskContext) -> str:
        extended.append(await ctx.extend(60))
        return payload.upper()

    await anyio.to_thread.run_sync(worker.start)
    try:
        assert worker.running
        result = await background.enqueue("hi")
        task = await wait_for_state(client, result.task_id, "succeeded")
        assert task.result == "HI"
        assert extended == [True]
    finally:
        worker.stop()
        assert await anyio.to_thread.run_sync(worker.join, LIMIT)
    assert not worker.running


async def test_worker_registers_with_its_queues(broker_url: str, client: AsyncClient) -> None:
    worker = make_worker(broker_url, concurrency=5, worker_id="w-registered")

    @worker.task("a")
    async def a(payload: None) -> None: ...

    @worker.task("b")
    def b(payload: None) -> None: ...

    async with running(worker):
        infos = {info.id: info for info in await client.workers()}
    info = infos["w-registered"]
    assert sorted(info.queues or []) == ["a", "b"]
    assert info.concurrency == 5


async def test_configuration_errors_are_clear() -> None:
    from durable_tq import errors

    worker = Worker()
    with pytest.raises(errors.ConfigError, match="no handlers"):
        await worker.run()

    @worker.task("a")
    async def a(payload: None) -> None: ...

    with pytest.raises(errors.ConfigError, match="already has a handler"):
        worker.task("a")(a)
    with pytest.raises(errors.ConfigError, match="payload"):
        worker.task("b")(lambda: None)
    worker.configure(queues=["a", "zzz"])
    with pytest.raises(errors.ConfigError, match="zzz"):
        await worker.run()
    with pytest.raises(errors.ConfigError):
        Worker(concurrency=0)
