"""Running one handler: on the event loop or in a thread, under its timeout, to an outcome.

A sync handler runs in a worker thread (``anyio.to_thread``), at most ``concurrency`` at once.
Python cannot stop a thread: when a sync handler times out, its task is failed at once but the
thread runs on until the function returns; its return value is then ignored. The thread no
longer holds a slot, so the worker keeps its full concurrency.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import anyio

from durable_tq.worker.context import TaskContext
from durable_tq.worker.outcome import MAX_ERROR_CHARS, Failed, Outcome, failure_from, safe_result
from durable_tq.worker.task import Task

__all__ = ["Executor"]

logger = logging.getLogger("durable_tq.worker")


class _ThreadCall:
    """A sync handler call that can outlive its timeout; tracks whether it was left running."""

    def __init__(self, executor: Executor, task: Task, payload: Any, ctx: TaskContext) -> None:
        self._executor = executor
        self._task = task
        self._payload = payload
        self._ctx = ctx
        self._lock = threading.Lock()
        self._done = False
        self._abandoned = False

    def __call__(self) -> Any:
        try:
            return self._task.invoke(self._payload, self._ctx)
        finally:
            with self._lock:
                self._done = True
                abandoned = self._abandoned
            if abandoned:
                self._executor._thread_returned(self._task, self._ctx)

    def abandon(self) -> bool:
        """Mark the call abandoned; False if it had already returned."""
        with self._lock:
            if self._done:
                return False
            self._abandoned = True
        self._executor._thread_abandoned()
        return True


class Executor:
    """Calls handlers and turns whatever happens into an ``Outcome``; never raises for them."""

    def __init__(self, concurrency: int, *, max_error_chars: int = MAX_ERROR_CHARS) -> None:
        self.threads = anyio.CapacityLimiter(concurrency)
        self.max_error_chars = max_error_chars
        self._abandoned_lock = threading.Lock()
        self._abandoned_threads = 0

    @property
    def abandoned_threads(self) -> int:
        """Threads of timed-out sync handlers that are still running."""
        with self._abandoned_lock:
            return self._abandoned_threads

    def _thread_abandoned(self) -> None:
        with self._abandoned_lock:
            self._abandoned_threads += 1

    def _thread_returned(self, task: Task, ctx: TaskContext) -> None:
        with self._abandoned_lock:
            self._abandoned_threads -= 1
        logger.info(
            "task %d (queue %s, attempt %d): the thread of %s, which timed out, has returned; "
            "its result was ignored",
            ctx.task_id,
            ctx.queue,
            ctx.attempt,
            task.name,
        )

    async def execute(self, task: Task, payload: Any, ctx: TaskContext) -> Outcome:
        """Run ``task`` on ``payload``. Cancelling the caller cancels (or abandons) the run."""
        try:
            if task.timeout is None:
                value = await self._call(task, payload, ctx)
            else:
                value, finished = await self._call_within(task, payload, ctx, task.timeout)
                if not finished:
                    return self._timed_out(task)
        except Exception as exc:
            return failure_from(exc, self.max_error_chars)
        return safe_result(value, self.max_error_chars)

    async def _call(self, task: Task, payload: Any, ctx: TaskContext) -> Any:
        if task.is_async:
            return await task.invoke(payload, ctx)
        call = _ThreadCall(self, task, payload, ctx)
        try:
            return await anyio.to_thread.run_sync(
                call, limiter=self.threads, abandon_on_cancel=True
            )
        except anyio.get_cancelled_exc_class():
            if call.abandon():
                logger.warning(
                    "task %d (queue %s, attempt %d): %s was stopped while running in a thread; "
                    "the thread keeps running until the function returns (threads cannot be "
                    "stopped)",
                    ctx.task_id,
                    ctx.queue,
                    ctx.attempt,
                    task.name,
                )
            raise

    async def _call_within(
        self, task: Task, payload: Any, ctx: TaskContext, seconds: float
    ) -> tuple[Any, bool]:
        with anyio.move_on_after(seconds):
            return await self._call(task, payload, ctx), True
        return None, False

    def _timed_out(self, task: Task) -> Failed:
        assert task.timeout is not None
        error = f"TimeoutError: {task.name} ran longer than its timeout of {task.timeout:g} s"
        if not task.is_async:
            error += " (its thread was left running until the function returns)"
        return Failed(error, error, retry=True)
