"""durable_tq beside beanstalkd and Huey: the same tasks, payloads and client patterns, one run.

Systems (rows of the table):

- ``durable_tq``: ``durable-tq serve`` from this virtual environment, a temporary database,
  ``synchronous = FULL`` (the default), ``max_queue_depth = 0``; raw NDJSON clients
  (``durable_tq.tools.bench.wire``), one request at a time, then pipelined / batched;
- ``beanstalkd -f 0``: binlog in a temporary folder, fsync after every write;
- ``beanstalkd, no binlog``: memory only;
- ``Huey FULL``: ``SqliteHuey`` (WAL, ``synchronous = FULL`` via ``fsync=True``) in a virtual
  environment of its own under the cache folder. Huey has no broker: each client process opens
  the SQLite file itself. A producer calls a task (``huey.enqueue`` of a real task message); a
  consumer calls ``huey.dequeue()``, which selects and deletes the task in one transaction, so
  there is no separate "ack": the dequeue *is* the ack (the task is gone before it runs).

Patterns (columns), each timed alone: enqueue with 1/4/16 producers, one request at a time;
drain with 1/4/16 consumers, each claiming (reserving, dequeuing) one task and acking (deleting)
it, one request at a time, from a queue filled by the enqueue phase before it (untimed for the
drain); and for durable_tq only a pipelined enqueue (4 connections, 64 requests in flight each)
and a batched drain (4 consumers, ``claim max=32``, then one ``settle`` of the 32 acks that also
claims the next 32; when the broker does not know ``settle`` yet, the 32 acks are pipelined and
followed by a new claim, and the row says so).

Every client is a process of its own with one connection in a plain blocking loop; the clients
of a phase connect, meet at a barrier, and the phase lasts from the first start to the last
finish. Every loop is bounded by a count and by ``--phase-timeout``; a phase cut short reports
what it did and is marked ``*``.

    .venv/bin/python benchmarks/peers.py [--tasks N] [--quick] [--json FILE] [--only NAMES]

Results and method: docs/benchmarks.md, "Peers: durable_tq beside beanstalkd and Huey".

This file also serves as the Huey driver (``--huey-driver``, run with the Huey environment's
Python), so everything at module level is standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_TASKS = 20_000
QUICK_TASKS = 400
PAYLOAD_BYTES = 100
QUEUE = "peers"
CLIENT_COUNTS = (1, 4, 16)
QUICK_CLIENT_COUNTS = (1, 4)
PIPELINE_CONNECTIONS = 4
PIPELINE_DEPTH = 64
BATCH_CONSUMERS = 4
BATCH_SIZE = 32
PHASE_TIMEOUT = 240.0
QUICK_PHASE_TIMEOUT = 30.0
SOCKET_TIMEOUT = 60.0
BARRIER_TIMEOUT = 60.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
INSTALL_TIMEOUT = 600.0
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "durable_tq-peers"
HUEY_VENV = CACHE_DIR / "huey-venv"

# Rows of the table, in order; --only takes these or the system names that cover several.
ROWS = {
    "durable_tq": "durable_tq, one at a time",
    "durable_tq_batched": "durable_tq, pipelined / batched",
    "beanstalkd_f0": "beanstalkd -f 0 (fsync every write)",
    "beanstalkd_mem": "beanstalkd, no binlog",
    "huey": "Huey SqliteHuey, FULL",
}
SYSTEM_ROWS = {
    "durable_tq": ("durable_tq", "durable_tq_batched"),
    "beanstalkd": ("beanstalkd_f0", "beanstalkd_mem"),
    "huey": ("huey",),
}
ONLY_NAMES = {**{row: (row,) for row in ROWS}, **SYSTEM_ROWS}


def pattern_names(counts: Sequence[int]) -> list[str]:
    enqueues = [f"enqueue_{n}" for n in counts]
    drains = [f"drain_{n}" for n in counts]
    return [*enqueues, *drains, "enqueue_pipelined", "drain_batched"]


def pattern_title(pattern: str) -> str:
    if pattern == "enqueue_pipelined":
        return f"enqueue pipelined {PIPELINE_CONNECTIONS}x{PIPELINE_DEPTH}"
    if pattern == "drain_batched":
        return f"drain batched {BATCH_CONSUMERS}x{BATCH_SIZE}"
    kind, clients = pattern.split("_")
    return f"{kind} x{clients}"


# (name, durable_tq row, durable_tq pattern, peer row, peer pattern, at least)
TARGETS: tuple[tuple[str, str, str, str, str, float], ...] = (
    ("enqueue, 1 producer vs beanstalkd -f 0", "durable_tq", "enqueue_1",
     "beanstalkd_f0", "enqueue_1", 0.5),
    ("enqueue, 4 producers vs beanstalkd -f 0", "durable_tq", "enqueue_4",
     "beanstalkd_f0", "enqueue_4", 1.5),
    ("enqueue, 4 producers vs Huey FULL", "durable_tq", "enqueue_4", "huey", "enqueue_4", 2.0),
    ("enqueue, 16 producers vs beanstalkd -f 0", "durable_tq", "enqueue_16",
     "beanstalkd_f0", "enqueue_16", 3.0),
    ("drain claim+ack, 4 consumers vs beanstalkd -f 0 reserve+delete", "durable_tq", "drain_4",
     "beanstalkd_f0", "drain_4", 1.0),
    ("drain claim+ack, 16 consumers vs beanstalkd -f 0 reserve+delete", "durable_tq",
     "drain_16", "beanstalkd_f0", "drain_16", 1.5),
    ("pipelined enqueue (4x64) vs beanstalkd no binlog, 4 producers", "durable_tq_batched",
     "enqueue_pipelined", "beanstalkd_mem", "enqueue_4", 0.8),
    ("batched drain (4x32, settle) vs beanstalkd no binlog, 4 consumers", "durable_tq_batched",
     "drain_batched", "beanstalkd_mem", "drain_4", 0.8),
)  # fmt: skip


def make_payload(size: int = PAYLOAD_BYTES) -> bytes:
    """A small JSON object of exactly ``size`` bytes (the same bytes for every system)."""
    head = b'{"kind":"peers","t":%.6f' % time.time()
    pad = size - len(head) - len(b',"p":""}')
    return head + b',"p":"' + b"x" * max(pad, 0) + b'"}'


class BenchError(Exception):
    """A server or client misbehaved; the message says how."""


# --------------------------------------------------------------------------- clients
# Each client is built inside its own process (after the fork), connects, and offers
# ``enqueue()`` (one request, waits for the reply) and ``drain_one()`` (claim one task, ack it;
# False when the queue was empty).


class BeanstalkClient:
    """beanstalkd's text protocol over one blocking socket: put, reserve-with-timeout, delete."""

    def __init__(self, host: str, port: int, payload: bytes) -> None:
        self.sock = socket.create_connection((host, port), timeout=SOCKET_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        # priority 0, no delay, TTR 600 s (longer than any phase: no job comes back)
        self.put_frame = b"put 0 0 600 %d\r\n%s\r\n" % (len(payload), payload)

    def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            self._fill()
        line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
        return line

    def _exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise BenchError("beanstalkd closed the connection")
        self.buffer += chunk

    def enqueue(self) -> None:
        self.sock.sendall(self.put_frame)
        line = self._line()
        if not line.startswith(b"INSERTED "):
            raise BenchError(f"put: {line!r}")

    def drain_one(self) -> bool:
        self.sock.sendall(b"reserve-with-timeout 0\r\n")
        line = self._line()
        if line == b"TIMED_OUT":
            return False
        parts = line.split()
        if parts[0] != b"RESERVED" or len(parts) != 3:
            raise BenchError(f"reserve: {line!r}")
        self._exactly(int(parts[2]) + 2)  # the body and its \r\n
        self.sock.sendall(b"delete %s\r\n" % parts[1])
        line = self._line()
        if line != b"DELETED":
            raise BenchError(f"delete {parts[1]!r}: {line!r}")
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class DurableClient:
    """One durable_tq connection (``durable_tq.tools.bench.wire``), requests from templates."""

    def __init__(self, host: str, port: int, payload: bytes) -> None:
        from durable_tq.tools.bench import wire

        self.wire = wire
        self.conn = wire.connect(wire.Endpoint(host, port))
        self.frames = wire.Frames(QUEUE, len(payload))
        self.enqueue_head = b'{"id":%d,"op":"enqueue","queue":"' + QUEUE.encode() + b'","payload":'
        self.payload = payload

    def _enqueue_frame(self, request_id: int) -> bytes:
        return self.enqueue_head % request_id + self.payload + b"}\n"

    def _one(self, frame: bytes) -> dict[str, Any]:
        self.conn.send(frame)
        lines = self.conn.receive_lines()
        if len(lines) != 1:
            raise BenchError(f"expected one reply line, got {len(lines)}")
        return self.wire.parse_reply(lines[0])

    def enqueue(self) -> None:
        self._one(self._enqueue_frame(self.conn.next_id()))

    def claim(self, max_tasks: int) -> list[dict[str, Any]]:
        reply = self._one(self.frames.claim(self.conn.next_id(), max_tasks, 0.0))
        tasks: list[dict[str, Any]] = reply["tasks"]
        return tasks

    def drain_one(self) -> bool:
        tasks = self.claim(1)
        if not tasks:
            return False
        task = tasks[0]
        self._one(self.frames.ack(self.conn.next_id(), task["task_id"], task["lease_token"]))
        return True

    def enqueue_pipelined(self, quota: int, deadline: float) -> tuple[int, list[float], bool]:
        """``quota`` enqueues with up to PIPELINE_DEPTH unanswered; latency send → reply."""
        sent_at: dict[int, float] = {}
        latencies: list[float] = []
        sent = done = 0
        while done < quota:
            if time.monotonic() > deadline:
                return done, latencies, True
            room = min(PIPELINE_DEPTH - len(sent_at), quota - sent)
            if room > 0:
                now = time.perf_counter()
                frames = []
                for request_id in self.conn.ids(room):
                    sent_at[request_id] = now
                    frames.append(self._enqueue_frame(request_id))
                self.conn.send(b"".join(frames))
                sent += room
            for line in self.conn.receive_lines():
                reply = self.wire.parse_reply(line)
                latencies.append(time.perf_counter() - sent_at.pop(reply["id"]))
                done += 1
        return done, latencies, False

    def drain_batched(
        self, limit: int, deadline: float, use_settle: bool
    ) -> tuple[int, list[float], bool]:
        """Claim BATCH_SIZE, settle them (acks + the next claim in one request) until empty.

        Without ``settle``: the acks are pipelined (all sent, then all replies read) and a new
        claim follows. The latency is that of one round: settle (or acks + claim) → reply.
        """
        latencies: list[float] = []
        done = 0
        tasks = self.claim(BATCH_SIZE)
        while tasks:
            if time.monotonic() > deadline:
                return done, latencies, True
            started = time.perf_counter()
            more = done + len(tasks) < limit
            if use_settle:
                next_tasks = self._settle(tasks, claim_next=more)
            else:
                self._pipelined_acks(tasks)
                next_tasks = self.claim(BATCH_SIZE) if more else []
            latencies.append(time.perf_counter() - started)
            done += len(tasks)
            tasks = next_tasks
        return done, latencies, False

    def _settle(self, tasks: list[dict[str, Any]], *, claim_next: bool) -> list[dict[str, Any]]:
        """Ack ``tasks`` in one ``settle`` (every result must be ok); the next claimed tasks."""
        request: dict[str, Any] = {
            "id": self.conn.next_id(),
            "op": "settle",
            "settles": [
                {"task_id": t["task_id"], "lease_token": t["lease_token"], "outcome": "ack"}
                for t in tasks
            ],
        }
        if claim_next:
            request["claim"] = {"queues": [QUEUE], "max": BATCH_SIZE, "wait": 0}
        reply = self._one(json.dumps(request, separators=(",", ":")).encode() + b"\n")
        results = reply.get("results", [])
        failed = [r for r in results if not r.get("ok")]
        if failed or len(results) != len(tasks):
            raise BenchError(
                f"settle: {len(failed)} of {len(results)} results not ok: {failed[:3]}"
            )
        next_tasks: list[dict[str, Any]] = reply.get("tasks", [])
        return next_tasks

    def _pipelined_acks(self, tasks: list[dict[str, Any]]) -> None:
        frames = [
            self.frames.ack(request_id, task["task_id"], task["lease_token"])
            for request_id, task in zip(self.conn.ids(len(tasks)), tasks, strict=True)
        ]
        self.conn.send(b"".join(frames))
        answered = 0
        while answered < len(tasks):
            answered += self.wire.check_all(self.conn.receive_lines())

    def close(self) -> None:
        self.conn.close()


class HueyClient:
    """``SqliteHuey`` in this process: enqueue a task, ``dequeue()`` (destructive) to drain."""

    def __init__(self, filename: str, payload: bytes) -> None:
        from huey import SqliteHuey  # only in the Huey virtual environment

        self.huey = SqliteHuey(
            "peers", filename=filename, fsync=True, journal_mode="wal", timeout=120,
            results=False,
        )  # fmt: skip

        @self.huey.task(name="peers_work")
        def work(payload: str) -> None:
            return None

        self.work = work
        self.payload = payload.decode()
        self.pragmas()  # opens the connection (and sets the pragmas) before the barrier

    def pragmas(self) -> dict[str, Any]:
        conn = self.huey.storage.conn
        return {
            "journal_mode": conn.execute("pragma journal_mode").fetchone()[0],
            "synchronous": conn.execute("pragma synchronous").fetchone()[0],
        }

    def enqueue(self) -> None:
        self.work(self.payload)

    def drain_one(self) -> bool:
        return self.huey.dequeue() is not None

    def close(self) -> None:
        self.huey.storage.close()


# --------------------------------------------------------------------------- one phase


@dataclass(frozen=True)
class Phase:
    """What the client processes of one measurement do."""

    system: str  # "durable_tq", "beanstalkd" or "huey"
    pattern: str
    clients: int
    tasks: int
    timeout: float
    payload: bytes
    host: str = "127.0.0.1"
    port: int = 0
    filename: str = ""  # Huey's database
    use_settle: bool = False

    @property
    def kind(self) -> str:
        return self.pattern.split("_")[0]


def make_client(phase: Phase) -> Any:
    if phase.system == "durable_tq":
        return DurableClient(phase.host, phase.port, phase.payload)
    if phase.system == "beanstalkd":
        return BeanstalkClient(phase.host, phase.port, phase.payload)
    if phase.system == "huey":
        return HueyClient(phase.filename, phase.payload)
    raise ValueError(phase.system)


def one_at_a_time(
    step: Callable[[], Any], limit: int, deadline: float, *, until_empty: bool
) -> tuple[int, list[float], bool]:
    """Call ``step`` up to ``limit`` times (stop early when it returns False and
    ``until_empty``), timing each call; the count, the latencies, whether time ran out."""
    latencies: list[float] = []
    clock = time.perf_counter
    for done in range(limit):
        if time.monotonic() > deadline:
            return done, latencies, True
        started = clock()
        result = step()
        if until_empty and result is False:
            return done, latencies, False
        latencies.append(clock() - started)
    return limit, latencies, False


def client_main(phase: Phase, quota: int, barrier: Any, out: Any) -> None:
    """One client process: connect, wait for the others, run the loop, send the figures."""
    result: dict[str, Any] = {"count": 0, "latencies": [], "timed_out": False, "error": None}
    client = None
    try:
        client = make_client(phase)
        barrier.wait(BARRIER_TIMEOUT)
        cpu_before = time.process_time()
        result["start"] = start = time.monotonic()
        deadline = start + phase.timeout
        if phase.pattern == "enqueue_pipelined":
            outcome = client.enqueue_pipelined(quota, deadline)
        elif phase.pattern == "drain_batched":
            outcome = client.drain_batched(quota, deadline, phase.use_settle)
        elif phase.kind == "enqueue":
            outcome = one_at_a_time(client.enqueue, quota, deadline, until_empty=False)
        else:
            outcome = one_at_a_time(client.drain_one, quota, deadline, until_empty=True)
        result["end"] = time.monotonic()
        result["cpu"] = time.process_time() - cpu_before
        result["count"], result["latencies"], result["timed_out"] = outcome
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):
            barrier.abort()
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
    out.send(result)
    out.close()


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_phase(phase: Phase, cpu_of_server: Callable[[], float | None] | None = None) -> dict:
    """Start ``phase.clients`` processes together; the summed figures of the phase."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(phase.clients)
    # Enqueue: the tasks are split among the producers. Drain: each consumer takes tasks until
    # the queue is empty (bounded by the whole count).
    if phase.kind == "enqueue":
        quotas = split(phase.tasks, phase.clients)
    else:
        quotas = [phase.tasks] * phase.clients
    server_cpu_before = cpu_of_server() if cpu_of_server else None
    procs, pipes = [], []
    for quota in quotas:
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=client_main, args=(phase, quota, barrier, writer), daemon=True)
        proc.start()
        writer.close()
        procs.append(proc)
        pipes.append(reader)
    give_up = time.monotonic() + BARRIER_TIMEOUT + phase.timeout + 60
    results = []
    for reader in pipes:
        if reader.poll(max(0.0, give_up - time.monotonic())):
            try:
                results.append(reader.recv())
            except EOFError:
                results.append({"count": 0, "latencies": [], "error": "client died"})
        else:
            results.append({"count": 0, "latencies": [], "error": "no result in time"})
    for proc in procs:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    server_cpu_after = cpu_of_server() if cpu_of_server else None
    return summarize(phase, results, server_cpu_before, server_cpu_after)


def summarize(
    phase: Phase,
    results: list[dict],
    server_cpu_before: float | None,
    server_cpu_after: float | None,
) -> dict:
    count = sum(r["count"] for r in results)
    starts = [r["start"] for r in results if "start" in r]
    ends = [r["end"] for r in results if "end" in r]
    seconds = (max(ends) - min(starts)) if starts and ends else 0.0
    latencies = sorted(x for r in results for x in r["latencies"])
    errors = [r["error"] for r in results if r.get("error")]
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    summary: dict[str, Any] = {
        "pattern": phase.pattern,
        "clients": phase.clients,
        "tasks": count,
        "tasks_asked": phase.tasks,
        "seconds": round(seconds, 4),
        "rate": round(count / seconds, 1) if seconds > 0 and not errors else 0.0,
        "p50_ms": round(p50 * 1000, 3) if p50 is not None else None,
        "p99_ms": round(p99 * 1000, 3) if p99 is not None else None,
        "latency_samples": len(latencies),
        "timed_out": any(r.get("timed_out") for r in results),
        "errors": errors,
        "client_cpu_seconds": round(sum(r.get("cpu", 0.0) for r in results), 3),
    }
    if server_cpu_before is not None and server_cpu_after is not None:
        summary["server_cpu_seconds"] = round(server_cpu_after - server_cpu_before, 3)
    return summary


def drive(
    system: str,
    patterns: Sequence[str],
    make_phase: Callable[[str, int], Phase],
    cpu_of_server: Callable[[], float | None] | None,
    log: Callable[[str], None],
) -> dict[str, dict]:
    """Run ``patterns`` in order against one running system."""
    out: dict[str, dict] = {}
    for pattern in patterns:
        if pattern == "enqueue_pipelined":
            clients = PIPELINE_CONNECTIONS
        elif pattern == "drain_batched":
            clients = BATCH_CONSUMERS
        else:
            clients = int(pattern.split("_")[1])
        phase = make_phase(pattern, clients)
        summary = run_phase(phase, cpu_of_server)
        out[pattern] = summary
        flag = " (timed out)" if summary["timed_out"] else ""
        flag += f" errors: {summary['errors'][:2]}" if summary["errors"] else ""
        log(
            f"  {system} {pattern_title(pattern)}: {summary['tasks']:,} tasks in "
            f"{summary['seconds']:.2f} s = {summary['rate']:,.0f}/s{flag}"
        )
    return out


def log_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_accepting(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the server exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing accepted on 127.0.0.1:{port} within {timeout:.0f} s")


class Server:
    """A server subprocess on a loopback port; stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: Path, env: dict) -> None:
        self.name = name
        self.port = port
        self.log_path = workdir / f"{name}.log"
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=workdir, env=env,
            )  # fmt: skip
        try:
            wait_accepting(port, self.proc, START_TIMEOUT)
        except BenchError as exc:
            self.stop()
            raise BenchError(f"{name}: {exc}; log: {self.log_tail()}") from exc

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process, from /proc."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT)
        return self.proc.returncode

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def durable_tq_command() -> list[str]:
    script = Path(sys.executable).parent / "durable-tq"
    if script.exists():
        return [str(script)]
    found = shutil.which("durable-tq")
    return [found] if found else [sys.executable, "-m", "durable_tq"]


def settle_supported(port: int) -> bool:
    """Try ``settle`` once: anything but ``unknown_op`` means the broker has it."""
    from durable_tq.tools.bench import wire

    with wire.connect(wire.Endpoint("127.0.0.1", port)) as conn:
        request_id = conn.next_id()
        conn.send(b'{"id":%d,"op":"settle","settles":[]}\n' % request_id)
        reply = json.loads(conn.receive_lines()[0])
    return bool(reply.get("ok")) or (reply.get("error") or {}).get("code") != "unknown_op"


def run_durable_tq(cfg: Config, workdir: Path, rows: Sequence[str]) -> dict[str, dict]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
    env.update(DURABLE_TQ_SYNCHRONOUS="FULL", DURABLE_TQ_MAX_QUEUE_DEPTH="0")
    argv = [*durable_tq_command(), "serve", "--host", "127.0.0.1", "--port", str(port),
            "--db", str(workdir / "durable_tq.db"), "--log-level", "WARNING"]  # fmt: skip
    server = Server("durable_tq", argv, port, workdir, env)
    out: dict[str, dict] = {}
    try:
        use_settle = settle_supported(port)
        cfg.facts["durable_tq_settle_op"] = use_settle

        def make_phase(pattern: str, clients: int) -> Phase:
            return Phase("durable_tq", pattern, clients, cfg.tasks, cfg.phase_timeout,
                         cfg.payload, port=port, use_settle=use_settle)  # fmt: skip

        if "durable_tq" in rows:
            out["durable_tq"] = drive("durable_tq", cfg.one_at_a_time_patterns, make_phase,
                                      server.cpu_seconds, log_stderr)  # fmt: skip
        if "durable_tq_batched" in rows:
            batched = drive("durable_tq", ["enqueue_pipelined", "drain_batched"], make_phase,
                            server.cpu_seconds, log_stderr)  # fmt: skip
            batched["drain_batched"]["variant"] = (
                f"claim max={BATCH_SIZE}, then settle of {BATCH_SIZE} acks + next claim"
                if use_settle
                else f"claim max={BATCH_SIZE}, then {BATCH_SIZE} pipelined acks "
                "(broker has no settle op)"
            )
            batched["enqueue_pipelined"]["variant"] = (
                f"{PIPELINE_CONNECTIONS} connections, {PIPELINE_DEPTH} in flight each"
            )
            out["durable_tq_batched"] = batched
    finally:
        code = server.stop()
        cfg.facts["durable_tq_exit_code"] = code
    return out


def ensure_beanstalkd() -> str:
    found = shutil.which("beanstalkd")
    if found:
        return found
    if os.geteuid() != 0:
        raise BenchError("beanstalkd is not installed and we are not root to apt-get it")
    log_stderr("installing beanstalkd (apt-get update; apt-get install -y beanstalkd) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "beanstalkd"]):
        subprocess.run(argv, check=True, env=env, timeout=INSTALL_TIMEOUT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    found = shutil.which("beanstalkd")
    if not found:
        raise BenchError("apt-get install beanstalkd did not give a beanstalkd on PATH")
    return found


def run_beanstalkd(cfg: Config, workdir: Path, rows: Sequence[str]) -> dict[str, dict]:
    binary = ensure_beanstalkd()
    version = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    cfg.facts["beanstalkd_version"] = (version.stdout or version.stderr).strip()
    out: dict[str, dict] = {}
    for row in ("beanstalkd_f0", "beanstalkd_mem"):
        if row not in rows:
            continue
        port = free_port()
        argv = [binary, "-l", "127.0.0.1", "-p", str(port)]
        if row == "beanstalkd_f0":
            binlog = workdir / "beanstalkd-binlog"
            binlog.mkdir()
            argv += ["-b", str(binlog), "-f", "0"]
        server = Server(row, argv, port, workdir, dict(os.environ))
        try:

            def make_phase(pattern: str, clients: int, port: int = port) -> Phase:
                return Phase("beanstalkd", pattern, clients, cfg.tasks, cfg.phase_timeout,
                             cfg.payload, port=port)  # fmt: skip

            out[row] = drive(row, cfg.one_at_a_time_patterns, make_phase, server.cpu_seconds,
                             log_stderr)  # fmt: skip
        finally:
            server.stop()
    return out


def ensure_huey_venv() -> Path:
    python = HUEY_VENV / "bin" / "python"
    check = [str(python), "-c", "import huey"]
    if python.exists() and subprocess.run(check, capture_output=True, timeout=60).returncode == 0:
        return python
    log_stderr(f"creating {HUEY_VENV} and installing huey ...")
    HUEY_VENV.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(HUEY_VENV)], check=True,
                   timeout=INSTALL_TIMEOUT)  # fmt: skip
    subprocess.run([str(python), "-m", "pip", "install", "-q", "huey"], check=True,
                   timeout=INSTALL_TIMEOUT)  # fmt: skip
    return python


def run_huey(cfg: Config, workdir: Path, rows: Sequence[str]) -> dict[str, dict]:
    python = ensure_huey_venv()
    spec = {
        "filename": str(workdir / "huey.db"),
        "tasks": cfg.tasks,
        "patterns": cfg.one_at_a_time_patterns,
        "timeout": cfg.phase_timeout,
        "payload": cfg.payload.decode(),
    }
    limit = (len(cfg.one_at_a_time_patterns) + 1) * (cfg.phase_timeout + BARRIER_TIMEOUT + 90)
    done = subprocess.run(
        [str(python), str(Path(__file__).resolve()), "--huey-driver", json.dumps(spec)],
        stdout=subprocess.PIPE, stderr=None, text=True, timeout=limit, cwd=workdir,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"the Huey driver exited with code {done.returncode}")
    report = json.loads(done.stdout)
    cfg.facts.update(report["facts"])
    return {"huey": report["results"]}


def huey_driver(spec_text: str) -> int:
    """Inside the Huey environment: run the one-at-a-time patterns, print JSON."""
    import huey

    spec = json.loads(spec_text)
    payload = spec["payload"].encode()
    probe = HueyClient(spec["filename"], payload)
    pragmas = probe.pragmas()
    probe.close()
    facts = {
        "huey_version": huey.__version__,
        "huey_python": platform.python_version(),
        "huey_sqlite": sqlite3.sqlite_version,
        "huey_pragmas": pragmas,
    }
    if pragmas != {"journal_mode": "wal", "synchronous": 2}:
        log_stderr(f"Huey pragmas are not WAL + FULL: {pragmas}")
        return 1

    def make_phase(pattern: str, clients: int) -> Phase:
        return Phase("huey", pattern, clients, spec["tasks"], spec["timeout"], payload,
                     filename=spec["filename"])  # fmt: skip

    results = drive("huey", spec["patterns"], make_phase, None, log_stderr)
    print(json.dumps({"facts": facts, "results": results}))
    return 0


# --------------------------------------------------------------------------- report


@dataclass
class Config:
    tasks: int
    counts: tuple[int, ...]
    phase_timeout: float
    rows: tuple[str, ...]
    payload: bytes = field(default_factory=make_payload)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def one_at_a_time_patterns(self) -> list[str]:
        """In the order they run: each drain right after the enqueue that filled its queue."""
        return [p for n in self.counts for p in (f"enqueue_{n}", f"drain_{n}")]


def read_first(path: str, prefix: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    return None


def disk_of(path: Path) -> str:
    best = ("?", "?", "")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            if str(path).startswith(mount) and len(mount) >= len(best[2]):
                best = (device, fstype, mount)
    return f"{best[0]} ({best[1]}, mounted on {best[2]})"


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "durable_tq"],
                               cwd=here.parent, capture_output=True, text=True,
                               timeout=10).stdout.strip()  # fmt: skip
        return sha + (" (durable_tq/ modified)" if dirty else "") if sha else None
    return None


def machine_facts(workdir: Path) -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu_model": read_first("/proc/cpuinfo", "model name"),
        "memory": read_first("/proc/meminfo", "MemTotal"),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "disk": disk_of(workdir),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "commit": git_commit(),
    }


def cell(result: dict | None) -> str:
    if not result:
        return "-"
    if result["errors"] and not result["rate"]:
        return "error"
    mark = "*" if result["timed_out"] or result["tasks"] < result["tasks_asked"] else ""
    return f"{result['rate']:,.0f}{mark}"


def latency_cell(result: dict | None) -> str:
    if not result or result["p50_ms"] is None:
        return "-"
    return f"{result['p50_ms']:.2f} / {result['p99_ms']:.2f}"


def cpu_cell(result: dict | None) -> str:
    """CPU ms per task: the server's (none for Huey, which has no server) / the clients'."""
    if not result or not result["tasks"]:
        return "-"
    server = result.get("server_cpu_seconds")
    server_text = "-" if server is None else f"{server * 1000 / result['tasks']:.3f}"
    return f"{server_text} / {result['client_cpu_seconds'] * 1000 / result['tasks']:.3f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def evaluate_targets(results: dict[str, dict[str, dict]]) -> list[dict[str, Any]]:
    out = []
    for name, ours_row, ours_pattern, peer_row, peer_pattern, need in TARGETS:
        ours = results.get(ours_row, {}).get(ours_pattern)
        peer = results.get(peer_row, {}).get(peer_pattern)
        ratio = None
        if ours and peer and ours["rate"] and peer["rate"]:
            ratio = ours["rate"] / peer["rate"]
        out.append({
            "target": name, "need": need,
            "durable_tq": f"{ours_row}/{ours_pattern}", "peer": f"{peer_row}/{peer_pattern}",
            "durable_tq_rate": ours["rate"] if ours else None,
            "peer_rate": peer["rate"] if peer else None,
            "ratio": round(ratio, 3) if ratio is not None else None,
            "status": "n/a" if ratio is None else ("PASS" if ratio >= need else "MISS"),
        })  # fmt: skip
    return out


def render(cfg: Config, results: dict[str, dict[str, dict]], targets: list[dict]) -> str:
    patterns = pattern_names(cfg.counts)
    rows = [row for row in ROWS if row in results]
    header = ["system", *(pattern_title(p) for p in patterns)]
    throughput = [[ROWS[r], *(cell(results[r].get(p)) for p in patterns)] for r in rows]
    latency = [[ROWS[r], *(latency_cell(results[r].get(p)) for p in patterns)] for r in rows]
    cpu = [[ROWS[r], *(cpu_cell(results[r].get(p)) for p in patterns)] for r in rows]
    parts = [
        f"peers: {cfg.tasks:,} tasks of {len(cfg.payload)} bytes per pattern, "
        f"{cfg.facts.get('nproc')} cores, load {cfg.facts.get('load_average_start')} at start",
        "",
        "**tasks/s** (`*`: cut short by the phase timeout or fewer tasks than asked)",
        "",
        markdown_table(header, throughput),
        "",
        "**latency per operation, p50 / p99 ms** (enqueue: request → reply; drain: claim → ack "
        "reply; pipelined: send → reply; batched: one settle (or acks + claim) round)",
        "",
        markdown_table(header, latency),
        "",
        "**CPU ms per task, server / all clients** (2 cores are shared by both; Huey has no "
        "server process)",
        "",
        markdown_table(header, cpu),
        "",
        "**targets** (durable_tq / peer, same run)",
        "",
    ]
    for target in targets:
        ratio = "n/a" if target["ratio"] is None else f"{target['ratio']:.2f}x"
        parts.append(
            f"- {target['status']}: {target['target']}: {ratio} (need ≥ {target['need']}x)"
        )
    variant = results.get("durable_tq_batched", {}).get("drain_batched", {}).get("variant")
    if variant:
        parts += ["", f"batched drain: {variant}"]
    return "\n".join(parts)


RUNNERS: dict[str, Callable[[Config, Path, Sequence[str]], dict[str, dict]]] = {
    "durable_tq": run_durable_tq,
    "beanstalkd": run_beanstalkd,
    "huey": run_huey,
}


def parse_only(values: Sequence[str] | None) -> tuple[str, ...]:
    if not values:
        return tuple(ROWS)
    chosen: set[str] = set()
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name not in ONLY_NAMES:
                raise SystemExit(f"--only: unknown name {name!r}; known: {sorted(ONLY_NAMES)}")
            chosen.update(ONLY_NAMES[name])
    return tuple(row for row in ROWS if row in chosen)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, help=f"tasks per pattern (default {DEFAULT_TASKS})")
    parser.add_argument("--quick", action="store_true", help="a few hundred tasks, 1 and 4 clients")
    parser.add_argument("--json", metavar="FILE", help="write every figure here ('-': stdout)")
    parser.add_argument("--only", action="append", metavar="NAMES",
                        help=f"comma-separated, repeatable: {', '.join(ONLY_NAMES)}")  # fmt: skip
    parser.add_argument("--phase-timeout", type=float, help="seconds each pattern may take")
    parser.add_argument("--huey-driver", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.huey_driver:
        return huey_driver(args.huey_driver)

    tasks = args.tasks or (QUICK_TASKS if args.quick else DEFAULT_TASKS)
    timeout = args.phase_timeout or (QUICK_PHASE_TIMEOUT if args.quick else PHASE_TIMEOUT)
    cfg = Config(tasks, QUICK_CLIENT_COUNTS if args.quick else CLIENT_COUNTS, timeout,
                 parse_only(args.only))  # fmt: skip
    started = time.time()
    results: dict[str, dict[str, dict]] = {}
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="durable_tq_peers_") as tmp:
        workdir = Path(tmp)
        cfg.facts.update(machine_facts(workdir))
        for system, runner in RUNNERS.items():
            rows = [row for row in SYSTEM_ROWS[system] if row in cfg.rows]
            if not rows:
                continue
            log_stderr(f"{system} ...")
            system_dir = workdir / system
            system_dir.mkdir()
            try:
                results.update(runner(cfg, system_dir, rows))
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                failures[system] = f"{type(exc).__name__}: {exc}"
                log_stderr(f"{system} failed: {failures[system]}")
    cfg.facts["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    targets = evaluate_targets(results)
    text = render(cfg, results, targets)
    print(text, file=sys.stderr if args.json == "-" else sys.stdout)
    report = {
        "config": {
            "tasks": cfg.tasks, "payload_bytes": len(cfg.payload), "client_counts": cfg.counts,
            "phase_timeout": cfg.phase_timeout, "rows": cfg.rows, "quick": args.quick,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        },
        "machine": cfg.facts,
        "results": results,
        "targets": targets,
        "failures": failures,
        "started_at": started,
        "wall_seconds": round(time.time() - started, 1),
    }  # fmt: skip
    if args.json == "-":
        print(json.dumps(report, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
