"""A bare blocking NDJSON connection and pre-built request frames: the cheapest load generator.

The benchmark measures the broker, so the load side must cost as little as possible per
request. A blocking socket, frames put together from bytes templates and one ``json.loads``
per reply cost a few microseconds of CPU per request; ``AsyncClient`` costs several times that
(the ``client-overhead`` figures of ``durable-tq bench`` show how much).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from durable_tq import errors
from durable_tq.client import url as broker_url
from durable_tq.wire.schema import PROTOCOL_VERSION

RECV_BYTES = 1 << 18
CLIENT_NAME = "durable-tq-bench/0.1"


class WireError(Exception):
    """The broker answered a benchmark request with an error, or the connection broke."""


@dataclass(frozen=True)
class Endpoint:
    """Where the broker listens, and the token its ``hello`` needs."""

    host: str
    port: int
    token: str | None = None
    #: The broker's HTTP API port (``durable-tq serve`` prints it; else port + 1).
    http_port: int | None = None
    #: The broker's gRPC port, when it serves gRPC (``durable-tq serve --grpc`` prints it).
    grpc_port: int | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def parse_endpoint(url: str, token: str | None = None) -> Endpoint:
    """``tcp://[TOKEN@]HOST:PORT`` as an :class:`Endpoint`; TLS is not benchmarked."""
    if not url.startswith("tcp://"):
        raise ValueError(f"the benchmark speaks plain tcp:// only, got {url!r}")
    try:
        target = broker_url.parse_url(url)
    except errors.ConfigError as exc:
        raise ValueError(exc.message) from exc
    return Endpoint(target.host, target.port, token if token is not None else target.token)


def payload_bytes_json(size: int, sent_at: float) -> bytes:
    """A JSON payload of about ``size`` bytes carrying the moment it was (meant to be) sent."""
    head = b'{"t":%.6f' % sent_at
    pad = size - len(head) - len(b',"p":""}')
    if pad <= 0:
        return head + b"}"
    return head + b',"p":"' + b"x" * pad + b'"}'


class Frames:
    """Request lines for one queue, put together from bytes templates (no json.dumps)."""

    def __init__(self, queue: str, payload_size: int) -> None:
        if not queue.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"benchmark queue names are plain words, got {queue!r}")
        self.queue = queue.encode()
        self.payload_size = payload_size

    def payload(self, sent_at: float | None = None) -> bytes:
        return payload_bytes_json(self.payload_size, time.time() if sent_at is None else sent_at)

    def enqueue(self, request_id: int, sent_at: float | None = None) -> bytes:
        return b'{"id":%d,"op":"enqueue","queue":"%s","payload":%s}\n' % (
            request_id,
            self.queue,
            self.payload(sent_at),
        )

    def enqueue_many(self, request_id: int, count: int) -> bytes:
        item = b'{"queue":"%s","payload":%s}' % (self.queue, self.payload())
        return b'{"id":%d,"op":"enqueue_many","tasks":[%s]}\n' % (
            request_id,
            b",".join([item] * count),
        )

    def claim(self, request_id: int, max_tasks: int = 1, wait: float = 0.0) -> bytes:
        return b'{"id":%d,"op":"claim","queues":["%s"],"max":%d,"wait":%s}\n' % (
            request_id,
            self.queue,
            max_tasks,
            repr(float(wait)).encode(),
        )

    @staticmethod
    def ack(request_id: int, task_id: int, lease_token: str) -> bytes:
        return b'{"id":%d,"op":"ack","task_id":%d,"lease_token":"%s"}\n' % (
            request_id,
            task_id,
            lease_token.encode(),
        )


class WireConnection:
    """One blocking connection: send whole frames, read whole reply lines."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = 60.0) -> None:
        self.endpoint = endpoint
        self.sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self._next_id = 0

    def __enter__(self) -> WireConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def ids(self, count: int) -> range:
        """``count`` fresh request ids."""
        first = self._next_id + 1
        self._next_id += count
        return range(first, first + count)

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise WireError(f"sending to {self.endpoint.url} failed: {exc}") from exc

    def receive_lines(self) -> list[bytes]:
        """Every complete reply line available, waiting for at least one."""
        while True:
            try:
                chunk = self.sock.recv(RECV_BYTES)
            except OSError as exc:
                raise WireError(f"reading from {self.endpoint.url} failed: {exc}") from exc
            if not chunk:
                raise WireError(f"{self.endpoint.url} closed the connection")
            self._buffer += chunk
            if b"\n" in chunk:
                *lines, self._buffer = self._buffer.split(b"\n")
                return lines

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request and wait for its reply (nothing else may be in flight)."""
        request_id = self.next_id()
        self.send(json.dumps({"id": request_id, "op": op, **args}).encode() + b"\n")
        while True:
            for line in self.receive_lines():
                reply = parse_reply(line)
                if reply.get("id") == request_id:
                    return reply

    def hello(self, worker: dict[str, Any] | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {"version": PROTOCOL_VERSION, "client": CLIENT_NAME}
        if self.endpoint.token is not None:
            args["token"] = self.endpoint.token
        if worker is not None:
            args["worker"] = worker
        return self.request("hello", **args)


def parse_reply(line: bytes) -> dict[str, Any]:
    """One reply line; an ``ok: false`` reply raises :class:`WireError`."""
    reply: dict[str, Any] = json.loads(line)
    if reply.get("ok") is not True:
        error = reply.get("error") or {}
        raise WireError(f"{error.get('code', '?')}: {error.get('message', reply)}")
    return reply


def connect(endpoint: Endpoint) -> WireConnection:
    """A connection that has said ``hello``."""
    conn = WireConnection(endpoint)
    try:
        conn.hello()
    except BaseException:
        conn.close()
        raise
    return conn


def check_all(lines: Iterable[bytes]) -> int:
    """Parse reply lines that only need to be ``ok``; how many there were."""
    count = 0
    for line in lines:
        parse_reply(line)
        count += 1
    return count
