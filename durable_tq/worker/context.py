"""What a handler knows about the task it runs: ``TaskContext``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from anyio.from_thread import BlockingPortal

from durable_tq.worker.leases import Lease

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

    def extend_sync(self, seconds: float) -> bool:
        """``extend`` for sync handlers (they run in threads); not for the event loop thread."""
        return self._portal.call(self._extend, self._lease, seconds)
