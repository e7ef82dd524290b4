"""The exception tree of durable_tq; every error knows its wire code (PROTOCOL.md).

    DurableTQError                      root; ``code`` is the wire error code
    ├── ProtocolError
    │   ├── BadRequest                  bad_request
    │   ├── UnknownOp                   unknown_op
    │   ├── HelloRequired               hello_required
    │   ├── UnsupportedVersion          unsupported_version   (closes the connection)
    │   └── FrameTooLarge               frame_too_large       (closes the connection)
    ├── Unauthorized                    unauthorized          (closes the connection)
    ├── Forbidden                       forbidden: the token's role does not allow the op
    ├── NotFound                        not_found
    ├── LeaseLost                       lease_lost
    ├── Conflict                        conflict
    ├── Busy                            busy (carries ``retry_after``)
    ├── TooManyConnections              too_many_connections  (closes the connection)
    ├── ShuttingDown                    shutting_down         (closes the connection)
    ├── Internal                        internal
    │   └── StorageError                internal: SQLite failed (disk full, I/O error, locked)
    ├── ConnectionLost                  client side only: the socket broke (never on the wire)
    ├── RequestTimeout                  client side only: no reply in time (also a TimeoutError)
    ├── WaitTimeout                     client side only: ``wait`` ran out first
    ├── TaskFailed                      client side only: an awaited task ended dead or cancelled
    └── ConfigError                     settings that cannot be used (never on the wire)

Raise these, never bare exceptions, across module boundaries; keep the cause with ``from``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DurableTQError(Exception):
    """Root of every durable_tq error."""

    code: ClassVar[str] = "internal"
    #: Whether the broker closes the connection after sending this error.
    closes_connection: ClassVar[bool] = False

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details: dict[str, Any] = details

    def to_wire(self) -> dict[str, Any]:
        """The ``error`` object of a reply."""
        return {"code": self.code, "message": self.message, **self.details}


class ProtocolError(DurableTQError):
    """The request itself is wrong."""


class BadRequest(ProtocolError):
    code = "bad_request"


class UnknownOp(ProtocolError):
    code = "unknown_op"


class HelloRequired(ProtocolError):
    code = "hello_required"


class UnsupportedVersion(ProtocolError):
    code = "unsupported_version"
    closes_connection = True


class FrameTooLarge(ProtocolError):
    code = "frame_too_large"
    closes_connection = True


class Unauthorized(DurableTQError):
    code = "unauthorized"
    closes_connection = True


class Forbidden(DurableTQError):
    """The session's token has a role that does not allow this op; the connection stays open."""

    code = "forbidden"


class NotFound(DurableTQError):
    code = "not_found"


class LeaseLost(DurableTQError):
    code = "lease_lost"


class Conflict(DurableTQError):
    code = "conflict"


class Busy(DurableTQError):
    code = "busy"

    def __init__(self, message: str = "", *, retry_after: float = 1.0, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class TooManyConnections(DurableTQError):
    code = "too_many_connections"
    closes_connection = True


class ShuttingDown(DurableTQError):
    code = "shutting_down"
    closes_connection = True


class Internal(DurableTQError):
    code = "internal"


class StorageError(Internal):
    """SQLite failed underneath us: full disk, I/O error, a lock we could not get."""


class ConnectionLost(DurableTQError):
    """Client side: the connection to the broker broke or could not be made."""

    code = "connection_lost"


class RequestTimeout(DurableTQError, TimeoutError):
    """Client side: no reply within the request's ``timeout``.

    The broker may still carry the request out (and, for writes, commit it).
    """

    code = "timeout"


class WaitTimeout(DurableTQError, TimeoutError):
    """Client side: the task did not finish within ``wait``'s timeout (never on the wire).

    ``task`` is the task as the broker last reported it (a ``TaskInfo``), or None.
    """

    code = "wait_timeout"

    def __init__(self, message: str = "", *, task: Any = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.task = task


class TaskFailed(DurableTQError):
    """Client side: a task awaited for its result ended ``dead`` or ``cancelled``.

    ``task`` is the finished task (a ``TaskInfo``): ``state``, ``last_error``.
    """

    code = "task_failed"

    def __init__(self, message: str = "", *, task: Any = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.task = task


class ConfigError(DurableTQError):
    """Settings that cannot be used; the message names the field and where it came from."""

    code = "config_error"


_BY_CODE: dict[str, type[DurableTQError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        UnknownOp,
        HelloRequired,
        UnsupportedVersion,
        FrameTooLarge,
        Unauthorized,
        Forbidden,
        NotFound,
        LeaseLost,
        Conflict,
        Busy,
        TooManyConnections,
        ShuttingDown,
        Internal,
    )
}


def from_wire(error: dict[str, Any]) -> DurableTQError:
    """Rebuild the exception a broker reply describes (client side)."""
    code = str(error.get("code", "internal"))
    message = str(error.get("message", code))
    details = {k: v for k, v in error.items() if k not in ("code", "message")}
    cls = _BY_CODE.get(code)
    if cls is None:
        exc = DurableTQError(message, **details)
        exc.code = code  # type: ignore[misc]  # an unknown code from a newer broker
        return exc
    if cls is Busy:
        retry_after = float(details.pop("retry_after", 1.0))
        return Busy(message, retry_after=retry_after, **details)
    return cls(message, **details)
