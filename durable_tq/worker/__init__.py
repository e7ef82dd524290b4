"""The worker runtime: run handlers for queued tasks, safely (docs/worker.md).

worker.py     ``Worker``: handlers, options, run / run_sync / start / stop / drain
task.py       ``Task``: a registered handler, how to call it, ``enqueue``
context.py    ``TaskContext``: what a handler knows about its task
runtime.py    one run: claims for free slots, heartbeats, graceful stop
execute.py    one handler call: loop or thread, timeout, to an outcome
leases.py     renewing leases while tasks run
settle.py     the one place that acks, fails or releases
outcome.py    ``Retry``, ``Fail`` and the outcomes
"""

from durable_tq.worker.context import TaskContext
from durable_tq.worker.outcome import Fail, Retry
from durable_tq.worker.task import EnqueueOptions, Task
from durable_tq.worker.worker import DEFAULT_URL, Worker, WorkerSettings

__all__ = [
    "DEFAULT_URL",
    "EnqueueOptions",
    "Fail",
    "Retry",
    "Task",
    "TaskContext",
    "Worker",
    "WorkerSettings",
]
