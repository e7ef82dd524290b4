"""``Worker``: the handlers of an app, its options, and the ways to run it."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import secrets
import signal
import socket
import ssl as ssl_module
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import anyio
from anyio.from_thread import BlockingPortal
from pydantic import JsonValue

from durable_tq import errors, locate
from durable_tq.client import (
    CLIENT_NAME,
    AsyncClient,
    Client,
    EnqueueResult,
    TaskInfo,
    WorkerRegistration,
)
from durable_tq.core import schedules
from durable_tq.worker.execute import Executor
from durable_tq.worker.outcome import MAX_ERROR_CHARS
from durable_tq.worker.runtime import Runtime, RuntimeConfig
from durable_tq.worker.task import EnqueueOptions, Task

__all__ = ["DEFAULT_URL", "Worker", "WorkerSettings"]

logger = logging.getLogger("durable_tq.worker")

#: Where a worker looks when nothing else names the broker (durable_tq.locate).
DEFAULT_URL = "tcp://127.0.0.1:7480"
#: Longest pause between two looks for a broker that is not there yet.
WAIT_FOR_BROKER_CAP = 5.0


def default_worker_id() -> str:
    """``host-pid-random``: unique per process, readable in ``durable-tq workers``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _queue_tuple(queues: Sequence[str]) -> tuple[str, ...]:
    if isinstance(queues, str):
        raise errors.ConfigError("queues must be a list of names, not one string")
    names = tuple(dict.fromkeys(q.strip() for q in queues if q.strip()))
    if not names:
        raise errors.ConfigError("queues must name at least one queue")
    return names


@dataclass(frozen=True)
class PeriodicSpec:
    """A schedule a worker registers when it connects (``Worker.periodic``)."""

    name: str
    queue: str
    cron: str | None
    tz: str | None
    every: float | None
    payload: Any
    priority: int
    missed: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings:
    """Everything a ``Worker`` was configured with (see ``Worker`` for what each means)."""

    concurrency: int = 8
    queues: tuple[str, ...] | None = None
    url: str | None = None
    token: str | None = None
    cafile: Path | None = None
    config_file: Path | None = None
    connect_timeout: float | None = None
    worker_id: str = dataclasses.field(default_factory=default_worker_id)
    claim_batch: int | None = None
    prefetch: int = 0
    wait: float = 5.0
    lease: float | None = None
    ssl: ssl_module.SSLContext | bool | None = None
    grace: float = 30.0
    heartbeat_interval: float | None = None
    request_timeout: float = 30.0
    max_error_chars: int = MAX_ERROR_CHARS
    renew_fraction: float = 0.5
    meta: Mapping[str, JsonValue] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (self.concurrency >= 1, "concurrency must be at least 1"),
            (self.claim_batch is None or self.claim_batch >= 1, "claim_batch must be >= 1"),
            (self.prefetch >= 0, "prefetch must not be negative"),
            (self.wait >= 0, "wait must not be negative"),
            (self.lease is None or self.lease > 0, "lease must be positive"),
            (self.grace >= 0, "grace must not be negative"),
            (self.request_timeout > 0, "request_timeout must be positive"),
            (
                self.connect_timeout is None or self.connect_timeout > 0,
                "connect_timeout must be positive (or None to wait for the broker forever)",
            ),
            (self.max_error_chars >= 100, "max_error_chars must be at least 100"),
            (0 < self.renew_fraction < 1, "renew_fraction must be between 0 and 1"),
            (bool(self.worker_id), "worker_id must not be empty"),
            (
                self.heartbeat_interval is None or self.heartbeat_interval > 0,
                "heartbeat_interval must be positive",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise errors.ConfigError(message)
        if self.queues is not None:
            object.__setattr__(self, "queues", _queue_tuple(self.queues))

    def ssl_context(self) -> ssl_module.SSLContext | None:
        if isinstance(self.ssl, ssl_module.SSLContext):
            return self.ssl
        if self.ssl is True:
            return ssl_module.create_default_context()
        return None  # a tls:// URL still gets a default context from the client


class Worker:
    """Runs handlers for tasks of one or more queues::

        worker = Worker(concurrency=16)

        @worker.task("emails", timeout=30)
        async def send_email(payload, ctx):
            ...
            return {"sent": True}          # stored as the task's result

    Options (all keyword-only):

    :param concurrency: tasks run at once at most; claims ask only for free slots.
    :param queues: the queues to work on; default: every queue that has a handler.
    :param url: the broker, ``tcp://host:port`` or ``tls://host:port`` (a token may be
        given as ``tcp://TOKEN@host:port``). Default: found as every durable-tq command finds
        it (``DURABLE_TQ_URL``, else host and port from the broker's settings; see
        docs/clients.md "Finding the broker").
    :param token: the broker's auth token (default: ``DURABLE_TQ_TOKEN``, else the first of
        the settings' ``auth_tokens``).
    :param cafile: CA certificates to check a TLS broker against (default:
        ``DURABLE_TQ_CAFILE``, else the system's, plus the settings' ``tls_cert``).
    :param config_file: the broker's settings file to find it by (default:
        ``DURABLE_TQ_CONFIG``, else ``./durable_tq.toml`` if present).
    :param connect_timeout: how long a starting worker waits for its broker; None (the
        default) waits until the broker is there or the worker is stopped.
    :param worker_id: how the broker knows this worker; default ``host-pid-random``.
    :param claim_batch: tasks one claim may take at most (default: ``concurrency``).
    :param prefetch: tasks held beyond ``concurrency``, claimed ahead so a slot that frees up
        starts its next task without a round trip (default 0: claim only for free slots).
        The broker lets the worker hold ``concurrency + prefetch`` leases at most; handlers
        still run ``concurrency`` at once. A prefetched task waits for a slot here while an
        idle worker elsewhere could run it: keep it 0 for long tasks, raise it for many short
        ones. On stop, prefetched tasks not started yet are released at once. The CLI's
        ``--prefetch`` sets it.
    :param wait: long-poll of a claim, in seconds.
    :param lease: lease asked for in each claim (default: each task's own, else the
        broker's ``default_lease``); leases are renewed while tasks run.
    :param ssl: an ``ssl.SSLContext``, or True for the system's default one.
    :param grace: on stop, how long running tasks may finish before they are released.
    :param client: an ``AsyncClient`` (entered) or ``Client`` used by ``Task.enqueue`` and
        ``enqueue_sync``, instead of a short-lived connection per call.
    :param heartbeat_interval: override the broker's announced heartbeat period.
    :param request_timeout: limit for each ack/fail/release/extend request.
    :param max_error_chars: bound on the error text stored on a failed task.
    :param renew_fraction: renew a lease when this fraction of it has passed.
    :param meta: extra JSON shown with the worker's registration.
    """

    def __init__(
        self,
        *,
        concurrency: int = 8,
        queues: Sequence[str] | None = None,
        url: str | None = None,
        token: str | None = None,
        cafile: str | Path | None = None,
        config_file: str | Path | None = None,
        connect_timeout: float | None = None,
        worker_id: str | None = None,
        claim_batch: int | None = None,
        prefetch: int = 0,
        wait: float = 5.0,
        lease: float | None = None,
        ssl: ssl_module.SSLContext | bool | None = None,
        grace: float = 30.0,
        client: AsyncClient | Client | None = None,
        heartbeat_interval: float | None = None,
        request_timeout: float = 30.0,
        max_error_chars: int = MAX_ERROR_CHARS,
        renew_fraction: float = 0.5,
        meta: Mapping[str, JsonValue] | None = None,
    ) -> None:
        self._settings = WorkerSettings(
            concurrency=concurrency,
            queues=None if queues is None else _queue_tuple(queues),
            url=url,
            token=token,
            cafile=None if cafile is None else Path(cafile),
            config_file=None if config_file is None else Path(config_file),
            connect_timeout=connect_timeout,
            worker_id=worker_id or default_worker_id(),
            claim_batch=claim_batch,
            prefetch=prefetch,
            wait=wait,
            lease=lease,
            ssl=ssl,
            grace=grace,
            heartbeat_interval=heartbeat_interval,
            request_timeout=request_timeout,
            max_error_chars=max_error_chars,
            renew_fraction=renew_fraction,
            meta=dict(meta or {}),
        )
        self._client = client
        self._tasks: dict[str, Task] = {}
        self._periodic: dict[str, PeriodicSpec] = {}
        self._runtime: Runtime | None = None
        self._executor: Executor | None = None  # of the last run: its abandoned threads
        self._loop_thread: int | None = None
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None
        self._ready = threading.Event()

    def __repr__(self) -> str:
        state = "running" if self._runtime is not None else "idle"
        return (
            f"<Worker {self.worker_id} {state} queues={list(self.queues)} "
            f"concurrency={self._settings.concurrency}>"
        )

    # ------------------------------------------------------------------ configuration

    @property
    def settings(self) -> WorkerSettings:
        return self._settings

    @property
    def worker_id(self) -> str:
        return self._settings.worker_id

    @property
    def tasks(self) -> Mapping[str, Task]:
        """Registered handlers by queue."""
        return dict(self._tasks)

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues this worker claims from."""
        if self._settings.queues is not None:
            return self._settings.queues
        return tuple(self._tasks)

    @property
    def running(self) -> bool:
        return self._runtime is not None

    @property
    def abandoned_threads(self) -> int:
        """Threads of timed-out sync handlers still running (see docs/worker.md), also after
        the run ended (``durable-tq worker`` exits without waiting for them)."""
        executor = self._executor
        return executor.abandoned_threads if executor is not None else 0

    def configure(self, **changes: Any) -> None:
        """Override options before running (the CLI's flags do this)."""
        if self._runtime is not None:
            raise RuntimeError("configure() while the worker runs")
        self._settings = dataclasses.replace(self._settings, **changes)

    def task(
        self,
        queue: str,
        *,
        timeout: float | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        lease: float | None = None,
    ) -> Callable[[Callable[..., Any]], Task]:
        """Register the decorated function as the handler of ``queue``.

        :param timeout: seconds one run may take; longer runs are cancelled (async) or
            abandoned (sync: the thread runs on) and the attempt fails.
        :param priority: default ``priority`` of ``enqueue`` for this task.
        :param max_attempts: default ``max_attempts`` of ``enqueue`` for this task.
        :param lease: default ``lease`` of ``enqueue`` for this task.
        """
        if not isinstance(queue, str) or not 0 < len(queue) <= 200:
            raise errors.ConfigError(f"a queue name is 1 to 200 characters, got {queue!r}")
        defaults: EnqueueOptions = {}
        if priority is not None:
            defaults["priority"] = priority
        if max_attempts is not None:
            defaults["max_attempts"] = max_attempts
        if lease is not None:
            defaults["lease"] = lease

        def register(fn: Callable[..., Any]) -> Task:
            if queue in self._tasks:
                raise errors.ConfigError(
                    f"queue {queue!r} already has a handler: {self._tasks[queue].name}"
                )
            task = Task(fn, queue=queue, timeout=timeout, producer=self, defaults=defaults)
            self._tasks[queue] = task
            return task

        return register

    def periodic(
        self,
        cron: str | None = None,
        *,
        queue: str,
        every: float | str | None = None,
        tz: str | None = None,
        name: str | None = None,
        payload: Any = None,
        priority: int = 0,
        missed: str = "latest",
        **task_options: Any,
    ) -> Callable[[Callable[..., Any]], Task]:
        """Run the decorated function on a schedule: ``cron`` (5 fields, in ``tz``) or
        ``every`` (seconds, or ``"30s"``, ``"5m"``...). It becomes the handler of ``queue``
        (``task_options`` as for :meth:`task`) and its schedule (named ``name``, default the
        queue) is upserted on the broker when the worker connects: the same spec again changes
        nothing, so any number of workers may register it. The broker fires it, not the
        worker; registering needs an admin token (a refusal is logged, the worker runs on)."""
        try:  # a bad spec fails at import time, not when the broker refuses it
            seconds = schedules.parse_every(every) if isinstance(every, str) else every
            schedules.Timing(cron=cron, tz=tz, every=seconds)
        except errors.BadRequest as exc:
            raise errors.ConfigError(f"periodic task on {queue!r}: {exc.message}") from None
        if missed not in schedules.MISSED_POLICIES:
            raise errors.ConfigError(f"missed: {missed!r} is not one of latest, none")
        spec = PeriodicSpec(name or queue, queue, cron, tz, seconds, payload, priority, missed)
        as_task = self.task(queue, **task_options)

        def register(fn: Callable[..., Any]) -> Task:
            task = as_task(fn)
            self._periodic[spec.name] = spec
            return task

        return register

    @property
    def periodic_specs(self) -> Mapping[str, PeriodicSpec]:
        return dict(self._periodic)

    async def _register_schedules(self, client: AsyncClient) -> None:
        for spec in self._periodic.values():
            try:
                reply = await client.schedule_upsert(
                    spec.name,
                    queue=spec.queue,
                    cron=spec.cron,
                    tz=spec.tz,
                    every=spec.every,
                    payload=spec.payload,
                    priority=spec.priority,
                    missed=spec.missed,
                )
            except errors.DurableTQError as exc:
                logger.error("schedule %s could not be registered: %s", spec.name, exc)
                continue
            logger.info(
                "schedule %s %s (next run at %s)",
                spec.name,
                reply.change,
                reply.schedule.next_run_at,
            )

    def _runtime_config(self) -> RuntimeConfig:
        s = self._settings
        queues = self.queues
        if not self._tasks:
            raise errors.ConfigError("the worker has no handlers; register some with @task")
        unhandled = [q for q in queues if q not in self._tasks]
        if unhandled or not queues:
            raise errors.ConfigError(
                f"no handler for queue(s) {', '.join(unhandled) or '(none given)'}; "
                f"handlers exist for: {', '.join(self._tasks)}"
            )
        return RuntimeConfig(
            worker_id=s.worker_id,
            queues=queues,
            concurrency=s.concurrency,
            claim_batch=s.claim_batch or s.concurrency,
            wait=s.wait,
            lease=s.lease,
            grace=s.grace,
            request_timeout=s.request_timeout,
            max_error_chars=s.max_error_chars,
            heartbeat_interval=s.heartbeat_interval,
            renew_fraction=s.renew_fraction,
            prefetch=s.prefetch,
        )

    def broker_target(self) -> locate.BrokerTarget:
        """Where this worker finds its broker: its options, then the environment, then the
        broker's settings (durable_tq.locate)."""
        s = self._settings
        target = locate.locate_broker(
            url=s.url, token=s.token, cafile=s.cafile, config_file=s.config_file
        )
        own_context = s.ssl_context()
        if own_context is not None:
            target = dataclasses.replace(target, ssl_context=own_context)
        return target

    def _new_client(
        self,
        registration: WorkerRegistration | None = None,
        target: locate.BrokerTarget | None = None,
        **options: Any,
    ) -> AsyncClient:
        target = target or self.broker_target()
        return AsyncClient.from_url(
            target.url,
            token=target.token,
            ssl_context=target.ssl_context,
            worker=registration,
            client_name=f"{CLIENT_NAME} worker" if registration is not None else CLIENT_NAME,
            **options,
        )

    async def _wait_for_broker(self, target: locate.BrokerTarget, handle_signals: bool) -> bool:
        """Wait until a broker answers at ``target``; False when stopped by a signal first.

        One line when the wait starts; ``connect_timeout`` bounds it (then ConnectionLost).
        A refused token or certificate is not waited out: it is raised at once.
        """
        stopped = False
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            if handle_signals:

                async def watch_signals() -> None:
                    nonlocal stopped
                    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for signum in signals:
                            logger.warning(
                                "received %s while waiting for the broker: not starting",
                                signal.Signals(signum).name,
                            )
                            stopped = True
                            tg.cancel_scope.cancel()

                tg.start_soon(watch_signals)
            try:
                await self._probe_until_answered(target)
            except Exception as exc:  # raised below as itself, not in an ExceptionGroup
                failure = exc
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return not stopped

    async def _probe_until_answered(self, target: locate.BrokerTarget) -> None:
        limit = self._settings.connect_timeout
        started = anyio.current_time()
        attempt = 0
        while True:
            attempt += 1
            probe = self._new_client(target=target, connect_attempts=1, connect_timeout=10.0)
            try:
                async with probe:
                    if attempt > 1:
                        logger.info("the broker at %s answers now", target.shown_url)
                    return
            except (errors.ConnectionLost, errors.TooManyConnections, errors.ShuttingDown) as exc:
                reason = locate.unreachable_reason(exc)
                if _refused_for_good(exc):
                    raise
                waited = anyio.current_time() - started
                if limit is not None and waited >= limit:
                    raise errors.ConnectionLost(
                        f"no broker answered at {target.shown_url} within {limit:g} s "
                        f"(connect_timeout): {reason}"
                    ) from exc
                if attempt == 1:
                    bound = "until it does" if limit is None else f"up to {limit:g} s"
                    logger.warning(
                        "no broker answers at %s yet (%s); waiting for it, %s",
                        target.shown_url,
                        reason,
                        bound,
                    )
                delay = min(WAIT_FOR_BROKER_CAP, 0.25 * 2 ** min(attempt - 1, 5))
                if limit is not None:
                    delay = min(delay, max(limit - waited, 0.0))
                await anyio.sleep(delay)

    # ------------------------------------------------------------------ running

    async def run(self, *, until_idle: bool = False, handle_signals: bool = False) -> None:
        """Connect, register and work until stopped.

        :param until_idle: return once this worker's queues have nothing queued, scheduled
            or leased and nothing runs here (tests, batch jobs, benchmarks).
        :param handle_signals: SIGTERM/SIGINT stop gracefully; a second one stops at once.
            Only in the main thread.
        """
        if self._runtime is not None:
            raise RuntimeError(f"worker {self.worker_id} is already running")
        config = self._runtime_config()
        if handle_signals and threading.current_thread() is not threading.main_thread():
            logger.debug("not in the main thread: signals are not handled")
            handle_signals = False
        registration = WorkerRegistration(
            id=config.worker_id,
            queues=list(config.queues),
            concurrency=config.concurrency,
            prefetch=config.prefetch,
            meta={
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "tasks": {queue: task.name for queue, task in self._tasks.items()},
                **self._settings.meta,
            },
        )
        target = self.broker_target()
        if not await self._wait_for_broker(target, handle_signals):
            return
        client_cm = self._new_client(registration, target)
        async with client_cm as client, BlockingPortal() as portal:
            runtime = Runtime(config, {q: self._tasks[q] for q in config.queues}, client, portal)
            self._runtime = runtime
            self._executor = runtime.executor
            await self._register_schedules(client)
            self._loop_thread = threading.get_ident()
            self._ready.set()
            logger.info(
                "worker %s connected to %s (%s): queues %s, concurrency %d",
                config.worker_id,
                client.url,
                client.server,
                ", ".join(config.queues),
                config.concurrency,
            )
            try:
                await runtime.run(until_idle=until_idle, handle_signals=handle_signals)
            finally:
                self._runtime = None
                self._loop_thread = None

    async def drain(self) -> None:
        """Work until the queues are empty and nothing runs, then return."""
        await self.run(until_idle=True)

    def run_sync(self, *, until_idle: bool = False, handle_signals: bool = True) -> None:
        """``run`` in a new event loop, blocking until the worker stops (scripts, the CLI)."""
        anyio.run(
            functools.partial(self.run, until_idle=until_idle, handle_signals=handle_signals),
            backend="asyncio",
        )

    def start(self, *, timeout: float = 60.0) -> None:
        """Run the worker in a background thread; returns once it is connected.

        Stop it with ``stop()`` and wait for it with ``join()``.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"worker {self.worker_id} was already started")
        self._ready.clear()
        self._thread_error = None

        def main() -> None:
            try:
                anyio.run(self.run, backend="asyncio")
            except BaseException as exc:
                self._thread_error = exc
                logger.exception("worker %s stopped with an error", self.worker_id)
            finally:
                self._ready.set()

        self._thread = threading.Thread(
            target=main, name=f"durable_tq worker {self.worker_id}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"worker {self.worker_id} did not connect within {timeout} s")
        if self._thread_error is not None:
            raise self._thread_error

    def join(self, timeout: float | None = None) -> bool:
        """Wait for a ``start()``-ed worker to stop; True when it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, *, now: bool = False) -> None:
        """Stop gracefully: no more claims, running tasks get ``grace`` seconds, the rest are
        released. ``now=True`` releases running tasks at once. Safe from any thread, and from
        handlers; does nothing when the worker is not running."""
        runtime = self._runtime
        if runtime is None:
            return
        request = functools.partial(runtime.request_stop, now=now)
        if threading.get_ident() == self._loop_thread:
            request()
            return
        try:
            runtime.portal.call(request)
        except RuntimeError:
            logger.debug("worker %s: stop() after the run ended", self.worker_id)

    # ------------------------------------------------------------------ producing

    async def enqueue(
        self, queue: str, payload: Any = None, **options: Unpack[EnqueueOptions]
    ) -> EnqueueResult:
        """Put a task on ``queue``: through the given client, the running worker's own
        connection, or a short-lived connection."""
        if isinstance(self._client, AsyncClient):
            return await self._client.enqueue(queue, payload, **options)
        runtime = self._runtime
        if runtime is not None and threading.get_ident() == self._loop_thread:
            return await runtime.client.enqueue(queue, payload, **options)
        async with self._new_client() as client:
            return await client.enqueue(queue, payload, **options)

    def enqueue_sync(
        self, queue: str, payload: Any = None, **options: Unpack[EnqueueOptions]
    ) -> EnqueueResult:
        """``enqueue`` for blocking code: scripts, and sync handlers (they run in threads)."""
        if isinstance(self._client, Client):
            return self._client.enqueue(queue, payload, **options)
        runtime = self._runtime
        if runtime is not None:
            if threading.get_ident() == self._loop_thread:
                raise RuntimeError("enqueue_sync would block the event loop; await enqueue()")
            return runtime.portal.call(functools.partial(self.enqueue, queue, payload, **options))
        target = self.broker_target()
        with Client.from_url(
            target.url, token=target.token, ssl_context=target.ssl_context
        ) as client:
            return client.enqueue(queue, payload, **options)

    async def wait_for(self, task_id: int, timeout: float) -> TaskInfo:  # noqa: ASYNC109
        """Wait until a task is finished (``AsyncClient.wait``), on the same connection
        ``enqueue`` would use; for ``TaskHandle.result``."""
        if isinstance(self._client, AsyncClient):
            return await self._client.wait(task_id, timeout=timeout)
        runtime = self._runtime
        if runtime is not None and threading.get_ident() == self._loop_thread:
            return await runtime.client.wait(task_id, timeout=timeout)
        async with self._new_client() as client:
            return await client.wait(task_id, timeout=timeout)

    def wait_for_sync(self, task_id: int, timeout: float) -> TaskInfo:
        """``wait_for`` for blocking code."""
        if isinstance(self._client, Client):
            return self._client.wait(task_id, timeout=timeout)
        runtime = self._runtime
        if runtime is not None:
            if threading.get_ident() == self._loop_thread:
                raise RuntimeError("result() would block the event loop; await it")
            return runtime.portal.call(functools.partial(self.wait_for, task_id, timeout))
        target = self.broker_target()
        with Client.from_url(
            target.url, token=target.token, ssl_context=target.ssl_context
        ) as client:
            return client.wait(task_id, timeout=timeout)


def _refused_for_good(exc: BaseException) -> bool:
    """A failure that waiting will not cure: the broker's certificate is not trusted."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl_module.SSLCertVerificationError):
            return True
        current = current.__cause__ or current.__context__
    return False
