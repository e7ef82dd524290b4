"""A registered handler: ``Task`` wraps the decorated function and knows how to call it."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict, Unpack

from durable_tq import errors
from durable_tq.client import EnqueueResult, TaskInfo
from durable_tq.worker.context import TaskContext

__all__ = ["EnqueueOptions", "Task", "TaskHandle", "TaskHandleSync"]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class EnqueueOptions(TypedDict, total=False):
    """Options of ``enqueue`` (as in ``AsyncClient.enqueue``)."""

    priority: int
    delay: float | None
    run_at: float | None
    max_attempts: int | None
    lease: float | None
    unique_key: str | None
    result_ttl: float | None
    after: Sequence[int] | None
    on_parent_failure: str | None
    timeout: float | None


class Producer(Protocol):
    """Where ``Task.enqueue`` sends tasks: the ``Worker`` that owns the task."""

    async def enqueue(
        self, queue: str, payload: Any = None, **options: Unpack[EnqueueOptions]
    ) -> EnqueueResult: ...

    def enqueue_sync(
        self, queue: str, payload: Any = None, **options: Unpack[EnqueueOptions]
    ) -> EnqueueResult: ...

    async def wait_for(self, task_id: int, timeout: float) -> TaskInfo: ...  # noqa: ASYNC109

    def wait_for_sync(self, task_id: int, timeout: float) -> TaskInfo: ...


def _result_of(task: TaskInfo) -> Any:
    if task.state == "succeeded":
        return task.result
    raise errors.TaskFailed(
        f"task {task.task_id} ended {task.state}: {task.last_error or 'no error recorded'}",
        task=task,
    )


@dataclass(frozen=True, slots=True)
class TaskHandle:
    """What ``Task.enqueue`` returns: the task's id, and a way to wait for its result."""

    task_id: int
    created: bool
    _producer: Producer

    async def result(self, timeout: float = 30.0) -> Any:  # noqa: ASYNC109
        """The handler's return value once the task succeeded. Raises ``TaskFailed`` if it
        ended dead or cancelled, ``WaitTimeout`` if it is not finished within ``timeout``."""
        return _result_of(await self._producer.wait_for(self.task_id, timeout))


@dataclass(frozen=True, slots=True)
class TaskHandleSync:
    """What ``Task.enqueue_sync`` returns: ``TaskHandle`` for blocking code."""

    task_id: int
    created: bool
    _producer: Producer

    def result(self, timeout: float = 30.0) -> Any:
        """As ``TaskHandle.result``, blocking."""
        return _result_of(self._producer.wait_for_sync(self.task_id, timeout))


def _is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - a callable object's method
    return call is not None and inspect.iscoroutinefunction(call)


def _context_style(fn: Callable[..., Any], name: str) -> str | None:
    """How ``fn`` wants the context: None (payload only), ``""`` (second positional) or a
    keyword name (``ctx``/``context`` keyword-only)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return ""  # builtins without a signature: give both, as documented
    params = list(signature.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return ""
    positional = [p for p in params if p.kind in _POSITIONAL]
    if len(positional) >= 2:
        return ""
    for p in params:
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name in ("ctx", "context"):
            return p.name
    if len(positional) == 1:
        return None
    raise errors.ConfigError(f"handler {name} must take (payload) or (payload, ctx)")


class Task:
    """A handler registered with ``@worker.task(queue)``.

    Calling it calls the original function, so it stays easy to test. ``enqueue`` and
    ``enqueue_sync`` put a task for it on its queue, with the defaults given to the decorator.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        queue: str,
        timeout: float | None,
        producer: Producer,
        defaults: EnqueueOptions,
    ) -> None:
        if not callable(fn):
            raise errors.ConfigError(f"@task needs a function, got {fn!r}")
        if timeout is not None and timeout <= 0:
            raise errors.ConfigError("timeout must be positive (or None for no limit)")
        self.fn = fn
        self.queue = queue
        self.timeout = timeout
        self.name: str = getattr(fn, "__qualname__", None) or repr(fn)
        self.is_async = _is_async(fn)
        self._context_style = _context_style(fn, self.name)
        self._producer = producer
        self.defaults: EnqueueOptions = defaults
        # Name and docstring only: merging fn's __dict__ could overwrite our attributes.
        functools.update_wrapper(self, fn, updated=())

    @property
    def takes_context(self) -> bool:
        return self._context_style is not None

    def __repr__(self) -> str:
        kind = "async" if self.is_async else "sync"
        return f"<Task {self.name} queue={self.queue!r} {kind} timeout={self.timeout}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def invoke(self, payload: Any, ctx: TaskContext) -> Any:
        """Call the function the way its signature asks for (a coroutine if it is async)."""
        if self._context_style is None:
            return self.fn(payload)
        if self._context_style == "":
            return self.fn(payload, ctx)
        return self.fn(payload, **{self._context_style: ctx})

    async def enqueue(self, payload: Any = None, **options: Unpack[EnqueueOptions]) -> TaskHandle:
        """Put a task for this handler on its queue (async); ``await handle.result()``."""
        merged: EnqueueOptions = {**self.defaults, **options}
        done = await self._producer.enqueue(self.queue, payload, **merged)
        return TaskHandle(done.task_id, done.created, self._producer)

    def enqueue_sync(
        self, payload: Any = None, **options: Unpack[EnqueueOptions]
    ) -> TaskHandleSync:
        """Put a task for this handler on its queue, blocking (scripts, sync handlers)."""
        merged: EnqueueOptions = {**self.defaults, **options}
        done = self._producer.enqueue_sync(self.queue, payload, **merged)
        return TaskHandleSync(done.task_id, done.created, self._producer)
