"""Decode+validate and encode costs of the wire schema: msgspec (in use) against pydantic-core.

The request mix is what a broker sees most (enqueue, claim, ack) and the reply it encodes most
(a claim's leased task). Run: ``.venv/bin/python benchmarks/schema_choice.py``; numbers are
microseconds per call, best of 5 repeats. docs/benchmarks.md, "Choosing the schema library".
"""

from __future__ import annotations

import json
import timeit
from typing import Annotated, Any, Literal

import msgspec
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter

from durable_tq.wire import codec
from durable_tq.wire.schema import AnyRequest

LINES = {
    "enqueue": b'{"id":12,"op":"enqueue","queue":"emails","payload":{"to":"ada@example.com",'
    b'"subject":"hello there","body":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},"priority":1}',
    "claim": b'{"id":13,"op":"claim","queues":["emails"],"max":1,"wait":5}',
    "ack": b'{"id":14,"op":"ack","task_id":12345,"lease_token":"5f2b6a1c9d8e7f60",'
    b'"result":{"sent":true}}',
}
PAYLOAD = b'{"to":"ada@example.com","subject":"hello there"}'


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    id: int | str | None = None


class _Enqueue(_Model):
    op: Literal["enqueue"]
    queue: Annotated[str, Field(min_length=1, max_length=200)]
    payload: JsonValue = None
    priority: Annotated[int, Field(ge=-(2**31), le=2**31 - 1)] = 0


class _Claim(_Model):
    op: Literal["claim"]
    queues: Annotated[list[str], Field(min_length=1, max_length=1000)]
    max: int = 1
    wait: float = 0.0


class _Ack(_Model):
    op: Literal["ack"]
    task_id: int
    lease_token: str
    result: JsonValue = None


_PYDANTIC: TypeAdapter[Any] = TypeAdapter(
    Annotated[_Enqueue | _Claim | _Ack, Field(discriminator="op")]
)


def best(fn: Any, number: int = 100_000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def _stored_pydantic(line: bytes) -> str:
    """The old path: validate with pydantic-core, then encode the payload again to store it."""
    request = _PYDANTIC.validate_json(line)
    value = getattr(request, "payload", None) or getattr(request, "result", None)
    return pydantic_core.to_json(value).decode()


def _stored_msgspec(line: bytes) -> str:
    """The path in use: validate with msgspec; the payload is stored as the raw text it was."""
    request = codec.parse_line(line)
    value = getattr(request, "payload", None) or getattr(request, "result", None)
    return bytes(value).decode() if isinstance(value, msgspec.Raw) else ""


def main() -> None:
    decoder = msgspec.json.Decoder(AnyRequest)
    for name, line in LINES.items():
        bare = best(lambda line=line: decoder.decode(line))
        ours = best(lambda line=line: codec.parse_line(line))
        theirs = best(lambda line=line: _PYDANTIC.validate_json(line))
        print(
            f"decode+validate {name:8s} msgspec {bare:5.2f} us (with the codec's checks "
            f"{ours:5.2f} us)   pydantic-core {theirs:5.2f} us"
        )
    for name in ("enqueue", "ack"):
        line = LINES[name]
        ours = best(lambda line=line: _stored_msgspec(line))
        theirs = best(lambda line=line: _stored_pydantic(line))
        print(
            f"line -> stored text, {name:8s} msgspec {ours:5.2f} us   "
            f"pydantic-core {theirs:5.2f} us"
        )
    task = {
        "task_id": 1,
        "queue": "emails",
        "priority": 0,
        "attempt": 1,
        "lease_token": "abcdef0123456789",
        "lease_expires_at": 1790000000.123,
    }
    raw = {"id": 13, "ok": True, "tasks": [{**task, "payload": msgspec.Raw(PAYLOAD)}]}
    decoded = {"id": 13, "ok": True, "tasks": [{**task, "payload": json.loads(PAYLOAD)}]}
    ours = best(lambda: codec.encode(raw))
    theirs = best(lambda: pydantic_core.to_json(decoded))
    print(f"encode a claim reply         msgspec {ours:5.2f} us   pydantic-core {theirs:5.2f} us")
    # The old broker decoded the stored payload text before encoding the reply.
    theirs = best(
        lambda: pydantic_core.to_json(
            {**decoded, "tasks": [{**task, "payload": json.loads(PAYLOAD)}]}
        )
    )
    ours = best(lambda: codec.encode({**raw, "tasks": [{**task, "payload": msgspec.Raw(PAYLOAD)}]}))
    print(f"stored text -> claim reply   msgspec {ours:5.2f} us   pydantic-core {theirs:5.2f} us")


if __name__ == "__main__":
    main()
