"""durable_tq: a durable task-queue broker on SQLite, with its clients and worker runtime.

The worker runtime and the clients are imported on first use, so that ``durable-tq serve``
(which needs neither) starts quickly: a restart after a crash is back sooner.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from durable_tq.errors import (
    Busy,
    Conflict,
    ConnectionLost,
    DurableTQError,
    LeaseLost,
    NotFound,
    RequestTimeout,
    WaitTimeout,
)
from durable_tq.wire.schema import TaskState

if TYPE_CHECKING:
    from durable_tq.client import AsyncClient, Client
    from durable_tq.worker import Fail, Retry, TaskContext, Worker

__version__ = "0.1.0"

_LAZY = {
    "AsyncClient": "durable_tq.client",
    "Client": "durable_tq.client",
    "Fail": "durable_tq.worker",
    "Retry": "durable_tq.worker",
    "TaskContext": "durable_tq.worker",
    "Worker": "durable_tq.worker",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'durable_tq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AsyncClient",
    "Busy",
    "Client",
    "Conflict",
    "ConnectionLost",
    "DurableTQError",
    "Fail",
    "LeaseLost",
    "NotFound",
    "RequestTimeout",
    "Retry",
    "TaskContext",
    "TaskState",
    "WaitTimeout",
    "Worker",
    "__version__",
]
