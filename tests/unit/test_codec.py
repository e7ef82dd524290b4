"""The broker's line codec (durable_tq.wire.codec) and the client's frames (client.codec).

tests/unit/test_protocol.py has the rejections by code; these are the edges: ids, unknown ops,
lone surrogates, numbers JSON cannot carry, nesting, and what goes back out.
"""

from __future__ import annotations

import json

import msgspec
import pytest

from durable_tq import errors
from durable_tq.client.codec import HEAD, decode_reply, encode_frame, error_of
from durable_tq.wire import codec
from durable_tq.wire import schema as s


def rejected(line: bytes) -> codec.FrameRejected:
    with pytest.raises(codec.FrameRejected) as caught:
        codec.parse_line(line)
    return caught.value


# --- ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("request_id", [0, -1, 2**53, "", "a b", "ü"])
def test_ids_come_back_exactly(request_id: object) -> None:
    line = json.dumps({"id": request_id, "op": "stats"}, ensure_ascii=False).encode()
    assert codec.parse_line(line).id == request_id


@pytest.mark.parametrize(
    ("line", "request_id"),
    [
        (b'{"id":7,"op":"enqueue"}', 7),  # missing field: the id is still readable
        (b'{"id":"x","op":"stats","extra":[}', None),  # not JSON at all
        (b'{"id":1.5,"op":"stats"}', None),
        (b'{"id":null,"op":"nope"}', None),
        (b'{"id":false,"op":"stats"}', None),
        (b'{"op":"stats","id":{"a":1}}', None),
    ],
)
def test_the_error_carries_the_id_only_when_it_is_a_valid_one(
    line: bytes, request_id: object
) -> None:
    assert rejected(line).request_id == request_id


# --- unknown ops -------------------------------------------------------------------------------


def test_an_unknown_op_is_named_and_cut_short() -> None:
    error = rejected(b'{"id":1,"op":"' + b"x" * 500 + b'"}').error
    assert isinstance(error, errors.UnknownOp)
    assert error.message == f"unknown op {'x' * 100!r}"


def test_a_missing_op_and_a_non_string_op_are_bad_requests() -> None:
    assert rejected(b'{"id":1}').error.message == "request has no op"
    assert rejected(b'{"id":1,"op":["stats"]}').error.message == "op must be a string"
    assert rejected(b"[]").error.message == "frame must be a JSON object"


# --- lone surrogates ---------------------------------------------------------------------------


def test_a_lone_surrogate_in_a_payload_is_kept_as_an_escape() -> None:
    request = codec.parse_line(b'{"id":1,"op":"enqueue","queue":"q","payload":{"k":"\\ud800"}}')
    assert isinstance(request, s.Enqueue)
    raw = bytes(request.payload)
    assert raw == b'{"k":"\\ud800"}'  # still valid JSON SQLite can store
    assert json.loads(raw) == {"k": "\ud800"}


@pytest.mark.parametrize(
    ("line", "where"),
    [
        (b'{"id":1,"op":"enqueue","queue":"\\udfff"}', "queue"),
        (b'{"id":1,"op":"claim","queues":["ok","\\ud800"]}', "queues[1]"),
        (b'{"id":1,"op":"fail","task_id":1,"lease_token":"t","error":"\\ud800"}', "error"),
    ],
)
def test_a_lone_surrogate_in_a_name_or_text_is_refused(line: bytes, where: str) -> None:
    failure = rejected(line)
    assert failure.request_id == 1
    assert failure.error.message.startswith(f"{where}: text has a lone surrogate")


def test_an_id_with_a_lone_surrogate_is_echoed_escaped() -> None:
    request = codec.parse_line(b'{"id":"\\ud800","op":"stats"}')
    assert request.id == "\ud800"
    reply = codec.ok_reply(request.id, {})
    assert reply == b'{"id":"\\ud800","ok":true}\n'


def test_invalid_utf8_is_refused() -> None:
    assert rejected(b'{"id":1,"op":"enqueue","queue":"q","payload":"\xc3\x28"}').error.message == (
        "frame is not UTF-8"
    )


# --- numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [b"1e400", b"-1E+999", b"[1e309]"])
def test_numbers_beyond_a_double_are_refused_in_payloads(number: bytes) -> None:
    failure = rejected(b'{"id":3,"op":"enqueue","queue":"q","payload":' + number + b"}")
    assert failure.request_id == 3 and "finite" in failure.error.message


@pytest.mark.parametrize(
    "number", [b"1e300", b"123456789012345678901234567890", b"1" * 4000, b"0.5e-400"]
)
def test_big_numbers_a_double_or_text_can_hold_pass_untouched(number: bytes) -> None:
    request = codec.parse_line(b'{"op":"enqueue","queue":"q","payload":' + number + b"}")
    assert isinstance(request, s.Enqueue) and bytes(request.payload) == number


def test_integers_past_pythons_digit_limit_are_refused() -> None:
    # Python will not read integers of more than 4300 digits (sys.get_int_max_str_digits).
    failure = rejected(b'{"id":4,"op":"enqueue","queue":"q","payload":' + b"1" * 5000 + b"}")
    assert failure.request_id == 4 and failure.error.code == "bad_request"


def test_a_text_that_says_infinity_is_only_text() -> None:
    line = b'{"op":"enqueue","queue":"q","payload":{"note":"1e999 Infinity NaN"}}'
    assert isinstance(codec.parse_line(line), s.Enqueue)


# --- nesting -----------------------------------------------------------------------------------


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    brackets = b"[" * (codec.MAX_NESTING + 10)
    line = b'{"op":"enqueue","queue":"q","payload":"' + brackets + b'"}'
    assert isinstance(codec.parse_line(line), s.Enqueue)


def test_nesting_up_to_the_limit_passes_and_one_more_is_refused() -> None:
    def payload(depth: int) -> bytes:
        # The request object itself is one level.
        inner = depth - 1
        return b'{"id":1,"op":"enqueue","queue":"q","payload":' + b"[" * inner + b"]" * inner + b"}"

    assert isinstance(codec.parse_line(payload(codec.MAX_NESTING)), s.Enqueue)
    assert rejected(payload(codec.MAX_NESTING + 1)).error.message == "request is nested too deeply"


# --- encoding ----------------------------------------------------------------------------------


def test_replies_keep_raw_json_as_it_came() -> None:
    reply = codec.ok_reply(5, {"payload": msgspec.Raw(b'{"a": 1}')})
    assert reply == b'{"payload":{"a": 1},"id":5,"ok":true}\n'


def test_error_replies_carry_code_message_and_details() -> None:
    line = codec.error_reply(None, errors.Busy("full", retry_after=0.5))
    assert json.loads(line) == {
        "id": None,
        "ok": False,
        "error": {"code": "busy", "message": "full", "retry_after": 0.5},
    }


def test_dumps_value_refuses_what_json_cannot_carry() -> None:
    assert codec.dumps_value({"a": [1, "ü"]}) == '{"a":[1,"ü"]}'
    assert codec.dumps_value("\ud800") == '"\\ud800"'
    with pytest.raises(errors.BadRequest, match="finite"):
        codec.dumps_value(float("nan"))
    with pytest.raises(errors.BadRequest, match="not JSON"):
        codec.dumps_value(object())


# --- the client's side -------------------------------------------------------------------------


def test_client_frames_are_one_compact_line() -> None:
    frame = encode_frame({"id": 1, "op": "enqueue", "queue": "q", "payload": {"k": [1, None]}})
    assert frame == b'{"id":1,"op":"enqueue","queue":"q","payload":{"k":[1,null]}}\n'


@pytest.mark.parametrize("payload", [float("nan"), [float("inf")], {"x": object()}])
def test_client_frames_refuse_what_json_cannot_carry(payload: object) -> None:
    with pytest.raises(errors.BadRequest, match="not JSON-serializable"):
        encode_frame({"id": 1, "op": "enqueue", "queue": "q", "payload": payload})


def test_client_reads_the_head_and_rebuilds_errors() -> None:
    line = b'{"id":4,"ok":false,"error":{"code":"lease_lost","message":"gone"}}'
    head = HEAD.decode(line)
    assert (head.id, head.ok) == (4, False)
    error = error_of(head)
    assert isinstance(error, errors.LeaseLost) and error.message == "gone"
    assert isinstance(error_of({"ok": False}), errors.DurableTQError)


def test_client_decodes_replies_as_the_op_table_types() -> None:
    reply = decode_reply("enqueue", b'{"id":1,"ok":true,"task_id":9,"created":true}')
    assert reply == s.EnqueueReply(task_id=9, created=True)
    with pytest.raises(errors.Internal, match="malformed 'enqueue' reply"):
        decode_reply("enqueue", b'{"id":1,"ok":true,"task_id":"nine"}')
