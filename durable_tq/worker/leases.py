"""Leases this worker holds: extended automatically before they run out, while a task runs.

The broker hands a task out again when its lease expires, so a task that runs longer than its
lease must renew it. Each lease is renewed when ``renew_fraction`` of it has passed (half, by
default), for as long as the worker holds it: while the handler runs and while its outcome is
being sent. A renewal's reply also says whether the task's cancel was requested (a revoke of a
running task): the keeper passes that on at once (``on_cancel``), so a worker learns of a
revoke through its lease renewals as well as through its heartbeats.

Renewal times use this machine's monotonic clock; only the first lease length is read off the
broker's ``lease_expires_at`` (when the worker was not given ``lease``), so keep clocks in step
or pass ``lease`` explicitly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from durable_tq import errors
from durable_tq.client import AsyncClient, ClaimedTask, RequestTimeout

__all__ = ["Lease", "LeaseKeeper"]

logger = logging.getLogger("durable_tq.worker")

#: Shortest lease length assumed when reading it off ``lease_expires_at``.
MIN_LEASE = 0.5
#: After a renewal could not reach the broker, try again this soon (at most).
RETRY_RENEWAL_AFTER = 1.0


@dataclass(eq=False)
class Lease:
    """One claimed task's lease, as this worker knows it."""

    task: ClaimedTask
    #: Seconds each renewal asks for.
    length: float
    #: When to renew next (``anyio.current_time()`` clock).
    renew_at: float
    #: The broker's latest ``lease_expires_at`` (Unix seconds).
    expires_at: float
    #: The broker said the lease is gone (expired, or the task was claimed again).
    lost: bool = False
    #: The task was settled (or given up); a renewal still in flight no longer matters.
    dropped: bool = False
    renewing: bool = field(default=False, repr=False)
    #: The broker asked for this task to be cancelled (``ctx.cancelled``).
    cancel_requested: bool = False
    #: Progress reported by the handler and not sent yet: (fraction, message).
    progress: tuple[float, str | None] | None = None

    @property
    def about(self) -> str:
        """How log lines name this task."""
        task = self.task
        return f"task {task.task_id} (queue {task.queue}, attempt {task.attempt})"


class LeaseKeeper:
    """Holds the leases of claimed tasks and renews them in time; runs as one background task."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        lease: float | None = None,
        renew_fraction: float = 0.5,
        request_timeout: float = 30.0,
        on_cancel: Callable[[Lease], None] | None = None,
    ) -> None:
        """``on_cancel(lease)``: the broker said this task's cancel was requested (called
        once per lease; without it the lease is only marked ``cancel_requested``)."""
        if not 0 < renew_fraction < 1:
            raise errors.ConfigError("renew_fraction must be between 0 and 1")
        self._client = client
        self._lease = lease
        self._renew_fraction = renew_fraction
        self._request_timeout = request_timeout
        self._on_cancel = on_cancel
        self._leases: dict[int, Lease] = {}
        self._changed = anyio.Event()
        #: When the run loop wakes next by itself: a lease due later needs no wake-up.
        self._next_wake = -math.inf

    def __len__(self) -> int:
        return len(self._leases)

    def hold(self, task: ClaimedTask) -> Lease:
        """Start keeping ``task``'s lease alive."""
        length = self._lease
        if length is None:
            length = max(task.lease_expires_at - time.time(), MIN_LEASE)
        lease = Lease(
            task=task,
            length=length,
            renew_at=anyio.current_time() + length * self._renew_fraction,
            expires_at=task.lease_expires_at,
        )
        self._leases[task.task_id] = lease
        if lease.renew_at < self._next_wake:
            # Only then: waking the loop walks every lease, a cost per task at high rates.
            self._changed.set()
        return lease

    def drop(self, lease: Lease) -> None:
        """Stop renewing: the task was settled (or given up)."""
        lease.dropped = True
        if self._leases.get(lease.task.task_id) is lease:
            del self._leases[lease.task.task_id]

    async def extend(self, lease: Lease, seconds: float) -> bool:
        """Ask the broker for ``seconds`` more from now; True when it agreed.

        When the reply says the task's cancel was requested, ``on_cancel`` hears of it. A lost
        lease or an unreachable broker is logged and gives False; nothing is raised,
        so handlers calling ``ctx.extend`` never see broker trouble as an exception.
        """
        if lease.lost or lease.dropped:
            return False
        task = lease.task
        limit = min(self._request_timeout, max(seconds / 2, 1.0))
        try:
            reply = await self._client.extend_reply(
                task.task_id, task.lease_token, seconds, timeout=limit
            )
        except (errors.LeaseLost, errors.NotFound) as exc:
            lease.lost = True
            if lease.dropped:  # settled meanwhile: of course the lease is gone
                return False
            logger.warning(
                "%s: lease lost (%s); the broker may hand the task to another worker, and this "
                "run's outcome will not be recorded",
                lease.about,
                exc.message,
            )
            return False
        except (errors.ConnectionLost, RequestTimeout) as exc:
            logger.info("%s: could not extend the lease yet: %s", lease.about, exc)
            return False
        lease.expires_at = reply.lease_expires_at
        lease.length = seconds
        lease.renew_at = anyio.current_time() + seconds * self._renew_fraction
        self._changed.set()
        logger.debug("%s: lease extended by %.3g s", lease.about, seconds)
        if reply.cancel and not lease.cancel_requested:
            if self._on_cancel is None:
                lease.cancel_requested = True
            else:
                self._on_cancel(lease)
        return True

    async def run(self) -> None:
        """Renew every lease that is due, for ever (cancel to stop)."""
        async with anyio.create_task_group() as renewals:
            while True:
                changed = self._changed = anyio.Event()
                now = anyio.current_time()
                next_due = math.inf
                for lease in list(self._leases.values()):
                    if lease.lost or lease.renewing:
                        continue
                    if lease.renew_at <= now:
                        lease.renewing = True
                        renewals.start_soon(self._renew, lease)
                    else:
                        next_due = min(next_due, lease.renew_at)
                wait = min(next_due - now, 60.0)
                self._next_wake = now + wait
                with anyio.move_on_after(wait):
                    await changed.wait()
                self._next_wake = -math.inf

    async def _renew(self, lease: Lease) -> None:
        try:
            renewed = await self.extend(lease, lease.length)
        except errors.DurableTQError as exc:
            logger.warning("%s: extending the lease failed: %s", lease.about, exc)
            renewed = False
        finally:
            lease.renewing = False
        if not renewed and not lease.lost:
            retry_in = min(RETRY_RENEWAL_AFTER, lease.length / 10)
            lease.renew_at = anyio.current_time() + retry_in
        self._changed.set()
