"""Queue semantics over the store: every operation of PROTOCOL.md except the wire itself."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import msgspec
from msgspec import Raw

from durable_tq import backends, backoff, errors
from durable_tq.backends.sqlite.reads import read_stats, read_task_page, task_from_row
from durable_tq.backends.sqlite.store import Batch
from durable_tq.config import Settings
from durable_tq.core import latency, limits, scheduler
from durable_tq.core.clock import BrokerTime, Clock
from durable_tq.core.throughput import ThroughputRing
from durable_tq.core.waiters import Waiters
from durable_tq.wire import schema
from durable_tq.wire.codec import dumps_value
from durable_tq.wire.ops import OPS, Role
from durable_tq.wire.schema import Outcome, TaskState, WorkerCommand

log = logging.getLogger("durable_tq.core.broker")

Result = dict[str, Any]

#: An enqueue_many of more tasks than this is a heavy write (runs on the database thread).
HEAVY_ROWS = 200


@dataclass
class Session:
    """What the broker knows of one client connection."""

    greeted: bool = False
    worker_id: str | None = None
    client: str | None = None
    #: What the hello token may do (every op when the broker has no tokens).
    role: Role = Role.ADMIN


class TaskArgs(Protocol):
    """The arguments of one enqueue (``wire.schema.Enqueue`` and ``EnqueueItem`` are such)."""

    @property
    def queue(self) -> str: ...
    @property
    def payload(self) -> Raw | str: ...
    @property
    def priority(self) -> int: ...
    @property
    def delay(self) -> float | None: ...
    @property
    def run_at(self) -> float | None: ...
    @property
    def max_attempts(self) -> int | None: ...
    @property
    def lease(self) -> float | None: ...
    @property
    def unique_key(self) -> str | None: ...
    @property
    def concurrency_key(self) -> str | None: ...


@dataclass(frozen=True)
class EarlierItem:
    """In ``enqueue_many``, a parent that is the ``index``-th task of the same call."""

    index: int


@dataclass(frozen=True)
class TaskSpec:
    """:class:`TaskArgs` for Python callers (tools, tests): ``payload`` is JSON text."""

    queue: str
    payload: Raw | str = "null"
    priority: int = 0
    delay: float | None = None
    run_at: float | None = None
    max_attempts: int | None = None
    lease: float | None = None
    unique_key: str | None = None
    concurrency_key: str | None = None
    result_ttl: float | None = None
    after: Sequence[int | EarlierItem] | None = None
    on_parent_failure: str = "cancel"


class SettleArgs(Protocol):
    """One item of a ``settle`` (``wire.schema.SettleItem`` is one)."""

    @property
    def task_id(self) -> int: ...
    @property
    def lease_token(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def result(self) -> Raw | str | None: ...
    @property
    def error(self) -> str: ...
    @property
    def retry(self) -> bool: ...
    @property
    def delay(self) -> float | None: ...


class ClaimArgs(Protocol):
    """What a claim asks for (``wire.schema.ClaimArgs`` is one)."""

    @property
    def queues(self) -> list[str]: ...
    @property
    def max(self) -> int: ...
    @property
    def wait(self) -> float: ...
    @property
    def lease(self) -> float | None: ...


def payload_text(value: Raw | str) -> str:
    """Raw JSON from the wire (or JSON text from a Python caller) as the text to store."""
    return value if isinstance(value, str) else bytes(value).decode()


def result_text(value: Raw | str | None) -> str | None:
    """Like :func:`payload_text`; a ``null`` result is stored as no result."""
    if value is None:
        return None
    text = payload_text(value)
    return None if text == "null" else text


@dataclass(frozen=True)
class NewTask:
    """An enqueue, resolved against the settings and the clock (built off the DB thread)."""

    queue: str
    state: str
    payload: str
    priority: int
    max_attempts: int
    lease_seconds: float
    run_at: float
    unique_key: str | None
    concurrency_key: str | None = None
    result_ttl: float | None = None
    #: Parent task ids, and earlier items of the same enqueue_many (by index).
    after: tuple[int | EarlierItem, ...] = ()
    on_parent_failure: str = "cancel"


def parent_refs(args: object) -> tuple[int | EarlierItem, ...]:
    """The ``after`` of an enqueue's arguments (any TaskArgs: older ones have none)."""
    after = getattr(args, "after", None) or ()
    return tuple(ref if isinstance(ref, int) else EarlierItem(ref.index) for ref in after)


def backoff_delay(attempt: int, settings: Settings) -> float:
    """The retry delay of a failed attempt, from the settings (durable_tq.backoff)."""
    return backoff.backoff_delay(
        attempt,
        base=settings.backoff_base,
        cap=settings.backoff_cap,
        jitter=settings.backoff_jitter,
    )


def token_role(settings: Settings, token: str | None) -> Role | None:
    """The role of ``token``, or None when it is not one of the configured tokens (every
    front end asks this: TCP hello, HTTP and gRPC bearer tokens)."""
    # surrogatepass: a token with a lone surrogate is simply wrong, not a crash.
    given = hashlib.sha256((token or "").encode("utf-8", "surrogatepass")).digest()
    # Compare against every token, always, so timing says nothing about which matched.
    roles = [
        Role[entry.role.upper()]
        for entry in settings.auth_entries
        if hmac.compare_digest(given, entry.digest())
    ]
    return max(roles) if token is not None and roles else None


class Broker:
    """The queue: enqueue, claim, ack, fail and the rest, durable through :class:`Store`.

    Use ``async with Broker(settings) as broker``. Every write goes through the store's group
    commit; a method returns only after its change is committed. Methods take plain arguments
    named as the request fields of their op (``wire.ops``), so every front end calls them the
    same way; ``session`` is the connection's.
    """

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        #: The broker's time (durable_tq.core.clock): Unix seconds that move with the monotonic
        #: clock while it runs, so a wall-clock step neither shortens nor stretches a lease.
        self.time = BrokerTime(clock)
        self.store = backends.open_store(settings)
        #: The store's SQL, by name (``backends.sqlite.queries`` or ``backends.postgres...``).
        self.sql = self.store.queries
        #: Other brokers write the same database (PostgreSQL): their commits reach us as
        #: notifications, and the queues' settings are re-read at every sweep.
        self.shared = self.store.shared
        self.store.on_ready = self._remote_ready
        self.store.on_done = self._remote_done
        self.store.on_queue_changed = self._remote_queue_changed
        self.queues_stale = False
        self.waiters = Waiters()
        self.paused: set[str] = set()
        #: Queues that have a row in ``queues``: new ones get one on their first enqueue.
        self.known_queues: set[str] = set()
        self.connections = 0
        self.started_at = self.now()
        #: Earliest moment something timed (a scheduled task, a lease) falls due; the sweeper
        #: watches it. Writes lower it; ``due_changed`` wakes the sweeper when they do.
        self.next_due: float = float("inf")
        self.due_changed = anyio.Event()
        self._worker_sessions: Counter[str] = Counter()
        #: Per-queue limits (durable_tq.core.limits); ``limited`` names the queues whose claims go
        #: through them, ``buckets`` holds the rate limits' tokens (memory only).
        self.limits: dict[str, limits.QueueLimits] = {}
        self.limited: set[str] = set()
        self.buckets: dict[str, limits.TokenBucket] = {}
        #: ``wait`` requests parked per task id, woken after the commit that finishes it.
        self.task_waiters: dict[int, set[anyio.Event]] = {}
        self._waits_ended = False
        self.store.before_commit = self._resolve_finished
        self.store.after_commit = self._after_finish
        #: Tasks enqueued, claimed, succeeded, failed, dead since start (for /metrics); dead
        #: counts every task buried, by a worker's fail or by the sweeper (attempts ran out).
        self.counters: Counter[str] = Counter()
        #: enqueue -> claim and claim -> ack histograms (for /metrics), from the timestamps
        #: the claim's and the ack's UPDATEs return.
        self.latency = latency.Latencies()
        #: Those counters sampled over the last minutes (the ``throughput`` op).
        self.throughput_ring = ThroughputRing()

    async def __aenter__(self) -> Broker:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def now(self) -> float:
        """Unix seconds as the broker counts them (:class:`durable_tq.core.clock.BrokerTime`)."""
        return self.time.now()

    async def open(self) -> None:
        self.time.anchor()
        self.started_at = self.now()
        self.throughput_ring.sample(self.started_at, self.counters)
        await self.store.open()
        await self.reload_queues()

    async def reload_queues(self) -> None:
        """Read the queues' settings (pause, limits). At open; on a store shared with other
        brokers also at every sweep and when one of them changed a queue (notified)."""
        self.queues_stale = False

        def read(conn: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            queues = conn.execute(self.sql.QUEUES).fetchall()
            return queues, conn.execute(self.sql.QUEUE_LIMITS).fetchall()

        queues, rows = await self.store.read(read)
        self.known_queues = {name for name, _ in queues}
        resumed = self.paused - {name for name, paused in queues if paused}
        self.paused = {name for name, paused in queues if paused}
        for name, *values in rows:
            new = limits.QueueLimits(*values)
            if self.limits.get(name) != new:
                self._set_limits(name, new)
                resumed.add(name)
        for name in resumed:
            self.waiters.notify_all(name)

    def _remote_done(self, task_ids: Sequence[int]) -> None:
        """Another broker committed the end of these tasks: wake their ``wait`` requests."""
        waiters = self.task_waiters
        for task_id in task_ids:
            for event in waiters.get(task_id, ()):
                event.set()

    def _remote_queue_changed(self, queue: str) -> None:
        """Another broker changed a queue's settings: re-read them at once (the sweeper)."""
        self.queues_stale = True
        self._schedule_wakeup(self.now())

    def _remote_ready(self, queue: str, count: int) -> None:
        self.notify_ready(Counter({queue: count}))

    async def close(self) -> None:
        await self.store.close()

    def _schedule_wakeup(self, moment: float) -> None:
        if moment < self.next_due:
            self.next_due = moment
            self.due_changed.set()

    def connection_opened(self) -> None:
        """A front end accepted a connection (counted in ``stats``)."""
        self.connections += 1

    def connection_closed(self) -> None:
        self.connections -= 1

    def notify_ready(self, ready: Counter[str]) -> None:
        """Tasks became ready (committed): wake claims parked on their queues."""
        for queue, count in ready.items():
            if queue not in self.paused:
                self.waiters.notify(queue, count)

    # --- session ------------------------------------------------------------------------------

    async def hello(
        self,
        version: int,
        token: str | None = None,
        client: str | None = None,
        worker: schema.WorkerSpec | None = None,
        *,
        session: Session,
    ) -> Result:
        if session.greeted:
            raise errors.Conflict("hello was already sent on this connection")
        if version != schema.PROTOCOL_VERSION:
            raise errors.UnsupportedVersion(
                f"protocol version {version} is not spoken here; this broker speaks "
                f"{schema.PROTOCOL_VERSION}",
                supported=[schema.PROTOCOL_VERSION],
            )
        role = Role.ADMIN
        if self.settings.auth_tokens:
            matched = self._token_role(token)
            if matched is None:
                raise errors.Unauthorized("missing or wrong token")
            role = matched
        if worker is not None and role < Role.WORKER:
            raise errors.Forbidden("registering a worker needs a worker or admin token")
        session.role = role
        if worker is not None:
            await self.register_worker(worker)
            session.worker_id = worker.id
            self._worker_sessions[worker.id] += 1
        session.greeted = True
        session.client = client
        return {
            "server": schema.SERVER_NAME,
            "version": schema.PROTOCOL_VERSION,
            "heartbeat_interval": self.settings.heartbeat_interval,
        }

    def _token_role(self, token: str | None) -> Role | None:
        return token_role(self.settings, token)

    def allowed(self, op: str, session: Session) -> bool:
        """Whether ``session``'s role may run ``op`` (the op table says what each op needs)."""
        spec = OPS.get(op)
        return spec is not None and session.role >= spec.role

    async def bye(self, *, session: Session | None = None) -> Result:
        return {}

    async def session_closed(self, session: Session) -> None:
        """The connection of ``session`` is gone: mark its worker, maybe release its leases."""
        worker_id = session.worker_id
        if worker_id is None:
            return
        self._worker_sessions[worker_id] -= 1
        if self._worker_sessions[worker_id] > 0:
            return  # the worker is still connected through another connection
        del self._worker_sessions[worker_id]
        release = self.settings.release_on_disconnect
        now = self.now()

        def gone(conn: sqlite3.Connection, batch: Batch) -> Counter[str]:
            conn.execute(self.sql.WORKER_GONE, (worker_id,))
            if not release:
                return Counter()
            rows = conn.execute(
                self.sql.RELEASE_WORKER_LEASES, {"now": now, "worker_id": worker_id}
            ).fetchall()
            for queue, state, task_id in rows:
                batch.moved(queue, TaskState.LEASED, state)
                if state != TaskState.QUEUED:
                    batch.finished(task_id, state)
            return Counter(queue for queue, state, _ in rows if state == TaskState.QUEUED)

        try:
            ready = await self.store.write(gone)
        except errors.DurableTQError as exc:
            log.warning("could not record that worker %s left: %s", worker_id, exc)
            return
        self.notify_ready(ready)

    # --- producing ----------------------------------------------------------------------------

    def _new_task(self, args: TaskArgs, now: float) -> NewTask:
        if args.delay is not None:
            run_at = now + args.delay
        elif args.run_at is not None:
            run_at = args.run_at
        else:
            run_at = now
        return NewTask(
            queue=args.queue,
            state=TaskState.SCHEDULED if run_at > now else TaskState.QUEUED,
            payload=payload_text(args.payload),
            priority=args.priority,
            max_attempts=args.max_attempts or self.settings.max_attempts,
            lease_seconds=self._lease(args.lease) or self.settings.default_lease,
            run_at=run_at,
            unique_key=args.unique_key,
            concurrency_key=args.concurrency_key,
            result_ttl=getattr(args, "result_ttl", None),
            after=parent_refs(args),
            on_parent_failure=str(getattr(args, "on_parent_failure", "cancel")),
        )

    def _lease(self, lease: float | None) -> float | None:
        if lease is not None and lease > self.settings.max_lease:
            raise errors.BadRequest(
                f"lease: {lease} s is longer than max_lease ({self.settings.max_lease} s)"
            )
        return lease

    def _insert(
        self,
        conn: sqlite3.Connection,
        batch: Batch,
        task: NewTask,
        now: float,
        earlier: Sequence[int] = (),
    ) -> tuple[int, bool, str]:
        """Insert one task, or find its live twin by unique_key: (id, created, state).
        ``earlier``: the ids of the tasks inserted before it by the same enqueue_many."""
        if task.unique_key is not None:
            row = conn.execute(self.sql.FIND_LIVE_UNIQUE, (task.queue, task.unique_key)).fetchone()
            if row is not None:
                return row[0], False, ""
        parents = self._parent_states(conn, task, earlier) if task.after else []
        limit = self.settings.max_queue_depth
        if limit:
            # Read once per transaction, then kept exact by the batch's own counts: a refused
            # or failed write's tasks are not counted (their moves are dropped with it).
            key = ("depth", task.queue)
            base = batch.memo.get(key)
            if base is None:
                base = batch.memo[key] = conn.execute(
                    self.sql.QUEUE_DEPTH, (task.queue,)
                ).fetchone()[0]
            depth = (
                base
                + batch.net(task.queue, TaskState.QUEUED)
                + batch.net(task.queue, TaskState.SCHEDULED)
            )
            if depth >= limit:
                # Say what waits without this request's own tasks (an enqueue_many refused
                # midway would otherwise count its first items).
                waiting = depth - batch.request_net(task.queue, *schema.WAITING_STATES)
                raise errors.Busy(
                    f"queue {task.queue!r} holds {waiting} waiting tasks (max_queue_depth {limit})",
                    retry_after=1.0,
                )
        cursor = conn.execute(
            self.sql.INSERT_TASK,
            (
                task.queue,
                task.state,
                task.payload,
                task.priority,
                task.max_attempts,
                task.lease_seconds,
                task.run_at,
                now,
                now,
                task.unique_key,
                task.concurrency_key,
            ),
        )
        if task.queue not in self.known_queues:  # noted as known once committed
            conn.execute(self.sql.INSERT_QUEUE, (task.queue,))
        task_id = cursor.lastrowid
        if task_id is None:  # PostgreSQL: another broker's twin took the unique key meanwhile
            row = conn.execute(self.sql.FIND_LIVE_UNIQUE, (task.queue, task.unique_key)).fetchone()
            return row[0], False, ""
        if task.result_ttl is not None or task.on_parent_failure != schema.ParentFailure.CANCEL:
            conn.execute(
                self.sql.SET_TASK_OPTIONS, (task.result_ttl, task.on_parent_failure, task_id)
            )
        state = self._hold_for_parents(conn, batch, task, task_id, parents, now)
        batch.moved(task.queue, None, state)
        return task_id, True, state

    def _parent_states(
        self, conn: sqlite3.Connection, task: NewTask, earlier: Sequence[int]
    ) -> list[tuple[int, str]]:
        """(id, state) of each parent; raises before anything is written."""
        parents: dict[int, str] = {}
        for ref in task.after:
            if isinstance(ref, EarlierItem):
                if ref.index >= len(earlier):
                    raise errors.BadRequest(
                        f"after: {{'index': {ref.index}}} must name an earlier task of this "
                        "enqueue_many"
                    )
                parent_id = earlier[ref.index]
            else:
                parent_id = ref
            row = conn.execute(self.sql.PARENT_STATE, (parent_id,)).fetchone()
            if row is None:
                raise errors.NotFound(f"parent task {parent_id} does not exist", task_id=parent_id)
            parents[parent_id] = row[0]
        return list(parents.items())

    def _hold_for_parents(
        self,
        conn: sqlite3.Connection,
        batch: Batch,
        task: NewTask,
        task_id: int,
        parents: list[tuple[int, str]],
        now: float,
    ) -> str:
        """Record the unfinished parents; the task's state: held (``waiting``), born
        ``cancelled`` (a parent already failed), or as inserted."""
        waiting_on = 0
        failed: tuple[int, str] | None = None
        for parent_id, state in parents:
            if state == TaskState.SUCCEEDED:
                continue
            if state in (TaskState.DEAD, TaskState.CANCELLED):
                if task.on_parent_failure != schema.ParentFailure.RUN and failed is None:
                    failed = (parent_id, state)
                continue
            conn.execute(self.sql.INSERT_DEP, (task_id, parent_id))
            waiting_on += 1
        if failed is not None:
            error = f"parent task {failed[0]} ended {failed[1]}"
            conn.execute(self.sql.FORGET_DEPS_OF_CHILD, (task_id,))
            conn.execute(self.sql.CANCEL_AT_BIRTH, (error, now, task_id))
            batch.finished(task_id, TaskState.CANCELLED)
            return TaskState.CANCELLED
        if waiting_on:
            conn.execute(self.sql.HOLD_CHILD, (waiting_on, task_id))
            return TaskState.WAITING
        return task.state

    async def enqueue(
        self,
        queue: str,
        payload: Raw | str = "null",
        priority: int = 0,
        delay: float | None = None,
        run_at: float | None = None,
        max_attempts: int | None = None,
        lease: float | None = None,
        unique_key: str | None = None,
        concurrency_key: str | None = None,
        result_ttl: float | None = None,
        after: Sequence[int | Any] | None = None,
        on_parent_failure: str = "cancel",
        *,
        session: Session | None = None,
    ) -> Result:
        now = self.now()
        spec = TaskSpec(
            queue,
            payload,
            priority,
            delay,
            run_at,
            max_attempts,
            lease,
            unique_key,
            concurrency_key=concurrency_key,
            result_ttl=result_ttl,
            after=after,
            on_parent_failure=on_parent_failure,
        )
        task = self._new_task(spec, now)
        if any(isinstance(ref, EarlierItem) for ref in task.after):
            raise errors.BadRequest("after: {'index': n} is for enqueue_many only")
        # Atomic (no savepoint): everything that can refuse it runs before its INSERT; only a
        # new queue, or parents, add more statements.
        task_id, created, state = await self.store.write(
            lambda conn, batch: self._insert(conn, batch, task, now),
            atomic=task.queue in self.known_queues and not task.after,
        )
        if created:
            self._after_insert([(task, state)])
        return {"task_id": task_id, "created": created}

    async def enqueue_many(
        self, tasks: Sequence[TaskArgs], *, session: Session | None = None
    ) -> Result:
        if len(tasks) > self.settings.max_enqueue_many:
            raise errors.BadRequest(
                f"tasks: {len(tasks)} tasks is more than max_enqueue_many "
                f"({self.settings.max_enqueue_many})"
            )
        now = self.now()
        new = [self._new_task(item, now) for item in tasks]

        def insert_all(conn: sqlite3.Connection, batch: Batch) -> list[tuple[int, bool, str]]:
            outcomes: list[tuple[int, bool, str]] = []
            for task in new:
                earlier = [task_id for task_id, _, _ in outcomes]
                outcomes.append(self._insert(conn, batch, task, now, earlier))
            return outcomes

        outcomes = await self.store.write(insert_all, heavy=len(new) > HEAVY_ROWS)
        self._after_insert(
            [(t, state) for t, (_, created, state) in zip(new, outcomes, strict=True) if created]
        )
        return {
            "task_ids": [task_id for task_id, _, _ in outcomes],
            "created": [created for _, created, _ in outcomes],
        }

    def _after_insert(self, tasks: list[tuple[NewTask, str]]) -> None:
        """After the commit: remember the queues, wake claims, or the sweeper for later runs."""
        ready: Counter[str] = Counter()
        self.counters["enqueued"] += len(tasks)
        for task, state in tasks:
            self.known_queues.add(task.queue)
            if state == TaskState.QUEUED:
                ready[task.queue] += 1
            elif state == TaskState.SCHEDULED:
                self._schedule_wakeup(task.run_at)
        self.notify_ready(ready)

    # --- consuming ----------------------------------------------------------------------------

    async def claim(
        self,
        queues: list[str],
        max: int = 1,
        wait: float = 0.0,
        lease: float | None = None,
        *,
        session: Session,
    ) -> Result:
        """Lease up to ``max`` of the best ready tasks; long-poll up to ``wait`` for them."""
        plan = self._claim_plan(queues, max, wait, lease)
        return {"tasks": await self._claim(*plan, wait, session, first=None)}

    def _claim_plan(
        self, queues: list[str], limit: int, wait: float, lease: float | None
    ) -> tuple[list[str], int, float | None]:
        if wait > self.settings.max_wait:
            raise errors.BadRequest(
                f"wait: {wait} s is longer than max_wait ({self.settings.max_wait} s)"
            )
        return list(dict.fromkeys(queues)), min(limit, self.settings.max_claim), self._lease(lease)

    async def _claim(
        self,
        queues: list[str],
        limit: int,
        lease: float | None,
        wait: float,
        session: Session,
        first: list[Result] | None,
    ) -> list[Result]:
        """Claim, then long-poll while nothing came: ``queues``, ``limit`` and ``lease`` as
        :meth:`_claim_plan` checked them. ``first``: the result of a first attempt already
        made (inside a settle's transaction), or None to make it here."""
        # A long-poll is a real wait on the event loop (anyio's own monotonic clock), not a
        # stored deadline, so it is measured with time.monotonic rather than the broker's time.
        deadline = time.monotonic() + wait
        if first is not None and (first or wait <= 0):
            return first
        waiter = self.waiters.join(queues) if wait > 0 else None
        try:
            while True:
                if waiter is not None:
                    waiter.rearm()
                if first is not None:
                    tasks, first = first, None
                else:
                    # Shielded: a claim cancelled while its write is in a batch would still
                    # lease the tasks, and nobody would know. Cancellation lands after it,
                    # with the tasks in hand, so the caller can deliver or hand them back.
                    with anyio.CancelScope(shield=True):
                        tasks = await self._claim_once(queues, limit, lease, session.worker_id)
                remaining = deadline - time.monotonic()
                if tasks or waiter is None or remaining <= 0:
                    return tasks
                # A rate-limited queue wakes its claims when its bucket has a token again.
                remaining = min(remaining, self._next_token_in(queues))
                with anyio.move_on_after(remaining):
                    await waiter.event.wait()
        finally:
            if waiter is not None:
                self.waiters.leave(waiter)

    async def _claim_once(
        self, queues: list[str], limit: int, lease: float | None, worker_id: str | None
    ) -> list[Result]:
        paused = self.paused
        open_queues = [q for q in queues if q not in paused] if paused else queues
        if not open_queues or not self.store.may_have_ready(open_queues):
            # Nothing committed is ready there: an empty answer without a turn in the group
            # commit (an enqueue not committed yet is not acknowledged yet either).
            return []
        tasks = await self.store.write(
            lambda conn, batch: self._lease_tasks(
                conn, batch, open_queues, limit, lease, worker_id
            ),
            atomic=True,
            durable=False,  # a lease is not a durable reply (store.Store.write)
        )
        self._after_lease(tasks)
        return tasks

    def _after_lease(self, tasks: list[Result]) -> None:
        self.counters["claimed"] += len(tasks)
        if tasks:
            self._schedule_wakeup(min(t["lease_expires_at"] for t in tasks))

    def _lease_tasks(
        self,
        conn: sqlite3.Connection,
        batch: Batch,
        queues: list[str],
        limit: int,
        lease: float | None,
        worker_id: str | None,
    ) -> list[Result]:
        """Lease the best ``limit`` ready tasks across ``queues`` (one UPDATE)."""
        if worker_id is not None:
            row = conn.execute(self.sql.WORKER_FOR_CLAIM, (worker_id,)).fetchone()
            if row is not None:
                state, capacity, leased = row
                if state != WorkerCommand.RUNNING:
                    return []  # a quiet or terminating worker gets no new work
                limit = min(limit, capacity - leased)
                if limit <= 0:
                    return []
        now = self.now()
        params: dict[str, Any] = {"now": now, "lease": lease, "worker_id": worker_id}
        if not self.limited.isdisjoint(queues):
            rows = self._lease_limited(conn, batch, queues, limit, params)
        elif len(queues) == 1:
            params.update(queue=queues[0], limit=limit)
            rows = conn.execute(self.sql.LEASE_BEST_OF_QUEUE, params).fetchall()
        else:
            # Only queues with ready tasks (committed, or made ready earlier in this batch)
            # are read: a claim over 1,000 mostly empty queues costs what its few non-empty
            # ones cost, and does not hold the writer (and everyone's writes) meanwhile.
            ready = self.store.ready_queues | batch.readied()
            candidates = [
                tuple(row)
                for queue in ready.intersection(queues)
                for row in conn.execute(self.sql.READY_IN_QUEUE, (queue, limit))
            ]
            candidates.sort(key=lambda c: (-c[1], c[0]))
            if not candidates:
                return []
            params["ids"] = json.dumps([c[0] for c in candidates[:limit]])
            rows = conn.execute(self.sql.LEASE_IDS, params).fetchall()
        rows.sort(key=lambda r: (-r[3], r[0]))
        waited = self.latency.enqueue_to_claim.observe
        for row in rows:
            batch.moved(row[1], TaskState.QUEUED, TaskState.LEASED)
            waited(now - row[7])
        return [
            {
                "task_id": r[0],
                "queue": r[1],
                "payload": Raw(r[2]),
                "priority": r[3],
                "attempt": r[4],
                "lease_token": r[5],
                "lease_expires_at": r[6],
            }
            for r in rows
        ]

    # --- ending leases: one function each, shared by the single ops and settle ---------------

    def _current_lease(
        self, conn: sqlite3.Connection, task_id: int, token: str, now: float
    ) -> tuple[int, int, str, bool]:
        """(attempts, max_attempts, queue, cancel_requested) if ``token`` holds the task's
        lease now."""
        row = conn.execute(self.sql.LEASE_OF, (task_id,)).fetchone()
        if row is None:
            raise errors.NotFound(f"task {task_id} does not exist", task_id=task_id)
        state, current_token, expires_at, attempts, max_attempts, queue, cancel = row
        if state != TaskState.LEASED or current_token != token or expires_at <= now:
            raise errors.LeaseLost(
                f"task {task_id}: this lease is no longer held (task is {state})",
                task_id=task_id,
            )
        return attempts, max_attempts, queue, bool(cancel)

    def _cancel_row(
        self,
        conn: sqlite3.Connection,
        batch: Batch,
        task_id: int,
        token: str,
        error: str,
        lease: tuple[int, int, str, bool] | None = None,
    ) -> Returned:
        """End a lease as ``cancelled`` (settle outcome ``cancel``, or a fail or release of
        a task whose cancel was requested)."""
        now = self.now()
        if lease is None:
            lease = self._current_lease(conn, task_id, token, now)
        queue = lease[2]
        conn.execute(
            self.sql.CANCEL_LEASED, (error or "cancelled while running", now, now, task_id)
        )
        batch.moved(queue, TaskState.LEASED, TaskState.CANCELLED)
        batch.finished(task_id, TaskState.CANCELLED)
        return TaskState.CANCELLED, None, queue

    def _lease_lost_or_missing(
        self, conn: sqlite3.Connection, task_id: int
    ) -> errors.DurableTQError:
        if conn.execute(self.sql.TASK_EXISTS, (task_id,)).fetchone() is None:
            return errors.NotFound(f"task {task_id} does not exist", task_id=task_id)
        return errors.LeaseLost(f"task {task_id}: this lease is no longer held", task_id=task_id)

    def _ack_row(
        self, conn: sqlite3.Connection, batch: Batch, task_id: int, token: str, result: str | None
    ) -> Returned:
        now = self.now()
        row = conn.execute(self.sql.ACK, (result, now, now, task_id, token, now)).fetchone()
        if row is None:
            raise self._lease_lost_or_missing(conn, task_id)
        if row[1] is not None:  # None: leased before schema version 5
            self.latency.claim_to_ack.observe(now - row[1])
        batch.moved(row[0], TaskState.LEASED, TaskState.SUCCEEDED)
        batch.finished(task_id, TaskState.SUCCEEDED)
        return TaskState.SUCCEEDED, None, row[0]

    def _fail_row(
        self,
        conn: sqlite3.Connection,
        batch: Batch,
        task_id: int,
        token: str,
        error: str,
        retry: bool,
        delay: float | None,
    ) -> Returned:
        now = self.now()
        lease = self._current_lease(conn, task_id, token, now)
        attempts, max_attempts, queue, cancel_requested = lease
        if cancel_requested:
            return self._cancel_row(conn, batch, task_id, token, error, lease)
        if retry and attempts < max_attempts:
            if delay is None:
                delay = backoff_delay(attempts, self.settings)
            state = TaskState.SCHEDULED if delay > 0 else TaskState.QUEUED
            conn.execute(self.sql.RETRY, (state, now + delay, error, now, task_id))
            batch.moved(queue, TaskState.LEASED, state)
            return state, now + delay, queue
        conn.execute(self.sql.BURY, (error, now, now, task_id))
        batch.moved(queue, TaskState.LEASED, TaskState.DEAD)
        batch.finished(task_id, TaskState.DEAD)
        return TaskState.DEAD, None, queue

    def _release_row(
        self, conn: sqlite3.Connection, batch: Batch, task_id: int, token: str, delay: float | None
    ) -> Returned:
        now = self.now()
        lease = self._current_lease(conn, task_id, token, now)
        queue = lease[2]
        if lease[3]:  # its cancel was requested: it is not handed out again
            return self._cancel_row(conn, batch, task_id, token, "cancelled (released)", lease)
        delay = delay or 0.0
        state = TaskState.SCHEDULED if delay > 0 else TaskState.QUEUED
        conn.execute(self.sql.RELEASE, (state, now + delay, now, task_id))
        batch.moved(queue, TaskState.LEASED, state)
        return state, now + delay, queue

    def _after_return(self, returned: Sequence[Returned]) -> None:
        """Leased tasks went back or finished: wake claims, or the sweeper for run times."""
        ready: Counter[str] = Counter()
        for state, run_at, queue in returned:
            if state == TaskState.SCHEDULED and run_at is not None:
                self._schedule_wakeup(run_at)
            elif state == TaskState.QUEUED:
                ready[queue] += 1
            if queue in self.limited:  # a lease ended: room under max_leased or a key's limit
                ready[queue] += 1
        if ready:
            self.notify_ready(ready)

    async def ack(
        self,
        task_id: int,
        lease_token: str,
        result: Raw | str | None = None,
        *,
        session: Session | None = None,
    ) -> Result:
        text = result_text(result)
        returned = await self.store.write(
            lambda conn, batch: self._ack_row(conn, batch, task_id, lease_token, text),
            atomic=True,
        )
        self.counters["succeeded"] += 1
        self._after_return([returned])
        return {}

    async def fail(
        self,
        task_id: int,
        lease_token: str,
        error: str = "",
        retry: bool = True,
        delay: float | None = None,
        *,
        session: Session | None = None,
    ) -> Result:
        returned = await self.store.write(
            lambda conn, batch: self._fail_row(
                conn, batch, task_id, lease_token, error, retry, delay
            ),
            atomic=True,
        )
        self._after_return([returned])
        self._count_settled([(Outcome.FAIL, returned[0])])
        return {"state": returned[0], "run_at": returned[1]}

    async def release(
        self,
        task_id: int,
        lease_token: str,
        delay: float | None = None,
        *,
        session: Session | None = None,
    ) -> Result:
        returned = await self.store.write(
            lambda conn, batch: self._release_row(conn, batch, task_id, lease_token, delay),
            atomic=True,
        )
        self._after_return([returned])
        return {"state": returned[0], "run_at": returned[1]}

    async def settle(
        self,
        settles: Sequence[SettleArgs] = (),
        claim: ClaimArgs | None = None,
        *,
        session: Session,
    ) -> Result:
        """End many leases in one commit, each with its own result (a stale lease is
        ``lease_lost`` for that task alone); with ``claim``, lease the next tasks in the same
        transaction and long-poll for them like ``claim``. A registered worker's settle is
        also its heartbeat (``worker_state`` in the reply)."""
        if len(settles) > self.settings.max_claim * 100:
            raise errors.BadRequest(f"settles: {len(settles)} items is too many at once")
        items = [
            (item.task_id, item.lease_token, item.outcome, result_text(item.result), item)
            for item in settles
        ]
        plan = None
        if claim is not None:
            plan = self._claim_plan(claim.queues, claim.max, claim.wait, claim.lease)
        worker_id = session.worker_id

        def write(conn: sqlite3.Connection, batch: Batch) -> _Settled:
            settled = _Settled()
            for task_id, _token, outcome, text, item in items:
                try:
                    returned = self._settle_row(conn, batch, outcome, text, item)
                except errors.DurableTQError as exc:  # raised before this item wrote anything
                    settled.results.append(
                        {"task_id": task_id, "ok": False, "error": exc.to_wire()}
                    )
                    continue
                settled.returned.append(returned)
                settled.results.append(
                    {"task_id": task_id, "ok": True, "state": returned[0], "run_at": returned[1]}
                )
            if worker_id is not None:
                row = conn.execute(self.sql.HEARTBEAT, (self.now(), worker_id)).fetchone()
                settled.worker_state = None if row is None else row[0]
                settled.cancel = self._cancels_for(conn, worker_id)
            if plan is not None:
                queues, limit, lease = plan
                open_queues = [q for q in queues if q not in self.paused]
                if open_queues:
                    settled.tasks = self._lease_tasks(
                        conn, batch, open_queues, limit, lease, worker_id
                    )
            return settled

        # Every item is one fenced UPDATE that raises before writing: no savepoints needed.
        # Shielded, like a claim's write: the tasks it leases must come back to the caller.
        with anyio.CancelScope(shield=True):
            settled = await self.store.write(
                write, atomic=True, heavy=len(items) > HEAVY_ROWS, durable=bool(items)
            )
        self._after_return(settled.returned)
        self._after_lease(settled.tasks)
        self._count_settled(
            [(i.outcome, r.get("state")) for i, r in zip(settles, settled.results, strict=True)]
        )
        reply: Result = {"results": settled.results}
        if settled.worker_state is not None:
            reply["worker_state"] = settled.worker_state
        if settled.cancel:
            reply["cancel"] = settled.cancel
        if plan is not None and claim is not None:
            reply["tasks"] = await self._claim(*plan, claim.wait, session, first=settled.tasks)
        return reply

    def _settle_row(
        self,
        conn: sqlite3.Connection,
        batch: Batch,
        outcome: str,
        text: str | None,
        item: SettleArgs,
    ) -> Returned:
        task_id, token = item.task_id, item.lease_token
        if outcome == Outcome.ACK:
            return self._ack_row(conn, batch, task_id, token, text)
        if outcome == Outcome.FAIL:
            return self._fail_row(conn, batch, task_id, token, item.error, item.retry, item.delay)
        if outcome == Outcome.CANCEL:
            return self._cancel_row(conn, batch, task_id, token, item.error)
        return self._release_row(conn, batch, task_id, token, item.delay)

    async def extend(
        self,
        task_id: int,
        lease_token: str,
        lease: float,
        *,
        session: Session | None = None,
    ) -> Result:
        seconds = self._lease(lease)
        assert seconds is not None

        def extend(conn: sqlite3.Connection, batch: Batch) -> Result:
            now = self.now()
            expires_at = now + seconds
            row = conn.execute(
                self.sql.EXTEND, (expires_at, now, task_id, lease_token, now)
            ).fetchone()
            if row is None:
                raise self._lease_lost_or_missing(conn, task_id)
            return {"lease_expires_at": expires_at, "cancel": bool(row[0])}

        return await self.store.write(extend, atomic=True, durable=False)

    async def progress(
        self,
        task_id: int,
        lease_token: str,
        fraction: float,
        message: str | None = None,
        *,
        session: Session | None = None,
    ) -> Result:
        """Record a running task's progress; fenced like extend, not fsynced (a lost progress
        report costs nothing). The reply says whether the task's cancel was requested."""

        def record(conn: sqlite3.Connection, batch: Batch) -> Result:
            now = self.now()
            row = conn.execute(
                self.sql.PROGRESS, (fraction, message, now, task_id, lease_token, now)
            ).fetchone()
            if row is None:
                raise self._lease_lost_or_missing(conn, task_id)
            return {"cancel": bool(row[0])}

        return await self.store.write(record, atomic=True, durable=False)

    def _cancels_for(self, conn: sqlite3.Connection, worker_id: str) -> list[int]:
        return [task_id for (task_id,) in conn.execute(self.sql.CANCELS_FOR_WORKER, (worker_id,))]

    # --- workers ------------------------------------------------------------------------------

    async def register_worker(self, spec: schema.WorkerSpec) -> None:
        now = self.now()
        params = {
            "id": spec.id,
            "queues": None if spec.queues is None else json.dumps(spec.queues),
            "concurrency": spec.concurrency,
            "prefetch": spec.prefetch,
            "meta": dumps_value(spec.meta),
            "now": now,
        }
        await self.store.write(
            lambda conn, batch: conn.execute(self.sql.REGISTER_WORKER, params),
            atomic=True,
            durable=False,
        )
        log.info(
            "worker %s registered (concurrency %d, prefetch %d)",
            spec.id,
            spec.concurrency,
            spec.prefetch,
        )

    async def heartbeat(self, *, session: Session) -> Result:
        worker_id = session.worker_id
        if worker_id is None:
            raise errors.Conflict("heartbeat needs a worker registered in hello")

        def beat(conn: sqlite3.Connection, batch: Batch) -> Result:
            row = conn.execute(self.sql.HEARTBEAT, (self.now(), worker_id)).fetchone()
            if row is None:
                raise errors.NotFound(f"worker {worker_id} is not registered")
            reply: Result = {"state": str(row[0])}
            cancel = self._cancels_for(conn, worker_id)
            if cancel:
                reply["cancel"] = cancel
            return reply

        return await self.store.write(beat, atomic=True, durable=False)

    async def worker_state(
        self, worker_id: str, state: str, *, session: Session | None = None
    ) -> Result:
        def set_state(conn: sqlite3.Connection, batch: Batch) -> None:
            cursor = conn.execute(self.sql.SET_WORKER_STATE, (state, worker_id))
            if cursor.rowcount == 0:
                raise errors.NotFound(f"worker {worker_id} does not exist")

        await self.store.write(set_state, atomic=True)
        return {}

    async def workers(self, *, session: Session | None = None) -> Result:
        alive_after = self.now() - self.settings.worker_timeout

        def read(conn: sqlite3.Connection) -> list[Result]:
            leased = dict(conn.execute(self.sql.LEASES_BY_WORKER).fetchall())
            return [
                {
                    "id": row[0],
                    "queues": None if row[1] is None else json.loads(row[1]),
                    "concurrency": row[2],
                    "state": row[3],
                    "last_heartbeat": row[4],
                    "leased": leased.get(row[0], 0),
                    "connected": bool(row[5]),
                    "alive": row[4] > alive_after,
                    "meta": Raw(row[6]),
                    "registered_at": row[7],
                    "prefetch": row[8],
                }
                for row in conn.execute(self.sql.LIST_WORKERS)
            ]

        return {"workers": await self.store.read(read)}

    # --- reading ------------------------------------------------------------------------------

    async def get(self, task_id: int, *, session: Session | None = None) -> Result:
        row = await self.store.read(
            lambda conn: conn.execute(self.sql.GET_TASK, (task_id,)).fetchone()
        )
        if row is None:
            raise errors.NotFound(f"task {task_id} does not exist", task_id=task_id)
        return {"task": task_from_row(row)}

    async def list(
        self,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 100,
        after_id: int | None = None,
        *,
        session: Session | None = None,
    ) -> Result:
        return await self.store.read(
            lambda conn: read_task_page(conn, queue, state, limit, after_id, self.sql)
        )

    async def stats(self, *, session: Session | None = None) -> Result:
        timeout = self.settings.worker_timeout
        result = await self.store.read(lambda conn: read_stats(conn, self.now(), timeout, self.sql))
        for name, queue_limits in self.limits.items():  # additive: each limited queue's limits
            if name in result["queues"]:
                result["queues"][name]["limits"] = queue_limits.to_wire()
        result["connections"] = self.connections
        # Optional (PROTOCOL.md allows additions): the group-commit writer's counters.
        result["store"] = dataclasses.asdict(self.store.stats)
        return result

    def sample_throughput(self) -> None:
        """Keep a snapshot of the counters when the last is ``interval`` old (the sweeper
        calls this every time it wakes)."""
        self.throughput_ring.sample(self.now(), self.counters)

    async def throughput(self, *, session: Session | None = None) -> Result:
        now = self.now()
        ring = self.throughput_ring
        ring.sample(now, self.counters)
        return {"interval": ring.interval, "window": ring.window, "samples": ring.rates(now)}

    # --- results: waiting for a task, dependents, expiry ---------------------------------------

    async def wait(
        self,
        task_id: int,
        timeout: float = 30.0,  # noqa: ASYNC109 (the request's field, bounded by max_wait)
        *,
        session: Session | None = None,
    ) -> Result:
        """The task once it is finished, or as it is after ``timeout`` (``done`` false).

        Woken by the commit that finishes the task (``_after_finish``), never by polling. The
        waiter is registered before the task is read: a finish committed between the read
        and the sleep still sets its event.
        """
        if timeout > self.settings.max_wait:
            raise errors.BadRequest(
                f"timeout: {timeout} s is longer than max_wait ({self.settings.max_wait} s)"
            )
        if self._waits_ended:
            raise errors.ShuttingDown("the broker is stopping")
        event = anyio.Event()
        waiters = self.task_waiters.setdefault(task_id, set())
        waiters.add(event)
        try:
            task = (await self.get(task_id))["task"]
            if task["state"] not in schema.FINISHED_STATES and timeout > 0:
                with anyio.move_on_after(timeout):
                    await event.wait()
                if self._waits_ended:
                    raise errors.ShuttingDown("the broker is stopping")
                if event.is_set():
                    task = (await self.get(task_id))["task"]
        finally:
            waiters.discard(event)
            if not waiters and self.task_waiters.get(task_id) is waiters:
                del self.task_waiters[task_id]
        return {"task": task, "done": task["state"] in schema.FINISHED_STATES}

    def end_waits(self) -> None:
        """The broker is stopping: every parked ``wait`` answers ``shutting_down`` now."""
        self._waits_ended = True
        for waiters in self.task_waiters.values():
            for event in waiters:
                event.set()

    def _resolve_finished(self, conn: sqlite3.Connection, batch: Batch) -> None:
        """Before COMMIT, in the transaction that finished tasks: release the dependents
        whose last parent succeeded, cancel those of a parent that failed (and theirs), and
        set each finished task's ``expires_at``."""
        now = self.now()
        work = list(batch.done)
        released: list[tuple[str, str, float]] = batch.memo.setdefault("released", [])
        expiring: list[int] = []
        i = 0
        while i < len(work):
            parent_id, state = work[i]
            i += 1
            if state == DELETED:
                conn.execute(self.sql.FORGET_DEPS_OF_CHILD, (parent_id,))
            else:
                expiring.append(parent_id)
            for child, queue, on_failure in conn.execute(
                self.sql.CHILDREN_OF, (parent_id,)
            ).fetchall():
                if state == TaskState.SUCCEEDED or on_failure == schema.ParentFailure.RUN:
                    left = conn.execute(self.sql.PARENT_DONE, (child,)).fetchone()
                    if left is None or left[0] > 0:
                        continue
                    row = conn.execute(self.sql.RELEASE_CHILD, {"now": now, "id": child}).fetchone()
                    batch.moved(queue, TaskState.WAITING, row[0])
                    released.append((queue, row[0], row[1]))
                else:
                    why = "was deleted" if state == DELETED else f"ended {state}"
                    conn.execute(
                        self.sql.CANCEL_CHILD,
                        {"error": f"parent task {parent_id} {why}", "now": now, "id": child},
                    )
                    batch.moved(queue, TaskState.WAITING, TaskState.CANCELLED)
                    batch.finished(child, TaskState.CANCELLED)
                    work.append((child, TaskState.CANCELLED))
                conn.execute(self.sql.FORGET_DEPS_OF_CHILD, (child,))
        if expiring:
            retention = self.settings.retention if self.settings.retention > 0 else None
            conn.execute(self.sql.SET_EXPIRY, {"ids": json.dumps(expiring), "retention": retention})

    def _after_finish(self, batch: Batch) -> None:
        """After the COMMIT that finished tasks: count the deaths (whatever buried them: a
        fail, the sweeper, a disconnect), wake their waits, and claims for the dependents that
        became ready."""
        waiters = self.task_waiters
        for task_id, state in batch.done:
            if state == TaskState.DEAD:
                self.counters["dead"] += 1
            events = waiters.get(task_id)
            if events:
                for event in events:
                    event.set()
        ready: Counter[str] = Counter()
        for queue, state, run_at in batch.memo.get("released", ()):
            if state == TaskState.QUEUED:
                ready[queue] += 1
            else:
                self._schedule_wakeup(run_at)
        if ready:
            self.notify_ready(ready)

    async def queue_settings(
        self,
        queue: str,
        result_ttl: float | msgspec.UnsetType | None = msgspec.UNSET,
        *,
        session: Session | None = None,
    ) -> Result:
        """Set a queue's defaults (only ``result_ttl`` so far); returns them all."""

        def write(conn: sqlite3.Connection, batch: Batch) -> Result:
            if result_ttl is not msgspec.UNSET:
                conn.execute(self.sql.SET_QUEUE_RESULT_TTL, (queue, result_ttl))
            else:
                conn.execute(self.sql.INSERT_QUEUE, (queue,))
            row = conn.execute(self.sql.QUEUE_SETTINGS, (queue,)).fetchone()
            return {"queue": queue, "result_ttl": row[0]}

        settings = await self.store.write(write)
        self.known_queues.add(queue)
        return settings

    # --- operating ----------------------------------------------------------------------------

    async def cancel(self, task_id: int, *, session: Session | None = None) -> Result:
        """Cancel a task. A leased one is marked (``cancel_requested``, durably) and its
        worker is told to stop it: the reply is then ``cancelling``."""

        def cancel(conn: sqlite3.Connection, batch: Batch) -> str:
            row = conn.execute(self.sql.TASK_STATE, (task_id,)).fetchone()
            if row is None:
                raise errors.NotFound(f"task {task_id} does not exist", task_id=task_id)
            state = row[0]
            now = self.now()
            if state == TaskState.SUCCEEDED:
                raise errors.Conflict(
                    f"task {task_id} is {state} and cannot be cancelled", state=state
                )
            if state == TaskState.LEASED:
                conn.execute(self.sql.REQUEST_CANCEL, (now, task_id))
                return "cancelling"
            if state != TaskState.CANCELLED:
                conn.execute(self.sql.CANCEL, (now, now, task_id))
                if state == TaskState.WAITING:
                    conn.execute(self.sql.FORGET_DEPS_OF_CHILD, (task_id,))
                batch.moved(row[1], state, TaskState.CANCELLED)
                batch.finished(task_id, TaskState.CANCELLED)
            return TaskState.CANCELLED.value

        # Not atomic: a waiting task's cancel writes two statements.
        return {"state": await self.store.write(cancel)}

    async def requeue(
        self,
        task_ids: Sequence[int] | None = None,
        queue: str | None = None,
        state: str | None = None,
        *,
        session: Session | None = None,
    ) -> Result:
        now = self.now()
        steps: list[tuple[str, dict[str, object]]]
        if task_ids is not None:
            sql = self.sql.REQUEUE_IDS
            # One statement per old state: queue_counts needs to know what each row was.
            ids = json.dumps(list(task_ids))
            steps = [
                (str(old), {"now": now, "ids": ids, "state": old})
                for old in (TaskState.DEAD, TaskState.CANCELLED)
            ]
        else:
            if queue is None or state is None:
                raise errors.BadRequest("give task_ids, or queue and state")
            sql = self.sql.REQUEUE_QUEUE
            steps = [(state, {"now": now, "queue": queue, "state": state})]

        def skip_reason(conn: sqlite3.Connection, task_id: int) -> str:
            row = conn.execute(self.sql.REQUEUE_SKIPPED_TASK, (task_id,)).fetchone()
            if row is None:
                return "no such task"
            queue, state, unique_key = row
            if state not in (TaskState.DEAD, TaskState.CANCELLED):
                return f"task is {state}; only dead or cancelled tasks move"
            holder = conn.execute(self.sql.FIND_LIVE_UNIQUE, (queue, unique_key)).fetchone()
            if holder is not None:
                return f"unique_key '{unique_key}' is held by live task {holder[0]}"
            return "not requeued"

        def requeue(conn: sqlite3.Connection, batch: Batch) -> tuple[Counter[str], list[Result]]:
            ready: Counter[str] = Counter()
            moved: set[int] = set()
            for old_state, params in steps:
                for name, task_id in conn.execute(sql, params):
                    batch.moved(name, old_state, TaskState.QUEUED)
                    ready[name] += 1
                    moved.add(task_id)
            # UPDATE OR IGNORE leaves a task whose unique_key a live task holds: say so.
            if task_ids is not None:
                left = list(dict.fromkeys(i for i in task_ids if i not in moved))
            else:
                rows = conn.execute(self.sql.REQUEUE_LEFT_IN_QUEUE, (queue, state))
                left = [task_id for (task_id,) in rows]
            skipped = [{"task_id": i, "reason": skip_reason(conn, i)} for i in left]
            return ready, skipped

        ready, skipped = await self.store.write(requeue, heavy=True)
        self.notify_ready(ready)
        return {"count": sum(ready.values()), "skipped": skipped}

    async def pause(self, queue: str, *, session: Session | None = None) -> Result:
        await self._set_paused(queue, True)
        return {}

    async def resume(self, queue: str, *, session: Session | None = None) -> Result:
        await self._set_paused(queue, False)
        self.waiters.notify_all(queue)
        return {}

    async def _set_paused(self, queue: str, paused: bool) -> None:
        await self.store.write(
            queue_change(self.sql.SET_PAUSED, (queue, int(paused)), queue),
            atomic=True,
        )
        if paused:
            self.paused.add(queue)
        else:
            self.paused.discard(queue)
        log.info("queue %s %s", queue, "paused" if paused else "resumed")

    async def purge(
        self, queue: str, state: str | None = None, *, session: Session | None = None
    ) -> Result:
        sql, params = self.sql.PURGE_QUEUE, [queue]
        if state is not None:
            if state == TaskState.LEASED:
                raise errors.BadRequest("state: purge never touches leased tasks")
            sql, params = self.sql.PURGE_QUEUE_STATE, [queue, str(state)]

        def purge(conn: sqlite3.Connection, batch: Batch) -> int:
            states: Counter[str] = Counter()
            for old, task_id in conn.execute(sql, params).fetchall():
                states[old] += 1
                batch.finished(task_id, DELETED)
            for old, n in states.items():
                batch.moved(queue, old, None, n)
            return sum(states.values())

        count = await self.store.write(purge, heavy=True)
        log.info("purged %d tasks of queue %s", count, queue)
        return {"count": count}

    # --- schedules (durable_tq.core.scheduler) ----------------------------------------------------

    async def schedule_upsert(
        self,
        name: str,
        queue: str,
        cron: str | None = None,
        tz: str | None = None,
        every: float | None = None,
        payload: Raw | str = "null",
        priority: int = 0,
        missed: str = "latest",
        *,
        session: Session | None = None,
    ) -> Result:
        spec = scheduler.spec_from_args(name, queue, cron, tz, every, payload, priority, missed)
        return await scheduler.schedule_upsert(self, spec)

    async def schedule_list(self, *, session: Session | None = None) -> Result:
        return await scheduler.schedule_list(self)

    async def schedule_remove(self, name: str, *, session: Session | None = None) -> Result:
        return await scheduler.schedule_remove(self, name)

    async def schedule_pause(self, name: str, *, session: Session | None = None) -> Result:
        return await scheduler.schedule_set_paused(self, name, True)

    async def schedule_resume(self, name: str, *, session: Session | None = None) -> Result:
        return await scheduler.schedule_set_paused(self, name, False)

    # --- queue limits (durable_tq.core.limits) ----------------------------------------------------

    def _set_limits(self, queue: str, queue_limits: limits.QueueLimits) -> None:
        old = self.limits.get(queue)
        self.limits[queue] = queue_limits
        if queue_limits.limited:
            self.limited.add(queue)
        else:
            self.limited.discard(queue)
        if queue_limits.rate is None:
            self.buckets.pop(queue, None)
        elif old is None or (old.rate, old.burst) != (queue_limits.rate, queue_limits.burst):
            self.buckets[queue] = limits.TokenBucket(
                queue_limits.rate, queue_limits.burst, time.monotonic()
            )

    def _next_token_in(self, queues: Sequence[str]) -> float:
        """Seconds until a rate-limited queue among ``queues`` has a token (inf: none is)."""
        if not self.buckets:
            return float("inf")
        now = time.monotonic()
        waits = [self.buckets[q].next_token_in(now) for q in queues if q in self.buckets]
        # Limits other than the rate free up when a lease ends (_after_return wakes us); a
        # second's re-check covers leases that end in the sweeper.
        if any(q in self.limited for q in queues):
            waits.append(1.0)
        return max(min(waits, default=float("inf")), 0.001)

    def _lease_limited(
        self,
        conn: sqlite3.Connection,
        batch: Batch,
        queues: Sequence[str],
        limit: int,
        params: dict[str, Any],
    ) -> Any:
        """Lease across ``queues`` when some have limits: the best tasks each queue lets out."""
        now = time.monotonic()
        buckets = self.buckets
        rated = [q for q in queues if q in buckets] if self.sql.LOCK_BUCKETS is not None else []
        if rated:  # shared by several brokers: the buckets are in the queues' rows
            buckets, now = limits.lock_buckets(conn, rated, self.sql)
        ids = limits.pick_across(conn, batch, queues, limit, self.limits, buckets, now, self.sql)
        rows = []
        if ids:
            params["ids"] = json.dumps(ids)
            rows = conn.execute(self.sql.LEASE_IDS, params).fetchall()
            limits.take_tokens(buckets, [r[1] for r in rows], now)
        if rated:
            limits.save_buckets(conn, buckets, {r[1] for r in rows}, self.sql)
            self._mirror_buckets(buckets)
        return rows

    def _mirror_buckets(self, stored: Mapping[str, limits.TokenBucket]) -> None:
        """Set the memory buckets to the stored ones as just seen (other brokers spend from
        them too), so a parked claim waits until a token is due rather than spinning."""
        moment = time.monotonic()
        for queue, bucket in stored.items():
            mirror = self.buckets.get(queue)
            if mirror is not None:
                mirror.tokens, mirror.updated_at = bucket.tokens, moment

    async def set_queue_limits(
        self,
        queue: str,
        rate: float | None = None,
        burst: int | None = None,
        max_leased: int | None = None,
        key_concurrency: int | None = None,
        *,
        session: Session | None = None,
    ) -> Result:
        new = self.limits.get(queue, limits.QueueLimits()).updated(
            rate=rate, burst=burst, max_leased=max_leased, key_concurrency=key_concurrency
        )
        params = {"queue": queue, **new.to_wire()}
        await self.store.write(queue_change(self.sql.SET_QUEUE_LIMITS, params, queue), atomic=True)
        self.known_queues.add(queue)
        self._set_limits(queue, new)
        self.waiters.notify_all(queue)  # looser limits take effect at once
        log.info("queue %s limits: %s", queue, new)
        return await self.queue_info(queue)

    async def queue_info(self, queue: str, *, session: Session | None = None) -> Result:
        def read(conn: sqlite3.Connection) -> tuple[Any, Any, Any]:
            row = conn.execute(self.sql.QUEUE_LIMITS_OF, (queue,)).fetchone()
            counts = conn.execute(self.sql.QUEUE_COUNTS_OF, (queue,)).fetchall()
            stored = None  # a bucket shared by several brokers, kept in the row
            if self.sql.BUCKET_OF is not None:
                stored = conn.execute(self.sql.BUCKET_OF, (queue,)).fetchone()
            return row, counts, stored

        row, counts, stored = await self.store.read(read)
        if row is None and not counts:
            raise errors.NotFound(f"queue {queue!r} does not exist")
        bucket = self.buckets.get(queue)
        tokens = None if bucket is None else bucket.available(time.monotonic())
        if stored is not None:
            tokens = limits.bucket_of_row(*stored[1:]).available(stored[5])
        queue_limits = self.limits.get(queue, limits.QueueLimits())
        return {
            "queue": queue,
            "paused": queue in self.paused,
            "limits": queue_limits.to_wire(),
            "counts": {state.value: 0 for state in TaskState} | dict(counts),
            "tokens": tokens,
        }

    def _count_settled(self, outcomes: Sequence[tuple[str, str | None]]) -> None:
        """Count ended leases by (outcome, new state or None when refused), for /metrics."""
        for outcome, state in outcomes:
            if state is None or outcome == Outcome.RELEASE:
                continue
            if outcome == Outcome.ACK:
                self.counters["succeeded"] += 1
                continue
            self.counters["failed"] += 1


def queue_change(sql: str, params: Any, queue: str) -> Any:
    """A write of a queue's settings; the store tells other brokers of it after the commit
    (``memo["queue_changed"]``; only a shared store reads it)."""

    def write(conn: sqlite3.Connection, batch: Batch) -> None:
        conn.execute(sql, params)
        batch.memo.setdefault("queue_changed", set()).add(queue)

    return write


#: ``Batch.finished`` state of a task whose row was deleted (purge, expiry).
DELETED = "deleted"


#: What ending a lease did: (new state, run_at or None, queue).
Returned = tuple[str, float | None, str]


class _Settled:
    """What a settle's transaction did."""

    __slots__ = ("cancel", "results", "returned", "tasks", "worker_state")

    def __init__(self) -> None:
        self.cancel: list[int] = []
        self.results: list[Result] = []
        self.returned: list[Returned] = []
        self.tasks: list[Result] = []
        self.worker_state: str | None = None
