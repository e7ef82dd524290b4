"""gRPC beside TCP on one broker subprocess (synchronous=FULL, a temp file): enqueue one at a
time, enqueue pipelined (concurrent unary calls / pipelined AsyncClient requests), and
end to end through the gRPC Work stream (credits, batched settles) against TCP's
claim-ack loop through AsyncClient.

    .venv/bin/python benchmarks/grpc_vs_tcp.py [N]
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import grpc.aio

from durable_tq.client import AsyncClient
from durable_tq.servers.grpc import durable_tq_pb2 as pb
from durable_tq.servers.grpc import durable_tq_pb2_grpc as pb_grpc

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000
SEQUENTIAL = min(N, 1_000)
CONCURRENT = 64
CREDIT = 64
PAYLOAD = json.dumps({"n": 1, "text": "hello"})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def timed(label: str, count: int, run: Callable[[], Awaitable[Any]]) -> None:
    started = time.perf_counter()
    await run()
    wall = time.perf_counter() - started
    print(f"{label:<44} {count:>6} tasks {wall:6.2f} s {count / wall:8.0f}/s")


async def concurrently(count: int, call: Callable[[int], Awaitable[Any]]) -> None:
    numbers = iter(range(count))

    async def lane() -> None:
        for n in numbers:
            await call(n)

    async with anyio.create_task_group() as tg:
        for _ in range(CONCURRENT):
            tg.start_soon(lane)


async def grpc_stream_drain(stub: Any, queue: str, count: int) -> None:
    call = stub.Work()
    worker = pb.WorkerSpec(id=f"bench-{queue}", queues=[queue], concurrency=CREDIT)
    await call.write(pb.WorkRequest(open=pb.WorkOpen(worker=worker), credit=CREDIT))
    done = 0
    async for response in call:
        if response.tasks:
            settles = [
                pb.SettleItem(task_id=t.task_id, lease_token=t.lease_token, outcome="ack")
                for t in response.tasks
            ]
            await call.write(pb.WorkRequest(settles=settles, credit=len(settles)))
        if response.HasField("settled"):
            done += sum(1 for r in response.settled.results if r.ok)
            if done >= count:
                await call.done_writing()
                break
    call.cancel()


async def tcp_drain(client: AsyncClient, queue: str, count: int) -> None:
    done = 0
    while done < count:
        tasks = await client.claim(queue, max=CREDIT, wait=1)
        async with anyio.create_task_group() as tg:
            for task in tasks:
                tg.start_soon(client.ack, task.task_id, task.lease_token)
        done += len(tasks)


async def main(tcp_port: int, grpc_port: int) -> None:
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
        AsyncClient("127.0.0.1", tcp_port) as client,
    ):
        stub = pb_grpc.DurableTQStub(channel)

        async def grpc_enqueue(queue: str) -> Callable[[int], Awaitable[Any]]:
            async def one(n: int) -> Any:
                return await stub.Enqueue(pb.EnqueueRequest(queue=queue, payload_json=PAYLOAD))

            return one

        async def tcp_enqueue(queue: str) -> Callable[[int], Awaitable[Any]]:
            async def one(n: int) -> Any:
                return await client.enqueue(queue, {"n": 1, "text": "hello"})

            return one

        for _ in range(100):  # warm up both
            await stub.Enqueue(pb.EnqueueRequest(queue="warm", payload_json=PAYLOAD))
            await client.enqueue("warm", {"n": 0})

        async def sequential(call: Callable[[int], Awaitable[Any]]) -> None:
            for n in range(SEQUENTIAL):
                await call(n)

        g_seq, t_seq = await grpc_enqueue("g-seq"), await tcp_enqueue("t-seq")
        await timed("gRPC enqueue, one at a time", SEQUENTIAL, lambda: sequential(g_seq))
        await timed("TCP  enqueue, one at a time", SEQUENTIAL, lambda: sequential(t_seq))
        g_pipe, t_pipe = await grpc_enqueue("g"), await tcp_enqueue("t")
        await timed(
            f"gRPC enqueue, {CONCURRENT} concurrent unary calls", N,
            lambda: concurrently(N, g_pipe),
        )  # fmt: skip
        await timed(
            f"TCP  enqueue, {CONCURRENT} pipelined requests", N,
            lambda: concurrently(N, t_pipe),
        )  # fmt: skip
        await timed(
            f"gRPC Work stream drain (credit {CREDIT})", N,
            lambda: grpc_stream_drain(stub, "g", N),
        )  # fmt: skip
        await timed(
            f"TCP  claim max {CREDIT} + acks drain", N,
            lambda: tcp_drain(client, "t", N),
        )  # fmt: skip


if __name__ == "__main__":
    tcp_port, grpc_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as folder:
        command = [
            sys.executable, "-m", "durable_tq", "serve", "--port", str(tcp_port),
            "--db", f"{folder}/bench.db", "--grpc", f"127.0.0.1:{grpc_port}",
            "--log-level", "WARNING",
        ]  # fmt: skip
        broker = subprocess.Popen(command, stdout=subprocess.PIPE)
        try:
            assert broker.stdout is not None
            broker.stdout.readline()
            broker.stdout.readline()
            anyio.run(main, tcp_port, grpc_port)
        finally:
            broker.terminate()
            broker.wait(30)
