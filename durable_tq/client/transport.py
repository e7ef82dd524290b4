"""One broker's connections: connect (with backoff), hello, the reply reader, pipelined sends,
reply matching, and the retries a request may get.

``AsyncClient`` turns operations into ``(op, arguments)``; a :class:`Transport` gets each one an
ok reply line or raises. Why each retry is safe is in the package docstring and
docs/clients.md.
"""

# Requests take ``timeout=`` on purpose: it bounds the whole call including busy retries and
# reconnects, and the blocking Client has no other way to set a deadline.
# ruff: noqa: ASYNC109

from __future__ import annotations

import itertools
import json
import logging
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final

import anyio
import anyio.abc
import msgspec
from anyio.streams.buffered import BufferedByteReceiveStream

from durable_tq import errors
from durable_tq.backoff import backoff_delay
from durable_tq.client.codec import HEAD, TASKS_OF, ReplyHead, encode_frame, error_of
from durable_tq.client.types import ClaimedTask, WorkerRegistration
from durable_tq.wire.ops import OPS
from durable_tq.wire.schema import PROTOCOL_VERSION

__all__ = ["MAX_LINE_BYTES", "SAFE_TO_RESEND", "Transport"]

logger = logging.getLogger("durable_tq.client")

#: Longest reply line accepted. Replies (a big ``list`` page, a claim of many large payloads)
#: can be far larger than the broker's request limit, so this is generous.
MAX_LINE_BYTES: Final = 64 * 1024 * 1024

#: Ops that change nothing on the broker: safe to send again after a connection broke under
#: them. Everything else may already have been committed, so it is never re-sent.
SAFE_TO_RESEND: Final = frozenset({"get", "stats", "list", "workers"})

#: Reconnect delays: 0.2 s doubling up to 5 s, the lower half fixed and the upper half random.
_BACKOFF_BASE = 0.2
_BACKOFF_CAP = 5.0
_BACKOFF_JITTER = -0.5
_NOT_SENT_RETRIES = 3

#: Ops that claim tasks (the op table's ``leases``): a reply we stopped waiting for still
#: leased them.
_CLAIMING = frozenset(name for name, op in OPS.items() if op.leases)


def _spend(budget: dict[str, int], reason: str) -> bool:
    """Use up one retry for ``reason``; False when none is left."""
    if budget[reason] <= 0:
        return False
    budget[reason] -= 1
    return True


class _NotSent(Exception):
    """The connection went away before this request was written: safe to send elsewhere."""


class _BadReply(Exception):
    """The broker sent something that is not a reply; the connection cannot be trusted."""


class _Waiter:
    """One request's place in line: the reader fills in the reply or the reason it never came."""

    __slots__ = ("_event", "line", "lost", "reply")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self.reply: ReplyHead | None = None
        self.line = b""
        self.lost: tuple[str, BaseException | None] = ("connection lost", None)

    def resolve(self, reply: ReplyHead, line: bytes) -> None:
        self.reply = reply
        self.line = line
        self._event.set()

    def break_off(self, message: str, cause: BaseException | None) -> None:
        self.lost = (message, cause)
        self._event.set()

    async def wait(self) -> ReplyHead:
        await self._event.wait()
        if self.reply is None:
            message, cause = self.lost
            raise errors.ConnectionLost(message) from cause
        return self.reply


class _Outbox:
    """Frames written together: one socket write for every request queued meanwhile."""

    __slots__ = ("error", "frames", "sent")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.sent = False
        self.error: errors.ConnectionLost | None = None


class Connection:
    """One open socket, its in-flight requests and the reason it ended."""

    def __init__(
        self, number: int, stream: anyio.abc.ByteStream, receiver: BufferedByteReceiveStream
    ) -> None:
        self.number = number
        self.stream = stream
        self.receiver = receiver
        self.send_lock = anyio.Lock()
        #: Frames waiting to be written; whoever holds ``send_lock`` writes them all at once.
        self.outbox = _Outbox()
        self.waiters: dict[int, _Waiter] = {}
        #: Claims we stopped waiting for; their tasks are released when the reply comes.
        self.abandoned_claims: set[int] = set()
        #: False once no new request may go out on it (lost, closing, or after ``bye``).
        self.usable = True
        self.said_bye = False
        #: An error the broker sent before closing (e.g. ``shutting_down``).
        self.close_error: errors.DurableTQError | None = None
        self.lost: tuple[str, BaseException | None] | None = None

    def shut(self, message: str, cause: BaseException | None) -> None:
        """Mark the connection gone and fail every request still waiting on it."""
        if self.lost is None:
            self.lost = (message, cause)
        self.usable = False
        waiters = list(self.waiters.values())
        self.waiters.clear()
        for waiter in waiters:
            waiter.break_off(*self.lost)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.aclose_forcefully(self.stream)


class Transport:
    """The connections of one ``AsyncClient`` to one broker, and the requests on them.

    At most one connection takes new requests; one that broke is replaced by the next request
    (``hello`` sent again, with the same worker registration). Each open connection has a
    reader task in the transport's task group, so :meth:`open` and :meth:`exit` must run in
    the same task.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        token: str | None,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
        client_name: str,
        worker: WorkerRegistration | None,
        timeout: float | None,
        connect_timeout: float,
        connect_attempts: int,
        reconnect_timeout: float,
        busy_retries: int,
        send_timeout: float,
        max_line_bytes: int,
    ) -> None:
        self.host = host
        self.port = port
        self.worker = worker
        self.ssl_context = ssl_context
        self.token = token
        self._server_hostname = server_hostname
        self._client_name = client_name
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._connect_attempts = connect_attempts
        self._reconnect_timeout = reconnect_timeout
        self._busy_retries = busy_retries
        self._send_timeout = send_timeout
        self._max_line_bytes = max_line_bytes

        #: From the last ``hello`` reply.
        self.server: str | None = None
        self.protocol_version: int | None = None
        self.heartbeat_interval: float | None = None
        self.hello_reply: dict[str, Any] = {}

        self._ids = itertools.count(1)
        self._connection_numbers = itertools.count(1)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._conn: Connection | None = None
        #: Connections with a reader still running.
        self.connections: set[Connection] = set()
        self._connect_lock: anyio.Lock | None = None  # made in the loop that runs us
        self._connect_failures = 0
        self._last_connect_error: errors.DurableTQError | None = None
        self.closed = False

    @property
    def url(self) -> str:
        scheme = "tls" if self.ssl_context is not None else "tcp"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.usable

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Start the task group and connect; on failure everything is closed again."""
        if self._task_group is not None or self.closed:
            raise RuntimeError("an AsyncClient can be entered only once")
        self._connect_lock = anyio.Lock()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        try:
            await self._ensure_connected()
        except BaseException:
            await self.aclose()
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
            raise

    async def exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        """Close, then leave the task group :meth:`open` entered."""
        await self.aclose()
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(exc_type, exc, traceback)

    async def aclose(self) -> None:
        """Close every connection; requests still waiting raise ``ConnectionLost``."""
        if self.closed:
            return
        self.closed = True
        self._conn = None
        for conn in list(self.connections):
            conn.shut("the client was closed", None)
            await conn.close()
        logger.debug("client for %s closed", self.url)

    # ------------------------------------------------------------------ connecting

    async def _ensure_connected(self) -> Connection:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        if self.closed:
            raise errors.ConnectionLost("the client is closed")
        if self._task_group is None or self._connect_lock is None:
            raise RuntimeError("use `async with AsyncClient(...) as client:` before requests")
        failures_seen = self._connect_failures
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.usable:
                return conn
            if self._connect_failures != failures_seen:
                # Someone else just tried and failed while we waited; do not pile on.
                raise errors.ConnectionLost(
                    f"could not connect to {self.url}: {self._last_connect_error}"
                ) from self._last_connect_error
            try:
                conn = await self._connect_with_backoff(reconnect=self._conn is not None)
            except errors.DurableTQError as exc:
                self._connect_failures += 1
                self._last_connect_error = exc
                raise
            if self.closed:
                await conn.close()
                raise errors.ConnectionLost("the client is closed")
            self._conn = conn
            self.connections.add(conn)
            self._task_group.start_soon(
                self._read_replies, conn, name=f"durable_tq reader #{conn.number}"
            )
            return conn

    async def _connect_with_backoff(self, *, reconnect: bool) -> Connection:
        deadline = anyio.current_time() + self._reconnect_timeout
        last_error: errors.DurableTQError | None = None
        attempt = 0
        while attempt < self._connect_attempts:
            attempt += 1
            budget = max(min(self._connect_timeout, deadline - anyio.current_time()), 0.001)
            try:
                with anyio.fail_after(budget):
                    conn = await self._open_connection()
            except (errors.ConnectionLost, errors.TooManyConnections, errors.ShuttingDown) as exc:
                last_error = exc
                if isinstance(exc.__cause__, ssl.SSLCertVerificationError):
                    break  # the certificate will not verify any better next time
            except TimeoutError as exc:
                last_error = errors.ConnectionLost(f"connecting took longer than {budget:.3g} s")
                last_error.__cause__ = exc
            else:
                verb = "reconnected" if reconnect else "connected"
                logger.info("%s to %s (%s) on attempt %d", verb, self.url, self.server, attempt)
                return conn
            delay = backoff_delay(
                attempt, base=_BACKOFF_BASE, cap=_BACKOFF_CAP, jitter=_BACKOFF_JITTER
            )
            if attempt >= self._connect_attempts or anyio.current_time() + delay >= deadline:
                break
            logger.warning(
                "connecting to %s failed (attempt %d): %s; retrying in %.2f s",
                self.url,
                attempt,
                last_error,
                delay,
            )
            await anyio.sleep(delay)
        raise errors.ConnectionLost(
            f"could not connect to {self.url} after {attempt} attempt(s): {last_error}"
        ) from last_error

    async def _open_connection(self) -> Connection:
        stream: anyio.abc.ByteStream
        try:
            if self.ssl_context is not None:
                stream = await anyio.connect_tcp(
                    self.host,
                    self.port,
                    tls=True,
                    ssl_context=self.ssl_context,
                    tls_hostname=self._server_hostname,
                    tls_standard_compatible=False,
                )
            else:
                stream = await anyio.connect_tcp(self.host, self.port)
        except (OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            raise errors.ConnectionLost(f"cannot connect to {self.url}: {exc!r}") from exc
        receiver = BufferedByteReceiveStream(stream)
        conn = Connection(next(self._connection_numbers), stream, receiver)
        try:
            reply = await self._say_hello(conn)
        except BaseException:
            await conn.close()
            raise
        self.hello_reply = reply
        self.server = str(reply.get("server")) if reply.get("server") is not None else None
        version = reply.get("version")
        self.protocol_version = version if isinstance(version, int) else None
        interval = reply.get("heartbeat_interval")
        self.heartbeat_interval = float(interval) if isinstance(interval, int | float) else None
        return conn

    async def _say_hello(self, conn: Connection) -> dict[str, Any]:
        request_id = next(self._ids)
        hello: dict[str, Any] = {
            "id": request_id,
            "op": "hello",
            "version": PROTOCOL_VERSION,
            "client": self._client_name,
        }
        if self.token is not None:
            hello["token"] = self.token
        if self.worker is not None:
            hello["worker"] = self.worker.to_wire()
        try:
            await conn.stream.send(encode_frame(hello))
            while True:
                line = await conn.receiver.receive_until(b"\n", self._max_line_bytes)
                reply = json.loads(line)
                # An error with a null id is the broker refusing us before reading anything
                # (too_many_connections, shutting_down).
                if isinstance(reply, dict) and reply.get("id") in (request_id, None):
                    break
        except ValueError as exc:
            raise errors.ConnectionLost(f"{self.url} did not answer hello with JSON") from exc
        except (
            OSError,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            anyio.EndOfStream,
            anyio.IncompleteRead,
            anyio.DelimiterNotFound,
        ) as exc:
            raise errors.ConnectionLost(
                f"the connection to {self.url} broke during hello: {exc!r}"
            ) from exc
        if reply.get("ok") is not True:
            raise error_of(reply)
        return reply

    # ------------------------------------------------------------------ reading

    async def _read_replies(self, conn: Connection) -> None:
        """The connection's reader: hand each reply line to the request waiting for it."""
        message = "the client was closed"
        cause: BaseException | None = None
        try:
            while True:
                line = await conn.receiver.receive_until(b"\n", self._max_line_bytes)
                self._dispatch(conn, line)
        except (anyio.EndOfStream, anyio.IncompleteRead) as exc:
            message, cause = self._describe_close(conn), conn.close_error or exc
        except anyio.ClosedResourceError:
            pass  # we closed it ourselves
        except anyio.DelimiterNotFound as exc:
            message = f"a reply from {self.url} exceeded max_line_bytes={self._max_line_bytes}"
            cause = exc
        except (anyio.BrokenResourceError, OSError) as exc:
            message, cause = f"the connection to {self.url} broke: {exc!r}", exc
        except _BadReply as exc:
            message, cause = f"closed the connection to {self.url}: {exc}", exc
        finally:
            conn.shut(message, cause)
            self.connections.discard(conn)
            await conn.close()
        if cause is not None and not conn.said_bye:
            logger.warning("connection #%d: %s", conn.number, message)

    def _describe_close(self, conn: Connection) -> str:
        if conn.close_error is not None:
            error = conn.close_error
            return f"{self.url} closed the connection: {error.code}: {error.message}"
        return f"{self.url} closed the connection"

    def _dispatch(self, conn: Connection, line: bytes) -> None:
        try:
            reply = HEAD.decode(line)
        except msgspec.ValidationError as exc:
            raise _BadReply(f"a reply line is not a JSON object: {line[:200]!r}") from exc
        except msgspec.DecodeError as exc:
            raise _BadReply(f"a reply line is not JSON: {line[:200]!r}") from exc
        request_id = reply.id
        if reply.ok is False:
            self._note_error(conn, reply)
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            return
        waiter = conn.waiters.pop(request_id, None)
        if waiter is not None:
            waiter.resolve(reply, line)
        elif request_id in conn.abandoned_claims:
            conn.abandoned_claims.discard(request_id)
            self._release_abandoned(reply, line)
        else:
            logger.debug(
                "connection #%d: dropped the reply to abandoned request %d", conn.number, request_id
            )

    def _note_error(self, conn: Connection, reply: ReplyHead) -> None:
        error = error_of(reply)
        if error.closes_connection:
            # Send nothing more here; the broker is about to close.
            conn.usable = False
            if conn.close_error is None:
                conn.close_error = error
        if reply.id is None:
            logger.warning(
                "connection #%d: broker error: %s: %s", conn.number, error.code, error.message
            )

    def _release_abandoned(self, reply: ReplyHead, line: bytes) -> None:
        """A claim we gave up on (timeout, cancel) still leased tasks: hand them back."""
        if reply.ok is not True or self._task_group is None or self.closed:
            return
        try:
            tasks = TASKS_OF.decode(line).tasks or []
        except msgspec.ValidationError:
            logger.exception("could not read the reply of an abandoned claim")
            return
        for task in tasks:
            self._task_group.start_soon(self._release_quietly, task)

    async def _release_quietly(self, task: ClaimedTask) -> None:
        try:
            release = {"task_id": task.task_id, "lease_token": task.lease_token}
            await self.line("release", release, None)
        except errors.DurableTQError as exc:
            logger.warning(
                "task %d (queue %s): could not release it after an abandoned claim: %s",
                task.task_id,
                task.queue,
                exc,
            )
        else:
            logger.info(
                "task %d (queue %s): released; its claim was abandoned", task.task_id, task.queue
            )

    # ------------------------------------------------------------------ requests

    async def line(self, op: str, arguments: Mapping[str, Any], timeout: float | None) -> bytes:
        """The ok reply line of ``op`` (errors raised), within ``timeout`` (None: the
        client's default), busy retries and reconnects included."""
        limit = self._timeout if timeout is None else timeout
        if limit is None:
            return await self._request_with_retries(op, arguments)
        try:
            with anyio.fail_after(limit):
                return await self._request_with_retries(op, arguments)
        except TimeoutError as exc:
            if isinstance(exc, errors.DurableTQError):
                raise
            raise errors.RequestTimeout(
                f"no reply to {op!r} from {self.url} within {limit} s"
            ) from exc

    async def _request_with_retries(self, op: str, arguments: Mapping[str, Any]) -> bytes:
        # Retries left per reason. Only answers that say "not done" (busy, shutting_down) and
        # requests that never left (not sent) are retried for every op; a request lost in
        # flight only when it is read-only.
        left = {
            "busy": self._busy_retries,
            "shutting_down": 1,
            "not_sent": _NOT_SENT_RETRIES,
            "lost": 1 if op in SAFE_TO_RESEND else 0,
        }
        while True:
            conn = await self._ensure_connected()
            try:
                return await self._exchange(conn, op, arguments)
            except _NotSent as exc:
                if not _spend(left, "not_sent"):
                    raise errors.ConnectionLost(f"could not send {op!r} to {self.url}") from exc
            except errors.Busy as exc:
                if not _spend(left, "busy"):
                    raise
                logger.info(
                    "%s: broker busy (%s), retrying in %.2f s", op, exc.message, exc.retry_after
                )
                await anyio.sleep(max(exc.retry_after, 0.0))
            except errors.ShuttingDown as exc:
                if not _spend(left, "shutting_down"):
                    raise
                logger.info("%s: %s; sending it again once reconnected", op, exc.message)
            except errors.ConnectionLost as exc:
                if not _spend(left, "lost"):
                    raise
                logger.info("%s: %s; sending it again (read-only)", op, exc)

    async def _exchange(self, conn: Connection, op: str, arguments: Mapping[str, Any]) -> bytes:
        request_id = next(self._ids)
        frame = encode_frame({"id": request_id, "op": op, **arguments})
        self._check_frame_size(op, frame)
        waiter = _Waiter()
        conn.waiters[request_id] = waiter
        sent = False
        try:
            await self._send(conn, frame, op)
            sent = True
            reply = await waiter.wait()
        finally:
            if conn.waiters.pop(request_id, None) is not None and sent and op in _CLAIMING:
                conn.abandoned_claims.add(request_id)
        if reply.ok is True:
            return waiter.line
        raise error_of(reply)

    def _check_frame_size(self, op: str, frame: bytes) -> None:
        # A broker that announces its limit lets us refuse an oversized request here,
        # instead of it closing the connection under every other request in flight.
        limit = self.hello_reply.get("max_frame_bytes")
        if isinstance(limit, int) and len(frame) - 1 > limit:
            raise errors.FrameTooLarge(
                f"{op!r} request is {len(frame) - 1} bytes; the broker accepts {limit}"
            )

    async def _send(self, conn: Connection, frame: bytes, op: str) -> None:
        """Write ``frame``, together with every frame queued while another write was going on:
        pipelined requests cost one socket write per batch, not one each."""
        if not conn.usable:
            raise _NotSent
        if op == "bye":
            conn.usable = False
            conn.said_bye = True
        outbox = conn.outbox
        outbox.frames.append(frame)
        try:
            async with conn.send_lock:
                if not outbox.sent:
                    if conn.lost is not None or conn.close_error is not None:
                        raise _NotSent
                    conn.outbox = _Outbox()
                    outbox.sent = True
                    await self._write(conn, b"".join(outbox.frames), outbox)
        except BaseException:
            if not outbox.sent:  # cancelled while queued: it must not go out later
                outbox.frames.remove(frame)
            raise
        if outbox.error is not None:
            raise errors.ConnectionLost(str(outbox.error)) from outbox.error.__cause__

    async def _write(self, conn: Connection, data: bytes, outbox: _Outbox) -> None:
        # Shielded: a cancel half-way through a write would corrupt the framing for every
        # other request on the connection.
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(self._send_timeout):
                    await conn.stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                message = f"sending to {self.url} failed: {exc!r}"
                outbox.error = errors.ConnectionLost(message)
                outbox.error.__cause__ = exc
                conn.shut(message, exc)
                await conn.close()
