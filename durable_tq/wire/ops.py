"""The op table: every operation of the protocol declared once.

Each :class:`Op` names the request and reply types, whether an ok reply promises a committed
change (``writes``), whether a client may resend it after a lost connection without changing
the outcome (``resend_safe``), and the role a token needs for it. The TCP server dispatches
from this table, the clients take their reply types from it, and the HTTP and gRPC faces read
it too; tests fail when a face lacks an op.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from durable_tq.wire import schema as s


class Role(IntEnum):
    """What a token may do; each role may do everything the ones below it may."""

    PRODUCER = 1  # enqueue, read
    WORKER = 2  # producer ops plus claim, settle, extend, heartbeat
    ADMIN = 3  # everything


@dataclass(frozen=True, slots=True)
class Op:
    name: str
    request: type[s.Request]
    reply: type[s.Reply]
    #: An ok reply promises a committed change (PROTOCOL.md, "Durable replies").
    writes: bool
    #: Sending it again after a lost reply cannot do harm (reads; fenced lease operations;
    #: enqueue only with a unique_key, which the client checks itself).
    resend_safe: bool
    role: Role
    #: The broker method that runs it (``Broker.<handler>``).
    handler: str
    summary: str
    #: Its ok reply may hand out leases: a front end that cannot deliver the reply hands the
    #: tasks straight back (nobody else knows they are leased).
    leases: bool = False
    #: It may hold its reply until something happens (a long-poll): it must not take a slot
    #: that would hold up the requests behind it.
    long_poll: bool = False


def _op(
    request: type[s.Request],
    reply: type[s.Reply],
    *,
    writes: bool,
    resend_safe: bool,
    role: Role,
    summary: str,
    leases: bool = False,
    long_poll: bool = False,
) -> Op:
    name = str(request.__struct_config__.tag)
    return Op(name, request, reply, writes, resend_safe, role, name, summary, leases, long_poll)


P, W, A = Role.PRODUCER, Role.WORKER, Role.ADMIN

OPS: dict[str, Op] = {
    op.name: op
    for op in [
        _op(s.Hello, s.HelloReply, writes=False, resend_safe=True, role=P,
            summary="Open the session: protocol version, token, optional worker registration."),
        _op(s.Enqueue, s.EnqueueReply, writes=True, resend_safe=False, role=P,
            summary="Add one task to a queue."),
        _op(s.EnqueueMany, s.EnqueueManyReply, writes=True, resend_safe=False, role=P,
            summary="Add many tasks, all or nothing."),
        _op(s.Claim, s.ClaimReply, writes=True, resend_safe=False, role=W,
            summary="Lease the best ready tasks of some queues; long-poll up to wait seconds.",
            leases=True, long_poll=True),
        _op(s.Ack, s.Empty, writes=True, resend_safe=True, role=W,
            summary="Finish a leased task as succeeded, with an optional result."),
        _op(s.Fail, s.FailReply, writes=True, resend_safe=True, role=W,
            summary="Fail a leased task: retry with backoff, or dead."),
        _op(s.Release, s.FailReply, writes=True, resend_safe=True, role=W,
            summary="Give a leased task back without counting the attempt."),
        _op(s.Settle, s.SettleReply, writes=True, resend_safe=False, role=W,
            summary="Ack, fail or release many leases in one commit; optionally claim more.",
            leases=True, long_poll=True),
        _op(s.Extend, s.ExtendReply, writes=True, resend_safe=True, role=W,
            summary="Move a lease's expiry."),
        _op(s.Progress, s.ProgressReply, writes=True, resend_safe=True, role=W,
            summary="Record a running task's progress (fenced by its lease, not fsynced)."),
        _op(s.Wait, s.WaitReply, writes=False, resend_safe=True, role=P,
            summary="Hold the reply until a task is finished, or up to timeout seconds.",
            long_poll=True),
        _op(s.QueueSettings, s.QueueSettingsReply, writes=True, resend_safe=True, role=A,
            summary="Set a queue's defaults (result_ttl)."),
        _op(s.Heartbeat, s.HeartbeatReply, writes=True, resend_safe=True, role=W,
            summary="A registered worker is alive; returns its command."),
        _op(s.Get, s.GetReply, writes=False, resend_safe=True, role=P,
            summary="One task by id."),
        _op(s.Cancel, s.CancelReply, writes=True, resend_safe=True, role=A,
            summary="Cancel a task; a leased one is told to stop (cancelling)."),
        _op(s.Stats, s.StatsReply, writes=False, resend_safe=True, role=P,
            summary="Counts per queue and state, workers, connections."),
        _op(s.List, s.ListReply, writes=False, resend_safe=True, role=P,
            summary="A page of tasks, by id, optionally of one queue and state."),
        _op(s.Requeue, s.RequeueReply, writes=True, resend_safe=True, role=A,
            summary="Dead or cancelled tasks back to queued, attempts reset."),
        _op(s.Pause, s.Empty, writes=True, resend_safe=True, role=A,
            summary="Stop handing out a queue's tasks."),
        _op(s.Resume, s.Empty, writes=True, resend_safe=True, role=A,
            summary="Hand out a paused queue's tasks again."),
        _op(s.Purge, s.CountReply, writes=True, resend_safe=False, role=A,
            summary="Remove a queue's tasks (never leased ones)."),
        _op(s.Workers, s.WorkersReply, writes=False, resend_safe=True, role=P,
            summary="Registered workers."),
        _op(s.WorkerState, s.Empty, writes=True, resend_safe=True, role=A,
            summary="Tell a worker to keep running, go quiet or terminate."),
        _op(s.Bye, s.Empty, writes=False, resend_safe=True, role=P,
            summary="End the session; the broker closes the connection."),
        _op(s.ScheduleUpsert, s.ScheduleUpsertReply, writes=True, resend_safe=True, role=A,
            summary="Create or update a schedule (cron or interval); same spec: no change."),
        _op(s.ScheduleList, s.ScheduleListReply, writes=False, resend_safe=True, role=P,
            summary="Every schedule with its next run time."),
        _op(s.ScheduleRemove, s.Empty, writes=True, resend_safe=True, role=A,
            summary="Delete a schedule."),
        _op(s.SchedulePause, s.ScheduleReply, writes=True, resend_safe=True, role=A,
            summary="Stop a schedule from firing."),
        _op(s.ScheduleResume, s.ScheduleReply, writes=True, resend_safe=True, role=A,
            summary="Let a paused schedule fire again, from its next slot after now."),
        _op(s.SetQueueLimits, s.QueueInfoReply, writes=True, resend_safe=True, role=A,
            summary="Set a queue's rate, burst, max leased and per-key concurrency."),
        _op(s.QueueInfo, s.QueueInfoReply, writes=False, resend_safe=True, role=P,
            summary="A queue's limits, counts and rate tokens."),
        _op(s.Throughput, s.ThroughputReply, writes=False, resend_safe=True, role=P,
            summary="Tasks enqueued, claimed, succeeded, failed, dead per second, last 15 min."),
    ]
}  # fmt: skip

#: Operation name -> request type.
REQUESTS: dict[str, type[s.Request]] = {name: op.request for name, op in OPS.items()}
