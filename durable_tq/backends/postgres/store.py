"""All PostgreSQL access of one broker: the group-commit writer, read connections, the
notification listener and the sweep lock.

The writer mirrors the SQLite one (``backends.sqlite.store``): the same write functions
``fn(conn, batch)`` with the same ``execute(...).fetchone()`` shape, drained into one
transaction per batch (a savepoint per request unless ``atomic``), committed once, then every
caller answered. The batch runs wholly on the writer's own thread (psycopg 3, sync), one hop
per batch: docs/benchmarks.md, "PostgreSQL driver", says why not asyncpg.

Several brokers share one database, so nothing here assumes it is the only writer:

- claims read ready rows ``FOR UPDATE SKIP LOCKED`` (``postgres.queries``);
- counts are per-broker delta rows (this broker's ``slot``), summed when read;
- a batch that deadlocks with another broker's (PostgreSQL breaks the cycle by failing one)
  is rolled back and run again; a request whose statement fails is answered with its error
  and the batch is run again without it;
- each commit notifies the other brokers (LISTEN/NOTIFY) of queues with new ready tasks,
  finished tasks and changed queue settings; :class:`Listener` hands those to the broker;
- sweeps run in the broker holding an advisory lock on a session of its own (:meth:`lead`):
  when that broker dies its session ends, the lock is free, and the next one to ask takes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import psycopg
import psycopg.errors

from durable_tq import errors
from durable_tq.backends.postgres import migrate, queries
from durable_tq.backends.sqlite.store import Batch, StoreStats, _PendingWrite
from durable_tq.config import Settings

log = logging.getLogger("durable_tq.backends.postgres.store")

T = TypeVar("T")
Connection = psycopg.Connection[Any]

#: pg_try_advisory_lock key of the sweeping broker ('dtq-swee' as 8 bytes).
SWEEP_LOCK = 0x6474712D73776565
#: Notification channels (``queries.NOTIFY``).
READY_CHANNEL, DONE_CHANNEL, QUEUE_CHANNEL = "dtq_ready", "dtq_done", "dtq_queue"
NOTIFY: str = queries.NOTIFY or ""
#: A batch that deadlocked (or met a serialization failure) is run again this many times.
RETRIES = 8
#: Task ids per dtq_done notification (a payload holds at most 8000 bytes).
IDS_PER_NOTIFY = 400
#: The sweeping broker looks at the tasks table's statistics this often (seconds), and
#: analyzes it when more rows than ANALYZE_MIN_CHANGES and ANALYZE_FRACTION of the table
#: changed since its last ANALYZE (``queries.TASKS_CHANGED_SINCE_ANALYZE``).
ANALYZE_CHECK_EVERY = 5.0
ANALYZE_MIN_CHANGES = 1000
ANALYZE_FRACTION = 0.1
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


def storage_error(exc: BaseException, doing: str) -> errors.StorageError:
    """Translate a psycopg error at the store's boundary."""
    state = getattr(exc, "sqlstate", None)
    code = f" [{state}]" if state else ""
    return errors.StorageError(f"storage failed while {doing}: {type(exc).__name__}{code}: {exc}")


def describe_url(url: str) -> str:
    """The database URL without its password, for logs and the listening line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


#: Why psycopg refuses a str parameter that holds U+0000 (client-side, no SQLSTATE).
_NUL_REFUSED = "cannot contain NUL"
NUL_MESSAGE = (
    "a text argument (a queue name, key, error or progress message, schedule field...) "
    "holds a NUL character (\\u0000), which PostgreSQL cannot store in text; JSON payloads, "
    "results and meta may hold \\u0000 (docs/postgres.md)"
)


def request_error(exc: psycopg.Error, doing: str) -> errors.DurableTQError:
    """A psycopg error in one request: ``bad_request`` when its own arguments are at fault
    (a NUL character in a text parameter), else a storage error."""
    if isinstance(exc, psycopg.DataError) and _NUL_REFUSED in str(exc):
        return errors.BadRequest(NUL_MESSAGE)
    return storage_error(exc, doing)


class Cursor(psycopg.Cursor[Any]):
    """psycopg's cursor with sqlite3's ``lastrowid``: the id an ``INSERT ... RETURNING id``
    gave (``queries.INSERT_TASK``), or None when it inserted nothing."""

    @property
    def lastrowid(self) -> int | None:
        row = self.fetchone()
        return None if row is None else int(row[0])


def connect(url: str, *, application_name: str = "durable_tq") -> Connection:
    """An autocommit connection: the store sends BEGIN and COMMIT itself.

    Its ``application_name`` ends with this process's pid (``durable_tq sweep pid=1234``),
    so ``pg_stat_activity`` tells which broker process each session belongs to (and which
    one holds the sweep lock: docs/postgres.md).
    """
    try:
        conn: Connection = psycopg.connect(
            url,
            autocommit=True,
            application_name=f"{application_name} pid={os.getpid()}",
            cursor_factory=Cursor,
        )
    except psycopg.Error as exc:
        raise errors.StorageError(
            f"cannot connect to PostgreSQL at {describe_url(url)}: {exc}".strip()
        ) from exc
    return conn


class EveryQueue:
    """The ``ready_queues`` of a store that is not the only writer: any queue may hold ready
    tasks (another broker may have added them), so a claim reads every queue it names."""

    def __or__(self, other: object) -> EveryQueue:
        return self

    def __contains__(self, queue: object) -> bool:
        return True

    def intersection(self, queues: Iterable[str]) -> set[str]:
        return set(queues)


class Store:
    """One broker's view of the shared PostgreSQL database (see the module docstring)."""

    queries = queries

    def __init__(self, settings: Settings) -> None:
        assert settings.db_url is not None
        self.settings = settings
        self.url = settings.db_url
        self.stats = StoreStats()
        #: This broker's queue_counts slot: random per start, held as an advisory lock on the
        #: sweep session while it runs; the rows of a slot nobody holds are folded into slot 0.
        self.slot = secrets.randbelow(2**31 - 1) + 1
        self.ready_queues = EveryQueue()
        self.shared = True
        self._writer: Connection | None = None
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="durable_tq-pg-writer")
        self._readers: list[tuple[Connection, ThreadPoolExecutor]] = []
        self._next_reader = 0
        self._lead_conn: Connection | None = None
        self._leading = False
        self._statistics_checked = 0.0
        self._lead_thread = ThreadPoolExecutor(1, thread_name_prefix="durable_tq-pg-lead")
        self.listener: Listener | None = None
        #: Backend pids of this broker's writer sessions: their notifications are our own.
        self.own_pids: set[int] = set()
        self._pending: list[_PendingWrite[Any]] = []
        self._wakeup = anyio.Event()
        self._room = anyio.Event()
        self._room.set()
        self._closing = False
        self._writer_done = anyio.Event()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.before_commit: Callable[[Any, Batch], None] | None = None
        self.after_commit: Callable[[Batch], None] | None = None
        #: Set by the broker: called on the event loop with what other brokers committed.
        self.on_ready: Callable[[str, int], None] | None = None
        self.on_done: Callable[[list[int]], None] | None = None
        self.on_queue_changed: Callable[[str], None] | None = None
        self.commit_hook: Callable[[int, float], None] | None = None

    @property
    def path(self) -> str:
        return describe_url(self.url)

    # --- life cycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, migrate (once across brokers), and start the writer and the listener."""
        self._loop = asyncio.get_running_loop()
        try:
            self._writer = await self._on(self._writer_thread, connect, self.url)
            self.own_pids.add(self._writer.info.backend_pid)
            await self._on(self._writer_thread, self._migrate, self._writer)
            for i in range(self.settings.read_connections):
                executor = ThreadPoolExecutor(1, thread_name_prefix=f"durable_tq-pg-reader-{i}")
                reader = await self._on(executor, connect, self.url)
                self._readers.append((reader, executor))
            await self._on(self._lead_thread, self._lead_session)
            self.listener = Listener(self.url, self._loop, self._notified, self.own_pids)
            await self._on(self._lead_thread, self.listener.connect)
        except BaseException:
            await self._close_connections()
            raise
        self.listener.start()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._writer_loop, name="durable_tq pg writer")

    @staticmethod
    def _migrate(conn: Connection) -> None:
        try:
            migrate.apply_migrations(conn)
            autovacuum = conn.execute("SELECT current_setting('autovacuum')").fetchone()
        except psycopg.Error as exc:
            raise storage_error(exc, "migrating") from exc
        if autovacuum is not None and autovacuum[0] != "on":
            log.warning(
                "autovacuum is off on this PostgreSQL server: the dead rows every claim and "
                "ack leave in tasks and its indexes are never cleaned up, and claims slow "
                "down as tasks go through; turn it on (docs/postgres.md)"
            )

    async def _on(self, executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        loop = self._loop or asyncio.get_running_loop()
        return await loop.run_in_executor(executor, fn, *args)

    async def close(self) -> None:
        """Finish every pending write, then close the connections (and the sweep lock)."""
        if self._task_group is None:
            await self._close_connections()
            return
        self._closing = True
        self._wakeup.set()
        await self._writer_done.wait()
        await self._task_group.__aexit__(None, None, None)
        self._task_group = None
        await self._close_connections()

    async def _close_connections(self) -> None:
        if self.listener is not None:
            await anyio.to_thread.run_sync(self.listener.stop)
            self.listener = None
        conns = [self._writer, self._lead_conn, *(reader for reader, _ in self._readers)]
        for conn in conns:
            if conn is not None:
                conn.close()
        for _, executor in self._readers:
            executor.shutdown(wait=False)
        self._readers.clear()
        self._writer = self._lead_conn = None
        self._writer_thread.shutdown(wait=False)
        self._lead_thread.shutdown(wait=False)

    # --- the sweep lock -----------------------------------------------------------------------

    async def lead(self) -> bool:
        """Whether this broker runs the sweeps now: it holds (or just took) the advisory lock
        on its own session. A lost session (PostgreSQL restarted) loses the lock; it is
        asked for again on a new one."""
        return await self._on(self._lead_thread, self._try_lead)

    def _lead_session(self) -> Connection:
        """The session that holds this broker's slot lock, and the sweep lock when it has it."""
        conn = self._lead_conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = self._lead_conn = connect(self.url, application_name="durable_tq sweep")
            self._leading = False
            conn.execute("SELECT pg_advisory_lock(%s, %s)", (queries.SLOT_LOCK, self.slot))
        return conn

    def _try_lead(self) -> bool:
        try:
            conn = self._lead_session()
            # Still ours? A session that died took the lock with it.
            conn.execute("SELECT 1").fetchone()
            if not self._leading:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (SWEEP_LOCK,)).fetchone()
                self._leading = bool(row and row[0])
                if self._leading:
                    log.info("this broker runs the sweeps now (advisory lock taken)")
            if self._leading:
                self._keep_statistics(conn)
            return self._leading
        except (psycopg.Error, errors.StorageError) as exc:
            log.warning("sweep lock session lost: %s", exc)
            if self._lead_conn is not None:
                self._lead_conn.close()
            self._lead_conn = None
            self._leading = False
            return False

    def _keep_statistics(self, conn: Connection) -> None:
        """ANALYZE the tasks table when it changed much since its statistics were taken
        (``queries.TASKS_CHANGED_SINCE_ANALYZE`` says why), on the sweep session."""
        now = time.monotonic()
        if now - self._statistics_checked < ANALYZE_CHECK_EVERY:
            return
        self._statistics_checked = now
        row = conn.execute(queries.TASKS_CHANGED_SINCE_ANALYZE).fetchone()
        if row is None or row[0] <= max(ANALYZE_MIN_CHANGES, ANALYZE_FRACTION * row[1]):
            return
        started = time.perf_counter()
        try:
            conn.execute(queries.ANALYZE_TASKS)
        except psycopg.Error as exc:  # e.g. not the table's owner: the sweeps go on
            log.warning("could not analyze the tasks table: %s", exc)
            return
        log.info(
            "analyzed tasks (%d rows changed since its statistics) in %.0f ms",
            row[0],
            (time.perf_counter() - started) * 1000,
        )

    # --- notifications from other brokers ------------------------------------------------------

    def _notified(self, channel: str, payload: str) -> None:
        """On the event loop: what another broker committed."""
        try:
            if channel == READY_CHANNEL and self.on_ready is not None:
                queue, count = json.loads(payload)
                self.on_ready(str(queue), int(count))
            elif channel == DONE_CHANNEL and self.on_done is not None:
                self.on_done([int(i) for i in json.loads(payload)])
            elif channel == QUEUE_CHANNEL and self.on_queue_changed is not None:
                self.on_queue_changed(payload)
        except (ValueError, TypeError):
            log.warning("ignored a malformed %s notification: %.200r", channel, payload)

    # --- writes -------------------------------------------------------------------------------

    async def write(
        self,
        fn: Callable[[Any, Batch], T],
        *,
        heavy: bool = False,
        atomic: bool = False,
        durable: bool = True,
    ) -> T:
        """Run ``fn(conn, batch)`` in the next group commit; its result once committed.

        As the SQLite store's ``write``: a DurableTQError undoes the request's own changes and
        is raised here. ``durable=False`` (leases, extends, heartbeats): a batch of only such
        writes commits with ``synchronous_commit = off`` for that transaction, as SQLite's
        commits them with ``synchronous = NORMAL`` (docs/postgres.md). ``heavy`` changes
        nothing here: every batch runs on the writer's thread.
        """
        if self._closing:
            raise errors.ShuttingDown("the broker is stopping")
        while len(self._pending) >= self.settings.max_pending_writes:
            if self._room.is_set():
                self._room = anyio.Event()
            await self._room.wait()
        loop = self._loop or asyncio.get_running_loop()
        pending = _PendingWrite(fn, loop.create_future(), heavy, atomic, durable)
        self._pending.append(pending)
        self._wakeup.set()
        await pending.done
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    async def _writer_loop(self) -> None:
        try:
            while True:
                if not self._pending:
                    if self._closing:
                        return
                    await self._wakeup.wait()
                    self._wakeup = anyio.Event()
                    continue
                batch = self._pending[: self.settings.max_batch]
                del self._pending[: len(batch)]
                self._room.set()
                try:
                    state = await self._on(self._writer_thread, self._run_batch, batch)
                except Exception as exc:  # the thread itself failed
                    log.exception("write batch failed")
                    state = None
                    for pending in batch:
                        pending.error = errors.Internal("write batch failed")
                        pending.error.__cause__ = exc
                if state is not None and state.done and self.after_commit is not None:
                    try:
                        self.after_commit(state)
                    except Exception:
                        log.exception("after-commit hook failed")
                for pending in batch:
                    pending.answer()
        finally:
            for pending in self._pending:
                pending.error = errors.ShuttingDown("the broker is stopping")
                pending.answer()
            self._pending.clear()
            self._writer_done.set()

    def _writer_conn(self) -> Connection:
        conn = self._writer
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
                log.warning("the writer's connection was lost; connecting again")
            conn = self._writer = connect(self.url)
            self.own_pids.add(conn.info.backend_pid)
        return conn

    def _run_batch(self, batch: list[_PendingWrite[Any]]) -> Batch | None:
        """On the writer's thread: one transaction for the batch, run again after a deadlock
        or without a request whose statement failed; the Batch once committed, else None."""
        started = time.perf_counter()
        skip: set[int] = set()
        for attempt in range(RETRIES):
            for i, pending in enumerate(batch):
                if i not in skip:
                    pending.result = pending.error = None
            try:
                conn = self._writer_conn()
            except errors.StorageError as exc:
                self._fail(batch, skip, exc)
                return None
            try:
                state, failed = self._transaction(conn, batch, skip)
            except _RETRYABLE as exc:
                self._rollback(conn)
                log.info("write batch met another broker's (%s); running it again", exc.sqlstate)
                time.sleep(0.001 * (attempt + 1))
                continue
            except psycopg.Error as exc:
                self._rollback(conn)
                self._fail(batch, skip, storage_error(exc, "writing"))
                return None
            if failed is not None:  # this request's statement failed: without it, again
                self._rollback(conn)
                skip.add(failed)
                continue
            if state is None:  # nothing was left to commit
                return None
            self._count_commit(batch, started)
            return state
        self._fail(batch, skip, errors.StorageError("write batch kept deadlocking; try again"))
        return None

    def _transaction(
        self, conn: Connection, batch: list[_PendingWrite[Any]], skip: set[int]
    ) -> tuple[Batch | None, int | None]:
        """BEGIN, every request, the counts and notifications, COMMIT: (the Batch, None), or
        (None, index) when request ``index`` failed in PostgreSQL (the transaction is then
        aborted: the caller rolls back and runs the rest again)."""
        state = Batch()
        live = [(i, p) for i, p in enumerate(batch) if i not in skip]
        if not live:
            return None, None
        durable = any(p.durable for _, p in live)
        conn.execute("BEGIN" if durable else "BEGIN; SET LOCAL synchronous_commit = off")
        for i, pending in live:
            if self._run_request(conn, state, pending):
                continue
            return None, i
        if state.done and self.before_commit is not None:
            state.begin_request()
            self.before_commit(conn, state)
            state.keep_request()
        notes = self._count(conn, state)
        committing = time.perf_counter()
        conn.execute("COMMIT")
        self.stats.commit_seconds += time.perf_counter() - committing
        if notes[0]:
            self._notify(conn, notes)
        return state, None

    def _run_request(self, conn: Any, state: Batch, pending: _PendingWrite[Any]) -> bool:
        """One request; False when its statement failed in PostgreSQL (its error is set)."""
        if not pending.atomic:
            conn.execute("SAVEPOINT request")
        state.begin_request()
        try:
            pending.result = pending.fn(conn, state)
            state.keep_request()
        except errors.DurableTQError as exc:
            pending.error = exc
            state.begin_request()
            if not pending.atomic:
                conn.execute("ROLLBACK TO SAVEPOINT request")
        except _RETRYABLE:
            raise
        except psycopg.Error as exc:
            pending.error = request_error(exc, "writing")
            if not isinstance(pending.error, errors.BadRequest):
                log.error("write request failed in PostgreSQL: %s", exc)
            state.begin_request()
            if pending.atomic:
                return False
            conn.execute("ROLLBACK TO SAVEPOINT request")
        except Exception as exc:
            log.exception("write request failed")
            pending.error = errors.Internal(f"{type(exc).__name__} in a write")
            state.begin_request()
            if pending.atomic:
                return False
            conn.execute("ROLLBACK TO SAVEPOINT request")
        if not pending.atomic:
            conn.execute("RELEASE SAVEPOINT request")
        return True

    def _count(self, conn: Connection, state: Batch) -> tuple[list[str], list[str]]:
        """Write this broker's count deltas of the batch (before COMMIT); the notifications
        to send once it committed: (channels, payloads)."""
        moves = [(q, s, n) for (q, s), n in state.moves.items() if n]
        channels: list[str] = []
        payloads: list[str] = []
        for queue, st, n in moves:
            if st == "queued" and n > 0:
                channels.append(READY_CHANNEL)
                payloads.append(json.dumps([queue, n]))
        done = [task_id for task_id, _ in state.done]
        for start in range(0, len(done), IDS_PER_NOTIFY):
            channels.append(DONE_CHANNEL)
            payloads.append(json.dumps(done[start : start + IDS_PER_NOTIFY]))
        for queue in state.memo.get("queue_changed", ()):
            channels.append(QUEUE_CHANNEL)
            payloads.append(queue)
        if moves:
            conn.execute(
                queries.ADD_TO_COUNTS,
                {
                    "slot": self.slot,
                    "queues": [m[0] for m in moves],
                    "states": [m[1] for m in moves],
                    "ns": [m[2] for m in moves],
                },
            )
        return channels, payloads

    @staticmethod
    def _notify(conn: Connection, notes: tuple[list[str], list[str]]) -> None:
        """Tell the other brokers what just committed. Lost only if this broker dies between
        the two: a claim parked elsewhere then finds the work at its next try."""
        try:
            conn.execute(NOTIFY, notes)
        except psycopg.Error as exc:  # committed already: the callers still get their answers
            log.warning("could not notify the other brokers: %s", exc)

    @staticmethod
    def _rollback(conn: Connection) -> None:
        try:
            if not conn.closed and not conn.broken:
                conn.execute("ROLLBACK")
        except psycopg.Error as exc:
            log.error("could not roll back a failed batch: %s", exc)

    @staticmethod
    def _fail(
        batch: list[_PendingWrite[Any]], skip: set[int], error: errors.DurableTQError
    ) -> None:
        for i, pending in enumerate(batch):
            if i not in skip:
                pending.result = None
                pending.error = error

    def _count_commit(self, batch: list[_PendingWrite[Any]], started: float) -> None:
        done = time.perf_counter()
        stats = self.stats
        stats.commits += 1
        stats.writes += len(batch)
        stats.largest_batch = max(stats.largest_batch, len(batch))
        stats.busy_seconds += done - started
        if not any(p.durable for p in batch):
            stats.unsynced_commits += 1
        if self.commit_hook is not None:
            self.commit_hook(len(batch), done - started)

    # --- reads --------------------------------------------------------------------------------

    async def read(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn`` on a read connection in one REPEATABLE READ transaction."""
        if not self._readers:
            raise errors.ShuttingDown("the store is closed")
        index = self._next_reader % len(self._readers)
        self._next_reader += 1
        return await self._on(self._readers[index][1], self._read, index, fn)

    def _read(self, index: int, fn: Callable[[Any], T]) -> T:
        conn, executor = self._readers[index]
        if conn.closed or conn.broken:
            conn.close()
            conn = connect(self.url)
            self._readers[index] = (conn, executor)
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                return fn(conn)
            finally:
                if not conn.broken:
                    conn.execute("ROLLBACK")
        except psycopg.Error as exc:
            raise request_error(exc, "reading") from exc

    def may_have_ready(self, queues: Iterable[str]) -> bool:
        """Always True: another broker may have committed ready tasks there."""
        return True

    @property
    def pending_writes(self) -> int:
        return len(self._pending)


class Listener:
    """LISTENs on the three channels on a connection of its own, on a thread, and hands
    each notification from another broker to ``deliver`` on the event loop."""

    def __init__(
        self,
        url: str,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[str, str], None],
        own_pids: set[int],
    ) -> None:
        self.own_pids = own_pids
        self.url = url
        self.loop = loop
        self.deliver = deliver
        self._conn: Connection | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def connect(self) -> None:
        conn = self._conn = connect(self.url, application_name="durable_tq listen")
        for channel in (READY_CHANNEL, DONE_CHANNEL, QUEUE_CHANNEL):
            conn.execute(f"LISTEN {channel}")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="durable_tq-pg-listen", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._conn is None or self._conn.closed:
                    self.connect()
                assert self._conn is not None
                for note in self._conn.notifies(timeout=0.25):
                    if note.pid not in self.own_pids:
                        self._hand_over([(note.channel, note.payload)])
                    if self._stop.is_set():
                        break
            except (psycopg.Error, errors.StorageError) as exc:
                if self._stop.is_set():
                    break
                log.warning("notification listener lost its connection: %s", exc)
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                # Missed notifications: the broker re-reads queue settings on a timer and a
                # parked claim re-checks on its own; wake everyone once to be safe.
                self._hand_over([(QUEUE_CHANNEL, "*")])
                self._stop.wait(0.5)

    def _hand_over(self, notes: Iterable[tuple[str, str]]) -> None:
        for channel, payload in notes:
            try:
                self.loop.call_soon_threadsafe(self.deliver, channel, payload)
            except RuntimeError:  # the loop is closed
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def counts_of(conn: Connection) -> Counter[tuple[str, str]]:
    """Committed tasks per (queue, state), summed over every broker's slot."""
    return Counter({(q, s): int(n) for q, s, n in conn.execute(queries.QUEUE_COUNTS).fetchall()})
