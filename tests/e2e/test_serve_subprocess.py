"""``durable-tq serve`` as a real process: the listening line, signals, restarts, durability.

Requests go over raw sockets (``raw_connect`` in tests/conftest.py), so these tests depend on
nothing but the broker. ``serve_subprocess`` starts ``python -m durable_tq serve``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

RawConnect = Callable[..., AbstractAsyncContextManager[Any]]
ServeSubprocess = Callable[..., Any]

LISTENING = re.compile(r"^durable_tq listening on tcp://127\.0\.0\.1:(\d+) \(database (.+)\)$")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}


async def enqueue_pipelined(conn: Any, count: int, queue: str = "q") -> dict[int, str]:
    """Send ``count`` enqueues without waiting, then collect every reply: task_id -> payload."""
    payloads = {}
    for n in range(count):
        request_id = await conn.send("enqueue", queue=queue, payload=f"{queue}-{n}")
        payloads[request_id] = f"{queue}-{n}"
    stored = {}
    for _ in range(count):
        reply = await conn.receive()
        assert reply["ok"], reply
        stored[reply["task_id"]] = payloads[reply["id"]]
    return stored


async def all_tasks(conn: Any) -> dict[int, dict[str, Any]]:
    tasks: dict[int, dict[str, Any]] = {}
    after_id = None
    while True:
        paging = {"after_id": after_id} if after_id else {}
        page = await conn.request("list", limit=500, **paging)
        assert page["ok"], page
        tasks.update({t["task_id"]: t for t in page["tasks"]})
        after_id = page["next_after_id"]
        if after_id is None:
            return tasks


# --- the command ---------------------------------------------------------------------------------


def test_console_script_prints_where_it_listens(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "durable-tq"
    if not script.exists():
        pytest.skip("the durable-tq console script is not installed next to this python")
    proc = subprocess.Popen(
        [str(script), "serve", "--port", "0", "--db", "q.db", "--log-level", "warning"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # printed and flushed once it listens
        match = LISTENING.match(line)
        assert match, line
        assert int(match[1]) > 0
        assert Path(match[2]) == (tmp_path / "q.db").resolve()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_bad_settings_exit_2_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "durable_tq", "serve", "--port", "70000"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "port" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_environment_settings_apply_and_flags_win(tmp_path: Path) -> None:
    env = clean_env() | {"DURABLE_TQ_MAX_FRAME_BYTES": "10", "DURABLE_TQ_PORT": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "durable_tq", "serve", "--port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "max_frame_bytes (from env DURABLE_TQ_MAX_FRAME_BYTES)" in result.stderr
    assert "port" not in result.stderr.split(":", 1)[1].split(";")[0]  # --port 0 won over env


async def test_second_broker_on_the_same_file_is_refused(
    serve_subprocess: ServeSubprocess, tmp_path: Path
) -> None:
    first = serve_subprocess()
    command = [sys.executable, "-m", "durable_tq", "serve", "--port", "0", "--db", first.db_path]
    result = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            command,
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    )
    assert result.returncode == 2
    assert "in use by another broker" in result.stderr
    assert first.running


# --- restarts and durability ---------------------------------------------------------------------


async def test_restart_keeps_every_task(
    serve_subprocess: ServeSubprocess, raw_connect: RawConnect
) -> None:
    broker = serve_subprocess()
    async with raw_connect(broker.url) as conn:
        stored = await enqueue_pipelined(conn, 1000)
    assert len(stored) == 1000
    assert await anyio.to_thread.run_sync(broker.terminate) == 0
    assert "stopped; database closed" in broker.log_text()

    await anyio.to_thread.run_sync(broker.restart)
    async with raw_connect(broker.url) as conn:
        stats = await conn.request("stats")
        assert stats["queues"]["q"]["queued"] == 1000
        tasks = await all_tasks(conn)
    assert {task_id: t["payload"] for task_id, t in tasks.items()} == stored


async def test_sigkill_right_after_ok_loses_nothing(
    serve_subprocess: ServeSubprocess, raw_connect: RawConnect
) -> None:
    broker = serve_subprocess()
    async with raw_connect(broker.url) as conn:
        stored = await enqueue_pipelined(conn, 300)
        claimed = await conn.request("claim", queues=["q"], max=10)
        for task in claimed["tasks"]:
            ack = await conn.request(
                "ack", task_id=task["task_id"], lease_token=task["lease_token"]
            )
            assert ack["ok"], ack
    await anyio.to_thread.run_sync(broker.kill)  # no shutdown at all

    await anyio.to_thread.run_sync(broker.start)
    async with raw_connect(broker.url) as conn:
        tasks = await all_tasks(conn)
    assert {task_id: t["payload"] for task_id, t in tasks.items()} == stored
    acked = {t["task_id"] for t in claimed["tasks"]}
    assert len(acked) == 10
    assert {i for i, t in tasks.items() if t["state"] == "succeeded"} == acked


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_graceful_shutdown_under_load_every_ok_is_committed(
    serve_subprocess: ServeSubprocess, raw_connect: RawConnect, signum: int
) -> None:
    """Producers pipeline enqueues without pause; the broker gets a signal mid-stream.

    Every reply is ok or shutting_down, every connection ends with one shutting_down and is
    closed, the broker exits 0, and after a restart every task that got an ok is there with
    its payload."""
    broker = serve_subprocess()
    acknowledged: dict[int, str] = {}
    refused = 0
    replies_before_signal = anyio.Event()

    async def produce(lane: int) -> None:
        nonlocal refused
        async with raw_connect(broker.url) as conn:
            payloads: dict[Any, str] = {}

            async def send_forever() -> None:
                n = 0
                try:
                    while True:
                        payload = request_id = f"lane{lane}-{n}"
                        payloads[request_id] = payload  # before sending: the reply may be quick
                        await conn.send("enqueue", id=request_id, queue="load", payload=payload)
                        n += 1
                        if n % 20 == 0:
                            await anyio.sleep(0.001)  # let replies flow
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass  # the broker closed the connection

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_forever)
                while True:
                    try:
                        reply = await conn.receive(within=30)
                    except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError):
                        break  # closed by the broker
                    if reply["ok"]:
                        acknowledged[reply["task_id"]] = payloads[reply["id"]]
                        if len(acknowledged) >= 200:
                            replies_before_signal.set()
                    else:
                        assert reply["error"]["code"] == "shutting_down", reply
                        refused += 1
                tg.cancel_scope.cancel()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for lane in range(4):
                tg.start_soon(produce, lane)
            await replies_before_signal.wait()
            broker.send_signal(signum)
        code = await anyio.to_thread.run_sync(broker.wait)
    assert code == 0, broker.log_text()[-3000:]
    assert len(acknowledged) >= 200
    assert refused == 4  # each connection was told why it closed (a refusal or the notice)

    await anyio.to_thread.run_sync(broker.start)
    async with raw_connect(broker.url) as conn:
        tasks = await all_tasks(conn)
    missing = set(acknowledged) - set(tasks)
    assert not missing, f"{len(missing)} acknowledged tasks were lost"
    assert all(tasks[task_id]["payload"] == payload for task_id, payload in acknowledged.items())


async def test_restart_on_the_same_port(
    serve_subprocess: ServeSubprocess, raw_connect: RawConnect
) -> None:
    broker = serve_subprocess(env={"DURABLE_TQ_SWEEP_INTERVAL": "0.1"})
    url = broker.url
    await anyio.to_thread.run_sync(lambda: broker.restart(graceful=False))
    assert broker.url == url and broker.starts == 2
    async with raw_connect(broker.url) as conn:
        assert (await conn.request("stats"))["ok"]


async def test_second_signal_exits_at_once(
    serve_subprocess: ServeSubprocess, raw_connect: RawConnect
) -> None:
    """A client that never reads its replies holds up the graceful shutdown (its replies
    cannot be delivered); a second SIGTERM ends the broker at once (exit code 128 + 15)."""
    broker = serve_subprocess()
    async with raw_connect(broker.url) as conn:
        big = await conn.request("enqueue", queue="big", payload="x" * 500_000)
    request = json.dumps({"op": "get", "task_id": big["task_id"]}).encode() + b"\n"
    with socket.create_connection(("127.0.0.1", broker.port)) as sock:
        sock.setblocking(False)
        sock.send(b'{"id":0,"op":"hello","version":1}\n')
        with anyio.fail_after(60):
            while True:  # until the broker stops reading us
                try:
                    sock.send(request * 1000)
                except BlockingIOError:
                    break
                await anyio.sleep(0.01)
        broker.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            while True:  # the first signal has been handled
                if "stopping gracefully" in broker.log_text():
                    break
                await anyio.sleep(0.05)
        broker.send_signal(signal.SIGTERM)
        code = await anyio.to_thread.run_sync(broker.wait)
    assert code == 128 + signal.SIGTERM, broker.log_text()[-2000:]
    assert "exiting at once" in broker.log_text()


async def test_port_in_use_exits_1_with_one_line(
    serve_subprocess: ServeSubprocess, tmp_path: Path
) -> None:
    first = serve_subprocess()
    command = [sys.executable, "-m", "durable_tq", "serve", "--port", str(first.port)]
    result = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            [*command, "--db", "other.db"],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    expected = f"cannot listen on 127.0.0.1:{first.port}: Address already in use"
    assert last == f"error: {expected}"
    assert "Traceback" not in result.stderr
