"""The one place a task's outcome reaches the broker: ack, fail or release.

An outcome is sent only once it is final and safe (a result already checked to be storable
JSON). An ack or fail that cannot be sent because the connection broke is kept and sent again
once the client has reconnected; the broker's fencing makes that safe: if the first send was
in fact committed, or the lease ran out meanwhile, the broker answers ``lease_lost`` and
nothing changes. A lost lease is logged, never raised into user code.
"""

from __future__ import annotations

import logging
import random
import time

import anyio

from durable_tq import errors
from durable_tq.client import AsyncClient, RequestTimeout
from durable_tq.worker.leases import Lease
from durable_tq.worker.outcome import Failed, Outcome, Released, Succeeded, handler_traceback
from durable_tq.worker.task import Task

__all__ = ["Settler", "backoff"]

logger = logging.getLogger("durable_tq.worker")

_BACKOFF_BASE = 0.25
_BACKOFF_CAP = 10.0
#: Unexpected broker errors (``internal``) on one outcome before it is given up.
_OTHER_ERRORS_LIMIT = 5


def backoff(attempt: int) -> float:
    """Seconds to wait before try ``attempt + 1``: exponential, half fixed and half random."""
    ceiling = min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0 ** max(attempt - 1, 0))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _verb(outcome: Outcome) -> str:
    if isinstance(outcome, Succeeded):
        return "ack"
    return "fail" if isinstance(outcome, Failed) else "release"


class Settler:
    """Sends outcomes; retries through reconnects until the broker has answered."""

    def __init__(self, client: AsyncClient, *, request_timeout: float = 30.0) -> None:
        self._client = client
        self._request_timeout = request_timeout

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
        timeout = self._request_timeout
        if isinstance(outcome, Succeeded):
            await self._client.ack(
                claimed.task_id, claimed.lease_token, outcome.result, timeout=timeout
            )
            logger.info("%s: %s succeeded in %.3f s", lease.about, task.name, elapsed)
        elif isinstance(outcome, Failed):
            result = await self._client.fail(
                claimed.task_id,
                claimed.lease_token,
                outcome.error,
                retry=outcome.retry,
                delay=outcome.delay,
                timeout=timeout,
            )
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
        else:
            assert isinstance(outcome, Released)
            await self._client.release(
                claimed.task_id, claimed.lease_token, delay=outcome.delay, timeout=timeout
            )
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
