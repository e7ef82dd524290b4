"""Queue semantics over the store: every operation of PROTOCOL.md except the wire itself."""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from msgspec import Raw

from durable_tq import errors, queries
from durable_tq.config import Settings
from durable_tq.store import Batch, Store
from durable_tq.waiters import Waiters
from durable_tq.wire import schema
from durable_tq.wire.codec import dumps_value
from durable_tq.wire.schema import Outcome, TaskState, WorkerCommand

log = logging.getLogger("durable_tq.broker")

Result = dict[str, Any]

#: The states counted against max_queue_depth.
WAITING = (TaskState.QUEUED, TaskState.SCHEDULED)
#: An enqueue_many of more tasks than this is a heavy write (runs on the database thread).
HEAVY_ROWS = 200


@dataclass
class Session:
    """What the broker knows of one client connection."""

    greeted: bool = False
    worker_id: str | None = None
    client: str | None = None


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


def backoff_delay(attempt: int, settings: Settings) -> float:
    """Exponential backoff with jitter: base * 2^(attempt-1), capped, grown by up to jitter."""
    exponent = min(max(attempt - 1, 0), 62)
    delay = min(settings.backoff_cap, settings.backoff_base * (2.0**exponent))
    return min(settings.backoff_cap, delay * (1.0 + random.uniform(0.0, settings.backoff_jitter)))


def task_from_row(row: sqlite3.Row | tuple[Any, ...]) -> Result:
    """The wire ``task`` object from a row of ``queries.TASK_COLUMNS``; payload and result
    stay the JSON text they were stored as."""
    return {
        "task_id": row[0],
        "queue": row[1],
        "state": row[2],
        "payload": Raw(row[3]),
        "priority": row[4],
        "attempts": row[5],
        "max_attempts": row[6],
        "run_at": row[7],
        "created_at": row[8],
        "updated_at": row[9],
        "lease_expires_at": row[10],
        "worker_id": row[11],
        "last_error": row[12],
        "result": None if row[13] is None else Raw(row[13]),
        "unique_key": row[14],
        "finished_at": row[15],
    }


# --- reads shared with the offline CLI (``--db``): one definition of each answer ----------


def read_task_page(
    conn: sqlite3.Connection,
    queue: str | None,
    state: str | None,
    limit: int,
    after_id: int | None,
) -> Result:
    """One page of the ``list`` reply: tasks by id after ``after_id``, optionally filtered."""
    clauses: list[str] = ["id > ?"]
    params: list[Any] = [after_id or 0]
    if queue is not None:
        clauses.append("queue = ?")
        params.append(queue)
    if state is not None:
        clauses.append("state = ?")
        params.append(state)
    sql = (
        f"SELECT {queries.TASK_COLUMNS} FROM tasks WHERE {' AND '.join(clauses)}"
        " ORDER BY id LIMIT ?"
    )
    params.append(limit + 1)
    rows = conn.execute(sql, params).fetchall()
    page = rows[:limit]
    next_after_id = page[-1][0] if len(rows) > limit else None
    return {"tasks": [task_from_row(r) for r in page], "next_after_id": next_after_id}


def read_stats(conn: sqlite3.Connection, now: float, worker_timeout: float) -> Result:
    """The ``queues`` and ``workers`` fields of the ``stats`` reply."""
    queues: dict[str, Result] = {}

    def entry(name: str) -> Result:
        if name not in queues:
            queues[name] = {state.value: 0 for state in TaskState}
            queues[name].update(paused=False, oldest_queued_age=None)
        return queues[name]

    for name, paused in conn.execute(queries.QUEUES):
        entry(name)["paused"] = bool(paused)
    for name, state, n in conn.execute(queries.QUEUE_COUNTS):
        entry(name)[state] = n
    for name, counts in queues.items():
        if counts[TaskState.QUEUED]:
            oldest = conn.execute(queries.OLDEST_QUEUED, (name,)).fetchone()[0]
            if oldest is not None:
                counts["oldest_queued_age"] = max(0.0, now - oldest)
    workers = conn.execute(queries.LIVE_WORKERS, (now - worker_timeout,)).fetchone()[0]
    return {"queues": queues, "workers": workers}


class Broker:
    """The queue: enqueue, claim, ack, fail and the rest, durable through :class:`Store`.

    Use ``async with Broker(settings) as broker``. Every write goes through the store's group
    commit; a method returns only after its change is committed. Methods take plain arguments
    named as the request fields of their op (``wire.ops``), so every front end calls them the
    same way; ``session`` is the connection's.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings)
        self.waiters = Waiters()
        self.paused: set[str] = set()
        #: Queues that have a row in ``queues``: new ones get one on their first enqueue.
        self.known_queues: set[str] = set()
        self.connections = 0
        self.started_at = time.time()
        #: Earliest moment something timed (a scheduled task, a lease) falls due; the sweeper
        #: watches it. Writes lower it; ``due_changed`` wakes the sweeper when they do.
        self.next_due: float = float("inf")
        self.due_changed = anyio.Event()
        self._worker_sessions: Counter[str] = Counter()
        #: Tasks enqueued, claimed, succeeded, failed, dead since start (for /metrics).
        self.counters: Counter[str] = Counter()

    async def __aenter__(self) -> Broker:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        await self.store.open()
        queues = await self.store.read(lambda conn: conn.execute(queries.QUEUES).fetchall())
        self.known_queues = {name for name, _ in queues}
        self.paused = {name for name, paused in queues if paused}

    async def close(self) -> None:
        await self.store.close()

    def _schedule_wakeup(self, moment: float) -> None:
        if moment < self.next_due:
            self.next_due = moment
            self.due_changed.set()

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
        if self.settings.auth_tokens and not self._token_ok(token):
            raise errors.Unauthorized("missing or wrong token")
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

    def _token_ok(self, token: str | None) -> bool:
        # surrogatepass: a token with a lone surrogate is simply wrong, not a crash.
        given = (token or "").encode("utf-8", "surrogatepass")
        # Compare against every token, always, so timing says nothing about which matched.
        matches = [hmac.compare_digest(given, t.encode()) for t in self.settings.auth_tokens]
        return token is not None and any(matches)

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
        now = time.time()

        def gone(conn: sqlite3.Connection, batch: Batch) -> Counter[str]:
            conn.execute(queries.WORKER_GONE, (worker_id,))
            if not release:
                return Counter()
            rows = conn.execute(
                queries.RELEASE_WORKER_LEASES, {"now": now, "worker_id": worker_id}
            ).fetchall()
            for queue, state in rows:
                batch.moved(queue, TaskState.LEASED, state)
            return Counter(queue for queue, state in rows if state == TaskState.QUEUED)

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
        )

    def _lease(self, lease: float | None) -> float | None:
        if lease is not None and lease > self.settings.max_lease:
            raise errors.BadRequest(
                f"lease: {lease} s is longer than max_lease ({self.settings.max_lease} s)"
            )
        return lease

    def _insert(
        self, conn: sqlite3.Connection, batch: Batch, task: NewTask, now: float
    ) -> tuple[int, bool]:
        """Insert one task, or find its live twin by unique_key."""
        if task.unique_key is not None:
            row = conn.execute(queries.FIND_LIVE_UNIQUE, (task.queue, task.unique_key)).fetchone()
            if row is not None:
                return row[0], False
        limit = self.settings.max_queue_depth
        if limit:
            # Read once per transaction, then kept exact by the batch's own counts: a refused
            # or failed write's tasks are not counted (their moves are dropped with it).
            key = ("depth", task.queue)
            base = batch.memo.get(key)
            if base is None:
                base = batch.memo[key] = conn.execute(
                    queries.QUEUE_DEPTH, (task.queue,)
                ).fetchone()[0]
            depth = (
                base
                + batch.net(task.queue, TaskState.QUEUED)
                + batch.net(task.queue, TaskState.SCHEDULED)
            )
            if depth >= limit:
                # Say what waits without this request's own tasks (an enqueue_many refused
                # midway would otherwise count its first items).
                waiting = depth - batch.request_net(task.queue, *WAITING)
                raise errors.Busy(
                    f"queue {task.queue!r} holds {waiting} waiting tasks "
                    f"(max_queue_depth {limit})",
                    retry_after=1.0,
                )
        cursor = conn.execute(
            queries.INSERT_TASK,
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
            ),
        )
        if task.queue not in self.known_queues:  # noted as known once committed
            conn.execute(queries.INSERT_QUEUE, (task.queue,))
        batch.moved(task.queue, None, task.state)
        assert cursor.lastrowid is not None
        return cursor.lastrowid, True

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
        *,
        session: Session | None = None,
    ) -> Result:
        now = time.time()
        spec = TaskSpec(queue, payload, priority, delay, run_at, max_attempts, lease, unique_key)
        task = self._new_task(spec, now)
        # Atomic (no savepoint): everything that can refuse it runs before its INSERT; only a
        # new queue adds a second statement.
        task_id, created = await self.store.write(
            lambda conn, batch: self._insert(conn, batch, task, now),
            atomic=task.queue in self.known_queues,
        )
        if created:
            self._after_insert([task])
        return {"task_id": task_id, "created": created}

    async def enqueue_many(
        self, tasks: Sequence[TaskArgs], *, session: Session | None = None
    ) -> Result:
        if len(tasks) > self.settings.max_enqueue_many:
            raise errors.BadRequest(
                f"tasks: {len(tasks)} tasks is more than max_enqueue_many "
                f"({self.settings.max_enqueue_many})"
            )
        now = time.time()
        new = [self._new_task(item, now) for item in tasks]

        def insert_all(conn: sqlite3.Connection, batch: Batch) -> list[tuple[int, bool]]:
            return [self._insert(conn, batch, task, now) for task in new]

        outcomes = await self.store.write(insert_all, heavy=len(new) > HEAVY_ROWS)
        self._after_insert([t for t, (_, created) in zip(new, outcomes, strict=True) if created])
        return {
            "task_ids": [task_id for task_id, _ in outcomes],
            "created": [created for _, created in outcomes],
        }

    def _after_insert(self, tasks: list[NewTask]) -> None:
        """After the commit: remember the queues, wake claims, or the sweeper for later runs."""
        ready: Counter[str] = Counter()
        self.counters["enqueued"] += len(tasks)
        for task in tasks:
            self.known_queues.add(task.queue)
            if task.state == TaskState.QUEUED:
                ready[task.queue] += 1
            else:
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
        return {"tasks": await self._claim(queues, max, wait, lease, session, first=None)}

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
        wait: float,
        lease: float | None,
        session: Session,
        first: list[Result] | None,
    ) -> list[Result]:
        """Claim, then long-poll while nothing came. ``first``: the result of a first attempt
        already made (inside a settle's transaction), or None to make it here."""
        queues, limit, lease = self._claim_plan(queues, limit, wait, lease)
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
                with anyio.move_on_after(remaining):
                    await waiter.event.wait()
        finally:
            if waiter is not None:
                self.waiters.leave(waiter)

    async def _claim_once(
        self, queues: list[str], limit: int, lease: float | None, worker_id: str | None
    ) -> list[Result]:
        open_queues = [q for q in queues if q not in self.paused]
        if not open_queues:
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
            row = conn.execute(queries.WORKER_FOR_CLAIM, (worker_id,)).fetchone()
            if row is not None:
                state, capacity, leased = row
                if state != WorkerCommand.RUNNING:
                    return []  # a quiet or terminating worker gets no new work
                limit = min(limit, capacity - leased)
                if limit <= 0:
                    return []
        now = time.time()
        params: dict[str, Any] = {"now": now, "lease": lease, "worker_id": worker_id}
        if len(queues) == 1:
            params.update(queue=queues[0], limit=limit)
            rows = conn.execute(queries.LEASE_BEST_OF_QUEUE, params).fetchall()
        else:
            candidates = [
                tuple(row)
                for queue in queues
                for row in conn.execute(queries.READY_IN_QUEUE, (queue, limit))
            ]
            candidates.sort(key=lambda c: (-c[1], c[0]))
            if not candidates:
                return []
            params["ids"] = json.dumps([c[0] for c in candidates[:limit]])
            rows = conn.execute(queries.LEASE_IDS, params).fetchall()
        rows.sort(key=lambda r: (-r[3], r[0]))
        for row in rows:
            batch.moved(row[1], TaskState.QUEUED, TaskState.LEASED)
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
    ) -> tuple[int, int, str]:
        """(attempts, max_attempts, queue) if ``token`` holds the task's lease now."""
        row = conn.execute(queries.LEASE_OF, (task_id,)).fetchone()
        if row is None:
            raise errors.NotFound(f"task {task_id} does not exist", task_id=task_id)
        state, current_token, expires_at, attempts, max_attempts, queue = row
        if state != TaskState.LEASED or current_token != token or expires_at <= now:
            raise errors.LeaseLost(
                f"task {task_id}: this lease is no longer held (task is {state})",
                task_id=task_id,
            )
        return attempts, max_attempts, queue

    def _lease_lost_or_missing(
        self, conn: sqlite3.Connection, task_id: int
    ) -> errors.DurableTQError:
        if conn.execute(queries.TASK_EXISTS, (task_id,)).fetchone() is None:
            return errors.NotFound(f"task {task_id} does not exist", task_id=task_id)
        return errors.LeaseLost(f"task {task_id}: this lease is no longer held", task_id=task_id)

    def _ack_row(
        self, conn: sqlite3.Connection, batch: Batch, task_id: int, token: str, result: str | None
    ) -> Returned:
        now = time.time()
        row = conn.execute(queries.ACK, (result, now, now, task_id, token, now)).fetchone()
        if row is None:
            raise self._lease_lost_or_missing(conn, task_id)
        batch.moved(row[0], TaskState.LEASED, TaskState.SUCCEEDED)
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
        now = time.time()
        attempts, max_attempts, queue = self._current_lease(conn, task_id, token, now)
        if retry and attempts < max_attempts:
            if delay is None:
                delay = backoff_delay(attempts, self.settings)
            state = TaskState.SCHEDULED if delay > 0 else TaskState.QUEUED
            conn.execute(queries.RETRY, (state, now + delay, error, now, task_id))
            batch.moved(queue, TaskState.LEASED, state)
            return state, now + delay, queue
        conn.execute(queries.BURY, (error, now, now, task_id))
        batch.moved(queue, TaskState.LEASED, TaskState.DEAD)
        return TaskState.DEAD, None, queue

    def _release_row(
        self, conn: sqlite3.Connection, batch: Batch, task_id: int, token: str, delay: float | None
    ) -> Returned:
        now = time.time()
        _, _, queue = self._current_lease(conn, task_id, token, now)
        delay = delay or 0.0
        state = TaskState.SCHEDULED if delay > 0 else TaskState.QUEUED
        conn.execute(queries.RELEASE, (state, now + delay, now, task_id))
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
        await self.store.write(
            lambda conn, batch: self._ack_row(conn, batch, task_id, lease_token, text),
            atomic=True,
        )
        self.counters["succeeded"] += 1
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
            for task_id, token, outcome, text, item in items:
                try:
                    if outcome == Outcome.ACK:
                        returned = self._ack_row(conn, batch, task_id, token, text)
                    elif outcome == Outcome.FAIL:
                        returned = self._fail_row(
                            conn, batch, task_id, token, item.error, item.retry, item.delay
                        )
                    else:
                        returned = self._release_row(conn, batch, task_id, token, item.delay)
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
                row = conn.execute(queries.HEARTBEAT, (time.time(), worker_id)).fetchone()
                settled.worker_state = None if row is None else row[0]
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
        if claim is not None:
            reply["tasks"] = await self._claim(
                claim.queues, claim.max, claim.wait, claim.lease, session, first=settled.tasks
            )
        return reply

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

        def extend(conn: sqlite3.Connection, batch: Batch) -> float:
            now = time.time()
            expires_at = now + seconds
            cursor = conn.execute(queries.EXTEND, (expires_at, now, task_id, lease_token, now))
            if cursor.rowcount == 0:
                raise self._lease_lost_or_missing(conn, task_id)
            return expires_at

        return {"lease_expires_at": await self.store.write(extend, atomic=True, durable=False)}

    # --- workers ------------------------------------------------------------------------------

    async def register_worker(self, spec: schema.WorkerSpec) -> None:
        now = time.time()
        params = {
            "id": spec.id,
            "queues": None if spec.queues is None else json.dumps(spec.queues),
            "concurrency": spec.concurrency,
            "prefetch": spec.prefetch,
            "meta": dumps_value(spec.meta),
            "now": now,
        }
        await self.store.write(
            lambda conn, batch: conn.execute(queries.REGISTER_WORKER, params),
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

        def beat(conn: sqlite3.Connection, batch: Batch) -> str:
            row = conn.execute(queries.HEARTBEAT, (time.time(), worker_id)).fetchone()
            if row is None:
                raise errors.NotFound(f"worker {worker_id} is not registered")
            return str(row[0])

        return {"state": await self.store.write(beat, atomic=True, durable=False)}

    async def worker_state(
        self, worker_id: str, state: str, *, session: Session | None = None
    ) -> Result:
        def set_state(conn: sqlite3.Connection, batch: Batch) -> None:
            cursor = conn.execute(queries.SET_WORKER_STATE, (state, worker_id))
            if cursor.rowcount == 0:
                raise errors.NotFound(f"worker {worker_id} does not exist")

        await self.store.write(set_state, atomic=True)
        return {}

    async def workers(self, *, session: Session | None = None) -> Result:
        alive_after = time.time() - self.settings.worker_timeout

        def read(conn: sqlite3.Connection) -> list[Result]:
            leased = dict(conn.execute(queries.LEASES_BY_WORKER).fetchall())
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
                for row in conn.execute(queries.LIST_WORKERS)
            ]

        return {"workers": await self.store.read(read)}

    # --- reading ------------------------------------------------------------------------------

    async def get(self, task_id: int, *, session: Session | None = None) -> Result:
        row = await self.store.read(
            lambda conn: conn.execute(queries.GET_TASK, (task_id,)).fetchone()
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
            lambda conn: read_task_page(conn, queue, state, limit, after_id)
        )

    async def stats(self, *, session: Session | None = None) -> Result:
        timeout = self.settings.worker_timeout
        result = await self.store.read(lambda conn: read_stats(conn, time.time(), timeout))
        result["connections"] = self.connections
        # Optional (PROTOCOL.md allows additions): the group-commit writer's counters.
        result["store"] = dataclasses.asdict(self.store.stats)
        return result

    # --- operating ----------------------------------------------------------------------------

    async def cancel(self, task_id: int, *, session: Session | None = None) -> Result:
        def cancel(conn: sqlite3.Connection, batch: Batch) -> str:
            row = conn.execute(queries.TASK_STATE, (task_id,)).fetchone()
            if row is None:
                raise errors.NotFound(f"task {task_id} does not exist", task_id=task_id)
            state = row[0]
            if state in (TaskState.LEASED, TaskState.SUCCEEDED):
                raise errors.Conflict(
                    f"task {task_id} is {state} and cannot be cancelled", state=state
                )
            if state != TaskState.CANCELLED:
                now = time.time()
                conn.execute(queries.CANCEL, (now, now, task_id))
                batch.moved(row[1], state, TaskState.CANCELLED)
            return TaskState.CANCELLED.value

        return {"state": await self.store.write(cancel, atomic=True)}

    async def requeue(
        self,
        task_ids: Sequence[int] | None = None,
        queue: str | None = None,
        state: str | None = None,
        *,
        session: Session | None = None,
    ) -> Result:
        now = time.time()
        steps: list[tuple[str, dict[str, object]]]
        if task_ids is not None:
            sql = queries.REQUEUE_IDS
            # One statement per old state: queue_counts needs to know what each row was.
            ids = json.dumps(list(task_ids))
            steps = [
                (str(old), {"now": now, "ids": ids, "state": old})
                for old in (TaskState.DEAD, TaskState.CANCELLED)
            ]
        else:
            if queue is None or state is None:
                raise errors.BadRequest("give task_ids, or queue and state")
            sql = queries.REQUEUE_QUEUE
            steps = [(state, {"now": now, "queue": queue, "state": state})]

        def skip_reason(conn: sqlite3.Connection, task_id: int) -> str:
            row = conn.execute(queries.REQUEUE_SKIPPED_TASK, (task_id,)).fetchone()
            if row is None:
                return "no such task"
            queue, state, unique_key = row
            if state not in (TaskState.DEAD, TaskState.CANCELLED):
                return f"task is {state}; only dead or cancelled tasks move"
            holder = conn.execute(queries.FIND_LIVE_UNIQUE, (queue, unique_key)).fetchone()
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
                rows = conn.execute(queries.REQUEUE_LEFT_IN_QUEUE, (queue, state))
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
            lambda conn, batch: conn.execute(queries.SET_PAUSED, (queue, int(paused))),
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
        sql, params = queries.PURGE_QUEUE, [queue]
        if state is not None:
            if state == TaskState.LEASED:
                raise errors.BadRequest("state: purge never touches leased tasks")
            sql, params = queries.PURGE_QUEUE_STATE, [queue, str(state)]

        def purge(conn: sqlite3.Connection, batch: Batch) -> int:
            states = Counter(old for (old,) in conn.execute(sql, params))
            for old, n in states.items():
                batch.moved(queue, old, None, n)
            return sum(states.values())

        count = await self.store.write(purge, heavy=True)
        log.info("purged %d tasks of queue %s", count, queue)
        return {"count": count}

    def _count_settled(self, outcomes: Sequence[tuple[str, str | None]]) -> None:
        """Count ended leases by (outcome, new state or None when refused), for /metrics."""
        for outcome, state in outcomes:
            if state is None or outcome == Outcome.RELEASE:
                continue
            if outcome == Outcome.ACK:
                self.counters["succeeded"] += 1
                continue
            self.counters["failed"] += 1
            if state == TaskState.DEAD:
                self.counters["dead"] += 1


#: What ending a lease did: (new state, run_at or None, queue).
Returned = tuple[str, float | None, str]


class _Settled:
    """What a settle's transaction did."""

    __slots__ = ("results", "returned", "tasks", "worker_state")

    def __init__(self) -> None:
        self.results: list[Result] = []
        self.returned: list[Returned] = []
        self.tasks: list[Result] = []
        self.worker_state: str | None = None
