"""Runs the HTTP face: uvicorn's ``Server`` inside the broker's task group, on its event loop.

The port is bound before the database opens (as the TCP port is), so a port in use fails
first. Shutdown follows the broker's: :meth:`HttpFront.request_shutdown` ends parked claims
(answered ``shutting_down``, their tasks handed back), answers new requests with
``shutting_down`` and tells uvicorn to stop; uvicorn then closes idle keep-alive connections
and lets the requests in flight finish (within the drain timeout) before ``serve`` returns.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn

from durable_tq.servers.http.app import HttpState, build_app

if TYPE_CHECKING:
    from durable_tq.server import BrokerServer

log = logging.getLogger("durable_tq.http")

#: Pending connections the kernel keeps for the HTTP listener.
BACKLOG = 1024


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: the broker owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpFront:
    """The HTTP listener of one :class:`BrokerServer`."""

    def __init__(self, server: BrokerServer) -> None:
        settings = server.settings
        self.state = HttpState(server)
        self.host, self.port = settings.http_address
        self.app = build_app(self.state)
        self._socket: socket.socket | None = None
        tls = settings.tls_cert is not None and settings.tls_key is not None
        self.config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            log_level="warning",  # uvicorn's start and stop lines would repeat ours
            access_log=False,
            http="auto",  # httptools when installed (faster), else h11
            ws="none",
            proxy_headers=False,
            server_header=False,
            limit_concurrency=settings.http_max_connections,
            timeout_keep_alive=max(1, round(settings.http_keep_alive_timeout)),
            timeout_graceful_shutdown=int(server.drain_timeout),
            h11_max_incomplete_event_size=settings.http_max_header_bytes,
            backlog=BACKLOG,
            ssl_certfile=str(settings.tls_cert) if tls else None,
            ssl_keyfile=str(settings.tls_key) if tls else None,
        )
        self.server = _Server(self.config)
        self.state.connection_count = lambda: len(self.server.server_state.connections)

    @property
    def url(self) -> str:
        scheme = "https" if self.config.ssl_certfile else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def bind(self) -> None:
        """Bind and listen now (before the database opens); raises OSError naming the port."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so (with proto
        # 0 every reply waited ~40 ms for a delayed ACK: Nagle between head and body).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            where = f"{self.host}:{self.port}"
            raise OSError(exc.errno, f"cannot listen for HTTP on {where}: {exc.strerror}") from exc
        self._socket = sock
        self.port = int(sock.getsockname()[1])

    async def serve(self) -> None:
        """Serve until :meth:`request_shutdown`, then finish the requests in flight."""
        assert self._socket is not None, "bind() first"
        sock, self._socket = self._socket, None
        try:
            await self.server.serve(sockets=[sock])
        finally:
            sock.close()
            log.debug("HTTP stopped")

    def request_shutdown(self) -> None:
        self.state.begin_shutdown()
        self.server.should_exit = True

    def close(self) -> None:
        """Close a socket that was bound but never served (start-up failed)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
