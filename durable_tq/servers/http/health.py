"""``/healthz`` (the process answers) and ``/readyz`` (the database is open and writable)."""

from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import Response

from durable_tq import errors
from durable_tq.core.broker import Broker
from durable_tq.wire import codec

#: How long the readiness write probe may take before the broker counts as not ready.
PROBE_TIMEOUT = 2.0
JSON = "application/json"


async def healthz(request: Request) -> Response:
    return Response(codec.encode({"status": "ok"}), 200, media_type=JSON)


def _not_ready(reason: str) -> Response:
    return Response(codec.encode({"status": "unavailable", "reason": reason}), 503, media_type=JSON)


async def readyz(request: Request) -> Response:
    """Ready when the server is not stopping, the store's file watch has found nothing wrong,
    and an empty write goes through the group-commit writer (BEGIN IMMEDIATE, COMMIT)."""
    state = request.app.state.http
    broker: Broker = state.broker
    if state.stopping:
        return _not_ready("the broker is stopping")
    failure = store_failure(broker)
    if failure is not None:
        return _not_ready(failure)
    try:
        with anyio.fail_after(PROBE_TIMEOUT):
            await broker.store.write(lambda conn, batch: None, atomic=True, durable=False)
    except TimeoutError:
        return _not_ready(f"a write did not commit within {PROBE_TIMEOUT} s")
    except errors.DurableTQError as exc:
        return _not_ready(exc.message)
    return Response(codec.encode({"status": "ready"}), 200, media_type=JSON)


def store_failure(broker: Broker) -> str | None:
    """What the store's file watch found wrong (a deleted or replaced database or WAL)."""
    lock = getattr(broker.store, "_lock", None)
    failure = getattr(lock, "failure", None)
    return failure if isinstance(failure, str) else None
