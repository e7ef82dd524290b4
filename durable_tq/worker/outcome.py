"""How one run of a handler ended: the control exceptions handlers raise, and the outcomes.

``Retry`` and ``Fail`` are raised by user code to steer the broker; they are not errors of
durable_tq itself and never cross the wire, so they live here and not in ``errors.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import traceback
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
from pydantic_core import PydanticSerializationError, to_jsonable_python

import durable_tq

__all__ = [
    "Cancelled",
    "Fail",
    "Failed",
    "Outcome",
    "Released",
    "Retry",
    "Succeeded",
    "TaskCancelled",
    "describe_exception",
    "safe_result",
]

#: Frames of a traceback kept in a task's stored error (the innermost ones).
TRACEBACK_FRAMES = 5
#: Default bound of a stored error's length, in characters.
MAX_ERROR_CHARS = 4000


class TaskControl(Exception):
    """Raised by a handler to say how its task should end, instead of returning."""


class Retry(TaskControl):
    """Fail this attempt and run the task again, after ``delay`` seconds if given.

    Without ``delay`` the broker's backoff decides when. When the task has used up its
    attempts, the broker buries it (``dead``) as it would for any failure::

        raise Retry("rate limited", delay=30)
    """

    def __init__(self, reason: str = "", *, delay: float | None = None) -> None:
        if delay is not None and delay < 0:
            raise ValueError("Retry delay must not be negative")
        super().__init__(reason or "retry requested")
        self.reason = reason or "retry requested"
        self.delay = delay


class Fail(TaskControl):
    """Fail the task for good: it goes ``dead`` at once, whatever attempts are left::

    raise Fail("no such mailbox")
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "failed by the handler")
        self.reason = reason or "failed by the handler"


@dataclass(frozen=True, slots=True)
class Succeeded:
    """The handler returned; ``result`` is its JSON-able return value."""

    result: Any


@dataclass(frozen=True, slots=True)
class Failed:
    """The attempt failed. ``error`` is stored on the task; ``summary`` is its first line."""

    error: str
    summary: str
    retry: bool = True
    delay: float | None = None
    #: The exception, for the log's traceback (None for timeouts and refused results).
    exc: BaseException | None = None
    #: The handler asked for this (``Retry``): part of its plan, not a problem.
    requested: bool = False


@dataclass(frozen=True, slots=True)
class Released:
    """The run was abandoned (the worker is stopping); the attempt does not count."""

    reason: str
    delay: float | None = None


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The task's cancel was requested and the handler stopped: it ends ``cancelled``."""

    reason: str


Outcome = Succeeded | Failed | Released | Cancelled


class TaskCancelled(TaskControl):
    """Raised by ``ctx.check_cancelled()`` once the task's cancel was requested; the worker
    then settles the task as ``cancelled``."""

    def __init__(self, task_id: int) -> None:
        super().__init__(f"task {task_id} was cancelled")
        self.task_id = task_id


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ in ("builtins", "__main__") or isinstance(exc, TaskControl):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _bounded(text: str, limit: int) -> str:
    # Error texts are for people; a NUL character (PostgreSQL's text cannot hold one) is
    # spelled out, so the broker takes the fail on either backend.
    text = text.replace("\x00", "\\x00")
    if len(text) <= limit:
        return text
    marker = " ... (truncated)"
    return text[: max(limit - len(marker), 0)] + marker


def summarize(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` on one line, bounded."""
    message = str(exc).strip()
    head = f"{_type_name(exc)}: {message}" if message else _type_name(exc)
    return _bounded(" ".join(head.split()), limit)


def describe_exception(exc: BaseException, limit: int = MAX_ERROR_CHARS) -> str:
    """A readable, bounded error for a task: type and message, then the innermost frames."""
    head = _bounded(f"{_type_name(exc)}: {exc}" if str(exc) else _type_name(exc), limit // 2)
    parts = [head]
    frames = traceback.extract_tb(exc.__traceback__)[-TRACEBACK_FRAMES:]
    if frames:
        parts.append(f"Traceback (innermost {len(frames)} frames):")
        parts.append("".join(traceback.format_list(frames)).rstrip("\n"))
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None:
        parts.append(f"Caused by {summarize(cause)}")
    return _bounded("\n".join(parts), limit)


#: Folders whose frames sit between the worker and a handler: not the user's code.
_FRAMEWORK_DIRS = tuple(
    os.path.dirname(module.__file__) + os.sep
    for module in (durable_tq, anyio, asyncio, concurrent.futures)
    if module.__file__ is not None
)
DEBUG_ENV = "DURABLE_TQ_DEBUG"


def _is_framework(tb: TracebackType) -> bool:
    filename = tb.tb_frame.f_code.co_filename
    return filename.startswith(_FRAMEWORK_DIRS) or filename.startswith("<frozen")


def handler_traceback(exc: BaseException) -> str:
    """The traceback of an exception from a handler, starting at the handler's own frame.

    The worker's frames above it (executor, thread, task invocation) say nothing about the
    bug; they are kept only with DURABLE_TQ_DEBUG=1. Chained causes are kept either way.
    """
    tb = exc.__traceback__
    debug = os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    if not debug:
        first = tb
        while first is not None and _is_framework(first):
            first = first.tb_next
        if first is not None:  # all framework: keep everything rather than nothing
            tb = first
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip("\n")


def failure_from(exc: Exception, limit: int = MAX_ERROR_CHARS) -> Failed:
    """The outcome an exception from a handler stands for."""
    if isinstance(exc, Retry):
        text = f"Retry: {exc.reason}"
        return Failed(
            _bounded(text, limit), summarize(exc), retry=True, delay=exc.delay, requested=True
        )
    if isinstance(exc, Fail):
        text = f"Fail: {exc.reason}"
        cause = exc.__cause__
        if cause is not None:
            text += f"\nCaused by {describe_exception(cause, limit // 2)}"
        return Failed(_bounded(text, limit), summarize(exc), retry=False)
    return Failed(describe_exception(exc, limit), summarize(exc), retry=True, exc=exc)


def safe_result(value: Any, limit: int = MAX_ERROR_CHARS) -> Outcome:
    """``Succeeded`` when ``value`` can be stored as JSON; otherwise a final ``Failed``.

    Checked before the ack, so a result that cannot be stored never reaches the broker as a
    half-done ack: the task fails and says why. Retrying would give the same result.
    """
    if value is None or type(value) in (str, int, bool):
        return Succeeded(value)  # JSON as they are (a float may be NaN: checked below)
    try:
        jsonable = to_jsonable_python(value)
        json.dumps(jsonable, allow_nan=False)
    except (TypeError, ValueError, PydanticSerializationError) as exc:
        error = f"the handler's return value cannot be stored as JSON: {summarize(exc, 500)}"
        return Failed(_bounded(error, limit), error[:200], retry=False)
    return Succeeded(jsonable)
