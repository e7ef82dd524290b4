"""durable_tq: a durable task-queue broker on SQLite, with its clients and worker runtime."""

from durable_tq.errors import (
    Busy,
    Conflict,
    ConnectionLost,
    DurableTQError,
    LeaseLost,
    NotFound,
)
from durable_tq.protocol import TaskState
from durable_tq.worker import Fail, Retry, TaskContext, Worker

__version__ = "0.1.0"

__all__ = [
    "Busy",
    "Conflict",
    "ConnectionLost",
    "DurableTQError",
    "Fail",
    "LeaseLost",
    "NotFound",
    "Retry",
    "TaskContext",
    "TaskState",
    "Worker",
    "__version__",
]
