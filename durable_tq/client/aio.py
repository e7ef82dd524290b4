"""``AsyncClient``: the broker's operations as typed async methods over one :class:`Transport`.

Each method builds its op's arguments and reads its reply as the op table's reply type; the
transport (``durable_tq.client.transport``) owns connections, retries and timeouts.
"""

# Every operation takes ``timeout=`` on purpose: it bounds the whole call including busy
# retries and reconnects, and the blocking Client has no other way to set a deadline.
# ruff: noqa: ASYNC109

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Unpack

import anyio
import msgspec

from durable_tq import errors
from durable_tq.client.codec import decode_reply
from durable_tq.client.transport import MAX_LINE_BYTES, Connection, Transport
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
    WorkerRegistration,
    enqueue_wire,
    present,
    registration_of,
)
from durable_tq.client.url import DEFAULT_HOST, DEFAULT_PORT, parse_url
from durable_tq.wire import schema as s

__all__ = ["CLIENT_NAME", "AsyncClient"]

logger = logging.getLogger("durable_tq.client")

#: The longest single ``wait`` request a client sends; longer waits are several requests.
WAIT_CHUNK: Final = 60.0
#: Pause before waiting again after a lost connection.
WAIT_RETRY: Final = 0.2

CLIENT_NAME: Final = "durable_tq-py/0.1"


class AsyncClient:
    """A pipelined connection to a durable_tq broker.

    Use it as an async context manager; the client owns a task group that runs the reply
    reader, so it must be entered and left in the same task::

        async with AsyncClient.from_url("tcp://127.0.0.1:7480", token="s3cret") as client:
            result = await client.enqueue("emails", {"to": "a@example.com"})

    Any number of tasks may call methods concurrently; their requests share the connection.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        client_name: str = CLIENT_NAME,
        worker: WorkerRegistration | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        connect_timeout: float = 10.0,
        connect_attempts: int = 8,
        reconnect_timeout: float = 30.0,
        busy_retries: int = 10,
        claim_margin: float = 30.0,
        send_timeout: float = 60.0,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        """Configure a client; nothing connects until ``async with``.

        :param token: the broker's auth token, if it has tokens configured.
        :param ssl_context: connect with TLS using this context.
        :param server_hostname: the name to check the broker's certificate against
            (default: ``host``).
        :param worker: register this connection as a worker (re-sent on every reconnect).
        :param timeout: default overall timeout per request, in seconds (None: wait for the
            reply however long it takes). ``claim`` uses ``wait + claim_margin`` instead.
        :param connect_timeout: limit for one connection attempt (TCP, TLS and ``hello``).
        :param connect_attempts: attempts per (re)connect before giving up.
        :param reconnect_timeout: total time one (re)connect may take, backoff included.
        :param busy_retries: how often a ``busy`` reply is retried before it is raised.
        :param claim_margin: added to a claim's ``wait`` for its default timeout.
        :param send_timeout: a write the broker does not take within this long breaks the
            connection.
        :param max_line_bytes: the longest reply line accepted.
        """
        if connect_attempts < 1:
            raise errors.ConfigError("connect_attempts must be at least 1")
        if busy_retries < 0:
            raise errors.ConfigError("busy_retries must not be negative")
        self._transport = Transport(
            host,
            port,
            token=token,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            client_name=client_name,
            worker=registration_of(worker),
            timeout=timeout,
            connect_timeout=connect_timeout,
            connect_attempts=connect_attempts,
            reconnect_timeout=reconnect_timeout,
            busy_retries=busy_retries,
            send_timeout=send_timeout,
            max_line_bytes=max_line_bytes,
        )
        self._claim_margin = claim_margin

    @classmethod
    def from_url(cls, url: str, **options: Unpack[ClientOptions]) -> AsyncClient:
        """A client for ``tcp://host:port`` or ``tls://host:port``.

        Host defaults to 127.0.0.1 and port to 7480. A token may be given in the URL
        (``tcp://TOKEN@host:port``) or as ``token=``; the argument wins. ``tls://`` without
        an ``ssl_context`` uses ``ssl.create_default_context()``.
        """
        target = parse_url(url)
        if options.get("token") is None and target.token is not None:
            options["token"] = target.token
        if target.tls and options.get("ssl_context") is None:
            options["ssl_context"] = ssl.create_default_context()
        return cls(target.host, target.port, **options)

    @classmethod
    def from_env(
        cls, *, config_file: str | Path | None = None, **options: Unpack[ClientOptions]
    ) -> AsyncClient:
        """A client for the broker every ``durable-tq`` command would reach.

        ``DURABLE_TQ_URL``, ``DURABLE_TQ_TOKEN`` and ``DURABLE_TQ_CAFILE``, else host, port,
        first token and certificate from the broker's settings (``config_file``, else
        ``DURABLE_TQ_CONFIG``, else ``./durable_tq.toml``; ``DURABLE_TQ_HOST``/``_PORT``),
        else ``tcp://127.0.0.1:7480``. ``token=`` and ``ssl_context=`` win when given.
        docs/clients.md "Finding the broker" has the whole order.
        """
        from durable_tq import locate  # the settings machinery only for those who use it

        target = locate.locate_broker(token=options.get("token"), config_file=config_file)
        options["token"] = target.token
        if options.get("ssl_context") is None:
            options["ssl_context"] = target.ssl_context
        return cls.from_url(target.url, **options)

    # ------------------------------------------------------------------ state

    @property
    def host(self) -> str:
        return self._transport.host

    @property
    def port(self) -> int:
        return self._transport.port

    @property
    def url(self) -> str:
        return self._transport.url

    @property
    def worker_id(self) -> str | None:
        worker = self._transport.worker
        return worker.id if worker is not None else None

    @property
    def connected(self) -> bool:
        return self._transport.connected

    @property
    def server(self) -> str | None:
        """The broker's name and version, from the last ``hello`` reply."""
        return self._transport.server

    @property
    def protocol_version(self) -> int | None:
        return self._transport.protocol_version

    @property
    def heartbeat_interval(self) -> float | None:
        return self._transport.heartbeat_interval

    @property
    def hello_reply(self) -> dict[str, Any]:
        return self._transport.hello_reply

    # Tests look at these two.
    @property
    def _token(self) -> str | None:
        return self._transport.token

    @property
    def _connections(self) -> set[Connection]:
        """Connections whose reader still runs."""
        return self._transport.connections

    def __repr__(self) -> str:
        status = "connected" if self.connected else "disconnected"
        if self._transport.closed:
            status = "closed"
        worker = f", worker_id={self.worker_id!r}" if self.worker_id is not None else ""
        return f"<AsyncClient {self.url} {status} server={self.server!r}{worker}>"

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> AsyncClient:
        await self._transport.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        return await self._transport.exit(exc_type, exc, traceback)

    async def aclose(self) -> None:
        """Close the connection; requests still waiting raise ``ConnectionLost``.

        Leaving the ``async with`` block does this; calling it earlier is allowed.
        """
        await self._transport.aclose()

    # ------------------------------------------------------------------ requests

    async def request(
        self,
        op: str,
        args: Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Send any operation and return the reply's result fields (without ``id``/``ok``).

        Arguments come from ``args`` and keyword arguments; they are sent as given (None is
        sent as null). ``timeout`` bounds the whole call, retries and reconnects included;
        None uses the client's default. A reply with ``ok: false`` raises the matching
        ``errors`` exception; ``busy`` is retried first.
        """
        arguments = {**(args or {}), **kwargs}
        line = await self._line(op, arguments, timeout)
        reply = msgspec.json.decode(line)
        return {name: value for name, value in reply.items() if name not in ("id", "ok")}

    async def _call(self, op: str, arguments: dict[str, Any], timeout: float | None) -> Any:
        """Send ``op`` and return its reply as the op table's reply type."""
        return decode_reply(op, await self._line(op, arguments, timeout))

    async def _line(self, op: str, arguments: dict[str, Any], timeout: float | None) -> bytes:
        """The ok reply line of ``op`` (errors raised), within ``timeout``."""
        return await self._transport.line(op, arguments, timeout)

    # ------------------------------------------------------------------ operations

    async def enqueue(
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
        """Add a task. ``payload`` is any JSON-able object; higher ``priority`` runs first.

        ``concurrency_key``: the queue's ``key_concurrency`` limits tasks with the same key.
        ``after``: parent task ids; the task waits (state ``waiting``) until all of them
        succeeded. ``result_ttl``: seconds the finished task is kept.
        """
        args = {"queue": queue, "payload": payload, "priority": priority}
        args.update(
            present(
                delay=delay,
                run_at=run_at,
                max_attempts=max_attempts,
                lease=lease,
                unique_key=unique_key,
                concurrency_key=concurrency_key,
                result_ttl=result_ttl,
                after=None if after is None else list(after),
                on_parent_failure=on_parent_failure,
            )
        )
        result: EnqueueResult = await self._call("enqueue", args, timeout)
        return result

    async def enqueue_many(
        self,
        tasks: Sequence[EnqueueRequest | Mapping[str, Any]],
        *,
        timeout: float | None = None,
    ) -> list[EnqueueResult]:
        """Add several tasks in one all-or-nothing request; results in the same order."""
        wire = [enqueue_wire(task) for task in tasks]
        if not wire:
            return []
        reply: s.EnqueueManyReply = await self._call("enqueue_many", {"tasks": wire}, timeout)
        created = reply.created or [True] * len(reply.task_ids)
        if len(reply.task_ids) != len(wire) or len(created) != len(wire):
            raise errors.Internal(
                f"enqueue_many sent {len(wire)} tasks but got {len(reply.task_ids)} ids back"
            )
        return [
            EnqueueResult(task_id=task_id, created=was_created)
            for task_id, was_created in zip(reply.task_ids, created, strict=True)
        ]

    async def claim(
        self,
        queues: str | Sequence[str],
        *,
        max: int = 1,
        wait: float = 0,
        lease: float | None = None,
        timeout: float | None = None,
    ) -> list[ClaimedTask]:
        """Lease up to ``max`` ready tasks; with ``wait``, long-poll up to that many seconds.

        Returns an empty list when nothing came. The default timeout is ``wait`` plus the
        client's ``claim_margin``. A claim given up on (timeout, cancel) whose reply still
        brings tasks releases them, so they do not sit leased until their lease expires.
        """
        queue_list = [queues] if isinstance(queues, str) else list(queues)
        args: dict[str, Any] = {"queues": queue_list, "max": max, "wait": wait}
        args.update(present(lease=lease))
        limit = timeout if timeout is not None else wait + self._claim_margin
        reply: s.ClaimReply = await self._call("claim", args, limit)
        return reply.tasks

    async def ack(
        self,
        task_id: int,
        lease_token: str,
        result: Any = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Mark a claimed task ``succeeded``, optionally storing a JSON-able ``result``."""
        args: dict[str, Any] = {"task_id": task_id, "lease_token": lease_token}
        args.update(present(result=result))
        await self._line("ack", args, timeout)

    async def fail(
        self,
        task_id: int,
        lease_token: str,
        error: str,
        *,
        retry: bool = True,
        delay: float | None = None,
        timeout: float | None = None,
    ) -> FailResult:
        """Record a failed attempt; it is retried (with backoff, or after ``delay``) or dies."""
        args: dict[str, Any] = {
            "task_id": task_id,
            "lease_token": lease_token,
            "error": error,
            "retry": retry,
        }
        args.update(present(delay=delay))
        result: FailResult = await self._call("fail", args, timeout)
        return result

    async def release(
        self,
        task_id: int,
        lease_token: str,
        *,
        delay: float | None = None,
        timeout: float | None = None,
    ) -> None:
        """Give a claimed task back without counting the attempt."""
        args: dict[str, Any] = {"task_id": task_id, "lease_token": lease_token}
        args.update(present(delay=delay))
        await self._line("release", args, timeout)

    async def settle(
        self,
        settles: Sequence[Settlement],
        *,
        claim: ClaimArgs | None = None,
        timeout: float | None = None,
    ) -> SettleReply:
        """End many leases in one request and one commit, and optionally claim more.

        Each ``Settlement`` gets its own result, in order (``results[i].ok``, ``state``,
        ``run_at``, or ``error`` such as ``lease_lost``): one stale lease does not fail the
        others. With ``claim``, the broker then claims up to ``claim.max`` tasks in the same
        round trip (long-polling up to ``claim.wait``), returned in ``tasks``. For a
        registered worker it also counts as a heartbeat: ``worker_state`` says what to do.
        """
        args: dict[str, Any] = {"settles": [item.to_wire() for item in settles]}
        limit = timeout
        if claim is not None:
            args["claim"] = msgspec.to_builtins(claim)
            if limit is None:
                limit = claim.wait + self._claim_margin
        reply: SettleReply = await self._call("settle", args, limit)
        if len(reply.results) != len(settles):
            raise errors.Internal(
                f"settle sent {len(settles)} items but got {len(reply.results)} results back"
            )
        return reply

    async def extend(
        self,
        task_id: int,
        lease_token: str,
        lease: float,
        *,
        timeout: float | None = None,
    ) -> float:
        """Set the lease to ``lease`` seconds from now; returns the new ``lease_expires_at``."""
        reply = await self.extend_reply(task_id, lease_token, lease, timeout=timeout)
        return reply.lease_expires_at

    async def extend_reply(
        self,
        task_id: int,
        lease_token: str,
        lease: float,
        *,
        timeout: float | None = None,
    ) -> ExtendReply:
        """``extend``, with the whole reply: ``lease_expires_at`` and ``cancel`` (True when
        the task's cancel was requested: its holder should stop it)."""
        args = {"task_id": task_id, "lease_token": lease_token, "lease": lease}
        reply: ExtendReply = await self._call("extend", args, timeout)
        return reply

    async def heartbeat(self, *, timeout: float | None = None) -> str:
        """For a registered worker: returns ``running``, ``quiet`` or ``terminate``."""
        reply: s.HeartbeatReply = await self._call("heartbeat", {}, timeout)
        return str(reply.state)

    async def get(self, task_id: int, *, timeout: float | None = None) -> TaskInfo:
        """Everything about one task; ``errors.NotFound`` if there is no such task."""
        reply: s.GetReply = await self._call("get", {"task_id": task_id}, timeout)
        return reply.task

    async def heartbeat_reply(self, *, timeout: float | None = None) -> HeartbeatReply:
        """``heartbeat``, with the whole reply: ``state`` and ``cancel`` (the ids of this
        worker's tasks whose cancel was requested)."""
        reply: HeartbeatReply = await self._call("heartbeat", {}, timeout)
        return reply

    async def progress(
        self,
        task_id: int,
        lease_token: str,
        fraction: float,
        message: str | None = None,
        *,
        timeout: float | None = None,
    ) -> bool:
        """Record a leased task's progress (0..1); True when its cancel was requested."""
        args: dict[str, Any] = {"task_id": task_id, "lease_token": lease_token}
        args.update(fraction=fraction, **present(message=message))
        reply: s.ProgressReply = await self._call("progress", args, timeout)
        return reply.cancel

    async def wait(self, task_id: int, *, timeout: float = 30.0) -> TaskInfo:
        """Wait until the task is finished (``succeeded``, ``dead`` or ``cancelled``) and
        return it; raises ``errors.WaitTimeout`` when ``timeout`` seconds pass first.

        The broker holds the request until the task finishes (no polling). A broken
        connection or a broker restart is ridden out: the client reconnects and waits again
        until ``timeout``. ``errors.NotFound`` if there is no such task (or it was deleted).
        """
        deadline = anyio.current_time() + timeout
        last: TaskInfo | None = None
        while True:
            left = deadline - anyio.current_time()
            if left <= 0:
                break
            chunk = min(left, WAIT_CHUNK)
            try:
                # The reply comes after up to ``chunk`` seconds: give the request room.
                reply: s.WaitReply = await self._call(
                    "wait", {"task_id": task_id, "timeout": chunk}, chunk + 30.0
                )
            except (errors.ConnectionLost, errors.ShuttingDown, errors.RequestTimeout) as exc:
                logger.info("wait for task %d: %s; waiting again", task_id, exc)
                await anyio.sleep(min(WAIT_RETRY, max(deadline - anyio.current_time(), 0)))
                continue
            last = reply.task
            if reply.done:
                return reply.task
        raise errors.WaitTimeout(
            f"task {task_id} did not finish within {timeout:g} s"
            + ("" if last is None else f" (it is {last.state})"),
            task=last,
            task_id=task_id,
        )

    async def queue_settings(
        self,
        queue: str,
        *,
        result_ttl: float | None = None,
        clear_result_ttl: bool = False,
        timeout: float | None = None,
    ) -> QueueSettings:
        """Set a queue's defaults and return them all; with no argument, just read them.

        ``result_ttl``: seconds its finished tasks are kept (a task's own ``result_ttl``
        wins); ``clear_result_ttl``: fall back to the broker's ``retention`` again.
        """
        args: dict[str, Any] = {"queue": queue}
        if clear_result_ttl:
            args["result_ttl"] = None
        elif result_ttl is not None:
            args["result_ttl"] = result_ttl
        reply: QueueSettings = await self._call("queue_settings", args, timeout)
        return reply

    async def cancel(self, task_id: int, *, timeout: float | None = None) -> str:
        """Cancel a task; returns ``cancelled``, or ``cancelling`` for a running (leased)
        task: its worker is told to stop it, and it ends ``cancelled`` (``wait`` for it).

        A ``succeeded`` task raises ``errors.Conflict``.
        """
        reply: s.CancelReply = await self._call("cancel", {"task_id": task_id}, timeout)
        return str(reply.state)

    async def stats(self, *, timeout: float | None = None) -> Stats:
        """Counts per queue and state, live workers and connections."""
        stats: Stats = await self._call("stats", {}, timeout)
        return stats

    async def list_tasks(
        self,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 100,
        after_id: int | None = None,
        *,
        timeout: float | None = None,
    ) -> TaskPage:
        """One page of tasks, filtered by queue and/or state (the ``list`` op)."""
        args: dict[str, Any] = {"limit": limit}
        args.update(present(queue=queue, state=state, after_id=after_id))
        page: TaskPage = await self._call("list", args, timeout)
        return page

    async def iter_tasks(
        self,
        queue: str | None = None,
        state: str | None = None,
        *,
        page_size: int = 100,
    ) -> AsyncIterator[TaskInfo]:
        """Every matching task, fetched page by page."""
        after_id: int | None = None
        while True:
            page = await self.list_tasks(queue, state, page_size, after_id)
            for task in page.tasks:
                yield task
            if page.next_after_id is None or not page.tasks:
                return
            after_id = page.next_after_id

    async def requeue(
        self,
        task_ids: Sequence[int] | None = None,
        *,
        queue: str | None = None,
        state: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Put ``dead``/``cancelled`` tasks back to ``queued`` with attempts reset.

        Give ``task_ids``, or ``queue`` and ``state``. Returns how many were requeued.
        """
        reply = await self.requeue_report(task_ids, queue=queue, state=state, timeout=timeout)
        return reply.count

    async def requeue_report(
        self,
        task_ids: Sequence[int] | None = None,
        *,
        queue: str | None = None,
        state: str | None = None,
        timeout: float | None = None,
    ) -> s.RequeueReply:
        """Like :meth:`requeue`, with the tasks that stayed and why (``skipped``)."""
        args = present(
            task_ids=list(task_ids) if task_ids is not None else None, queue=queue, state=state
        )
        reply: s.RequeueReply = await self._call("requeue", args, timeout)
        return reply

    # --- schedules and queue limits ---------------------------------------------------------

    async def schedule_upsert(
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
        """Create or update a schedule (``cron`` with optional ``tz``, or ``every`` seconds).
        The same spec again changes nothing; a changed one recomputes the next run."""
        args: dict[str, Any] = {"name": name, "queue": queue, "payload": payload}
        args.update(present(cron=cron, tz=tz, every=every, priority=priority, missed=missed))
        reply: s.ScheduleUpsertReply = await self._call("schedule_upsert", args, timeout)
        return reply

    async def schedule_list(self, *, timeout: float | None = None) -> list[s.ScheduleInfo]:
        """Every schedule, with its next run time."""
        reply: s.ScheduleListReply = await self._call("schedule_list", {}, timeout)
        return reply.schedules

    async def schedule_remove(self, name: str, *, timeout: float | None = None) -> None:
        await self._line("schedule_remove", {"name": name}, timeout)

    async def schedule_pause(self, name: str, *, timeout: float | None = None) -> s.ScheduleInfo:
        reply: s.ScheduleReply = await self._call("schedule_pause", {"name": name}, timeout)
        return reply.schedule

    async def schedule_resume(self, name: str, *, timeout: float | None = None) -> s.ScheduleInfo:
        reply: s.ScheduleReply = await self._call("schedule_resume", {"name": name}, timeout)
        return reply.schedule

    async def set_queue_limits(
        self,
        queue: str,
        *,
        rate: float | None = None,
        burst: int | None = None,
        max_leased: int | None = None,
        key_concurrency: int | None = None,
        timeout: float | None = None,
    ) -> s.QueueInfoReply:
        """Set a queue's limits (left out: kept; 0: removed); ``rate`` is tasks per second."""
        args: dict[str, Any] = {"queue": queue}
        args.update(
            present(rate=rate, burst=burst, max_leased=max_leased, key_concurrency=key_concurrency)
        )
        reply: s.QueueInfoReply = await self._call("set_queue_limits", args, timeout)
        return reply

    async def queue_info(self, queue: str, *, timeout: float | None = None) -> s.QueueInfoReply:
        """A queue's limits, counts and rate tokens."""
        reply: s.QueueInfoReply = await self._call("queue_info", {"queue": queue}, timeout)
        return reply

    async def throughput(self, *, timeout: float | None = None) -> s.ThroughputReply:
        """Tasks enqueued, claimed, succeeded, failed and dead per second, broker-wide, over
        the last 15 minutes (sampled in the broker's memory; empty after a restart)."""
        reply: s.ThroughputReply = await self._call("throughput", {}, timeout)
        return reply

    async def pause(self, queue: str, *, timeout: float | None = None) -> None:
        """Stop handing out claims from ``queue`` (enqueues are still accepted)."""
        await self._line("pause", {"queue": queue}, timeout)

    async def resume(self, queue: str, *, timeout: float | None = None) -> None:
        """Undo ``pause``."""
        await self._line("resume", {"queue": queue}, timeout)

    async def purge(
        self, queue: str, state: str | None = None, *, timeout: float | None = None
    ) -> int:
        """Delete a queue's tasks (only ``state`` if given; never ``leased``); returns count."""
        args: dict[str, Any] = {"queue": queue}
        args.update(present(state=state))
        reply: s.CountReply = await self._call("purge", args, timeout)
        return reply.count

    async def workers(self, *, timeout: float | None = None) -> list[WorkerInfo]:
        """The registered workers."""
        reply: s.WorkersReply = await self._call("workers", {}, timeout)
        return reply.workers

    async def worker_state(
        self, worker_id: str, state: str, *, timeout: float | None = None
    ) -> None:
        """Ask a worker to be ``running``, ``quiet`` or ``terminate`` (at its next heartbeat)."""
        await self._line("worker_state", {"worker_id": worker_id, "state": state}, timeout)

    async def bye(self, *, timeout: float | None = None) -> None:
        """End this connection politely. A later request opens a new one."""
        await self._line("bye", {}, timeout)
