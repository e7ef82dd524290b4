"""What a handler knows about the task it runs: ``TaskContext``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from anyio.from_thread import BlockingPortal

from durable_tq.worker.leases import Lease
from durable_tq.worker.outcome import TaskCancelled

__all__ = ["TaskContext"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskContext:
    """Given to a handler that takes two arguments: ``async def handler(payload, ctx)``.

    The fields describe this attempt; ``extend`` asks for more time on the lease (the worker
    already renews leases by itself; call it before a step you know will be long).
    """

    task_id: int
    queue: str
    #: 1 for the first run, 2 for the first retry, and so on.
    attempt: int
    priority: int
    #: The fencing token of this claim; ack/fail with an older one are refused.
    lease_token: str
    worker_id: str
    _lease: Lease = field(repr=False, compare=False)
    _extend: Callable[[Lease, float], Awaitable[bool]] = field(repr=False, compare=False)
    _portal: BlockingPortal = field(repr=False, compare=False)

    @property
    def lease_expires_at(self) -> float:
        """When the lease currently runs out (Unix seconds, the broker's clock)."""
        return self._lease.expires_at

    @property
    def lease_lost(self) -> bool:
        """True once the broker said this lease is gone: the task may run elsewhere now, and
        this run's result will not be recorded. Long handlers may check it and give up."""
        return self._lease.lost

    async def extend(self, seconds: float) -> bool:
        """Set the lease to ``seconds`` from now; True when the broker agreed.

        A lost lease or an unreachable broker is logged and returns False; it never raises.
        Later automatic renewals ask for ``seconds`` too.
        """
        return await self._extend(self._lease, seconds)

    @property
    def cancelled(self) -> bool:
        """True once the task's cancel was requested (``durable-tq cancel``). An async
        handler is cancelled by the worker by itself; a sync one (in a thread) cannot be
        stopped from outside, so long sync handlers should check this, or call
        :meth:`check_cancelled`, between steps (cooperative cancellation)."""
        return self._lease.cancel_requested

    def check_cancelled(self) -> None:
        """Raise ``TaskCancelled`` if the task's cancel was requested; the worker then ends
        the task as ``cancelled``."""
        if self._lease.cancel_requested:
            raise TaskCancelled(self.task_id)

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress (0..1, and an optional message up to 1000 characters). Never
        blocks and never raises for broker trouble: the worker sends the latest value at
        most once a second per task, and always the last one before the task settles.
        Callable from async and sync handlers alike."""
        if not 0 <= fraction <= 1:
            raise ValueError("progress fraction must be between 0 and 1")
        if message is not None and len(message) > 1000:
            message = message[:1000]
        self._lease.progress = (float(fraction), message)

    def extend_sync(self, seconds: float) -> bool:
        """``extend`` for sync handlers (they run in threads); not for the event loop thread."""
        return self._portal.call(self._extend, self._lease, seconds)
