"""Flow control and schedules end to end: real broker on a loopback port, real workers."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from typing import Any

import anyio
import grpc.aio
import httpx
import pytest

from durable_tq import Worker
from durable_tq.client import AsyncClient
from durable_tq.servers.grpc import durable_tq_pb2 as pb
from durable_tq.servers.grpc import durable_tq_pb2_grpc as pb_grpc
from durable_tq.servers.tcp import BrokerServer

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

LIMIT = 60.0


def make_worker(url: str, **options: Any) -> Worker:
    options.setdefault("wait", 0.5)
    options.setdefault("heartbeat_interval", 0.2)
    return Worker(url=url, **options)


async def drain_all(workers: list[Worker]) -> None:
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            for worker in workers:
                tg.start_soon(worker.drain)


async def test_rate_20_per_second_over_100_tasks_takes_about_5_seconds(
    server: BrokerServer,
) -> None:
    """The issue's acceptance check: 100 tasks at 20/s with 4 workers take 4.5-5.5 s."""
    async with AsyncClient.from_url(server.url) as client:
        await client.set_queue_limits("rated", rate=20)
        for n in range(100):
            await client.enqueue("rated", n)
        workers = []
        done: list[float] = []
        for _ in range(4):
            worker = make_worker(server.url, concurrency=8)

            @worker.task("rated")
            def handle(n: int) -> None:
                done.append(time.monotonic())

            workers.append(worker)
        started = time.monotonic()
        await drain_all(workers)
        # Until the last task ran (drain's own check that the queue stays idle is not counted).
        took = max(done) - started
        assert len(done) == 100
        print(f"100 tasks at 20/s with 4 workers: {took:.2f} s")
        assert 4.5 <= took <= 5.5, took


async def test_max_leased_2_never_shows_more_than_2(server: BrokerServer) -> None:
    async with AsyncClient.from_url(server.url) as client:
        await client.set_queue_limits("capped", max_leased=2)
        for n in range(20):
            await client.enqueue("capped", n)
        running = 0
        most = 0
        sampled: list[int] = []
        workers = []
        for _ in range(3):
            worker = make_worker(server.url, concurrency=4)

            @worker.task("capped")
            async def handle(n: int) -> None:
                nonlocal running, most
                running += 1
                most = max(most, running)
                await anyio.sleep(0.05)
                running -= 1

            workers.append(worker)

        async def sample() -> None:
            while True:
                stats = await client.stats()
                sampled.append(stats.queues["capped"].leased)
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sample)
            await drain_all(workers)
            tg.cancel_scope.cancel()
        assert most <= 2 and max(sampled) <= 2, (most, max(sampled))
        assert most == 2


async def test_key_concurrency_1_runs_each_key_serially_and_keys_in_parallel(
    server: BrokerServer,
) -> None:
    async with AsyncClient.from_url(server.url) as client:
        await client.set_queue_limits("keyed", key_concurrency=1)
        for n in range(6):
            for key in ("a", "b"):
                await client.enqueue("keyed", {"key": key, "n": n}, concurrency_key=key)
        running: Counter[str] = Counter()
        most: Counter[str] = Counter()
        both = False
        worker = make_worker(server.url, concurrency=8)

        @worker.task("keyed")
        async def handle(task: dict[str, Any]) -> None:
            nonlocal both
            key = task["key"]
            running[key] += 1
            most[key] = max(most[key], running[key])
            both = both or (running["a"] > 0 and running["b"] > 0)
            await anyio.sleep(0.05)
            running[key] -= 1

        await drain_all([worker])
        assert most == Counter({"a": 1, "b": 1})
        assert both


async def until_succeeded(client: AsyncClient, queue: str, count: int) -> None:
    for _ in range(int(LIMIT * 10)):
        counts = (await client.stats()).queues.get(queue)
        if counts is not None and counts.succeeded >= count:
            return
        await anyio.sleep(0.1)
    raise AssertionError(f"{queue}: fewer than {count} tasks succeeded")


async def test_periodic_worker_registers_its_schedule_once(server: BrokerServer) -> None:
    first = make_worker(server.url)
    second = make_worker(server.url)
    for worker in (first, second):

        @worker.periodic(every="2s", queue="ticks", payload={"tick": True})
        def tick(tick: bool) -> None:
            pass

    async with AsyncClient.from_url(server.url) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.run)
            tg.start_soon(second.run)
            with anyio.fail_after(LIMIT):
                # Fires once per slot however many workers registered it.
                await until_succeeded(client, "ticks", 2)
            first.stop()
            second.stop()
        schedules = await client.schedule_list()
        assert [s.name for s in schedules] == ["ticks"]
        tasks = (await client.request("list", queue="ticks"))["tasks"]
        keys = [t["unique_key"] for t in tasks]
        assert len(keys) == len(set(keys))


async def test_concurrency_key_is_shown_by_get_and_list_on_every_face(
    make_server: Any,
) -> None:
    """``concurrency_key`` in the task info: TCP client, CLI (JSON and text), HTTP, gRPC."""
    async with (
        make_server(grpc="127.0.0.1:0") as server,
        AsyncClient.from_url(server.url) as client,
    ):
        keyed = (await client.enqueue("tenants", 1, concurrency_key="tenant-7")).task_id
        plain = (await client.enqueue("tenants", 2)).task_id

        assert (await client.get(keyed)).concurrency_key == "tenant-7"
        assert (await client.get(plain)).concurrency_key is None
        page = await client.list_tasks("tenants")
        assert [t.concurrency_key for t in page.tasks] == ["tenant-7", None]

        async with httpx.AsyncClient(base_url=server.http.url, timeout=LIMIT) as http:
            shown = (await http.get(f"/v1/tasks/{keyed}")).json()
            assert shown["task"]["concurrency_key"] == "tenant-7"
            listed = (await http.get("/v1/tasks", params={"queue": "tenants"})).json()
            assert [t["concurrency_key"] for t in listed["tasks"]] == ["tenant-7", None]

        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = pb_grpc.DurableTQStub(channel)
            task = (await stub.Get(pb.GetRequest(task_id=keyed))).task
            assert task.HasField("concurrency_key") and task.concurrency_key == "tenant-7"
            assert not (await stub.Get(pb.GetRequest(task_id=plain))).task.HasField(
                "concurrency_key"
            )
            tasks = (await stub.List(pb.ListRequest(queue="tenants"))).tasks
            assert [t.concurrency_key for t in tasks] == ["tenant-7", ""]

        clean_env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}

        async def cli(*args: str) -> str:
            done = await anyio.run_process(
                [sys.executable, "-m", "durable_tq", *args, "--url", server.url],
                check=False,
                env={**clean_env, "COLUMNS": "200"},
            )
            assert done.returncode == 0, done.stderr.decode()
            return done.stdout.decode()

        assert (
            json.loads(await cli("tasks", "show", str(keyed), "--json"))["concurrency_key"]
            == "tenant-7"
        )
        assert "Concurrency key  tenant-7" in await cli("tasks", "show", str(keyed))
        assert "Concurrency key" not in await cli("tasks", "show", str(plain))
        listing = (await cli("tasks", "list", "--queue", "tenants")).splitlines()
        header = next(line for line in listing if "Payload" in line).split()
        assert header[header.index("When") + 1] == "Key"
        rows = {line.split()[0]: line for line in listing if " tenants " in line}
        assert "tenant-7" in rows[str(keyed)] and "—" in rows[str(plain)]
