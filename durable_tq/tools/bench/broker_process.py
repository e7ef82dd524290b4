"""The broker under test: started as ``python -m durable_tq serve``, watched through psutil.

A broker of its own process gets a core of its own and can be measured from outside: its
resident memory is sampled a few times a second (the peak is reported) and its CPU time is read
before and after each measurement.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue as queue_module
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil  # type: ignore[import-untyped]  # no stubs in the dev extras

from durable_tq.tools.bench import wire

_LISTENING = re.compile(r"listening on (?P<url>tcp://\S+) \(database (?P<db>.+)\)")
_HTTP_LISTENING = re.compile(r"HTTP API on (?P<url>https?://\S+)")
_GRPC_LISTENING = re.compile(r"gRPC on grpcs?://\S+:(?P<port>\d+)")
#: How long the HTTP and gRPC lines may follow the listening line (printed right after it).
HTTP_LINE_TIMEOUT = 5.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SAMPLE_INTERVAL = 0.05


class BrokerStartError(Exception):
    """The broker process did not come up; the message carries the end of its log."""


class BrokerProcess:
    """``python -m durable_tq serve --port 0 --db DB`` in a folder of its own; with ``grpc``,
    also ``--grpc 127.0.0.1:0``.

    ``db_path`` is a SQLite file (the folder is its parent), or a ``postgresql://`` URL with
    ``workdir`` for the log (several brokers may share that database).
    """

    def __init__(
        self,
        db_path: Path | str,
        synchronous: str,
        *,
        log_level: str = "WARNING",
        workdir: Path | None = None,
        grpc: bool = False,
    ) -> None:
        self.db_path = db_path
        self.grpc = grpc
        self.grpc_port: int | None = None
        self.workdir = workdir if workdir is not None else Path(db_path).parent
        self.log_path = self.workdir / "broker.log"
        self.synchronous = synchronous
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint: wire.Endpoint | None = None
        self.http_url: str | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> wire.Endpoint:
        command = [
            sys.executable, "-m", "durable_tq", "serve",
            "--host", "127.0.0.1", "--port", "0",
            "--db", str(self.db_path),
            "--log-level", self.log_level,
            *(["--grpc", "127.0.0.1:0"] if self.grpc else []),
        ]  # fmt: skip
        # The developer's own settings must not leak in; the ones that matter are set here.
        env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
        env["DURABLE_TQ_SYNCHRONOUS"] = self.synchronous
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=env,
            )
        url = self._await_listening()
        if url is None:
            code = self.proc.poll()
            self.kill()
            raise BrokerStartError(
                f"the broker did not start within {START_TIMEOUT:.0f} s (exit code {code}); "
                f"its log ends:\n{self.log_tail()}"
            )
        self.endpoint = wire.parse_endpoint(url)
        if self.http_url is not None:
            http_port = urlsplit(self.http_url).port
            self.endpoint = dataclasses.replace(self.endpoint, http_port=http_port)
        if self.grpc_port is not None:
            self.endpoint = dataclasses.replace(self.endpoint, grpc_port=self.grpc_port)
        return self.endpoint

    def _await_listening(self) -> str | None:
        assert self.proc is not None and self.proc.stdout is not None
        lines: queue_module.Queue[bytes | None] = queue_module.Queue()
        stdout = self.proc.stdout

        def pump() -> None:
            try:
                for line in stdout:
                    lines.put(line)
            except (OSError, ValueError):
                pass
            finally:
                lines.put(None)

        threading.Thread(target=pump, daemon=True, name="broker stdout").start()
        deadline = time.monotonic() + START_TIMEOUT
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=remaining)
            except queue_module.Empty:
                return None
            if line is None:
                return None
            match = _LISTENING.search(line.decode(errors="replace"))
            if match is not None:
                self._await_other_faces(lines)
                return match["url"]
        return None

    def _await_other_faces(self, lines: queue_module.Queue[bytes | None]) -> None:
        """The lines after the listening line say where the HTTP API (if it is on) and the
        gRPC API (if asked for) listen."""
        wanted = 2 if self.grpc else 1
        for _ in range(wanted):
            try:
                line = lines.get(timeout=HTTP_LINE_TIMEOUT)
            except queue_module.Empty:
                return
            text = (line or b"").decode(errors="replace")
            if (http := _HTTP_LISTENING.search(text)) is not None:
                self.http_url = http["url"]
            elif (grpc := _GRPC_LISTENING.search(text)) is not None:
                self.grpc_port = int(grpc["port"])

    def stop(self) -> int | None:
        """SIGTERM (graceful), SIGKILL if that takes too long; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


def find_listening_pid(port: int) -> int | None:
    """The local process listening on ``port``, when we may see it (for ``--url``)."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return int(conn.pid) if conn.pid is not None else None
    return None


@dataclass(frozen=True)
class CpuTimes:
    at: float
    cpu: float


class ResourceWatch:
    """Samples a process's RSS in a thread (peak per measurement and overall); reads CPU.

    Given several pids (brokers sharing one PostgreSQL database) it watches their sum: the
    RSS of them all together, and the CPU they spent together.
    """

    def __init__(self, pid: int | Sequence[int] | None) -> None:
        self._processes: list[psutil.Process] = []
        pids = [] if pid is None else [pid] if isinstance(pid, int) else list(pid)
        for one in pids:
            with contextlib.suppress(psutil.Error):
                self._processes.append(psutil.Process(one))
        self._process: psutil.Process | None = self._processes[0] if self._processes else None
        self.peak_rss = 0
        self.window_peak_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self._process is not None

    def __enter__(self) -> ResourceWatch:
        if self._process is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True, name="rss sampler")
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _sample(self) -> None:
        assert self._process is not None
        while not self._stop.wait(SAMPLE_INTERVAL):
            self.sample_once()

    def sample_once(self) -> None:
        if self._process is None:
            return
        try:
            rss = sum(int(process.memory_info().rss) for process in self._processes)
        except psutil.Error:
            return
        self.peak_rss = max(self.peak_rss, rss)
        self.window_peak_rss = max(self.window_peak_rss, rss)

    def start_window(self) -> None:
        self.window_peak_rss = 0
        self.sample_once()

    def cpu(self) -> CpuTimes | None:
        if self._process is None:
            return None
        try:
            times = [process.cpu_times() for process in self._processes]
        except psutil.Error:
            return None
        return CpuTimes(time.monotonic(), sum(t.user + t.system for t in times))
