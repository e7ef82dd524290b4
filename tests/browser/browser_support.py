"""What the browser tests share besides fixtures: the CLI and a worker as processes, console
error collection, screenshots, bounded waits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("DURABLE_TQ_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
#: Every wait in these tests: generous, so a slow shared machine is not a failure.
PATIENCE_MS = 30_000
#: Where screenshots go when DURABLE_TQ_SCREENSHOTS names a folder (docs/images).
SCREENSHOTS = os.environ.get("DURABLE_TQ_SCREENSHOTS")


def chromium_present() -> bool:
    return Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)


def until(check: Callable[[], Any], what: str, limit: float = PATIENCE_MS / 1000) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what`` after ``limit``."""
    deadline = time.monotonic() + limit
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


class PageErrors:
    """Console errors and uncaught exceptions of a page, collected as they happen."""

    def __init__(self, page: Any) -> None:
        self.messages: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.messages.append(f"uncaught: {error}"))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.messages.append(f"console: {message.text} ({message.location})")


def screenshot(page: Any, name: str) -> None:
    """Save ``name.png`` into $DURABLE_TQ_SCREENSHOTS (only when it is set: CI leaves the
    committed images alone)."""
    if SCREENSHOTS:
        folder = Path(SCREENSHOTS)
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def clean_env() -> dict[str, str]:
    """This process's environment without the developer's DURABLE_TQ_* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}


class Cli:
    """``durable-tq`` commands against one broker, as an operator would type them."""

    def __init__(self, url: str, workdir: Path, token: str | None = None) -> None:
        self.url = url
        self.workdir = workdir
        self.token = token

    def run(self, *args: str) -> str:
        command = [sys.executable, "-m", "durable_tq", *args, "--url", self.url]
        if self.token:
            command += ["--token", self.token]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=self.workdir,
            env=clean_env(),
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{' '.join(args)}: exit {done.returncode}\n{done.stderr}"
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json"))

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.json("stats")
        return result

    def task(self, task_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.json("tasks", "show", str(task_id))
        return result

    def enqueue(self, queue: str, payload: Any, *options: str) -> int:
        reply = self.json("enqueue", queue, json.dumps(payload), *options)
        return int(reply["task_id"])


WORKER_APP = """
import time

from durable_tq import Fail, Worker

worker = Worker(concurrency=2, worker_id="mailer-1", heartbeat_interval=0.3, wait=1.0)


@worker.task("emails")
def send(payload, ctx):
    if payload.get("bounce"):
        raise Fail("550 mailbox does not exist")
    return {"sent": True, "to": payload.get("to")}


@worker.task("reports")
def report(payload, ctx):
    for step in range(600):  # a long report (60 s) that says how far it is
        ctx.progress(step / 600, f"page {step} of 600")
        time.sleep(0.1)
    return {"rows": 1234}
"""


class WorkerProcess:
    """``python -m durable_tq worker app:worker`` (WORKER_APP, worker id ``mailer-1``) as a
    child process, its output in ``log_path``."""

    def __init__(self, url: str, folder: Path, token: str | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "app.py").write_text(textwrap.dedent(WORKER_APP))
        self.log_path = folder / "worker.log"
        env = clean_env()
        env["PYTHONPATH"] = str(folder)
        command = [sys.executable, "-m", "durable_tq", "worker", "app:worker", "--url", url]
        if token:
            command += ["--token", token]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
