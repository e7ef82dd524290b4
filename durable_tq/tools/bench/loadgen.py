"""The load roles a benchmark process plays: producers, consumers and workers.

Each role runs in a process of its own (see ``fleet``), connects and says ``hello`` first, then
calls ``gate()`` (which reports it ready and blocks until every process is ready), and only then
starts its clock. It returns a :class:`LoadResult`: how many tasks it moved, its window on the
shared monotonic clock, the CPU it spent doing so, and one latency sample per task or request.

Producers and consumers speak the wire directly (``wire``); ``enqueue-async-client`` drives
``AsyncClient`` instead so its cost per request can be compared, ``worker`` runs the real
``durable_tq.Worker`` runtime, and the ``grpc-*`` roles (``grpc_load``) use the gRPC API.
"""

from __future__ import annotations

import logging
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from durable_tq.tools.bench import wire
from durable_tq.tools.bench.wire import Frames, WireConnection

Gate = Callable[[], None]


class Counter:
    """Where a process publishes how far it got (a slot of shared memory)."""

    def __init__(self, slots: Any, index: int) -> None:
        self._slots = slots
        self._index = index

    def set(self, value: int) -> None:
        self._slots[self._index] = value

    def get(self) -> int:
        return int(self._slots[self._index])


@dataclass(frozen=True)
class LoadSpec:
    """What one load process does."""

    role: str
    endpoint: wire.Endpoint
    queue: str
    tasks: int
    payload_bytes: int = 100
    window: int = 1  # requests in flight on the connection
    batch: int = 1  # tasks per enqueue_many / per claim
    rate: float = 0.0  # open loop: enqueues per second
    wait: float = 0.0  # long-poll of a claim
    concurrency: int = 1  # worker slots
    prefetch: int = 0  # worker: tasks held beyond its slots
    deadline: float = 600.0  # seconds a role may run before it gives up


@dataclass
class LoadResult:
    """What one load process measured."""

    tasks: int
    started: float  # time.monotonic(), the same clock in every process on Linux
    finished: float
    cpu_seconds: float  # CPU this process used between started and finished
    latencies: list[float] = field(default_factory=list)  # seconds
    requests: int = 0
    secondary: list[float] = field(default_factory=list)  # e.g. enqueue replies of a producer


class _Clock:
    """The timed window of a role: wall clock and this process's CPU."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._cpu = time.process_time()

    def result(self, tasks: int, latencies: list[float], requests: int) -> LoadResult:
        return LoadResult(
            tasks=tasks,
            started=self.started,
            finished=time.monotonic(),
            cpu_seconds=time.process_time() - self._cpu,
            latencies=latencies,
            requests=requests,
        )


# --- producers ----------------------------------------------------------------------------------


def _closed_loop(
    conn: WireConnection,
    frame: Callable[[int], bytes],
    requests: int,
    window: int,
    tasks_per_request: int,
    counter: Counter,
) -> tuple[list[float], int]:
    """Keep ``window`` requests in flight until ``requests`` are answered; reply latencies."""
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    issued = answered = 0
    first_ids = conn.ids(min(window, requests))
    first = [frame(rid) for rid in first_ids]
    issued = len(first)
    stamp = time.perf_counter()
    for rid in first_ids:
        sent_at[rid] = stamp
    conn.send(b"".join(first))
    while answered < requests:
        lines = conn.receive_lines()
        now = time.perf_counter()
        out: list[bytes] = []
        new_ids: list[int] = []
        for line in lines:
            reply = wire.parse_reply(line)
            latencies.append(now - sent_at.pop(reply["id"]))
            answered += 1
            if issued < requests:
                rid = conn.next_id()
                out.append(frame(rid))
                new_ids.append(rid)
                issued += 1
        if out:
            stamp = time.perf_counter()
            for rid in new_ids:
                sent_at[rid] = stamp
            conn.send(b"".join(out))
        counter.set(answered * tasks_per_request)
    return latencies, answered


def enqueue(spec: LoadSpec, gate: Gate, counter: Counter) -> LoadResult:
    """``spec.tasks`` enqueues, ``spec.window`` in flight (1: one request at a time)."""
    frames = Frames(spec.queue, spec.payload_bytes)
    with wire.connect(spec.endpoint) as conn:
        gate()
        clock = _Clock()
        latencies, requests = _closed_loop(
            conn, frames.enqueue, spec.tasks, spec.window, 1, counter
        )
        return clock.result(spec.tasks, latencies, requests)


def enqueue_many(spec: LoadSpec, gate: Gate, counter: Counter) -> LoadResult:
    """``spec.tasks`` tasks in ``enqueue_many`` requests of ``spec.batch``."""
    frames = Frames(spec.queue, spec.payload_bytes)
    requests = -(-spec.tasks // spec.batch)
    with wire.connect(spec.endpoint) as conn:
        gate()
        clock = _Clock()
        latencies, answered = _closed_loop(
            conn,
            lambda rid: frames.enqueue_many(rid, spec.batch),
            requests,
            spec.window,
            spec.batch,
            counter,
        )
        return clock.result(answered * spec.batch, latencies, answered)


def enqueue_async_client(spec: LoadSpec, gate: Gate, counter: Counter) -> LoadResult:
    """Like ``enqueue`` with a window, but through ``AsyncClient`` (its overhead included)."""
    import anyio

    from durable_tq.client import AsyncClient

    async def run() -> LoadResult:
        async with AsyncClient(
            spec.endpoint.host,
            spec.endpoint.port,
            token=spec.endpoint.token,
            client_name=wire.CLIENT_NAME,
        ) as client:
            await anyio.to_thread.run_sync(gate)
            left = spec.tasks
            done = 0
            latencies: list[float] = []
            pad = "x" * max(0, spec.payload_bytes - 40)

            async def lane() -> None:
                nonlocal left, done
                while left > 0:
                    left -= 1
                    started = time.perf_counter()
                    await client.enqueue(spec.queue, {"t": time.time(), "p": pad})
                    latencies.append(time.perf_counter() - started)
                    done += 1
                    if done % 64 == 0:
                        counter.set(done)

            clock = _Clock()
            async with anyio.create_task_group() as lanes:
                for _ in range(spec.window):
                    lanes.start_soon(lane)
            counter.set(done)
            return clock.result(done, latencies, done)

    return anyio.run(run, backend="asyncio")


def open_loop_producer(spec: LoadSpec, gate: Gate, counter: Counter) -> LoadResult:
    """``spec.tasks`` enqueues at ``spec.rate`` a second, on schedule whatever the replies do.

    Each payload carries the moment its enqueue was due, not when it went out, so a producer
    that falls behind shows up in the latencies instead of hiding them.
    """
    frames = Frames(spec.queue, spec.payload_bytes)
    interval = 1.0 / spec.rate
    with wire.connect(spec.endpoint) as conn:
        selector = selectors.DefaultSelector()
        selector.register(conn.sock, selectors.EVENT_READ)
        gate()
        clock = _Clock()
        wall_start = time.time()
        due_at: dict[int, float] = {}
        reply_latencies: list[float] = []
        sent = answered = 0
        while answered < spec.tasks:
            now = time.monotonic()
            due = min(spec.tasks, int((now - clock.started) / interval) + 1)
            if sent < due:
                out = []
                for index in range(sent, due):
                    rid = conn.next_id()
                    due_at[rid] = clock.started + index * interval
                    out.append(frames.enqueue(rid, sent_at=wall_start + index * interval))
                sent = due
                conn.send(b"".join(out))
            timeout = clock.started + sent * interval - time.monotonic() if sent < spec.tasks else 1
            if selector.select(max(timeout, 0.0)):
                lines = conn.receive_lines()
                now = time.monotonic()
                for line in lines:
                    reply = wire.parse_reply(line)
                    reply_latencies.append(now - due_at.pop(reply["id"]))
                    answered += 1
                counter.set(answered)
            if now - clock.started > spec.deadline:
                raise wire.WireError(f"the producer sent {sent} of {spec.tasks} in time")
        selector.close()
        result = clock.result(answered, [], answered)
        result.secondary = reply_latencies
        return result


# --- consumers ----------------------------------------------------------------------------------


def drain_one_at_a_time(spec: LoadSpec, gate: Gate, counter: Counter) -> LoadResult:
    """Claim one task, ack it, wait for each reply; until a claim comes back empty.

    Latency: from sending the claim to the ack's reply.
    """
    frames = Frames(spec.queue, spec.payload_bytes)
    with wire.connect(spec.endpoint) as conn:
        gate()
        clock = _Clock()
        latencies: list[float] = []
        done = requests = 0
        while True:
            started = time.perf_counter()
            conn.send(frames.claim(conn.next_id()))
            (line,) = conn.receive_lines()
            tasks = wire.parse_reply(line)["tasks"]
            requests += 1
            if not tasks:
                break
            task = tasks[0]
            conn.send(Frames.ack(conn.next_id(), task["task_id"], task["lease_token"]))
            (line,) = conn.receive_lines()
            wire.parse_reply(line)
            requests += 1
            latencies.append(time.perf_counter() - started)
            done += 1
            counter.set(done)
        return clock.result(done, latencies, requests)


def drain_batched(spec: LoadSpec, gate: Gate, counter: Counter) -> LoadResult:
    """Claim ``spec.batch`` at a time; send their acks and the next claim together, so acks
    and claims share commits. Latency: from sending a task's claim to its ack's reply."""
    frames = Frames(spec.queue, spec.payload_bytes)
    with wire.connect(spec.endpoint) as conn:
        gate()
        clock = _Clock()
        latencies: list[float] = []
        acks: dict[int, float] = {}
        done = requests = 0
        first_claim = conn.next_id()
        claim_id: int | None = first_claim
        claim_sent = time.perf_counter()
        conn.send(frames.claim(first_claim, spec.batch))
        while claim_id is not None or acks:
            lines = conn.receive_lines()
            now = time.perf_counter()
            for line in lines:
                reply = wire.parse_reply(line)
                requests += 1
                if reply["id"] != claim_id:
                    latencies.append(now - acks.pop(reply["id"]))
                    done += 1
                    continue
                tasks = reply["tasks"]
                if not tasks:
                    claim_id = None
                    continue
                out = []
                for task in tasks:
                    rid = conn.next_id()
                    acks[rid] = claim_sent
                    out.append(Frames.ack(rid, task["task_id"], task["lease_token"]))
                claim_id = conn.next_id()
                out.append(frames.claim(claim_id, spec.batch))
                claim_sent = time.perf_counter()
                conn.send(b"".join(out))
            counter.set(done)
        return clock.result(done, latencies, requests)


def long_poll_consumer(spec: LoadSpec, gate: Gate, counter: Counter) -> LoadResult:
    """Long-poll claims (up to ``spec.batch``, ``wait`` seconds) until ``spec.tasks`` came;
    acks go out with the next claim. Latency: from the enqueue being due (its payload's ``t``)
    to the claim's reply arriving here."""
    frames = Frames(spec.queue, spec.payload_bytes)
    with wire.connect(spec.endpoint) as conn:
        gate()
        clock = _Clock()
        latencies: list[float] = []
        claim_id = conn.next_id()
        conn.send(frames.claim(claim_id, spec.batch, spec.wait))
        got = requests = outstanding_acks = 0
        while got < spec.tasks or outstanding_acks:
            lines = conn.receive_lines()
            arrived = time.time()
            out: list[bytes] = []
            for line in lines:
                reply = wire.parse_reply(line)
                requests += 1
                if reply["id"] != claim_id:
                    outstanding_acks -= 1
                    continue
                for task in reply["tasks"]:
                    latencies.append(arrived - task["payload"]["t"])
                    out.append(Frames.ack(conn.next_id(), task["task_id"], task["lease_token"]))
                    outstanding_acks += 1
                    got += 1
                if got < spec.tasks:
                    claim_id = conn.next_id()
                    out.append(frames.claim(claim_id, spec.batch, spec.wait))
            if out:
                conn.send(b"".join(out))
            counter.set(got)
            if time.monotonic() - clock.started > spec.deadline:
                raise wire.WireError(f"the consumer got {got} of {spec.tasks} tasks in time")
        return clock.result(got, latencies, requests)


def worker(spec: LoadSpec, gate: Gate, counter: Counter, stop: Any) -> LoadResult:
    """``durable_tq.Worker`` with a no-op handler, until ``stop`` is set.

    Latency: from the enqueue (its payload's ``t``) to the handler starting.
    """
    import anyio

    from durable_tq.worker import Worker

    logging.getLogger("durable_tq").setLevel(logging.WARNING)
    latencies: list[float] = []
    last_start = [0.0]
    runner = Worker(
        url=spec.endpoint.url,
        token=spec.endpoint.token,
        concurrency=spec.concurrency,
        prefetch=spec.prefetch,
        wait=spec.wait or 1.0,
        grace=5.0,
    )

    @runner.task(spec.queue)
    async def noop(payload: dict[str, Any]) -> None:
        latencies.append(time.time() - payload["t"])
        last_start[0] = time.monotonic()
        counter.set(len(latencies))

    async def run() -> LoadResult:
        async with anyio.create_task_group() as group:
            group.start_soon(runner.run)
            # Connected and registered before the start gate: the clock leaves that out.
            with anyio.fail_after(60):
                # The Worker offers no "connected" event to wait on.
                while not runner.running:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            await anyio.to_thread.run_sync(gate)
            clock = _Clock()
            await anyio.to_thread.run_sync(stop.wait)
            finished = clock.result(len(latencies), latencies, 0)
            # The window ends when the last task started here, not when we were told to stop.
            finished.finished = max(last_start[0], clock.started)
            runner.stop()
        return finished

    return anyio.run(run, backend="asyncio")


def http_enqueue(spec: LoadSpec, gate: Gate, counter: Counter) -> LoadResult:
    """``spec.tasks`` enqueues over the HTTP API, one at a time on one keep-alive connection
    (``http.client``: the lightest HTTP/1.1 client at hand, so the figure is the broker's)."""
    import http.client

    endpoint = spec.endpoint
    frames = Frames(spec.queue, spec.payload_bytes)
    port = endpoint.http_port if endpoint.http_port is not None else endpoint.port + 1
    conn = http.client.HTTPConnection(endpoint.host, port, timeout=spec.deadline)
    headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
    if endpoint.token:
        headers["Authorization"] = f"Bearer {endpoint.token}"
    path = f"/v1/queues/{spec.queue}/tasks"
    conn.connect()
    try:
        gate()
        clock = _Clock()
        latencies: list[float] = []
        for done in range(1, spec.tasks + 1):
            body = b'{"payload":%s}' % frames.payload()
            started = time.perf_counter()
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            reply = response.read()
            if response.status != 201:
                raise RuntimeError(f"HTTP enqueue got {response.status}: {reply[:200]!r}")
            latencies.append(time.perf_counter() - started)
            counter.set(done)
        return clock.result(spec.tasks, latencies, spec.tasks)
    finally:
        conn.close()


# --- gRPC (durable_tq.tools.bench.grpc_load; imported when used: it needs the grpc extra) -----


def grpc_enqueue(spec: LoadSpec, gate: Gate, counter: Counter) -> LoadResult:
    from durable_tq.tools.bench import grpc_load

    return grpc_load.grpc_enqueue(spec, gate, counter)


def grpc_stream_drain(spec: LoadSpec, gate: Gate, counter: Counter) -> LoadResult:
    from durable_tq.tools.bench import grpc_load

    return grpc_load.grpc_stream_drain(spec, gate, counter)


def grpc_stream_worker(spec: LoadSpec, gate: Gate, counter: Counter) -> LoadResult:
    from durable_tq.tools.bench import grpc_load

    return grpc_load.grpc_stream_worker(spec, gate, counter)


ROLES: dict[str, Callable[..., LoadResult]] = {
    "enqueue": enqueue,
    "http-enqueue": http_enqueue,
    "enqueue-many": enqueue_many,
    "enqueue-async-client": enqueue_async_client,
    "open-loop-producer": open_loop_producer,
    "drain-one": drain_one_at_a_time,
    "drain-batched": drain_batched,
    "long-poll-consumer": long_poll_consumer,
    "grpc-enqueue": grpc_enqueue,
    "grpc-stream-drain": grpc_stream_drain,
    "grpc-stream-worker": grpc_stream_worker,
}
#: Roles that run until the coordinator says stop (they take the stop event too).
OPEN_ENDED_ROLES: dict[str, Callable[..., LoadResult]] = {"worker": worker}
