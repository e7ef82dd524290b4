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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from durable_tq import errors, protocol, queries
from durable_tq.config import Settings
from durable_tq.protocol import TaskState
from durable_tq.store import Store
from durable_tq.waiters import Waiters

log = logging.getLogger("durable_tq.broker")

Result = dict[str, Any]

#: An enqueue_many of more tasks than this is a heavy write (runs on the database thread).
HEAVY_ROWS = 200


@dataclass
class Session:
    """What the broker knows of one client connection."""

    greeted: bool = False
    worker_id: str | None = None
    client: str | None = None


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
    """The wire ``task`` object from a row of ``queries.TASK_COLUMNS``."""
    return {
        "task_id": row[0],
        "queue": row[1],
        "state": row[2],
        "payload": json.loads(row[3]),
        "priority": row[4],
        "attempts": row[5],
        "max_attempts": row[6],
        "run_at": row[7],
        "created_at": row[8],
        "updated_at": row[9],
        "lease_expires_at": row[10],
        "worker_id": row[11],
        "last_error": row[12],
        "result": None if row[13] is None else json.loads(row[13]),
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
    commit; a method returns only after its change is committed.
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
        self._handlers: dict[str, Callable[[Any, Session], Awaitable[Result]]] = {
            "hello": self.hello,
            "enqueue": self.enqueue,
            "enqueue_many": self.enqueue_many,
            "claim": self.claim,
            "ack": self.ack,
            "fail": self.fail,
            "release": self.release,
            "extend": self.extend,
            "heartbeat": self.heartbeat,
            "get": self.get,
            "cancel": self.cancel,
            "stats": self.stats,
            "list": self.list,
            "requeue": self.requeue,
            "pause": self.pause,
            "resume": self.resume,
            "purge": self.purge,
            "workers": self.workers,
            "worker_state": self.worker_state,
            "bye": self.bye,
        }

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

    async def handle(self, request: protocol.Request, session: Session) -> Result:
        """Run one validated request; the result fields of its ok reply."""
        return await self._handlers[request.op](request, session)

    def _schedule_wakeup(self, moment: float) -> None:
        if moment < self.next_due:
            self.next_due = moment
            self.due_changed.set()

    # --- session ------------------------------------------------------------------------------

    async def hello(self, req: protocol.Hello, session: Session) -> Result:
        if session.greeted:
            raise errors.Conflict("hello was already sent on this connection")
        if req.version != protocol.PROTOCOL_VERSION:
            raise errors.UnsupportedVersion(
                f"protocol version {req.version} is not spoken here; this broker speaks "
                f"{protocol.PROTOCOL_VERSION}",
                supported=[protocol.PROTOCOL_VERSION],
            )
        if self.settings.auth_tokens and not self._token_ok(req.token):
            raise errors.Unauthorized("missing or wrong token")
        if req.worker is not None:
            await self.register_worker(req.worker)
            session.worker_id = req.worker.id
            self._worker_sessions[req.worker.id] += 1
        session.greeted = True
        session.client = req.client
        return {
            "server": protocol.SERVER_NAME,
            "version": protocol.PROTOCOL_VERSION,
            "heartbeat_interval": self.settings.heartbeat_interval,
        }

    def _token_ok(self, token: str | None) -> bool:
        given = (token or "").encode()
        # Compare against every token, always, so timing says nothing about which matched.
        matches = [hmac.compare_digest(given, t.encode()) for t in self.settings.auth_tokens]
        return token is not None and any(matches)

    async def bye(self, req: protocol.Bye, session: Session) -> Result:
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

        def gone(conn: sqlite3.Connection) -> Counter[str]:
            conn.execute(queries.WORKER_GONE, (worker_id,))
            if not release:
                return Counter()
            rows = conn.execute(
                queries.RELEASE_WORKER_LEASES, {"now": now, "worker_id": worker_id}
            ).fetchall()
            for queue, state in rows:
                self.store.moved(queue, TaskState.LEASED, state)
            return Counter(queue for queue, state in rows if state == TaskState.QUEUED)

        try:
            ready = await self.store.write(gone)
        except errors.DurableTQError as exc:
            log.warning("could not record that worker %s left: %s", worker_id, exc)
            return
        self._notify(ready)

    # --- producing ----------------------------------------------------------------------------

    def _new_task(self, req: protocol.Enqueue, now: float) -> NewTask:
        if req.delay is not None:
            run_at = now + req.delay
        elif req.run_at is not None:
            run_at = req.run_at
        else:
            run_at = now
        return NewTask(
            queue=req.queue,
            state=TaskState.SCHEDULED if run_at > now else TaskState.QUEUED,
            payload=protocol.dumps_value(req.payload),
            priority=req.priority,
            max_attempts=req.max_attempts or self.settings.max_attempts,
            lease_seconds=self._lease(req.lease) or self.settings.default_lease,
            run_at=run_at,
            unique_key=req.unique_key,
        )

    def _lease(self, lease: float | None) -> float | None:
        if lease is not None and lease > self.settings.max_lease:
            raise errors.BadRequest(
                f"lease: {lease} s is longer than max_lease ({self.settings.max_lease} s)"
            )
        return lease

    def _insert(self, conn: sqlite3.Connection, task: NewTask, now: float) -> tuple[int, bool]:
        """On the DB thread: insert one task, or find its live twin by unique_key."""
        if task.unique_key is not None:
            row = conn.execute(queries.FIND_LIVE_UNIQUE, (task.queue, task.unique_key)).fetchone()
            if row is not None:
                return row[0], False
        limit = self.settings.max_queue_depth
        if limit:
            # Read once per batch, then counted up here: an error later in the batch can only
            # make the count too high, which errs on the safe side.
            memo = self.store.batch_memo
            key = ("depth", task.queue)
            depth = memo.get(key)
            if depth is None:
                depth = conn.execute(queries.QUEUE_DEPTH, (task.queue,)).fetchone()[0]
            if depth >= limit:
                raise errors.Busy(
                    f"queue {task.queue!r} holds {depth} waiting tasks (max_queue_depth {limit})",
                    retry_after=1.0,
                )
            memo[key] = depth + 1
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
        self.store.moved(task.queue, None, task.state)
        assert cursor.lastrowid is not None
        return cursor.lastrowid, True

    async def enqueue(self, req: protocol.Enqueue, session: Session | None = None) -> Result:
        now = time.time()
        task = self._new_task(req, now)
        task_id, created = await self.store.write(lambda conn: self._insert(conn, task, now))
        if created:
            self._after_insert([task])
        return {"task_id": task_id, "created": created}

    async def enqueue_many(
        self, req: protocol.EnqueueMany, session: Session | None = None
    ) -> Result:
        if len(req.tasks) > self.settings.max_enqueue_many:
            raise errors.BadRequest(
                f"tasks: {len(req.tasks)} tasks is more than max_enqueue_many "
                f"({self.settings.max_enqueue_many})"
            )
        now = time.time()
        tasks = [self._new_task(item, now) for item in req.tasks]

        def insert_all(conn: sqlite3.Connection) -> list[tuple[int, bool]]:
            return [self._insert(conn, task, now) for task in tasks]

        outcomes = await self.store.write(insert_all, heavy=len(tasks) > HEAVY_ROWS)
        self._after_insert([t for t, (_, created) in zip(tasks, outcomes, strict=True) if created])
        return {
            "task_ids": [task_id for task_id, _ in outcomes],
            "created": [created for _, created in outcomes],
        }

    def _after_insert(self, tasks: list[NewTask]) -> None:
        """After the commit: remember the queues, wake claims, or the sweeper for later runs."""
        ready: Counter[str] = Counter()
        for task in tasks:
            self.known_queues.add(task.queue)
            if task.state == TaskState.QUEUED:
                ready[task.queue] += 1
            else:
                self._schedule_wakeup(task.run_at)
        self._notify(ready)

    def _notify(self, ready: Counter[str]) -> None:
        for queue, count in ready.items():
            if queue not in self.paused:
                self.waiters.notify(queue, count)

    # --- consuming ----------------------------------------------------------------------------

    async def claim(self, req: protocol.Claim, session: Session) -> Result:
        """Lease up to ``max`` of the best ready tasks; long-poll up to ``wait`` for them."""
        if req.wait > self.settings.max_wait:
            raise errors.BadRequest(
                f"wait: {req.wait} s is longer than max_wait ({self.settings.max_wait} s)"
            )
        lease = self._lease(req.lease)
        limit = min(req.max, self.settings.max_claim)
        queues = list(dict.fromkeys(req.queues))
        deadline = time.monotonic() + req.wait
        waiter = self.waiters.join(queues) if req.wait > 0 else None
        try:
            while True:
                if waiter is not None:
                    waiter.rearm()
                # Shielded: a claim cancelled while its write is in a batch would still lease
                # the tasks, and nobody would know. Cancellation lands after it, with the tasks
                # in hand, so the caller can deliver or hand them back.
                with anyio.CancelScope(shield=True):
                    tasks = await self._claim_once(queues, limit, lease, session.worker_id)
                remaining = deadline - time.monotonic()
                if tasks or waiter is None or remaining <= 0:
                    return {"tasks": tasks}
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
            lambda conn: self._lease_tasks(conn, open_queues, limit, lease, worker_id)
        )
        if tasks:
            self._schedule_wakeup(min(t["lease_expires_at"] for t in tasks))
        return tasks

    def _lease_tasks(
        self,
        conn: sqlite3.Connection,
        queues: list[str],
        limit: int,
        lease: float | None,
        worker_id: str | None,
    ) -> list[Result]:
        """On the DB thread: lease the best ``limit`` ready tasks across ``queues``."""
        if worker_id is not None:
            row = conn.execute(queries.WORKER_FOR_CLAIM, (worker_id,)).fetchone()
            if row is not None:
                state, concurrency, leased = row
                if state != protocol.WorkerCommand.RUNNING:
                    return []  # a quiet or terminating worker gets no new work
                limit = min(limit, concurrency - leased)
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
            self.store.moved(row[1], TaskState.QUEUED, TaskState.LEASED)
        return [
            {
                "task_id": r[0],
                "queue": r[1],
                "payload": json.loads(r[2]),
                "priority": r[3],
                "attempt": r[4],
                "lease_token": r[5],
                "lease_expires_at": r[6],
            }
            for r in rows
        ]

    def _current_lease(
        self, conn: sqlite3.Connection, task_id: int, token: str, now: float
    ) -> tuple[int, int, str]:
        """On the DB thread: (attempts, max_attempts, queue) if ``token`` holds the lease now."""
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

    async def ack(self, req: protocol.Ack, session: Session | None = None) -> Result:
        result = None if req.result is None else protocol.dumps_value(req.result)

        def ack(conn: sqlite3.Connection) -> None:
            now = time.time()
            row = conn.execute(
                queries.ACK, (result, now, now, req.task_id, req.lease_token, now)
            ).fetchone()
            if row is None:
                raise self._lease_lost_or_missing(conn, req.task_id)
            self.store.moved(row[0], TaskState.LEASED, TaskState.SUCCEEDED)

        await self.store.write(ack)
        return {}

    async def fail(self, req: protocol.Fail, session: Session | None = None) -> Result:
        def fail(conn: sqlite3.Connection) -> tuple[str, float | None, str]:
            now = time.time()
            attempts, max_attempts, queue = self._current_lease(
                conn, req.task_id, req.lease_token, now
            )
            if req.retry and attempts < max_attempts:
                delay = (
                    req.delay if req.delay is not None else backoff_delay(attempts, self.settings)
                )
                state = TaskState.SCHEDULED if delay > 0 else TaskState.QUEUED
                conn.execute(queries.RETRY, (state, now + delay, req.error, now, req.task_id))
                self.store.moved(queue, TaskState.LEASED, state)
                return state, now + delay, queue
            conn.execute(queries.BURY, (req.error, now, now, req.task_id))
            self.store.moved(queue, TaskState.LEASED, TaskState.DEAD)
            return TaskState.DEAD, None, queue

        state, run_at, queue = await self.store.write(fail)
        self._after_return(state, run_at, queue)
        return {"state": state, "run_at": run_at}

    async def release(self, req: protocol.Release, session: Session | None = None) -> Result:
        def release(conn: sqlite3.Connection) -> tuple[str, float, str]:
            now = time.time()
            _, _, queue = self._current_lease(conn, req.task_id, req.lease_token, now)
            delay = req.delay or 0.0
            state = TaskState.SCHEDULED if delay > 0 else TaskState.QUEUED
            conn.execute(queries.RELEASE, (state, now + delay, now, req.task_id))
            self.store.moved(queue, TaskState.LEASED, state)
            return state, now + delay, queue

        state, run_at, queue = await self.store.write(release)
        self._after_return(state, run_at, queue)
        return {"state": state, "run_at": run_at}

    def _after_return(self, state: str, run_at: float | None, queue: str) -> None:
        """A leased task went back: wake a claim, or the sweeper for its run time."""
        if state == TaskState.SCHEDULED and run_at is not None:
            self._schedule_wakeup(run_at)
        elif state == TaskState.QUEUED:
            self._notify(Counter({queue: 1}))

    async def extend(self, req: protocol.Extend, session: Session | None = None) -> Result:
        lease = self._lease(req.lease)
        assert lease is not None

        def extend(conn: sqlite3.Connection) -> float:
            now = time.time()
            expires_at = now + lease
            cursor = conn.execute(
                queries.EXTEND, (expires_at, now, req.task_id, req.lease_token, now)
            )
            if cursor.rowcount == 0:
                raise self._lease_lost_or_missing(conn, req.task_id)
            return expires_at

        return {"lease_expires_at": await self.store.write(extend)}

    # --- workers ------------------------------------------------------------------------------

    async def register_worker(self, spec: protocol.WorkerSpec) -> None:
        now = time.time()
        params = {
            "id": spec.id,
            "queues": None if spec.queues is None else json.dumps(spec.queues),
            "concurrency": spec.concurrency,
            "meta": protocol.dumps_value(spec.meta),
            "now": now,
        }
        await self.store.write(lambda conn: conn.execute(queries.REGISTER_WORKER, params))
        log.info("worker %s registered (concurrency %d)", spec.id, spec.concurrency)

    async def heartbeat(self, req: protocol.Heartbeat, session: Session) -> Result:
        worker_id = session.worker_id
        if worker_id is None:
            raise errors.Conflict("heartbeat needs a worker registered in hello")

        def beat(conn: sqlite3.Connection) -> str:
            row = conn.execute(queries.HEARTBEAT, (time.time(), worker_id)).fetchone()
            if row is None:
                raise errors.NotFound(f"worker {worker_id} is not registered")
            return str(row[0])

        return {"state": await self.store.write(beat)}

    async def worker_state(
        self, req: protocol.WorkerState, session: Session | None = None
    ) -> Result:
        def set_state(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(queries.SET_WORKER_STATE, (req.state, req.worker_id))
            if cursor.rowcount == 0:
                raise errors.NotFound(f"worker {req.worker_id} does not exist")

        await self.store.write(set_state)
        return {}

    async def workers(self, req: protocol.Workers, session: Session | None = None) -> Result:
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
                    "meta": json.loads(row[6]),
                    "registered_at": row[7],
                }
                for row in conn.execute(queries.LIST_WORKERS)
            ]

        return {"workers": await self.store.read(read)}

    # --- reading ------------------------------------------------------------------------------

    async def get(self, req: protocol.Get, session: Session | None = None) -> Result:
        row = await self.store.read(
            lambda conn: conn.execute(queries.GET_TASK, (req.task_id,)).fetchone()
        )
        if row is None:
            raise errors.NotFound(f"task {req.task_id} does not exist", task_id=req.task_id)
        return {"task": task_from_row(row)}

    async def list(self, req: protocol.List, session: Session | None = None) -> Result:
        return await self.store.read(
            lambda conn: read_task_page(conn, req.queue, req.state, req.limit, req.after_id)
        )

    async def stats(
        self, req: protocol.Stats | None = None, session: Session | None = None
    ) -> Result:
        timeout = self.settings.worker_timeout
        result = await self.store.read(lambda conn: read_stats(conn, time.time(), timeout))
        result["connections"] = self.connections
        # Optional (PROTOCOL.md allows additions): the group-commit writer's counters.
        result["store"] = dataclasses.asdict(self.store.stats)
        return result

    # --- operating ----------------------------------------------------------------------------

    async def cancel(self, req: protocol.Cancel, session: Session | None = None) -> Result:
        def cancel(conn: sqlite3.Connection) -> str:
            row = conn.execute(queries.TASK_STATE, (req.task_id,)).fetchone()
            if row is None:
                raise errors.NotFound(f"task {req.task_id} does not exist", task_id=req.task_id)
            state = row[0]
            if state in (TaskState.LEASED, TaskState.SUCCEEDED):
                raise errors.Conflict(
                    f"task {req.task_id} is {state} and cannot be cancelled", state=state
                )
            if state != TaskState.CANCELLED:
                now = time.time()
                conn.execute(queries.CANCEL, (now, now, req.task_id))
                self.store.moved(row[1], state, TaskState.CANCELLED)
            return TaskState.CANCELLED.value

        return {"state": await self.store.write(cancel)}

    async def requeue(self, req: protocol.Requeue, session: Session | None = None) -> Result:
        now = time.time()
        if req.task_ids is not None:
            sql = queries.REQUEUE_IDS
            # One statement per old state: queue_counts needs to know what each row was.
            ids = json.dumps(req.task_ids)
            steps = [
                (state, {"now": now, "ids": ids, "state": state})
                for state in (TaskState.DEAD, TaskState.CANCELLED)
            ]
        else:
            assert req.state is not None
            sql = queries.REQUEUE_QUEUE
            steps = [(req.state, {"now": now, "queue": req.queue, "state": req.state})]

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

        def requeue(conn: sqlite3.Connection) -> tuple[Counter[str], list[Result]]:
            ready: Counter[str] = Counter()
            moved: set[int] = set()
            for old_state, params in steps:
                for queue, task_id in conn.execute(sql, params):
                    self.store.moved(queue, old_state, TaskState.QUEUED)
                    ready[queue] += 1
                    moved.add(task_id)
            # UPDATE OR IGNORE leaves a task whose unique_key a live task holds: say so.
            if req.task_ids is not None:
                left = list(dict.fromkeys(i for i in req.task_ids if i not in moved))
            else:
                rows = conn.execute(queries.REQUEUE_LEFT_IN_QUEUE, (req.queue, req.state))
                left = [task_id for (task_id,) in rows]
            skipped = [{"task_id": i, "reason": skip_reason(conn, i)} for i in left]
            return ready, skipped

        ready, skipped = await self.store.write(requeue, heavy=True)
        self._notify(ready)
        return {"count": sum(ready.values()), "skipped": skipped}

    async def pause(self, req: protocol.Pause, session: Session | None = None) -> Result:
        await self._set_paused(req.queue, True)
        return {}

    async def resume(self, req: protocol.Resume, session: Session | None = None) -> Result:
        await self._set_paused(req.queue, False)
        self.waiters.notify_all(req.queue)
        return {}

    async def _set_paused(self, queue: str, paused: bool) -> None:
        await self.store.write(lambda conn: conn.execute(queries.SET_PAUSED, (queue, int(paused))))
        if paused:
            self.paused.add(queue)
        else:
            self.paused.discard(queue)
        log.info("queue %s %s", queue, "paused" if paused else "resumed")

    async def purge(self, req: protocol.Purge, session: Session | None = None) -> Result:
        sql, params = queries.PURGE_QUEUE, [req.queue]
        if req.state is not None:
            sql, params = queries.PURGE_QUEUE_STATE, [req.queue, req.state.value]

        def purge(conn: sqlite3.Connection) -> int:
            states = Counter(state for (state,) in conn.execute(sql, params))
            for state, n in states.items():
                self.store.moved(req.queue, state, None, n)
            return sum(states.values())

        count = await self.store.write(purge, heavy=True)
        log.info("purged %d tasks of queue %s", count, req.queue)
        return {"count": count}
