"""Token roles on the wire: every op tried with every role over a raw socket.

What each op needs comes from the op table (``OPS[name].role``); an op the role does not allow
is answered ``forbidden`` and the connection stays open.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from durable_tq import config, errors
from durable_tq.servers.tcp import BrokerServer
from durable_tq.wire.ops import OPS, Role

pytestmark = pytest.mark.anyio

RawConnect = Callable[..., AbstractAsyncContextManager[Any]]
MakeServer = Callable[..., AbstractAsyncContextManager[BrokerServer]]

TOKENS = {Role.PRODUCER: "p-token", Role.WORKER: "w-token", Role.ADMIN: "a-token"}

#: Valid arguments for every op (hello and bye are tried on their own). A new op without an
#: entry here fails test_every_op_has_sample_arguments: add it.
SAMPLES: dict[str, dict[str, Any]] = {
    "enqueue": {"queue": "roles", "payload": 1},
    "enqueue_many": {"tasks": [{"queue": "roles"}]},
    "claim": {"queues": ["roles"], "max": 1},
    "ack": {"task_id": 1, "lease_token": "x"},
    "fail": {"task_id": 1, "lease_token": "x"},
    "release": {"task_id": 1, "lease_token": "x"},
    "settle": {"settles": []},
    "extend": {"task_id": 1, "lease_token": "x", "lease": 5},
    "heartbeat": {},
    "get": {"task_id": 1},
    "cancel": {"task_id": 999},
    "stats": {},
    "list": {},
    "requeue": {"task_ids": [999]},
    "pause": {"queue": "other"},
    "resume": {"queue": "other"},
    "purge": {"queue": "other"},
    "workers": {},
    "worker_state": {"worker_id": "nobody", "state": "quiet"},
    "schedule_upsert": {"name": "s", "every": 3600, "queue": "roles"},
    "schedule_list": {},
    "schedule_pause": {"name": "s"},
    "schedule_resume": {"name": "s"},
    "schedule_remove": {"name": "missing"},
    "set_queue_limits": {"queue": "other", "max_leased": 5},
    "queue_info": {"queue": "other"},
    "wait": {"task_id": 999, "timeout": 0},
    "progress": {"task_id": 1, "lease_token": "x", "fraction": 0.5},
    "queue_settings": {"queue": "other"},
    "throughput": {},
}
SESSION_OPS = {"hello", "bye"}


def test_every_op_has_sample_arguments() -> None:
    assert set(OPS) - SESSION_OPS - set(SAMPLES) == set()


def auth_tokens() -> list[Any]:
    return [{"token": token, "role": role.name.lower()} for role, token in TOKENS.items()]


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.name.lower())
async def test_every_op_with_every_role(
    make_server: MakeServer, raw_connect: RawConnect, role: Role
) -> None:
    async with (
        make_server(auth_tokens=auth_tokens()) as srv,
        raw_connect(srv.url, hello={"token": TOKENS[role]}) as conn,
    ):
        for name in sorted(set(SAMPLES) & set(OPS)):
            reply = await conn.request(name, **SAMPLES[name])
            needed = OPS[name].role
            if role >= needed:
                assert reply["ok"] or reply["error"]["code"] != "forbidden", (name, reply)
            else:
                assert not reply["ok"], (name, reply)
                assert reply["error"]["code"] == "forbidden", (name, reply)
                assert needed.name.lower() in reply["error"]["message"]
        # Refused ops left the connection open and usable.
        assert (await conn.request("stats"))["ok"]
        assert (await conn.request("bye"))["ok"]


def test_the_roles_the_issue_names() -> None:
    """Producer: enqueue and reads; worker adds claim and settling; admin everything."""
    producer_ops = {"enqueue", "enqueue_many", "get", "list", "stats", "wait"}
    worker_ops = {"claim", "ack", "fail", "release", "settle", "extend", "heartbeat", "progress"}
    admin_ops = {"cancel", "requeue", "pause", "resume", "purge", "worker_state"}
    assert {OPS[n].role for n in producer_ops} == {Role.PRODUCER}
    assert {OPS[n].role for n in worker_ops} == {Role.WORKER}
    assert {OPS[n].role for n in admin_ops} == {Role.ADMIN}


async def test_a_producer_token_cannot_register_a_worker(
    make_server: MakeServer, raw_connect: RawConnect
) -> None:
    async with make_server(auth_tokens=auth_tokens()) as srv:
        async with raw_connect(srv.url, hello=False) as conn:
            reply = await conn.hello(token=TOKENS[Role.PRODUCER], worker={"id": "w1"})
            assert reply["error"]["code"] == "forbidden"
            # Still open; a hello without worker registration goes through.
            assert (await conn.hello(token=TOKENS[Role.PRODUCER]))["ok"]
        async with raw_connect(
            srv.url, hello={"token": TOKENS[Role.WORKER], "worker": {"id": "w1"}}
        ) as conn:
            assert (await conn.request("heartbeat"))["state"] == "running"


async def test_plain_tokens_are_admin_and_sha256_entries_work(
    make_server: MakeServer, raw_connect: RawConnect
) -> None:
    digest = hashlib.sha256(b"hidden-secret").hexdigest()
    tokens = ["plain", {"sha256": digest, "role": "producer"}]
    async with make_server(auth_tokens=tokens) as srv:
        async with raw_connect(srv.url, hello={"token": "plain"}) as conn:
            assert (await conn.request("purge", queue="q"))["ok"]
        async with raw_connect(srv.url, hello={"token": "hidden-secret"}) as conn:
            assert (await conn.request("enqueue", queue="q"))["ok"]
            assert (await conn.request("purge", queue="q"))["error"]["code"] == "forbidden"
        async with raw_connect(srv.url, hello=False) as conn:
            reply = await conn.hello(token=digest)  # the digest itself is not the token
            assert reply["error"]["code"] == "unauthorized"


def test_no_tokens_means_admin(make_settings: Callable[..., config.Settings]) -> None:
    assert make_settings().auth_entries == []


def test_token_entries_from_toml_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(__import__("os").environ):
        if name.startswith(config.ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    digest = hashlib.sha256(b"w").hexdigest()
    (tmp_path / "durable_tq.toml").write_text(
        '[[auth.tokens]]\ntoken = "p"\nrole = "producer"\n\n'
        f'[[auth.tokens]]\nsha256 = "{digest}"\nrole = "worker"\n'
    )
    entries = config.load_settings().auth_entries
    assert [(e.token, e.role) for e in entries] == [("p", "producer"), (None, "worker")]
    (tmp_path / "durable_tq.toml").write_text('[[auth_tokens]]\ntoken = "p"\nrole = "producer"\n')
    assert config.load_settings().auth_entries[0].role == "producer"
    (tmp_path / "durable_tq.toml").unlink()
    monkeypatch.setenv(
        "DURABLE_TQ_AUTH_TOKENS", json.dumps(["old", {"token": "w", "role": "worker"}])
    )
    settings = config.load_settings()
    assert [e.role for e in settings.auth_entries] == ["admin", "worker"]
    assert settings.first_token() == "old"
    monkeypatch.setenv("DURABLE_TQ_AUTH_TOKENS", json.dumps([{"token": "w", "role": "boss"}]))
    with pytest.raises(errors.ConfigError, match="auth_tokens"):
        config.load_settings()
    monkeypatch.setenv("DURABLE_TQ_AUTH_TOKENS", json.dumps([{"role": "worker"}]))
    with pytest.raises(errors.ConfigError, match="token or sha256"):
        config.load_settings()
