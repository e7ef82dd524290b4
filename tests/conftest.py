"""Fixtures shared by every kind of test: real SQLite files in temp folders, real brokers."""

from __future__ import annotations

import os
import queue as queue_module
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from durable_tq.config import Settings, load_settings
from durable_tq.core.broker import Broker
from durable_tq.core.sweeper import Sweeper
from durable_tq.servers.tcp import BrokerServer


@pytest.fixture
def anyio_backend() -> str:
    # aiosqlite runs on asyncio only.
    return "asyncio"


# --- backends: SQLite files, or one PostgreSQL database per test run ------------------------
#
# A test module marked ``pytest.mark.postgres`` runs each of its tests twice: on a fresh SQLite
# file (``[sqlite]``) and on PostgreSQL (``[postgres]``): a database
# ``durable_tq_test_<random>`` created for the run on DURABLE_TQ_TEST_PG (default
# postgresql://postgres@127.0.0.1:5432/postgres) and dropped after it, emptied before each
# test. A test of SQLite itself in such a module is marked ``pytest.mark.sqlite_only``.
# Without a reachable PostgreSQL the [postgres] tests skip, saying why; in CI (CI=true) they
# fail with that message instead.

PG_ADMIN_URL = os.environ.get("DURABLE_TQ_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
_PG_TABLES = "tasks, task_deps, queues, queue_counts, workers, schedules"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_backend" not in metafunc.fixturenames:
        return
    both = metafunc.definition.get_closest_marker("postgres") is not None
    if both and metafunc.definition.get_closest_marker("sqlite_only") is None:
        metafunc.parametrize("db_backend", ["sqlite", "postgres"], indirect=True)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """The URL of this run's PostgreSQL database (created now, dropped at the end)."""
    try:
        import psycopg
    except ImportError as exc:
        _no_postgres(f"psycopg is not installed ({exc}): pip install 'durable_tq[postgres]'")
    name = f"durable_tq_test_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        _no_postgres(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc}".strip())
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _no_postgres(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI needs PostgreSQL for the [postgres] tests: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL for the [postgres] tests: {reason}")


def empty_postgres(url: str) -> None:
    """Remove every row a test may have left (the schema stays: the next broker finds it)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '20s'")
        exists = conn.execute("SELECT to_regclass('tasks') IS NOT NULL").fetchone()
        if exists and exists[0]:
            conn.execute(f"TRUNCATE {_PG_TABLES} RESTART IDENTITY")


@pytest.fixture
def db_backend(request: pytest.FixtureRequest) -> str:
    """The backend of this test: sqlite, or postgres in a module marked postgres (above)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def db_url(db_backend: str, request: pytest.FixtureRequest) -> str | None:
    """The emptied PostgreSQL database of a [postgres] test; None on SQLite."""
    if db_backend != "postgres":
        return None
    url = str(request.getfixturevalue("postgres_database"))
    empty_postgres(url)
    return url


@pytest.fixture
def make_settings(tmp_path: Path, db_url: str | None) -> Callable[..., Settings]:
    """Settings on a fresh database (a file in this test's temp folder, or the emptied
    PostgreSQL database of a [postgres] test), port 0, loopback."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "db_path": tmp_path / "broker.db",
            "db_url": db_url,
            "host": "127.0.0.1",
            "port": 0,
            "sweep_interval": 0.1,
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def broker(settings: Settings) -> AsyncIterator[Broker]:
    """An open broker with its sweeper running, no network."""
    async with Broker(settings) as opened, anyio.create_task_group() as tg:
        tg.start_soon(Sweeper(opened).run)
        yield opened
        tg.cancel_scope.cancel()


# --- brokers on real ports (durable_tq.servers.tcp) -----------------------------------------------
#
# ``server`` / ``broker_url``: an in-process broker on 127.0.0.1, port 0, on the ``settings``
# fixture's fresh database; shut down gracefully after the test.
# ``make_server``: the same with settings of your own (``async with make_server(max_connections=2)
# as srv``).
# ``serve_subprocess``: ``python -m durable_tq serve`` as a real child process, for signals,
# SIGKILL and restarts (see BrokerProcess).


#: A graceful shutdown of a test broker must finish within this (it normally takes milliseconds).
SERVER_SHUTDOWN_LIMIT = 30.0


@asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[BrokerServer]:
    """A started :class:`BrokerServer` on ``settings``; gracefully shut down on exit."""
    async with anyio.create_task_group() as tg:
        server: BrokerServer = await tg.start(BrokerServer(settings).serve)
        try:
            yield server
        finally:
            server.request_shutdown()
            # serve() returns once every connection is closed and the database is closed;
            # the task group waits for it. Bounded so a broken shutdown fails instead of hanging.
            with anyio.fail_after(SERVER_SHUTDOWN_LIMIT):
                await server.wait_stopped()


@pytest.fixture
def make_server(
    make_settings: Callable[..., Settings],
) -> Callable[..., AbstractAsyncContextManager[BrokerServer]]:
    """``async with make_server(**overrides) as server``: a broker on port 0 with those settings
    (on top of ``make_settings``: fresh database file in tmp_path, sweep_interval 0.1)."""

    def make(**overrides: Any) -> AbstractAsyncContextManager[BrokerServer]:
        return running_server(make_settings(**overrides))

    return make


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[BrokerServer]:
    """An in-process broker listening on 127.0.0.1 (port 0) with the ``settings`` fixture.

    ``server.url`` is ``tcp://127.0.0.1:PORT``; ``server.broker`` is the :class:`Broker`
    (for looking inside). Shut down gracefully after the test (database closed cleanly).
    Async tests only; a blocking client must run in a worker thread
    (``anyio.to_thread.run_sync``) so the broker on the test's event loop keeps serving.
    """
    async with running_server(settings) as started:
        yield started


@pytest.fixture
async def broker_url(server: BrokerServer) -> str:
    """``tcp://127.0.0.1:PORT`` of the ``server`` fixture."""
    return server.url


_LISTENING = re.compile(r"listening on (?P<url>\S+) \(database (?P<db>.+)\)")
_HTTP_LISTENING = re.compile(r"HTTP API on (?P<url>https?://\S+)")


class BrokerProcess:
    """``python -m durable_tq serve`` running as a child process on one database file.

    Attributes: ``url`` (``tcp://127.0.0.1:PORT``), ``port``, ``proc`` (the ``Popen``),
    ``db_path``, ``log_path`` (the broker's stderr log; ``log_text()`` reads it).
    ``terminate()`` (SIGTERM, graceful) and ``kill()`` (SIGKILL) wait for the exit and return
    the exit code; ``restart()`` starts it again on the same file and the same port.
    """

    def __init__(
        self,
        db_path: Path | str,
        workdir: Path,
        *,
        args: list[str],
        env: dict[str, str],
        start_timeout: float,
    ) -> None:
        self.db_path = db_path
        self.workdir = workdir
        self.args = args
        self.env = env
        self.start_timeout = start_timeout
        self.log_path = workdir / "broker.log"
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._stdout_thread: threading.Thread | None = None
        self._stdout_lines: queue_module.Queue[bytes | None] | None = None
        self._http_url: str | None = None

    # --- life cycle ---

    def start(self, port: int | None = None) -> BrokerProcess:
        """Start the broker (port 0 unless given) and wait for its listening line."""
        if self.running:
            raise RuntimeError("the broker process is already running")
        self.starts += 1
        command = [
            sys.executable, "-m", "durable_tq", "serve",
            "--host", "127.0.0.1",
            "--port", str(self.port if port is None else port),
            "--db", str(self.db_path),
            *self.args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log_file:
            log_file.write(f"--- start #{self.starts}: {' '.join(command)}\n".encode())
            log_file.flush()
            self.proc = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=self.env,
            )
        lines: queue_module.Queue[bytes | None] = queue_module.Queue()
        self._stdout_thread = threading.Thread(
            target=_pump_lines, args=(self.proc, lines), daemon=True
        )
        self._stdout_thread.start()
        try:
            match = _await_listening(lines, self.start_timeout)
        except BaseException:
            self.kill()
            raise
        if match is None:
            code = self.proc.poll()
            self.kill()
            raise RuntimeError(
                f"the broker did not report listening within {self.start_timeout} s "
                f"(exit code {code}); its log:\n{self.log_text()[-4000:]}"
            )
        self.url = match["url"]
        self.port = int(self.url.rsplit(":", 1)[1])
        self._stdout_lines, self._http_url = lines, None
        return self

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the HTTP API: the line serve prints after listening."""
        if self._http_url is None:
            assert self._stdout_lines is not None, "start() first"
            match = _await_line(self._stdout_lines, _HTTP_LISTENING, self.start_timeout)
            if match is None:
                raise RuntimeError(f"the broker printed no HTTP line; its log:\n{self.log_text()}")
            self._http_url = match["url"]
        return self._http_url

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send_signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit; its exit code."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        finally:
            self._reap()
        return code

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful shutdown) and wait for the exit; the exit code (0 when clean)."""
        if self.proc is None:
            raise RuntimeError("the broker process was never started")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> int:
        """SIGKILL: a crash, no shutdown at all. Waits for the exit; the exit code."""
        if self.proc is None:
            raise RuntimeError("the broker process was never started")
        if self.proc.poll() is None:
            self.proc.kill()
        return self.wait(30.0)

    def restart(self, *, graceful: bool = True, same_port: bool = True) -> BrokerProcess:
        """Stop (SIGTERM, or SIGKILL with ``graceful=False``) if running, then start again on
        the same database file and (unless ``same_port=False``) the same port."""
        if self.running:
            if graceful:
                self.terminate()
            else:
                self.kill()
        return self.start(port=None if same_port else 0)

    def log_text(self) -> str:
        """The broker's stderr (all starts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _reap(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            if self._stdout_thread is not None:
                self._stdout_thread.join(5.0)
                self._stdout_thread = None
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def _pump_lines(proc: subprocess.Popen[bytes], lines: queue_module.Queue[bytes | None]) -> None:
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.put(line)
    except (OSError, ValueError):  # closed under us
        pass
    finally:
        lines.put(None)


def _await_listening(
    lines: queue_module.Queue[bytes | None], timeout: float
) -> re.Match[str] | None:
    return _await_line(lines, _LISTENING, timeout)


def _await_line(
    lines: queue_module.Queue[bytes | None], pattern: re.Pattern[str], timeout: float
) -> re.Match[str] | None:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            line = lines.get(timeout=remaining)
        except queue_module.Empty:
            return None
        if line is None:  # stdout closed: the process ended
            return None
        match = pattern.search(line.decode(errors="replace"))
        if match is not None:
            return match


@pytest.fixture
def serve_subprocess(tmp_path: Path) -> Iterator[Callable[..., BrokerProcess]]:
    """Factory: ``serve_subprocess(db_path=None, *, args=(), env=None, start_timeout=30)``
    starts ``python -m durable_tq serve --host 127.0.0.1 --port 0 --db DB`` and returns a
    started :class:`BrokerProcess` once it printed its listening line.

    ``db_path`` defaults to ``tmp_path/"subprocess.db"``; ``args`` are extra CLI flags;
    ``env`` adds environment variables (e.g. ``{"DURABLE_TQ_SWEEP_INTERVAL": "0.1"}``);
    the developer's own DURABLE_TQ_* variables are not passed on, and the process runs in a
    folder of its own (no stray durable_tq.toml). Every process is stopped after the test
    (SIGKILL if still running).
    """
    started: list[BrokerProcess] = []

    def start(
        db_path: Path | str | None = None,
        *,
        args: tuple[str, ...] | list[str] = (),
        env: dict[str, str] | None = None,
        start_timeout: float = 30.0,
    ) -> BrokerProcess:
        workdir = tmp_path / f"broker-{len(started) + 1}"
        workdir.mkdir()
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
        child_env.update(env or {})
        process = BrokerProcess(
            tmp_path / "subprocess.db" if db_path is None else db_path,
            workdir,
            args=list(args),
            env=child_env,
            start_timeout=start_timeout,
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        if process.proc is not None:
            process.kill()


class RawConnection:
    """A bare NDJSON connection to a broker, for tests of the wire itself (no client library).

    ``await conn.request("stats")`` sends one request with a fresh id and returns the reply
    with that id (replies with other ids that arrive first are kept for ``reply_to``);
    ``send``/``send_line`` write without waiting; ``receive`` reads the next reply;
    ``at_eof()`` tells whether the broker closed the connection. Every read is bounded by
    ``within`` seconds (a ``TimeoutError`` instead of a hang).
    """

    def __init__(self, stream: Any, within: float) -> None:
        from anyio.streams.buffered import BufferedByteReceiveStream

        self.stream = stream
        self.buffered = BufferedByteReceiveStream(stream)
        self.within = within
        self.next_id = 0
        self.unclaimed: dict[Any, dict[str, Any]] = {}

    async def send_line(self, line: bytes) -> None:
        await self.stream.send(line if line.endswith(b"\n") else line + b"\n")

    async def send(self, op: str | None = None, *, id: Any = "auto", **args: Any) -> Any:
        """Send one request; returns the id used (``id=None`` sends no id at all)."""
        import json

        frame: dict[str, Any] = {}
        if id == "auto":
            self.next_id += 1
            id = self.next_id
        if id is not None:
            frame["id"] = id
        if op is not None:
            frame["op"] = op
        frame.update(args)
        await self.send_line(json.dumps(frame).encode())
        return id

    async def receive(self, within: float | None = None) -> dict[str, Any]:
        import json

        with anyio.fail_after(self.within if within is None else within):
            line = await self.buffered.receive_until(b"\n", 64 << 20)
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def reply_to(self, request_id: Any, within: float | None = None) -> dict[str, Any]:
        """The reply carrying ``request_id``, reading (and keeping) others until it comes."""
        with anyio.fail_after(self.within if within is None else within):
            while request_id not in self.unclaimed:
                reply = await self.receive(within=float("inf"))
                self.unclaimed[reply.get("id")] = reply
        return self.unclaimed.pop(request_id)

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        return await self.reply_to(await self.send(op, **args))

    async def hello(self, **args: Any) -> dict[str, Any]:
        args.setdefault("version", 1)
        args.setdefault("client", "raw-test")
        reply = await self.request("hello", **args)
        return reply

    async def at_eof(self, within: float | None = None) -> bool:
        """True when the broker closed the connection (after any replies still unread)."""
        with anyio.fail_after(self.within if within is None else within):
            try:
                data = await self.buffered.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return True
        raise AssertionError(f"expected the connection to be closed, got {data[:200]!r}")

    async def aclose(self) -> None:
        await self.stream.aclose()


def _split_url(url: str) -> tuple[str, str, int]:
    scheme, rest = url.split("://", 1)
    host, port = rest.rsplit(":", 1)
    return scheme, host.strip("[]"), int(port)


@pytest.fixture
def raw_connect() -> Callable[..., AbstractAsyncContextManager[RawConnection]]:
    """``async with raw_connect(url, hello=True, ssl_context=None, within=10) as conn``:
    a :class:`RawConnection` (already greeted when ``hello`` is true; pass a dict to give
    hello arguments such as ``{"token": "..."}``). A ``tls://`` url needs ``ssl_context``."""

    @asynccontextmanager
    async def connect(
        url: str,
        *,
        hello: bool | dict[str, Any] = True,
        ssl_context: Any = None,
        within: float = 10.0,
    ) -> AsyncIterator[RawConnection]:
        scheme, host, port = _split_url(url)
        with anyio.fail_after(within):
            if scheme == "tls":
                stream: Any = await anyio.connect_tcp(
                    host, port, tls=True, ssl_context=ssl_context, tls_standard_compatible=False
                )
            else:
                stream = await anyio.connect_tcp(host, port)
        conn = RawConnection(stream, within)
        try:
            if hello:
                reply = await conn.hello(**(hello if isinstance(hello, dict) else {}))
                assert reply["ok"], reply
            yield conn
        finally:
            await anyio.aclose_forcefully(stream)

    return connect
