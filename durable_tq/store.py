"""All SQLite access: connections, pragmas, the group-commit writer and the read connections.

Writes are functions of a ``sqlite3.Connection`` handed to :meth:`Store.write`. One writer
task drains every pending write function, runs them all inside one transaction (each under
its own savepoint, so one request's error undoes only its own work), commits once, and only
then answers every caller. One fsync serves the whole batch.

Where the statements run: a batch of small writes (enqueue, claim, ack...) runs its
statements right on the event loop, and only the COMMIT (the fsync, which releases the GIL)
goes to the connection's thread. Running them on that thread made it fight the event loop for
the GIL once per statement: measured, a batch then took 4-6 ms instead of about 1
(docs/benchmarks.md). Batches with a heavy write (``heavy=True``: many rows) run wholly on
the database thread, so the loop never stalls on them. The connection is used by one thread
at a time either way: the writer task awaits each step.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiosqlite
import anyio

from durable_tq import errors, migrate, queries
from durable_tq.config import Settings

log = logging.getLogger("durable_tq.store")

T = TypeVar("T")
ReadFn = Callable[[sqlite3.Connection], T]

#: A batch of at most this many writes commits on the event loop's thread: the fsync then
#: blocks the loop, but saves the two thread crossings (about 0.1-0.2 ms, measured) that would
#: cost more than the loop could do meanwhile. Larger batches commit on the database thread
#: so the loop reads and parses the next requests while the disk works (docs/benchmarks.md).
COMMIT_ON_LOOP_MAX = 4


class Batch:
    """What the write functions of one transaction share; passed to each of them.

    ``moved`` records the state changes a write makes, so ``queue_counts`` stays exact; they
    count only if that write succeeds (a failed write's are dropped with its savepoint).
    ``memo`` keeps values read once per transaction (a queue's depth when the batch began).
    """

    __slots__ = ("memo", "moves", "request_moves")

    def __init__(self) -> None:
        self.memo: dict[Any, Any] = {}
        #: Net state changes of the writes that succeeded so far: (queue, state) -> n.
        self.moves: Counter[tuple[str, str]] = Counter()
        #: Those of the write running now.
        self.request_moves: Counter[tuple[str, str]] = Counter()

    def moved(self, queue: str, old: str | None, new: str | None, n: int = 1) -> None:
        """Tasks of ``queue`` went from state ``old`` to ``new`` (None: created or deleted)."""
        moves = self.request_moves
        if old is not None:
            moves[(queue, old)] -= n
        if new is not None:
            moves[(queue, new)] += n

    def net(self, queue: str, state: str) -> int:
        """The change this transaction made so far to ``queue``'s count of ``state``,
        including the write running now."""
        key = (queue, state)
        return self.moves[key] + self.request_moves[key]

    def request_net(self, queue: str, *states: str) -> int:
        """The change the write running now made to ``queue``'s count of ``states``."""
        return sum(self.request_moves[(queue, state)] for state in states)

    def begin_request(self) -> None:
        if self.request_moves:
            self.request_moves = Counter()

    def keep_request(self) -> None:
        if self.request_moves:
            self.moves.update(self.request_moves)
            self.request_moves = Counter()


WriteFn = Callable[[sqlite3.Connection, Batch], T]


async def on_db_thread(conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(sqlite3_connection, *args)`` on the connection's own thread: one hop for a whole
    batch of statements instead of one per statement (aiosqlite's public calls hop each time).
    """
    result: T = await conn._execute(fn, conn._conn, *args)  # type: ignore[no-untyped-call]
    return result


def storage_error(exc: sqlite3.Error, doing: str) -> errors.StorageError:
    """Translate a sqlite3 error at the store's boundary."""
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    return errors.StorageError(f"storage failed while {doing}: {name}: {exc}")


class _PendingWrite(Generic[T]):
    """One caller's write: its function, and the future its caller awaits.

    A bare asyncio future, not an anyio Event: this is the hottest object in the broker and a
    future costs a fraction of an Event plus a Semaphore (measured: docs/benchmarks.md).
    aiosqlite already ties the broker to asyncio.
    """

    __slots__ = ("atomic", "done", "durable", "error", "fn", "heavy", "result")

    def __init__(
        self,
        fn: WriteFn[T],
        done: asyncio.Future[None],
        heavy: bool,
        atomic: bool,
        durable: bool,
    ) -> None:
        self.fn = fn
        self.done = done
        self.heavy = heavy
        self.atomic = atomic
        self.durable = durable
        self.result: T | None = None
        self.error: BaseException | None = None

    def answer(self) -> None:
        if not self.done.done():  # the caller may have been cancelled meanwhile
            self.done.set_result(None)


@dataclass
class StoreStats:
    """Counters of the group-commit writer, reported in ``stats`` (``store`` section)."""

    commits: int = 0
    writes: int = 0
    largest_batch: int = 0
    #: Seconds the database thread spent running batches, commits included.
    busy_seconds: float = 0.0
    #: Seconds spent in COMMIT alone (the fsync, with synchronous=FULL).
    commit_seconds: float = 0.0
    #: Commits of batches with no durable write (claims, extends, heartbeats only), which
    #: did not wait for the fsync (see Store.write, ``durable``).
    unsynced_commits: int = 0


def configure(conn: sqlite3.Connection, settings: Settings, readonly: bool = False) -> None:
    """Pragmas every connection of ours gets."""
    conn.execute(f"PRAGMA busy_timeout = {int(settings.busy_timeout * 1000)}")
    conn.execute("PRAGMA cache_size = -32768")  # 32 MiB
    conn.execute("PRAGMA temp_store = MEMORY")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    else:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise errors.StorageError(f"could not switch {settings.db_path} to WAL (got {mode})")
        conn.execute(f"PRAGMA synchronous = {settings.synchronous.value}")


class DatabaseLock:
    """An exclusive advisory lock beside the database: one broker per file."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(str(db_path) + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise errors.ConfigError(
                f"database {self.path.with_suffix('')} is in use by another broker "
                f"(pid {holder}); stop it or use another file"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Store:
    """The database of one broker: a group-commit writer and read-only connections."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = Path(settings.db_path)
        self.stats = StoreStats()
        self._writer: aiosqlite.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._next_reader = 0
        self._pending: list[_PendingWrite[Any]] = []
        self._wakeup = anyio.Event()
        self._room = anyio.Event()  # set while fewer than max_pending_writes wait
        self._room.set()
        self._lock = DatabaseLock(self.path)
        self._closing = False
        self._batch = Batch()
        self._batch_started = 0.0
        self.commit_on_loop_max = COMMIT_ON_LOOP_MAX
        self._full_sync = settings.synchronous.value.upper() == "FULL"
        self._unsynced = False  # the writer connection is at NORMAL now, for a lease batch
        self._writer_done = anyio.Event()
        self._task_group: anyio.abc.TaskGroup | None = None

    # --- life cycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Lock the file, connect, migrate, and start the writer task."""
        self._lock.acquire()
        try:
            self._writer = await self._connect(readonly=False)
            await on_db_thread(self._writer, migrate.apply_migrations)
            await self._check_writable(self._writer)
            for _ in range(self.settings.read_connections):
                self._readers.append(await self._connect(readonly=True))
        except BaseException:
            await self._close_connections()
            self._lock.release()
            raise
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._writer_loop, name="durable_tq store writer")

    async def _check_writable(self, writer: aiosqlite.Connection) -> None:
        """Take the write lock once: a file that another process keeps locked is refused at
        start-up, clearly, instead of every write failing after busy_timeout later on (an
        up-to-date WAL database needs no lock to open)."""
        try:
            await on_db_thread(writer, _take_write_lock)
        except sqlite3.Error as exc:
            raise storage_error(
                exc, f"taking the write lock of {self.path} (is another process using it?)"
            ) from exc

    async def close(self) -> None:
        """Finish every pending write, then close the connections and release the file."""
        if self._task_group is None:
            return
        self._closing = True
        self._wakeup.set()
        await self._writer_done.wait()
        await self._task_group.__aexit__(None, None, None)
        self._task_group = None
        if self._writer is not None:
            try:
                await self._writer.execute("PRAGMA optimize")
            except sqlite3.Error as exc:
                log.warning("PRAGMA optimize failed on close: %s", exc)
        await self._close_connections()
        self._lock.release()

    async def _connect(self, *, readonly: bool) -> aiosqlite.Connection:
        try:
            conn = await aiosqlite.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise storage_error(exc, f"opening {self.path}") from exc
        try:
            await on_db_thread(conn, configure, self.settings, readonly)
        except sqlite3.Error as exc:
            await conn.close()
            raise storage_error(exc, f"configuring {self.path}") from exc
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _close_connections(self) -> None:
        for conn in [*self._readers, self._writer]:
            if conn is not None:
                try:
                    await conn.close()
                except sqlite3.Error as exc:  # closing must not hide the real error
                    log.warning("closing a connection failed: %s", exc)
        self._readers.clear()
        self._writer = None

    # --- writes -------------------------------------------------------------------------------

    async def write(
        self, fn: WriteFn[T], *, heavy: bool = False, atomic: bool = False, durable: bool = True
    ) -> T:
        """Run ``fn(conn, batch)`` in the next group commit; return its result once that commit
        is durable.

        ``fn`` raising a DurableTQError undoes its own changes only and is re-raised here.
        ``heavy``: ``fn`` may touch many rows (purge, requeue by queue, a sweep); its batch
        then runs wholly on the database thread instead of on the event loop.
        ``atomic``: ``fn`` cannot half-fail (it raises a DurableTQError only before it writes
        anything), so it runs without a savepoint of its own.
        ``durable=False``: the write is one that PROTOCOL.md does not promise durable (a claim's
        lease, an extend, a heartbeat). A batch made only of such writes commits with
        ``synchronous = NORMAL``: the commit is complete (in the WAL, visible, and it survives
        the broker process being killed) before ``fn``'s caller hears of it, but it does not
        wait for the fsync; the next durable commit's fsync covers it. Only a power loss or an
        OS crash can lose it, and then losing a lease only hands its task out again
        (at-least-once), with the workers that held it gone too. docs/guarantees.md.
        """
        if self._closing:
            raise errors.ShuttingDown("the broker is stopping")
        while len(self._pending) >= self.settings.max_pending_writes:
            # Full: the caller waits here, so its connection stops reading (backpressure).
            if self._room.is_set():
                self._room = anyio.Event()
            await self._room.wait()
        pending = _PendingWrite(
            fn, asyncio.get_running_loop().create_future(), heavy, atomic, durable
        )
        self._pending.append(pending)
        self._wakeup.set()
        await pending.done
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    async def _writer_loop(self) -> None:
        assert self._writer is not None
        writer = self._writer
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
                    if any(pending.heavy for pending in batch):
                        await on_db_thread(writer, self._run_batch, batch)
                    elif self._run_statements(writer._conn, batch):
                        if len(batch) <= self.commit_on_loop_max:
                            self._commit(writer._conn, batch)
                        else:
                            await on_db_thread(writer, self._commit, batch)
                except Exception as exc:  # SAVEPOINT/RELEASE or the thread itself failed
                    log.exception("write batch failed")
                    self._abandon_transaction(writer._conn)
                    for pending in batch:
                        if pending.error is None or pending.result is not None:
                            pending.error = errors.Internal("write batch failed")
                        pending.error.__cause__ = exc
                for pending in batch:
                    pending.answer()
        finally:
            for pending in self._pending:
                pending.error = errors.ShuttingDown("the broker is stopping")
                pending.answer()
            self._pending.clear()
            self._writer_done.set()

    @staticmethod
    def _abandon_transaction(conn: sqlite3.Connection) -> None:
        """Nothing of a failed batch commits, and the next batch can BEGIN again."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("could not roll back a failed batch: %s", exc)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_PendingWrite[Any]]) -> None:
        """On the database thread: one transaction, a savepoint per request, one commit."""
        if self._run_statements(conn, batch):
            self._commit(conn, batch)

    def _run_statements(self, conn: sqlite3.Connection, batch: list[_PendingWrite[Any]]) -> bool:
        """BEGIN and every request (under its savepoint unless atomic); False when nothing is
        left to commit."""
        self._batch_started = time.perf_counter()
        state = self._batch = Batch()
        try:
            self._choose_sync(conn, batch)
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            error = storage_error(exc, "starting a write transaction")
            for pending in batch:
                pending.error = error
            return False
        for pending in batch:
            if pending.atomic:
                if not self._run_atomic(conn, pending, state, batch):
                    return False
                continue
            conn.execute("SAVEPOINT request")
            state.begin_request()
            try:
                pending.result = pending.fn(conn, state)
                state.keep_request()
            except errors.DurableTQError as exc:
                pending.error = exc
                conn.execute("ROLLBACK TO request")
            except sqlite3.Error as exc:
                pending.error = self._request_failed(conn, exc)
                if not conn.in_transaction:  # SQLite rolled the whole transaction back
                    self._fail_batch(batch, pending.error)
                    return False
            except Exception as exc:
                log.exception("write request failed")
                pending.error = errors.Internal(f"{type(exc).__name__} in a write")
                conn.execute("ROLLBACK TO request")
            conn.execute("RELEASE request")
        return self._write_counts(conn, batch)

    def _choose_sync(self, conn: sqlite3.Connection, batch: list[_PendingWrite[Any]]) -> None:
        """Under synchronous=FULL, a batch without a durable write commits with NORMAL (see
        :meth:`write`). SQLite takes the level only outside a transaction, so it is set here,
        before BEGIN, and only when it changes."""
        if not self._full_sync:
            return
        unsynced = not any(pending.durable for pending in batch)
        if unsynced != self._unsynced:
            conn.execute(f"PRAGMA synchronous = {'NORMAL' if unsynced else 'FULL'}")
            self._unsynced = unsynced

    def _run_atomic(
        self,
        conn: sqlite3.Connection,
        pending: _PendingWrite[Any],
        state: Batch,
        batch: list[_PendingWrite[Any]],
    ) -> bool:
        """A write that cannot half-fail, run without a savepoint. A storage error in it may
        have left part of it behind, so then the whole batch is rolled back (False)."""
        state.begin_request()
        try:
            pending.result = pending.fn(conn, state)
            state.keep_request()
        except errors.DurableTQError as exc:
            pending.error = exc  # raised before it wrote anything: nothing to undo
            state.begin_request()
        except Exception as exc:
            if isinstance(exc, sqlite3.Error):
                log.error("write request failed in SQLite: %s", exc)
                error: errors.DurableTQError = storage_error(exc, "writing")
            else:
                log.exception("write request failed")
                error = errors.Internal(f"{type(exc).__name__} in a write")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._fail_batch(batch, error)
            return False
        return True

    def _write_counts(self, conn: sqlite3.Connection, batch: list[_PendingWrite[Any]]) -> bool:
        rows = [(queue, state, n) for (queue, state), n in self._batch.moves.items() if n]
        if not rows:
            return True
        try:
            conn.executemany(queries.ADD_TO_COUNTS, rows)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._fail_batch(batch, storage_error(exc, "counting"))
            return False
        return True

    def _commit(self, conn: sqlite3.Connection, batch: list[_PendingWrite[Any]]) -> None:
        """COMMIT (the fsync) and count; a failed commit fails every request of the batch."""
        committing = time.perf_counter()
        unsynced = self._unsynced
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._fail_batch(batch, storage_error(exc, "committing"))
            return
        done = time.perf_counter()
        stats = self.stats
        stats.unsynced_commits += unsynced
        stats.commits += 1
        stats.writes += len(batch)
        stats.largest_batch = max(stats.largest_batch, len(batch))
        stats.busy_seconds += done - self._batch_started
        stats.commit_seconds += done - committing

    def _request_failed(self, conn: sqlite3.Connection, exc: sqlite3.Error) -> errors.StorageError:
        log.error("write request failed in SQLite: %s", exc)
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK TO request")
            except sqlite3.Error:
                conn.execute("ROLLBACK")
        return storage_error(exc, "writing")

    @staticmethod
    def _fail_batch(batch: list[_PendingWrite[Any]], error: errors.DurableTQError) -> None:
        """Nothing of this batch was committed: every caller gets the error."""
        for pending in batch:
            pending.result = None
            pending.error = error

    # --- reads --------------------------------------------------------------------------------

    async def read(self, fn: ReadFn[T]) -> T:
        """Run ``fn`` on a read-only connection, in one read transaction (a consistent view)."""
        if not self._readers:
            raise errors.ShuttingDown("the store is closed")
        reader = self._readers[self._next_reader % len(self._readers)]
        self._next_reader += 1
        try:
            return await on_db_thread(reader, _in_read_transaction, fn)
        except sqlite3.Error as exc:
            raise storage_error(exc, "reading") from exc

    @property
    def pending_writes(self) -> int:
        return len(self._pending)


def _take_write_lock(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ROLLBACK")


def _in_read_transaction(conn: sqlite3.Connection, fn: ReadFn[T]) -> T:
    conn.execute("BEGIN")
    try:
        return fn(conn)
    finally:
        conn.execute("COMMIT")


def open_readonly(path: Path) -> sqlite3.Connection:
    """A plain read-only connection for tools (CLI ``--db``), without the broker's lock."""
    if not Path(path).exists():
        raise errors.ConfigError(f"database {path} does not exist")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
    except sqlite3.Error as exc:
        raise storage_error(exc, f"opening {path} read-only") from exc
    return conn
