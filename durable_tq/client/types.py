"""The client's public request and reply types: the op table's, under the names users import."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from durable_tq import errors
from durable_tq.wire import schema as s

__all__ = [
    "ClaimArgs",
    "ClaimedTask",
    "ClientOptions",
    "EnqueueRequest",
    "EnqueueResult",
    "ExtendReply",
    "FailResult",
    "HeartbeatReply",
    "QueueSettings",
    "QueueStats",
    "SettleReply",
    "SettleResult",
    "Settlement",
    "Stats",
    "TaskInfo",
    "TaskPage",
    "WorkerInfo",
    "WorkerRegistration",
    "present",
]

# --------------------------------------------------------------------------- result models


# The reply types are the op table's (durable_tq/wire/schema.py), decoded straight from the
# reply line by msgspec: the client cannot drift from what the broker sends. The public names
# below are what users import; tests/e2e/test_settle.py checks each against ``wire.ops.OPS``.

#: What ``enqueue`` gives back: ``task_id``, and ``created`` (False when a live task with the
#: same ``unique_key`` existed; ``task_id`` is then its id).
EnqueueResult = s.EnqueueReply
#: A task handed to this client by ``claim`` or ``settle``; finish it with ack/fail/release.
ClaimedTask = s.LeasedTask
#: An extend's reply: the new ``lease_expires_at``, and ``cancel`` (the task's cancel was
#: requested: stop it).
ExtendReply = s.ExtendReply
#: A heartbeat's reply: the worker's ``state``, and ``cancel`` (its tasks to stop).
HeartbeatReply = s.HeartbeatReply
#: A queue's defaults: ``queue``, ``result_ttl``.
QueueSettings = s.QueueSettingsReply
#: Where a failed task went: ``scheduled``/``queued`` (retried, ``run_at``) or ``dead``.
FailResult = s.FailReply
#: Everything ``get`` and ``list`` report about one task.
TaskInfo = s.TaskInfo
#: Task counts per state for one queue.
QueueStats = s.QueueStats
#: The broker's ``stats`` reply.
Stats = s.StatsReply
#: One page of ``list``; pass ``next_after_id`` back as ``after_id`` for the next one.
TaskPage = s.ListReply
#: A registered worker as the ``workers`` op reports it.
WorkerInfo = s.WorkerInfo
#: What ``settle`` gives back: ``results`` (one per item, in order), ``tasks`` (claimed, when
#: a claim was given) and ``worker_state`` (registered workers).
SettleReply = s.SettleReply
#: The outcome of one settle item: ``ok`` with ``state``/``run_at``, or ``error``.
SettleResult = s.SettleResult
#: What a ``settle`` claims in the same round trip: ``queues``, ``max``, ``wait``, ``lease``.
ClaimArgs = s.ClaimArgs


def present(**values: Any) -> dict[str, Any]:
    """The arguments that were given: optional protocol fields are left out, never null."""
    return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True, slots=True)
class Settlement:
    """One lease to end inside ``settle``: an ack, a fail or a release.

    Build them with ``Settlement.ack(...)``, ``Settlement.fail(...)`` or
    ``Settlement.release(...)``.
    """

    task_id: int
    lease_token: str
    outcome: s.Outcome
    result: Any = None  # ack
    error: str = ""  # fail
    retry: bool = True  # fail
    delay: float | None = None  # fail, release

    @classmethod
    def ack(cls, task_id: int, lease_token: str, result: Any = None) -> Settlement:
        return cls(task_id, lease_token, s.Outcome.ACK, result=result)

    @classmethod
    def fail(
        cls,
        task_id: int,
        lease_token: str,
        error: str,
        *,
        retry: bool = True,
        delay: float | None = None,
    ) -> Settlement:
        return cls(task_id, lease_token, s.Outcome.FAIL, error=error, retry=retry, delay=delay)

    @classmethod
    def release(cls, task_id: int, lease_token: str, *, delay: float | None = None) -> Settlement:
        return cls(task_id, lease_token, s.Outcome.RELEASE, delay=delay)

    @classmethod
    def cancel(cls, task_id: int, lease_token: str, reason: str = "") -> Settlement:
        """End the lease as ``cancelled`` (the handler was stopped on a cancel request)."""
        return cls(task_id, lease_token, s.Outcome.CANCEL, error=reason)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "task_id": self.task_id,
            "lease_token": self.lease_token,
            "outcome": str(self.outcome),
        }
        if self.outcome is s.Outcome.ACK:
            wire.update(present(result=self.result))
        elif self.outcome is s.Outcome.FAIL:
            wire.update(error=self.error, retry=self.retry, **present(delay=self.delay))
        elif self.outcome is s.Outcome.CANCEL:
            wire.update(error=self.error)
        else:
            wire.update(present(delay=self.delay))
        return wire


# ---------------------------------------------------------------------------- input models


class EnqueueRequest(BaseModel):
    """One task for ``enqueue_many`` (plain dicts with the same keys work too).

    Unknown keys are passed through, so arguments added to the protocol later still work.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    queue: str
    payload: Any = None
    priority: int = 0
    delay: float | None = None
    run_at: float | None = None
    max_attempts: int | None = None
    lease: float | None = None
    unique_key: str | None = None
    concurrency_key: str | None = None
    #: Seconds the finished task is kept; else the queue's default, else retention.
    result_ttl: float | None = None
    #: Parents: task ids, or ``{"index": n}`` for the n-th task of the same enqueue_many.
    after: list[int | dict[str, int]] | None = None
    #: ``cancel`` (default) or ``run``: what happens when a parent ends dead or cancelled.
    on_parent_failure: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The ``enqueue`` argument object: ``payload`` always, other None values left out."""
        wire: dict[str, Any] = {"queue": self.queue, "payload": self.payload}
        wire.update(
            present(
                priority=self.priority,
                delay=self.delay,
                run_at=self.run_at,
                max_attempts=self.max_attempts,
                lease=self.lease,
                unique_key=self.unique_key,
                concurrency_key=self.concurrency_key,
                result_ttl=self.result_ttl,
                after=self.after,
                on_parent_failure=self.on_parent_failure,
            )
        )
        wire.update(present(**(self.model_extra or {})))
        return wire


def enqueue_wire(task: EnqueueRequest | Mapping[str, Any]) -> dict[str, Any]:
    """One ``enqueue_many`` item from a request or a plain mapping, checked."""
    if not isinstance(task, EnqueueRequest):
        try:
            task = EnqueueRequest.model_validate(dict(task))
        except ValidationError as exc:
            raise errors.BadRequest(f"invalid task for enqueue_many: {exc}") from exc
    return task.to_wire()


class WorkerRegistration(BaseModel):
    """The ``worker`` object of ``hello``: registers this connection as a worker."""

    model_config = ConfigDict(frozen=True, extra="allow")

    id: str
    #: None: all queues (the broker's default).
    queues: list[str] | None = None
    concurrency: int = 1
    #: Tasks held beyond ``concurrency`` (the broker caps leases at the sum).
    prefetch: int = 0
    meta: dict[str, Any] = Field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def registration_of(
    worker: WorkerRegistration | Mapping[str, Any] | None,
) -> WorkerRegistration | None:
    """``worker`` as a checked registration (None: not a worker)."""
    if worker is None or isinstance(worker, WorkerRegistration):
        return worker
    try:
        return WorkerRegistration.model_validate(dict(worker))
    except ValidationError as exc:
        raise errors.ConfigError(f"invalid worker registration: {exc}") from exc


class ClientOptions(TypedDict, total=False):
    """Keyword options shared by ``AsyncClient``, ``Client`` and their ``from_url``."""

    token: str | None
    ssl_context: ssl.SSLContext | None
    server_hostname: str | None
    client_name: str
    worker: WorkerRegistration | Mapping[str, Any] | None
    timeout: float | None
    connect_timeout: float
    connect_attempts: int
    reconnect_timeout: float
    busy_retries: int
    claim_margin: float
    send_timeout: float
    max_line_bytes: int
