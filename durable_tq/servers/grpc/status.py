"""Wire error codes as gRPC status codes (docs/grpc.md, "Errors").

Every error ends the call with the status code below, the error's message as the status
details, and two ways to read the wire code, for clients that have either:

- trailing metadata ``durable-tq-error-code`` (and ``durable-tq-retry-after`` for ``busy``);
- the rich status (``grpc-status-details-bin``): a ``google.rpc.ErrorInfo`` with
  ``reason`` = the wire code and ``domain`` = ``durable_tq``, plus a ``google.rpc.RetryInfo``
  with the delay for ``busy``.

``conflict`` and ``lease_lost`` both map to FAILED_PRECONDITION (the task is not in a state
that allows the call; ALREADY_EXISTS would suggest a create that collided, which no op is:
a duplicate ``unique_key`` is not an error); the wire code tells them apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from durable_tq import errors

DOMAIN = "durable_tq"
CODE_KEY = "durable-tq-error-code"
RETRY_AFTER_KEY = "durable-tq-retry-after"

#: Wire error code -> gRPC status code.
STATUS_CODES: dict[str, grpc.StatusCode] = {
    "bad_request": grpc.StatusCode.INVALID_ARGUMENT,
    "unsupported_version": grpc.StatusCode.INVALID_ARGUMENT,
    "unknown_op": grpc.StatusCode.UNIMPLEMENTED,
    "hello_required": grpc.StatusCode.FAILED_PRECONDITION,
    "unauthorized": grpc.StatusCode.UNAUTHENTICATED,
    "forbidden": grpc.StatusCode.PERMISSION_DENIED,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "conflict": grpc.StatusCode.FAILED_PRECONDITION,
    "lease_lost": grpc.StatusCode.FAILED_PRECONDITION,
    "busy": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "frame_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "too_many_connections": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "shutting_down": grpc.StatusCode.UNAVAILABLE,
    "internal": grpc.StatusCode.INTERNAL,
}


def status_code(error: errors.DurableTQError) -> grpc.StatusCode:
    return STATUS_CODES.get(error.code, grpc.StatusCode.INTERNAL)


def to_status(error: errors.DurableTQError) -> _Status:
    """The status a call ends with for ``error``: code, message, details, metadata."""
    code = status_code(error)
    info = error_details_pb2.ErrorInfo(reason=error.code, domain=DOMAIN)
    for key, value in error.details.items():
        info.metadata[key] = str(value)
    details = [_pack(info)]
    metadata: list[tuple[str, str]] = [(CODE_KEY, error.code)]
    retry_after = _retry_after(error)
    if retry_after is not None:
        seconds = math.floor(retry_after)
        delay = duration_pb2.Duration(seconds=seconds, nanos=round((retry_after - seconds) * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        metadata.append((RETRY_AFTER_KEY, repr(retry_after)))
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=error.message, details=details
    )
    converted = rpc_status.to_status(status)
    return _Status(
        code=converted.code,
        details=converted.details,
        trailing_metadata=(*converted.trailing_metadata, *metadata),
    )


def _retry_after(error: errors.DurableTQError) -> float | None:
    value = error.details.get("retry_after")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@dataclass(frozen=True)
class _Status:
    """What ``context.abort`` takes (``grpc.Status`` is an abstract marker class)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]
