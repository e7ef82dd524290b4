"""Hardening (issue 11): one broker per file, read-only files, file modes, a deleted WAL,
and requeue saying why it skipped a task. Real broker processes on real files and sockets.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import site
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import durable_tq

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ServeSubprocess = Callable[..., Any]
RawConnect = Callable[..., AbstractAsyncContextManager[Any]]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
    env.update(extra)
    return env


def _serve_until_exit(
    db_path: Path | str, cwd: Path, *, timeout: float = 30.0, **popen: Any
) -> tuple[int | None, str, str]:
    """Run ``durable-tq serve`` on ``db_path``: (exit code, stdout, stderr). A broker that is
    still running after ``timeout`` (it started serving when it should not have) is killed and
    reported with exit code None."""
    command = popen.pop("command", [sys.executable])
    popen.setdefault("env", _clean_env())
    proc = subprocess.Popen(
        [*command, "-m", "durable_tq", "serve", "--port", "0", "--db", str(db_path)],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        return None, stdout, stderr
    return proc.returncode, stdout, stderr


def _cli(*args: str, cwd: Path, **popen: Any) -> subprocess.CompletedProcess[str]:
    """``python -m durable_tq ARGS`` to the end: its exit code, stdout and stderr."""
    popen.setdefault("env", _clean_env())
    return subprocess.run(
        [sys.executable, "-m", "durable_tq", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        **popen,
    )


# --- item 6: one broker per file ---------------------------------------------------------------


def test_deleting_the_lock_file_does_not_let_a_second_broker_in(
    tmp_path: Path, serve_subprocess: ServeSubprocess
) -> None:
    db_path = tmp_path / "one.db"
    first = serve_subprocess(db_path)
    Path(f"{db_path}.lock").unlink()
    code, stdout, stderr = _serve_until_exit(db_path, tmp_path)
    assert code == 2, (code, stdout, stderr)
    assert "in use by another broker" in stderr
    assert f"pid {first.pid}" in stderr, stderr
    assert "listening" not in stdout
    assert first.running


def test_a_symlink_to_the_database_is_the_same_database(
    tmp_path: Path, serve_subprocess: ServeSubprocess
) -> None:
    db_path = tmp_path / "real" / "one.db"
    db_path.parent.mkdir()
    first = serve_subprocess(db_path)
    link = tmp_path / "link.db"
    link.symlink_to(db_path)
    code, stdout, stderr = _serve_until_exit(link, tmp_path)
    assert code == 2, (code, stdout, stderr)
    assert f"pid {first.pid}" in stderr, stderr
    assert first.running
    # A symlinked folder too.
    linked_folder = tmp_path / "linked"
    linked_folder.symlink_to(db_path.parent)
    code, stdout, stderr = _serve_until_exit(linked_folder / "one.db", tmp_path)
    assert code == 2, (code, stdout, stderr)


def test_a_clean_stop_removes_the_lock_file_and_a_kill_leaves_no_obstacle(
    tmp_path: Path, serve_subprocess: ServeSubprocess
) -> None:
    db_path = tmp_path / "one.db"
    lock_path = Path(f"{db_path}.lock")
    broker = serve_subprocess(db_path)
    assert lock_path.read_text().strip() == str(broker.pid)
    assert broker.terminate() == 0
    assert not lock_path.exists()
    broker.start()
    assert lock_path.read_text().strip() == str(broker.pid)
    broker.kill()  # a crash leaves the file behind; it must not block the next start
    broker.start()
    assert lock_path.read_text().strip() == str(broker.pid)


def test_the_holder_writes_its_lock_file_again_when_it_is_deleted(
    tmp_path: Path, serve_subprocess: ServeSubprocess
) -> None:
    db_path = tmp_path / "one.db"
    lock_path = Path(f"{db_path}.lock")
    broker = serve_subprocess(db_path, env={"DURABLE_TQ_FILE_CHECK_INTERVAL": "0.1"})
    lock_path.unlink()
    deadline = time.monotonic() + 10
    while not lock_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock_path.read_text().strip() == str(broker.pid)
    assert "lock file" in broker.log_text()


# --- item 7: a read-only database is refused at start-up ---------------------------------------


def _unprivileged_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the broker as another user")
    for name in ("nobody", "daemon"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.skip("no unprivileged user (nobody, daemon) on this machine")


def _python_for(user: pwd.struct_passwd) -> tuple[list[str], dict[str, str]]:
    """An interpreter ``user`` can run with durable_tq importable: this one, or the system's
    python of the same version given this environment's packages on PYTHONPATH."""
    repo = str(Path(durable_tq.__file__).resolve().parent.parent)
    path = os.pathsep.join([repo, *site.getsitepackages()])
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    # The system's own, not one on PATH: a virtualenv's python links into its base install.
    for python in (sys.executable, f"/usr/local/bin/{version}", f"/usr/bin/{version}"):
        if not Path(python).exists():
            continue
        env = _clean_env(PYTHONPATH=path, HOME="/")
        try:
            probe = subprocess.run(
                [python, "-c", "import durable_tq.cli"],
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
                env=env,
                cwd="/",
                capture_output=True,
                timeout=60,
            )
        except OSError:  # this user may not even run it (a home folder closed to others)
            continue
        if probe.returncode == 0:
            return [python], env
    pytest.skip(f"no python that user {user.pw_name} may run imports durable_tq")


@contextmanager
def _folder_owned_by(user: pwd.struct_passwd) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="durable_tq-ro-", dir="/tmp"))
    try:
        os.chown(folder, user.pw_uid, user.pw_gid)
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_read_only_database_is_refused_at_start_up(tmp_path: Path) -> None:
    user = _unprivileged_user()
    command, env = _python_for(user)
    with _folder_owned_by(user) as folder:
        db_path = folder / "ro.db"
        made = _cli("migrate", "--create", "--db", str(db_path), cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        for path in folder.iterdir():
            os.chown(path, user.pw_uid, user.pw_gid)
        db_path.chmod(0o444)
        code, stdout, stderr = _serve_until_exit(
            db_path,
            folder,
            command=command,
            env=env,
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
        )
    assert code == 2, (code, stdout, stderr)
    assert "listening" not in stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "read-only" in lines[0] and str(db_path) in lines[0], lines[0]


# --- item 8: files are created for their owner only ----------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_database_files_and_backups_are_owner_only_whatever_the_umask(
    tmp_path: Path, serve_subprocess: ServeSubprocess, raw_connect: RawConnect
) -> None:
    db_path = tmp_path / "private.db"
    old_umask = os.umask(0)  # the child inherits it
    try:
        broker = serve_subprocess(db_path)
    finally:
        os.umask(old_umask)
    async with raw_connect(broker.url) as conn:
        assert (await conn.request("enqueue", queue="q", payload="secret"))["ok"]
    for suffix in ("", "-wal", "-shm", ".lock"):
        path = Path(f"{db_path}{suffix}")
        assert _mode(path) == 0o600, (path, oct(_mode(path)))
    target = tmp_path / "backup.db"
    result = await anyio.to_thread.run_sync(
        lambda: _cli("backup", str(target), "--db", str(db_path), cwd=tmp_path, umask=0)
    )
    assert result.returncode == 0, result.stderr
    assert _mode(target) == 0o600, oct(_mode(target))


# --- item 9: the WAL deleted under a running broker ----------------------------------------------


async def test_a_deleted_wal_stops_writes_and_a_restart_keeps_every_ok(
    tmp_path: Path, serve_subprocess: ServeSubprocess, raw_connect: RawConnect
) -> None:
    db_path = tmp_path / "wal.db"
    broker = serve_subprocess(db_path, env={"DURABLE_TQ_FILE_CHECK_INTERVAL": "0.1"})
    acked: set[int] = set()
    async with raw_connect(broker.url) as conn:
        for n in range(5):
            reply = await conn.request("enqueue", queue="q", payload=n)
            acked.add(reply["task_id"])
        await anyio.Path(f"{db_path}-wal").unlink()
        refused = None
        with anyio.move_on_after(10):
            while refused is None:
                reply = await conn.request("enqueue", queue="q", payload="after")
                if reply["ok"]:
                    acked.add(reply["task_id"])
                else:
                    refused = reply
                await anyio.sleep(0.02)
        assert refused is not None, "writes were still acknowledged 10 s after the WAL went"
        assert refused["error"]["code"] == "internal"
        message = refused["error"]["message"]
        assert "write-ahead log" in message and "restart" in message.lower(), message
        # Reads still work.
        assert (await conn.request("stats"))["ok"]
    assert "write-ahead log" in broker.log_text()
    assert broker.terminate() == 0
    broker.start()
    async with raw_connect(broker.url) as conn:
        page = await conn.request("list", queue="q", limit=1000)
        stored = {task["task_id"] for task in page["tasks"]}
        assert acked <= stored, sorted(acked - stored)
        assert (await conn.request("enqueue", queue="q", payload="again"))["ok"]


# --- item 11: an empty token is refused ----------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "value"),
    [("env", '[""]'), ("env", "a, ,b"), ("env", " "), ("file", '[""]'), ("file", '["ok", "  "]')],
)
def test_serve_refuses_an_empty_auth_token(tmp_path: Path, how: str, value: str) -> None:
    env = _clean_env()
    if how == "env":
        env["DURABLE_TQ_AUTH_TOKENS"] = value
    else:
        (tmp_path / "durable_tq.toml").write_text(f"auth_tokens = {value}\n")
    code, stdout, stderr = _serve_until_exit(tmp_path / "t.db", tmp_path, env=env)
    assert code == 2, (code, stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "auth_tokens" in lines[0] and "empty" in lines[0], stderr


# --- item 13: requeue says why it skipped a task -------------------------------------------------


async def test_requeue_says_why_each_task_was_skipped(
    tmp_path: Path, serve_subprocess: ServeSubprocess, raw_connect: RawConnect
) -> None:
    broker = serve_subprocess(tmp_path / "rq.db")
    async with raw_connect(broker.url) as conn:
        old = (await conn.request("enqueue", queue="q", payload=1, unique_key="k"))["task_id"]
        assert (await conn.request("cancel", task_id=old))["ok"]
        live = (await conn.request("enqueue", queue="q", payload=2, unique_key="k"))["task_id"]
        free = (await conn.request("enqueue", queue="q", payload=3))["task_id"]
        assert (await conn.request("cancel", task_id=free))["ok"]
        missing = 987_654

        reply = await conn.request("requeue", task_ids=[old, live, missing, free])
        assert reply["ok"], reply
        assert reply["count"] == 1
        assert reply["skipped"] == [
            {"task_id": old, "reason": f"unique_key 'k' is held by live task {live}"},
            {"task_id": live, "reason": "task is queued; only dead or cancelled tasks move"},
            {"task_id": missing, "reason": "no such task"},
        ]
        # By queue: the blocked task is named too.
        reply = await conn.request("requeue", queue="q", state="cancelled")
        assert reply["count"] == 0
        assert reply["skipped"] == [
            {"task_id": old, "reason": f"unique_key 'k' is held by live task {live}"}
        ]
        # Nothing skipped: the field is an empty list.
        reply = await conn.request("requeue", task_ids=[])
        assert reply["count"] == 0 and reply["skipped"] == []

    result = await anyio.to_thread.run_sync(
        lambda: _cli(
            "requeue",
            str(old),
            str(missing),
            "--url",
            broker.url,
            cwd=tmp_path,
            env=_clean_env(COLUMNS="200"),
        )
    )
    assert result.returncode == 0, result.stderr
    assert "requeued 0 tasks" in result.stdout
    assert f"task {old}: unique_key 'k' is held by live task {live}" in result.stdout
    assert f"task {missing}: no such task" in result.stdout
    result = await anyio.to_thread.run_sync(
        lambda: _cli("requeue", str(old), "--url", broker.url, "--json", cwd=tmp_path)
    )
    assert json.loads(result.stdout) == {
        "count": 0,
        "skipped": [{"task_id": old, "reason": f"unique_key 'k' is held by live task {live}"}],
    }
