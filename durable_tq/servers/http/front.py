"""Runs the HTTP face: uvicorn's ``Server`` inside the broker's task group, on its event loop.

The port is bound before the database opens (as the TCP port is), so a port in use fails
first. Shutdown follows the broker's: :meth:`HttpFront.request_shutdown` ends parked claims
(answered ``shutting_down``, their tasks handed back), answers new requests with
``shutting_down`` and tells uvicorn to stop; uvicorn then closes idle keep-alive connections
and lets the requests in flight finish (within the drain timeout) before ``serve`` returns.
uvicorn's ``Server.startup``, ``on_tick`` and its server state are used directly (see serve).
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

import anyio
import uvicorn

from durable_tq.servers.http.app import HttpState, build_app

if TYPE_CHECKING:
    from durable_tq.servers.tcp import BrokerServer

log = logging.getLogger("durable_tq.http")

#: Pending connections the kernel keeps for the HTTP listener.
BACKLOG = 1024
#: How often a stopping HTTP face looks whether its connections have closed.
SHUTDOWN_POLL = 0.01


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
        self.server = uvicorn.Server(self.config)
        self._stop = anyio.Event()
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
        """Serve until :meth:`request_shutdown`, then finish the requests in flight.

        uvicorn's own ``Server.serve`` is not used: its loop notices a stop only at its next
        0.1 s tick and its shutdown sleeps 0.1 s more; here the stop is an event, and the
        shutdown waits only as long as connections are still open.
        """
        assert self._socket is not None, "bind() first"
        sock, self._socket = self._socket, None
        server, config = self.server, self.config
        try:
            if not config.loaded:
                config.load()
            server.lifespan = config.lifespan_class(config)
            await server.startup(sockets=[sock])
            ticks = 0
            while not self._stop.is_set():
                await server.on_tick(ticks)  # refreshes the Date header (every 10th tick)
                ticks = (ticks + 10) % 864000
                with anyio.move_on_after(1.0):
                    await self._stop.wait()
            await self._shut_down()
        finally:
            sock.close()
            log.debug("HTTP stopped")

    async def _shut_down(self) -> None:
        """Stop accepting, close idle keep-alive connections, let the busy ones finish (within
        the drain timeout, then their requests are cancelled)."""
        server = self.server
        state = server.server_state
        for listener in server.servers:
            listener.close()
        for connection in list(state.connections):
            connection.shutdown()
        with anyio.move_on_after(self.config.timeout_graceful_shutdown or 10) as drain:
            while state.connections or state.tasks:  # noqa: ASYNC110 - uvicorn has no event
                await anyio.sleep(SHUTDOWN_POLL)
        if drain.cancelled_caught:
            log.warning("HTTP: %d requests cut off at shutdown", len(state.tasks))
            for task in list(state.tasks):
                task.cancel()
        with anyio.move_on_after(SHUTDOWN_POLL * 10):
            for listener in server.servers:
                await listener.wait_closed()

    def request_shutdown(self) -> None:
        self.state.begin_shutdown()
        self._stop.set()

    def close(self) -> None:
        """Close a socket that was bound but never served (start-up failed)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
