"""The listener: accept (surviving fd exhaustion), TLS, limits, the faces beside TCP, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import resource
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from durable_tq import errors
from durable_tq.config import Settings
from durable_tq.core.broker import Broker
from durable_tq.core.clock import Clock
from durable_tq.core.sweeper import Sweeper
from durable_tq.servers.tcp.connection import Connection
from durable_tq.servers.tcp.constants import (
    ACCEPT_PAUSE,
    ACCEPT_RESOURCE_ERRORS,
    ACCEPTS_PER_TURN,
    LINGER_TIMEOUT,
    NOTICE_TIMEOUT,
    READ_CHUNK,
    RESERVED_FILES,
    TOTAL_BUFFERED_TTL,
)
from durable_tq.servers.tcp.framing import STREAM_ERRORS
from durable_tq.wire import codec

log = logging.getLogger("durable_tq.servers.tcp")


class BrokerServer:
    """A :class:`Broker` listening on TCP (or TLS), with its sweeper.

    ``await server.serve()`` runs until :meth:`request_shutdown`; use ``await tg.start(
    server.serve)`` to get the server back once it listens (``server.port``, ``server.url``).
    """

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.broker = Broker(settings, clock=clock)
        self.port: int = settings.port
        self.grpc_port: int | None = None  # bound once serve() listens, when gRPC is on
        #: On shutdown: how long connections may take to finish and write what they read.
        self.drain_timeout = settings.drain_timeout
        #: Reply bytes a connection may have waiting to be written before it stops being read.
        self.max_reply_buffer = settings.max_reply_buffer
        #: The same for all connections together (those over SHARE_FLOOR stop being read).
        self.max_total_reply_buffer = settings.max_total_reply_buffer
        self._total_buffered = 0
        self._total_buffered_at = -1.0
        self._accept_failing = False
        self._trim_wanted = anyio.Event()
        self._ssl_context: ssl.SSLContext | None = None
        self._connections: set[Connection] = set()
        self._accepted = 0
        self._shutdown = anyio.Event()
        self._stopped = anyio.Event()
        self._stopping = False
        self._accept_scope: anyio.CancelScope | None = None
        #: The HTTP face (servers/http), when settings.http_enabled; bound in serve().
        self.http: Any = None

    @property
    def url(self) -> str:
        scheme = "tls" if self.settings.tls_enabled else "tcp"
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    @property
    def stopping(self) -> bool:
        return self._stopping

    def total_buffered(self) -> int:
        """Unwritten reply bytes of every connection (summed at most every 10 ms)."""
        now = time.monotonic()
        if now - self._total_buffered_at > TOTAL_BUFFERED_TTL:
            self._total_buffered = sum(conn.buffered() for conn in self._connections)
            self._total_buffered_at = now
        return self._total_buffered

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown; :meth:`serve` returns once it is complete."""
        if self._stopping:
            return
        self._stopping = True
        log.info("shutting down: no new connections; finishing in-flight requests")
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        self.broker.end_waits()  # parked waits answer shutting_down
        for conn in list(self._connections):
            conn.begin_shutdown()
        if self.http is not None:
            self.http.request_shutdown()
        self._shutdown.set()

    async def wait_stopped(self) -> None:
        """Wait until :meth:`serve` has shut down and closed the database."""
        await self._stopped.wait()

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[BrokerServer] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, open the broker, serve until shut down, then close everything in order.

        The port is bound first: a port in use fails before the database file is created or
        migrated. Connections that arrive while the database opens wait in the backlog.
        """
        self._ssl_context = self._make_ssl_context()
        try:
            listener = await anyio.create_tcp_listener(
                local_host=self.settings.host, local_port=self.settings.port
            )
        except OSError as exc:
            where = f"{self.settings.host}:{self.settings.port}"
            raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror}") from exc
        try:
            self.http = _http_front(self)
            await self.broker.open()
        except BaseException:
            await listener.aclose()
            if self.http is not None:
                self.http.close()
            raise
        try:
            self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
            async with anyio.create_task_group() as background:
                background.start_soon(Sweeper(self.broker).run, name="durable_tq sweeper")
                background.start_soon(self._trim_memory, name="durable_tq memory trim")
                if self.settings.grpc_address is not None:
                    from durable_tq.servers.grpc.listener import serve_grpc

                    self.grpc_port = await background.start(serve_grpc, self, self._shutdown)
                async with anyio.create_task_group() as connections:
                    self._accept_scope = anyio.CancelScope()
                    connections.start_soon(self._accept, listener, connections)
                    if self.http is not None:
                        connections.start_soon(self.http.serve, name="durable_tq http")
                    # At debug level: run() (and the CLI) says it once, at INFO or on stdout.
                    log.debug("listening on %s (database %s)", self.url, self.settings.database)
                    task_status.started(self)
                    await self._shutdown.wait()
                    # _accept has stopped; this group now waits for every connection to close.
                    # Each connection ends within drain_timeout, then lingers at most
                    # LINGER_TIMEOUT; this deadline is the backstop whatever the peers do.
                    connections.cancel_scope.deadline = (
                        anyio.current_time() + self.drain_timeout + LINGER_TIMEOUT + 1.0
                    )
                background.cancel_scope.cancel()
        finally:
            # Not shielded in a scope of our own: the store's writer group was entered in
            # open(), so close() must run in the scope open() left us in.
            await self.broker.close()
            self._stopped.set()
            log.info("stopped; database closed")

    async def _accept(
        self, listener: anyio.abc.Listener[Any], connections: anyio.abc.TaskGroup
    ) -> None:
        """Accept on every socket of ``listener`` until shutdown (our own loop: anyio's
        ``serve`` ends on the first accept error, and running out of files is one)."""
        assert self._accept_scope is not None
        listeners = getattr(listener, "listeners", [listener])
        try:
            with self._accept_scope:
                if not self._stopping:
                    async with anyio.create_task_group() as accepting:
                        for each in listeners:
                            raw = each.extra(anyio.abc.SocketAttribute.raw_socket)
                            accepting.start_soon(self._accept_loop, raw, connections)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    async def _accept_loop(
        self, listening: socket.socket, connections: anyio.abc.TaskGroup
    ) -> None:
        loop = asyncio.get_running_loop()
        accepted_in_turn = 0
        while True:
            accepted_in_turn += 1
            if accepted_in_turn > ACCEPTS_PER_TURN:
                # sock_accept returns without yielding while the backlog holds connections:
                # a burst of hundreds would be set up in one turn of the loop, ahead of every
                # request of the connections already open.
                accepted_in_turn = 0
                await anyio.lowlevel.checkpoint()
            try:
                sock, _ = await loop.sock_accept(listening)
            except asyncio.CancelledError:
                # bpo-41317: a cancelled sock_accept leaves its reader registered.
                with contextlib.suppress(ValueError, NotImplementedError, OSError):
                    loop.remove_reader(listening)
                raise
            except OSError as exc:
                await self._accept_failed(exc)
                continue
            if self._accept_failing:
                self._accept_failing = False
                log.warning("accepting connections again (%d open)", len(self._connections))
            if len(self._connections) >= self.settings.max_connections or self._stopping:
                self._refuse_at_once(sock)
                continue
            connections.start_soon(self._serve_socket, sock)

    async def _accept_failed(self, exc: OSError) -> None:
        """An accept error: out of files, buffers or memory pauses accepting a little (logged
        once per burst); anything else (a peer that reset before we accepted) is skipped."""
        if exc.errno not in ACCEPT_RESOURCE_ERRORS:
            log.debug("accept failed: %s", exc)
            return
        if not self._accept_failing:
            self._accept_failing = True
            log.error(
                "cannot accept connections: %s (%d open, max_connections %d, fd limit %d); "
                "pausing accepts, existing connections are still served",
                exc.strerror,
                len(self._connections),
                self.settings.max_connections,
                resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            )
        await anyio.sleep(ACCEPT_PAUSE)

    def _refuse_at_once(self, sock: socket.socket) -> None:
        """Over max_connections: one non-blocking line saying why, then close (no TLS
        handshake, no task, no buffers)."""
        self._accepted += 1
        if not self._stopping:
            log.debug(
                "connection #%d refused: %d connections open",
                self._accepted,
                len(self._connections),
            )
        if self._ssl_context is None:
            error: errors.DurableTQError = (
                errors.ShuttingDown("the broker is stopping")
                if self._stopping
                else errors.TooManyConnections(
                    f"the broker has {self.settings.max_connections} connections open (max)"
                )
            )
            with contextlib.suppress(OSError):
                sock.setblocking(False)
                sock.send(codec.error_reply(None, error))
        sock.close()

    async def _serve_socket(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw = await anyio.abc.SocketStream.from_socket(sock)
        except (OSError, ValueError) as exc:  # the peer left already (anyio says ValueError:
            # "the socket must be connected"), or no memory for its transport
            log.debug("cannot set up an accepted connection: %s", exc)
            sock.close()
            return
        except BaseException:  # cancelled (shutdown) before it became a stream
            sock.close()
            raise
        await self._serve_connection(raw)

    def _make_ssl_context(self) -> ssl.SSLContext | None:
        settings = self.settings
        if settings.tls_cert is None or settings.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise errors.ConfigError(
                f"cannot load TLS certificate {settings.tls_cert} / key {settings.tls_key}: {exc}"
            ) from exc
        return context

    async def _serve_connection(self, raw: anyio.abc.SocketStream) -> None:
        self._accepted += 1
        number = self._accepted
        peer = _peer_name(raw)
        stream: anyio.abc.ByteStream = raw
        _read_only_on_demand(raw)
        # One deadline for the TLS handshake and hello together.
        hello_deadline = anyio.current_time() + self.settings.hello_timeout
        conn: Connection | None = None
        try:
            if self._ssl_context is not None:
                wrapped = await self._handshake(raw, number, peer, hello_deadline)
                if wrapped is None:
                    return
                stream = wrapped
            if len(self._connections) >= self.settings.max_connections:  # filled meanwhile
                await self._refuse(stream, number, peer)
                return
            conn = Connection(self, stream, number, peer, hello_deadline)
            await self._run_connection(conn)
        except Exception:  # a bug here must not take the whole server down
            log.exception("connection #%d (%s): crashed", number, peer)
        finally:
            with anyio.CancelScope(shield=True):
                # A connection that never said hello lingers no later than its hello
                # deadline: an unauthenticated peer costs at most hello_timeout.
                linger_until = anyio.current_time() + LINGER_TIMEOUT
                if conn is None or not conn.session.greeted:
                    linger_until = min(linger_until, hello_deadline)
                if conn is None or not conn.aborted:
                    await _close_gently(raw, linger_until)
                await anyio.aclose_forcefully(stream)

    async def _run_connection(self, conn: Connection) -> None:
        self._connections.add(conn)
        self.broker.connection_opened()
        log.debug("%r: open", conn)
        try:
            if self._stopping:
                conn.begin_shutdown()
            await conn.run()
        finally:
            self._connections.discard(conn)
            self.broker.connection_closed()
            with anyio.CancelScope(shield=True):
                await self.broker.session_closed(conn.session)
            log.debug("%r: closed", conn)
            self._give_memory_back()

    def _give_memory_back(self) -> None:
        """A connection closed: ask the trimmer to hand freed heap back to the OS soon."""
        self._trim_wanted.set()

    async def _trim_memory(self) -> None:
        """After connections have gone, hand freed heap back to the OS (glibc keeps it
        otherwise: measured, 1.75 GB stayed after six non-reading peers left). At most once
        a second, a moment after the last close; a no-op off glibc."""
        malloc_trim = _find_malloc_trim()
        if malloc_trim is None:
            return
        while True:
            await self._trim_wanted.wait()
            await anyio.sleep(1.0)  # let a burst of closes finish first
            self._trim_wanted = anyio.Event()
            malloc_trim(0)

    async def _handshake(
        self, raw: anyio.abc.SocketStream, number: int, peer: str, deadline: float
    ) -> TLSStream | None:
        """The TLS handshake, bounded by ``hello_timeout``; None when it failed."""
        assert self._ssl_context is not None
        with anyio.CancelScope(deadline=deadline):
            try:
                return await TLSStream.wrap(
                    raw,
                    server_side=True,
                    ssl_context=self._ssl_context,
                    standard_compatible=False,
                )
            except STREAM_ERRORS as exc:
                log.debug("connection #%d (%s): TLS handshake failed: %s", number, peer, exc)
                return None
        log.debug("connection #%d (%s): no TLS handshake within hello_timeout", number, peer)
        return None

    async def _refuse(self, stream: anyio.abc.ByteStream, number: int, peer: str) -> None:
        limit = self.settings.max_connections
        log.warning("connection #%d (%s): refused, %d connections open", number, peer, limit)
        refusal = errors.TooManyConnections(f"the broker has {limit} connections open (max)")
        with anyio.move_on_after(NOTICE_TIMEOUT):
            with contextlib.suppress(*STREAM_ERRORS):
                await stream.send(codec.error_reply(None, refusal))


def _http_front(server: BrokerServer) -> Any:
    """The HTTP face, its port bound, or None when settings turn it off."""
    if not server.settings.http_enabled:
        return None
    from durable_tq.servers.http import HttpFront  # imports starlette and uvicorn

    front = HttpFront(server)
    front.bind()
    return front


async def _close_gently(raw: anyio.abc.SocketStream, until: float) -> None:
    """End our side with a FIN, then discard what the peer still sends until it closes.

    Closing a socket that holds unread input makes the kernel send a reset, and a reset can
    make the peer drop replies it has not read yet: the ``unauthorized``, ``frame_too_large``
    or ``shutting_down`` that explains the close, even ``ok`` replies. So we linger a little,
    as HTTP servers do, bounded by ``LINGER_TIMEOUT``.
    """
    with anyio.CancelScope(deadline=until):
        try:
            await raw.send_eof()
            while True:
                await raw.receive(READ_CHUNK)
        except (*STREAM_ERRORS, NotImplementedError):
            pass


def _read_only_on_demand(stream: anyio.abc.SocketStream) -> None:
    """Make the socket read only while we wait in ``receive`` (backpressure).

    anyio's asyncio ``SocketStream`` pauses its transport after a ``receive`` that had to
    wait, but a fresh transport starts out reading, and while data keeps arriving no receive
    ever waits: a client that floods without reading replies would be buffered without bound
    (measured: 25 MB in 1 s while max_inflight was full). Pausing at once closes that gap;
    ``receive`` resumes reading whenever it needs data. Other backends do not need this.
    """
    transport = getattr(stream, "_transport", None)
    pause_reading = getattr(transport, "pause_reading", None)
    if callable(pause_reading):
        pause_reading()


def _peer_name(stream: anyio.abc.SocketStream) -> str:
    try:
        address = stream.extra(anyio.abc.SocketAttribute.remote_address)
    except anyio.TypedAttributeLookupError:
        return "unknown peer"
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address)


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None. Looked up when the server starts, not at import: the
    CLI imports this module, and ``find_library`` runs ``ldconfig`` in a subprocess."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def raise_file_limit(settings: Settings) -> None:
    """Raise the soft RLIMIT_NOFILE toward the hard limit, and warn when max_connections plus
    the broker's own files still do not fit (accepting then pauses when files run out)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = settings.max_connections + RESERVED_FILES
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.debug("cannot raise the fd limit to %d: %s", target, exc)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the fd limit is %d (hard %d) but max_connections %d needs about %d; connections "
            "past the limit wait until files are free (raise `ulimit -n` or lower "
            "max_connections to %d)",
            soft,
            hard,
            settings.max_connections,
            needed,
            max(1, soft - RESERVED_FILES),
        )
