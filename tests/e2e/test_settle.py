"""``settle`` through the client against a real broker: batched acks/fails/releases with their
own results, settle-and-claim in one round trip, prefetch limits; and the client's faces
checked against the op table (``wire.ops.OPS``)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest

from durable_tq.client import AsyncClient, ClaimArgs, Client, Settlement
from durable_tq.wire import schema as s
from durable_tq.wire.ops import OPS

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

LIMIT = 30.0
#: Ops whose client method has another name (``list`` would shadow the builtin).
METHOD_NAMES = {"list": "list_tasks"}
#: Session-level ops the client sends itself.
SESSION_OPS = {"hello", "bye"}


@pytest.fixture
async def client(broker_url: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient.from_url(broker_url) as opened:
        yield opened


# --- the client's faces against the op table ------------------------------------------------


def test_async_client_has_a_method_for_every_op() -> None:
    missing = [
        name
        for name in OPS
        if name not in SESSION_OPS
        and not inspect.iscoroutinefunction(
            getattr(AsyncClient, METHOD_NAMES.get(name, name), None)
        )
    ]
    assert missing == []


def test_blocking_client_has_the_same_methods_and_signatures() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_") and name not in ("from_url", "close", "aclose")
        }

    async_methods = {
        name: sig
        for name, sig in public(AsyncClient).items()
        if inspect.iscoroutinefunction(getattr(AsyncClient, name))
    }
    blocking = public(Client)
    assert sorted(async_methods) == sorted(set(async_methods) & set(blocking))
    for name, sig in async_methods.items():
        # The same parameters, defaults and annotations; only the await is gone.
        assert blocking[name] == sig, name


def test_reply_types_are_the_op_tables() -> None:
    import durable_tq.client as client_module

    assert client_module.TaskInfo is s.TaskInfo
    assert client_module.Stats is OPS["stats"].reply
    assert client_module.TaskPage is OPS["list"].reply
    assert client_module.EnqueueResult is OPS["enqueue"].reply
    assert client_module.FailResult is OPS["fail"].reply
    assert client_module.SettleReply is OPS["settle"].reply
    assert client_module.ClaimedTask is s.LeasedTask
    assert client_module.WorkerInfo is s.WorkerInfo


# --- settle on a real broker ----------------------------------------------------------------


async def test_batched_settle_gives_each_lease_its_own_result(client: AsyncClient) -> None:
    ids = [(await client.enqueue("q", {"n": n}, max_attempts=3)).task_id for n in range(5)]
    untouched = (await client.enqueue("other", {"n": "untouched"})).task_id
    # The first is claimed with a short lease, expires and is claimed again: its first token
    # is stale. The others are claimed once.
    first = (await client.claim("q", max=1, lease=0.2))[0]
    with anyio.fail_after(LIMIT):
        while True:
            again = await client.claim("q", max=1, wait=0.5)
            if again and again[0].task_id == first.task_id:
                break
            for task in again:  # another task came first: hand it back
                await client.release(task.task_id, task.lease_token)
    current = again[0]
    rest = await client.claim("q", max=4)
    assert sorted(t.task_id for t in rest) == ids[1:]
    by_id = {t.task_id: t for t in rest}
    a, f, r, keep = (by_id[i] for i in ids[1:])

    reply = await client.settle(
        [
            Settlement.ack(first.task_id, first.lease_token, {"stale": True}),  # stale
            Settlement.ack(a.task_id, a.lease_token, {"done": 1}),
            Settlement.fail(f.task_id, f.lease_token, "boom", retry=False),
            Settlement.release(r.task_id, r.lease_token),
            Settlement.ack(10_000, "no-such-lease"),  # unknown task
            Settlement.ack(keep.task_id, "wrong-token"),  # a leased task, not our token
        ]
    )

    results = reply.results
    assert [x.task_id for x in results] == [first.task_id, a.task_id, f.task_id, r.task_id,
                                            10_000, keep.task_id]  # fmt: skip
    assert results[0].ok is False and results[0].error is not None
    assert results[0].error["code"] == "lease_lost"
    assert results[1].ok and results[1].state == "succeeded"
    assert results[2].ok and results[2].state == "dead" and results[2].run_at is None
    assert results[3].ok and results[3].state == "queued"
    assert results[4].ok is False and results[4].error is not None
    assert results[4].error["code"] in ("lease_lost", "not_found")
    assert results[5].ok is False and results[5].error is not None
    assert results[5].error["code"] == "lease_lost"
    assert reply.tasks is None  # no claim asked for

    # Each task is where its own item put it, and nothing else moved.
    assert (await client.get(first.task_id)).state == "leased"
    assert (await client.get(first.task_id)).result is None
    assert (await client.get(a.task_id)).result == {"done": 1}
    assert (await client.get(f.task_id)).last_error == "boom"
    assert (await client.get(r.task_id)).state == "queued"
    assert (await client.get(keep.task_id)).state == "leased"
    assert (await client.get(untouched)).state == "queued"
    # The stale item did not spoil the current lease: it still settles.
    again_reply = await client.settle([Settlement.ack(current.task_id, current.lease_token)])
    assert again_reply.results[0].ok and again_reply.results[0].state == "succeeded"


async def test_settle_and_claim_in_one_round_trip(client: AsyncClient) -> None:
    ids = [(await client.enqueue("q", n)).task_id for n in range(3)]
    held = await client.claim("q", max=1)
    reply = await client.settle(
        [Settlement.ack(held[0].task_id, held[0].lease_token, "ok")],
        claim=ClaimArgs(queues=["q"], max=5, wait=0),
    )
    assert reply.results[0].ok
    assert reply.tasks is not None
    assert sorted(t.task_id for t in reply.tasks) == ids[1:]
    assert all(t.lease_token for t in reply.tasks)
    # Settling those and claiming on an empty queue: nothing more, and no error.
    reply = await client.settle(
        [Settlement.ack(t.task_id, t.lease_token) for t in reply.tasks],
        claim=ClaimArgs(queues=["q"], max=5, wait=0),
    )
    assert all(x.ok for x in reply.results)
    assert reply.tasks == []
    for task_id in ids:
        assert (await client.get(task_id)).state == "succeeded"


async def test_settle_claim_long_polls_like_claim(client: AsyncClient) -> None:
    async def enqueue_later() -> None:
        await anyio.sleep(0.2)
        await client.enqueue("late", "x")

    async with anyio.create_task_group() as tg:
        tg.start_soon(enqueue_later)
        reply = await client.settle([], claim=ClaimArgs(queues=["late"], max=1, wait=LIMIT))
    assert reply.tasks is not None and len(reply.tasks) == 1


async def test_blocking_client_settles(broker_url: str) -> None:
    def run() -> list[bool]:
        with Client.from_url(broker_url) as blocking:
            blocking.enqueue("q", 1)
            task = blocking.claim("q")[0]
            reply = blocking.settle([Settlement.ack(task.task_id, task.lease_token)])
            return [x.ok for x in reply.results]

    assert await anyio.to_thread.run_sync(run) == [True]


async def test_worker_settle_returns_its_state_and_counts_as_heartbeat(
    broker_url: str, client: AsyncClient
) -> None:
    worker = {"id": "w-settle", "queues": ["q"], "concurrency": 1}
    async with AsyncClient.from_url(broker_url, worker=worker) as registered:
        reply = await registered.settle([])
        assert reply.worker_state == "running"
        await client.worker_state("w-settle", "quiet")
        reply = await registered.settle([])
        assert reply.worker_state == "quiet"
    # A plain (unregistered) client gets no worker_state.
    assert (await client.settle([])).worker_state is None


async def test_broker_holds_a_raw_worker_to_concurrency_plus_prefetch(
    broker_url: str,
    client: AsyncClient,
    raw_connect: Callable[..., AbstractAsyncContextManager[Any]],
) -> None:
    for n in range(10):
        await client.enqueue("q", n)
    hello = {"worker": {"id": "raw-w", "queues": ["q"], "concurrency": 2, "prefetch": 3}}
    async with raw_connect(broker_url, hello=hello) as conn:
        reply = await conn.request("claim", queues=["q"], max=10)
        held = reply["tasks"]
        assert len(held) == 5
        reply = await conn.request("claim", queues=["q"], max=10)
        assert reply["tasks"] == []
        (info,) = await client.workers()
        assert (info.id, info.leased, info.prefetch) == ("raw-w", 5, 3)
        # Settling one frees one place, and the claim in the same request takes exactly one.
        done = held[0]
        item = {"task_id": done["task_id"], "lease_token": done["lease_token"], "outcome": "ack"}
        reply = await conn.request("settle", settles=[item], claim={"queues": ["q"], "max": 10})
        assert reply["results"][0]["ok"] is True
        assert len(reply["tasks"]) == 1
        (info,) = await client.workers()
        assert info.leased == 5
