"""The one place a task's outcome reaches the broker: ack, fail or release, sent in batches.

Outcomes are collected and sent together in one ``settle`` request (one commit on the
broker): while one settle is on the wire, the outcomes finishing meanwhile wait and go out
in the next one, so an idle worker settles at once and a busy one in batches, with no timer.
Each outcome gets its own result back and is handled as a single ack/fail/release would be.
When the runtime has free slots, the settle also claims the next tasks (one round trip), and
its reply carries the worker's state, as a heartbeat's does.

An outcome is sent only once it is final and safe (a result already checked to be storable
JSON). An ack or fail that cannot be sent because the connection broke is kept and sent again
once the client has reconnected; the broker's fencing makes that safe: if the first send was
in fact committed, or the lease ran out meanwhile, the broker answers ``lease_lost`` and
nothing changes. A lost lease is logged, never raised into user code.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from durable_tq import errors
from durable_tq.backoff import backoff_delay
from durable_tq.client import AsyncClient, ClaimArgs, RequestTimeout, Settlement, SettleReply
from durable_tq.wire import schema as s
from durable_tq.worker.leases import Lease
from durable_tq.worker.outcome import (
    Cancelled,
    Failed,
    Outcome,
    Released,
    Succeeded,
    handler_traceback,
)
from durable_tq.worker.task import Task

__all__ = ["Settler", "backoff"]

logger = logging.getLogger("durable_tq.worker")

_BACKOFF_BASE = 0.25
_BACKOFF_CAP = 10.0
#: Unexpected broker errors (``internal``) on one outcome before it is given up.
_OTHER_ERRORS_LIMIT = 5
#: Outcomes per ``settle`` request at most.
MAX_BATCH = 256


def backoff(attempt: int) -> float:
    """Seconds to wait before try ``attempt + 1``: exponential, half fixed and half random."""
    return backoff_delay(attempt, base=_BACKOFF_BASE, cap=_BACKOFF_CAP, jitter=-0.5)


def _verb(outcome: Outcome) -> str:
    if isinstance(outcome, Succeeded):
        return "ack"
    if isinstance(outcome, Cancelled):
        return "cancel"
    return "fail" if isinstance(outcome, Failed) else "release"


@dataclass(eq=False)
class _Pending:
    """One outcome waiting for its batch's reply."""

    item: Settlement
    done: anyio.Event = field(default_factory=anyio.Event)
    result: s.SettleResult | None = None
    error: errors.DurableTQError | None = None

    def finish(self, result: s.SettleResult | None, error: errors.DurableTQError | None) -> None:
        self.result, self.error = result, error
        self.done.set()


@dataclass
class Tally:
    """Outcomes recorded since the last summary line."""

    succeeded: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0


class Settler:
    """Sends outcomes in batches; retries through reconnects until the broker has answered.

    ``claim_for()`` says what to claim along with a batch (None: nothing); ``on_reply`` gets
    every settle reply (claimed tasks, worker state). ``run()`` is the sending task.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        request_timeout: float = 30.0,
        max_batch: int = MAX_BATCH,
        claim_for: Callable[[], ClaimArgs | None] | None = None,
        on_reply: Callable[[SettleReply], None] | None = None,
    ) -> None:
        self._client = client
        self._request_timeout = request_timeout
        self._max_batch = max_batch
        self._claim_for = claim_for
        self._on_reply = on_reply
        self._queue: list[_Pending] = []
        self._wakeup = anyio.Event()
        self._in_flight = False
        #: When the broker last answered a settle (``anyio.current_time()``): it counts as a
        #: heartbeat for a registered worker.
        self.last_answered = -math.inf
        self.tally = Tally()
        #: Settle requests sent and outcomes in them (for measurements and tests).
        self.requests = 0
        self.settled = 0

    @property
    def busy(self) -> bool:
        """Outcomes are waiting or a settle is on the wire."""
        return bool(self._queue) or self._in_flight

    async def run(self) -> None:
        """Send the waiting outcomes, a batch at a time, for ever (cancel to stop)."""
        while True:
            while not self._queue:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            await self._flush(batch)

    async def _flush(self, batch: list[_Pending]) -> None:
        claim = self._claim_for() if self._claim_for is not None else None
        self._in_flight = True
        try:
            reply = await self._client.settle(
                [pending.item for pending in batch], claim=claim, timeout=self._request_timeout
            )
        except (errors.BadRequest, errors.FrameTooLarge) as exc:
            if len(batch) == 1:
                batch[0].finish(None, exc)
                return
            # One outcome the broker refuses (a result too large) must not sink the others.
            for pending in batch:
                await self._flush([pending])
            return
        except errors.DurableTQError as exc:
            for pending in batch:
                pending.finish(None, exc)
            return
        finally:
            self._in_flight = False
            for pending in batch:  # cancelled: nobody waits for ever
                if not pending.done.is_set():
                    pending.finish(None, errors.ConnectionLost("the settle was cancelled"))
        self.last_answered = anyio.current_time()
        self.requests += 1
        self.settled += len(batch)
        for pending, result in zip(batch, reply.results, strict=True):
            error = None if result.ok else errors.from_wire(result.error or {})
            pending.finish(result, error)
        if self._on_reply is not None:
            self._on_reply(reply)

    async def _submit(self, item: Settlement) -> s.SettleResult:
        """Queue ``item`` for the next batch; its own result, or its own error raised."""
        pending = _Pending(item)
        self._queue.append(pending)
        self._wakeup.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def settle(self, lease: Lease, task: Task, outcome: Outcome, elapsed: float) -> None:
        """Record ``outcome`` for ``lease``'s task and log how the run ended. Never raises
        broker errors; cancel it to give up (the lease then expires on the broker)."""
        tries = 0
        other_errors = 0
        while True:
            tries += 1
            try:
                await self._send(lease, task, outcome, elapsed)
                return
            except (errors.LeaseLost, errors.NotFound) as exc:
                self.tally.lost += 1
                self._log_lost(lease, task, outcome, exc, resent=tries > 1)
                return
            except (errors.ConnectionLost, RequestTimeout) as exc:
                delay = backoff(tries)
                logger.warning(
                    "%s: could not %s (%s); keeping it and trying again in %.2f s",
                    lease.about,
                    _verb(outcome),
                    exc,
                    delay,
                )
                await anyio.sleep(delay)
            except (errors.BadRequest, errors.FrameTooLarge) as exc:
                if not isinstance(outcome, Succeeded):
                    logger.error(
                        "%s: the broker refused the %s: %s", lease.about, _verb(outcome), exc
                    )
                    return
                # The result passed our JSON check but not the broker's (size, nesting).
                error = f"the broker refused the handler's result: {exc.code}: {exc.message}"
                outcome = Failed(error[:4000], error[:200], retry=False)
            except errors.DurableTQError as exc:
                other_errors += 1
                if other_errors >= _OTHER_ERRORS_LIMIT:
                    logger.error(
                        "%s: giving up on the %s after %d errors (%s); the broker hands the "
                        "task out again when its lease expires",
                        lease.about,
                        _verb(outcome),
                        other_errors,
                        exc,
                    )
                    return
                delay = backoff(tries)
                logger.warning(
                    "%s: %s failed (%s); trying again in %.2f s",
                    lease.about,
                    _verb(outcome),
                    exc,
                    delay,
                )
                await anyio.sleep(delay)

    async def _send(self, lease: Lease, task: Task, outcome: Outcome, elapsed: float) -> None:
        claimed = lease.task
        if isinstance(outcome, Succeeded):
            await self._submit(Settlement.ack(claimed.task_id, claimed.lease_token, outcome.result))
            self.tally.succeeded += 1
            # DEBUG: a line per success would cost more than a small task (a summary line
            # at INFO counts them instead).
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("%s: %s succeeded in %.3f s", lease.about, task.name, elapsed)
        elif isinstance(outcome, Failed):
            item = Settlement.fail(
                claimed.task_id,
                claimed.lease_token,
                outcome.error,
                retry=outcome.retry,
                delay=outcome.delay,
            )
            result = await self._submit(item)
            self.tally.failed += 1
            if result.state == "dead":
                why = "attempts used up" if outcome.retry else "no retry asked for"
                fate = f"the task is dead ({why})"
            elif result.run_at is not None:
                fate = f"retry in {max(result.run_at - time.time(), 0.0):.2f} s"
            else:
                fate = "retry"
            level = logging.INFO if outcome.requested else logging.WARNING
            # One line (task, queue, attempt, what happens next), then the handler's own
            # frames: the worker's frames above them are noise (DURABLE_TQ_DEBUG keeps them).
            trace = "" if outcome.exc is None else "\n" + handler_traceback(outcome.exc)
            logger.log(
                level,
                "%s: %s failed after %.3f s: %s; %s%s",
                lease.about,
                task.name,
                elapsed,
                outcome.summary,
                fate,
                trace,
            )
        elif isinstance(outcome, Cancelled):
            await self._submit(
                Settlement.cancel(claimed.task_id, claimed.lease_token, outcome.reason)
            )
            logger.info(
                "%s: %s cancelled after %.3f s (%s)",
                lease.about,
                task.name,
                elapsed,
                outcome.reason,
            )
        else:
            assert isinstance(outcome, Released)
            item = Settlement.release(claimed.task_id, claimed.lease_token, delay=outcome.delay)
            await self._submit(item)
            self.tally.released += 1
            logger.warning(
                "%s: %s released after %.3f s (%s); the attempt does not count",
                lease.about,
                task.name,
                elapsed,
                outcome.reason,
            )

    @staticmethod
    def _log_lost(
        lease: Lease, task: Task, outcome: Outcome, exc: errors.DurableTQError, *, resent: bool
    ) -> None:
        if resent:
            logger.warning(
                "%s: the %s was sent again after a broken connection and the broker answered "
                "%s: the first one was most likely recorded, or the lease ran out meanwhile",
                lease.about,
                _verb(outcome),
                exc.code,
            )
            return
        logger.warning(
            "%s: %s finished but its lease was lost (%s); the %s was not recorded and the "
            "task runs again elsewhere (handlers should be idempotent)",
            lease.about,
            task.name,
            exc.message,
            _verb(outcome),
        )
