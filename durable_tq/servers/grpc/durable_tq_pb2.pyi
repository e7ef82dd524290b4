from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerSpec(_message.Message):
    __slots__ = ("id", "queues", "concurrency", "prefetch", "meta_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    META_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    queues: _containers.RepeatedScalarFieldContainer[str]
    concurrency: int
    prefetch: int
    meta_json: str
    def __init__(self, id: _Optional[str] = ..., queues: _Optional[_Iterable[str]] = ..., concurrency: _Optional[int] = ..., prefetch: _Optional[int] = ..., meta_json: _Optional[str] = ...) -> None: ...

class HelloRequest(_message.Message):
    __slots__ = ("version", "token", "client", "worker")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    version: int
    token: str
    client: str
    worker: WorkerSpec
    def __init__(self, version: _Optional[int] = ..., token: _Optional[str] = ..., client: _Optional[str] = ..., worker: _Optional[_Union[WorkerSpec, _Mapping]] = ...) -> None: ...

class EnqueueRequest(_message.Message):
    __slots__ = ("queue", "payload_json", "priority", "delay", "run_at", "max_attempts", "lease", "unique_key", "concurrency_key", "result_ttl", "after", "on_parent_failure")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    RUN_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_KEY_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RESULT_TTL_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    ON_PARENT_FAILURE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    payload_json: str
    priority: int
    delay: float
    run_at: float
    max_attempts: int
    lease: float
    unique_key: str
    concurrency_key: str
    result_ttl: float
    after: _containers.RepeatedCompositeFieldContainer[Parent]
    on_parent_failure: str
    def __init__(self, queue: _Optional[str] = ..., payload_json: _Optional[str] = ..., priority: _Optional[int] = ..., delay: _Optional[float] = ..., run_at: _Optional[float] = ..., max_attempts: _Optional[int] = ..., lease: _Optional[float] = ..., unique_key: _Optional[str] = ..., concurrency_key: _Optional[str] = ..., result_ttl: _Optional[float] = ..., after: _Optional[_Iterable[_Union[Parent, _Mapping]]] = ..., on_parent_failure: _Optional[str] = ...) -> None: ...

class Parent(_message.Message):
    __slots__ = ("task_id", "index")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    index: int
    def __init__(self, task_id: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class EnqueueManyRequest(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[EnqueueRequest]
    def __init__(self, tasks: _Optional[_Iterable[_Union[EnqueueRequest, _Mapping]]] = ...) -> None: ...

class ClaimRequest(_message.Message):
    __slots__ = ("queues", "max", "wait", "lease")
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedScalarFieldContainer[str]
    max: int
    wait: float
    lease: float
    def __init__(self, queues: _Optional[_Iterable[str]] = ..., max: _Optional[int] = ..., wait: _Optional[float] = ..., lease: _Optional[float] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("task_id", "lease_token", "result_json")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    lease_token: str
    result_json: str
    def __init__(self, task_id: _Optional[int] = ..., lease_token: _Optional[str] = ..., result_json: _Optional[str] = ...) -> None: ...

class FailRequest(_message.Message):
    __slots__ = ("task_id", "lease_token", "error", "retry", "delay")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    lease_token: str
    error: str
    retry: bool
    delay: float
    def __init__(self, task_id: _Optional[int] = ..., lease_token: _Optional[str] = ..., error: _Optional[str] = ..., retry: _Optional[bool] = ..., delay: _Optional[float] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("task_id", "lease_token", "delay")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    lease_token: str
    delay: float
    def __init__(self, task_id: _Optional[int] = ..., lease_token: _Optional[str] = ..., delay: _Optional[float] = ...) -> None: ...

class SettleItem(_message.Message):
    __slots__ = ("task_id", "lease_token", "outcome", "result_json", "error", "retry", "delay")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    lease_token: str
    outcome: str
    result_json: str
    error: str
    retry: bool
    delay: float
    def __init__(self, task_id: _Optional[int] = ..., lease_token: _Optional[str] = ..., outcome: _Optional[str] = ..., result_json: _Optional[str] = ..., error: _Optional[str] = ..., retry: _Optional[bool] = ..., delay: _Optional[float] = ...) -> None: ...

class SettleRequest(_message.Message):
    __slots__ = ("settles", "claim")
    SETTLES_FIELD_NUMBER: _ClassVar[int]
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    settles: _containers.RepeatedCompositeFieldContainer[SettleItem]
    claim: ClaimRequest
    def __init__(self, settles: _Optional[_Iterable[_Union[SettleItem, _Mapping]]] = ..., claim: _Optional[_Union[ClaimRequest, _Mapping]] = ...) -> None: ...

class ExtendRequest(_message.Message):
    __slots__ = ("task_id", "lease_token", "lease")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    lease_token: str
    lease: float
    def __init__(self, task_id: _Optional[int] = ..., lease_token: _Optional[str] = ..., lease: _Optional[float] = ...) -> None: ...

class ProgressRequest(_message.Message):
    __slots__ = ("task_id", "lease_token", "fraction", "message")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    lease_token: str
    fraction: float
    message: str
    def __init__(self, task_id: _Optional[int] = ..., lease_token: _Optional[str] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class WaitRequest(_message.Message):
    __slots__ = ("task_id", "timeout")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    timeout: float
    def __init__(self, task_id: _Optional[int] = ..., timeout: _Optional[float] = ...) -> None: ...

class QueueSettingsRequest(_message.Message):
    __slots__ = ("queue", "result_ttl_json")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    RESULT_TTL_JSON_FIELD_NUMBER: _ClassVar[int]
    queue: str
    result_ttl_json: str
    def __init__(self, queue: _Optional[str] = ..., result_ttl_json: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    def __init__(self, task_id: _Optional[int] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    def __init__(self, task_id: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("queue", "state", "limit", "after_id")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    queue: str
    state: str
    limit: int
    after_id: int
    def __init__(self, queue: _Optional[str] = ..., state: _Optional[str] = ..., limit: _Optional[int] = ..., after_id: _Optional[int] = ...) -> None: ...

class RequeueRequest(_message.Message):
    __slots__ = ("task_ids", "queue", "state")
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[int]
    queue: str
    state: str
    def __init__(self, task_ids: _Optional[_Iterable[int]] = ..., queue: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class PauseRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class PurgeRequest(_message.Message):
    __slots__ = ("queue", "state")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    state: str
    def __init__(self, queue: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class WorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStateRequest(_message.Message):
    __slots__ = ("worker_id", "state")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    state: str
    def __init__(self, worker_id: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class ByeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ScheduleUpsertRequest(_message.Message):
    __slots__ = ("name", "queue", "cron", "tz", "every", "payload_json", "priority", "missed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    TZ_FIELD_NUMBER: _ClassVar[int]
    EVERY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    name: str
    queue: str
    cron: str
    tz: str
    every: float
    payload_json: str
    priority: int
    missed: str
    def __init__(self, name: _Optional[str] = ..., queue: _Optional[str] = ..., cron: _Optional[str] = ..., tz: _Optional[str] = ..., every: _Optional[float] = ..., payload_json: _Optional[str] = ..., priority: _Optional[int] = ..., missed: _Optional[str] = ...) -> None: ...

class ScheduleListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ScheduleRemoveRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SchedulePauseRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ScheduleResumeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SetQueueLimitsRequest(_message.Message):
    __slots__ = ("queue", "rate", "burst", "max_leased", "key_concurrency")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    MAX_LEASED_FIELD_NUMBER: _ClassVar[int]
    KEY_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    queue: str
    rate: float
    burst: int
    max_leased: int
    key_concurrency: int
    def __init__(self, queue: _Optional[str] = ..., rate: _Optional[float] = ..., burst: _Optional[int] = ..., max_leased: _Optional[int] = ..., key_concurrency: _Optional[int] = ...) -> None: ...

class QueueInfoRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class ThroughputRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("server", "version", "heartbeat_interval")
    SERVER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    server: str
    version: int
    heartbeat_interval: float
    def __init__(self, server: _Optional[str] = ..., version: _Optional[int] = ..., heartbeat_interval: _Optional[float] = ...) -> None: ...

class EnqueueReply(_message.Message):
    __slots__ = ("task_id", "created")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    created: bool
    def __init__(self, task_id: _Optional[int] = ..., created: _Optional[bool] = ...) -> None: ...

class EnqueueManyReply(_message.Message):
    __slots__ = ("task_ids", "created")
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[int]
    created: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, task_ids: _Optional[_Iterable[int]] = ..., created: _Optional[_Iterable[bool]] = ...) -> None: ...

class LeasedTask(_message.Message):
    __slots__ = ("task_id", "queue", "payload_json", "priority", "attempt", "lease_token", "lease_expires_at")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    queue: str
    payload_json: str
    priority: int
    attempt: int
    lease_token: str
    lease_expires_at: float
    def __init__(self, task_id: _Optional[int] = ..., queue: _Optional[str] = ..., payload_json: _Optional[str] = ..., priority: _Optional[int] = ..., attempt: _Optional[int] = ..., lease_token: _Optional[str] = ..., lease_expires_at: _Optional[float] = ...) -> None: ...

class ClaimReply(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[LeasedTask]
    def __init__(self, tasks: _Optional[_Iterable[_Union[LeasedTask, _Mapping]]] = ...) -> None: ...

class FailReply(_message.Message):
    __slots__ = ("state", "run_at")
    STATE_FIELD_NUMBER: _ClassVar[int]
    RUN_AT_FIELD_NUMBER: _ClassVar[int]
    state: str
    run_at: float
    def __init__(self, state: _Optional[str] = ..., run_at: _Optional[float] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "details_json")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    details_json: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., details_json: _Optional[str] = ...) -> None: ...

class SettleResult(_message.Message):
    __slots__ = ("task_id", "ok", "state", "run_at", "error")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RUN_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    ok: bool
    state: str
    run_at: float
    error: Error
    def __init__(self, task_id: _Optional[int] = ..., ok: _Optional[bool] = ..., state: _Optional[str] = ..., run_at: _Optional[float] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class SettleReply(_message.Message):
    __slots__ = ("results", "tasks", "worker_state", "cancel")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    WORKER_STATE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SettleResult]
    tasks: _containers.RepeatedCompositeFieldContainer[LeasedTask]
    worker_state: str
    cancel: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, results: _Optional[_Iterable[_Union[SettleResult, _Mapping]]] = ..., tasks: _Optional[_Iterable[_Union[LeasedTask, _Mapping]]] = ..., worker_state: _Optional[str] = ..., cancel: _Optional[_Iterable[int]] = ...) -> None: ...

class ExtendReply(_message.Message):
    __slots__ = ("lease_expires_at", "cancel")
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    lease_expires_at: float
    cancel: bool
    def __init__(self, lease_expires_at: _Optional[float] = ..., cancel: _Optional[bool] = ...) -> None: ...

class ProgressReply(_message.Message):
    __slots__ = ("cancel",)
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    cancel: bool
    def __init__(self, cancel: _Optional[bool] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("state", "cancel")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    state: str
    cancel: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, state: _Optional[str] = ..., cancel: _Optional[_Iterable[int]] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("task_id", "queue", "state", "payload_json", "priority", "attempts", "max_attempts", "run_at", "created_at", "updated_at", "lease_expires_at", "worker_id", "last_error", "result_json", "unique_key", "finished_at", "progress", "progress_message", "cancel_requested", "result_ttl", "expires_at", "concurrency_key")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    RUN_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_KEY_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    RESULT_TTL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    queue: str
    state: str
    payload_json: str
    priority: int
    attempts: int
    max_attempts: int
    run_at: float
    created_at: float
    updated_at: float
    lease_expires_at: float
    worker_id: str
    last_error: str
    result_json: str
    unique_key: str
    finished_at: float
    progress: float
    progress_message: str
    cancel_requested: bool
    result_ttl: float
    expires_at: float
    concurrency_key: str
    def __init__(self, task_id: _Optional[int] = ..., queue: _Optional[str] = ..., state: _Optional[str] = ..., payload_json: _Optional[str] = ..., priority: _Optional[int] = ..., attempts: _Optional[int] = ..., max_attempts: _Optional[int] = ..., run_at: _Optional[float] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., lease_expires_at: _Optional[float] = ..., worker_id: _Optional[str] = ..., last_error: _Optional[str] = ..., result_json: _Optional[str] = ..., unique_key: _Optional[str] = ..., finished_at: _Optional[float] = ..., progress: _Optional[float] = ..., progress_message: _Optional[str] = ..., cancel_requested: _Optional[bool] = ..., result_ttl: _Optional[float] = ..., expires_at: _Optional[float] = ..., concurrency_key: _Optional[str] = ...) -> None: ...

class WaitReply(_message.Message):
    __slots__ = ("task", "done")
    TASK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    task: TaskInfo
    done: bool
    def __init__(self, task: _Optional[_Union[TaskInfo, _Mapping]] = ..., done: _Optional[bool] = ...) -> None: ...

class QueueSettingsReply(_message.Message):
    __slots__ = ("queue", "result_ttl")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    RESULT_TTL_FIELD_NUMBER: _ClassVar[int]
    queue: str
    result_ttl: float
    def __init__(self, queue: _Optional[str] = ..., result_ttl: _Optional[float] = ...) -> None: ...

class GetReply(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: TaskInfo
    def __init__(self, task: _Optional[_Union[TaskInfo, _Mapping]] = ...) -> None: ...

class CancelReply(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class QueueStats(_message.Message):
    __slots__ = ("scheduled", "queued", "leased", "succeeded", "dead", "cancelled", "paused", "oldest_queued_age", "waiting", "limits")
    SCHEDULED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    OLDEST_QUEUED_AGE_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    scheduled: int
    queued: int
    leased: int
    succeeded: int
    dead: int
    cancelled: int
    paused: bool
    oldest_queued_age: float
    waiting: int
    limits: QueueLimits
    def __init__(self, scheduled: _Optional[int] = ..., queued: _Optional[int] = ..., leased: _Optional[int] = ..., succeeded: _Optional[int] = ..., dead: _Optional[int] = ..., cancelled: _Optional[int] = ..., paused: _Optional[bool] = ..., oldest_queued_age: _Optional[float] = ..., waiting: _Optional[int] = ..., limits: _Optional[_Union[QueueLimits, _Mapping]] = ...) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("queues", "workers", "connections", "store_json")
    class QueuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: QueueStats
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[QueueStats, _Mapping]] = ...) -> None: ...
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    STORE_JSON_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.MessageMap[str, QueueStats]
    workers: int
    connections: int
    store_json: str
    def __init__(self, queues: _Optional[_Mapping[str, QueueStats]] = ..., workers: _Optional[int] = ..., connections: _Optional[int] = ..., store_json: _Optional[str] = ...) -> None: ...

class ListReply(_message.Message):
    __slots__ = ("tasks", "next_after_id")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    next_after_id: int
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ..., next_after_id: _Optional[int] = ...) -> None: ...

class CountReply(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class SkippedTask(_message.Message):
    __slots__ = ("task_id", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    reason: str
    def __init__(self, task_id: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RequeueReply(_message.Message):
    __slots__ = ("count", "skipped")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    count: int
    skipped: _containers.RepeatedCompositeFieldContainer[SkippedTask]
    def __init__(self, count: _Optional[int] = ..., skipped: _Optional[_Iterable[_Union[SkippedTask, _Mapping]]] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("id", "queues", "concurrency", "state", "last_heartbeat", "leased", "connected", "alive", "meta_json", "registered_at", "prefetch")
    ID_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    META_JSON_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    id: str
    queues: _containers.RepeatedScalarFieldContainer[str]
    concurrency: int
    state: str
    last_heartbeat: float
    leased: int
    connected: bool
    alive: bool
    meta_json: str
    registered_at: float
    prefetch: int
    def __init__(self, id: _Optional[str] = ..., queues: _Optional[_Iterable[str]] = ..., concurrency: _Optional[int] = ..., state: _Optional[str] = ..., last_heartbeat: _Optional[float] = ..., leased: _Optional[int] = ..., connected: _Optional[bool] = ..., alive: _Optional[bool] = ..., meta_json: _Optional[str] = ..., registered_at: _Optional[float] = ..., prefetch: _Optional[int] = ...) -> None: ...

class WorkersReply(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ...) -> None: ...

class ScheduleInfo(_message.Message):
    __slots__ = ("name", "queue", "cron", "tz", "every", "payload_json", "priority", "missed", "paused", "next_run_at", "last_slot", "created_at", "updated_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    TZ_FIELD_NUMBER: _ClassVar[int]
    EVERY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    NEXT_RUN_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SLOT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    queue: str
    cron: str
    tz: str
    every: float
    payload_json: str
    priority: int
    missed: str
    paused: bool
    next_run_at: float
    last_slot: float
    created_at: float
    updated_at: float
    def __init__(self, name: _Optional[str] = ..., queue: _Optional[str] = ..., cron: _Optional[str] = ..., tz: _Optional[str] = ..., every: _Optional[float] = ..., payload_json: _Optional[str] = ..., priority: _Optional[int] = ..., missed: _Optional[str] = ..., paused: _Optional[bool] = ..., next_run_at: _Optional[float] = ..., last_slot: _Optional[float] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ...) -> None: ...

class ScheduleUpsertReply(_message.Message):
    __slots__ = ("schedule", "change")
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    schedule: ScheduleInfo
    change: str
    def __init__(self, schedule: _Optional[_Union[ScheduleInfo, _Mapping]] = ..., change: _Optional[str] = ...) -> None: ...

class ScheduleListReply(_message.Message):
    __slots__ = ("schedules",)
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[ScheduleInfo]
    def __init__(self, schedules: _Optional[_Iterable[_Union[ScheduleInfo, _Mapping]]] = ...) -> None: ...

class ScheduleReply(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: ScheduleInfo
    def __init__(self, schedule: _Optional[_Union[ScheduleInfo, _Mapping]] = ...) -> None: ...

class QueueLimits(_message.Message):
    __slots__ = ("rate", "burst", "max_leased", "key_concurrency")
    RATE_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    MAX_LEASED_FIELD_NUMBER: _ClassVar[int]
    KEY_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    rate: float
    burst: int
    max_leased: int
    key_concurrency: int
    def __init__(self, rate: _Optional[float] = ..., burst: _Optional[int] = ..., max_leased: _Optional[int] = ..., key_concurrency: _Optional[int] = ...) -> None: ...

class QueueInfoReply(_message.Message):
    __slots__ = ("queue", "paused", "limits", "counts", "tokens")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    queue: str
    paused: bool
    limits: QueueLimits
    counts: QueueStats
    tokens: float
    def __init__(self, queue: _Optional[str] = ..., paused: _Optional[bool] = ..., limits: _Optional[_Union[QueueLimits, _Mapping]] = ..., counts: _Optional[_Union[QueueStats, _Mapping]] = ..., tokens: _Optional[float] = ...) -> None: ...

class ThroughputSample(_message.Message):
    __slots__ = ("at", "seconds", "enqueued", "claimed", "succeeded", "failed", "dead")
    AT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENQUEUED_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    at: float
    seconds: float
    enqueued: float
    claimed: float
    succeeded: float
    failed: float
    dead: float
    def __init__(self, at: _Optional[float] = ..., seconds: _Optional[float] = ..., enqueued: _Optional[float] = ..., claimed: _Optional[float] = ..., succeeded: _Optional[float] = ..., failed: _Optional[float] = ..., dead: _Optional[float] = ...) -> None: ...

class ThroughputReply(_message.Message):
    __slots__ = ("interval", "window", "samples")
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    interval: float
    window: float
    samples: _containers.RepeatedCompositeFieldContainer[ThroughputSample]
    def __init__(self, interval: _Optional[float] = ..., window: _Optional[float] = ..., samples: _Optional[_Iterable[_Union[ThroughputSample, _Mapping]]] = ...) -> None: ...

class WorkOpen(_message.Message):
    __slots__ = ("worker", "client", "lease")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    worker: WorkerSpec
    client: str
    lease: float
    def __init__(self, worker: _Optional[_Union[WorkerSpec, _Mapping]] = ..., client: _Optional[str] = ..., lease: _Optional[float] = ...) -> None: ...

class WorkRequest(_message.Message):
    __slots__ = ("open", "settles", "credit")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    SETTLES_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    open: WorkOpen
    settles: _containers.RepeatedCompositeFieldContainer[SettleItem]
    credit: int
    def __init__(self, open: _Optional[_Union[WorkOpen, _Mapping]] = ..., settles: _Optional[_Iterable[_Union[SettleItem, _Mapping]]] = ..., credit: _Optional[int] = ...) -> None: ...

class WorkResponse(_message.Message):
    __slots__ = ("opened", "tasks", "settled", "worker_state", "cancel")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    WORKER_STATE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    opened: HelloReply
    tasks: _containers.RepeatedCompositeFieldContainer[LeasedTask]
    settled: SettleReply
    worker_state: str
    cancel: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, opened: _Optional[_Union[HelloReply, _Mapping]] = ..., tasks: _Optional[_Iterable[_Union[LeasedTask, _Mapping]]] = ..., settled: _Optional[_Union[SettleReply, _Mapping]] = ..., worker_state: _Optional[str] = ..., cancel: _Optional[_Iterable[int]] = ...) -> None: ...
