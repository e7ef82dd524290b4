"""A second language: the Node.js example (examples/node-grpc, @grpc/grpc-js loading the shipped
proto at run time) works tasks enqueued from Python, and its producer's tasks reach Python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import pytest

from durable_tq.client import AsyncClient
from durable_tq.servers.grpc import generate
from durable_tq.servers.tcp import BrokerServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node-grpc"
NODE_LIMIT = 60.0


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("node is not installed, and CI must run the Node.js gRPC example")
        pytest.skip("node is not installed (Node.js 18+ runs examples/node-grpc)")
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "node without npm: cannot install examples/node-grpc"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, check=True, timeout=300)
    return found


async def run_node(node: str, script: str, *args: str) -> dict[str, object]:
    env = {**os.environ, "DURABLE_TQ_PROTO": str(generate.PROTO)}
    with anyio.fail_after(NODE_LIMIT):
        done = await anyio.run_process([node, script, *args], cwd=EXAMPLE, env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, object] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


async def test_node_worker_runs_python_tasks_and_node_producer_feeds_python(
    node: str, make_server: Callable[..., AbstractAsyncContextManager[BrokerServer]]
) -> None:
    async with make_server(grpc="127.0.0.1:0") as server:
        address = f"127.0.0.1:{server.grpc_port}"
        async with AsyncClient.from_url(server.url) as client:
            made = [await client.enqueue("node", {"a": n, "b": 100}) for n in range(25)]
            bad = await client.enqueue("node", {"a": "not a number"})
            summary = await run_node(node, "worker.js", address, "node", "26", "4")
            assert summary == {"done": 26, "failed": []}
            for n, task in enumerate(made):
                info = await client.get(task.task_id)
                assert info.state == "succeeded"
                assert info.result["sum"] == n + 100 and info.result["by"] == "node"
            failed = await client.get(bad.task_id)
            assert failed.state == "dead" and "numbers" in (failed.last_error or "")

            produced = await run_node(node, "producer.js", address, "from-node", "3")
            ids = produced["task_ids"]
            assert isinstance(ids, list) and len(ids) == 3
            tasks = await client.claim("from-node", max=3)
            assert sorted(t.task_id for t in tasks) == sorted(ids)
            assert {t.payload["from"] for t in tasks} == {"node"}
