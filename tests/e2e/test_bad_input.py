"""Bad input on the wire: the broker answers or closes as PROTOCOL.md says, and never dies.

One broker runs for the whole module in a background event loop (a blocking portal); every
example talks to it over fresh raw sockets, and after every example a healthy client on its
own connection must still enqueue and read a task. Every read is bounded, so a broker that
hangs fails the test instead of stalling it. A log handler collects the broker's errors: a
connection that crashed (a traceback in the log) fails the module even when the peer only
saw the connection close.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from anyio.streams.buffered import BufferedByteReceiveStream
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from durable_tq import protocol
from durable_tq.client import Client
from durable_tq.config import load_settings
from durable_tq.servers.tcp import BrokerServer

MAX_FRAME = 64 * 1024
#: Every exchange with the broker must finish within this.
EXCHANGE_TIMEOUT = 10.0

KNOWN_CODES = {
    "bad_request",
    "unknown_op",
    "hello_required",
    "unauthorized",
    "unsupported_version",
    "not_found",
    "lease_lost",
    "conflict",
    "busy",
    "frame_too_large",
    "too_many_connections",
    "shutting_down",
}
#: Error codes after which the broker closes the connection (PROTOCOL.md, Error codes).
CLOSING_CODES = {
    "frame_too_large",
    "unsupported_version",
    "unauthorized",
    "too_many_connections",
    "shutting_down",
}

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class _BrokerErrors(logging.Handler):
    """Keeps every ERROR record of the broker (a crashed connection logs one)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Wire:
    portal: BlockingPortal
    server: BrokerServer
    healthy: Client
    serving: Any  # the concurrent.futures.Future of server.serve
    broker_errors: _BrokerErrors
    checked: int = 0

    @property
    def port(self) -> int:
        return self.server.port

    def exchange(self, data: bytes, *, hello: bool = True, sentinel: bool = True) -> Exchange:
        return self.portal.call(_exchange, self.port, data, hello, sentinel)

    def assert_healthy(self) -> None:
        """The broker still serves: its task runs and another client gets its work done."""
        assert not self.serving.done(), "the broker stopped"
        logged = [r.getMessage() for r in self.broker_errors.records]
        assert not logged, f"the broker logged errors: {logged[:3]}"
        self.checked += 1
        task_id = self.healthy.enqueue("healthy", {"n": self.checked}).task_id
        assert self.healthy.get(task_id).payload == {"n": self.checked}


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wire]:
    folder: Path = tmp_path_factory.mktemp("bad_input")
    broker_settings = load_settings(
        db_path=folder / "broker.db",
        host="127.0.0.1",
        port=0,
        max_frame_bytes=MAX_FRAME,
        max_wait=1.0,  # a random valid claim long-polls 1 s at most
        hello_timeout=2.0,
        sweep_interval=0.1,
    )
    broker_errors = _BrokerErrors()
    logger = logging.getLogger("durable_tq")
    logger.addHandler(broker_errors)
    try:
        with start_blocking_portal(backend="asyncio") as portal:
            server = BrokerServer(broker_settings)
            serving, _ = portal.start_task(server.serve)
            with Client("127.0.0.1", server.port, timeout=EXCHANGE_TIMEOUT) as healthy:
                yield Wire(portal, server, healthy, serving, broker_errors)
            portal.call(server.request_shutdown)
            serving.result(timeout=30)
    finally:
        logger.removeHandler(broker_errors)
    crashes = [r.getMessage() for r in broker_errors.records]
    assert not crashes, f"the broker logged errors: {crashes[:5]}"


# --- talking to the broker ----------------------------------------------------------------------

SENTINEL = b'{"id":"sentinel","op":"stats"}\n'


@dataclass
class Exchange:
    lines_sent: int
    replies: list[dict[str, Any]]
    closed: bool  # the broker closed the connection before answering every line

    def reply_to(self, request_id: Any) -> dict[str, Any]:
        return next(r for r in self.replies if r["id"] == request_id)


async def _exchange(port: int, data: bytes, hello: bool, sentinel: bool) -> Exchange:
    """Send ``data`` (after hello), end its last line, then a stats sentinel; read replies
    until every line is answered or the broker closes the connection."""
    suffix = b"\n" + SENTINEL if sentinel else b""
    payload = data + suffix
    lines = payload.count(b"\n")
    replies: list[dict[str, Any]] = []
    closed = False
    with anyio.fail_after(EXCHANGE_TIMEOUT):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            receiver = BufferedByteReceiveStream(stream)
            if hello:
                await stream.send(b'{"id":"hello","op":"hello","version":1}\n')
                greeting = json.loads(await receiver.receive_until(b"\n", 1 << 20))
                assert greeting["ok"] is True, greeting
            try:
                await stream.send(payload)
            except (anyio.BrokenResourceError, OSError):
                closed = True  # it closed on us mid-way (e.g. frame_too_large): read what came
            while len(replies) < lines:
                try:
                    line = await receiver.receive_until(b"\n", 1 << 24)
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                    closed = True
                    break
                replies.append(_valid_reply(line))
    return Exchange(lines, replies, closed)


def _valid_reply(line: bytes) -> dict[str, Any]:
    """A reply line must be one strict JSON object with id and ok (and a known error)."""
    text = line.decode("utf-8")  # raises on invalid UTF-8
    reply = json.loads(text, parse_constant=_no_constants)
    assert isinstance(reply, dict), reply
    assert "id" in reply and isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        error = reply["error"]
        assert error["code"] in KNOWN_CODES, reply
        assert isinstance(error["message"], str) and "Traceback" not in error["message"]
    return reply


def _no_constants(name: str) -> Any:
    raise AssertionError(f"the broker sent {name}, which is not JSON")


def assert_answered_or_closed(exchange: Exchange) -> None:
    """Each line got exactly one reply; or the broker closed after saying why."""
    codes = [r["error"]["code"] for r in exchange.replies if not r["ok"]]
    if exchange.closed:
        assert set(codes) & CLOSING_CODES, f"closed without a closing error: {exchange}"
    else:
        assert len(exchange.replies) == exchange.lines_sent, exchange


# --- strategies -----------------------------------------------------------------------------------

#: Strings with some lone surrogates: JSON can carry them as \\udXXX escapes.
any_text = st.text(
    alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF)
    | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    max_size=30,
)
numbers = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, -1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e308, -1e308, 5e-324, 1e10, 1e11 + 1])
)
scalars = st.none() | st.booleans() | numbers | any_text
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(any_text, inner, max_size=5),
    max_leaves=25,
)
request_ids = st.none() | numbers | any_text | st.lists(scalars, max_size=2) | st.booleans()
#: Every op but bye (which ends the connection on purpose; tested on its own).
ops = st.sampled_from(sorted(set(protocol.REQUESTS) - {"bye"}))


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@st.composite
def typed_requests(draw: st.DrawFn) -> bytes:
    """A request for a real op whose fields hold values of any type, often the wrong one."""
    op = draw(ops)
    fields = [name for name in protocol.REQUESTS[op].__struct_fields__ if name not in ("id", "op")]
    chosen = draw(st.lists(st.sampled_from(fields or ["x"]), unique=True, max_size=4))
    frame: dict[str, Any] = {"op": op}
    if draw(st.booleans()):
        frame["id"] = draw(request_ids)
    for name in chosen:
        frame[name] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        frame[draw(any_text)] = draw(json_values)  # an unknown field
    return _dumps(frame)


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


# --- the tests ----------------------------------------------------------------------------------


@EXAMPLES
@given(data=st.binary(max_size=3000), hello=st.booleans())
def test_random_bytes(wire: Wire, data: bytes, hello: bool) -> None:
    # Hypothesis also draws constants found in the source, such as '{"id":3,"op":"bye"}'
    # (tools/torture): a valid bye ends the connection with an ok reply, as it should.
    assume(b'"bye"' not in data)
    assert_answered_or_closed(wire.exchange(data, hello=hello))
    wire.assert_healthy()


@EXAMPLES
@given(values=st.lists(json_values, min_size=1, max_size=5))
def test_random_json(wire: Wire, values: list[Any]) -> None:
    assert_answered_or_closed(wire.exchange(b"\n".join(_dumps(v) for v in values)))
    wire.assert_healthy()


@settings(EXAMPLES, max_examples=100)
@given(frames=st.lists(typed_requests(), min_size=1, max_size=6))
def test_wrong_types_for_every_op(wire: Wire, frames: list[bytes]) -> None:
    assert_answered_or_closed(wire.exchange(b"\n".join(frames)))
    wire.assert_healthy()


@EXAMPLES
@given(
    depth=st.integers(min_value=1, max_value=10_000),  # frames stay under MAX_FRAME
    kind=st.sampled_from(["list", "object"]),
    where=st.sampled_from(["payload", "result", "id", "meta"]),
)
def test_deeply_nested_values(wire: Wire, depth: int, kind: str, where: str) -> None:
    nested = _nested(depth, kind)
    if where == "payload":
        frame = b'{"id":1,"op":"enqueue","queue":"deep","payload":' + nested + b"}"
    elif where == "result":
        frame = b'{"id":1,"op":"ack","task_id":1,"lease_token":"t","result":' + nested + b"}"
    elif where == "id":
        frame = b'{"op":"stats","id":' + nested + b"}"
    else:
        frame = b'{"id":1,"op":"hello","version":1,"worker":{"id":"w","meta":' + nested + b"}}"
    exchange = wire.exchange(frame)
    assert_answered_or_closed(exchange)
    wire.assert_healthy()


@pytest.mark.parametrize("depth", [1, 50, 200, 255, 256, 257, 900, 1000, 5000, 20_000])
def test_nesting_depth_is_stored_or_refused_cleanly(wire: Wire, depth: int) -> None:
    """Whatever depth is accepted can be read back; deeper is bad_request."""
    frame = b'{"id":1,"op":"enqueue","queue":"deep","payload":' + _nested(depth, "list") + b"}"
    exchange = wire.exchange(frame)
    assert_answered_or_closed(exchange)
    # Too deep to parse at all: the refusal carries "id": null (PROTOCOL.md, Fine points).
    reply = next(r for r in exchange.replies if r["id"] in (1, None))
    if reply["ok"]:
        got = wire.exchange(_dumps({"id": 2, "op": "get", "task_id": reply["task_id"]}))
        assert got.reply_to(2)["ok"] is True, got
    else:
        assert reply["error"]["code"] == "bad_request"
    wire.assert_healthy()


@EXAMPLES
@given(
    garbage=st.binary(min_size=1, max_size=50).filter(lambda b: _not_utf8(b)),
    where=st.sampled_from(["payload", "queue", "id", "op", "bare"]),
)
def test_non_utf8(wire: Wire, garbage: bytes, where: str) -> None:
    garbage = garbage.replace(b"\n", b" ").replace(b'"', b"'").replace(b"\\", b"/")
    assume(_not_utf8(garbage))
    if where == "bare":
        frame = garbage
    else:
        frame = {
            "payload": b'{"id":1,"op":"enqueue","queue":"q","payload":"' + garbage + b'"}',
            "queue": b'{"id":1,"op":"enqueue","queue":"' + garbage + b'","payload":1}',
            "id": b'{"id":"' + garbage + b'","op":"stats"}',
            "op": b'{"id":1,"op":"' + garbage + b'"}',
        }[where]
    exchange = wire.exchange(frame)
    assert_answered_or_closed(exchange)
    refusal = [r for r in exchange.replies if r["id"] != "sentinel"]
    assert [r["error"]["code"] for r in refusal] == ["bad_request"], exchange
    wire.assert_healthy()


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@pytest.mark.parametrize(
    "frame",
    [
        b'{"id":1,"op":"enqueue","queue":"q","payload":1e400}',
        b'{"id":1,"op":"enqueue","queue":"q","payload":-1e400}',
        b'{"id":1,"op":"enqueue","queue":"q","payload":NaN}',
        b'{"id":1,"op":"enqueue","queue":"q","payload":Infinity}',
        b'{"id":1,"op":"enqueue","queue":"q","payload":' + b"9" * 5000 + b"}",
        b'{"id":' + b"9" * 5000 + b',"op":"stats"}',
        b'{"id":1e400,"op":"stats"}',
        b'{"id":123456789012345678901234567890,"op":"stats"}',
        b'{"id":1,"op":"get","task_id":99999999999999999999999}',
        b'{"id":1,"op":"claim","queues":["q"],"max":99999999999999999999999}',
        b'{"id":1,"op":"enqueue","queue":"q","payload":1,"priority":99999999999999999999}',
        b'{"id":1,"op":"enqueue","queue":"q","payload":1,"delay":1e308}',
        b'{"id":1,"op":"enqueue","queue":"q","payload":1,"run_at":-1e308}',
        b'{"id":1,"op":"list","after_id":-99999999999999999999,"limit":1}',
        b'{"id":1,"op":"requeue","task_ids":[1,99999999999999999999]}',
        b'{"id":1,"op":"enqueue","queue":"q","payload":"\\ud800"}',
        b'{"id":"\\ud800","op":"stats"}',
        b'{"id":"\\udfff\\ud800","op":"nope"}',
        b'{"id":"\\ud800","op":"enqueue","queue":"q"}',
        b'{"id":1,"op":"enqueue","queue":"\\ud800","payload":1}',
        b'{"id":1,"op":"stats"',
        b'{"id":1,"op":"stats"}}',
        b'{"id":1,"op":"stats"} {"id":2,"op":"stats"}',
        b'{"id":1,"op":"stats","id":2}',
        b"\xef\xbb\xbf" + b'{"id":1,"op":"stats"}',
        b"\x00" * 100,
        b"\r",
        b"",
        b"   ",
        b'"just a string"',
        b"[1,2,3]",
        b"null",
    ],
)
def test_edge_frames(wire: Wire, frame: bytes) -> None:
    exchange = wire.exchange(frame)
    assert_answered_or_closed(exchange)
    wire.assert_healthy()


def test_a_lone_surrogate_id_is_echoed_as_valid_json(wire: Wire) -> None:
    """Regression: an id with a \\ud800 escape crashed the connection (no reply, closed)."""
    exchange = wire.exchange(b'{"id":"\\ud800","op":"stats"}')
    assert not exchange.closed
    assert exchange.reply_to("\ud800")["ok"] is True
    wire.assert_healthy()


def test_frame_too_large_is_answered_then_closed(wire: Wire) -> None:
    frame = b'{"id":1,"op":"enqueue","payload":"' + b"x" * (MAX_FRAME + 10)
    received = wire.portal.call(_half_frame, wire.port, frame, "wait")
    replies = [_valid_reply(line) for line in received.splitlines()]
    assert [r["ok"] for r in replies] == [True, False]  # hello, then the refusal
    assert replies[1]["error"]["code"] == "frame_too_large"
    wire.assert_healthy()


def test_bye_answers_then_closes(wire: Wire) -> None:
    exchange = wire.exchange(b'{"id":1,"op":"stats"}\n{"id":2,"op":"bye"}\n', sentinel=False)
    assert [r["id"] for r in exchange.replies] == [1, 2]
    assert all(r["ok"] for r in exchange.replies)
    wire.assert_healthy()


# --- connections that end badly -------------------------------------------------------------------


async def _half_frame(port: int, data: bytes, ending: str) -> bytes:
    """Send ``data`` (no newline), then end the connection: ``eof`` (half-close, then read
    to the end), ``wait`` (read until the broker closes), ``close`` or ``reset`` (RST).
    Returns what the broker sent."""
    received = b""
    with anyio.fail_after(EXCHANGE_TIMEOUT):
        stream = await anyio.connect_tcp("127.0.0.1", port)
        try:
            await stream.send(b'{"id":0,"op":"hello","version":1}\n' + data)
            if ending in ("eof", "wait"):
                if ending == "eof":
                    await stream.send_eof()
                while True:
                    try:
                        received += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
            elif ending == "reset":
                raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            await stream.aclose()
    return received


@EXAMPLES
@given(
    data=st.binary(max_size=2000).map(lambda b: b.replace(b"\n", b"")),
    ending=st.sampled_from(["eof", "close", "reset"]),
)
def test_half_a_frame_then_the_connection_ends(wire: Wire, data: bytes, ending: str) -> None:
    received = wire.portal.call(_half_frame, wire.port, data, ending)
    if ending == "eof":
        # The hello is answered; the unfinished line may be dropped; then the broker closes.
        lines = [_valid_reply(line) for line in received.splitlines()]
        assert lines and lines[0]["id"] == 0 and lines[0]["ok"] is True
    wire.assert_healthy()


@pytest.mark.parametrize("ending", ["eof", "close", "reset"])
def test_a_valid_request_without_newline_then_eof(wire: Wire, ending: str) -> None:
    wire.portal.call(
        _half_frame, wire.port, b'{"id":1,"op":"enqueue","queue":"q","payload":1}', ending
    )
    wire.assert_healthy()


async def _silent(port: int, seconds: float) -> bytes:
    """Connect, say nothing; what the broker sends before it closes (hello_timeout)."""
    with anyio.fail_after(EXCHANGE_TIMEOUT):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            received = b""
            with anyio.move_on_after(seconds):
                while True:
                    try:
                        received += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return received + b"<closed>"
            return received


def test_a_connection_that_never_says_hello_is_closed(wire: Wire) -> None:
    received = wire.portal.call(_silent, wire.port, 5.0)
    assert received.endswith(b"<closed>")
    wire.assert_healthy()


def test_broker_kept_serving_throughout(wire: Wire) -> None:
    """Last in the module: the healthy client saw every example through, and does real work."""
    wire.assert_healthy()
    queue = "healthy-final"
    task_id = wire.healthy.enqueue(queue, {"last": True}).task_id
    claimed = wire.healthy.claim(queue, wait=1.0)
    assert [t.task_id for t in claimed] == [task_id]
    wire.healthy.ack(task_id, claimed[0].lease_token)
    assert wire.healthy.get(task_id).state == "succeeded"
    assert wire.checked > 100
