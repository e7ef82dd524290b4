"""The client library: a pipelined ``AsyncClient`` (anyio) and a blocking ``Client`` over it.

Both speak protocol version 1 (shared/PROTOCOL.md) over one TCP (or TLS) connection with
newline-delimited JSON. ``AsyncClient`` sends requests without waiting for earlier replies; one
background reader task per connection matches replies to requests by ``id``. ``Client`` is the
same object driven from a blocking portal thread, so sync code gets identical behaviour.

Retries, in short (docs/clients.md has the why):

* ``busy`` replies are retried after the broker's ``retry_after``, up to ``busy_retries`` times.
* A ``shutting_down`` reply (the broker refused the request while stopping) is retried once,
  on a new connection.
* A lost connection is re-opened by the next request (exponential backoff with jitter), and
  ``hello`` is sent again with the same worker registration.
* A request that was on the wire when the connection broke is **not** re-sent: the broker may
  have committed it. It raises ``errors.ConnectionLost``. Only read-only ops (``get``,
  ``stats``, ``list``, ``workers``) are re-sent, once.
"""

# Every operation takes ``timeout=`` on purpose: it bounds the whole call including busy
# retries and reconnects, and the blocking Client has no other way to set a deadline.
# ruff: noqa: ASYNC109

from __future__ import annotations

import atexit
import functools
import itertools
import json
import logging
import random
import ssl
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, ParamSpec, TypedDict, TypeVar, Unpack
from urllib.parse import unquote, urlsplit

import anyio
import anyio.abc
import msgspec
from anyio.from_thread import BlockingPortal, start_blocking_portal
from anyio.streams.buffered import BufferedByteReceiveStream
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_jsonable_python

from durable_tq import errors
from durable_tq.wire import schema as s
from durable_tq.wire.ops import OPS

__all__ = [
    "CLIENT_NAME",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "AsyncClient",
    "ClaimArgs",
    "ClaimedTask",
    "Client",
    "ClientOptions",
    "EnqueueRequest",
    "EnqueueResult",
    "FailResult",
    "HeartbeatReply",
    "QueueSettings",
    "QueueStats",
    "RequestTimeout",
    "SettleReply",
    "SettleResult",
    "Settlement",
    "Stats",
    "TaskInfo",
    "TaskPage",
    "WorkerInfo",
    "WorkerRegistration",
]

logger = logging.getLogger("durable_tq.client")

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 7480
PROTOCOL_VERSION: Final = 1
CLIENT_NAME: Final = "durable_tq-py/0.1"
#: Longest reply line accepted. Replies (a big ``list`` page, a claim of many large payloads)
#: can be far larger than the broker's request limit, so this is generous.
MAX_LINE_BYTES: Final = 64 * 1024 * 1024

#: Ops that change nothing on the broker: safe to send again after a connection broke under
#: them. Everything else may already have been committed, so it is never re-sent.
SAFE_TO_RESEND: Final = frozenset({"get", "stats", "list", "workers"})

_BACKOFF_BASE = 0.2
_BACKOFF_CAP = 5.0
_NOT_SENT_RETRIES = 3

P = ParamSpec("P")
T = TypeVar("T")
ReplyT = TypeVar("ReplyT", bound=s.Reply)


class RequestTimeout(errors.DurableTQError, TimeoutError):
    """Client side: no reply within the request's ``timeout``.

    The broker may still carry the request out (and, for writes, commit it).
    """

    code = "timeout"


# --------------------------------------------------------------------------- result models


# The reply types are the op table's (durable_tq/wire/schema.py), decoded straight from the
# reply line by msgspec: the client cannot drift from what the broker sends. The public names
# below are what users import; tests/e2e/test_client.py checks each against ``wire.ops.OPS``.

#: What ``enqueue`` gives back: ``task_id``, and ``created`` (False when a live task with the
#: same ``unique_key`` existed; ``task_id`` is then its id).
EnqueueResult = s.EnqueueReply
#: A task handed to this client by ``claim`` or ``settle``; finish it with ack/fail/release.
ClaimedTask = s.LeasedTask
#: Where a failed task went: ``scheduled``/``queued`` (retried, ``run_at``) or ``dead``.
FailResult = s.FailReply
#: Everything ``get`` and ``list`` report about one task.
TaskInfo = s.TaskInfo
#: Task counts per state for one queue.
QueueStats = s.QueueStats
#: The broker's ``stats`` reply.
Stats = s.StatsReply
#: One page of ``list``; pass ``next_after_id`` back as ``after_id`` for the next one.
TaskPage = s.ListReply
#: A registered worker as the ``workers`` op reports it.
WorkerInfo = s.WorkerInfo
#: What ``settle`` gives back: ``results`` (one per item, in order), ``tasks`` (claimed, when
#: a claim was given) and ``worker_state`` (registered workers).
SettleReply = s.SettleReply
#: The outcome of one settle item: ``ok`` with ``state``/``run_at``, or ``error``.
SettleResult = s.SettleResult
#: What a ``settle`` claims in the same round trip: ``queues``, ``max``, ``wait``, ``lease``.
ClaimArgs = s.ClaimArgs
#: A heartbeat's reply: the worker's ``state``, and ``cancel`` (its tasks to stop).
HeartbeatReply = s.HeartbeatReply
#: A queue's defaults: ``queue``, ``result_ttl``.
QueueSettings = s.QueueSettingsReply

#: The longest single ``wait`` request a client sends; longer waits are several requests.
WAIT_CHUNK: Final = 60.0


@dataclass(frozen=True, slots=True)
class Settlement:
    """One lease to end inside ``settle``: an ack, a fail or a release.

    Build them with ``Settlement.ack(...)``, ``Settlement.fail(...)`` or
    ``Settlement.release(...)``.
    """

    task_id: int
    lease_token: str
    outcome: s.Outcome
    result: Any = None  # ack
    error: str = ""  # fail
    retry: bool = True  # fail
    delay: float | None = None  # fail, release

    @classmethod
    def ack(cls, task_id: int, lease_token: str, result: Any = None) -> Settlement:
        return cls(task_id, lease_token, s.Outcome.ACK, result=result)

    @classmethod
    def fail(
        cls,
        task_id: int,
        lease_token: str,
        error: str,
        *,
        retry: bool = True,
        delay: float | None = None,
    ) -> Settlement:
        return cls(task_id, lease_token, s.Outcome.FAIL, error=error, retry=retry, delay=delay)

    @classmethod
    def release(cls, task_id: int, lease_token: str, *, delay: float | None = None) -> Settlement:
        return cls(task_id, lease_token, s.Outcome.RELEASE, delay=delay)

    @classmethod
    def cancel(cls, task_id: int, lease_token: str, reason: str = "") -> Settlement:
        """End the lease as ``cancelled`` (the handler was stopped on a cancel request)."""
        return cls(task_id, lease_token, s.Outcome.CANCEL, error=reason)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "task_id": self.task_id,
            "lease_token": self.lease_token,
            "outcome": str(self.outcome),
        }
        if self.outcome is s.Outcome.ACK:
            wire.update(_present(result=self.result))
        elif self.outcome is s.Outcome.FAIL:
            wire.update(error=self.error, retry=self.retry, **_present(delay=self.delay))
        elif self.outcome is s.Outcome.CANCEL:
            wire.update(error=self.error)
        else:
            wire.update(_present(delay=self.delay))
        return wire


class _TasksOf(msgspec.Struct):
    """The claimed tasks of a claim or settle reply (for releasing an abandoned one)."""

    tasks: list[s.LeasedTask] | None = None


class _ReplyHead(msgspec.Struct):
    """What the reader needs of every reply line; the rest is decoded by whoever asked."""

    id: Any = None
    ok: Any = None
    error: Any = None


_HEAD = msgspec.json.Decoder(_ReplyHead)
_TASKS_OF = msgspec.json.Decoder(_TasksOf)
_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    name: msgspec.json.Decoder(op.reply) for name, op in OPS.items()
}
#: Ops that claim tasks: a reply we stopped waiting for still leased them.
_CLAIMING = frozenset({"claim", "settle"})


# ---------------------------------------------------------------------------- input models


class EnqueueRequest(BaseModel):
    """One task for ``enqueue_many`` (plain dicts with the same keys work too).

    Unknown keys are passed through, so arguments added to the protocol later still work.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    queue: str
    payload: Any = None
    priority: int = 0
    delay: float | None = None
    run_at: float | None = None
    max_attempts: int | None = None
    lease: float | None = None
    unique_key: str | None = None
    #: Seconds the finished task is kept; else the queue's default, else retention.
    result_ttl: float | None = None
    #: Parents: task ids, or ``{"index": n}`` for the n-th task of the same enqueue_many.
    after: list[int | dict[str, int]] | None = None
    #: ``cancel`` (default) or ``run``: what happens when a parent ends dead or cancelled.
    on_parent_failure: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The ``enqueue`` argument object: ``payload`` always, other None values left out."""
        wire: dict[str, Any] = {"queue": self.queue, "payload": self.payload}
        wire.update(
            _present(
                priority=self.priority,
                delay=self.delay,
                run_at=self.run_at,
                max_attempts=self.max_attempts,
                lease=self.lease,
                unique_key=self.unique_key,
                result_ttl=self.result_ttl,
                after=self.after,
                on_parent_failure=self.on_parent_failure,
            )
        )
        wire.update(_present(**(self.model_extra or {})))
        return wire


class WorkerRegistration(BaseModel):
    """The ``worker`` object of ``hello``: registers this connection as a worker."""

    model_config = ConfigDict(frozen=True, extra="allow")

    id: str
    #: None: all queues (the broker's default).
    queues: list[str] | None = None
    concurrency: int = 1
    #: Tasks held beyond ``concurrency`` (the broker caps leases at the sum).
    prefetch: int = 0
    meta: dict[str, Any] = Field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class ClientOptions(TypedDict, total=False):
    """Keyword options shared by ``AsyncClient``, ``Client`` and their ``from_url``."""

    token: str | None
    ssl_context: ssl.SSLContext | None
    server_hostname: str | None
    client_name: str
    worker: WorkerRegistration | Mapping[str, Any] | None
    timeout: float | None
    connect_timeout: float
    connect_attempts: int
    reconnect_timeout: float
    busy_retries: int
    claim_margin: float
    send_timeout: float
    max_line_bytes: int


# ------------------------------------------------------------------------------- helpers


def _present(**values: Any) -> dict[str, Any]:
    """The arguments that were given: optional protocol fields are left out, never null."""
    return {name: value for name, value in values.items() if value is not None}


_FRAME_ENCODER = msgspec.json.Encoder(enc_hook=to_jsonable_python)


def _encode_frame(message: Mapping[str, Any]) -> bytes:
    """One compact JSON line. Payloads may be any JSON-able object (models, dataclasses, ...).

    msgspec writes it; it would write NaN and infinity as ``null``, so a frame that has a
    ``null`` in it at all is written again by the standard library, which refuses them.
    """
    try:
        frame = _FRAME_ENCODER.encode(message)
    except (TypeError, ValueError, UnicodeEncodeError, msgspec.EncodeError):
        frame = b"null"  # take the careful path, which says what is wrong
    if b"null" not in frame:
        return frame + b"\n"
    try:
        text = json.dumps(
            message,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
            default=to_jsonable_python,
        )
    except (TypeError, ValueError) as exc:
        raise errors.BadRequest(f"request is not JSON-serializable: {exc}") from exc
    return text.encode("utf-8") + b"\n"


def _decode(op: str, line: bytes) -> Any:
    """The reply line of ``op`` as the op table's reply type."""
    try:
        return _DECODERS[op].decode(line)
    except msgspec.ValidationError as exc:
        raise errors.Internal(f"the broker sent a malformed {op!r} reply: {exc}") from exc


def _enqueue_wire(task: EnqueueRequest | Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(task, EnqueueRequest):
        try:
            task = EnqueueRequest.model_validate(dict(task))
        except ValidationError as exc:
            raise errors.BadRequest(f"invalid task for enqueue_many: {exc}") from exc
    return task.to_wire()


def _backoff_delay(attempt: int) -> float:
    """Exponential backoff with jitter: half fixed, half random, capped."""
    ceiling = min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _error_of(reply: Mapping[str, Any] | _ReplyHead) -> errors.DurableTQError:
    error = reply.error if isinstance(reply, _ReplyHead) else reply.get("error")
    return errors.from_wire(error if isinstance(error, dict) else {})


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
        self.reply: _ReplyHead | None = None
        self.line = b""
        self.lost: tuple[str, BaseException | None] = ("connection lost", None)

    def resolve(self, reply: _ReplyHead, line: bytes) -> None:
        self.reply = reply
        self.line = line
        self._event.set()

    def break_off(self, message: str, cause: BaseException | None) -> None:
        self.lost = (message, cause)
        self._event.set()

    async def wait(self) -> _ReplyHead:
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


class _Connection:
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


# ---------------------------------------------------------------------------- AsyncClient


class AsyncClient:
    """A pipelined connection to a durable_tq broker.

    Use it as an async context manager; the client owns a task group that runs the reply
    reader, so it must be entered and left in the same task::

        async with AsyncClient.from_url("tcp://127.0.0.1:7480", token="s3cret") as client:
            result = await client.enqueue("emails", {"to": "a@example.com"})

    Any number of tasks may call methods concurrently; their requests share the connection.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        client_name: str = CLIENT_NAME,
        worker: WorkerRegistration | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        connect_timeout: float = 10.0,
        connect_attempts: int = 8,
        reconnect_timeout: float = 30.0,
        busy_retries: int = 10,
        claim_margin: float = 30.0,
        send_timeout: float = 60.0,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        """Configure a client; nothing connects until ``async with``.

        :param token: the broker's auth token, if it has tokens configured.
        :param ssl_context: connect with TLS using this context.
        :param server_hostname: the name to check the broker's certificate against
            (default: ``host``).
        :param worker: register this connection as a worker (re-sent on every reconnect).
        :param timeout: default overall timeout per request, in seconds (None: wait for the
            reply however long it takes). ``claim`` uses ``wait + claim_margin`` instead.
        :param connect_timeout: limit for one connection attempt (TCP, TLS and ``hello``).
        :param connect_attempts: attempts per (re)connect before giving up.
        :param reconnect_timeout: total time one (re)connect may take, backoff included.
        :param busy_retries: how often a ``busy`` reply is retried before it is raised.
        :param claim_margin: added to a claim's ``wait`` for its default timeout.
        :param send_timeout: a write the broker does not take within this long breaks the
            connection.
        :param max_line_bytes: the longest reply line accepted.
        """
        if connect_attempts < 1:
            raise errors.ConfigError("connect_attempts must be at least 1")
        if busy_retries < 0:
            raise errors.ConfigError("busy_retries must not be negative")
        self.host = host
        self.port = port
        self._token = token
        self._ssl_context = ssl_context
        self._server_hostname = server_hostname
        self._client_name = client_name
        self._worker = self._registration(worker)
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._connect_attempts = connect_attempts
        self._reconnect_timeout = reconnect_timeout
        self._busy_retries = busy_retries
        self._claim_margin = claim_margin
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
        self._conn: _Connection | None = None
        self._connections: set[_Connection] = set()
        self._connect_lock: anyio.Lock | None = None  # made in the loop that runs us
        self._connect_failures = 0
        self._last_connect_error: errors.DurableTQError | None = None
        self._closed = False

    @staticmethod
    def _registration(
        worker: WorkerRegistration | Mapping[str, Any] | None,
    ) -> WorkerRegistration | None:
        if worker is None or isinstance(worker, WorkerRegistration):
            return worker
        try:
            return WorkerRegistration.model_validate(dict(worker))
        except ValidationError as exc:
            raise errors.ConfigError(f"invalid worker registration: {exc}") from exc

    @classmethod
    def from_url(cls, url: str, **options: Unpack[ClientOptions]) -> AsyncClient:
        """A client for ``tcp://host:port`` or ``tls://host:port``.

        Host defaults to 127.0.0.1 and port to 7480. A token may be given in the URL
        (``tcp://TOKEN@host:port``) or as ``token=``; the argument wins. ``tls://`` without
        an ``ssl_context`` uses ``ssl.create_default_context()``.
        """
        host, port, url_token, tls = _parse_url(url)
        if options.get("token") is None and url_token is not None:
            options["token"] = url_token
        if tls and options.get("ssl_context") is None:
            options["ssl_context"] = ssl.create_default_context()
        return cls(host, port, **options)

    @classmethod
    def from_env(
        cls, *, config_file: str | Path | None = None, **options: Unpack[ClientOptions]
    ) -> AsyncClient:
        """A client for the broker every ``durable-tq`` command would reach.

        ``DURABLE_TQ_URL``, ``DURABLE_TQ_TOKEN`` and ``DURABLE_TQ_CAFILE``, else host, port,
        first token and certificate from the broker's settings (``config_file``, else
        ``DURABLE_TQ_CONFIG``, else ``./durable_tq.toml``; ``DURABLE_TQ_HOST``/``_PORT``),
        else ``tcp://127.0.0.1:7480``. ``token=`` and ``ssl_context=`` win when given.
        docs/clients.md "Finding the broker" has the whole order.
        """
        from durable_tq import locate  # the settings machinery only for those who use it

        target = locate.locate_broker(token=options.get("token"), config_file=config_file)
        options["token"] = target.token
        if options.get("ssl_context") is None:
            options["ssl_context"] = target.ssl_context
        return cls.from_url(target.url, **options)

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        scheme = "tls" if self._ssl_context is not None else "tcp"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def worker_id(self) -> str | None:
        return self._worker.id if self._worker is not None else None

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.usable

    def __repr__(self) -> str:
        status = "connected" if self.connected else "disconnected"
        if self._closed:
            status = "closed"
        worker = f", worker_id={self.worker_id!r}" if self._worker is not None else ""
        return f"<AsyncClient {self.url} {status} server={self.server!r}{worker}>"

    async def __aenter__(self) -> AsyncClient:
        if self._task_group is not None or self._closed:
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
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(exc_type, exc, traceback)

    async def aclose(self) -> None:
        """Close the connection; requests still waiting raise ``ConnectionLost``.

        Leaving the ``async with`` block does this; calling it earlier is allowed.
        """
        if self._closed:
            return
        self._closed = True
        self._conn = None
        for conn in list(self._connections):
            conn.shut("the client was closed", None)
            await conn.close()
        logger.debug("client for %s closed", self.url)

    # ------------------------------------------------------------------ connecting

    async def _ensure_connected(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        if self._closed:
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
            if self._closed:
                await conn.close()
                raise errors.ConnectionLost("the client is closed")
            self._conn = conn
            self._connections.add(conn)
            self._task_group.start_soon(
                self._read_replies, conn, name=f"durable_tq reader #{conn.number}"
            )
            return conn

    async def _connect_with_backoff(self, *, reconnect: bool) -> _Connection:
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
            delay = _backoff_delay(attempt)
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

    async def _open_connection(self) -> _Connection:
        stream: anyio.abc.ByteStream
        try:
            if self._ssl_context is not None:
                stream = await anyio.connect_tcp(
                    self.host,
                    self.port,
                    tls=True,
                    ssl_context=self._ssl_context,
                    tls_hostname=self._server_hostname,
                    tls_standard_compatible=False,
                )
            else:
                stream = await anyio.connect_tcp(self.host, self.port)
        except (OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            raise errors.ConnectionLost(f"cannot connect to {self.url}: {exc!r}") from exc
        receiver = BufferedByteReceiveStream(stream)
        conn = _Connection(next(self._connection_numbers), stream, receiver)
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

    async def _say_hello(self, conn: _Connection) -> dict[str, Any]:
        request_id = next(self._ids)
        hello: dict[str, Any] = {
            "id": request_id,
            "op": "hello",
            "version": PROTOCOL_VERSION,
            "client": self._client_name,
        }
        if self._token is not None:
            hello["token"] = self._token
        if self._worker is not None:
            hello["worker"] = self._worker.to_wire()
        try:
            await conn.stream.send(_encode_frame(hello))
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
            raise _error_of(reply)
        return reply

    # ------------------------------------------------------------------ reading

    async def _read_replies(self, conn: _Connection) -> None:
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
            self._connections.discard(conn)
            await conn.close()
        if cause is not None and not conn.said_bye:
            logger.warning("connection #%d: %s", conn.number, message)

    def _describe_close(self, conn: _Connection) -> str:
        if conn.close_error is not None:
            error = conn.close_error
            return f"{self.url} closed the connection: {error.code}: {error.message}"
        return f"{self.url} closed the connection"

    def _dispatch(self, conn: _Connection, line: bytes) -> None:
        try:
            reply = _HEAD.decode(line)
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

    def _note_error(self, conn: _Connection, reply: _ReplyHead) -> None:
        error = _error_of(reply)
        if error.closes_connection:
            # Send nothing more here; the broker is about to close.
            conn.usable = False
            if conn.close_error is None:
                conn.close_error = error
        if reply.id is None:
            logger.warning(
                "connection #%d: broker error: %s: %s", conn.number, error.code, error.message
            )

    def _release_abandoned(self, reply: _ReplyHead, line: bytes) -> None:
        """A claim we gave up on (timeout, cancel) still leased tasks: hand them back."""
        if reply.ok is not True or self._task_group is None or self._closed:
            return
        try:
            tasks = _TASKS_OF.decode(line).tasks or []
        except msgspec.ValidationError:
            logger.exception("could not read the reply of an abandoned claim")
            return
        for task in tasks:
            self._task_group.start_soon(self._release_quietly, task)

    async def _release_quietly(self, task: ClaimedTask) -> None:
        try:
            await self.release(task.task_id, task.lease_token)
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

    async def request(
        self,
        op: str,
        args: Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Send any operation and return the reply's result fields (without ``id``/``ok``).

        Arguments come from ``args`` and keyword arguments; they are sent as given (None is
        sent as null). ``timeout`` bounds the whole call, retries and reconnects included;
        None uses the client's default. A reply with ``ok: false`` raises the matching
        ``errors`` exception; ``busy`` is retried first.
        """
        arguments = {**(args or {}), **kwargs}
        line = await self._line(op, arguments, timeout)
        reply = msgspec.json.decode(line)
        return {name: value for name, value in reply.items() if name not in ("id", "ok")}

    async def _call(self, op: str, arguments: dict[str, Any], timeout: float | None) -> Any:
        """Send ``op`` and return its reply as the op table's reply type."""
        return _decode(op, await self._line(op, arguments, timeout))

    async def _line(self, op: str, arguments: dict[str, Any], timeout: float | None) -> bytes:
        """The ok reply line of ``op`` (errors raised), within ``timeout``."""
        limit = self._timeout if timeout is None else timeout
        if limit is None:
            return await self._request_with_retries(op, arguments)
        try:
            with anyio.fail_after(limit):
                return await self._request_with_retries(op, arguments)
        except TimeoutError as exc:
            if isinstance(exc, errors.DurableTQError):
                raise
            raise RequestTimeout(f"no reply to {op!r} from {self.url} within {limit} s") from exc

    async def _request_with_retries(self, op: str, arguments: dict[str, Any]) -> bytes:
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

    async def _exchange(self, conn: _Connection, op: str, arguments: Mapping[str, Any]) -> bytes:
        request_id = next(self._ids)
        frame = _encode_frame({"id": request_id, "op": op, **arguments})
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
        raise _error_of(reply)

    def _check_frame_size(self, op: str, frame: bytes) -> None:
        # A broker that announces its limit lets us refuse an oversized request here,
        # instead of it closing the connection under every other request in flight.
        limit = self.hello_reply.get("max_frame_bytes")
        if isinstance(limit, int) and len(frame) - 1 > limit:
            raise errors.FrameTooLarge(
                f"{op!r} request is {len(frame) - 1} bytes; the broker accepts {limit}"
            )

    async def _send(self, conn: _Connection, frame: bytes, op: str) -> None:
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

    async def _write(self, conn: _Connection, data: bytes, outbox: _Outbox) -> None:
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

    # ------------------------------------------------------------------ operations

    async def enqueue(
        self,
        queue: str,
        payload: Any,
        *,
        priority: int = 0,
        delay: float | None = None,
        run_at: float | None = None,
        max_attempts: int | None = None,
        lease: float | None = None,
        unique_key: str | None = None,
        result_ttl: float | None = None,
        after: Sequence[int] | None = None,
        on_parent_failure: str | None = None,
        timeout: float | None = None,
    ) -> EnqueueResult:
        """Add a task. ``payload`` is any JSON-able object; higher ``priority`` runs first.

        ``after``: parent task ids; the task waits (state ``waiting``) until all of them
        succeeded. ``result_ttl``: seconds the finished task is kept.
        """
        args = {"queue": queue, "payload": payload, "priority": priority}
        args.update(
            _present(
                delay=delay,
                run_at=run_at,
                max_attempts=max_attempts,
                lease=lease,
                unique_key=unique_key,
                result_ttl=result_ttl,
                after=None if after is None else list(after),
                on_parent_failure=on_parent_failure,
            )
        )
        result: EnqueueResult = await self._call("enqueue", args, timeout)
        return result

    async def enqueue_many(
        self,
        tasks: Sequence[EnqueueRequest | Mapping[str, Any]],
        *,
        timeout: float | None = None,
    ) -> list[EnqueueResult]:
        """Add several tasks in one all-or-nothing request; results in the same order."""
        wire = [_enqueue_wire(task) for task in tasks]
        if not wire:
            return []
        reply: s.EnqueueManyReply = await self._call("enqueue_many", {"tasks": wire}, timeout)
        created = reply.created or [True] * len(reply.task_ids)
        if len(reply.task_ids) != len(wire) or len(created) != len(wire):
            raise errors.Internal(
                f"enqueue_many sent {len(wire)} tasks but got {len(reply.task_ids)} ids back"
            )
        return [
            EnqueueResult(task_id=task_id, created=was_created)
            for task_id, was_created in zip(reply.task_ids, created, strict=True)
        ]

    async def claim(
        self,
        queues: str | Sequence[str],
        *,
        max: int = 1,
        wait: float = 0,
        lease: float | None = None,
        timeout: float | None = None,
    ) -> list[ClaimedTask]:
        """Lease up to ``max`` ready tasks; with ``wait``, long-poll up to that many seconds.

        Returns an empty list when nothing came. The default timeout is ``wait`` plus the
        client's ``claim_margin``. A claim given up on (timeout, cancel) whose reply still
        brings tasks releases them, so they do not sit leased until their lease expires.
        """
        queue_list = [queues] if isinstance(queues, str) else list(queues)
        args: dict[str, Any] = {"queues": queue_list, "max": max, "wait": wait}
        args.update(_present(lease=lease))
        limit = timeout if timeout is not None else wait + self._claim_margin
        reply: s.ClaimReply = await self._call("claim", args, limit)
        return reply.tasks

    async def ack(
        self,
        task_id: int,
        lease_token: str,
        result: Any = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Mark a claimed task ``succeeded``, optionally storing a JSON-able ``result``."""
        args: dict[str, Any] = {"task_id": task_id, "lease_token": lease_token}
        args.update(_present(result=result))
        await self._line("ack", args, timeout)

    async def fail(
        self,
        task_id: int,
        lease_token: str,
        error: str,
        *,
        retry: bool = True,
        delay: float | None = None,
        timeout: float | None = None,
    ) -> FailResult:
        """Record a failed attempt; it is retried (with backoff, or after ``delay``) or dies."""
        args: dict[str, Any] = {
            "task_id": task_id,
            "lease_token": lease_token,
            "error": error,
            "retry": retry,
        }
        args.update(_present(delay=delay))
        result: FailResult = await self._call("fail", args, timeout)
        return result

    async def release(
        self,
        task_id: int,
        lease_token: str,
        *,
        delay: float | None = None,
        timeout: float | None = None,
    ) -> None:
        """Give a claimed task back without counting the attempt."""
        args: dict[str, Any] = {"task_id": task_id, "lease_token": lease_token}
        args.update(_present(delay=delay))
        await self._line("release", args, timeout)

    async def settle(
        self,
        settles: Sequence[Settlement],
        *,
        claim: ClaimArgs | None = None,
        timeout: float | None = None,
    ) -> SettleReply:
        """End many leases in one request and one commit, and optionally claim more.

        Each ``Settlement`` gets its own result, in order (``results[i].ok``, ``state``,
        ``run_at``, or ``error`` such as ``lease_lost``): one stale lease does not fail the
        others. With ``claim``, the broker then claims up to ``claim.max`` tasks in the same
        round trip (long-polling up to ``claim.wait``), returned in ``tasks``. For a
        registered worker it also counts as a heartbeat: ``worker_state`` says what to do.
        """
        args: dict[str, Any] = {"settles": [item.to_wire() for item in settles]}
        limit = timeout
        if claim is not None:
            args["claim"] = msgspec.to_builtins(claim)
            if limit is None:
                limit = claim.wait + self._claim_margin
        reply: SettleReply = await self._call("settle", args, limit)
        if len(reply.results) != len(settles):
            raise errors.Internal(
                f"settle sent {len(settles)} items but got {len(reply.results)} results back"
            )
        return reply

    async def extend(
        self,
        task_id: int,
        lease_token: str,
        lease: float,
        *,
        timeout: float | None = None,
    ) -> float:
        """Set the lease to ``lease`` seconds from now; returns the new ``lease_expires_at``."""
        args = {"task_id": task_id, "lease_token": lease_token, "lease": lease}
        reply: s.ExtendReply = await self._call("extend", args, timeout)
        return reply.lease_expires_at

    async def heartbeat(self, *, timeout: float | None = None) -> str:
        """For a registered worker: returns ``running``, ``quiet`` or ``terminate``."""
        reply: s.HeartbeatReply = await self._call("heartbeat", {}, timeout)
        return str(reply.state)

    async def heartbeat_reply(self, *, timeout: float | None = None) -> HeartbeatReply:
        """``heartbeat``, with the whole reply: ``state`` and ``cancel`` (the ids of this
        worker's tasks whose cancel was requested)."""
        reply: HeartbeatReply = await self._call("heartbeat", {}, timeout)
        return reply

    async def progress(
        self,
        task_id: int,
        lease_token: str,
        fraction: float,
        message: str | None = None,
        *,
        timeout: float | None = None,
    ) -> bool:
        """Record a leased task's progress (0..1); True when its cancel was requested."""
        args = {"task_id": task_id, "lease_token": lease_token, "fraction": fraction}
        args.update(_present(message=message))
        reply: s.ProgressReply = await self._call("progress", args, timeout)
        return reply.cancel

    async def wait(self, task_id: int, *, timeout: float = 30.0) -> TaskInfo:
        """Wait until the task is finished (``succeeded``, ``dead`` or ``cancelled``) and
        return it; raises ``errors.WaitTimeout`` when ``timeout`` seconds pass first.

        The broker holds the request until the task finishes (no polling). A broken
        connection or a broker restart is ridden out: the client reconnects and waits again
        until ``timeout``. ``errors.NotFound`` if there is no such task (or it was deleted).
        """
        deadline = anyio.current_time() + timeout
        last: TaskInfo | None = None
        while True:
            left = deadline - anyio.current_time()
            if left <= 0:
                break
            chunk = min(left, WAIT_CHUNK)
            try:
                # The reply comes after up to ``chunk`` seconds: give the request room.
                reply: s.WaitReply = await self._call(
                    "wait", {"task_id": task_id, "timeout": chunk}, chunk + 30.0
                )
            except (errors.ConnectionLost, errors.ShuttingDown, RequestTimeout) as exc:
                logger.info("wait for task %d: %s; waiting again", task_id, exc)
                await anyio.sleep(min(_BACKOFF_BASE, max(deadline - anyio.current_time(), 0)))
                continue
            last = reply.task
            if reply.done:
                return reply.task
        raise errors.WaitTimeout(
            f"task {task_id} did not finish within {timeout:g} s"
            + ("" if last is None else f" (it is {last.state})"),
            task=last,
            task_id=task_id,
        )

    async def queue_settings(
        self,
        queue: str,
        *,
        result_ttl: float | None = None,
        clear_result_ttl: bool = False,
        timeout: float | None = None,
    ) -> QueueSettings:
        """Set a queue's defaults and return them all; with no argument, just read them.

        ``result_ttl``: seconds its finished tasks are kept (a task's own ``result_ttl``
        wins); ``clear_result_ttl``: fall back to the broker's ``retention`` again.
        """
        args: dict[str, Any] = {"queue": queue}
        if clear_result_ttl:
            args["result_ttl"] = None
        elif result_ttl is not None:
            args["result_ttl"] = result_ttl
        reply: QueueSettings = await self._call("queue_settings", args, timeout)
        return reply

    async def get(self, task_id: int, *, timeout: float | None = None) -> TaskInfo:
        """Everything about one task; ``errors.NotFound`` if there is no such task."""
        reply: s.GetReply = await self._call("get", {"task_id": task_id}, timeout)
        return reply.task

    async def cancel(self, task_id: int, *, timeout: float | None = None) -> str:
        """Cancel a task; returns ``cancelled``, or ``cancelling`` for a running (leased)
        task: its worker is told to stop it, and it ends ``cancelled`` (``wait`` for it).

        A ``succeeded`` task raises ``errors.Conflict``.
        """
        reply: s.CancelReply = await self._call("cancel", {"task_id": task_id}, timeout)
        return str(reply.state)

    async def stats(self, *, timeout: float | None = None) -> Stats:
        """Counts per queue and state, live workers and connections."""
        stats: Stats = await self._call("stats", {}, timeout)
        return stats

    async def list_tasks(
        self,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 100,
        after_id: int | None = None,
        *,
        timeout: float | None = None,
    ) -> TaskPage:
        """One page of tasks, filtered by queue and/or state (the ``list`` op)."""
        args: dict[str, Any] = {"limit": limit}
        args.update(_present(queue=queue, state=state, after_id=after_id))
        page: TaskPage = await self._call("list", args, timeout)
        return page

    async def iter_tasks(
        self,
        queue: str | None = None,
        state: str | None = None,
        *,
        page_size: int = 100,
    ) -> AsyncIterator[TaskInfo]:
        """Every matching task, fetched page by page."""
        after_id: int | None = None
        while True:
            page = await self.list_tasks(queue, state, page_size, after_id)
            for task in page.tasks:
                yield task
            if page.next_after_id is None or not page.tasks:
                return
            after_id = page.next_after_id

    async def requeue(
        self,
        task_ids: Sequence[int] | None = None,
        *,
        queue: str | None = None,
        state: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Put ``dead``/``cancelled`` tasks back to ``queued`` with attempts reset.

        Give ``task_ids``, or ``queue`` and ``state``. Returns how many were requeued.
        """
        reply = await self.requeue_report(task_ids, queue=queue, state=state, timeout=timeout)
        return reply.count

    async def requeue_report(
        self,
        task_ids: Sequence[int] | None = None,
        *,
        queue: str | None = None,
        state: str | None = None,
        timeout: float | None = None,
    ) -> s.RequeueReply:
        """Like :meth:`requeue`, with the tasks that stayed and why (``skipped``)."""
        args = _present(
            task_ids=list(task_ids) if task_ids is not None else None, queue=queue, state=state
        )
        reply: s.RequeueReply = await self._call("requeue", args, timeout)
        return reply

    async def pause(self, queue: str, *, timeout: float | None = None) -> None:
        """Stop handing out claims from ``queue`` (enqueues are still accepted)."""
        await self._line("pause", {"queue": queue}, timeout)

    async def resume(self, queue: str, *, timeout: float | None = None) -> None:
        """Undo ``pause``."""
        await self._line("resume", {"queue": queue}, timeout)

    async def purge(
        self, queue: str, state: str | None = None, *, timeout: float | None = None
    ) -> int:
        """Delete a queue's tasks (only ``state`` if given; never ``leased``); returns count."""
        args: dict[str, Any] = {"queue": queue}
        args.update(_present(state=state))
        reply: s.CountReply = await self._call("purge", args, timeout)
        return reply.count

    async def workers(self, *, timeout: float | None = None) -> list[WorkerInfo]:
        """The registered workers."""
        reply: s.WorkersReply = await self._call("workers", {}, timeout)
        return reply.workers

    async def worker_state(
        self, worker_id: str, state: str, *, timeout: float | None = None
    ) -> None:
        """Ask a worker to be ``running``, ``quiet`` or ``terminate`` (at its next heartbeat)."""
        await self._line("worker_state", {"worker_id": worker_id, "state": state}, timeout)

    async def bye(self, *, timeout: float | None = None) -> None:
        """End this connection politely. A later request opens a new one."""
        await self._line("bye", {}, timeout)


def _parse_url(url: str) -> tuple[str, int, str | None, bool]:
    parts = urlsplit(url)
    if parts.scheme not in ("tcp", "tls"):
        raise errors.ConfigError(f"broker URL must start with tcp:// or tls://, got {url!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise errors.ConfigError(f"bad port in broker URL {url!r}") from exc
    host = parts.hostname or DEFAULT_HOST
    secret = parts.password if parts.password is not None else parts.username
    token = unquote(secret) if secret else None
    return host, port, token, parts.scheme == "tls"


# ---------------------------------------------------------------------------------- Client

#: Blocking clients not closed yet. Their portal thread is a daemon: left to garbage collection
#: during interpreter shutdown, stopping it would wait forever on the frozen thread, so the
#: ones still open at exit are closed while the thread still runs.
_open_clients: weakref.WeakSet[Client] = weakref.WeakSet()


@atexit.register
def _close_open_clients() -> None:
    for client in list(_open_clients):
        try:
            client.close()
        except Exception:
            logger.exception("closing %r at interpreter exit failed", client)


class Client:
    """The blocking client: an ``AsyncClient`` running in a portal thread.

    Every method calls the ``AsyncClient`` method of the same name, so behaviour (retries,
    reconnects, errors) is identical. Methods may be called from several threads at once;
    their requests are pipelined on the one connection. Connects on construction::

        with Client.from_url("tcp://127.0.0.1:7480") as client:
            client.enqueue("emails", {"to": "a@example.com"})
    """

    _async: AsyncClient
    _portal: BlockingPortal
    _exit_stack: ExitStack

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        **options: Unpack[ClientOptions],
    ) -> None:
        self._start(AsyncClient(host, port, **options))

    @classmethod
    def from_url(cls, url: str, **options: Unpack[ClientOptions]) -> Client:
        """Like ``AsyncClient.from_url``; connects before returning."""
        client = cls.__new__(cls)
        client._start(AsyncClient.from_url(url, **options))
        return client

    @classmethod
    def from_env(
        cls, *, config_file: str | Path | None = None, **options: Unpack[ClientOptions]
    ) -> Client:
        """Like ``AsyncClient.from_env``; connects before returning."""
        client = cls.__new__(cls)
        client._start(AsyncClient.from_env(config_file=config_file, **options))
        return client

    def _start(self, async_client: AsyncClient) -> None:
        self._async = async_client
        self._exit_stack = ExitStack()
        try:
            self._portal = self._exit_stack.enter_context(start_blocking_portal(backend="asyncio"))
            self._exit_stack.enter_context(self._portal.wrap_async_context_manager(async_client))
        except BaseException:
            self._exit_stack.close()
            raise
        _open_clients.add(self)

    def close(self) -> None:
        """Close the connection and stop the portal thread. Safe to call twice."""
        _open_clients.discard(self)
        self._exit_stack.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self._async!r}>"

    @property
    def async_client(self) -> AsyncClient:
        return self._async

    @property
    def server(self) -> str | None:
        return self._async.server

    @property
    def heartbeat_interval(self) -> float | None:
        return self._async.heartbeat_interval

    def _call(self, method: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return self._portal.call(functools.partial(method, *args, **kwargs))
        except RuntimeError as exc:
            if "portal is not running" in str(exc):
                raise errors.ConnectionLost("the client is closed") from exc
            raise

    def request(
        self,
        op: str,
        args: Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        return self._call(self._async.request, op, args, timeout=timeout, **kwargs)

    def enqueue(
        self,
        queue: str,
        payload: Any,
        *,
        priority: int = 0,
        delay: float | None = None,
        run_at: float | None = None,
        max_attempts: int | None = None,
        lease: float | None = None,
        unique_key: str | None = None,
        result_ttl: float | None = None,
        after: Sequence[int] | None = None,
        on_parent_failure: str | None = None,
        timeout: float | None = None,
    ) -> EnqueueResult:
        return self._call(
            self._async.enqueue,
            queue,
            payload,
            priority=priority,
            delay=delay,
            run_at=run_at,
            max_attempts=max_attempts,
            lease=lease,
            unique_key=unique_key,
            result_ttl=result_ttl,
            after=after,
            on_parent_failure=on_parent_failure,
            timeout=timeout,
        )

    def enqueue_many(
        self,
        tasks: Sequence[EnqueueRequest | Mapping[str, Any]],
        *,
        timeout: float | None = None,
    ) -> list[EnqueueResult]:
        return self._call(self._async.enqueue_many, tasks, timeout=timeout)

    def claim(
        self,
        queues: str | Sequence[str],
        *,
        max: int = 1,
        wait: float = 0,
        lease: float | None = None,
        timeout: float | None = None,
    ) -> list[ClaimedTask]:
        return self._call(
            self._async.claim, queues, max=max, wait=wait, lease=lease, timeout=timeout
        )

    def ack(
        self, task_id: int, lease_token: str, result: Any = None, *, timeout: float | None = None
    ) -> None:
        self._call(self._async.ack, task_id, lease_token, result, timeout=timeout)

    def fail(
        self,
        task_id: int,
        lease_token: str,
        error: str,
        *,
        retry: bool = True,
        delay: float | None = None,
        timeout: float | None = None,
    ) -> FailResult:
        return self._call(
            self._async.fail,
            task_id,
            lease_token,
            error,
            retry=retry,
            delay=delay,
            timeout=timeout,
        )

    def release(
        self,
        task_id: int,
        lease_token: str,
        *,
        delay: float | None = None,
        timeout: float | None = None,
    ) -> None:
        self._call(self._async.release, task_id, lease_token, delay=delay, timeout=timeout)

    def settle(
        self,
        settles: Sequence[Settlement],
        *,
        claim: ClaimArgs | None = None,
        timeout: float | None = None,
    ) -> SettleReply:
        return self._call(self._async.settle, settles, claim=claim, timeout=timeout)

    def extend(
        self, task_id: int, lease_token: str, lease: float, *, timeout: float | None = None
    ) -> float:
        return self._call(self._async.extend, task_id, lease_token, lease, timeout=timeout)

    def heartbeat(self, *, timeout: float | None = None) -> str:
        return self._call(self._async.heartbeat, timeout=timeout)

    def heartbeat_reply(self, *, timeout: float | None = None) -> HeartbeatReply:
        return self._call(self._async.heartbeat_reply, timeout=timeout)

    def progress(
        self,
        task_id: int,
        lease_token: str,
        fraction: float,
        message: str | None = None,
        *,
        timeout: float | None = None,
    ) -> bool:
        return self._call(
            self._async.progress, task_id, lease_token, fraction, message, timeout=timeout
        )

    def wait(self, task_id: int, *, timeout: float = 30.0) -> TaskInfo:
        return self._call(self._async.wait, task_id, timeout=timeout)

    def queue_settings(
        self,
        queue: str,
        *,
        result_ttl: float | None = None,
        clear_result_ttl: bool = False,
        timeout: float | None = None,
    ) -> QueueSettings:
        return self._call(
            self._async.queue_settings,
            queue,
            result_ttl=result_ttl,
            clear_result_ttl=clear_result_ttl,
            timeout=timeout,
        )

    def get(self, task_id: int, *, timeout: float | None = None) -> TaskInfo:
        return self._call(self._async.get, task_id, timeout=timeout)

    def cancel(self, task_id: int, *, timeout: float | None = None) -> str:
        return self._call(self._async.cancel, task_id, timeout=timeout)

    def stats(self, *, timeout: float | None = None) -> Stats:
        return self._call(self._async.stats, timeout=timeout)

    def list_tasks(
        self,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 100,
        after_id: int | None = None,
        *,
        timeout: float | None = None,
    ) -> TaskPage:
        return self._call(self._async.list_tasks, queue, state, limit, after_id, timeout=timeout)

    def iter_tasks(
        self, queue: str | None = None, state: str | None = None, *, page_size: int = 100
    ) -> Iterator[TaskInfo]:
        """Every matching task, fetched page by page."""
        after_id: int | None = None
        while True:
            page = self.list_tasks(queue, state, page_size, after_id)
            yield from page.tasks
            if page.next_after_id is None or not page.tasks:
                return
            after_id = page.next_after_id

    def requeue(
        self,
        task_ids: Sequence[int] | None = None,
        *,
        queue: str | None = None,
        state: str | None = None,
        timeout: float | None = None,
    ) -> int:
        return self._call(self._async.requeue, task_ids, queue=queue, state=state, timeout=timeout)

    def requeue_report(
        self,
        task_ids: Sequence[int] | None = None,
        *,
        queue: str | None = None,
        state: str | None = None,
        timeout: float | None = None,
    ) -> s.RequeueReply:
        return self._call(
            self._async.requeue_report, task_ids, queue=queue, state=state, timeout=timeout
        )

    def pause(self, queue: str, *, timeout: float | None = None) -> None:
        self._call(self._async.pause, queue, timeout=timeout)

    def resume(self, queue: str, *, timeout: float | None = None) -> None:
        self._call(self._async.resume, queue, timeout=timeout)

    def purge(self, queue: str, state: str | None = None, *, timeout: float | None = None) -> int:
        return self._call(self._async.purge, queue, state, timeout=timeout)

    def workers(self, *, timeout: float | None = None) -> list[WorkerInfo]:
        return self._call(self._async.workers, timeout=timeout)

    def worker_state(self, worker_id: str, state: str, *, timeout: float | None = None) -> None:
        self._call(self._async.worker_state, worker_id, state, timeout=timeout)

    def bye(self, *, timeout: float | None = None) -> None:
        self._call(self._async.bye, timeout=timeout)
