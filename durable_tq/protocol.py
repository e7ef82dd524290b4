"""Wire models of protocol v1 and the NDJSON line codec; no I/O happens here."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from durable_tq import errors

PROTOCOL_VERSION = 1
SERVER_NAME = "durable_tq/0.1.0"

INT64_MAX = 2**63 - 1
#: About 300 years: far enough for any schedule, small enough to stay exact as a float.
MAX_SECONDS = 1e10


class TaskState(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    LEASED = "leased"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"


LIVE_STATES = frozenset({TaskState.SCHEDULED, TaskState.QUEUED, TaskState.LEASED})
FINISHED_STATES = frozenset({TaskState.SUCCEEDED, TaskState.DEAD, TaskState.CANCELLED})
#: The states a queue's depth counts against ``max_queue_depth``.
WAITING_STATES = frozenset({TaskState.SCHEDULED, TaskState.QUEUED})


class WorkerCommand(StrEnum):
    RUNNING = "running"
    QUIET = "quiet"
    TERMINATE = "terminate"


QueueName = Annotated[str, Field(min_length=1, max_length=200)]
TaskId = Annotated[int, Field(ge=1, le=INT64_MAX)]
LeaseToken = Annotated[str, Field(min_length=1, max_length=100)]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]
Timestamp = Annotated[float, Field(ge=0, le=1e11, allow_inf_nan=False)]
Priority = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
# Enum fields take their string values from Python objects too (strict mode alone would want
# enum instances there); from JSON it makes no difference.
StateName = Annotated[TaskState, Field(strict=False)]
CommandName = Annotated[WorkerCommand, Field(strict=False)]


RequestId = int | str | None


class Request(BaseModel):
    """One request: the envelope's ``id`` and ``op`` plus the operation's arguments."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
    id: int | str | None = None
    op: str


class WorkerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
    id: Annotated[str, Field(min_length=1, max_length=200)]
    queues: list[QueueName] | None = None  # None: every queue
    concurrency: Annotated[int, Field(ge=1, le=100_000)] = 1
    meta: dict[str, JsonValue] = Field(default_factory=dict)


class Hello(Request):
    op: Literal["hello"] = "hello"
    version: int
    token: str | None = None
    client: Annotated[str, Field(max_length=200)] | None = None
    worker: WorkerSpec | None = None


class Enqueue(Request):
    op: Literal["enqueue"] = "enqueue"
    queue: QueueName
    payload: JsonValue = None
    priority: Priority = 0
    delay: Seconds | None = None
    run_at: Timestamp | None = None
    max_attempts: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    lease: PositiveSeconds | None = None
    unique_key: Annotated[str, Field(min_length=1, max_length=1000)] | None = None

    @model_validator(mode="after")
    def _one_time(self) -> Enqueue:
        if self.delay is not None and self.run_at is not None:
            raise ValueError("give delay or run_at, not both")
        return self


class EnqueueMany(Request):
    op: Literal["enqueue_many"] = "enqueue_many"
    tasks: list[Enqueue]


class Claim(Request):
    op: Literal["claim"] = "claim"
    queues: Annotated[list[QueueName], Field(min_length=1, max_length=1000)]
    max: Annotated[int, Field(ge=1)] = 1
    wait: Seconds = 0.0
    lease: PositiveSeconds | None = None


class Ack(Request):
    op: Literal["ack"] = "ack"
    task_id: TaskId
    lease_token: LeaseToken
    result: JsonValue = None


class Fail(Request):
    op: Literal["fail"] = "fail"
    task_id: TaskId
    lease_token: LeaseToken
    error: Annotated[str, Field(max_length=65536)] = ""
    retry: bool = True
    delay: Seconds | None = None


class Release(Request):
    op: Literal["release"] = "release"
    task_id: TaskId
    lease_token: LeaseToken
    delay: Seconds | None = None


class Extend(Request):
    op: Literal["extend"] = "extend"
    task_id: TaskId
    lease_token: LeaseToken
    lease: PositiveSeconds


class Heartbeat(Request):
    op: Literal["heartbeat"] = "heartbeat"


class Get(Request):
    op: Literal["get"] = "get"
    task_id: TaskId


class Cancel(Request):
    op: Literal["cancel"] = "cancel"
    task_id: TaskId


class Stats(Request):
    op: Literal["stats"] = "stats"


class List(Request):
    op: Literal["list"] = "list"
    queue: QueueName | None = None
    state: StateName | None = None
    limit: Annotated[int, Field(ge=1, le=10_000)] = 100
    after_id: Annotated[int, Field(ge=0, le=INT64_MAX)] | None = None


class Requeue(Request):
    op: Literal["requeue"] = "requeue"
    task_ids: Annotated[list[TaskId], Field(max_length=100_000)] | None = None
    queue: QueueName | None = None
    state: StateName | None = None

    @model_validator(mode="after")
    def _by_ids_or_queue(self) -> Requeue:
        if self.task_ids is None and (self.queue is None or self.state is None):
            raise ValueError("give task_ids, or queue and state")
        if self.task_ids is not None and (self.queue is not None or self.state is not None):
            raise ValueError("give task_ids, or queue and state, not both")
        if self.state not in (None, TaskState.DEAD, TaskState.CANCELLED):
            raise ValueError("state: requeue takes dead or cancelled tasks")
        return self


class Pause(Request):
    op: Literal["pause"] = "pause"
    queue: QueueName


class Resume(Request):
    op: Literal["resume"] = "resume"
    queue: QueueName


class Purge(Request):
    op: Literal["purge"] = "purge"
    queue: QueueName
    state: StateName | None = None

    @model_validator(mode="after")
    def _never_leased(self) -> Purge:
        if self.state is TaskState.LEASED:
            raise ValueError("purge never touches leased tasks")
        return self


class Workers(Request):
    op: Literal["workers"] = "workers"


class WorkerState(Request):
    op: Literal["worker_state"] = "worker_state"
    worker_id: Annotated[str, Field(min_length=1, max_length=200)]
    state: CommandName


class Bye(Request):
    op: Literal["bye"] = "bye"


AnyRequest = Annotated[
    Hello | Enqueue | EnqueueMany | Claim | Ack | Fail | Release | Extend | Heartbeat | Get
    | Cancel | Stats | List | Requeue | Pause | Resume | Purge | Workers | WorkerState | Bye,
    Field(discriminator="op"),
]
#: Operation name -> its model, read off the union above (each model's ``op`` default).
REQUESTS: dict[str, type[Request]] = {
    model.model_fields["op"].default: model for model in get_args(get_args(AnyRequest)[0])
}
#: Parses and validates a whole line in one pass of pydantic-core (Rust): about ten times
#: faster than json.loads followed by model validation (docs/benchmarks.md).
_REQUEST_ADAPTER: TypeAdapter[AnyRequest] = TypeAdapter(AnyRequest)

#: Operations whose ok reply promises a committed change (PROTOCOL.md, Durable replies).
WRITE_OPS = frozenset(
    {"enqueue", "enqueue_many", "ack", "fail", "release", "requeue", "cancel", "purge"}
)


# --- the line codec ---------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class FrameRejected(Exception):
    """A line that is not a valid request: the error to send, and the id to send it with."""

    def __init__(self, request_id: RequestId, error: errors.DurableTQError) -> None:
        super().__init__(error.message)
        self.request_id = request_id
        self.error = error


def parse_line(line: bytes) -> Request:
    """Parse and validate one line (without its newline) into its operation's model.

    Raises FrameRejected with the most precise error: bad JSON, not an object, no op, unknown
    op, or the first wrong field; it carries the request's id whenever that was readable.
    """
    try:
        if b"NaN" in line or b"Infinity" in line:  # rare: see whether outside a string
            json.loads(line, parse_constant=_reject_constant)
        return _REQUEST_ADAPTER.validate_json(line)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid" and b"\\u" in line:
            return _parse_escaped(line)
        error = _classify(exc)
    except (ValueError, RecursionError) as exc:
        error = errors.BadRequest(f"frame is not valid JSON: {_short(exc)}")
    raise FrameRejected(_readable_id(line), error)


def _parse_escaped(line: bytes) -> Request:
    """The slow path for JSON that pydantic-core refuses but JSON allows: a lone surrogate
    escape (``"\\ud800"``) in a string. Python's parser takes it; validation is the same."""
    try:
        obj = json.loads(line, parse_constant=_reject_constant)
        return _REQUEST_ADAPTER.validate_python(obj)
    except ValidationError as exc:
        error = _classify(exc)
    except (ValueError, RecursionError) as exc:
        error = errors.BadRequest(f"frame is not valid JSON: {_short(exc)}")
    raise FrameRejected(_readable_id(line), error)


def _classify(exc: ValidationError) -> errors.DurableTQError:
    first = exc.errors()[0]
    kind = first["type"]
    if kind == "json_invalid":
        return errors.BadRequest(f"frame is not valid JSON: {first['msg']}")
    if kind == "union_tag_not_found":
        return errors.BadRequest("request has no op")
    if kind == "union_tag_invalid":
        op = first.get("input", {}).get("op") if isinstance(first.get("input"), dict) else None
        if not isinstance(op, str):
            return errors.BadRequest("op must be a string")
        return errors.UnknownOp(f"unknown op {op[:100]!r}")
    if kind in ("model_attributes_type", "model_type", "dict_type") and len(first["loc"]) == 0:
        return errors.BadRequest("frame must be a JSON object")
    if kind == "recursion_loop" or "recursion" in str(first["msg"]).lower():
        return errors.BadRequest("request is nested too deeply")
    return errors.BadRequest(describe_validation(exc))


def _readable_id(line: bytes) -> RequestId:
    """The id of a rejected line, when it is a JSON object with a valid id (else None)."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    request_id = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        return None
    return request_id


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = err["loc"][1:] if err["loc"] and err["loc"][0] in REQUESTS else err["loc"]
        where = ".".join(str(p) for p in loc) or "request"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]


def encode(obj: dict[str, Any]) -> bytes:
    """One compact JSON line, ended by a newline (JSON escapes every newline inside)."""
    try:
        return pydantic_core.to_json(obj) + b"\n"
    except pydantic_core.PydanticSerializationError:
        # A lone surrogate (a request id like "\\ud800") has no UTF-8 form: send it escaped.
        text = json.dumps(
            obj,
            separators=(",", ":"),
            ensure_ascii=True,
            default=pydantic_core.to_jsonable_python,
        )
        return text.encode() + b"\n"


def ok_reply(request_id: RequestId, result: dict[str, Any]) -> bytes:
    return encode({"id": request_id, "ok": True, **result})


def error_reply(request_id: RequestId, exc: errors.DurableTQError) -> bytes:
    return encode({"id": request_id, "ok": False, "error": exc.to_wire()})


def dumps_value(value: Any) -> str:
    """JSON text of a payload or result as stored in the database.

    Raises BadRequest for a number JSON cannot carry (``1e400`` parses as infinity) and
    keeps lone surrogates as ``\\udXXX`` escapes, so what is stored is always valid JSON.
    """
    try:
        text = pydantic_core.to_json(value)
    except pydantic_core.PydanticSerializationError:  # a lone surrogate: escape it
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    if b"Infinity" in text or b"NaN" in text:  # rare: tell a real one from text that says so
        try:
            json.dumps(value, allow_nan=False)
        except ValueError:
            raise errors.BadRequest("numbers must be finite (JSON has no infinity)") from None
    return text.decode()
