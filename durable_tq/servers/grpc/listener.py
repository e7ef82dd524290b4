"""The gRPC listener: ``grpc.aio`` on the broker's own event loop, beside the TCP listener.

Serves ``durable_tq.v1.DurableTQ`` (with TLS when the broker has a certificate), the
standard health service (SERVING while the broker runs, NOT_SERVING once it stops) and
server reflection. Started by ``BrokerServer.serve`` when a gRPC address is configured.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from durable_tq import errors
from durable_tq.config import Settings
from durable_tq.servers.grpc import durable_tq_pb2 as pb
from durable_tq.servers.grpc.service import SERVICE_NAME, DurableTQService
from durable_tq.servers.grpc.work import Work

if TYPE_CHECKING:
    from durable_tq.servers.tcp import BrokerServer

log = logging.getLogger("durable_tq.grpc")

#: How long a stopping broker gives gRPC calls to finish before cancelling them.
STOP_GRACE = 10.0


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    try:
        key = settings.tls_key.read_bytes()
        cert = settings.tls_cert.read_bytes()
    except OSError as exc:
        raise errors.ConfigError(f"cannot read the TLS certificate or key: {exc}") from exc
    return grpc.ssl_server_credentials([(key, cert)])


def grpc_url(settings: Settings, port: int) -> str:
    address = settings.grpc_address
    host = address[0] if address is not None else settings.host
    if ":" in host:
        host = f"[{host}]"
    return f"grpc{'s' if settings.tls_enabled else ''}://{host}:{port}"


async def serve_grpc(
    broker_server: BrokerServer,
    shutdown: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on the configured gRPC address until ``shutdown`` is set, then stop gracefully:
    health says NOT_SERVING, parked claims and work streams end, calls finish or are cut
    after ``STOP_GRACE``. ``task_status`` gets the bound port."""
    settings = broker_server.settings
    address = settings.grpc_address
    assert address is not None
    service = DurableTQService(broker_server.broker, settings)
    work = Work(service)
    handlers = service.method_handlers()
    handlers["Work"] = grpc.stream_stream_rpc_method_handler(
        work.handle,
        request_deserializer=pb.WorkRequest.FromString,
        response_serializer=pb.WorkResponse.SerializeToString,
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_frame_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    health_service = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    host, port = address
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    credentials = _credentials(settings)
    try:
        if credentials is None:
            bound = server.add_insecure_port(where)
        else:
            bound = server.add_secure_port(where, credentials)
    except RuntimeError as exc:
        raise OSError(f"cannot listen for gRPC on {where}: {exc}") from exc
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {where}")
    await server.start()
    try:
        for name in ("", SERVICE_NAME):
            await health_service.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.debug("gRPC listening on %s", grpc_url(settings, bound))
        task_status.started(bound)
        await shutdown.wait()
    finally:
        with anyio.CancelScope(shield=True):
            await health_service.enter_graceful_shutdown()
            service.begin_shutdown()
            work.begin_shutdown()
            await server.stop(STOP_GRACE)
