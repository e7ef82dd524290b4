"""The line codec and request validation: pure functions, no I/O."""

from __future__ import annotations

import json

import pytest

from durable_tq import errors
from durable_tq import protocol as p


def parse(obj: dict[str, object]) -> p.Request:
    """Validate a request given as a Python dict, raising its wire error."""
    try:
        return p.parse_line(json.dumps(obj).encode())
    except p.FrameRejected as rejected:
        raise rejected.error from None


def test_parse_enqueue() -> None:
    request = p.parse_line(b'{"id":7,"op":"enqueue","queue":"q","payload":{"a":1}}')
    assert isinstance(request, p.Enqueue) and json.loads(bytes(request.payload)) == {"a": 1}
    assert (request.id, request.op) == (7, "enqueue")


def test_id_must_be_int_or_string() -> None:
    with pytest.raises(p.FrameRejected) as rejected:
        p.parse_line(b'{"id":[1],"op":"stats"}')
    assert rejected.value.request_id is None
    assert p.parse_line(b'{"id":"abc","op":"stats"}').id == "abc"
    assert p.parse_line(b'{"op":"stats"}').id is None


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
        parse(obj)


def test_bad_request_message_names_the_field() -> None:
    with pytest.raises(errors.BadRequest, match="priority"):
        parse({"op": "enqueue", "queue": "q", "priority": "high"})


def test_every_protocol_op_has_a_model() -> None:
    ops = {
        "hello",
        "enqueue",
        "enqueue_many",
        "claim",
        "ack",
        "fail",
        "release",
        "settle",
        "extend",
        "progress",
        "wait",
        "queue_settings",
        "heartbeat",
        "get",
        "cancel",
        "stats",
        "list",
        "requeue",
        "pause",
        "resume",
        "purge",
        "workers",
        "worker_state",
        "bye",
        "schedule_upsert",
        "schedule_list",
        "schedule_remove",
        "schedule_pause",
        "schedule_resume",
        "set_queue_limits",
        "queue_info",
        "throughput",
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


@pytest.mark.parametrize(
    ("line", "code", "request_id"),
    [
        (b"not json", "bad_request", None),
        (b"[1,2]", "bad_request", None),
        (b"\xff\xfe{}", "bad_request", None),
        (b'{"id":1,"op":"enqueue","queue":"q","payload":NaN}', "bad_request", 1),
        (b'{"id":1,"op":"enqueue","queue":"q","payload":{"a":[-Infinity]}}', "bad_request", 1),
        (b'{"id":1,"op":"enqueue","queue":"q","delay":Infinity}', "bad_request", 1),
        (b"[" * 100_000, "bad_request", None),
        (b'{"id":2,"payload":' + b"[" * 5000 + b"]" * 5000 + b"}", "bad_request", None),
        (b'{"id":3}', "bad_request", 3),
        (b'{"id":"x","op":"launch"}', "unknown_op", "x"),
        (b'{"id":4,"op":7}', "bad_request", 4),
        (
            b'{"id":5,"op":"ack","task_id":99999999999999999999999,"lease_token":"t"}',
            "bad_request",
            5,
        ),
        (b'{"id":6,"op":"enqueue","queue":"q","priority":1.5}', "bad_request", 6),
        (b'{"id":true,"op":"stats"}', "bad_request", None),
    ],
)
def test_parse_line_rejects_with_code_and_id(line: bytes, code: str, request_id: object) -> None:
    with pytest.raises(p.FrameRejected) as rejected:
        p.parse_line(line)
    assert rejected.value.error.code == code
    assert rejected.value.request_id == request_id


def test_payload_nesting_is_limited_but_ordinary_depth_passes() -> None:
    deep_ok = b'{"op":"enqueue","queue":"q","payload":' + b"[" * 100 + b"]" * 100 + b"}"
    assert isinstance(p.parse_line(deep_ok), p.Enqueue)
    too_deep = b'{"id":9,"op":"enqueue","queue":"q","payload":' + b"[" * 300 + b"]" * 300 + b"}"
    with pytest.raises(p.FrameRejected) as rejected:
        p.parse_line(too_deep)
    assert rejected.value.error.code == "bad_request" and rejected.value.request_id == 9


def test_nan_inside_a_string_is_just_text() -> None:
    request = p.parse_line(b'{"op":"enqueue","queue":"q","payload":"NaN and Infinity"}')
    assert isinstance(request, p.Enqueue)
    assert json.loads(bytes(request.payload)) == "NaN and Infinity"


def test_parse_line_accepts_and_keeps_the_id() -> None:
    request = p.parse_line(b'{"id":"a-1","op":"claim","queues":["x","y"],"wait":2,"max":4}')
    assert isinstance(request, p.Claim)
    assert (request.id, request.queues, request.wait, request.max) == ("a-1", ["x", "y"], 2.0, 4)
    request = p.parse_line(b'{"op":"list","state":"dead"}')
    assert isinstance(request, p.List) and request.state is p.TaskState.DEAD and request.id is None


def test_field_errors_name_the_field_without_the_op_prefix() -> None:
    with pytest.raises(p.FrameRejected) as rejected:
        p.parse_line(b'{"id":1,"op":"enqueue","queue":"q","priority":"high"}')
    assert rejected.value.error.message.startswith("priority:")
