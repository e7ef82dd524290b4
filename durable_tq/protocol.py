"""Protocol v1 names, kept where earlier code imported them from.

The wire now lives in :mod:`durable_tq.wire`: the op table (``wire.ops``), the request and
reply types (``wire.schema``) and the line codec (``wire.codec``). New code imports those.
"""

from __future__ import annotations

from durable_tq.wire.codec import (
    FrameRejected,
    describe_validation,
    dumps_value,
    encode,
    error_reply,
    ok_reply,
    parse_line,
)
from durable_tq.wire.ops import OPS, REQUESTS
from durable_tq.wire.schema import *  # noqa: F403  (the request types, states, limits)
from durable_tq.wire.schema import (
    PROTOCOL_VERSION,
    SERVER_NAME,
    RequestId,
    TaskState,
    WorkerCommand,
)

__all__ = [
    "OPS",
    "PROTOCOL_VERSION",
    "REQUESTS",
    "SERVER_NAME",
    "FrameRejected",
    "RequestId",
    "TaskState",
    "WorkerCommand",
    "describe_validation",
    "dumps_value",
    "encode",
    "error_reply",
    "ok_reply",
    "parse_line",
]
