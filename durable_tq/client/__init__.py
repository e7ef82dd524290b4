"""The client library: a pipelined ``AsyncClient`` (anyio) and a blocking ``Client`` over it.

Both speak the protocol version of ``wire.schema.PROTOCOL_VERSION`` (shared/PROTOCOL.md) over
one TCP (or TLS) connection with newline-delimited JSON. ``AsyncClient`` sends requests without
waiting for earlier replies; one background reader task per connection matches replies to
requests by ``id``. ``Client`` is the same object driven from a blocking portal thread, so sync
code gets identical behaviour.

Retries, in short (docs/clients.md has the why):

* ``busy`` replies are retried after the broker's ``retry_after``, up to ``busy_retries`` times.
* A ``shutting_down`` reply (the broker refused the request while stopping) is retried once,
  on a new connection.
* A lost connection is re-opened by the next request (exponential backoff with jitter), and
  ``hello`` is sent again with the same worker registration.
* A request that was on the wire when the connection broke is **not** re-sent: the broker may
  have committed it. It raises ``errors.ConnectionLost``. Only read-only ops (``get``,
  ``stats``, ``list``, ``workers``) are re-sent, once.

The parts:

    url.py        broker URLs (``tcp://[TOKEN@]HOST:PORT``, ``tls://``): the one parser
    types.py      the public request and reply types (the op table's, by their client names)
    codec.py      request frames out, reply lines in
    transport.py  connections, hello, the reply reader, pipelined sends, retries, timeouts
    aio.py        ``AsyncClient``: one typed method per operation
    blocking.py   ``Client``: the blocking facade over ``AsyncClient``
"""

from __future__ import annotations

from durable_tq.client.aio import CLIENT_NAME, AsyncClient
from durable_tq.client.blocking import Client
from durable_tq.client.transport import MAX_LINE_BYTES, SAFE_TO_RESEND
from durable_tq.client.types import (
    ClaimArgs,
    ClaimedTask,
    ClientOptions,
    EnqueueRequest,
    EnqueueResult,
    ExtendReply,
    FailResult,
    HeartbeatReply,
    QueueSettings,
    QueueStats,
    Settlement,
    SettleReply,
    SettleResult,
    Stats,
    TaskInfo,
    TaskPage,
    WorkerInfo,
    WorkerRegistration,
)
from durable_tq.client.url import DEFAULT_HOST, DEFAULT_PORT
from durable_tq.errors import RequestTimeout
from durable_tq.wire.schema import PROTOCOL_VERSION

__all__ = [
    "CLIENT_NAME",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "MAX_LINE_BYTES",
    "PROTOCOL_VERSION",
    "SAFE_TO_RESEND",
    "AsyncClient",
    "ClaimArgs",
    "ClaimedTask",
    "Client",
    "ClientOptions",
    "EnqueueRequest",
    "EnqueueResult",
    "ExtendReply",
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
