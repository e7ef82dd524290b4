"""One client connection: its session, its reader, its in-flight requests, its replies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from durable_tq import errors
from durable_tq.core.broker import Result, Session
from durable_tq.servers.tcp.constants import (
    NOTICE_TIMEOUT,
    READS_PER_TURN,
    SHARE_FLOOR,
    TRANSPORT_DRAIN_POLL,
    TURN_BYTES,
)
from durable_tq.servers.tcp.framing import STREAM_ERRORS, FrameReader, PeerGone
from durable_tq.wire import codec
from durable_tq.wire import schema as protocol
from durable_tq.wire.ops import OPS, Op

if TYPE_CHECKING:
    from durable_tq.servers.tcp.listener import BrokerServer

log = logging.getLogger("durable_tq.servers.tcp")


class Connection:
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
            if read_in_turn >= READS_PER_TURN:
                # Let the other connections' readers and runners go before reading on.
                read_in_turn = 0
                await anyio.lowlevel.checkpoint()
            line = await self._receive_or_idle(reader, idle_timeout)
            if line is None:
                return
            # A long line is more work (a claim over 1,000 queues): it uses more of the turn.
            read_in_turn += 1 + len(line) // TURN_BYTES
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
            if op.leases:
                await self._run_leasing(request_id, request, op)
                return
            if not op.writes and not op.long_poll:
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
            except STREAM_ERRORS as exc:
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


def _plain_transport(stream: anyio.abc.ByteStream) -> asyncio.WriteTransport | None:
    """The asyncio transport under anyio's plain (not TLS) socket stream, or None."""
    transport = getattr(stream, "_transport", None)
    if isinstance(transport, asyncio.WriteTransport) and not isinstance(stream, TLSStream):
        return transport
    return None
