"""An example worker app: two handlers, one async and one sync.

Run it as examples/README.md says: ``durable-tq serve``, ``durable-tq worker tasks:worker``,
``python producer.py``, each in its own terminal, from this folder.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from durable_tq import Fail, Retry, TaskContext, Worker

# No url: the worker finds the broker as durable-tq does (DURABLE_TQ_URL, ./durable_tq.toml, ...).
worker = Worker(concurrency=8)

# Addresses our pretend mail server turns away once, as a real one does when it is busy.
GREYLISTED = ("ops@example.com",)


@worker.task("emails", timeout=30, max_attempts=5)
async def send_email(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Async handler: runs on the worker's event loop, at most ``concurrency`` at once."""
    to = payload["to"]
    if "@" not in to:
        raise Fail(f"not an email address: {to!r}")  # dead at once: retrying cannot help
    if to in GREYLISTED and ctx.attempt == 1:
        raise Retry("greylisted by the mail server", delay=0.5)  # try again in half a second
    await anyio.sleep(0.05)  # talk to the mail server here
    return {"sent": True, "to": to, "attempt": ctx.attempt}  # stored as the task's result


@worker.task("thumbnails", timeout=60)
def make_thumbnail(payload: dict[str, Any]) -> dict[str, Any]:
    """Sync handler: runs in a worker thread, so blocking calls are fine here."""
    time.sleep(0.05)  # resize the image here
    return {"thumbnail": f"{payload['image']}.thumb.png"}
