"""The HTTP face against real brokers (in-process on free ports, and as a subprocess), through
httpx: every route, auth, the status mapping, long-polls across TCP and HTTP, fencing,
health checks and /metrics."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from durable_tq import AsyncClient
from durable_tq.client import Settlement
from durable_tq.core.clock import FakeClock
from durable_tq.servers.http import openapi
from durable_tq.servers.http.app import STATUS
from durable_tq.servers.http.routes import ROUTES, UNROUTED
from durable_tq.servers.tcp import BrokerServer
from durable_tq.wire.ops import OPS

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

HttpBroker = Callable[..., AbstractAsyncContextManager[tuple[BrokerServer, httpx.AsyncClient]]]


@pytest.fixture
def http_broker(make_server: Callable[..., Any]) -> HttpBroker:
    """``async with http_broker(**settings) as (server, http)``: a broker on free ports and an
    httpx client on its HTTP API."""

    @asynccontextmanager
    async def start(
        token: str | None = None, **overrides: Any
    ) -> AsyncIterator[tuple[BrokerServer, httpx.AsyncClient]]:
        async with make_server(**overrides) as server:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with httpx.AsyncClient(
                base_url=server.http.url, headers=headers, timeout=30
            ) as http:
                yield server, http

    return start


def tcp_client(server: BrokerServer, **kwargs: Any) -> AsyncClient:
    return AsyncClient("127.0.0.1", server.port, **kwargs)


# --- the route table and the OpenAPI document -----------------------------------------------


def test_every_op_has_a_route() -> None:
    routed = {route.op for route in ROUTES}
    assert routed | set(UNROUTED) == set(OPS), "an op of the op table has no HTTP route"
    assert not routed & set(UNROUTED)
    assert {route.op for route in ROUTES} <= set(OPS)
    paths = [(route.method, route.path) for route in ROUTES]
    assert len(paths) == len(set(paths))


def test_openapi_is_valid_and_covers_every_route() -> None:
    spec = openapi.build_spec()
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    for route in ROUTES:
        operation = spec["paths"][route.path][route.method.lower()]
        assert str(route.status) in operation["responses"]
        for code in ("400", "401", "404", "409", "429", "500", "503"):
            assert code in operation["responses"]
    assert spec["paths"]["/v1/queues/{queue}/tasks"]["post"]["requestBody"]["content"][
        "application/json"
    ]["example"]


# --- every route ------------------------------------------------------------------------------


async def test_produce_read_and_operate(http_broker: HttpBroker) -> None:
    async with http_broker() as (_, http):
        reply = await http.post("/v1/queues/emails/tasks", json={"payload": {"to": "ada"}})
        assert reply.status_code == 201
        assert reply.json() == {"task_id": 1, "created": True}
        reply = await http.post(
            "/v1/tasks:batch",
            json={"tasks": [{"queue": "emails", "payload": n} for n in range(4)]},
        )
        assert reply.status_code == 201
        assert reply.json()["task_ids"] == [2, 3, 4, 5]

        task = (await http.get("/v1/tasks/1")).json()["task"]
        assert task["payload"] == {"to": "ada"}
        assert task["state"] == "queued"

        seen: list[int] = []
        cursor: int | None = None
        while True:
            params: dict[str, Any] = {"queue": "emails", "state": "queued", "limit": 2}
            if cursor is not None:
                params["cursor"] = cursor
            page = (await http.get("/v1/tasks", params=params)).json()
            seen += [t["task_id"] for t in page["tasks"]]
            cursor = page["next_after_id"]
            if cursor is None:
                break
        assert seen == [1, 2, 3, 4, 5]

        assert (await http.delete("/v1/tasks/5")).json() == {"state": "cancelled"}
        assert (await http.post("/v1/tasks/5/requeue")).json()["count"] == 1
        assert (await http.delete("/v1/tasks/5")).status_code == 200
        reply = await http.post("/v1/requeue", json={"queue": "emails", "state": "cancelled"})
        assert reply.json()["count"] == 1

        stats = (await http.get("/v1/stats")).json()
        assert stats["queues"]["emails"]["queued"] == 5
        queues = (await http.get("/v1/queues")).json()
        assert queues["queues"]["emails"]["queued"] == stats["queues"]["emails"]["queued"]
        assert (await http.get("/v1/queues/emails")).json()["queued"] == 5
        assert (await http.get("/v1/queues/nothing")).status_code == 404

        assert (await http.post("/v1/queues/emails/pause")).json() == {}
        assert (await http.get("/v1/queues/emails")).json()["paused"] is True
        claim = await http.post("/v1/queues/emails/claim", json={"max": 5})
        assert claim.json() == {"tasks": []}
        assert (await http.post("/v1/queues/emails/resume")).status_code == 200

        refused = await http.delete("/v1/queues/emails/tasks")
        assert refused.status_code == 400
        refused = await http.delete("/v1/queues/emails/tasks", params={"confirm": "other"})
        assert refused.status_code == 400
        assert "confirm" in refused.json()["error"]["message"]
        purged = await http.delete(
            "/v1/queues/emails/tasks", params={"confirm": "emails", "state": "queued"}
        )
        assert purged.json() == {"count": 5}


async def test_http_worker_runs_tasks_enqueued_over_tcp(http_broker: HttpBroker) -> None:
    async with http_broker() as (server, http):
        async with tcp_client(server) as tcp:
            ids = [(await tcp.enqueue("jobs", {"n": n})).task_id for n in range(6)]
        done: dict[int, Any] = {}
        # The worker loop of docs/http.md: claim, run, ack (or fail), with nothing but HTTP.
        while len(done) < len(ids):
            claimed = await http.post("/v1/queues/jobs/claim", json={"max": 4, "wait": 1})
            for task in claimed.json()["tasks"]:
                token = task["lease_token"]
                if task["payload"]["n"] == 3 and task["attempt"] == 1:
                    reply = await http.post(
                        f"/v1/tasks/{task['task_id']}/fail",
                        json={"lease_token": token, "error": "flaky", "delay": 0},
                    )
                    assert reply.json()["state"] == "queued"
                    continue
                extended = await http.post(
                    f"/v1/tasks/{task['task_id']}/extend", json={"lease_token": token, "lease": 60}
                )
                assert extended.json()["lease_expires_at"] > 0
                result = {"double": task["payload"]["n"] * 2}
                reply = await http.post(
                    f"/v1/tasks/{task['task_id']}/ack",
                    json={"lease_token": token, "result": result},
                )
                assert reply.status_code == 200, reply.text
                done[task["task_id"]] = result
        async with tcp_client(server) as tcp:
            for task_id in ids:
                info = await tcp.get(task_id)
                assert info.state == "succeeded"
                assert info.result == done[task_id]


async def test_release_settle_and_worker_state(http_broker: HttpBroker) -> None:
    async with http_broker() as (server, http):
        for n in range(3):
            await http.post("/v1/queues/q/tasks", json={"payload": n})
        tasks = (await http.post("/v1/claim", json={"queues": ["q"], "max": 3})).json()["tasks"]
        assert len(tasks) == 3
        first, *rest = tasks
        released = await http.post(
            f"/v1/tasks/{first['task_id']}/release", json={"lease_token": first["lease_token"]}
        )
        assert released.json() == {
            "state": "queued",
            "run_at": pytest.approx(released.json()["run_at"]),
        }
        settle = {
            "settles": [
                {"task_id": t["task_id"], "lease_token": t["lease_token"], "outcome": "ack"}
                for t in rest
            ]
            + [{"task_id": first["task_id"], "lease_token": "stale", "outcome": "ack"}],
            "claim": {"queues": ["q"], "max": 1},
        }
        reply = (await http.post("/v1/settle", json=settle)).json()
        assert [r["ok"] for r in reply["results"]] == [True, True, False]
        assert reply["results"][2]["error"]["code"] == "lease_lost"
        assert [t["task_id"] for t in reply["tasks"]] == [first["task_id"]]

        async with tcp_client(server, worker={"id": "w1", "queues": ["q"]}):
            workers = (await http.get("/v1/workers")).json()["workers"]
            assert [w["id"] for w in workers] == ["w1"]
            reply = await http.post("/v1/workers/w1/state", json={"state": "quiet"})
            assert reply.status_code == 200
            workers = (await http.get("/v1/workers")).json()["workers"]
            assert workers[0]["state"] == "quiet"
        missing = await http.post("/v1/workers/nobody/state", json={"state": "quiet"})
        assert missing.status_code == 404


# --- auth and the status mapping ------------------------------------------------------------


async def test_bearer_token(http_broker: HttpBroker) -> None:
    async with http_broker(token=None, auth_tokens=["s3cret"]) as (_, http):
        refused = await http.get("/v1/stats")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        wrong = await http.get("/v1/stats", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = await http.get("/v1/stats", headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200
        for open_path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert (await http.get(open_path)).status_code == 200, open_path


async def test_status_mapping(http_broker: HttpBroker) -> None:
    assert STATUS["lease_lost"] == STATUS["conflict"] == 409
    async with http_broker(max_queue_depth=2, max_frame_bytes=2048) as (_, http):
        missing = await http.get("/v1/tasks/999")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"

        bad = await http.post("/v1/queues/q/tasks", json={"priority": "high"})
        assert bad.status_code == 400
        assert bad.json()["error"]["message"].startswith("priority:")
        bad = await http.post("/v1/queues/q/tasks", json={"delay": 1, "run_at": 5})
        assert bad.status_code == 400
        bad = await http.post("/v1/queues/q/tasks", content=b"[1, 2]")
        assert bad.json()["error"]["message"] == "body must be a JSON object"
        bad = await http.post("/v1/queues/q/tasks", content=b"{nope")
        assert bad.status_code == 400
        bad = await http.post("/v1/queues/q/tasks", json={"nope": 1})
        assert bad.status_code == 400 and "nope" in bad.json()["error"]["message"]
        bad = await http.get("/v1/tasks", params={"limit": "many"})
        assert bad.json()["error"]["message"].startswith("limit:")
        bad = await http.get("/v1/tasks", params={"colour": "red"})
        assert bad.status_code == 400
        assert (await http.get("/v1/tasks/x")).status_code == 400
        too_long = await http.post("/v1/claim", json={"queues": ["q"], "wait": 1e6})
        assert too_long.status_code == 400
        assert too_long.json()["error"]["message"].startswith("wait:")

        big = await http.post("/v1/queues/q/tasks", json={"payload": "x" * 4096})
        assert big.status_code == 413
        assert big.json()["error"]["code"] == "frame_too_large"

        for n in range(2):
            assert (await http.post("/v1/queues/q/tasks", json={"payload": n})).status_code == 201
        busy = await http.post("/v1/queues/q/tasks", json={"payload": 3})
        assert busy.status_code == 429
        assert busy.json()["error"]["code"] == "busy"
        assert int(busy.headers["retry-after"]) >= 1

        task = (await http.post("/v1/queues/q/claim", json={})).json()["tasks"][0]
        acked = await http.post(
            f"/v1/tasks/{task['task_id']}/ack", json={"lease_token": task["lease_token"]}
        )
        assert acked.status_code == 200
        conflict = await http.delete(f"/v1/tasks/{task['task_id']}")  # a succeeded task
        assert conflict.status_code == 409
        assert conflict.json()["error"]["code"] == "conflict"

        nowhere = await http.get("/v1/nowhere")
        assert nowhere.status_code == 404
        assert nowhere.json()["error"]["code"] == "not_found"
        wrong_method = await http.put("/v1/stats")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"]["code"] == "bad_request"


async def test_fencing_over_http(http_broker: HttpBroker) -> None:
    async with http_broker() as (_, http):
        await http.post("/v1/queues/q/tasks", json={"payload": 1, "max_attempts": 3})
        first = (await http.post("/v1/queues/q/claim", json={"lease": 0.2})).json()["tasks"][0]
        await anyio.sleep(0.3)
        stale = await http.post(
            f"/v1/tasks/{first['task_id']}/ack", json={"lease_token": first["lease_token"]}
        )
        assert stale.status_code == 409
        assert stale.json()["error"]["code"] == "lease_lost"
        second = (await http.post("/v1/queues/q/claim", json={"wait": 5})).json()["tasks"][0]
        assert second["lease_token"] != first["lease_token"]
        for verb in ("ack", "fail", "release"):
            reply = await http.post(
                f"/v1/tasks/{first['task_id']}/{verb}", json={"lease_token": first["lease_token"]}
            )
            assert reply.status_code == 409, verb
        reply = await http.post(
            f"/v1/tasks/{second['task_id']}/ack", json={"lease_token": second["lease_token"]}
        )
        assert reply.status_code == 200


# --- long-polls across the two faces ----------------------------------------------------------


async def test_http_claim_woken_by_tcp_enqueue_and_back(http_broker: HttpBroker) -> None:
    async with http_broker() as (server, http), tcp_client(server) as tcp:
        got: dict[str, Any] = {}

        async def http_claim() -> None:
            reply = await http.post("/v1/queues/a/claim", json={"wait": 10})
            got["http"] = reply.json()["tasks"]

        async with anyio.create_task_group() as tg:
            tg.start_soon(http_claim)
            await anyio.sleep(0.3)
            started = anyio.current_time()
            await tcp.enqueue("a", "from tcp")
        assert anyio.current_time() - started < 2
        assert got["http"][0]["payload"] == "from tcp"

        async def tcp_claim() -> None:
            got["tcp"] = await tcp.claim("b", wait=10)

        async with anyio.create_task_group() as tg:
            tg.start_soon(tcp_claim)
            await anyio.sleep(0.3)
            started = anyio.current_time()
            await http.post("/v1/queues/b/tasks", json={"payload": "from http"})
        assert anyio.current_time() - started < 2
        assert got["tcp"][0].payload == "from http"


async def test_claim_of_a_client_that_left_takes_nothing(http_broker: HttpBroker) -> None:
    async with http_broker() as (server, http):
        url = httpx.URL(server.http.url)
        stream = await anyio.connect_tcp(url.host, url.port or 80)
        body = b'{"wait": 30}'
        await stream.send(
            b"POST /v1/queues/gone/claim HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await anyio.sleep(0.3)
        assert server.broker.waiters.waiting("gone") == 1  # parked
        await stream.aclose()
        await anyio.sleep(0.3)
        await http.post("/v1/queues/gone/tasks", json={"payload": 1})
        await anyio.sleep(0.3)
        task = (await http.get("/v1/tasks/1")).json()["task"]
        assert task["state"] == "queued"


async def test_shutdown_ends_long_polls_and_hands_back(make_server: Callable[..., Any]) -> None:
    async with (
        make_server() as server,
        httpx.AsyncClient(base_url=server.http.url, timeout=30) as http,
    ):
        replies: list[httpx.Response] = []

        async def claim() -> None:
            replies.append(await http.post("/v1/queues/q/claim", json={"wait": 30}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(claim)
            await anyio.sleep(0.3)
            started = anyio.current_time()
            server.request_shutdown()
        assert anyio.current_time() - started < 5
        assert replies[0].status_code == 503
        assert replies[0].json()["error"]["code"] == "shutting_down"


# --- health and metrics -----------------------------------------------------------------------


@pytest.mark.sqlite_only  # the SQLite file's write-ahead log
async def test_readyz_goes_503_when_the_wal_is_deleted(http_broker: HttpBroker) -> None:
    async with http_broker(file_check_interval=0.1) as (server, http):
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).status_code == 200
        await http.post("/v1/queues/q/tasks", json={"payload": 1})
        wal = anyio.Path(f"{server.settings.db_path}-wal")
        assert await wal.exists()
        await wal.unlink()
        with anyio.fail_after(5):
            while (ready := await http.get("/readyz")).status_code == 200:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        assert ready.status_code == 503
        assert "wal" in ready.json()["reason"].lower()
        assert (await http.get("/healthz")).status_code == 200


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_match_stats(http_broker: HttpBroker) -> None:
    async with http_broker() as (server, http), tcp_client(server) as tcp:
        for n in range(5):
            await http.post("/v1/queues/m/tasks", json={"payload": n})
        await tcp.enqueue("other", 1)
        tasks = (await http.post("/v1/queues/m/claim", json={"max": 3})).json()["tasks"]
        await http.post(
            f"/v1/tasks/{tasks[0]['task_id']}/ack", json={"lease_token": tasks[0]["lease_token"]}
        )
        await http.post(
            f"/v1/tasks/{tasks[1]['task_id']}/fail",
            json={"lease_token": tasks[1]["lease_token"], "retry": False},
        )
        reply = await http.get("/metrics")
        assert reply.headers["content-type"].startswith("text/plain")
        samples = _samples(reply.text)
        stats = (await http.get("/v1/stats")).json()
        for queue, counts in stats["queues"].items():
            for state in ("scheduled", "queued", "leased", "succeeded", "dead", "cancelled"):
                key = ("durable_tq_tasks", (("queue", queue), ("state", state)))
                assert samples[key] == counts[state], key
        assert samples[("durable_tq_tasks_enqueued_total", ())] == 6
        assert samples[("durable_tq_tasks_claimed_total", ())] == 3
        assert samples[("durable_tq_tasks_succeeded_total", ())] == 1
        assert samples[("durable_tq_tasks_failed_total", ())] == 1
        assert samples[("durable_tq_tasks_dead_total", ())] == 1
        assert samples[("durable_tq_connections", (("kind", "tcp"),))] == 1
        assert samples[("durable_tq_connections", (("kind", "http"),))] >= 1
        assert samples[("durable_tq_workers", ())] == stats["workers"]
        assert samples[("durable_tq_pending_writes", ())] == 0
        assert samples[("durable_tq_oldest_queued_age_seconds", (("queue", "m"),))] > 0
        assert samples[("durable_tq_commit_batch_size_count", ())] >= 1
        assert samples[("durable_tq_commit_duration_seconds_count", ())] >= 1
        assert samples[("durable_tq_process_resident_memory_bytes", ())] > 0
        assert samples[("durable_tq_process_open_fds", ())] > 0


async def test_dead_total_counts_deaths_by_lease_expiry(http_broker: HttpBroker) -> None:
    """The sweeper burying a task whose lease ran out on its last attempt is a death like a
    worker's final fail; a lease running out with attempts left, or on a revoked task, is not."""
    async with http_broker() as (server, http), tcp_client(server) as tcp:
        last_try = (await tcp.enqueue("x", 1, max_attempts=1)).task_id
        retried = (await tcp.enqueue("x", 2, max_attempts=2)).task_id
        revoked = (await tcp.enqueue("x", 3, max_attempts=1)).task_id
        failed = (await tcp.enqueue("x", 4, max_attempts=1)).task_id
        leases = {task.task_id: task for task in await tcp.claim(["x"], max=4, lease=0.2)}
        assert sorted(leases) == sorted([last_try, retried, revoked, failed])
        assert await tcp.cancel(revoked) == "cancelling"
        await tcp.fail(failed, leases[failed].lease_token, "boom", retry=False)
        # Nobody renews the other three: the sweeper ends them when their leases run out.
        assert (await tcp.wait(last_try, timeout=30)).last_error == "lease expired"
        assert (await tcp.wait(revoked, timeout=30)).state == "cancelled"
        with anyio.fail_after(30):
            while (await tcp.get(retried)).state != "queued":  # noqa: ASYNC110
                await anyio.sleep(0.05)

        samples = _samples((await http.get("/metrics")).text)
        stats = (await http.get("/v1/stats")).json()
        assert stats["queues"]["x"]["dead"] == 2
        assert samples[("durable_tq_tasks_dead_total", ())] == 2
        assert samples[("durable_tq_tasks_failed_total", ())] == 1  # only the worker's fail


async def test_latency_histograms_come_from_the_brokers_timestamps(
    make_settings: Callable[..., Any],
) -> None:
    """enqueue -> claim is the claim's time minus the task's run_at, claim -> ack the ack's
    time minus the claim's: with a clock the test moves, each lands in a known bucket."""
    clock = FakeClock()
    async with anyio.create_task_group() as tg:
        server = await tg.start(BrokerServer(make_settings(), clock=clock).serve)
        async with tcp_client(server) as tcp, httpx.AsyncClient(base_url=server.http.url) as http:
            await tcp.enqueue("lat", 1)
            await tcp.enqueue("lat", 2)
            clock.advance(2.0)
            first, second = await tcp.claim(["lat"], max=2)
            clock.advance(7.0)
            await tcp.ack(first.task_id, first.lease_token)
            await tcp.settle([Settlement.ack(second.task_id, second.lease_token)])
            samples = _samples((await http.get("/metrics")).text)
        server.request_shutdown()

    def bucket(name: str, le: str) -> float:
        return samples[(f"durable_tq_{name}_seconds_bucket", (("le", le),))]

    assert samples[("durable_tq_enqueue_to_claim_seconds_count", ())] == 2
    assert samples[("durable_tq_enqueue_to_claim_seconds_sum", ())] == 4.0
    assert (bucket("enqueue_to_claim", "1.0"), bucket("enqueue_to_claim", "2.5")) == (0, 2)
    # Acked one by one and inside a settle: both are claim -> ack.
    assert samples[("durable_tq_claim_to_ack_seconds_count", ())] == 2
    assert samples[("durable_tq_claim_to_ack_seconds_sum", ())] == 14.0
    assert (bucket("claim_to_ack", "5.0"), bucket("claim_to_ack", "10.0")) == (0, 2)
    assert bucket("claim_to_ack", "+Inf") == 2


async def test_throughput_counts_what_metrics_counts(http_broker: HttpBroker) -> None:
    from durable_tq.core.throughput import ThroughputRing

    async with http_broker() as (server, http):
        broker = server.broker
        broker.throughput_ring = ThroughputRing(interval=0.05, window=30)
        broker.sample_throughput()
        await http.post("/v1/tasks:batch", json={"tasks": [{"queue": "t"}] * 3})
        (task,) = (await http.post("/v1/queues/t/claim", json={})).json()["tasks"]
        await http.post(
            f"/v1/tasks/{task['task_id']}/ack", json={"lease_token": task["lease_token"]}
        )
        done_at = broker.now()
        with anyio.fail_after(10):
            while True:
                reply = await http.get("/v1/throughput")
                assert reply.status_code == 200
                body = reply.json()
                if body["samples"] and body["samples"][-1]["at"] >= done_at:
                    break
                await anyio.sleep(0.02)
        assert body["interval"] == 0.05 and body["window"] == 30
        totals = {
            name: round(sum(s[name] * s["seconds"] for s in body["samples"]))
            for name in ("enqueued", "claimed", "succeeded", "failed", "dead")
        }
        assert totals == {"enqueued": 3, "claimed": 1, "succeeded": 1, "failed": 0, "dead": 0}
        async with tcp_client(server) as tcp:  # the same op over TCP, typed by the client
            over_tcp = await tcp.throughput()
        assert over_tcp.window == 30 and over_tcp.samples[0].at == body["samples"][0]["at"]


# --- as a process -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_serve_subprocess_http_and_no_http(serve_subprocess: Callable[..., Any]) -> None:
    port = _free_port()
    broker = serve_subprocess(args=["--http", f"127.0.0.1:{port}"])
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/readyz").status_code == 200
        assert http.post("/v1/queues/p/tasks", json={"payload": 1}).status_code == 201
        assert http.get("/v1/tasks/1").json()["task"]["state"] == "queued"
        assert http.get("/openapi.json").json()["openapi"] == "3.1.0"
    assert broker.terminate() == 0
    broker = serve_subprocess(
        db_path=broker.db_path, args=["--no-http"], env={"DURABLE_TQ_HTTP_PORT": str(port)}
    )
    with pytest.raises(httpx.ConnectError), httpx.Client(base_url=base, timeout=2) as http:
        http.get("/healthz")
    assert broker.terminate() == 0
    env = {"DURABLE_TQ_HTTP_PORT": str(port), "DURABLE_TQ_HTTP_HOST": "127.0.0.1"}
    broker = serve_subprocess(db_path=broker.db_path, env=env)
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/v1/tasks/1").status_code == 200
    assert broker.terminate() == 0
    assert os.path.exists(broker.db_path)


async def test_https_with_the_broker_certificate(http_broker: HttpBroker, tmp_path: Any) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with http_broker(tls_cert=cert_path, tls_key=key_path) as (server, _):
        assert server.http.url.startswith("https://")
        async with httpx.AsyncClient(base_url=server.http.url, verify=context) as https:
            reply = await https.post("/v1/queues/q/tasks", json={"payload": 1})
            assert reply.status_code == 201
        async with httpx.AsyncClient(base_url=server.http.url, verify=False) as plain:
            plain_url = server.http.url.replace("https://", "http://")
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"{plain_url}/healthz")
