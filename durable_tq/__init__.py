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

__version__ = "0.1.0"

__all__ = [
    "Busy",
    "Conflict",
    "ConnectionLost",
    "DurableTQError",
    "LeaseLost",
    "NotFound",
    "TaskState",
    "__version__",
]
