"""The broker's network front: accept, TLS, hello/auth, framing, limits, dispatch, shutdown.

One task per connection reads newline-delimited JSON frames; after ``hello`` every request
runs as its own task (so a parked ``claim`` does not hold up the requests behind it), and
one writer task per connection sends the replies, whole lines, all that are waiting in one
write. Backpressure is plain: a connection with ``max_inflight`` unanswered requests is not
read from until one is answered, and a reply that cannot be written (a peer that does not
read) keeps its slot, so a slow reader ends up blocking only itself and TCP pushes back on it.

A claim that ends without its reply going out (the peer left, ``bye``, shutdown) hands the
tasks it leased straight back (``release``), so they do not wait for their leases to expire.

Shutdown (:meth:`BrokerServer.request_shutdown`) stops accepting, ends parked claims with
``shutting_down``, lets the requests already read finish and answer, answers anything read
afterwards with ``shutting_down``, closes every connection, and only then closes the store,
so every ``ok`` that went out is committed and nothing committed is cut in half.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import resource
import signal
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
from durable_tq.core.broker import Broker, Result, Session
from durable_tq.core.clock import Clock
from durable_tq.core.sweeper import Sweeper
from durable_tq.wire import codec
from durable_tq.wire import schema as protocol
from durable_tq.wire.ops import OPS, Op

log = logging.getLogger("durable_tq.servers.tcp")

#: Bytes asked of the socket per receive.
READ_CHUNK = 65536
#: Once a connection stops reading (bye, EOF, a closing error), how long its requests already
#: read may take to finish and be answered before they are cut off (shutdown: drain_timeout).
DRAIN_TIMEOUT = 10.0
#: How long a closing connection waits for the peer to close its side (see _close_gently).
LINGER_TIMEOUT = 2.0
#: How long a notice sent just before closing (``too_many_connections``, ``shutting_down``)
#: may wait on a peer that does not read.
NOTICE_TIMEOUT = 2.0
#: Ops whose ok reply hands out leases: if such a reply cannot be delivered, the tasks are
#: handed straight back (nobody else knows they are leased).
LEASING_OPS = frozenset({"claim", "settle"})
#: Reads that park until something happens (``wait``): they do not take one of the
#: connection's read slots, or two parked waits would hold up every other read behind them.
PARKING_READS = frozenset({"wait"})
#: How often a connection over its reply bound checks whether the peer has read some (only
#: while it has stopped reading and running that peer's requests).
TRANSPORT_DRAIN_POLL = 0.01
#: A connection with fewer unwritten reply bytes than this is never held back by the
#: broker-wide bound (max_total_reply_buffer): it is not the one filling memory.
SHARE_FLOOR = 64 * 1024
#: How long the broker-wide count of unwritten reply bytes is reused before it is summed again.
TOTAL_BUFFERED_TTL = 0.01
#: Requests read from one connection in a row before its reader lets the others run (fairness).
READS_PER_TURN = 32
#: Accept errors that mean "out of a resource for now" (files, buffers, memory): the accept
#: loop pauses this long and tries again instead of failing.
ACCEPT_PAUSE = 0.1
ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Files the broker holds besides its connections (database, WAL, shared memory and lock file
#: per SQLite connection, the listener, the event loop's own, stdio, logs): kept free when
#: the fd limit is checked against max_connections.
RESERVED_FILES = 64


class PeerGone(Exception):
    """The connection broke or was closed under us (anyio stream errors, translated)."""


_STREAM_ERRORS = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    ssl.SSLError,
    OSError,
)


class FrameReader:
    """Splits a byte stream into lines of at most ``max_bytes`` bytes (the ``\\n`` not counted).

    Memory stays bounded: at most ``max_bytes`` plus one chunk is ever buffered.
    """

    def __init__(self, stream: anyio.abc.ByteReceiveStream, max_bytes: int) -> None:
        self._stream = stream
        self._max_bytes = max_bytes
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no newline

    async def receive_line(self) -> bytes:
        """The next line without its newline.

        Raises :class:`errors.FrameTooLarge` for an over-long line, :class:`anyio.EndOfStream`
        at the end of the stream (an unfinished last line is dropped) and :class:`PeerGone`
        when the connection broke.
        """
        while True:
            index = self._buffer.find(b"\n", self._scanned)
            if index >= 0:
                if index > self._max_bytes:
                    raise self._too_large()
                line = bytes(self._buffer[:index])
                del self._buffer[: index + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buffer)
            if self._scanned > self._max_bytes:
                raise self._too_large()
            try:
                chunk = await self._stream.receive(READ_CHUNK)
            except anyio.EndOfStream:
                raise
            except _STREAM_ERRORS as exc:
                raise PeerGone(f"{type(exc).__name__}: {exc}") from exc
            self._buffer.extend(chunk)

    def _too_large(self) -> errors.FrameTooLarge:
        self._buffer.clear()
        return errors.FrameTooLarge(f"frame is longer than max_frame_bytes ({self._max_bytes})")


class _Connection:
    """One client connection: its session, its reader, its in-flight requests, its writer."""

    def __init__(
        self,
        server: BrokerServer,
        stream: anyio.abc.ByteStream,
        number: int,
        peer: str,
        hello_deadline: float,
    ) -> None:
        self.server = server
        self.broker = server.broker
        self.settings = server.settings
        self.stream = stream
        self.number = number
        self.peer = peer
        self.session = Session()
        self._reader = FrameReader(stream, self.settings.max_frame_bytes)
        self._hello_deadline = hello_deadline
        # Replies wait in the outbox; the writer task sends all that are waiting in one write
        # (a group commit answers many requests at once: one syscall instead of hundreds).
        # A request's slot is freed as soon as its reply is in the outbox; the bytes waiting
        # there are bounded too (max_reply_buffer), so a peer that does not read stops being
        # read instead of growing the broker.
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        # A plain TCP stream's asyncio transport: a reply with nothing queued before it is
        # written straight to it (no writer task wake-up per reply; its own buffer is counted
        # against max_reply_buffer). TLS streams always go through the writer task.
        self._transport = _plain_transport(stream)
        self._writing = False
        self._flush_scheduled = False
        self._outbox_filled = anyio.Event()
        self._flushed = anyio.Event()  # set once the lines now in the outbox are written
        self._inflight = 0
        self._room = anyio.Event()  # set when an in-flight slot frees up
        # Runners that finished a request and wait for the next (see _dispatch).
        self._idle_runners: list[
            asyncio.Future[tuple[protocol.RequestId, protocol.Request] | None]
        ] = []
        self._runners_closed = False
        self._claims: set[anyio.CancelScope] = set()
        self._claims_ended = False
        self._reader_scope = anyio.CancelScope()
        self._scope = anyio.CancelScope()
        self._stopping = False  # the server is shutting down
        self._told_shutting_down = False
        self._broken = False
        self._bye_id: protocol.RequestId = None
        self._said_bye = False
        # At most this many reads (get, list, stats, workers) run at once: a read's reply can
        # be large (a 1 MB payload), and running them one by one lets max_reply_buffer hold.
        self._reads = anyio.Semaphore(self.settings.read_connections)
        self._drained: anyio.Event | None = None  # set when the reply bound has room again
        self.aborted = False  # closed for not reading: no lingering

    def __repr__(self) -> str:
        return f"connection #{self.number} ({self.peer})"

    # --- life cycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends; the stream is closed by the caller."""
        with self._scope:
            async with anyio.create_task_group() as connection:
                connection.start_soon(self._write_replies)
                await self._serve_requests()
                if self._said_bye:
                    await self._send_quietly(codec.ok_reply(self._bye_id, {}))
                elif self._stopping and not self._told_shutting_down:
                    await self._send_quietly(
                        codec.error_reply(None, errors.ShuttingDown("the broker is stopping"))
                    )
                await self._write_outbox()  # replies posted for a later loop turn, too
                connection.cancel_scope.cancel()  # everything is written: stop the writer

    async def _serve_requests(self) -> None:
        async with anyio.create_task_group() as requests:
            with self._reader_scope:
                if self._stopping:
                    return
                if await self._greet():
                    await self._read_requests(requests)
            # Reading is over. Parked claims end now; what was read finishes and answers.
            self._end_claims()
            self._close_runners()
            requests.cancel_scope.deadline = anyio.current_time() + self.server.drain_timeout

    def begin_shutdown(self) -> None:
        """The server is stopping: end parked claims, stop reading once in-flight work is done."""
        self._stopping = True
        # Whatever the peer does (not reading, flooding), the connection ends by then; the
        # replies not yet written are dropped with it.
        self._scope.deadline = anyio.current_time() + self.server.drain_timeout
        self._end_claims()
        if self._inflight == 0:
            self._reader_scope.cancel()

    def _end_claims(self) -> None:
        self._claims_ended = True
        for scope in self._claims:
            scope.cancel()

    def _request_done(self) -> None:
        self._inflight -= 1
        self._room.set()
        if self._stopping and self._inflight == 0:
            self._reader_scope.cancel()

    # --- reading ------------------------------------------------------------------------------

    async def _greet(self) -> bool:
        """Read until a successful ``hello`` (True), within ``hello_timeout`` of the accept."""
        # One deadline covers everything before a successful hello, sends included: a peer
        # that pipelines requests before hello and never reads cannot hold its slot longer.
        with anyio.CancelScope(deadline=self._hello_deadline) as timeout:
            greeted = await self._greet_within_deadline()
        if timeout.cancelled_caught:
            log.debug("%r: no hello within %s s; closing", self, self.settings.hello_timeout)
            self._broken = True  # what is left in the outbox is dropped
            return False
        return greeted

    async def _greet_within_deadline(self) -> bool:
        reader = self._reader
        while not self.session.greeted:
            line = await self._receive(reader)
            if line is None:
                return False
            request_id, request = await self._decode(line)
            if request is None:
                continue
            if self._stopping:
                await self._refuse_shutting_down(request_id)
                return False
            if request.op != "hello":
                await self.send(
                    codec.error_reply(
                        request_id, errors.HelloRequired("the first request must be hello")
                    )
                )
                continue
            # Shielded: a hello that registers a worker must finish or not start.
            with anyio.CancelScope(shield=True):
                reply, closes = await self._execute(request_id, request, OPS["hello"])
            await self.send(reply)
            if closes:
                return False
        log.debug(
            "%r: hello from %s%s",
            self,
            self.session.client or "an unnamed client",
            f" (worker {self.session.worker_id})" if self.session.worker_id else "",
        )
        return True

    async def _read_requests(self, requests: anyio.abc.TaskGroup) -> None:
        reader = self._reader
        idle_timeout = self.settings.idle_timeout
        max_inflight = self.settings.max_inflight
        read_in_turn = 0
        while True:
            # Backpressure: no reading while max_inflight requests are unanswered.
            while self._inflight >= max_inflight:
                self._room = anyio.Event()
                await self._room.wait()
            try:
                await self._writable()
            except PeerGone:
                return
            read_in_turn += 1
            if read_in_turn >= READS_PER_TURN:
                # Let the other connections' readers and runners go before reading on.
                read_in_turn = 0
                await anyio.lowlevel.checkpoint()
            line = await self._receive_or_idle(reader, idle_timeout)
            if line is None:
                return
            request_id, request = await self._decode(line)
            if request is None:
                continue
            if self._stopping:
                await self._refuse_shutting_down(request_id)
                return
            if request.op == "bye":
                # Answered last, once everything read before it has been answered.
                self._bye_id, self._said_bye = request_id, True
                return
            self._inflight += 1
            self._dispatch(requests, request_id, request)

    def _dispatch(
        self,
        requests: anyio.abc.TaskGroup,
        request_id: protocol.RequestId,
        request: protocol.Request,
    ) -> None:
        """Give the request to an idle runner, or start a runner for it.

        Runners stay for the next request instead of ending: starting an anyio task costs
        about 45 us here, more than parsing and committing a request (docs/benchmarks.md).
        There are never more runners than ``max_inflight``.
        """
        while self._idle_runners:
            runner = self._idle_runners.pop()
            if not runner.done():
                runner.set_result((request_id, request))
                return
        requests.start_soon(self._runner, request_id, request)

    async def _runner(self, request_id: protocol.RequestId, request: protocol.Request) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._run_request(request_id, request)
            if self._runners_closed:
                return
            waiting: asyncio.Future[tuple[protocol.RequestId, protocol.Request] | None]
            waiting = loop.create_future()
            self._idle_runners.append(waiting)
            next_request = await waiting
            if next_request is None:
                return
            request_id, request = next_request

    def _close_runners(self) -> None:
        """Reading is over: idle runners end, busy ones end after their request."""
        self._runners_closed = True
        for runner in self._idle_runners:
            if not runner.done():
                runner.set_result(None)
        self._idle_runners.clear()

    async def _receive_or_idle(
        self, reader: FrameReader, idle_timeout: float | None
    ) -> bytes | None:
        """The next line; None at the end of the stream, or after ``idle_timeout`` of silence
        with nothing in flight."""
        if idle_timeout is None:  # no cancel scope per line when there is no timeout
            return await self._receive(reader)
        while True:
            with anyio.move_on_after(idle_timeout):
                return await self._receive(reader)
            if self._inflight == 0:
                log.debug("%r: idle for %s s; closing", self, idle_timeout)
                return None

    async def _receive(self, reader: FrameReader) -> bytes | None:
        """A line; None when the stream ended. An over-long line is answered and ends reading."""
        try:
            return await reader.receive_line()
        except anyio.EndOfStream:
            return None
        except PeerGone as exc:
            log.debug("%r: connection lost while reading: %s", self, exc)
            self._broken = True
            self._scope.cancel()
            return None
        except errors.FrameTooLarge as exc:
            log.warning("%r: %s; closing", self, exc.message)
            await self.send(codec.error_reply(None, exc))
            return None

    async def _decode(self, line: bytes) -> tuple[protocol.RequestId, protocol.Request | None]:
        """Parse a line; a malformed one is answered here and yields no request.

        Lone surrogate escapes take protocol's slow path; a payload number that overflows to
        infinity (``1e400``) is refused when the broker stores it (tests/e2e/test_bad_input.py).
        """
        try:
            request = codec.parse_line(line)
        except codec.FrameRejected as rejected:
            await self.send(codec.error_reply(rejected.request_id, rejected.error))
            return rejected.request_id, None
        return request.id, request

    async def _refuse_shutting_down(self, request_id: protocol.RequestId) -> None:
        self._told_shutting_down = True
        await self._send_quietly(
            codec.error_reply(request_id, errors.ShuttingDown("the broker is stopping"))
        )

    # --- running requests ---------------------------------------------------------------------

    async def _run_request(self, request_id: protocol.RequestId, request: protocol.Request) -> None:
        op = OPS[request.op]
        try:
            # A reply is built only while this connection's unwritten replies are within
            # bounds: that, not the check before reading, is what bounds its memory.
            await self._writable()
            if not self.broker.allowed(op.name, self.session):
                needs = f"{op.name} needs a {op.role.name.lower()} token"
                self._post(codec.error_reply(request_id, errors.Forbidden(needs)))
                return
            if op.name in LEASING_OPS:
                await self._run_leasing(request_id, request, op)
                return
            if not op.writes and op.name not in PARKING_READS:
                async with self._reads:
                    await self._writable()
                    reply, closes = await self._execute(request_id, request, op)
            else:
                reply, closes = await self._execute(request_id, request, op)
            if closes:
                self._reader_scope.cancel()
                await self.send(reply)
            else:
                self._post(reply)
        except PeerGone:
            pass
        finally:
            self._request_done()

    async def _execute(
        self, request_id: protocol.RequestId, request: protocol.Request, op: Op
    ) -> tuple[bytes, bool]:
        """Run a request: (reply line, whether the connection must close)."""
        try:
            result = await self._call(request, op)
            return codec.ok_reply(request_id, result), False
        except errors.DurableTQError as exc:
            return self._error(request_id, op, exc), exc.closes_connection
        except Exception:
            log.exception("%r: internal error in %s", self, op.name)
            internal = errors.Internal(f"internal error in {op.name}; see the broker's log")
            return codec.error_reply(request_id, internal), False

    def _call(self, request: protocol.Request, op: Op) -> Any:
        """The broker method of ``op``, called with the request's fields as arguments."""
        fields = request.__struct_fields__
        kwargs = {name: getattr(request, name) for name in fields if name != "id"}
        return getattr(self.broker, op.handler)(**kwargs, session=self.session)

    def _error(self, request_id: protocol.RequestId, op: Op, exc: errors.DurableTQError) -> bytes:
        if exc.closes_connection:
            log.warning("%r: %s (%s); closing", self, exc.code, exc.message)
        elif isinstance(exc, errors.Internal):
            log.warning("%r: %s failed: %s", self, op.name, exc.message)
        return codec.error_reply(request_id, exc)

    async def _run_leasing(
        self, request_id: protocol.RequestId, request: protocol.Request, op: Op
    ) -> None:
        """A request that may hand out leases (claim, settle with claim).

        It can be ended early (connection closing, shutdown) while it waits for work. The
        broker shields its store writes, so an ended request has either leased nothing or
        comes back with its tasks in hand. An ended request never delivers: whatever it leased
        is handed back at once (the peer is going away; it cannot ack them), and the reply is
        ``shutting_down`` when the broker stops, else what it got minus the tasks. A reply
        that is not written (the peer left) hands its tasks back too.
        """
        result: Result | None = None
        tasks: list[Result] = []
        with anyio.CancelScope() as scope:
            self._claims.add(scope)
            try:
                if self._claims_ended:
                    scope.cancel()
                result = await self._call(request, op)
                tasks = result.get("tasks") or []
            except errors.DurableTQError as exc:
                reply = self._error(request_id, op, exc)
                if exc.closes_connection:
                    self._reader_scope.cancel()
                    await self.send(reply)
                else:
                    self._post(reply)
                return
            except Exception:
                log.exception("%r: internal error in %s", self, op.name)
                internal = errors.Internal(f"internal error in {op.name}; see the broker's log")
                self._post(codec.error_reply(request_id, internal))
                return
            finally:
                self._claims.discard(scope)
        if result is None:  # ended while it long-polled: it leased nothing
            if self._stopping:
                self._told_shutting_down = True
                self._reader_scope.cancel()
                error: errors.DurableTQError = errors.ShuttingDown("the broker is stopping")
                await self._send_quietly(codec.error_reply(request_id, error))
            elif op.name == "claim":
                self._post(codec.ok_reply(request_id, {"tasks": []}))
            else:
                error = errors.Conflict(
                    "the connection is closing: the settles were committed, the claim ended"
                )
                self._post(codec.error_reply(request_id, error))
            return
        if scope.cancel_called:
            if tasks:
                with anyio.CancelScope(shield=True):
                    await self._hand_back(tasks)
            if self._stopping:
                self._told_shutting_down = True
                self._reader_scope.cancel()
                reply = codec.error_reply(request_id, errors.ShuttingDown("the broker is stopping"))
                await self._send_quietly(reply)
                return
            result["tasks"] = []
            tasks = []
        try:
            await self.send(codec.ok_reply(request_id, result))
        except BaseException:
            if tasks:
                # The reply did not go out: nobody knows these tasks are leased.
                with anyio.CancelScope(shield=True):
                    await self._hand_back(tasks)
            raise

    async def _hand_back(self, tasks: list[Result]) -> None:
        for task in tasks:
            try:
                await self.broker.release(task["task_id"], task["lease_token"])
            except errors.DurableTQError as exc:
                log.warning(
                    "task %d (queue %s): its claim ended undelivered and it could not be "
                    "handed back (%s); it returns when its lease expires",
                    task["task_id"],
                    task["queue"],
                    exc.message,
                )
            else:
                log.info(
                    "task %d (queue %s): handed back, its claim ended undelivered",
                    task["task_id"],
                    task["queue"],
                )

    # --- writing ------------------------------------------------------------------------------

    def buffered(self) -> int:
        """Reply bytes not yet taken by the kernel."""
        transport = self._transport
        buffered = 0 if transport is None else transport.get_write_buffer_size()
        return self._outbox_bytes + buffered

    def _over_bound(self) -> bool:
        buffered = self.buffered()
        if buffered > self.server.max_reply_buffer:
            return True
        return (
            buffered > SHARE_FLOOR
            and self.server.total_buffered() > self.server.max_total_reply_buffer
        )

    async def _writable(self) -> None:
        """Return once this connection's unwritten replies are within bounds (its own,
        max_reply_buffer, and its part of max_total_reply_buffer). If they stay over for
        write_timeout, the peer is not reading: close the connection (raises PeerGone)."""
        while self._over_bound():
            if self._broken:
                raise PeerGone("connection broken")
            if self._drained is not None:  # another request of ours is already watching
                await self._drained.wait()
                continue
            drained = self._drained = anyio.Event()
            try:
                with anyio.move_on_after(self.settings.write_timeout) as waited:
                    # Polled: the transport's buffer drains with no event we can wait on.
                    while self._over_bound() and not self._broken:  # noqa: ASYNC110
                        await anyio.sleep(TRANSPORT_DRAIN_POLL)
            finally:
                self._drained = None
                drained.set()
            if waited.cancelled_caught:
                log.warning(
                    "%r: %d reply bytes unread for %s s (write_timeout); closing",
                    self,
                    self.buffered(),
                    self.settings.write_timeout,
                )
                self._abort()
        if self._broken:
            raise PeerGone("connection broken")

    def _abort(self) -> None:
        """Close at once, dropping every reply not yet written."""
        self._broken = True
        self.aborted = True
        self._outbox.clear()
        self._outbox_bytes = 0
        if self._transport is not None:
            self._transport.abort()
        self._flushed.set()
        self._room.set()
        self._scope.cancel()

    def _post(self, line: bytes) -> None:
        """Send one whole reply line without waiting for it.

        On a plain TCP transport the lines posted during one turn of the event loop go out in
        one write from a callback scheduled with the first of them (the replies of one group
        commit are posted back to back: one system call for all of them, and no writer task
        wake-up). Otherwise, and while the writer task is sending, through the writer task.
        """
        if self._broken:
            return
        self._outbox.append(line)
        self._outbox_bytes += len(line)
        if self._transport is not None and not self._writing:
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush_to_transport)
            return
        self._outbox_filled.set()

    async def _write_outbox(self) -> None:
        """Before the connection ends: what waits in the outbox is written (bounded)."""
        if not self._outbox or self._broken:
            return
        with anyio.move_on_after(NOTICE_TIMEOUT):
            flushed = self._flushed
            self._outbox_filled.set()
            await flushed.wait()

    def _flush_to_transport(self) -> None:
        """The callback of :meth:`_post`: everything waiting, in one transport write."""
        self._flush_scheduled = False
        transport = self._transport
        if transport is None or self._writing or not self._outbox or self._broken:
            if self._outbox:
                self._outbox_filled.set()  # the writer task takes them
            return
        if transport.is_closing():
            self._broken = True
            return
        batch, self._outbox = self._outbox, []
        self._outbox_bytes = 0
        try:
            transport.write(b"".join(batch))
        except RuntimeError:  # its write side was closed meanwhile: the peer is going
            self._broken = True

    async def send(self, line: bytes) -> None:
        """Queue one whole reply line and wait until it is written.

        Raises PeerGone if the connection broke. Cancelled before the writer took the line,
        the line is never sent.
        """
        if self._broken:
            raise PeerGone("connection already broken")
        self._outbox.append(line)
        self._outbox_bytes += len(line)
        flushed = self._flushed
        self._outbox_filled.set()
        try:
            await flushed.wait()
        except BaseException:
            for index, waiting in enumerate(self._outbox):
                if waiting is line:
                    del self._outbox[index]
                    self._outbox_bytes -= len(line)
                    break
            raise
        if self._broken:
            raise PeerGone("connection broke before the reply was written")

    async def _write_replies(self) -> None:
        """The connection's only writer: whatever replies are waiting go out in one write.

        A peer that does not read makes this write block; replies then wait in the outbox,
        their requests keep their in-flight slots, and the reader stops (backpressure).
        """
        while True:
            await self._outbox_filled.wait()
            self._outbox_filled = anyio.Event()
            if not self._outbox:
                continue
            batch, self._outbox = self._outbox, []
            flushed, self._flushed = self._flushed, anyio.Event()
            data = b"".join(batch)
            self._writing = True
            try:
                await self.stream.send(data)
            except _STREAM_ERRORS as exc:
                log.debug("%r: connection lost while writing: %s", self, exc)
                self._broken = True
                self._flushed.set()
                self._room.set()
                self._scope.cancel()
                return
            finally:
                self._writing = False
                flushed.set()
            self._outbox_bytes = max(0, self._outbox_bytes - len(data))
            if self._outbox_bytes <= self.server.max_reply_buffer:
                self._room.set()

    async def _send_quietly(self, line: bytes) -> None:
        """Best effort, bounded: a last word before closing."""
        with anyio.move_on_after(NOTICE_TIMEOUT):
            with contextlib.suppress(PeerGone):
                await self.send(line)


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
        self._connections: set[_Connection] = set()
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
                    log.debug("listening on %s (database %s)", self.url, self.settings.db_path)
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
        while True:
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
        conn: _Connection | None = None
        try:
            if self._ssl_context is not None:
                wrapped = await self._handshake(raw, number, peer, hello_deadline)
                if wrapped is None:
                    return
                stream = wrapped
            if len(self._connections) >= self.settings.max_connections:  # filled meanwhile
                await self._refuse(stream, number, peer)
                return
            conn = _Connection(self, stream, number, peer, hello_deadline)
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

    async def _run_connection(self, conn: _Connection) -> None:
        self._connections.add(conn)
        self.broker.connections += 1
        log.debug("%r: open", conn)
        try:
            if self._stopping:
                conn.begin_shutdown()
            await conn.run()
        finally:
            self._connections.discard(conn)
            self.broker.connections -= 1
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
        if _malloc_trim is None:
            return
        while True:
            await self._trim_wanted.wait()
            await anyio.sleep(1.0)  # let a burst of closes finish first
            self._trim_wanted = anyio.Event()
            _malloc_trim(0)

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
            except _STREAM_ERRORS as exc:
                log.debug("connection #%d (%s): TLS handshake failed: %s", number, peer, exc)
                return None
        log.debug("connection #%d (%s): no TLS handshake within hello_timeout", number, peer)
        return None

    async def _refuse(self, stream: anyio.abc.ByteStream, number: int, peer: str) -> None:
        limit = self.settings.max_connections
        log.warning("connection #%d (%s): refused, %d connections open", number, peer, limit)
        refusal = errors.TooManyConnections(f"the broker has {limit} connections open (max)")
        with anyio.move_on_after(NOTICE_TIMEOUT):
            with contextlib.suppress(*_STREAM_ERRORS):
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
        except (*_STREAM_ERRORS, NotImplementedError):
            pass


def _plain_transport(stream: anyio.abc.ByteStream) -> asyncio.WriteTransport | None:
    """The asyncio transport under anyio's plain (not TLS) socket stream, or None."""
    transport = getattr(stream, "_transport", None)
    if isinstance(transport, asyncio.WriteTransport) and not isinstance(stream, TLSStream):
        return transport
    return None


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
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_malloc_trim = _find_malloc_trim()


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


# --- running as a process -----------------------------------------------------------------------


def run(settings: Settings, *, on_listening: Callable[[BrokerServer], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (graceful; a second signal exits at once). Blocking.

    ``on_listening`` is called once the server listens (the CLI prints the address there).
    Errors before listening (a locked database, a port in use) are raised as they are.
    """
    try:
        anyio.run(_run, settings, on_listening, backend="asyncio")
    except BaseExceptionGroup as group:
        # Task groups wrap what failed; a single error (a locked database, a port in use) is
        # raised as itself so callers can catch ConfigError or OSError.
        only = _only_exception(group)
        if only is None:
            raise
        raise only from None


def _only_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    if len(group.exceptions) != 1:
        return None
    inner = group.exceptions[0]
    return _only_exception(inner) if isinstance(inner, BaseExceptionGroup) else inner


async def _run(settings: Settings, on_listening: Callable[[BrokerServer], None] | None) -> None:
    raise_file_limit(settings)
    server = BrokerServer(settings)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def serve(*, task_status: anyio.abc.TaskStatus[BrokerServer]) -> None:
                await server.serve(task_status=task_status)
                tg.cancel_scope.cancel()  # stop watching signals

            tg.start_soon(_watch_signals, signals, server)
            try:
                await tg.start(serve)
            except BaseException:
                tg.cancel_scope.cancel()
                raise
            if on_listening is not None:
                on_listening(server)  # the caller says "listening" (durable-tq serve: stdout)
            else:
                log.info("listening on %s (database %s)", server.url, settings.db_path)


async def _watch_signals(signals: Any, server: BrokerServer) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if not server.stopping:
            log.info("%s: stopping gracefully (send it again to exit at once)", name)
            server.request_shutdown()
            continue
        log.warning("%s again: exiting at once", name)
        logging.shutdown()
        os._exit(128 + signum)
