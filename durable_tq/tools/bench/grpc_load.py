"""Load roles over the gRPC API (needs the grpc extra): unary enqueues and the ``Work`` stream.

Like the TCP roles in ``loadgen``, each runs in a process of its own, opens its channel and
waits for the call to be ready before ``gate()``, then starts its clock. The client is
``grpc.aio`` with the generated stubs, the lightest gRPC client at hand for Python (its core
is C), as raw sockets are for the TCP roles.
"""

from __future__ import annotations

import time
from typing import Any

from durable_tq.tools.bench.loadgen import Counter, Gate, LoadResult, LoadSpec, _Clock
from durable_tq.tools.bench.wire import Frames

#: How long a role may wait for its channel to connect.
CONNECT_TIMEOUT = 30.0


def _target(spec: LoadSpec) -> str:
    endpoint = spec.endpoint
    if endpoint.grpc_port is None:
        raise RuntimeError("the broker under test serves no gRPC (start it with --grpc)")
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return f"{host}:{endpoint.grpc_port}"


def _stub(pb_grpc: Any, channel: Any) -> Any:
    """The generated stub (untyped: grpc_tools writes no annotations for it)."""
    return pb_grpc.DurableTQStub(channel)


def _metadata(spec: LoadSpec) -> tuple[tuple[str, str], ...]:
    token = spec.endpoint.token
    return (("authorization", f"Bearer {token}"),) if token else ()


def grpc_enqueue(spec: LoadSpec, gate: Gate, counter: Counter) -> LoadResult:
    """``spec.tasks`` ``Enqueue`` calls, ``spec.window`` in flight on one channel (1: one at a
    time). Latency: each call, from issuing it to its reply."""
    import anyio
    import grpc.aio

    from durable_tq.servers.grpc import durable_tq_pb2 as pb
    from durable_tq.servers.grpc import durable_tq_pb2_grpc as pb_grpc

    frames = Frames(spec.queue, spec.payload_bytes)
    metadata = _metadata(spec)

    async def run() -> LoadResult:
        async with grpc.aio.insecure_channel(_target(spec)) as channel:
            with anyio.fail_after(CONNECT_TIMEOUT):
                await channel.channel_ready()
            stub = _stub(pb_grpc, channel)
            await anyio.to_thread.run_sync(gate)
            left = spec.tasks
            latencies: list[float] = []

            async def lane() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    request = pb.EnqueueRequest(
                        queue=spec.queue, payload_json=frames.payload().decode()
                    )
                    started = time.perf_counter()
                    await stub.Enqueue(request, metadata=metadata)
                    latencies.append(time.perf_counter() - started)
                    if len(latencies) % 64 == 0:
                        counter.set(len(latencies))

            clock = _Clock()
            async with anyio.create_task_group() as lanes:
                for _ in range(spec.window):
                    lanes.start_soon(lane)
            counter.set(len(latencies))
            return clock.result(len(latencies), latencies, len(latencies))

    return anyio.run(run, backend="asyncio")


def grpc_stream_worker(spec: LoadSpec, gate: Gate, counter: Counter) -> LoadResult:
    """A ``Work`` stream beside a running producer: latency from the enqueue (the payload's
    ``t``) to the task arriving here, as for the ``worker`` role. See :func:`_work_stream`."""
    return _work_stream(spec, gate, counter, since_enqueue=True)


def grpc_stream_drain(spec: LoadSpec, gate: Gate, counter: Counter) -> LoadResult:
    """A ``Work`` stream draining preloaded tasks: latency from a task arriving here to its ack
    being confirmed. See :func:`_work_stream`."""
    return _work_stream(spec, gate, counter, since_enqueue=False)


def _work_stream(
    spec: LoadSpec, gate: Gate, counter: Counter, *, since_enqueue: bool
) -> LoadResult:
    """A ``Work`` stream granting ``spec.batch`` credits, acking every task it is pushed (all
    of a push in one settle, which returns the credits), until ``spec.tasks`` were acked."""
    import json

    import anyio
    import grpc.aio

    from durable_tq.servers.grpc import durable_tq_pb2 as pb
    from durable_tq.servers.grpc import durable_tq_pb2_grpc as pb_grpc

    metadata = _metadata(spec)
    credit = spec.batch

    async def run() -> LoadResult:
        async with grpc.aio.insecure_channel(_target(spec)) as channel:
            with anyio.fail_after(CONNECT_TIMEOUT):
                await channel.channel_ready()
            call = _stub(pb_grpc, channel).Work(metadata=metadata)
            worker = pb.WorkerSpec(
                id=f"bench-grpc-{spec.queue}", queues=[spec.queue], concurrency=credit
            )
            await call.write(pb.WorkRequest(open=pb.WorkOpen(worker=worker, client="bench")))
            opened = await call.read()
            if not opened.HasField("opened"):
                raise RuntimeError(f"the Work stream did not open: {opened}")
            await anyio.to_thread.run_sync(gate)
            clock = _Clock()
            await call.write(pb.WorkRequest(credit=credit))
            latencies: list[float] = []
            settled: list[float] = []
            arrived: dict[int, float] = {}
            acked = requests = 0
            while acked < spec.tasks:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise RuntimeError(f"the Work stream ended after {acked} acks")
                now, wall = time.perf_counter(), time.time()
                if response.tasks:
                    settles = []
                    for task in response.tasks:
                        if since_enqueue:
                            latencies.append(wall - json.loads(task.payload_json)["t"])
                        arrived[task.task_id] = now
                        settles.append(
                            pb.SettleItem(
                                task_id=task.task_id, lease_token=task.lease_token, outcome="ack"
                            )
                        )
                    # The acks and as many new credits in one message: one commit for them.
                    await call.write(pb.WorkRequest(settles=settles, credit=len(settles)))
                    requests += 1
                if response.HasField("settled"):
                    for result in response.settled.results:
                        if not result.ok:
                            raise RuntimeError(f"an ack was refused: {result}")
                        settled.append(now - arrived.pop(result.task_id))
                        acked += 1
                    counter.set(acked)
            finished = clock.result(acked, latencies if since_enqueue else settled, requests)
            await call.done_writing()
            call.cancel()
            return finished

    return anyio.run(run, backend="asyncio")
