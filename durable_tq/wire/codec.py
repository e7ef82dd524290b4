"""NDJSON framing and the line codec: bytes in, a validated request out; a reply out as bytes.

No I/O happens here. The fast path is one msgspec decode per line; the slow paths (a lone
surrogate escape, which msgspec refuses although JSON allows it; an exponent large enough to
overflow a double) are taken only when the fast path says something is off.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

from durable_tq import errors
from durable_tq.wire import schema as s
from durable_tq.wire.ops import REQUESTS

_DECODER = msgspec.json.Decoder(s.AnyRequest)
_ENCODER = msgspec.json.Encoder()


class _Envelope(msgspec.Struct):
    id: Any = None


_ENVELOPE = msgspec.json.Decoder(_Envelope)

#: Where a number may overflow a double (``1e400``: an exponent of three digits or more).
_BIG_EXPONENT = re.compile(rb"[0-9][eE][+-]?[0-9]{3}")
#: A number with more digits than common JSON parsers read (Python's stop at 4,300). Two
#: patterns, not one alternation: the alternation cost 4x more per line (measured).
_LONG_DIGITS = 4000
_MANY_DIGITS = re.compile(rb"[0-9]{%d}" % _LONG_DIGITS)
_UNKNOWN_OP = re.compile(r"Invalid value '(.*)' - at `\$\.op`")
_AT = re.compile(r"^(.*) - at `\$\.?(.*)`$", re.DOTALL)
#: How deep a request may nest arrays and objects (raw payloads included): a client decoding
#: a payload nested deeper could hit its parser's recursion limit.
MAX_NESTING = 256
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
#: Requests with fields of any JSON (raw payloads and results, a worker's meta): only these
#: need the nesting and number checks below.
_FREE_JSON = frozenset({s.Enqueue, s.EnqueueMany, s.Ack, s.Settle, s.Hello})
#: The request fields that carry raw JSON.
_RAW_FIELDS = ("payload", "result")


class FrameRejected(Exception):
    """A line that is not a valid request: the error to send, and the id to send it with."""

    def __init__(self, request_id: s.RequestId, error: errors.DurableTQError) -> None:
        super().__init__(error.message)
        self.request_id = request_id
        self.error = error


def parse_line(line: bytes) -> s.Request:
    """Parse and validate one line (without its newline) into its operation's request.

    Raises FrameRejected with the most precise error: bad JSON, not an object, no op, unknown
    op, or the first wrong field; it carries the request's id whenever that was readable.
    """
    try:
        if not line.isascii():
            line.decode()  # raw payloads are not checked by msgspec: refuse bad UTF-8 here
        request: s.Request = _DECODER.decode(line)
    except UnicodeDecodeError:
        raise FrameRejected(_readable_id(line), errors.BadRequest("frame is not UTF-8")) from None
    except msgspec.ValidationError as exc:
        raise FrameRejected(_readable_id(line), _classify(str(exc))) from None
    except msgspec.DecodeError as exc:
        if b"\\u" in line:
            return _parse_escaped(line)
        raise FrameRejected(_readable_id(line), _not_json(exc)) from None
    except RecursionError as exc:
        raise FrameRejected(_readable_id(line), _not_json(exc)) from None
    if type(request) not in _FREE_JSON:
        return request  # every field typed: msgspec checked all there is to check
    if line.count(b"[") + line.count(b"{") > MAX_NESTING and _nesting(line) > MAX_NESTING:
        raise FrameRejected(request.id, errors.BadRequest("request is nested too deeply"))
    # NaN and Infinity never get here (msgspec refuses them); huge numbers do, inside raw
    # payloads: rare, so the check is a scan and only a hit pays for a full parse.
    if _BIG_EXPONENT.search(line) or (len(line) > _LONG_DIGITS and _MANY_DIGITS.search(line)):
        _check_finite(request, line)
    return request


def _nesting(line: bytes) -> int:
    """How deep arrays and objects nest in ``line`` (brackets inside strings not counted)."""
    brackets = _STRING.sub(b'""', line).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _parse_escaped(line: bytes) -> s.Request:
    """The slow path for JSON that msgspec refuses but JSON allows: a lone surrogate escape
    (``"\\ud800"``). Python's parser takes it; raw fields are re-encoded with the escape kept,
    so what is stored is still valid JSON; validation is the same."""
    try:
        obj = json.loads(line, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise FrameRejected(None, _not_json(exc)) from None
    request_id = _id_of(obj)
    try:
        if isinstance(obj, dict):
            _refuse_surrogates(obj, "")
            _raw_in_place(obj)
            for item in obj.get("tasks") or obj.get("settles") or ():
                if isinstance(item, dict):
                    _raw_in_place(item)
        request: s.Request = msgspec.convert(obj, s.AnyRequest, strict=True)
    except msgspec.ValidationError as exc:
        raise FrameRejected(request_id, _classify(str(exc))) from None
    except errors.DurableTQError as exc:
        raise FrameRejected(request_id, exc) from None
    return request


def _refuse_surrogates(value: Any, where: str) -> None:
    """Names, keys and texts must be storable Unicode: a lone surrogate in one is refused
    (payloads and results keep theirs as escapes; an id is echoed escaped; a token with one
    is simply a wrong token)."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            message = f"{where}: text has a lone surrogate (\\ud800-\\udfff)"
            raise errors.BadRequest(message) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            if not where and key in ("id", "token", *_RAW_FIELDS):
                continue
            if where and key in _RAW_FIELDS:
                continue
            _refuse_surrogates(key, where or "request")
            _refuse_surrogates(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_surrogates(item, f"{where}[{index}]")


def _raw_in_place(obj: dict[str, Any]) -> None:
    for name in _RAW_FIELDS:
        if name in obj:
            obj[name] = msgspec.Raw(dumps_value(obj[name]).encode())


def _check_finite(request: s.Request, line: bytes) -> None:
    """A raw payload or result with a number that overflows a double is refused."""
    try:
        json.loads(line, parse_constant=_reject_constant, parse_float=_finite_float)
    except errors.BadRequest as exc:
        raise FrameRejected(request.id, exc) from None
    except (ValueError, RecursionError) as exc:
        raise FrameRejected(request.id, _not_json(exc)) from None


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise errors.BadRequest("numbers must be finite (JSON has no infinity)")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _classify(message: str) -> errors.DurableTQError:
    unknown = _UNKNOWN_OP.match(message)
    if unknown:
        return errors.UnknownOp(f"unknown op {unknown.group(1)[:100]!r}")
    if message == "Object missing required field `op`":
        return errors.BadRequest("request has no op")
    if message.startswith("Expected `str`") and message.endswith("`$.op`"):
        return errors.BadRequest("op must be a string")
    if message.startswith("Expected `object`") and " - at " not in message:
        return errors.BadRequest("frame must be a JSON object")
    at = _AT.match(message)
    if at:
        text, where = at.group(1), at.group(2)
        return errors.BadRequest(f"{where or 'request'}: {text}")
    return errors.BadRequest(f"request: {message}")


def _not_json(exc: BaseException) -> errors.BadRequest:
    if isinstance(exc, RecursionError):
        return errors.BadRequest("request is nested too deeply")
    text = (str(exc) or type(exc).__name__)[:200]
    return errors.BadRequest(f"frame is not valid JSON: {text}")


def _id_of(obj: Any) -> s.RequestId:
    request_id = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        return None
    return request_id


def _readable_id(line: bytes) -> s.RequestId:
    """The id of a rejected line, when it is a JSON object with a valid id (else None)."""
    try:
        return _id_of({"id": _ENVELOPE.decode(line).id})
    except (msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        return None
    except msgspec.DecodeError:
        pass  # JSON that msgspec refuses but Python reads (NaN, a lone surrogate escape)
    try:
        return _id_of(json.loads(line))
    except (ValueError, RecursionError):
        return None


# --- encoding -------------------------------------------------------------------------------------


def encode(obj: Any) -> bytes:
    """One compact JSON line, ended by a newline (JSON escapes every newline inside)."""
    try:
        return _ENCODER.encode(obj) + b"\n"
    except UnicodeEncodeError:
        # A lone surrogate (an id like "\\ud800") has no UTF-8 form: send it escaped.
        text = json.dumps(_plain(obj), separators=(",", ":"), ensure_ascii=True)
        return text.encode() + b"\n"


def _plain(obj: Any) -> Any:
    """``obj`` with raw JSON decoded (for the slow encoder)."""
    if isinstance(obj, msgspec.Raw):
        return json.loads(bytes(obj))
    if isinstance(obj, dict):
        return {key: _plain(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(value) for value in obj]
    if isinstance(obj, msgspec.Struct):
        return _plain(msgspec.structs.asdict(obj))
    return obj


def ok_reply(request_id: s.RequestId, result: dict[str, Any]) -> bytes:
    result["id"] = request_id
    result["ok"] = True
    return encode(result)


def error_reply(request_id: s.RequestId, exc: errors.DurableTQError) -> bytes:
    return encode({"id": request_id, "ok": False, "error": exc.to_wire()})


def dumps_value(value: Any) -> str:
    """JSON text of a Python value, for callers that hold one (the client, tools, tests).

    Raises BadRequest for a number JSON cannot carry (infinity, NaN: msgspec would quietly
    write ``null``) and keeps lone surrogates as ``\\udXXX`` escapes, so the text is always
    valid JSON that SQLite can store.
    """
    if isinstance(value, msgspec.Raw):
        return bytes(value).decode()
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except ValueError:
        raise errors.BadRequest("numbers must be finite (JSON has no infinity)") from None
    except TypeError as exc:
        raise errors.BadRequest(f"value is not JSON: {exc}") from None
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:  # a lone surrogate: keep it as an escape
            return json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text


def describe_validation(exc: msgspec.ValidationError) -> str:
    return _classify(str(exc)).message


__all__ = [
    "REQUESTS",
    "FrameRejected",
    "dumps_value",
    "encode",
    "error_reply",
    "ok_reply",
    "parse_line",
]
