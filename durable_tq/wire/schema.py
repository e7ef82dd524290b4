"""The request and reply types of the wire protocol (msgspec Structs): names, fields, limits.

Every request is a Struct tagged by ``op``; decoding a line into the union validates it in one
pass. Payloads and results are :class:`msgspec.Raw`: the JSON text as it came off the wire,
checked for syntax once and stored as it is, never decoded and encoded again.

msgspec was chosen over pydantic-core by measurement on the request mix: decoding and
validating an enqueue, claim or ack line takes 0.25-0.31 us against 2.0-2.7 us, encoding a
claim reply 0.32 us against 0.91 us (docs/benchmarks.md, "Choosing the schema library").
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Raw, Struct

PROTOCOL_VERSION = 1
SERVER_NAME = "durable_tq/0.1.0"

INT64_MAX = 2**63 - 1
#: About 300 years: far enough for any schedule, small enough to stay exact as a float.
MAX_SECONDS = 1e10
#: JSON ``null`` as raw text: the payload or result that was not given.
NULL = Raw(b"null")


class TaskState(StrEnum):
    #: Held until every parent (``after``) has succeeded (additive to v1).
    WAITING = "waiting"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    LEASED = "leased"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"


FINISHED_STATES = frozenset({TaskState.SUCCEEDED, TaskState.DEAD, TaskState.CANCELLED})
#: The states a queue's depth counts against ``max_queue_depth``.
WAITING_STATES = frozenset({TaskState.SCHEDULED, TaskState.QUEUED})


class WorkerCommand(StrEnum):
    RUNNING = "running"
    QUIET = "quiet"
    TERMINATE = "terminate"


class Outcome(StrEnum):
    """How a ``settle`` item ends its lease: the same as the ``ack``/``fail``/``release`` ops."""

    ACK = "ack"
    FAIL = "fail"
    RELEASE = "release"
    #: The worker stopped the handler because the task was cancelled: it ends ``cancelled``.
    CANCEL = "cancel"


class ParentFailure(StrEnum):
    """What a dependent task does when a parent ends dead or cancelled."""

    CANCEL = "cancel"
    RUN = "run"


QueueName = Annotated[str, Meta(min_length=1, max_length=200)]
TaskId = Annotated[int, Meta(ge=1, le=INT64_MAX)]
LeaseToken = Annotated[str, Meta(min_length=1, max_length=100)]
Seconds = Annotated[float, Meta(ge=0, le=MAX_SECONDS)]
PositiveSeconds = Annotated[float, Meta(gt=0, le=MAX_SECONDS)]
Timestamp = Annotated[float, Meta(ge=0, le=1e11)]
Priority = Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]
Attempts = Annotated[int, Meta(ge=1, le=1_000_000)]
UniqueKey = Annotated[str, Meta(min_length=1, max_length=1000)]
ErrorText = Annotated[str, Meta(max_length=65536)]
WorkerId = Annotated[str, Meta(min_length=1, max_length=200)]
Fraction = Annotated[float, Meta(ge=0, le=1)]
ProgressMessage = Annotated[str, Meta(max_length=1000)]

RequestId = int | str | None


# --- requests -----------------------------------------------------------------------------------


class Request(Struct, tag_field="op", forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The envelope every request shares: ``id`` (echoed in the reply) and ``op`` (the tag)."""

    id: RequestId = None

    @property
    def op(self) -> str:
        return str(self.__struct_config__.tag)


class WorkerSpec(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    id: WorkerId
    queues: list[QueueName] | None = None  # None: every queue
    concurrency: Annotated[int, Meta(ge=1, le=100_000)] = 1
    #: Extra tasks the worker may hold beyond ``concurrency`` (additive to protocol v1).
    prefetch: Annotated[int, Meta(ge=0, le=100_000)] = 0
    meta: dict[str, Any] = msgspec.field(default_factory=dict)


class Hello(Request, tag="hello", frozen=True):
    version: int
    token: str | None = None
    client: Annotated[str, Meta(max_length=200)] | None = None
    worker: WorkerSpec | None = None


class EarlierItem(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """In ``enqueue_many``, ``after: [{"index": 0}]`` names an earlier task of the same call."""

    index: Annotated[int, Meta(ge=0)]


#: A parent of a dependent task: a task id, or (in enqueue_many) an earlier item.
ParentRef = TaskId | EarlierItem
Parents = Annotated[list[ParentRef], Meta(max_length=10_000)]


class Enqueue(Request, tag="enqueue", frozen=True):
    queue: QueueName
    payload: Raw = NULL
    priority: Priority = 0
    delay: Seconds | None = None
    run_at: Timestamp | None = None
    max_attempts: Attempts | None = None
    lease: PositiveSeconds | None = None
    unique_key: UniqueKey | None = None
    #: At most the queue's key_concurrency tasks with the same key are leased at once.
    concurrency_key: UniqueKey | None = None
    #: Seconds the finished task is kept (additive): else the queue's, else ``retention``.
    result_ttl: Seconds | None = None
    #: Parent task ids: the task waits until all of them succeeded (additive).
    after: Parents | None = None
    on_parent_failure: ParentFailure = ParentFailure.CANCEL

    def __post_init__(self) -> None:
        if self.delay is not None and self.run_at is not None:
            raise ValueError("give delay or run_at, not both")


class EnqueueItem(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One task of ``enqueue_many``: the arguments of ``enqueue`` (an ``op`` field is allowed)."""

    op: Literal["enqueue"] = "enqueue"
    id: RequestId = None  # accepted and ignored, as when whole enqueue requests are listed
    queue: QueueName
    payload: Raw = NULL
    priority: Priority = 0
    delay: Seconds | None = None
    run_at: Timestamp | None = None
    max_attempts: Attempts | None = None
    lease: PositiveSeconds | None = None
    unique_key: UniqueKey | None = None
    concurrency_key: UniqueKey | None = None
    #: Seconds the finished task is kept (additive): else the queue's, else ``retention``.
    result_ttl: Seconds | None = None
    #: Parent task ids: the task waits until all of them succeeded (additive).
    after: Parents | None = None
    on_parent_failure: ParentFailure = ParentFailure.CANCEL

    def __post_init__(self) -> None:
        if self.delay is not None and self.run_at is not None:
            raise ValueError("give delay or run_at, not both")


class EnqueueMany(Request, tag="enqueue_many", frozen=True):
    tasks: list[EnqueueItem]


class ClaimArgs(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    queues: Annotated[list[QueueName], Meta(min_length=1, max_length=1000)]
    max: Annotated[int, Meta(ge=1)] = 1
    wait: Seconds = 0.0
    lease: PositiveSeconds | None = None


class Claim(Request, tag="claim", frozen=True):
    queues: Annotated[list[QueueName], Meta(min_length=1, max_length=1000)]
    max: Annotated[int, Meta(ge=1)] = 1
    wait: Seconds = 0.0
    lease: PositiveSeconds | None = None


class Ack(Request, tag="ack", frozen=True):
    task_id: TaskId
    lease_token: LeaseToken
    result: Raw = NULL


class Fail(Request, tag="fail", frozen=True):
    task_id: TaskId
    lease_token: LeaseToken
    error: ErrorText = ""
    retry: bool = True
    delay: Seconds | None = None


class Release(Request, tag="release", frozen=True):
    task_id: TaskId
    lease_token: LeaseToken
    delay: Seconds | None = None


class SettleItem(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One lease ended inside ``settle``: ``outcome`` names the op it stands for."""

    task_id: TaskId
    lease_token: LeaseToken
    outcome: Outcome
    result: Raw = NULL  # ack
    error: ErrorText = ""  # fail
    retry: bool = True  # fail
    delay: Seconds | None = None  # fail, release


class Settle(Request, tag="settle", frozen=True):
    """Many acks, fails and releases in one request and one commit, each with its own result;
    with ``claim``, the next tasks are claimed in the same round trip (additive to v1)."""

    settles: Annotated[list[SettleItem], Meta(max_length=10_000)] = []
    claim: ClaimArgs | None = None


class Extend(Request, tag="extend", frozen=True):
    task_id: TaskId
    lease_token: LeaseToken
    lease: PositiveSeconds


class Progress(Request, tag="progress", frozen=True):
    """A running handler's progress, fenced by its lease like ``extend`` (additive)."""

    task_id: TaskId
    lease_token: LeaseToken
    fraction: Fraction
    message: ProgressMessage | None = None


class Wait(Request, tag="wait", frozen=True):
    """Hold the reply until the task is finished or ``timeout`` passed (additive)."""

    task_id: TaskId
    timeout: Seconds = 30.0


class QueueSettings(Request, tag="queue_settings", frozen=True):
    """Set a queue's defaults; fields left out stay as they are (additive; issue 15 adds
    more fields). ``result_ttl: null`` clears the queue's own value."""

    queue: QueueName
    result_ttl: Seconds | msgspec.UnsetType | None = msgspec.UNSET


class Heartbeat(Request, tag="heartbeat", frozen=True):
    pass


class Get(Request, tag="get", frozen=True):
    task_id: TaskId


class Cancel(Request, tag="cancel", frozen=True):
    task_id: TaskId


class Stats(Request, tag="stats", frozen=True):
    pass


class List(Request, tag="list", frozen=True):
    queue: QueueName | None = None
    state: TaskState | None = None
    limit: Annotated[int, Meta(ge=1, le=10_000)] = 100
    after_id: Annotated[int, Meta(ge=0, le=INT64_MAX)] | None = None


class Requeue(Request, tag="requeue", frozen=True):
    task_ids: Annotated[list[TaskId], Meta(max_length=100_000)] | None = None
    queue: QueueName | None = None
    state: TaskState | None = None

    def __post_init__(self) -> None:
        if self.task_ids is None and (self.queue is None or self.state is None):
            raise ValueError("give task_ids, or queue and state")
        if self.task_ids is not None and (self.queue is not None or self.state is not None):
            raise ValueError("give task_ids, or queue and state, not both")
        if self.state not in (None, TaskState.DEAD, TaskState.CANCELLED):
            raise ValueError("state: requeue takes dead or cancelled tasks")


class Pause(Request, tag="pause", frozen=True):
    queue: QueueName


class Resume(Request, tag="resume", frozen=True):
    queue: QueueName


class Purge(Request, tag="purge", frozen=True):
    queue: QueueName
    state: TaskState | None = None

    def __post_init__(self) -> None:
        if self.state is TaskState.LEASED:
            raise ValueError("purge never touches leased tasks")


class Workers(Request, tag="workers", frozen=True):
    pass


class WorkerState(Request, tag="worker_state", frozen=True):
    worker_id: WorkerId
    state: WorkerCommand


class Bye(Request, tag="bye", frozen=True):
    pass


# --- schedules and queue limits (issue 15; additive to v1) ------------------------------------

ScheduleName = Annotated[str, Meta(min_length=1, max_length=200)]
CronExpression = Annotated[str, Meta(min_length=1, max_length=200)]
ZoneName = Annotated[str, Meta(min_length=1, max_length=100)]
Limit = Annotated[int, Meta(ge=1, le=1_000_000_000)]


class ScheduleUpsert(Request, tag="schedule_upsert", frozen=True):
    """Create or update a schedule; the same spec again changes nothing (next run kept)."""

    name: ScheduleName
    queue: QueueName
    cron: CronExpression | None = None
    tz: ZoneName | None = None
    every: Annotated[float, Meta(ge=1, le=MAX_SECONDS)] | None = None
    payload: Raw = NULL
    priority: Priority = 0
    missed: Literal["latest", "none"] = "latest"

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give cron or every, not both and not neither")


class ScheduleList(Request, tag="schedule_list", frozen=True):
    pass


class ScheduleRemove(Request, tag="schedule_remove", frozen=True):
    name: ScheduleName


class SchedulePause(Request, tag="schedule_pause", frozen=True):
    name: ScheduleName


class ScheduleResume(Request, tag="schedule_resume", frozen=True):
    name: ScheduleName


class SetQueueLimits(Request, tag="set_queue_limits", frozen=True):
    """Set a queue's limits; a field left out keeps its value, ``0`` removes that limit."""

    queue: QueueName
    rate: Annotated[float, Meta(ge=0, le=1e9)] | None = None  # tasks per second
    burst: Annotated[int, Meta(ge=0, le=1_000_000_000)] | None = None
    max_leased: Annotated[int, Meta(ge=0, le=1_000_000_000)] | None = None
    key_concurrency: Annotated[int, Meta(ge=0, le=1_000_000_000)] | None = None


class QueueInfo(Request, tag="queue_info", frozen=True):
    queue: QueueName


class Throughput(Request, tag="throughput", frozen=True):
    """Tasks per second over the last minutes, from counters sampled in memory (additive)."""


AnyRequest = (
    Hello
    | Enqueue
    | EnqueueMany
    | Claim
    | Ack
    | Fail
    | Release
    | Settle
    | Extend
    | Progress
    | Wait
    | QueueSettings
    | Heartbeat
    | Get
    | Cancel
    | Stats
    | List
    | Requeue
    | Pause
    | Resume
    | Purge
    | Workers
    | WorkerState
    | Bye
    | ScheduleUpsert
    | ScheduleList
    | ScheduleRemove
    | SchedulePause
    | ScheduleResume
    | SetQueueLimits
    | QueueInfo
    | Throughput
)


# --- replies --------------------------------------------------------------------------------------
# What an ok reply carries, per op. The broker builds plain dicts (cheapest to encode); these
# types are the contract the clients decode with and the tests check the broker against.
# Unknown fields are ignored, so an older client keeps working against a newer broker.


class Reply(Struct, kw_only=True):
    pass


class HelloReply(Reply):
    server: str
    version: int
    heartbeat_interval: float


class EnqueueReply(Reply):
    task_id: int
    created: bool = True


class EnqueueManyReply(Reply):
    task_ids: list[int]
    created: list[bool] = []


class LeasedTask(Reply):
    """A task handed out by a claim, with the lease that fences it."""

    task_id: int
    queue: str
    payload: Any
    priority: int
    attempt: int
    lease_token: str
    lease_expires_at: float


class ClaimReply(Reply):
    tasks: list[LeasedTask]


class Empty(Reply):
    pass


class FailReply(Reply):
    state: TaskState
    run_at: float | None


class SettleResult(Reply):
    """The outcome of one settle item: ``ok`` with the task's new state, or its own error."""

    task_id: int
    ok: bool
    state: TaskState | None = None
    run_at: float | None = None
    error: dict[str, Any] | None = None


class SettleReply(Reply):
    results: list[SettleResult]
    tasks: list[LeasedTask] | None = None
    #: The worker's command, as a heartbeat would return it (registered workers only).
    worker_state: WorkerCommand | None = None
    #: Tasks this worker holds whose cancel was requested (additive).
    cancel: list[int] = []


class ExtendReply(Reply):
    lease_expires_at: float
    #: A cancel was requested for this task: the worker should stop it (additive).
    cancel: bool = False


class ProgressReply(Reply):
    cancel: bool = False


class HeartbeatReply(Reply):
    state: WorkerCommand
    #: Tasks this worker holds whose cancel was requested (additive).
    cancel: list[int] = []


class TaskInfo(Reply):
    task_id: int
    queue: str
    state: TaskState
    payload: Any
    priority: int
    attempts: int
    max_attempts: int
    run_at: float
    created_at: float
    updated_at: float
    lease_expires_at: float | None
    worker_id: str | None
    last_error: str | None
    result: Any
    unique_key: str | None
    finished_at: float | None = None
    progress: float | None = None
    progress_message: str | None = None
    cancel_requested: bool = False
    result_ttl: float | None = None
    expires_at: float | None = None
    #: The key a queue's ``key_concurrency`` limit counts this task under (additive).
    concurrency_key: str | None = None


class WaitReply(Reply):
    task: TaskInfo
    #: True when the task is finished (succeeded, dead or cancelled); False on timeout.
    done: bool


class QueueSettingsReply(Reply):
    queue: str
    result_ttl: float | None = None


class GetReply(Reply):
    task: TaskInfo


class CancelReply(Reply):
    #: ``cancelled``, or ``cancelling`` for a leased task whose worker is told to stop it.
    state: str


class QueueStats(Reply):
    waiting: int = 0
    scheduled: int = 0
    queued: int = 0
    leased: int = 0
    succeeded: int = 0
    dead: int = 0
    cancelled: int = 0
    paused: bool = False
    oldest_queued_age: float | None = None


class StatsReply(Reply):
    queues: dict[str, QueueStats]
    workers: int
    connections: int
    store: dict[str, Any] | None = None


class ListReply(Reply):
    tasks: list[TaskInfo]
    next_after_id: int | None


class CountReply(Reply):
    count: int


class SkippedTask(Reply):
    task_id: int
    reason: str


class RequeueReply(Reply):
    count: int
    #: Tasks asked for that stayed where they were, and why (additive to v1).
    skipped: list[SkippedTask] = []


class WorkerInfo(Reply):
    id: str
    queues: list[str] | None
    concurrency: int
    state: WorkerCommand
    last_heartbeat: float
    leased: int
    connected: bool = True
    alive: bool = True
    meta: dict[str, Any] = {}
    registered_at: float | None = None
    prefetch: int = 0


class WorkersReply(Reply):
    workers: list[WorkerInfo]


class ScheduleInfo(Reply):
    name: str
    queue: str
    cron: str | None
    tz: str | None
    every: float | None
    payload: Any
    priority: int
    missed: str
    paused: bool
    next_run_at: float
    last_slot: float | None
    created_at: float
    updated_at: float


class ScheduleUpsertReply(Reply):
    schedule: ScheduleInfo
    #: "created", "updated" (spec changed: next run recomputed) or "unchanged".
    change: str


class ScheduleListReply(Reply):
    schedules: list[ScheduleInfo]


class ScheduleReply(Reply):
    schedule: ScheduleInfo


class QueueLimits(Reply):
    rate: float | None = None
    burst: int | None = None
    max_leased: int | None = None
    key_concurrency: int | None = None


class QueueInfoReply(Reply):
    queue: str
    paused: bool
    limits: QueueLimits
    counts: QueueStats
    #: Tokens in the rate bucket now (null without a rate).
    tokens: float | None = None


class ThroughputSample(Reply):
    """Rates per second over the ``seconds`` that end at ``at``, broker-wide."""

    at: float
    seconds: float
    enqueued: float
    claimed: float
    succeeded: float
    failed: float
    dead: float


class ThroughputReply(Reply):
    #: Seconds between samples (at least; longer when the broker was busy or paused).
    interval: float
    #: Seconds of history kept (samples older than this are gone).
    window: float
    #: Oldest first.
    samples: list[ThroughputSample]
