"""What a new user meets in the first hour (issue 12), through the real ``durable-tq`` script.

Every command runs as a subprocess of the installed console script against a real broker
process (``serve_subprocess``) on a loopback port, in a folder of its own with no DURABLE_TQ_*
variables from the machine. Every wait is bounded by LIMIT; nothing depends on how fast the
machine is.
"""

from __future__ import annotations

import json
import os
import queue as queue_module
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from durable_tq.client import Client

pytestmark = pytest.mark.slow

LIMIT = 60.0
CLI = str(Path(sys.executable).parent / "durable-tq")
QUEUE_30 = "email-notifications-to-custome"  # 30 characters

WORKER_APP = """
from durable_tq import Worker

worker = Worker(concurrency=2, wait=0.5)


def render(payload):
    raise ValueError(f"no template {payload['template']!r}")


@worker.task("emails")
def send_email(payload):
    if payload.get("template"):
        render(payload)
    return {"sent": payload.get("to")}
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
    env["COLUMNS"] = "100"
    env.update(extra)
    return env


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=LIMIT,
        stdin=subprocess.DEVNULL,
    )


class Lines:
    """The lines of a child's stream, read in a thread, waited for with a bound."""

    def __init__(self, stream: Any) -> None:
        self.seen: list[str] = []
        self._queue: queue_module.Queue[str | None] = queue_module.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        try:
            for line in stream:
                self._queue.put(line)
        except (OSError, ValueError):  # closed by the fixture's teardown
            pass
        self._queue.put(None)

    def wait_for(self, text: str, within: float = LIMIT) -> str:
        deadline = time.monotonic() + within
        while True:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue_module.Empty:
                raise AssertionError(f"no line with {text!r}; saw {self.seen!r}") from None
            if line is None:
                raise AssertionError(f"stream ended before {text!r}; saw {self.seen!r}")
            self.seen.append(line)
            if text in line:
                return line


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "app"
    folder.mkdir()
    return folder


def sigint_as_at_a_terminal() -> None:
    """In a child before exec: SIGINT back to its default. A test run started in the
    background by a non-interactive shell (``cmd &``) inherits SIGINT ignored, and Python
    leaves an ignored SIGINT ignored, so Ctrl-C (the SIGINT these tests send) would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def children() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [CLI, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=sigint_as_at_a_terminal,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(LIMIT)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + LIMIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {LIMIT} s: {what}")
        time.sleep(0.05)


# --- 1, 2: stats ------------------------------------------------------------------------------


def test_stats_is_readable_at_80_and_200_columns(serve_subprocess: Any, work: Path) -> None:
    broker = serve_subprocess()
    with Client.from_url(broker.url, timeout=LIMIT) as client:
        client.enqueue_many([{"queue": QUEUE_30, "payload": {"n": n}} for n in range(1234)])
        client.enqueue("emails", {"to": "ada"}, delay=3600)
        client.pause("emails")

    narrow = cli("stats", "--url", broker.url, cwd=work, env=clean_env(COLUMNS="80"))
    assert narrow.returncode == 0, narrow.stderr
    assert all(len(line) <= 80 for line in narrow.stdout.splitlines()), narrow.stdout
    assert "…" not in narrow.stdout
    assert QUEUE_30 in narrow.stdout
    for shown in ("queued 1,234", "scheduled 1", "paused", "succeeded 0", "cancelled 0"):
        assert shown in narrow.stdout, narrow.stdout

    wide = cli("stats", "--url", broker.url, cwd=work, env=clean_env(COLUMNS="200"))
    assert wide.returncode == 0, wide.stderr
    header = next(line for line in wide.stdout.splitlines() if "Scheduled" in line)
    for column in ("Queue", "Queued", "Leased", "Succeeded", "Dead", "Cancelled", "Status"):
        assert column in header
    row = next(line for line in wide.stdout.splitlines() if QUEUE_30 in line)
    assert "1,234" in row
    assert "…" not in wide.stdout


def test_stats_watch_into_a_pipe_prints_flushed_frames(
    serve_subprocess: Any, work: Path, children: Callable[..., subprocess.Popen[str]]
) -> None:
    broker = serve_subprocess()
    with Client.from_url(broker.url, timeout=LIMIT) as client:
        client.enqueue("emails", {"to": "ada"})

    counted = cli("stats", "--watch", "0.1", "--count", "3", "--url", broker.url, cwd=work)
    assert counted.returncode == 0, counted.stderr
    assert counted.stdout.count("Queues — ") == 3
    assert "\x1b[" not in counted.stdout  # plain text, no cursor movement

    # Without --count it runs until stopped; each frame must reach the pipe as it is made.
    watching = children("stats", "--watch", "0.1", "--url", broker.url, cwd=work, env=clean_env())
    lines = Lines(watching.stdout)
    lines.wait_for("live worker")
    lines.wait_for("live worker")
    watching.send_signal(signal.SIGINT)
    assert watching.wait(LIMIT) == 0


INTERRUPTED_WAIT = """
import os, signal, sys, threading, time
from durable_tq.client import Client
client = Client.from_url(sys.argv[1])
task = client.enqueue("nobody-works-here", 1)
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    client.wait(task.task_id, timeout=120)  # nobody runs it: only Ctrl-C ends this
except KeyboardInterrupt:
    began = time.monotonic()
    client.close()
    print(f"closed in {time.monotonic() - began:.1f} s")
"""


def test_ctrl_c_during_a_blocking_call_lets_the_client_close_at_once(
    serve_subprocess: Any,
) -> None:
    """Ctrl-C in the middle of a blocking call (``stats --watch``, a ``wait``): the call must
    not go on in the client's portal thread while ``close()`` waits for it (it did: close
    then waited out the call's own timeout)."""
    broker = serve_subprocess()
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_WAIT, broker.url],
        capture_output=True,
        text=True,
        timeout=LIMIT,
        env=clean_env(),
        preexec_fn=sigint_as_at_a_terminal,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("closed in "), done.stdout


# --- 3, 4: finding the broker ----------------------------------------------------------------


def test_worker_cli_and_client_find_the_broker_from_the_settings_file(
    serve_subprocess: Any,
    work: Path,
    children: Callable[..., subprocess.Popen[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = serve_subprocess(env={"DURABLE_TQ_AUTH_TOKENS": "s3cret"})
    (work / "durable_tq.toml").write_text(f'port = {broker.port}\nauth_tokens = ["s3cret"]\n')
    (work / "app.py").write_text(WORKER_APP)

    # The CLI: no --url, no token; both from ./durable_tq.toml.
    enqueued = cli("enqueue", "emails", '{"to": "ada"}', "--json", cwd=work)
    assert enqueued.returncode == 0, enqueued.stderr
    task_id = json.loads(enqueued.stdout)["task_id"]

    # The worker: the same file, the same way.
    worker = children("worker", "app:worker", cwd=work, env=clean_env())
    # The Python client: Client.from_env() reads the same file from the current folder.
    monkeypatch.chdir(work)
    for name in list(os.environ):
        if name.startswith("DURABLE_TQ_"):
            monkeypatch.delenv(name)
    with Client.from_env(timeout=LIMIT) as client:
        wait_until(lambda: client.get(task_id).state == "succeeded", "the worker ran the task")
        assert client.get(task_id).result == {"sent": "ada"}

    # 6: a clean stop after sync handlers ran says nothing about stuck threads.
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=LIMIT)
    assert worker.returncode == 0, stderr
    assert "thread(s)" not in stderr
    assert f"connected to tcp://127.0.0.1:{broker.port}" in stderr


def test_an_explicit_flag_beats_an_environment_variable(work: Path) -> None:
    db = work / "x.db"
    assert cli("migrate", "--db", str(db), "--create", cwd=work).returncode == 0
    env = clean_env(DURABLE_TQ_URL="tcp://127.0.0.1:1")
    for command in (["stats"], ["tasks", "list"]):
        result = cli(*command, "--db", str(db), "--json", cwd=work, env=env)
        assert result.returncode == 0, result.stderr
    both = cli("stats", "--db", str(db), "--url", "tcp://127.0.0.1:1", cwd=work)
    assert both.returncode == 2
    assert "give --db or --url, not both" in both.stderr


# --- 5: bad worker targets --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "target", "expected"),
    [
        ({"broken.py": "x = (\n"}, "broken:worker", "broken.py, line 1"),
        ({"needy.py": "import requestz\n"}, "needy:worker", "No module named 'requestz'"),
        (
            {"app.py": WORKER_APP},
            "app:send_email",
            "app:send_email is a task function (queue 'emails'), not a Worker — did you mean "
            "app:worker?",
        ),
    ],
)
def test_a_bad_worker_target_is_one_line_and_exit_2(
    work: Path, files: dict[str, str], target: str, expected: str
) -> None:
    for name, text in files.items():
        (work / name).write_text(text)
    result = cli("worker", target, cwd=work)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert expected in result.stderr

    traced = cli("worker", target, "--traceback", cwd=work)
    assert traced.returncode == 2
    assert "Traceback (most recent call last)" in traced.stderr
    assert traced.stderr.rstrip().endswith(result.stderr.rstrip())
    assert (
        cli("worker", target, cwd=work, env=clean_env(DURABLE_TQ_DEBUG="1")).stderr.count("\n") > 1
    )


# --- 7: a handler's exception in the log ----------------------------------------------------------


def test_a_failing_handler_logs_one_line_then_its_own_frames(
    serve_subprocess: Any, work: Path, children: Callable[..., subprocess.Popen[str]]
) -> None:
    broker = serve_subprocess()
    (work / "app.py").write_text(WORKER_APP)
    with Client.from_url(broker.url, timeout=LIMIT) as client:
        task_id = client.enqueue("emails", {"template": "welcome"}, max_attempts=1).task_id
        worker = children("worker", "app:worker", "--url", broker.url, cwd=work, env=clean_env())
        wait_until(lambda: client.get(task_id).state == "dead", "the task failed")
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=LIMIT)
    lines = stderr.splitlines()
    at = next(i for i, line in enumerate(lines) if "failed after" in line)
    assert f"task {task_id} (queue emails, attempt 1)" in lines[at]
    assert "ValueError: no template 'welcome'" in lines[at]
    assert "the task is dead" in lines[at]
    assert lines[at + 1] == "Traceback (most recent call last):"
    frames = [line for line in lines[at + 1 :] if line.lstrip().startswith("File ")]
    assert frames[0].split('"')[1] == str(work / "app.py")
    assert all("durable_tq" not in frame and "anyio" not in frame for frame in frames), frames


# --- 8: waiting for the broker, a full queue ------------------------------------------------


def test_a_worker_started_before_its_broker_waits_for_it(
    serve_subprocess: Any, work: Path, children: Callable[..., subprocess.Popen[str]]
) -> None:
    (work / "app.py").write_text(WORKER_APP)
    port = free_port()
    worker = children("worker", "app:worker", cwd=work, env=clean_env(DURABLE_TQ_PORT=str(port)))
    lines = Lines(worker.stderr)
    waiting = lines.wait_for("waiting for it")
    assert f"tcp://127.0.0.1:{port}" in waiting
    assert "until it does" in waiting
    broker = serve_subprocess(args=["--port", str(port)])
    lines.wait_for("connected to")
    assert sum("WARNING" in line for line in lines.seen) == 1, lines.seen
    with Client.from_url(broker.url, timeout=LIMIT) as client:
        task_id = client.enqueue("emails", {"to": "ada"}).task_id
        wait_until(lambda: client.get(task_id).state == "succeeded", "the worker works")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(LIMIT) == 0


def test_worker_connect_timeout_bounds_the_wait(work: Path) -> None:
    (work / "app.py").write_text(WORKER_APP)
    port = free_port()
    result = cli(
        "worker",
        "app:worker",
        "--url",
        f"tcp://127.0.0.1:{port}",
        "--connect-timeout",
        "0.5",
        cwd=work,
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("waiting for it, up to 0.5 s") == 1
    assert result.stderr.splitlines()[-1].startswith(
        f"error: cannot reach the broker at tcp://127.0.0.1:{port}: connection refused"
    )


def test_enqueue_into_a_full_queue_says_so_at_once_and_retries(
    serve_subprocess: Any, work: Path, children: Callable[..., subprocess.Popen[str]]
) -> None:
    broker = serve_subprocess(env={"DURABLE_TQ_MAX_QUEUE_DEPTH": "1"})
    with Client.from_url(broker.url, timeout=LIMIT) as client:
        client.enqueue("emails", {"n": 1})
        producer = children(
            "enqueue",
            "emails",
            '{"n": 2}',
            "--url",
            broker.url,
            "--timeout",
            str(LIMIT),
            cwd=work,
            env=clean_env(),
        )
        said = Lines(producer.stderr).wait_for("busy")
        assert "queue emails" in said and f"retrying for up to {LIMIT:g}s" in said
        assert producer.poll() is None  # still retrying, not given up
        client.purge("emails")
        stdout, _ = producer.communicate(timeout=LIMIT)
    assert producer.returncode == 0
    assert "enqueued task" in stdout


# --- 9: small things ---------------------------------------------------------------------------


def test_version(work: Path) -> None:
    result = cli("--version", cwd=work)
    assert result.returncode == 0
    assert result.stdout.strip().startswith("durable-tq 0.")


def test_serve_says_listening_once(serve_subprocess: Any) -> None:
    broker = serve_subprocess()
    assert "listening on" not in broker.log_text()  # stdout had it; the log does not repeat


def test_serve_on_a_taken_port_creates_no_database(work: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", "--port", str(port), "--db", str(work / "new.db"), cwd=work)
    assert result.returncode == 1
    assert "cannot listen on" in result.stderr
    assert list(work.iterdir()) == []


def test_a_worker_that_left_is_not_counted_live(serve_subprocess: Any) -> None:
    broker = serve_subprocess()  # worker_timeout 30 s: only the goodbye can explain a 0
    registration = {"id": "w-1", "queues": ["emails"], "concurrency": 1}
    with Client.from_url(broker.url, worker=registration, timeout=LIMIT) as worker:
        assert worker.stats().workers == 1
    with Client.from_url(broker.url, timeout=LIMIT) as client:
        wait_until(lambda: client.stats().workers == 0, "the worker's goodbye was noticed")
