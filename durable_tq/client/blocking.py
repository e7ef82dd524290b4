"""``Client``: the blocking facade, an ``AsyncClient`` driven through an anyio portal thread."""

from __future__ import annotations

import atexit
import functools
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, Unpack

from anyio.from_thread import BlockingPortal, start_blocking_portal

from durable_tq import errors
from durable_tq.client.aio import AsyncClient
from durable_tq.client.types import (
    ClaimArgs,
    ClaimedTask,
    ClientOptions,
    EnqueueRequest,
    EnqueueResult,
    ExtendReply,
    FailResult,
    HeartbeatReply,
    QueueSettings,
    Settlement,
    SettleReply,
    Stats,
    TaskInfo,
    TaskPage,
    WorkerInfo,
)
from durable_tq.client.url import DEFAULT_HOST, DEFAULT_PORT
from durable_tq.wire import schema as s

__all__ = ["Client"]

logger = logging.getLogger("durable_tq.client")

P = ParamSpec("P")
T = TypeVar("T")

#: Blocking clients not closed yet. Their portal thread is a daemon: left to garbage collection
#: during interpreter shutdown, stopping it would wait forever on the frozen thread, so the
#: ones still open at exit are closed while the thread still runs.
_open_clients: weakref.WeakSet[Client] = weakref.WeakSet()


@atexit.register
def _close_open_clients() -> None:
    for client in list(_open_clients):
        try:
            client.close()
        except Exception:
            logger.exception("closing %r at interpreter exit failed", client)


class Client:
    """The blocking client: an ``AsyncClient`` running in a portal thread.

    Every method calls the ``AsyncClient`` method of the same name, so behaviour (retries,
    reconnects, errors) is identical. Methods may be called from several threads at once;
    their requests are pipelined on the one connection. Connects on construction::

        with Client.from_url("tcp://127.0.0.1:7480") as client:
            client.enqueue("emails", {"to": "a@example.com"})
    """

    _async: AsyncClient
    _portal: BlockingPortal
    _exit_stack: ExitStack

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        **options: Unpack[ClientOptions],
    ) -> None:
        self._start(AsyncClient(host, port, **options))

    @classmethod
    def from_url(cls, url: str, **options: Unpack[ClientOptions]) -> Client:
        """Like ``AsyncClient.from_url``; connects before returning."""
        client = cls.__new__(cls)
        client._start(AsyncClient.from_url(url, **options))
        return client

    @classmethod
    def from_env(
        cls, *, config_file: str | Path | None = None, **options: Unpack[ClientOptions]
    ) -> Client:
        """Like ``AsyncClient.from_env``; connects before returning."""
        client = cls.__new__(cls)
        client._start(AsyncClient.from_env(config_file=config_file, **options))
        return client

    def _start(self, async_client: AsyncClient) -> None:
        self._async = async_client
        self._exit_stack = ExitStack()
        try:
            self._portal = self._exit_stack.enter_context(start_blocking_portal(backend="asyncio"))
            self._exit_stack.enter_context(self._portal.wrap_async_context_manager(async_client))
        except BaseException:
            self._exit_stack.close()
            raise
        _open_clients.add(self)

    def close(self) -> None:
        """Close the connection and stop the portal thread. Safe to call twice."""
        _open_clients.discard(self)
        self._exit_stack.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self._async!r}>"

    @property
    def async_client(self) -> AsyncClient:
        return self._async

    @property
    def server(self) -> str | None:
        return self._async.server

    @property
    def heartbeat_interval(self) -> float | None:
        return self._async.heartbeat_interval

    def _call(self, method: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            future = self._portal.start_task_soon(functools.partial(method, *args, **kwargs))
        except RuntimeError as exc:
            if "portal is not running" in str(exc):
                raise errors.ConnectionLost("the client is closed") from exc
            raise
        try:
            return future.result()
        except BaseException:
            # Interrupted while waiting (Ctrl-C): the call must not live on in the portal
            # thread, retrying or reconnecting, while close() waits for it to end.
            future.cancel()
            raise

    def request(
        self,
        op: str,
        args: Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        return self._call(self._async.request, op, args, timeout=timeout, **kwargs)

    def enqueue(
        self,
        queue: str,
        payload: Any,
        *,
        priority: int = 0,
        delay: float | None = None,
        run_at: float | None = None,
        max_attempts: int | None = None,
        lease: float | None = None,
        unique_key: str | None = None,
        concurrency_key: str | None = None,
        result_ttl: float | None = None,
        after: Sequence[int] | None = None,
        on_parent_failure: str | None = None,
        timeout: float | None = None,
    ) -> EnqueueResult:
        return self._call(
            self._async.enqueue,
            queue,
            payload,
            priority=priority,
            delay=delay,
            run_at=run_at,
            max_attempts=max_attempts,
            lease=lease,
            unique_key=unique_key,
            concurrency_key=concurrency_key,
            result_ttl=result_ttl,
            after=after,
            on_parent_failure=on_parent_failure,
            timeout=timeout,
        )

    def enqueue_many(
        self,
        tasks: Sequence[EnqueueRequest | Mapping[str, Any]],
        *,
        timeout: float | None = None,
    ) -> list[EnqueueResult]:
        return self._call(self._async.enqueue_many, tasks, timeout=timeout)

    def claim(
        self,
        queues: str | Sequence[str],
        *,
        max: int = 1,
        wait: float = 0,
        lease: float | None = None,
        timeout: float | None = None,
    ) -> list[ClaimedTask]:
        return self._call(
            self._async.claim, queues, max=max, wait=wait, lease=lease, timeout=timeout
        )

    def ack(
        self, task_id: int, lease_token: str, result: Any = None, *, timeout: float | None = None
    ) -> None:
        self._call(self._async.ack, task_id, lease_token, result, timeout=timeout)

    def fail(
        self,
        task_id: int,
        lease_token: str,
        error: str,
        *,
        retry: bool = True,
        delay: float | None = None,
        timeout: float | None = None,
    ) -> FailResult:
        return self._call(
            self._async.fail,
            task_id,
            lease_token,
            error,
            retry=retry,
            delay=delay,
            timeout=timeout,
        )

    def release(
        self,
        task_id: int,
        lease_token: str,
        *,
        delay: float | None = None,
        timeout: float | None = None,
    ) -> None:
        self._call(self._async.release, task_id, lease_token, delay=delay, timeout=timeout)

    def settle(
        self,
        settles: Sequence[Settlement],
        *,
        claim: ClaimArgs | None = None,
        timeout: float | None = None,
    ) -> SettleReply:
        return self._call(self._async.settle, settles, claim=claim, timeout=timeout)

    def extend(
        self, task_id: int, lease_token: str, lease: float, *, timeout: float | None = None
    ) -> float:
        return self._call(self._async.extend, task_id, lease_token, lease, timeout=timeout)

    def extend_reply(
        self, task_id: int, lease_token: str, lease: float, *, timeout: float | None = None
    ) -> ExtendReply:
        return self._call(self._async.extend_reply, task_id, lease_token, lease, timeout=timeout)

    def heartbeat(self, *, timeout: float | None = None) -> str:
        return self._call(self._async.heartbeat, timeout=timeout)

    def get(self, task_id: int, *, timeout: float | None = None) -> TaskInfo:
        return self._call(self._async.get, task_id, timeout=timeout)

    def heartbeat_reply(self, *, timeout: float | None = None) -> HeartbeatReply:
        return self._call(self._async.heartbeat_reply, timeout=timeout)

    def progress(
        self,
        task_id: int,
        lease_token: str,
        fraction: float,
        message: str | None = None,
        *,
        timeout: float | None = None,
    ) -> bool:
        return self._call(
            self._async.progress, task_id, lease_token, fraction, message, timeout=timeout
        )

    def wait(self, task_id: int, *, timeout: float = 30.0) -> TaskInfo:
        return self._call(self._async.wait, task_id, timeout=timeout)

    def queue_settings(
        self,
        queue: str,
        *,
        result_ttl: float | None = None,
        clear_result_ttl: bool = False,
        timeout: float | None = None,
    ) -> QueueSettings:
        return self._call(
            self._async.queue_settings,
            queue,
            result_ttl=result_ttl,
            clear_result_ttl=clear_result_ttl,
            timeout=timeout,
        )

    def cancel(self, task_id: int, *, timeout: float | None = None) -> str:
        return self._call(self._async.cancel, task_id, timeout=timeout)

    def stats(self, *, timeout: float | None = None) -> Stats:
        return self._call(self._async.stats, timeout=timeout)

    def list_tasks(
        self,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 100,
        after_id: int | None = None,
        *,
        timeout: float | None = None,
    ) -> TaskPage:
        return self._call(self._async.list_tasks, queue, state, limit, after_id, timeout=timeout)

    def iter_tasks(
        self, queue: str | None = None, state: str | None = None, *, page_size: int = 100
    ) -> Iterator[TaskInfo]:
        """Every matching task, fetched page by page."""
        after_id: int | None = None
        while True:
            page = self.list_tasks(queue, state, page_size, after_id)
            yield from page.tasks
            if page.next_after_id is None or not page.tasks:
                return
            after_id = page.next_after_id

    def requeue(
        self,
        task_ids: Sequence[int] | None = None,
        *,
        queue: str | None = None,
        state: str | None = None,
        timeout: float | None = None,
    ) -> int:
        return self._call(self._async.requeue, task_ids, queue=queue, state=state, timeout=timeout)

    def requeue_report(
        self,
        task_ids: Sequence[int] | None = None,
        *,
        queue: str | None = None,
        state: str | None = None,
        timeout: float | None = None,
    ) -> s.RequeueReply:
        return self._call(
            self._async.requeue_report, task_ids, queue=queue, state=state, timeout=timeout
        )

    def schedule_upsert(
        self,
        name: str,
        *,
        queue: str,
        cron: str | None = None,
        tz: str | None = None,
        every: float | None = None,
        payload: Any = None,
        priority: int = 0,
        missed: str = "latest",
        timeout: float | None = None,
    ) -> s.ScheduleUpsertReply:
        return self._call(
            self._async.schedule_upsert,
            name,
            queue=queue,
            cron=cron,
            tz=tz,
            every=every,
            payload=payload,
            priority=priority,
            missed=missed,
            timeout=timeout,
        )

    def schedule_list(self, *, timeout: float | None = None) -> list[s.ScheduleInfo]:
        return self._call(self._async.schedule_list, timeout=timeout)

    def schedule_remove(self, name: str, *, timeout: float | None = None) -> None:
        self._call(self._async.schedule_remove, name, timeout=timeout)

    def schedule_pause(self, name: str, *, timeout: float | None = None) -> s.ScheduleInfo:
        return self._call(self._async.schedule_pause, name, timeout=timeout)

    def schedule_resume(self, name: str, *, timeout: float | None = None) -> s.ScheduleInfo:
        return self._call(self._async.schedule_resume, name, timeout=timeout)

    def set_queue_limits(
        self,
        queue: str,
        *,
        rate: float | None = None,
        burst: int | None = None,
        max_leased: int | None = None,
        key_concurrency: int | None = None,
        timeout: float | None = None,
    ) -> s.QueueInfoReply:
        return self._call(
            self._async.set_queue_limits,
            queue,
            rate=rate,
            burst=burst,
            max_leased=max_leased,
            key_concurrency=key_concurrency,
            timeout=timeout,
        )

    def queue_info(self, queue: str, *, timeout: float | None = None) -> s.QueueInfoReply:
        return self._call(self._async.queue_info, queue, timeout=timeout)

    def throughput(self, *, timeout: float | None = None) -> s.ThroughputReply:
        return self._call(self._async.throughput, timeout=timeout)

    def pause(self, queue: str, *, timeout: float | None = None) -> None:
        self._call(self._async.pause, queue, timeout=timeout)

    def resume(self, queue: str, *, timeout: float | None = None) -> None:
        self._call(self._async.resume, queue, timeout=timeout)

    def purge(self, queue: str, state: str | None = None, *, timeout: float | None = None) -> int:
        return self._call(self._async.purge, queue, state, timeout=timeout)

    def workers(self, *, timeout: float | None = None) -> list[WorkerInfo]:
        return self._call(self._async.workers, timeout=timeout)

    def worker_state(self, worker_id: str, state: str, *, timeout: float | None = None) -> None:
        self._call(self._async.worker_state, worker_id, state, timeout=timeout)

    def bye(self, *, timeout: float | None = None) -> None:
        self._call(self._async.bye, timeout=timeout)
