"""Resource faults: many idle connections, a peer that never reads, a full disk, a locked file.

In every case the broker must stay bounded and keep serving the healthy clients, refuse
what it cannot do with a clear error, and lose or corrupt nothing.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psutil
import pytest

from durable_tq import errors
from durable_tq.backends.sqlite.store import on_db_thread
from durable_tq.client import AsyncClient
from durable_tq.servers.tcp import BrokerServer
from durable_tq.tools.torture import integrity_check

pytestmark = pytest.mark.anyio

MakeServer = Callable[..., AbstractAsyncContextManager[BrokerServer]]
ServeSubprocess = Callable[..., Any]

HELLO = b'{"id":0,"op":"hello","version":1}\n'


def _client(port: int) -> AsyncClient:
    return AsyncClient("127.0.0.1", port, timeout=15.0, busy_retries=0)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
    env.update(extra)
    return env


async def _round_trip(client: AsyncClient, queue: str, within: float = 10.0) -> None:
    """The full life of one task, bounded in time."""
    with anyio.fail_after(within):
        task_id = (await client.enqueue(queue, {"check": queue})).task_id
        [task] = await client.claim(queue, wait=2.0)
        assert task.task_id == task_id
        await client.ack(task_id, task.lease_token)
        assert (await client.get(task_id)).state == "succeeded"


# --- many idle connections ----------------------------------------------------------------------

IDLE = 1000


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} file descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@pytest.mark.slow
async def test_a_thousand_idle_connections_and_a_healthy_client(make_server: MakeServer) -> None:
    # Both ends of every connection live in this process.
    _raise_fd_limit(2 * IDLE + 256)
    idle: list[anyio.abc.SocketStream] = []
    async with make_server(max_connections=IDLE + 1, hello_timeout=120.0) as server:
        try:
            for n in range(IDLE):
                stream = await anyio.connect_tcp("127.0.0.1", server.port)
                idle.append(stream)
                if n % 2 == 0:  # half of them greeted, half never say a word
                    await stream.send(HELLO)
            async with _client(server.port) as healthy:
                for _ in range(400):  # until the broker has taken every one of them
                    if (await healthy.stats()).connections >= IDLE + 1:
                        break
                    await anyio.sleep(0.05)
                else:
                    raise AssertionError("the broker did not take all the connections")
                started = time.monotonic()
                await _round_trip(healthy, "beside-idle")
                assert time.monotonic() - started < 5.0
                # One more is over max_connections: told so, then closed.
                async with await anyio.connect_tcp("127.0.0.1", server.port) as extra:
                    with anyio.fail_after(10):
                        refusal = b""
                        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                            while True:
                                refusal += await extra.receive()
                    assert b"too_many_connections" in refusal
                await _round_trip(healthy, "beside-idle-after-refusal")
        finally:
            for stream in idle:
                await anyio.aclose_forcefully(stream)


# --- a peer that pipelines and never reads ------------------------------------------------------


@pytest.mark.slow
async def test_a_reader_that_never_reads_does_not_grow_the_broker(
    serve_subprocess: ServeSubprocess,
) -> None:
    broker = serve_subprocess()
    process = psutil.Process(broker.pid)
    async with _client(broker.port) as healthy:
        # Replies of 64 KiB each: a broker that buffered them would grow fast.
        task_id = (await healthy.enqueue("big", "x" * 65536)).task_id
        rss_before = process.memory_info().rss
        request = b'{"id":1,"op":"get","task_id":%d}\n' % task_id
        batch = request * 200
        stream = await anyio.connect_tcp("127.0.0.1", broker.port)
        try:
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await stream.send(HELLO)
            sent, stalled = 0, False
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and sent < 500_000_000:
                with anyio.move_on_after(3.0) as send_timeout:
                    await stream.send(batch)
                if send_timeout.cancelled_caught:
                    stalled = True  # the broker stopped reading us: TCP pushes back
                    break
                sent += len(batch)
            assert stalled, f"the broker read {sent} bytes of requests it could not answer"
            answered_could_be = sent // len(request)
            peak = rss_before
            for _ in range(10):  # let whatever it holds settle, and watch the peak
                peak = max(peak, process.memory_info().rss)
                await anyio.sleep(0.1)
            grown = (peak - rss_before) / 1e6
            print(f"slow reader: {sent / 1e6:.1f} MB of requests taken, broker RSS +{grown:.1f} MB")
            assert grown < 100, f"the broker grew by {grown:.0f} MB ({answered_could_be} asked)"
            # Meanwhile everyone else is served as usual.
            with anyio.fail_after(10):
                assert (await healthy.get(task_id)).payload == "x" * 65536
            await _round_trip(healthy, "beside-slow-reader")
        finally:
            await anyio.aclose_forcefully(stream)
        await _round_trip(healthy, "after-slow-reader")
    assert broker.running


# --- a database that cannot grow ----------------------------------------------------------------


async def _set_max_pages(server: BrokerServer, pages: int) -> int:
    """The hook: cap the size of the writer's database file (PRAGMA max_page_count)."""
    writer = server.broker.store._writer
    assert writer is not None

    def cap(conn: Any) -> int:
        current = int(conn.execute("PRAGMA page_count").fetchone()[0])
        conn.execute(f"PRAGMA max_page_count = {current + pages if pages else 1073741823}")
        return current

    return await on_db_thread(writer, cap)


async def _fill(client: AsyncClient, queue: str) -> tuple[list[int], list[errors.DurableTQError]]:
    """Enqueue 8 KiB tasks until five have been refused (or 5,000 were taken)."""
    stored: list[int] = []
    refused: list[errors.DurableTQError] = []
    for n in range(5000):
        try:
            stored.append((await client.enqueue(queue, {"n": n, "pad": "x" * 8192})).task_id)
        except errors.DurableTQError as exc:
            refused.append(exc)
            if len(refused) >= 5:
                break
    return stored, refused


def _assert_storage_refusals(refused: list[errors.DurableTQError]) -> None:
    assert refused, "the database never filled up"
    for exc in refused:
        assert exc.code in ("internal", "busy"), exc
        text = exc.message.lower()
        assert "full" in text or "space" in text, exc.message
        assert "traceback" not in text


async def _assert_reads_and_recovery(client: AsyncClient, stored: list[int], queue: str) -> None:
    with anyio.fail_after(10):
        assert (await client.get(stored[0])).payload["n"] == 0
        assert (await client.stats()).queues[queue].queued == len(stored)
        page = await client.list_tasks(queue, limit=5)
        assert [t.task_id for t in page.tasks] == stored[:5]


@pytest.mark.slow
async def test_a_full_database_refuses_writes_serves_reads_and_recovers(
    make_server: MakeServer, tmp_path: Path
) -> None:
    async with make_server() as server, _client(server.port) as client:
        await _set_max_pages(server, 40)
        stored, refused = await _fill(client, "fill")
        _assert_storage_refusals(refused)
        assert stored, "not even one task fitted"
        await _assert_reads_and_recovery(client, stored, "fill")
        # Space is back: writes work again, and everything that got ok is there.
        await _set_max_pages(server, 0)
        await _round_trip(client, "after-full")
        more = (await client.enqueue("fill", {"n": "more"})).task_id
        assert (await client.get(more)).payload == {"n": "more"}
        for task_id in stored:
            assert (await client.get(task_id)).state == "queued"
    assert integrity_check(tmp_path / "broker.db") == "ok"


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root only); ``remount(size)`` gives it more room."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tiny filesystem needs root on Linux")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], timeout=30, check=False)


def _remount(mount_point: Path, size: str) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,size={size}", str(mount_point)], check=True, timeout=30
    )


@pytest.mark.slow
async def test_a_full_disk_refuses_writes_serves_reads_and_recovers(
    make_server: MakeServer, tiny_filesystem: Path
) -> None:
    db_path = tiny_filesystem / "broker.db"
    async with make_server(db_path=db_path) as server, _client(server.port) as client:
        stored, refused = await _fill(client, "disk")
        _assert_storage_refusals(refused)
        assert stored, "not even one task fitted"
        await _assert_reads_and_recovery(client, stored, "disk")
        _remount(tiny_filesystem, "64m")
        with anyio.fail_after(20):
            while True:  # the first write after the disk filled may still see it full
                try:
                    await _round_trip(client, "after-disk-full")
                    break
                except errors.Internal:
                    await anyio.sleep(0.2)
        for task_id in stored:
            assert (await client.get(task_id)).state == "queued"
    assert integrity_check(db_path) == "ok"


# --- a locked file at start-up ------------------------------------------------------------------

HOLD_EXCLUSIVE = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(120)
"""


def _serve(db_path: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``durable-tq serve`` on ``db_path``; it must exit by itself within 60 s."""
    return subprocess.run(
        [sys.executable, "-m", "durable_tq", "serve", "--port", "0", "--db", str(db_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=_clean_env(**env),
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def hold_exclusive() -> Iterator[Callable[[Path], None]]:
    """``hold_exclusive(db)``: another process takes BEGIN EXCLUSIVE on the file and keeps it."""
    holders: list[subprocess.Popen[str]] = []

    def hold(db_path: Path) -> None:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_EXCLUSIVE, str(db_path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        holders.append(holder)
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


@pytest.mark.slow
@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-wal-file"])
def test_a_database_locked_by_another_process_is_a_clear_error(
    tmp_path: Path,
    serve_subprocess: ServeSubprocess,
    hold_exclusive: Callable[[Path], None],
    existing: bool,
) -> None:
    db_path = tmp_path / "locked.db"
    if existing:  # a broker made it (WAL mode) and stopped
        serve_subprocess(db_path).terminate()
    hold_exclusive(db_path)
    started = time.monotonic()
    result = _serve(db_path, tmp_path, DURABLE_TQ_BUSY_TIMEOUT="1")
    assert result.returncode != 0, result
    assert time.monotonic() - started < 30
    assert "locked" in result.stderr.lower(), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "listening" not in result.stdout


@pytest.mark.slow
def test_a_second_broker_on_the_same_file_exits_at_once(
    tmp_path: Path, serve_subprocess: ServeSubprocess
) -> None:
    db_path = tmp_path / "shared.db"
    first = serve_subprocess(db_path)
    result = _serve(db_path, tmp_path)
    assert result.returncode == 2, result
    assert f"pid {first.pid}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert first.running
