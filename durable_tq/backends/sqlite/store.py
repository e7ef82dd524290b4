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
import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiosqlite
import anyio

from durable_tq import errors
from durable_tq.backends.sqlite import migrate, queries
from durable_tq.config import Settings

log = logging.getLogger("durable_tq.backends.sqlite.store")

T = TypeVar("T")
ReadFn = Callable[[sqlite3.Connection], T]

#: A batch of at most this many writes commits on the event loop's thread: the fsync then
#: blocks the loop, but a lone request (one client, one request at a time) saves the two
#: thread crossings and answers 2x sooner (measured: 508-522 -> 1,137-1,211 enqueues/s, 35%
#: less broker CPU each). Larger batches commit on the database thread, so the loop reads
#: and parses the next requests while the disk works and the next group commit forms: with 4
#: and 16 producers a limit of 1 beat a limit of 4 by 30-60% (docs/benchmarks.md).
COMMIT_ON_LOOP_MAX = 1


class Batch:
    """What the write functions of one transaction share; passed to each of them.

    ``moved`` records the state changes a write makes, so ``queue_counts`` stays exact; they
    count only if that write succeeds (a failed write's are dropped with its savepoint).
    ``memo`` keeps values read once per transaction (a queue's depth when the batch began).
    ``finished`` records the tasks a write finished (or deleted), likewise kept only if the
    write succeeds: before COMMIT the store's ``before_commit`` hook resolves their
    dependents, and after it ``after_commit`` wakes whoever waits for them.
    """

    __slots__ = ("done", "memo", "moves", "request_done", "request_moves")

    def __init__(self) -> None:
        self.memo: dict[Any, Any] = {}
        #: Net state changes of the writes that succeeded so far: (queue, state) -> n.
        self.moves: Counter[tuple[str, str]] = Counter()
        #: Those of the write running now.
        self.request_moves: Counter[tuple[str, str]] = Counter()
        #: Tasks finished by the writes that succeeded so far: (task_id, state), where the
        #: state is ``succeeded``, ``dead``, ``cancelled`` or ``deleted``.
        self.done: list[tuple[int, str]] = []
        self.request_done: list[tuple[int, str]] = []

    def finished(self, task_id: int, state: str) -> None:
        """Task ``task_id`` reached a final ``state`` (or ``deleted``: its row is gone)."""
        self.request_done.append((task_id, state))

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

    def readied(self) -> set[str]:
        """Queues this transaction (so far, the write running now included) added ready
        tasks to: with :attr:`Store.ready_queues`, every queue that may hold one."""
        return {
            queue
            for moves in (self.moves, self.request_moves)
            for (queue, state), n in moves.items()
            if n > 0 and state == "queued"
        }

    def begin_request(self) -> None:
        if self.request_moves:
            self.request_moves = Counter()
        if self.request_done:
            self.request_done = []

    def keep_request(self) -> None:
        if self.request_moves:
            self.moves.update(self.request_moves)
            self.request_moves = Counter()
        if self.request_done:
            self.done.extend(self.request_done)
            self.request_done = []


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


FileIdentity = tuple[int, int]  # (st_dev, st_ino): which file a path names


def _identity(st: os.stat_result) -> FileIdentity:
    return (st.st_dev, st.st_ino)


def _path_identity(path: Path) -> FileIdentity | None:
    try:
        return _identity(os.stat(path))
    except FileNotFoundError:
        return None


def _proc_locks(identity: FileIdentity, kind: str) -> list[int]:
    """Pids holding ``kind`` locks (FLOCK, POSIX) on the file, from Linux's /proc/locks;
    empty where there is no /proc."""
    device = f"{os.major(identity[0]):02x}:{os.minor(identity[0]):02x}:{identity[1]}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return []
    pids = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:56789 0 EOF" (blocked waiters have "->")
        if len(fields) >= 6 and fields[1] == kind and fields[5] == device:
            pids.append(int(fields[4]))
    return pids


#: Descriptors of database files whose close had to wait: see _close_database_fd.
_deferred_closes: list[tuple[int, FileIdentity]] = []


def _close_database_fd(fd: int, identity: FileIdentity) -> None:
    """Close our own descriptor of a database file without breaking SQLite's locks.

    Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
    included (https://www.sqlite.org/howtocorrupt.html, 2.2). While another SQLite
    connection of this process holds locks on the file, the close waits for a later call.
    """
    _deferred_closes.append((fd, identity))
    pid = os.getpid()
    for waiting in list(_deferred_closes):
        if pid not in _proc_locks(waiting[1], "POSIX"):
            _deferred_closes.remove(waiting)
            os.close(waiting[0])


def _open_database_file(path: Path) -> int:
    """Open (or create, owner-only whatever the umask) the database file for our lock.

    SQLite creates ``-wal`` and ``-shm`` with the database file's permissions, so they are
    owner-only too. A file this user cannot write is refused here, before SQLite opens it
    read-only and the broker looks healthy while every write fails.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise errors.ConfigError(f"the folder of database {path} does not exist") from None
    except OSError as exc:
        raise errors.ConfigError(
            f"cannot create database {path}: {exc.strerror} (the broker's user needs to write "
            "the database's folder)"
        ) from None
    else:
        os.fchmod(fd, 0o600)
        return fd
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise errors.ConfigError(
                f"database {path} is read-only for this user (uid {os.geteuid()}): "
                f"{exc.strerror}; the broker must be able to write it and its folder"
            ) from None
        raise errors.ConfigError(f"cannot open database {path}: {exc.strerror}") from None


class DatabaseLock:
    """One broker per database file.

    The lock is an exclusive ``flock`` on the database file itself, found through its real
    path: a symlink or a second name of the same file meets the same lock, and nobody can
    delete the lock without deleting the database. (Linux keeps ``flock`` and the POSIX locks
    SQLite takes on the same file apart.) ``<db>.lock`` beside it names the holder's pid for
    people and for older brokers, which lock only that file; it is removed on a clean stop.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path).resolve()
        self.path = Path(f"{self.db_path}.lock")
        self.db_identity: FileIdentity | None = None
        self._db_fd: int | None = None
        self._lock_fd: int | None = None
        self._lock_identity: FileIdentity | None = None
        self.wal_path = Path(f"{self.db_path}-wal")
        self._wal_identity: FileIdentity | None = None
        #: Why writes are refused (the database or its WAL went away under us), or None.
        self.failure: str | None = None

    def acquire(self) -> None:
        db_fd = _open_database_file(self.db_path)
        identity = _identity(os.fstat(db_fd))
        try:
            fcntl.flock(db_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _close_database_fd(db_fd, identity)
            raise self._in_use(_proc_locks(identity, "FLOCK")) from None
        self._db_fd, self.db_identity = db_fd, identity
        try:
            self._take_lock_file()
        except BaseException:
            self._release_database()
            raise

    def _in_use(self, pids: list[int]) -> errors.ConfigError:
        holder = str(pids[0]) if pids else self._pid_in_lock_file() or "unknown"
        return errors.ConfigError(
            f"database {self.db_path} is in use by another broker (pid {holder}); "
            "stop it or use another file"
        )

    def _pid_in_lock_file(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""

    def _take_lock_file(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise errors.ConfigError(f"cannot open lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a broker of an older durable_tq, which locks only this file
            identity = _identity(os.fstat(fd))
            os.close(fd)
            raise self._in_use(_proc_locks(identity, "FLOCK")) from None
        with contextlib.suppress(OSError):  # not ours to change: it still names us
            os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd, self._lock_identity = fd, _identity(os.fstat(fd))

    def note_wal(self) -> None:
        """Remember which file the WAL is, once SQLite has opened it (see check)."""
        self._wal_identity = _path_identity(self.wal_path)

    def check(self) -> str | None:
        """Are the database and its WAL still the files we opened? Sets and returns
        ``failure`` when not. A deleted or replaced lock file is written again (the lock
        itself is on the database file, so nothing got in meanwhile)."""
        if self.failure is None:
            self.failure = self._files_problem()
        if self.failure is None:
            self._repair_lock_file()
        return self.failure

    def _files_problem(self) -> str | None:
        if _path_identity(self.db_path) != self.db_identity:
            return (
                f"the database file {self.db_path} was deleted or replaced while the broker "
                "ran, so writes are refused. The broker still holds the old file open: put it "
                "(or a backup) back before restarting the broker"
            )
        wal = _path_identity(self.wal_path)
        if self._wal_identity is None:  # not opened yet when note_wal ran
            self._wal_identity = wal
        elif wal != self._wal_identity:
            # SQLite keeps writing to the deleted file through its open descriptor: commits
            # would look durable and vanish at the next crash.
            return (
                f"the write-ahead log {self.wal_path} was deleted or replaced while the broker "
                "ran, so writes are refused: what they commit would be lost at the next crash. "
                "Restart the broker: a clean stop (SIGTERM) first copies what the deleted log "
                "holds into the database"
            )
        return None

    def _repair_lock_file(self) -> None:
        if _path_identity(self.path) != self._lock_identity:
            old_fd = self._lock_fd
            try:
                self._take_lock_file()
            except errors.ConfigError as exc:
                log.warning(
                    "lock file %s is gone and could not be written again: %s",
                    self.path,
                    exc.message,
                )
            else:
                log.warning(
                    "lock file %s was deleted or replaced while the broker ran; wrote it again",
                    self.path,
                )
                if old_fd is not None:
                    os.close(old_fd)

    def release(self) -> None:
        if self._lock_fd is not None:
            # Removed while still held, and only if it is still ours: a clean stop leaves no
            # file behind that someone might think stale and delete while a broker runs.
            if _path_identity(self.path) == self._lock_identity:
                with contextlib.suppress(OSError):
                    self.path.unlink()
            os.close(self._lock_fd)
            self._lock_fd = None
        self._release_database()

    def _release_database(self) -> None:
        if self._db_fd is not None and self.db_identity is not None:
            fcntl.flock(self._db_fd, fcntl.LOCK_UN)
            _close_database_fd(self._db_fd, self.db_identity)
            self._db_fd = None


class Store:
    """The database of one broker: a group-commit writer and read-only connections."""

    queries = queries

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
        #: Committed tasks per (queue, state), as in ``queue_counts``: loaded at open, kept
        #: exact after each commit. A claim over many queues reads only those with ready tasks.
        self.counts: Counter[tuple[str, str]] = Counter()
        #: Queues whose committed count of ready tasks is above zero.
        self.ready_queues: set[str] = set()
        self.commit_on_loop_max = COMMIT_ON_LOOP_MAX
        self._full_sync = settings.synchronous.value.upper() == "FULL"
        self._unsynced = False  # the writer connection is at NORMAL now, for a lease batch
        self._writer_done = anyio.Event()
        self._task_group: anyio.abc.TaskGroup | None = None
        #: Called in the transaction, after the batch's writes and before COMMIT, when some
        #: write finished tasks (``Batch.finished``): the broker resolves dependents there.
        self.before_commit: Callable[[sqlite3.Connection, Batch], None] | None = None
        #: Called on the event loop after a COMMIT whose batch finished tasks.
        self.after_commit: Callable[[Batch], None] | None = None
        self._committed = False
        #: The only writer of its file: no other broker's commits to hear of.
        self.shared = False
        self.on_ready: Callable[[str, int], None] | None = None
        self.on_done: Callable[[list[int]], None] | None = None
        self.on_queue_changed: Callable[[str], None] | None = None

    # --- life cycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Lock the file, connect, migrate, and start the writer and the file watch."""
        self._lock.acquire()
        try:
            self._writer = await self._connect(readonly=False)
            await on_db_thread(self._writer, migrate.apply_migrations)
            await self._check_writable(self._writer)
            rows = await on_db_thread(
                self._writer, lambda conn: conn.execute(queries.QUEUE_COUNTS).fetchall()
            )
            self.counts = Counter({(queue, state): n for queue, state, n in rows})
            self.ready_queues = {q for (q, state), n in self.counts.items() if state == "queued"}
            for _ in range(self.settings.read_connections):
                self._readers.append(await self._connect(readonly=True))
        except BaseException:
            await self._close_connections()
            self._lock.release()
            raise
        self._lock.note_wal()
        self._watch_scope = anyio.CancelScope()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._writer_loop, name="durable_tq store writer")
        self._task_group.start_soon(self._watch_files, name="durable_tq store file watch")

    async def _watch_files(self) -> None:
        """Every file_check_interval: is the database still the file we opened, and its WAL?"""
        with self._watch_scope:
            while True:
                await anyio.sleep(self.settings.file_check_interval)
                failure = self._lock.check()
                if failure is not None:
                    log.critical("%s", failure)
                    return

    async def _check_writable(self, writer: aiosqlite.Connection) -> None:
        """Take the write lock once and write in it: a file that another process keeps locked,
        or that SQLite can only read, is refused at start-up, clearly, instead of every write
        failing later on (an up-to-date WAL database needs no lock to open, and a read-only
        one opens without complaint)."""
        try:
            await on_db_thread(writer, _take_write_lock)
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_READONLY"):
                raise errors.ConfigError(
                    f"database {self.path} is read-only for this broker (uid {os.geteuid()}): "
                    f"{exc}; it must be able to write the database, its -wal and -shm files "
                    "and their folder"
                ) from exc
            raise storage_error(
                exc, f"taking the write lock of {self.path} (is another process using it?)"
            ) from exc

    async def close(self) -> None:
        """Finish every pending write, then close the connections and release the file."""
        if self._task_group is None:
            return
        self._closing = True
        self._watch_scope.cancel()
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
            # The real path, which the lock is on: a symlink's folder would otherwise get the
            # -wal and -shm of a second view of the file.
            conn = await aiosqlite.connect(
                self._lock.db_path, isolation_level=None, check_same_thread=False
            )
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
        if self._lock.failure is not None:
            raise errors.StorageError(self._lock.failure)
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
                self._committed = False
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
                if self._committed and self._batch.done and self.after_commit is not None:
                    try:
                        self.after_commit(self._batch)
                    except Exception:  # committed: the callers still get their answers
                        log.exception("after-commit hook failed")
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
        if self._batch.done and self.before_commit is not None:
            try:
                self._batch.begin_request()
                self.before_commit(conn, self._batch)
                self._batch.keep_request()
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._fail_batch(batch, storage_error(exc, "resolving finished tasks"))
                return False
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
        counts = self.counts
        for key, n in self._batch.moves.items():
            if n:
                counts[key] += n
                if key[1] == "queued":
                    if counts[key] > 0:
                        self.ready_queues.add(key[0])
                    else:
                        self.ready_queues.discard(key[0])
        self._committed = True
        stats = self.stats
        stats.unsynced_commits += unsynced
        stats.commits += 1
        stats.writes += len(batch)
        stats.largest_batch = max(stats.largest_batch, len(batch))
        stats.busy_seconds += done - self._batch_started
        stats.commit_seconds += done - committing
        if self.commit_hook is not None:
            self.commit_hook(len(batch), done - committing)

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

    def may_have_ready(self, queues: Iterable[str]) -> bool:
        """False when no queue of ``queues`` holds a committed ready task (this broker is the
        database's only writer, so its counts know)."""
        return not self.ready_queues.isdisjoint(queues)

    @property
    def pending_writes(self) -> int:
        return len(self._pending)

    async def lead(self) -> bool:
        """The only broker on its file always runs the sweeps."""
        return True

    #: Called after each commit with (write requests in the batch, seconds in COMMIT), maybe
    #: on the database thread; the HTTP face's metrics histograms set it.
    commit_hook: Callable[[int, float], None] | None = None


def _take_write_lock(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        # A write that changes nothing: SQLite reports a file it can only read here.
        version = migrate.current_version(conn)
        conn.execute(f"PRAGMA user_version = {version}")
    finally:
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
