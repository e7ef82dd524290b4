"""Schemathesis fuzzes the whole HTTP API of a real broker process from its /openapi.json:
no 500, every status documented, every response matching its schema."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

#: Examples per operation: bounded so the test takes well under a minute.
MAX_EXAMPLES = 15
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_schemathesis_finds_nothing(serve_subprocess: Callable[..., Any], tmp_path: Path) -> None:
    port = _free_port()
    broker = serve_subprocess(
        args=["--http", f"127.0.0.1:{port}"],
        # Long-polls (claim wait, task wait) end within a request timeout of the fuzzer's.
        env={"DURABLE_TQ_AUTH_TOKENS": "fuzz-token", "DURABLE_TQ_MAX_WAIT": "2"},
    )
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, headers={"Authorization": "Bearer fuzz-token"}) as http:
        for n in range(3):  # something to find: tasks 1-3, queue "emails"
            assert http.post("/v1/queues/emails/tasks", json={"payload": n}).status_code == 201
    st = Path(sys.executable).with_name("st")
    command = [
        str(st), "run", f"{base}/openapi.json",
        "--checks", CHECKS,
        "--phases", "examples,fuzzing",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", "7",
        "--request-timeout", "20",
        "--header", "Authorization: Bearer fuzz-token",
        "--no-color",
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=280, cwd=tmp_path, env=env
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "Server error" not in run.stdout
    assert "Traceback" not in broker.log_text(), broker.log_text()[-4000:]
    assert broker.terminate() == 0
