"""The line codec and request validation: pure functions, no I/O."""

from __future__ import annotations

import json

import pytest

from durable_tq import errors
from durable_tq import protocol as p


def test_decode_and_parse_enqueue() -> None:
    request_id, obj = p.decode_frame(b'{"id":7,"op":"enqueue","queue":"q","payload":{"a":1}}')
    assert request_id == 7
    request = p.parse_request(obj)
    assert isinstance(request, p.Enqueue) and request.payload == {"a": 1}
    assert request.op == "enqueue"


@pytest.mark.parametrize(
    "line",
    [b"not json", b"[1,2]", b'"str"', b"\xff\xfe{}", b'{"op":"stats","x":NaN}', b"[" * 100_000],
)
def test_bad_frames_are_bad_request(line: bytes) -> None:
    with pytest.raises(errors.BadRequest):
        p.decode_frame(line)


def test_id_must_be_int_or_string() -> None:
    with pytest.raises(errors.BadRequest):
        p.decode_frame(b'{"id":[1],"op":"stats"}')
    assert p.decode_frame(b'{"id":"abc","op":"stats"}')[0] == "abc"
    assert p.decode_frame(b'{"op":"stats"}')[0] is None


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        ({}, errors.BadRequest),
        ({"op": 5}, errors.BadRequest),
        ({"op": "nope"}, errors.UnknownOp),
        ({"op": "enqueue"}, errors.BadRequest),
        ({"op": "enqueue", "queue": ""}, errors.BadRequest),
        ({"op": "enqueue", "queue": "q", "priority": "1"}, errors.BadRequest),
        ({"op": "enqueue", "queue": "q", "priority": 2**70}, errors.BadRequest),
        ({"op": "enqueue", "queue": "q", "delay": 1, "run_at": 2}, errors.BadRequest),
        ({"op": "enqueue", "queue": "q", "delay": -1}, errors.BadRequest),
        ({"op": "enqueue", "queue": "q", "lease": 0}, errors.BadRequest),
        ({"op": "enqueue", "queue": "q", "max_attempts": 0}, errors.BadRequest),
        ({"op": "enqueue", "queue": "q", "surprise": 1}, errors.BadRequest),
        ({"op": "claim", "queues": []}, errors.BadRequest),
        ({"op": "claim", "queues": ["q"], "max": 0}, errors.BadRequest),
        ({"op": "ack", "task_id": "1", "lease_token": "t"}, errors.BadRequest),
        ({"op": "ack", "task_id": 2**64, "lease_token": "t"}, errors.BadRequest),
        ({"op": "fail", "task_id": 1, "lease_token": "t", "retry": 1}, errors.BadRequest),
        ({"op": "requeue"}, errors.BadRequest),
        ({"op": "requeue", "queue": "q", "state": "queued"}, errors.BadRequest),
        ({"op": "purge", "queue": "q", "state": "leased"}, errors.BadRequest),
        ({"op": "worker_state", "worker_id": "w", "state": "asleep"}, errors.BadRequest),
        ({"op": "list", "state": "weird"}, errors.BadRequest),
    ],
)
def test_invalid_arguments(obj: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        p.parse_request(obj)


def test_bad_request_message_names_the_field() -> None:
    with pytest.raises(errors.BadRequest, match="priority"):
        p.parse_request({"op": "enqueue", "queue": "q", "priority": "high"})


def test_every_protocol_op_has_a_model() -> None:
    ops = {
        "hello", "enqueue", "enqueue_many", "claim", "ack", "fail", "release", "extend",
        "heartbeat", "get", "cancel", "stats", "list", "requeue", "pause", "resume", "purge",
        "workers", "worker_state", "bye",
    }
    assert set(p.REQUESTS) == ops


def test_replies_are_one_compact_line() -> None:
    line = p.ok_reply(3, {"text": "a\nb", "n": 1})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"id": 3, "ok": True, "text": "a\nb", "n": 1}
    err = json.loads(p.error_reply(None, errors.Busy("full", retry_after=2.0)))
    assert err == {
        "id": None,
        "ok": False,
        "error": {"code": "busy", "message": "full", "retry_after": 2.0},
    }


def test_errors_round_trip_through_the_wire() -> None:
    for exc in (errors.NotFound("x"), errors.LeaseLost("y"), errors.Busy("z", retry_after=3)):
        again = errors.from_wire(exc.to_wire())
        assert type(again) is type(exc) and again.message == exc.message
    assert errors.from_wire({"code": "brand_new", "message": "m"}).code == "brand_new"
