"""The client's side of the NDJSON codec: request frames out, reply lines in."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import msgspec
from pydantic_core import to_jsonable_python

from durable_tq import errors
from durable_tq.wire import schema as s
from durable_tq.wire.ops import OPS


class ReplyHead(msgspec.Struct):
    """What the reader needs of every reply line; the rest is decoded by whoever asked."""

    id: Any = None
    ok: Any = None
    error: Any = None


class TasksOf(msgspec.Struct):
    """The claimed tasks of a claim or settle reply (for releasing an abandoned one)."""

    tasks: list[s.LeasedTask] | None = None


HEAD = msgspec.json.Decoder(ReplyHead)
TASKS_OF = msgspec.json.Decoder(TasksOf)
# The reply types are the op table's (durable_tq/wire/schema.py), decoded straight from the
# reply line by msgspec: the client cannot drift from what the broker sends.
_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    name: msgspec.json.Decoder(op.reply) for name, op in OPS.items()
}
_FRAME_ENCODER = msgspec.json.Encoder(enc_hook=to_jsonable_python)


def encode_frame(message: Mapping[str, Any]) -> bytes:
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


def decode_reply(op: str, line: bytes) -> Any:
    """The reply line of ``op`` as the op table's reply type."""
    try:
        return _DECODERS[op].decode(line)
    except msgspec.ValidationError as exc:
        raise errors.Internal(f"the broker sent a malformed {op!r} reply: {exc}") from exc


def error_of(reply: Mapping[str, Any] | ReplyHead) -> errors.DurableTQError:
    """The exception an ``ok: false`` reply describes."""
    error = reply.error if isinstance(reply, ReplyHead) else reply.get("error")
    return errors.from_wire(error if isinstance(error, dict) else {})
