"""Each op of the op table once as an HTTP route: method, path, status, where its fields come from.

The table is checked against ``wire.ops.OPS`` by the tests: every op has a route, except the
three that only make sense on a connection (``UNROUTED``). A route's request is the op's own
request type, filled from path parameters, query parameters and the JSON body, so HTTP and
TCP validate and answer alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from durable_tq.wire import schema as s

#: Ops with no HTTP route, and why.
UNROUTED: dict[str, str] = {
    "hello": "HTTP has no session to open: the version is in the path (/v1) and the token "
    "comes with every request (Authorization: Bearer)",
    "bye": "HTTP has no session to close; keep-alive connections are the client's business",
    "heartbeat": "needs a worker registered on its connection; an HTTP worker keeps its "
    "tasks alive with extend, and its leases expire if it vanishes",
}


class QueuesView(msgspec.Struct, kw_only=True):
    """``GET /v1/queues``: the ``queues`` part of ``stats``."""

    queues: dict[str, s.QueueStats]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    op: str
    #: Status of a successful reply.
    status: int = 200
    #: Query parameters: name -> request field it fills (``cursor`` fills ``after_id``).
    query: dict[str, str] = field(default_factory=dict)
    #: Whether the op's remaining fields come from a JSON body.
    body: bool = False
    #: Path parameter -> request field, when the names differ or the value is wrapped.
    path_fields: dict[str, Callable[[Any], tuple[str, Any]]] = field(default_factory=dict)
    #: Query parameters that are not request fields but must be given (purge's confirm).
    required_query: tuple[str, ...] = ()
    #: Another reply type, when the route shows part of the op's reply.
    view: type[Any] | None = None
    summary: str = ""

    @property
    def path_params(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]

    @property
    def name(self) -> str:
        return f"{self.method.lower()}_{self.path}"


def _queue_list(value: Any) -> tuple[str, Any]:
    return "queues", [value]


def _task_id_list(value: Any) -> tuple[str, Any]:
    return "task_ids", [value]


ROUTES: list[Route] = [
    # producing and reading tasks
    Route("POST", "/v1/queues/{queue}/tasks", "enqueue", status=201, body=True),
    Route("POST", "/v1/tasks:batch", "enqueue_many", status=201, body=True),
    Route("GET", "/v1/tasks/{task_id}", "get"),
    Route("GET", "/v1/tasks", "list",
          query={"queue": "queue", "state": "state", "limit": "limit", "cursor": "after_id"}),
    Route("DELETE", "/v1/tasks/{task_id}", "cancel"),
    Route("POST", "/v1/tasks/{task_id}/requeue", "requeue",
          path_fields={"task_id": _task_id_list},
          summary="Requeue one dead or cancelled task."),
    Route("POST", "/v1/requeue", "requeue", body=True,
          summary="Requeue tasks by id, or a queue's dead or cancelled tasks."),
    # HTTP workers
    Route("POST", "/v1/queues/{queue}/claim", "claim", body=True,
          path_fields={"queue": _queue_list},
          summary="Lease the best ready tasks of one queue; long-poll up to wait seconds."),
    Route("POST", "/v1/claim", "claim", body=True,
          summary="Lease the best ready tasks across several queues."),
    Route("POST", "/v1/tasks/{task_id}/ack", "ack", body=True),
    Route("POST", "/v1/tasks/{task_id}/fail", "fail", body=True),
    Route("POST", "/v1/tasks/{task_id}/release", "release", body=True),
    Route("POST", "/v1/tasks/{task_id}/extend", "extend", body=True),
    Route("POST", "/v1/settle", "settle", body=True),
    Route("POST", "/v1/tasks/{task_id}/progress", "progress", body=True,
          summary="Record a leased task's progress (fenced by its lease token)."),
    # results
    Route("GET", "/v1/tasks/{task_id}/wait", "wait", query={"timeout": "timeout"},
          summary="Hold until the task is finished or timeout seconds pass (done says which)."),
    # operating
    Route("GET", "/v1/stats", "stats"),
    Route("GET", "/v1/queues", "stats", view=QueuesView,
          summary="Counts per queue and state."),
    Route("GET", "/v1/queues/{queue}", "stats", view=s.QueueStats,
          summary="One queue's counts; not_found for a queue never used."),
    Route("POST", "/v1/queues/{queue}/pause", "pause"),
    Route("POST", "/v1/queues/{queue}/resume", "resume"),
    Route("DELETE", "/v1/queues/{queue}/tasks", "purge", query={"state": "state"},
          required_query=("confirm",),
          summary="Remove a queue's tasks (never leased ones); confirm must repeat the queue."),
    Route("POST", "/v1/queues/{queue}/settings", "queue_settings", body=True,
          summary="Set (or, with an empty body, read) a queue's defaults such as result_ttl."),
    Route("POST", "/v1/queues/{queue}/limits", "set_queue_limits", body=True,
          summary="Set a queue's rate and concurrency limits."),
    Route("GET", "/v1/queues/{queue}/info", "queue_info",
          summary="A queue's limits, counts and rate tokens."),
    # schedules
    Route("PUT", "/v1/schedules/{name}", "schedule_upsert", body=True,
          summary="Create or update a schedule (cron with tz, or every seconds)."),
    Route("GET", "/v1/schedules", "schedule_list"),
    Route("DELETE", "/v1/schedules/{name}", "schedule_remove"),
    Route("POST", "/v1/schedules/{name}/pause", "schedule_pause"),
    Route("POST", "/v1/schedules/{name}/resume", "schedule_resume"),
    Route("GET", "/v1/throughput", "throughput",
          summary="Tasks per second over the last 15 minutes, broker-wide (sampled in memory)."),
    Route("GET", "/v1/workers", "workers"),
    Route("POST", "/v1/workers/{worker_id}/state", "worker_state", body=True),
]  # fmt: skip
