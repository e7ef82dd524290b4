"""Setting up the gRPC face: TLS with the broker's configured certificate, and ``serve --grpc``
without the grpc extra (simulated for real: a child process where importing it fails)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import grpc
import grpc.aio
import pytest
import trustme

from durable_tq.servers.grpc import durable_tq_pb2 as pb
from durable_tq.servers.grpc import durable_tq_pb2_grpc as pb_grpc
from durable_tq.servers.tcp import BrokerServer

pytestmark = pytest.mark.anyio

MakeServer = Callable[..., AbstractAsyncContextManager[BrokerServer]]
LIMIT = 20.0


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> dict[str, Path]:
    """A server certificate for 127.0.0.1 and localhost, as PEM files for the settings (the
    same making as tests/e2e/test_tls_auth.py)."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_pem.write_to_path(str(key_path))
    with cert_path.open("wb") as out:
        for blob in cert.cert_chain_pems:
            out.write(blob.bytes())
    return {"tls_cert": cert_path, "tls_key": key_path}


async def test_grpc_uses_the_brokers_certificate(
    make_server: MakeServer, tls_files: dict[str, Path], ca: trustme.CA
) -> None:
    async with make_server(grpc="127.0.0.1:0", **tls_files) as server:
        target = f"127.0.0.1:{server.grpc_port}"
        trusted = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
        async with grpc.aio.secure_channel(target, trusted) as channel:
            stub = pb_grpc.DurableTQStub(channel)
            with anyio.fail_after(LIMIT):
                reply = await stub.Enqueue(pb.EnqueueRequest(queue="tls", payload_json="1"))
                task = (await stub.Get(pb.GetRequest(task_id=reply.task_id))).task
            assert (task.queue, task.state, task.payload_json) == ("tls", "queued", "1")

        # Without TLS the handshake never completes: UNAVAILABLE, at once, not a hang.
        async with grpc.aio.insecure_channel(target) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.DurableTQStub(plain).Stats(pb.StatsRequest(), timeout=LIMIT)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "failed to connect" in (refused.value.details() or "")

        # TLS, but trusting another CA: the certificate is refused, the call never arrives.
        stranger = grpc.ssl_channel_credentials(root_certificates=trustme.CA().cert_pem.bytes())
        async with grpc.aio.secure_channel(target, stranger) as untrusting:
            with pytest.raises(grpc.aio.AioRpcError) as distrusted:
                await pb_grpc.DurableTQStub(untrusting).Stats(pb.StatsRequest(), timeout=LIMIT)
        assert distrusted.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "CERTIFICATE_VERIFY_FAILED" in (distrusted.value.details() or "")
        assert (await server.broker.stats())["queues"]["tls"]["queued"] == 1  # nothing else came


# --- serve --grpc without the extra ---------------------------------------------------------------

#: The grpc extra's top-level modules (grpcio, grpcio-health-checking, grpcio-reflection,
#: grpcio-status, protobuf).
EXTRA_MODULES = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "google.protobuf")


@pytest.mark.parametrize(
    "blocked",
    [EXTRA_MODULES, ("grpc",), ("grpc_health",)],
    ids=["extra-missing", "grpcio-missing", "health-missing"],
)
def test_serve_grpc_without_the_extra_is_one_clear_line(
    tmp_path: Path, blocked: tuple[str, ...]
) -> None:
    """A child process in which importing the blocked modules fails (``sys.modules[name] =
    None``, what Python does for a module that is not there), then the real CLI entry point."""
    db = tmp_path / "broker.db"
    program = textwrap.dedent(
        f"""
        import sys
        for name in {blocked!r}:
            sys.modules[name] = None  # import raises ImportError, as if not installed
        from durable_tq.cli import main
        sys.argv = ["durable-tq", "serve", "--port", "0", "--no-http", "--db", {str(db)!r},
                    "--grpc", "127.0.0.1:0"]
        main()
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_TQ_")}
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=LIMIT * 3,
        check=False,
    )
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: the gRPC API needs the grpc extra")
    assert lines[0].endswith("pip install 'durable_tq[grpc]'")
    assert done.stdout == ""  # never said it was listening
    assert not db.exists()  # refused before the database was touched
