"""The operator CLI against a real broker on a loopback port.

CliRunner runs a command synchronously in the test's thread, so the broker runs on its own
event loop in a portal thread (``cli_broker``). Every command is checked through its ``--json``
output parsed back, plus its exit code: 0 ok, 1 operation error, 2 usage, 3 no broker.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from anyio.from_thread import start_blocking_portal
from typer.testing import CliRunner, Result

from durable_tq.cli import app
from durable_tq.client import Client
from durable_tq.config import Settings
from durable_tq.servers.tcp import BrokerServer

MISSING_TASK_ID = 987_654_321
#: Bound for every wait in this file; a working broker needs a tiny fraction of it.
LIMIT = 30.0


@contextmanager
def broker_in_thread(settings: Settings) -> Iterator[BrokerServer]:
    """A BrokerServer serving from a portal thread; shut down gracefully on exit."""
    with start_blocking_portal(backend="asyncio") as portal:
        future, server = portal.start_task(BrokerServer(settings).serve)
        try:
            yield server
        finally:
            portal.call(server.request_shutdown)
            future.result(timeout=LIMIT)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No settings leak in from the machine: no DURABLE_TQ_* variables, no ./durable_tq.toml."""
    import os

    for name in list(os.environ):
        if name.startswith("DURABLE_TQ_"):
            monkeypatch.delenv(name)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("COLUMNS", "100")


@pytest.fixture
def cli_broker(settings: Settings) -> Iterator[BrokerServer]:
    with broker_in_thread(settings) as server:
        yield server


@pytest.fixture
def url(cli_broker: BrokerServer) -> str:
    return cli_broker.url


@pytest.fixture
def client(url: str) -> Iterator[Client]:
    with Client.from_url(url, timeout=LIMIT) as opened:
        yield opened


def invoke(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env, input=input)


def ok(*args: str, env: dict[str, str] | None = None) -> Result:
    result = invoke(*args, env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def ok_json(*args: str, env: dict[str, str] | None = None) -> Any:
    result = ok(*args, "--json", env=env)
    return json.loads(result.stdout)


def expect_exit(result: Result, code: int) -> str:
    """The command ended with ``code`` through its own error handling: no traceback."""
    assert result.exit_code == code, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.stderr


def make_dead(client: Client, queue: str, count: int) -> list[int]:
    """``count`` tasks that failed without retry: state ``dead`` (``queue`` must be empty)."""
    ids = [client.enqueue(queue, {"n": n}, max_attempts=1).task_id for n in range(count)]
    claimed = client.claim(queue, max=count)
    assert sorted(t.task_id for t in claimed) == sorted(ids)
    for task in claimed:
        assert client.fail(task.task_id, task.lease_token, "boom\nsecond line").state == "dead"
    return ids


# --- stats, tasks ---------------------------------------------------------------------------------


def test_stats_counts_states_paused_and_age(url: str, client: Client) -> None:
    make_dead(client, "emails", 2)
    client.enqueue("emails", {"to": "a"})
    client.enqueue("emails", {"to": "b"}, delay=3600)
    client.pause("reports")

    stats = ok_json("stats", "--url", url)

    emails = stats["queues"]["emails"]
    assert (emails["queued"], emails["scheduled"], emails["dead"]) == (1, 1, 2)
    assert emails["paused"] is False and emails["oldest_queued_age"] >= 0
    assert stats["queues"]["reports"]["paused"] is True
    assert stats["queues"]["reports"]["oldest_queued_age"] is None
    assert stats["connections"] >= 1 and stats["workers"] == 0

    table = ok("stats", "--url", url).stdout
    assert "emails" in table and "reports" in table and "paused" in table
    assert "Oldest ready" in table and "live worker" in table


def test_stats_watch_prints_one_line_per_refresh(url: str, client: Client) -> None:
    client.enqueue("q", 1)
    result = ok("stats", "--watch", "0.05", "--count", "3", "--json", "--url", url)
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert all(json.loads(line)["queues"]["q"]["queued"] == 1 for line in lines)
    table = ok("stats", "--watch", "0.05", "--count", "2", "--url", url).stdout
    assert "every 0.05s" in table


def test_stats_shows_waiting_tasks_wide_stacked_and_watched(url: str, client: Client) -> None:
    parent = client.enqueue("chain", {"step": 1}).task_id
    child = client.enqueue("chain", {"step": 2}, after=[parent]).task_id  # held by its parent
    client.enqueue("another-queue-with-a-long-name", 1)
    waiting = ok_json("tasks", "list", "--state", "waiting", "--url", url)["tasks"]
    assert [task["task_id"] for task in waiting] == [child]

    wide = ok("stats", "--url", url, env={"COLUMNS": "200"}).stdout.splitlines()
    header = next(line for line in wide if "Queued" in line).split()
    assert header[:4] == ["Queue", "Waiting", "Scheduled", "Queued"]
    assert next(line for line in wide if "chain" in line).split()[:4] == ["chain", "1", "0", "1"]

    # Too narrow for the table: stacked, once and under --watch (plain frames into a pipe).
    for command in (["stats"], ["stats", "--watch", "0.05", "--count", "2"]):
        lines = ok(*command, "--url", url, env={"COLUMNS": "50"}).stdout.splitlines()
        assert all(len(line) <= 50 for line in lines)
        chain = [n for n, line in enumerate(lines) if line.startswith("chain ")]
        total = [n for n, line in enumerate(lines) if line == "total"]
        assert len(chain) == len(total) == (2 if "--watch" in command else 1)
        for n in chain:
            assert lines[n + 1].strip() == "waiting 1 · queued 1 · scheduled 0 · leased 0"
        for n in total:
            assert lines[n + 1].strip() == "waiting 1 · queued 2 · scheduled 0 · leased 0"


def test_tasks_list_filters_and_pages(url: str, client: Client) -> None:
    ids = [client.enqueue("a", {"n": n}).task_id for n in range(5)]
    client.enqueue("b", {"n": 99})

    page = ok_json("tasks", "list", "--queue", "a", "--limit", "3", "--url", url)
    assert [t["task_id"] for t in page["tasks"]] == ids[:3]
    assert page["next_after_id"] == ids[2]
    rest = ok_json("tasks", "list", "-q", "a", "--after", str(ids[2]), "--url", url)
    assert [t["task_id"] for t in rest["tasks"]] == ids[3:]
    assert rest["next_after_id"] is None

    task = page["tasks"][0]
    assert task["payload"] == {"n": 0} and task["state"] == "queued" and task["queue"] == "a"
    assert ok_json("tasks", "list", "--state", "dead", "--url", url)["tasks"] == []

    table = ok("tasks", "list", "--url", url, "-n", "3").stdout
    assert '{"n":0}' in table and f"--after {ids[2]}" in table


def test_tasks_show_payload_error_result(url: str, client: Client) -> None:
    (dead_id,) = make_dead(client, "q", 1)
    done_id = client.enqueue("q", {"x": [1, 2]}, priority=7, unique_key="k").task_id
    (claimed,) = client.claim("q")
    client.ack(claimed.task_id, claimed.lease_token, {"sent": True})

    done = ok_json("tasks", "show", str(done_id), "--url", url)
    assert done["result"] == {"sent": True} and done["state"] == "succeeded"
    assert done["priority"] == 7 and done["unique_key"] == "k"
    dead = ok_json("tasks", "show", str(dead_id), "--url", url)
    assert dead["last_error"] == "boom\nsecond line"

    shown = ok("tasks", "show", str(done_id), "--url", url).stdout
    assert '"sent": true' in shown and "ago)" in shown and "Result" in shown
    assert "boom" in ok("tasks", "show", str(dead_id), "--url", url).stdout


def test_missing_task_is_not_found(url: str) -> None:
    stderr = expect_exit(invoke("tasks", "show", str(MISSING_TASK_ID), "--url", url), 1)
    assert stderr.strip() == f"error: not_found: task {MISSING_TASK_ID} does not exist"
    stderr = expect_exit(invoke("cancel", str(MISSING_TASK_ID), "--url", url), 1)
    assert "not_found" in stderr


# --- enqueue --------------------------------------------------------------------------------------


def test_enqueue_one_with_options(url: str, client: Client) -> None:
    first = ok_json(
        "enqueue",
        "mail",
        '{"to": "ada"}',
        "--priority",
        "3",
        "--max-attempts",
        "2",
        "--unique-key",
        "ada",
        "--url",
        url,
    )
    assert first["created"] is True
    again = ok_json("enqueue", "mail", '{"to": "ada"}', "--unique-key", "ada", "--url", url)
    assert again == {"task_id": first["task_id"], "created": False}
    later = ok_json("enqueue", "mail", "[1, 2]", "--delay", "600", "--url", url)

    task = client.get(first["task_id"])
    assert (task.payload, task.priority, task.max_attempts) == ({"to": "ada"}, 3, 2)
    assert client.get(later["task_id"]).state == "scheduled"
    assert "enqueued task" in ok("enqueue", "mail", '"plain"', "--url", url).stdout


def test_enqueue_from_jsonl_in_batches(url: str, client: Client, tmp_path: Path) -> None:
    path = tmp_path / "load.jsonl"
    lines = [json.dumps({"n": n}) for n in range(1234)]
    path.write_text("\n".join(lines[:600]) + "\n\n" + "\n".join(lines[600:]) + "\n")

    report = ok_json(
        "enqueue",
        "bulk",
        "--from",
        str(path),
        "--batch-size",
        "500",
        "--priority",
        "2",
        "--url",
        url,
    )

    assert report["count"] == report["created"] == 1234
    assert report["last_task_id"] - report["first_task_id"] == 1233
    assert client.stats().queues["bulk"].queued == 1234
    tasks = list(client.iter_tasks("bulk", page_size=1000))
    assert [t.payload["n"] for t in tasks] == list(range(1234))
    assert {t.priority for t in tasks} == {2}


def test_enqueue_from_jsonl_reports_bad_lines(url: str, client: Client, tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"ok": 1}\n{"ok": 2\n\n[1, 2]\nnot json\n')

    stderr = expect_exit(invoke("enqueue", "q", "--from", str(path), "--url", url), 2)
    assert f"{path}:2:" in stderr and f"{path}:5:" in stderr
    assert f"{path}:1:" not in stderr and f"{path}:4:" not in stderr
    assert "nothing was enqueued" in stderr
    assert "q" not in client.stats().queues

    report = ok_json("enqueue", "q", "--from", str(path), "--skip-invalid", "--url", url)
    assert (report["count"], report["skipped_lines"]) == (2, 2)
    assert [t.payload for t in client.iter_tasks("q")] == [{"ok": 1}, [1, 2]]


def test_enqueue_from_jsonl_stopped_part_way_says_where(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    path = tmp_path / "load.jsonl"
    lines = [json.dumps({"n": n}) for n in range(4)] + [json.dumps("x" * 4096)]
    path.write_text("\n".join(lines) + "\n")
    with broker_in_thread(make_settings(max_frame_bytes=2048)) as server:
        stderr = expect_exit(
            invoke("enqueue", "q", "--from", str(path), "--batch-size", "2", "--url", server.url),
            1,
        )
        assert "enqueued 4 tasks (lines up to 4)" in stderr
        assert "starting at line 5" in stderr and "error: frame_too_large: " in stderr
        with Client.from_url(server.url, timeout=LIMIT) as client:
            assert [t.payload for t in client.iter_tasks("q")] == [{"n": n} for n in range(4)]


def test_enqueue_usage_errors(url: str, tmp_path: Path) -> None:
    assert "not valid JSON" in expect_exit(invoke("enqueue", "q", "{nope", "--url", url), 2)
    expect_exit(invoke("enqueue", "q", "--url", url), 2)
    expect_exit(invoke("enqueue", "q", "1", "--from", str(tmp_path / "x"), "--url", url), 2)
    path = tmp_path / "one.jsonl"
    path.write_text("1\n")
    expect_exit(invoke("enqueue", "q", "--from", str(path), "--unique-key", "k", "--url", url), 2)
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'"ok"\n"caf\xe9"\n')
    stderr = expect_exit(invoke("enqueue", "q", "--from", str(latin1), "--url", url), 2)
    assert "not UTF-8" in stderr


# --- requeue, cancel, pause, purge ---------------------------------------------------------------


def test_requeue_by_ids_and_by_queue(url: str, client: Client) -> None:
    dead = make_dead(client, "jobs", 4)

    by_ids = ok_json("requeue", str(dead[0]), str(dead[1]), "--url", url)
    assert by_ids == {"count": 2, "skipped": []}
    by_queue = ok_json("requeue", "--queue", "jobs", "--state", "dead", "--url", url)
    assert by_queue == {"count": 2, "skipped": []}
    assert client.stats().queues["jobs"].queued == 4
    assert all(client.get(i).attempts == 0 for i in dead)
    assert "requeued 0 tasks" in ok("requeue", "--queue", "jobs", "--url", url).stdout

    expect_exit(invoke("requeue", "--url", url), 2)
    expect_exit(invoke("requeue", "1", "--queue", "jobs", "--url", url), 2)
    expect_exit(invoke("requeue", "--queue", "jobs", "--state", "queued", "--url", url), 2)


def test_cancel_and_conflict(url: str, client: Client) -> None:
    task_id = client.enqueue("q", 1).task_id
    cancelled = ok_json("cancel", str(task_id), "--url", url)
    assert cancelled == {"task_id": task_id, "state": "cancelled"}
    leased_id = client.enqueue("q", 2).task_id
    leased = client.claim("q")[0]
    assert leased.task_id == leased_id
    cancelling = ok_json("cancel", str(leased_id), "--url", url)
    assert cancelling == {"task_id": leased_id, "state": "cancelling"}
    assert "is being cancelled" in ok("cancel", str(leased_id), "--url", url).stdout
    client.ack(leased_id, leased.lease_token)
    stderr = expect_exit(invoke("cancel", str(leased_id), "--url", url), 1)
    assert stderr.startswith("error: conflict: ")


def test_pause_and_resume(url: str, client: Client) -> None:
    client.enqueue("q", 1)
    assert ok_json("pause", "q", "--url", url) == {"queue": "q", "paused": True}
    assert client.stats().queues["q"].paused
    assert client.claim("q") == []
    assert "resumed" in ok("resume", "q", "--url", url).stdout
    assert not client.stats().queues["q"].paused
    assert len(client.claim("q")) == 1


def test_purge_needs_yes_without_a_terminal(url: str, client: Client) -> None:
    make_dead(client, "q", 2)
    client.enqueue("q", "keep")

    stderr = expect_exit(invoke("purge", "q", "--url", url), 2)
    assert "--yes" in stderr
    assert client.stats().queues["q"].dead == 2

    assert ok_json("purge", "q", "--state", "dead", "--yes", "--url", url) == {"count": 2}
    assert client.stats().queues["q"].queued == 1
    assert "purged 1 task" in ok("purge", "q", "-y", "--url", url).stdout
    expect_exit(invoke("purge", "q", "--state", "leased", "--yes", "--url", url), 2)


# --- workers --------------------------------------------------------------------------------------


def test_workers_and_worker_state(url: str) -> None:
    worker = {"id": "w-1", "queues": ["emails"], "concurrency": 4}
    with Client.from_url(url, worker=worker, timeout=LIMIT) as as_worker:
        listed = ok_json("workers", "--url", url)["workers"]
        assert [(w["id"], w["queues"], w["concurrency"], w["state"]) for w in listed] == [
            ("w-1", ["emails"], 4, "running")
        ]
        assert "w-1" in ok("workers", "--url", url).stdout

        assert ok_json("worker-state", "w-1", "quiet", "--url", url) == {
            "worker_id": "w-1",
            "state": "quiet",
        }
        assert as_worker.heartbeat() == "quiet"
        ok("worker-state", "w-1", "running", "--url", url)
        assert as_worker.heartbeat() == "running"

    expect_exit(invoke("worker-state", "w-1", "sleepy", "--url", url), 2)
    assert "not_found" in expect_exit(invoke("worker-state", "nobody", "quiet", "--url", url), 1)


# --- reaching the broker --------------------------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_broker_exits_3_naming_the_address() -> None:
    port = _closed_port()
    stderr = expect_exit(invoke("stats", "--url", f"tcp://127.0.0.1:{port}", "--timeout", "5"), 3)
    assert stderr.startswith(f"error: cannot reach the broker at tcp://127.0.0.1:{port}: ")
    assert "connection refused" in stderr
    assert stderr.count("\n") == 1
    # The address from the environment's settings, as the broker would read them.
    stderr = expect_exit(
        invoke("tasks", "list", "--timeout", "5", env={"DURABLE_TQ_PORT": str(port)}), 3
    )
    assert f"tcp://127.0.0.1:{port}" in stderr


def test_tokens_from_flag_env_and_config(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    with broker_in_thread(make_settings(auth_tokens=["s3cret"])) as server:
        stderr = expect_exit(invoke("stats", "--url", server.url, "--token", "wrong"), 1)
        assert stderr.startswith("error: unauthorized: ")
        expect_exit(invoke("stats", "--url", server.url), 1)

        ok("stats", "--url", server.url, "--token", "s3cret")
        ok("stats", "--url", server.url, env={"DURABLE_TQ_TOKEN": "s3cret"})
        config_file = tmp_path / "broker.toml"
        config_file.write_text(f'port = {server.port}\nauth_tokens = ["s3cret", "other"]\n')
        ok("stats", "--config", str(config_file))


def test_tls_broker_with_cafile_or_its_own_config(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = (tmp_path / n for n in ("cert.pem", "key.pem", "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    with broker_in_thread(make_settings(tls_cert=cert_file, tls_key=key_file)) as server:
        assert server.url.startswith("tls://")
        ok("stats", "--url", server.url, "--cafile", str(ca_file))
        # The broker's own settings file: TLS is implied and its certificate is trusted.
        config_file = tmp_path / "broker.toml"
        config_file.write_text(
            f'port = {server.port}\ntls_cert = "{cert_file}"\ntls_key = "{key_file}"\n'
        )
        assert ok_json("stats", "--config", str(config_file))["queues"] == {}
        # Without a CA that vouches for the broker, the handshake fails: no broker to talk to.
        stderr = expect_exit(invoke("stats", "--url", server.url, "--timeout", "5"), 3)
        assert "certificate" in stderr.lower()


def test_usage_errors_exit_2(url: str) -> None:
    expect_exit(invoke("tasks", "list", "--state", "bogus", "--url", url), 2)
    expect_exit(invoke("stats", "5", "--url", url), 2)
    expect_exit(invoke("stats", "--url", "http://127.0.0.1:1"), 2)
    expect_exit(invoke("stats", "--config", "/nonexistent/durable_tq.toml"), 2)
    expect_exit(invoke("no-such-command"), 2)


# --- migrate, backup, config ----------------------------------------------------------------------


def test_migrate_creates_upgrades_and_refuses(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    fresh = tmp_path / "fresh.db"
    assert "--create" in expect_exit(invoke("migrate", "--db", str(fresh)), 2)
    assert not fresh.exists()
    report = ok_json("migrate", "--db", str(fresh), "--create")
    assert report["created"] is True and report["from_version"] == 0
    assert report["version"] == report["latest_version"] >= 1
    assert report["applied"][0] == "0001_initial"
    again = ok_json("migrate", "--db", str(fresh))
    assert again["applied"] == [] and again["version"] == report["version"]
    assert "schema version" in ok("migrate", "--db", str(fresh)).stdout

    settings = make_settings()
    with broker_in_thread(settings):
        stderr = expect_exit(invoke("migrate", "--db", str(settings.db_path)), 1)
        assert stderr.startswith("error: conflict: ") and "running broker" in stderr

    with sqlite3.connect(fresh) as conn:
        conn.execute("PRAGMA user_version = 999")
    conn.close()
    assert "newer" in expect_exit(invoke("migrate", "--db", str(fresh)), 1)


class Producer(threading.Thread):
    """Enqueues through the blocking Client until told to stop; keeps every acknowledged id."""

    def __init__(self, url: str) -> None:
        super().__init__(name="producer", daemon=True)
        self.url = url
        self.acked: list[int] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.enough = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Client.from_url(self.url, timeout=LIMIT) as client:
                n = 0
                while not self.stop.is_set():
                    task_id = client.enqueue("load", {"n": n, "pad": "x" * 200}).task_id
                    n += 1
                    with self.lock:
                        self.acked.append(task_id)
                        if len(self.acked) >= 200:
                            self.enough.set()
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.enough.set()

    def acknowledged(self) -> list[int]:
        with self.lock:
            return list(self.acked)


def test_backup_while_a_producer_writes(settings: Settings, tmp_path: Path) -> None:
    target = tmp_path / "backup.db"
    with broker_in_thread(settings) as server:
        producer = Producer(server.url)
        producer.start()
        try:
            assert producer.enough.wait(LIMIT), "the producer never got going"
            assert producer.error is None, producer.error
            before = producer.acknowledged()
            report = ok_json("backup", str(target), "--db", str(settings.db_path))
            assert producer.is_alive() and producer.error is None
        finally:
            producer.stop.set()
            producer.join(LIMIT)
        assert not producer.is_alive()
        assert len(producer.acknowledged()) > len(before)

    assert report["integrity_check"] == "ok" and report["tasks"] >= len(before)
    assert report["bytes"] == report["pages"] * report["page_size"] == target.stat().st_size
    conn = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        present = {row[0] for row in conn.execute("SELECT id FROM tasks WHERE queue = 'load'")}
    finally:
        conn.close()
    missing = set(before) - present
    assert not missing, f"{len(missing)} acknowledged tasks missing from the backup"
    assert not list(tmp_path.glob(".backup.db.partial-*"))

    stderr = expect_exit(invoke("backup", str(target), "--db", str(settings.db_path)), 2)
    assert "--force" in stderr
    ok("backup", str(target), "--db", str(settings.db_path), "--force")


def test_config_shows_sources_and_masks_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = tmp_path / "durable.toml"
    config_file.write_text('port = 9999\nauth_tokens = ["top-secret"]\n')
    monkeypatch.setenv("DURABLE_TQ_MAX_BATCH", "64")

    report = ok_json("config", "--config", str(config_file))

    settings = report["settings"]
    assert report["config_file"] == str(config_file)
    assert settings["port"] == {"value": "9999", "source": f"file {config_file}"}
    assert settings["max_batch"] == {"value": "64", "source": "env DURABLE_TQ_MAX_BATCH"}
    assert settings["host"]["source"] == "default"
    table = ok("config", "--config", str(config_file)).stdout
    assert "top-secret" not in table and "top-secret" not in json.dumps(report)
    assert "hidden" in settings["auth_tokens"]["value"]


# --- reading the file with the broker stopped -----------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_db_mode_reads_a_stopped_brokers_file(settings: Settings) -> None:
    with broker_in_thread(settings) as server, Client.from_url(server.url) as client:
        ids = [client.enqueue("a", {"n": n}).task_id for n in range(3)]
        make_dead(client, "b", 1)
        client.pause("a")
        online_list = ok_json("tasks", "list", "--url", server.url)
        online_stats = ok_json("stats", "--url", server.url)
    db = str(settings.db_path)
    digest = _digest(settings.db_path)

    stats = ok_json("stats", "--db", db)
    assert stats["connections"] is None
    for name in ("a", "b"):
        offline, online = stats["queues"][name], online_stats["queues"][name]
        offline.pop("oldest_queued_age")
        online.pop("oldest_queued_age")
        assert offline == online
    assert ok_json("tasks", "list", "--db", db) == online_list
    page = ok_json("tasks", "list", "--db", db, "--queue", "a", "--limit", "2")
    assert [t["task_id"] for t in page["tasks"]] == ids[:2] and page["next_after_id"] == ids[1]
    assert ok_json("tasks", "show", str(ids[0]), "--db", db)["payload"] == {"n": 0}
    assert "paused" in ok("stats", "--db", db).stdout
    assert "not_found" in expect_exit(invoke("tasks", "show", str(MISSING_TASK_ID), "--db", db), 1)

    assert _digest(settings.db_path) == digest  # read-only: not a byte changed
    expect_exit(invoke("stats", "--db", str(settings.db_path) + ".nope"), 2)
    expect_exit(invoke("stats", "--db", db, "--url", "tcp://127.0.0.1:1"), 2)


def test_cli_wait_enqueue_after_and_exit_codes(url: str, client: Client) -> None:
    parent = client.enqueue("c", 1).task_id
    child = ok_json("enqueue", "c", "2", "--after", str(parent), "--url", url)
    assert client.get(child["task_id"]).state == "waiting"
    assert expect_exit(
        invoke("tasks", "wait", str(child["task_id"]), "--timeout", "0.1", "--url", url),
        4,
    )
    (claimed,) = client.claim(["c"])
    client.ack(claimed.task_id, claimed.lease_token, result="r")
    done = ok_json("tasks", "wait", str(parent), "--url", url)
    assert done["state"] == "succeeded" and done["done"] is True
    assert client.cancel(child["task_id"]) == "cancelled"
    expect_exit(invoke("tasks", "wait", str(child["task_id"]), "--url", url), 1)
