"""Every curl line of docs/http.md runs, in order, against a real broker process and gets the
status its comment says."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from durable_tq import Client

DOC = Path(__file__).resolve().parents[2] / "docs" / "http.md"
_BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)
_EXPECTED = re.compile(r"\s+#\s*(\d{3})\s*$")
TOKEN = "doc-token"


def doc_curl_lines() -> list[tuple[str, int]]:
    """(command, expected status) of every ``curl`` line in the doc's ``sh`` blocks."""
    lines = []
    for block in _BLOCK.findall(DOC.read_text()):
        for line in block.splitlines():
            if not line.startswith("curl "):
                continue
            expected = _EXPECTED.search(line)
            assert expected, f"a curl line in docs/http.md has no expected status: {line}"
            lines.append((line[: expected.start()], int(expected.group(1))))
    return lines


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_doc_covers_every_route() -> None:
    from durable_tq.servers.http.routes import ROUTES

    text = "\n".join(command for command, _ in doc_curl_lines())
    for route in ROUTES:
        pattern = re.escape(route.path)
        pattern = re.sub(r"\\\{[a-z_]+\\\}", '[^/?"]+', pattern)
        method = f"-X {route.method}" if route.method != "GET" else 'curl -s "'
        found = [
            line for line in text.splitlines()
            if re.search(f'"\\$DTQ{pattern}[?"]', line) and method in line
        ]  # fmt: skip
        assert found, f"docs/http.md has no curl example of {route.method} {route.path}"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_doc_curl_lines_run(serve_subprocess: Callable[..., Any], tmp_path: Path) -> None:
    port = _free_port()
    broker = serve_subprocess(
        args=["--http", f"127.0.0.1:{port}"], env={"DURABLE_TQ_AUTH_TOKENS": TOKEN}
    )
    env = {**os.environ, "DTQ": f"http://127.0.0.1:{port}", "TOKEN": TOKEN, "LEASE": ""}
    body = tmp_path / "body.json"
    worker = {"id": "mailer-1", "queues": ["emails"]}
    with Client.from_url(broker.url, token=TOKEN, worker=worker):
        for command, expected in doc_curl_lines():
            run = subprocess.run(
                ["bash", "-c", f"{command} -o {body} -w '%{{http_code}}'"],
                capture_output=True, text=True, env=env, timeout=30,
            )  # fmt: skip
            text = body.read_text() if body.exists() else ""
            assert run.stdout == str(expected), f"{command}\n-> {run.stdout} {text}"
            if text.startswith("{"):
                reply = json.loads(text)
                if reply.get("tasks") and "lease_token" in reply["tasks"][0]:
                    env["LEASE"] = reply["tasks"][0]["lease_token"]
    assert broker.terminate() == 0
