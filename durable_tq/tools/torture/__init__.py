"""Crash testing: record what every client was told, SIGKILL the broker and its workers, check.

:func:`run_torture` starts ``python -m durable_tq serve`` on one database file and one fixed
port, producer processes that enqueue tasks (each payload carries a unique id; some are chains
and fan-ins with ``after``, some depend on earlier ok'd tasks, some are doomed to fail for
good, and some are ``wait``-ed for, riding out the kills) and consumer processes that claim,
ack, fail, release, extend, abandon and ack too late. Interval schedules (every 1 s and 2 s,
``missed = latest``) fire into a queue the consumers also work, and a prober thread writes
every 0.1 s to see when the broker is really working. Some consumers
(``--settle-consumers``) take the batching path instead: each ``settle`` request ends the
leases of the last round (acks, fails and releases mixed, now and then a stale token or the
same ack twice) and claims the next tasks in the same transaction, and it is their only
heartbeat. Every reply a child gets is appended to its history file before it goes on, a
settle's per-task results one line each (and a fail or release also before it is sent, as
Jepsen records invocations). Meanwhile the harness
SIGKILLs the broker at random moments (running ``PRAGMA integrity_check`` on the file while
it is down, then restarting it on the same file and port) and SIGKILLs consumers (starting
new ones). Then the chaos stops, the queue is drained, the broker is stopped, and the
database is opened read-only and held against the histories:

* every enqueue that got ``ok`` is stored (no lost writes) and reached ``succeeded``;
* no task got ``ok`` for two acks, and every ``ok`` ack is the one stored (fencing);
* an ack sent after its lease ran out was refused;
* every claim got a fresh token, and no task was claimed while another lease on it held;
* each ``enqueue_many`` is stored whole or not at all, and nothing is stored twice;
* the file passed ``integrity_check`` after every kill;
* no dependent task was claimed before each parent's successful ack was sent, and the
  dependents of a task that failed for good ended cancelled, naming it, never claimed;
* every ``wait`` that returned agrees with the database (state, result);
* no schedule slot fired twice, each firing was the latest due slot, no slot was lost while
  the broker was seen serving (:mod:`durable_tq.tools.torture.flows` says exactly what
  that means), and each schedule's ``last_slot`` is its latest task.

Only ``ok`` replies are promises. A request whose connection broke before its reply is
*unknown*: it may or may not have been committed, and the checks allow both.

Children run as ``python -m durable_tq.tools.torture producer|consumer ...``
(see :func:`child_main`).
"""

from __future__ import annotations

from durable_tq.tools.torture.checker import (
    Check,
    History,
    StoredTask,
    check_history,
    read_database,
    read_history,
)
from durable_tq.tools.torture.children import HistoryFile, child_main
from durable_tq.tools.torture.harness import (
    Prober,
    TortureConfig,
    TortureReport,
    broker_stats,
    integrity_check,
    remove_workdir,
    render,
    run_torture,
)

__all__ = [
    "Check",
    "History",
    "HistoryFile",
    "Prober",
    "StoredTask",
    "TortureConfig",
    "TortureReport",
    "broker_stats",
    "check_history",
    "child_main",
    "integrity_check",
    "read_database",
    "read_history",
    "remove_workdir",
    "render",
    "run_torture",
]
