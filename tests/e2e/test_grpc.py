"""The gRPC API through the generated Python stubs against a real broker (in-process, TCP and
gRPC both on port 0): every RPC, errors and their status codes, auth, health, reflection, the
worker stream's credits, batched settles and fencing, and TCP <-> gRPC in both directions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from durable_tq.client import AsyncClient
from durable_tq.servers.grpc import durable_tq_pb2 as pb
from durable_tq.servers.grpc import durable_tq_pb2_grpc as pb_grpc
from durable_tq.servers.grpc.service import rpc_name
from durable_tq.servers.tcp import BrokerServer
from durable_tq.wire.ops import OPS

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

LIMIT = 20.0


@pytest.fixture
async def grpc_server(
    make_server: Callable[..., AbstractAsyncContextManager[BrokerServer]],
) -> AsyncIterator[BrokerServer]:
    async with make_server(grpc="127.0.0.1:0") as server:
        assert server.grpc_port
        print(f"gRPC bound to port {server.grpc_port}, TCP {server.port}")
        yield server


@pytest.fixture
async def channel(grpc_server: BrokerServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_server.grpc_port}") as opened:
        yield opened


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.DurableTQStub:
    return pb_grpc.DurableTQStub(channel)


def error_code(exc: grpc.aio.AioRpcError) -> str | None:
    for key, value in exc.trailing_metadata() or ():
        if key == "durable-tq-error-code":
            return str(value)
    return None


async def enqueue(stub: Any, queue: str, payload: Any, **fields: Any) -> int:
    reply = await stub.Enqueue(
        pb.EnqueueRequest(queue=queue, payload_json=json.dumps(payload), **fields)
    )
    return int(reply.task_id)


# --- every RPC ----------------------------------------------------------------------------------


def test_every_op_has_an_rpc_on_the_stub() -> None:
    missing = [name for name in OPS if not hasattr(pb_grpc.DurableTQStub, rpc_name(name))]
    # The stub's methods are set in __init__: check the servicer base class instead.
    missing = [name for name in OPS if not hasattr(pb_grpc.DurableTQServicer, rpc_name(name))]
    assert missing == []


async def test_hello_enqueue_get_stats_list(stub: Any) -> None:
    hello = await stub.Hello(pb.HelloRequest(version=1, client="test"))
    assert hello.version == 1 and hello.server.startswith("durable_tq")
    task_id = await enqueue(stub, "q", {"n": 1, "s": "é"}, priority=3)
    got = await stub.Get(pb.GetRequest(task_id=task_id))
    assert got.task.state == "queued" and json.loads(got.task.payload_json) == {"n": 1, "s": "é"}
    assert got.task.priority == 3 and not got.task.HasField("result_json")
    many = await stub.EnqueueMany(
        pb.EnqueueManyRequest(
            tasks=[pb.EnqueueRequest(queue="q", payload_json=str(n)) for n in range(3)]
        )
    )
    assert len(many.task_ids) == 3 and list(many.created) == [True] * 3
    stats = await stub.Stats(pb.StatsRequest())
    assert stats.queues["q"].queued == 4
    page = await stub.List(pb.ListRequest(queue="q", limit=2))
    assert len(page.tasks) == 2 and page.HasField("next_after_id")
    unique = pb.EnqueueRequest(queue="q", unique_key="k")
    first, again = await stub.Enqueue(unique), await stub.Enqueue(unique)
    assert first.created and not again.created and first.task_id == again.task_id


async def test_throughput(stub: Any, grpc_server: BrokerServer) -> None:
    from durable_tq.core.throughput import ThroughputRing

    broker = grpc_server.broker
    broker.throughput_ring = ThroughputRing(interval=0.01, window=60)
    broker.sample_throughput()
    await enqueue(stub, "q", 1)
    await enqueue(stub, "q", 2)
    await anyio.sleep(0.02)
    reply = await stub.Throughput(pb.ThroughputRequest())
    assert reply.interval == 0.01 and reply.window == 60
    assert sum(s.enqueued * s.seconds for s in reply.samples) == pytest.approx(2)
    assert all(s.at > s.seconds > 0 for s in reply.samples)


async def test_claim_ack_fail_release_extend_settle(stub: Any) -> None:
    ids = [await enqueue(stub, "w", n) for n in range(5)]
    claimed = await stub.Claim(pb.ClaimRequest(queues=["w"], max=5))
    tasks = {t.task_id: t for t in claimed.tasks}
    assert sorted(tasks) == ids
    a, b, c, d, e = (tasks[i] for i in ids)
    await stub.Ack(pb.AckRequest(task_id=a.task_id, lease_token=a.lease_token, result_json="42"))
    failed = await stub.Fail(
        pb.FailRequest(task_id=b.task_id, lease_token=b.lease_token, error="boom", retry=False)
    )
    assert failed.state == "dead" and not failed.HasField("run_at")
    released = await stub.Release(pb.ReleaseRequest(task_id=c.task_id, lease_token=c.lease_token))
    assert released.state == "queued"
    extended = await stub.Extend(
        pb.ExtendRequest(task_id=d.task_id, lease_token=d.lease_token, lease=60)
    )
    assert extended.lease_expires_at > d.lease_expires_at
    settled = await stub.Settle(
        pb.SettleRequest(
            settles=[
                pb.SettleItem(task_id=d.task_id, lease_token=d.lease_token, outcome="ack"),
                pb.SettleItem(task_id=e.task_id, lease_token="stale", outcome="ack"),
            ],
            claim=pb.ClaimRequest(queues=["w"], max=1),
        )
    )
    assert [r.ok for r in settled.results] == [True, False]
    assert settled.results[1].error.code == "lease_lost"
    assert [t.task_id for t in settled.tasks] == [c.task_id]
    done = await stub.Get(pb.GetRequest(task_id=a.task_id))
    assert done.task.state == "succeeded" and done.task.result_json == "42"


async def test_admin_rpcs(stub: Any) -> None:
    task_id = await enqueue(stub, "adm", None)
    assert (await stub.Cancel(pb.CancelRequest(task_id=task_id))).state == "cancelled"
    requeued = await stub.Requeue(pb.RequeueRequest(task_ids=[task_id]))
    assert requeued.count == 1
    await stub.Pause(pb.PauseRequest(queue="adm"))
    assert (await stub.Stats(pb.StatsRequest())).queues["adm"].paused
    assert not (await stub.Claim(pb.ClaimRequest(queues=["adm"]))).tasks
    await stub.Resume(pb.ResumeRequest(queue="adm"))
    purged = await stub.Purge(pb.PurgeRequest(queue="adm"))
    assert purged.count == 1
    worker = pb.WorkerSpec(id="w1", queues=["adm"], concurrency=2, meta_json='{"host": "x"}')
    await stub.Hello(pb.HelloRequest(version=1, worker=worker))
    listed = await stub.Workers(pb.WorkersRequest())
    (info,) = [w for w in listed.workers if w.id == "w1"]
    assert info.concurrency == 2 and json.loads(info.meta_json) == {"host": "x"}
    await stub.WorkerState(pb.WorkerStateRequest(worker_id="w1", state="quiet"))
    beat = await stub.Heartbeat(pb.HeartbeatRequest(), metadata=(("durable-tq-worker-id", "w1"),))
    assert beat.state == "quiet"
    await stub.Bye(pb.ByeRequest())


# --- errors -------------------------------------------------------------------------------------


async def test_errors_map_to_status_codes(stub: Any) -> None:
    cases: list[tuple[Any, grpc.StatusCode, str]] = [
        (stub.Enqueue(pb.EnqueueRequest(queue="q", payload_json="{bad")),
         grpc.StatusCode.INVALID_ARGUMENT, "bad_request"),
        (stub.Enqueue(pb.EnqueueRequest(payload_json="1")),
         grpc.StatusCode.INVALID_ARGUMENT, "bad_request"),
        (stub.Get(pb.GetRequest(task_id=999)), grpc.StatusCode.NOT_FOUND, "not_found"),
        (stub.Ack(pb.AckRequest(task_id=1, lease_token="x")),
         grpc.StatusCode.NOT_FOUND, "not_found"),
        (stub.Heartbeat(pb.HeartbeatRequest()),
         grpc.StatusCode.FAILED_PRECONDITION, "conflict"),
    ]  # fmt: skip
    for call, code, wire in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == code, caught.value
        assert error_code(caught.value) == wire
    task_id = await enqueue(stub, "f", 1)
    (task,) = (await stub.Claim(pb.ClaimRequest(queues=["f"]))).tasks
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await stub.Ack(pb.AckRequest(task_id=task_id, lease_token="not-the-token"))
    assert lost.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_code(lost.value) == "lease_lost"
    await stub.Ack(pb.AckRequest(task_id=task_id, lease_token=task.lease_token))
    with pytest.raises(grpc.aio.AioRpcError) as conflict:
        await stub.Cancel(pb.CancelRequest(task_id=task_id))
    assert conflict.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_code(conflict.value) == "conflict"
    with pytest.raises(grpc.aio.AioRpcError) as too_long:
        await stub.Wait(pb.WaitRequest(task_id=task_id, timeout=1e9))
    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as no_parent:
        await stub.Enqueue(pb.EnqueueRequest(queue="f", after=[pb.Parent(task_id=999)]))
    assert error_code(no_parent.value) == "not_found"


async def test_busy_carries_the_retry_delay(
    make_server: Callable[..., AbstractAsyncContextManager[BrokerServer]],
) -> None:
    from google.rpc import error_details_pb2

    async with (
        make_server(grpc="127.0.0.1:0", max_queue_depth=1) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        stub = pb_grpc.DurableTQStub(channel)
        await enqueue(stub, "full", 1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await enqueue(stub, "full", 2)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_code(caught.value) == "busy"
    status = rpc_status.from_call(caught.value)
    assert status is not None
    kinds = {detail.type_url.rsplit(".", 1)[1]: detail for detail in status.details}
    retry = error_details_pb2.RetryInfo()
    kinds["RetryInfo"].Unpack(retry)
    assert retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9 > 0
    info = error_details_pb2.ErrorInfo()
    kinds["ErrorInfo"].Unpack(info)
    assert info.reason == "busy" and info.domain == "durable_tq"


async def test_bearer_token(
    make_server: Callable[..., AbstractAsyncContextManager[BrokerServer]],
) -> None:
    async with (
        make_server(grpc="127.0.0.1:0", auth_tokens=["s3cret"]) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        stub = pb_grpc.DurableTQStub(channel)
        for metadata in [(), (("authorization", "Bearer wrong"),)]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Stats(pb.StatsRequest(), metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = (("authorization", "Bearer s3cret"),)
        assert (await stub.Stats(pb.StatsRequest(), metadata=good)).workers == 0
        assert (await stub.Hello(pb.HelloRequest(version=1, token="s3cret"))).version == 1


async def test_health_and_reflection(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "durable_tq.v1.DurableTQ"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = reflection.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    answer = await call.read()
    await call.done_writing()
    names = {s.name for s in answer.list_services_response.service}
    assert {"durable_tq.v1.DurableTQ", "grpc.health.v1.Health"} <= names


async def test_cancel_a_leased_task_reaches_its_worker(stub: Any) -> None:
    task_id = await enqueue(stub, "rev", 1)
    (task,) = (await stub.Claim(pb.ClaimRequest(queues=["rev"]))).tasks
    assert (await stub.Cancel(pb.CancelRequest(task_id=task_id))).state == "cancelling"
    assert (await stub.Get(pb.GetRequest(task_id=task_id))).task.cancel_requested
    lease = pb.ExtendRequest(task_id=task_id, lease_token=task.lease_token, lease=30)
    assert (await stub.Extend(lease)).cancel
    progress = pb.ProgressRequest(
        task_id=task_id, lease_token=task.lease_token, fraction=0.5, message="half"
    )
    assert (await stub.Progress(progress)).cancel
    settled = await stub.Settle(
        pb.SettleRequest(
            settles=[pb.SettleItem(task_id=task_id, lease_token=task.lease_token, outcome="cancel")]
        )
    )
    assert settled.results[0].ok and settled.results[0].state == "cancelled"
    info = (await stub.Get(pb.GetRequest(task_id=task_id))).task
    assert info.state == "cancelled" and info.progress == 0.5 and info.progress_message == "half"


async def test_wait_is_woken_by_an_ack(stub: Any) -> None:
    task_id = await enqueue(stub, "wq", {"x": 1}, result_ttl=600, concurrency_key="k")
    timed_out = await stub.Wait(pb.WaitRequest(task_id=task_id, timeout=0.1))
    assert not timed_out.done and timed_out.task.state == "queued"
    (task,) = (await stub.Claim(pb.ClaimRequest(queues=["wq"]))).tasks
    waited: list[pb.WaitReply] = []

    async def wait() -> None:
        waited.append(await stub.Wait(pb.WaitRequest(task_id=task_id, timeout=LIMIT)))

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as group:
            group.start_soon(wait)
            await anyio.sleep(0.3)
            assert not waited  # parked until the ack
            ack = pb.AckRequest(task_id=task_id, lease_token=task.lease_token, result_json="7")
            await stub.Ack(ack)
    (reply,) = waited
    assert reply.done and reply.task.state == "succeeded" and reply.task.result_json == "7"
    assert reply.task.result_ttl == 600 and reply.task.HasField("expires_at")
    settings = await stub.QueueSettings(pb.QueueSettingsRequest(queue="wq", result_ttl_json="60"))
    assert settings.queue == "wq" and settings.result_ttl == 60
    cleared = await stub.QueueSettings(pb.QueueSettingsRequest(queue="wq", result_ttl_json="null"))
    assert not cleared.HasField("result_ttl")


async def test_dependencies_by_task_id_and_index(stub: Any) -> None:
    parent = await enqueue(stub, "dep", "p")
    many = await stub.EnqueueMany(
        pb.EnqueueManyRequest(
            tasks=[
                pb.EnqueueRequest(queue="dep", payload_json='"a"'),
                pb.EnqueueRequest(
                    queue="dep",
                    payload_json='"b"',
                    after=[pb.Parent(task_id=parent), pb.Parent(index=0)],
                    on_parent_failure="cancel",
                ),
            ]
        )
    )
    first, child = many.task_ids
    assert (await stub.Get(pb.GetRequest(task_id=child))).task.state == "waiting"
    assert (await stub.Stats(pb.StatsRequest())).queues["dep"].waiting == 1
    claimed = (await stub.Claim(pb.ClaimRequest(queues=["dep"], max=5))).tasks
    assert sorted(t.task_id for t in claimed) == sorted([parent, first])
    for task in claimed:
        await stub.Ack(pb.AckRequest(task_id=task.task_id, lease_token=task.lease_token))
    assert (await stub.Get(pb.GetRequest(task_id=child))).task.state == "queued"


async def test_schedules_and_queue_limits(stub: Any) -> None:
    upsert = pb.ScheduleUpsertRequest(
        name="tick", queue="sched", every=3600, payload_json='{"n": 1}', priority=2
    )
    created = await stub.ScheduleUpsert(upsert)
    assert created.change == "created" and created.schedule.every == 3600
    assert not created.schedule.HasField("cron")
    assert json.loads(created.schedule.payload_json) == {"n": 1}
    assert (await stub.ScheduleUpsert(upsert)).change == "unchanged"
    nightly = pb.ScheduleUpsertRequest(name="nightly", queue="sched", cron="0 3 * * *", tz="UTC")
    assert (await stub.ScheduleUpsert(nightly)).schedule.cron == "0 3 * * *"
    listed = await stub.ScheduleList(pb.ScheduleListRequest())
    assert sorted(s.name for s in listed.schedules) == ["nightly", "tick"]
    paused = await stub.SchedulePause(pb.SchedulePauseRequest(name="tick"))
    assert paused.schedule.paused
    resumed = await stub.ScheduleResume(pb.ScheduleResumeRequest(name="tick"))
    assert not resumed.schedule.paused
    await stub.ScheduleRemove(pb.ScheduleRemoveRequest(name="nightly"))
    listed = await stub.ScheduleList(pb.ScheduleListRequest())
    assert [s.name for s in listed.schedules] == ["tick"]
    with pytest.raises(grpc.aio.AioRpcError) as both:
        await stub.ScheduleUpsert(
            pb.ScheduleUpsertRequest(name="x", queue="q", every=60, cron="* * * * *")
        )
    assert both.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    limits = pb.SetQueueLimitsRequest(queue="lim", rate=5, burst=10, max_leased=2)
    info = await stub.SetQueueLimits(limits)
    assert info.queue == "lim" and info.limits.rate == 5 and info.limits.max_leased == 2
    assert not info.limits.HasField("key_concurrency") and info.HasField("tokens")
    await enqueue(stub, "lim", 1)
    info = await stub.QueueInfo(pb.QueueInfoRequest(queue="lim"))
    assert info.counts.queued == 1 and not info.paused
    assert (await stub.Stats(pb.StatsRequest())).queues["lim"].limits.burst == 10
    removed = await stub.SetQueueLimits(pb.SetQueueLimitsRequest(queue="lim", rate=0))
    assert not removed.limits.HasField("rate") and removed.limits.max_leased == 2


async def test_token_roles(
    make_server: Callable[..., AbstractAsyncContextManager[BrokerServer]],
) -> None:
    tokens = [
        {"token": "p", "role": "producer"},
        {"token": "w", "role": "worker"},
        {"token": "a", "role": "admin"},
    ]
    async with (
        make_server(grpc="127.0.0.1:0", auth_tokens=tokens) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        stub = pb_grpc.DurableTQStub(channel)

        def bearer(token: str) -> tuple[tuple[str, str], ...]:
            return (("authorization", f"Bearer {token}"),)

        made = await stub.Enqueue(pb.EnqueueRequest(queue="r"), metadata=bearer("p"))
        task_id = made.task_id
        admin_calls = [
            lambda md: stub.Cancel(pb.CancelRequest(task_id=task_id), metadata=md),
            lambda md: stub.ScheduleUpsert(
                pb.ScheduleUpsertRequest(name="s", queue="r", every=60), metadata=md
            ),
            lambda md: stub.SetQueueLimits(pb.SetQueueLimitsRequest(queue="r"), metadata=md),
        ]
        for token in ("p", "w"):
            for call in admin_calls:
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await call(bearer(token))
                assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert error_code(denied.value) == "forbidden"
        with pytest.raises(grpc.aio.AioRpcError) as claim:
            await stub.Claim(pb.ClaimRequest(queues=["r"]), metadata=bearer("p"))
        assert claim.value.code() == grpc.StatusCode.PERMISSION_DENIED
        register = pb.HelloRequest(version=1, worker=pb.WorkerSpec(id="w1", queues=["r"]))
        with pytest.raises(grpc.aio.AioRpcError) as hello:
            await stub.Hello(register, metadata=bearer("p"))
        assert hello.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (await stub.Hello(register, metadata=bearer("w"))).version == 1
        listed = await stub.ScheduleList(pb.ScheduleListRequest(), metadata=bearer("p"))
        assert list(listed.schedules) == []
        assert (await stub.Cancel(pb.CancelRequest(task_id=task_id), metadata=bearer("a"))).state


# --- the worker stream --------------------------------------------------------------------------


class WorkStream:
    """A worker's end of ``Work``: open, grant credit, settle, read what the broker pushes.

    A task reads the call into a memory stream: cancelling a read of a grpc.aio call would
    cancel the whole call, and the tests wait on reads with timeouts.
    """

    def __init__(self, stub: Any, worker_id: str, queues: list[str], **spec: Any) -> None:
        self.call = stub.Work()
        self.worker = pb.WorkerSpec(id=worker_id, queues=queues, **spec)
        self.held: dict[int, pb.LeasedTask] = {}
        self.settled: list[pb.SettleReply] = []
        self._send, self._receive = anyio.create_memory_object_stream[Any](1000)

    async def _pump(self) -> None:
        async with self._send:
            async for response in self.call:
                await self._send.send(response)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[WorkStream]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._pump)
            try:
                yield self
            finally:
                self.call.cancel()
                tg.cancel_scope.cancel()
                self._receive.close()

    async def open(self, credit: int = 0) -> pb.HelloReply:
        await self.call.write(pb.WorkRequest(open=pb.WorkOpen(worker=self.worker), credit=credit))
        first = await self.read()
        assert first.HasField("opened")
        return first.opened

    async def read(self, within: float = LIMIT) -> pb.WorkResponse:
        with anyio.fail_after(within):
            response = await self._receive.receive()
        for task in response.tasks:
            self.held[task.task_id] = task
        if response.HasField("settled"):
            self.settled.append(response.settled)
        return response

    async def quiet(self, seconds: float) -> None:
        """Nothing pushed for ``seconds``."""
        with anyio.move_on_after(seconds):
            response = await self._receive.receive()
            raise AssertionError(f"expected nothing, got {response}")

    async def tasks(self, count: int, within: float = LIMIT) -> list[pb.LeasedTask]:
        got: list[pb.LeasedTask] = []
        with anyio.fail_after(within):
            while len(got) < count:
                got.extend((await self.read()).tasks)
        return got

    async def settle(self, items: list[pb.SettleItem], credit: int = 0) -> None:
        for item in items:
            self.held.pop(item.task_id, None)
        await self.call.write(pb.WorkRequest(settles=items, credit=credit))

    @staticmethod
    def ack(task: pb.LeasedTask, result: Any = None) -> pb.SettleItem:
        return pb.SettleItem(task_id=task.task_id, lease_token=task.lease_token,
                             outcome="ack", result_json=json.dumps(result))  # fmt: skip


async def test_stream_pushes_no_more_than_the_credit(stub: Any, grpc_server: BrokerServer) -> None:
    ids = [await enqueue(stub, "s", n) for n in range(10)]
    worker = WorkStream(stub, "sw", ["s"], concurrency=5)
    async with worker.running():
        assert (await worker.open(credit=3)).version == 1
        first = await worker.tasks(3)
        await worker.quiet(0.5)
        assert len(worker.held) == 3
        # Settle two, grant two: one commit answers the settles and brings two more tasks.
        await worker.settle([worker.ack(t, t.task_id) for t in first[:2]], credit=2)
        await worker.tasks(2)
        assert len(worker.settled) == 1 and [r.ok for r in worker.settled[0].results] == [True] * 2
        await worker.quiet(0.3)
        assert len(worker.held) == 3
        # A batch: all held tasks settled, with one stale token (fencing): its own lease_lost.
        held = list(worker.held.values())
        stale = pb.SettleItem(task_id=held[0].task_id, lease_token="stale", outcome="ack")
        await worker.settle([stale, *[worker.ack(t) for t in held]], credit=5)
        await worker.tasks(5)
        results = worker.settled[-1].results
        assert [r.ok for r in results] == [False, True, True, True]
        assert results[0].error.code == "lease_lost"
        # Credit beyond concurrency + prefetch is not given: 5 held, no more pushed.
        await worker.settle([], credit=10)
        await worker.quiet(0.3)
        assert len(worker.held) == 5
        await worker.settle([worker.ack(t) for t in list(worker.held.values())])
        with anyio.fail_after(LIMIT):
            while sum(len(s.results) for s in worker.settled) < 10:
                await worker.read()
        states = [(await stub.Get(pb.GetRequest(task_id=i))).task.state for i in ids]
        assert states == ["succeeded"] * 10


async def test_stream_long_polls_and_is_woken_by_an_enqueue(stub: Any) -> None:
    worker = WorkStream(stub, "lp", ["lp"])
    async with worker.running():
        await worker.open(credit=1)
        await worker.quiet(0.3)
        started = anyio.current_time()
        task_id = await enqueue(stub, "lp", "wake")
        (task,) = await worker.tasks(1, within=5)
        assert task.task_id == task_id and anyio.current_time() - started < 1.0


async def test_closed_stream_leaves_its_leases(stub: Any, grpc_server: BrokerServer) -> None:
    task_id = await enqueue(stub, "cl", 1)
    worker = WorkStream(stub, "cw", ["cl"])
    async with worker.running():
        await worker.open(credit=1)
        await worker.tasks(1)
        await worker.call.done_writing()
        for _ in range(200):  # the broker notices the end of the stream at once
            if not (await stub.Workers(pb.WorkersRequest())).workers[0].connected:
                break
            await anyio.sleep(0.05)
        else:
            raise AssertionError("the worker still shows as connected")
        task = (await stub.Get(pb.GetRequest(task_id=task_id))).task
        assert task.state == "leased" and task.worker_id == "cw"


async def test_tcp_producer_grpc_worker_and_the_reverse(
    stub: Any, grpc_server: BrokerServer
) -> None:
    async with AsyncClient.from_url(grpc_server.url) as client:
        made = await client.enqueue("x", {"from": "tcp"})
        worker = WorkStream(stub, "gx", ["x"])
        async with worker.running():
            await worker.open(credit=1)
            (task,) = await worker.tasks(1)
            assert json.loads(task.payload_json) == {"from": "tcp"}
            await worker.settle([worker.ack(task, {"by": "grpc"})])
            await worker.read()
            assert worker.settled[-1].results[0].ok
            info = await client.get(made.task_id)
            assert info.state == "succeeded" and info.result == {"by": "grpc"}

            task_id = await enqueue(stub, "y", {"from": "grpc"})
            (claimed,) = await client.claim("y", wait=5)
            assert claimed.task_id == task_id and claimed.payload == {"from": "grpc"}
            await client.ack(claimed.task_id, claimed.lease_token, result=[1, 2])
    got = await stub.Get(pb.GetRequest(task_id=task_id))
    assert got.task.state == "succeeded" and json.loads(got.task.result_json) == [1, 2]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
async def test_worker_stream_survives_a_broker_crash(serve_subprocess: Any) -> None:
    """SIGKILL the broker mid-stream, start it again on the same file and port: the worker
    reconnects and finishes; every ack the broker confirmed is still there."""
    port = free_port()
    broker = serve_subprocess(
        args=["--grpc", f"127.0.0.1:{port}"], env={"DURABLE_TQ_SWEEP_INTERVAL": "0.1"}
    )
    confirmed: set[int] = set()
    total = 40

    async def work_until(stop_after: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.DurableTQStub(channel)
            worker = WorkStream(stub, "crash", ["c"], concurrency=4)
            async with worker.running():
                await worker.call.write(
                    pb.WorkRequest(open=pb.WorkOpen(worker=worker.worker, lease=1.0), credit=4)
                )
                with anyio.fail_after(LIMIT):
                    while len(confirmed) < stop_after or stop_after == total:
                        response = await worker.read()
                        if response.tasks:
                            await worker.settle(
                                [worker.ack(t) for t in response.tasks], credit=len(response.tasks)
                            )
                        if response.HasField("settled"):
                            confirmed.update(r.task_id for r in response.settled.results if r.ok)
                        if stop_after == total and len(worker.held) == 0:
                            stats = await stub.Stats(pb.StatsRequest())
                            if stats.queues["c"].succeeded == total:
                                return

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DurableTQStub(channel)
        ids = [await enqueue(stub, "c", n) for n in range(total)]
    await work_until(15)
    broker.kill()  # mid-stream: acks may be in flight
    broker.restart(graceful=False)
    try:
        with anyio.fail_after(LIMIT):
            await work_until(total)
    except BaseException:
        print(broker.log_text()[-3000:])
        raise
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DurableTQStub(channel)
        states = [(await stub.Get(pb.GetRequest(task_id=i))).task.state for i in ids]
    # Every confirmed ack survived the crash; acks sent but unconfirmed may have landed too
    # (at-least-once), and every task ended succeeded.
    assert confirmed <= set(ids)
    assert states == ["succeeded"] * total


async def test_stream_tells_the_worker_of_a_cancel(
    make_server: Callable[..., AbstractAsyncContextManager[BrokerServer]],
) -> None:
    async with (
        make_server(grpc="127.0.0.1:0", heartbeat_interval=0.1) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        stub = pb_grpc.DurableTQStub(channel)
        task_id = await enqueue(stub, "sc", 1)
        worker = WorkStream(stub, "scw", ["sc"])
        async with worker.running():
            await worker.open(credit=1)
            (task,) = await worker.tasks(1)
            assert (await stub.Cancel(pb.CancelRequest(task_id=task_id))).state == "cancelling"
            with anyio.fail_after(LIMIT):
                while list((await worker.read()).cancel) != [task_id]:
                    pass
            cancel = pb.SettleItem(task_id=task_id, lease_token=task.lease_token, outcome="cancel")
            await worker.settle([cancel])
            with anyio.fail_after(LIMIT):
                while not (await worker.read()).HasField("settled"):
                    pass
            assert worker.settled[-1].results[0].state == "cancelled"
