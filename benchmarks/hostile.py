"""Hostile peers and a broker process with a lowered fd limit, for the hardening tests and
benchmarks/soak.py. Plain blocking sockets: the peers are deliberately not polite clients."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

_LISTENING = re.compile(rb"listening on tcp://[^:]+:(\d+)")


class Broker:
    """``python -m durable_tq serve`` with ``RLIMIT_NOFILE`` set to ``nofile`` (soft and hard,
    so it cannot raise it) and DURABLE_TQ_* settings from ``settings``."""

    def __init__(self, workdir: Path, *, nofile: int | None = None, **settings: Any) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
        env.update({f"DURABLE_TQ_{k.upper()}": str(v) for k, v in settings.items()})
        self.log_path = workdir / "broker.log"
        command = [sys.executable, "-m", "durable_tq", "serve", "--host", "127.0.0.1",
                   "--port", "0", "--db", str(workdir / "broker.db")]  # fmt: skip

        def limit_files() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
                env=env,
                preexec_fn=limit_files,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = _LISTENING.search(line)
        if match is None:
            self.proc.kill()
            raise RuntimeError(f"broker did not start: {line!r}\n{self.log_text()[-3000:]}")
        self.port = int(match[1])
        self.url = f"tcp://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def terminate(self, timeout: float = 60.0) -> tuple[int | None, float]:
        """SIGTERM; (exit code or None if still running after ``timeout``, seconds taken)."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - began

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def line(op: str, request_id: Any = 1, **args: Any) -> bytes:
    return json.dumps({"id": request_id, "op": op, **args}).encode() + b"\n"


class Peer:
    """One blocking NDJSON connection."""

    def __init__(self, port: int, timeout: float = 10.0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # a small window: the broker's writes block sooner
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")

    def request(self, op: str, request_id: Any = 1, **args: Any) -> dict[str, Any]:
        self.sock.sendall(line(op, request_id, **args))
        while True:
            raw = self.file.readline()
            if not raw:
                raise ConnectionError("the broker closed the connection")
            reply: dict[str, Any] = json.loads(raw)
            if reply.get("id") == request_id:
                return reply

    def hello(self, **args: Any) -> dict[str, Any]:
        return self.request("hello", "hello", version=1, client="hostile-test", **args)

    def flood(self, data: bytes, seconds: float) -> int:
        """Send ``data`` over and over without reading, for at most ``seconds`` or until the
        broker stops taking it; the bytes sent."""
        sent = 0
        deadline = time.monotonic() + seconds
        self.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                sent += self.sock.send(data)
            except TimeoutError:
                break  # the broker stopped reading: TCP pushes back
            except OSError:
                break
        return sent

    def closed_by_broker(self, within: float) -> bool:
        """True if the broker closes the connection within ``within`` seconds (input read
        and discarded meanwhile)."""
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                if not self.sock.recv(1 << 20):
                    return True
            except TimeoutError:
                continue
            except OSError:
                return True
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self.file.close()
        self.sock.close()


def open_silent(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that never send anything (connect errors are skipped)."""
    sockets = []
    for _ in range(count):
        with contextlib.suppress(OSError):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    return sockets


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def in_threads(*targets: Any) -> list[threading.Thread]:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    return threads


def claim_flood(port: int, queues: int, seconds: float, window: int = 256) -> int:
    """Pipeline claims over ``queues`` (empty) queues, ``window`` in flight, reading replies,
    for ``seconds``; the claims answered."""
    names = [f"flood-{n}" for n in range(queues)]
    peer = Peer(port)
    peer.hello()
    request = line("claim", 0, queues=names, max=10, wait=0)
    answered = 0
    deadline = time.monotonic() + seconds
    for _ in range(window):
        peer.sock.sendall(request)
    while time.monotonic() < deadline:
        if not peer.file.readline():
            break
        answered += 1
        peer.sock.sendall(request)
    peer.close()
    return answered


if __name__ == "__main__":
    if sys.argv[1] == "claim-flood":
        print(claim_flood(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
