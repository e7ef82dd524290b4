"""The shipped proto against the op table and the wire types, and the committed generated code
against a fresh generation (grpc_tools.protoc into a temp folder)."""

from __future__ import annotations

import typing
from pathlib import Path

import msgspec
import pytest

from durable_tq.servers.grpc import durable_tq_pb2 as pb
from durable_tq.servers.grpc import generate
from durable_tq.servers.grpc.convert import wire_name
from durable_tq.servers.grpc.service import rpc_name
from durable_tq.wire import schema as s
from durable_tq.wire.ops import OPS

SERVICE = pb.DESCRIPTOR.services_by_name["DurableTQ"]
#: Envelope fields of a request: the id is gRPC's own business, the op is the RPC.
ENVELOPE = {"id", "op"}
#: Wire structs nested in others, and the proto message standing for each.
NESTED = {
    s.WorkerSpec: "WorkerSpec",
    s.EnqueueItem: "EnqueueRequest",
    s.ClaimArgs: "ClaimRequest",
    s.SettleItem: "SettleItem",
    s.LeasedTask: "LeasedTask",
    s.SettleResult: "SettleResult",
    s.TaskInfo: "TaskInfo",
    s.QueueStats: "QueueStats",
    s.SkippedTask: "SkippedTask",
    s.WorkerInfo: "WorkerInfo",
    s.EarlierItem: "Parent",
    s.ScheduleInfo: "ScheduleInfo",
    s.QueueLimits: "QueueLimits",
    s.ThroughputSample: "ThroughputSample",
}
#: Proto fields beyond the struct's: ``Parent`` is the wire's ``TaskId | EarlierItem`` (a oneof
#: of a task id and an index); ``stats`` adds a ``limits`` object to each limited queue
#: (docs/protocol.md, "Schedules and queue limits"), which QueueStats does not declare.
PROTO_ONLY = {"Parent": {"task_id"}, "QueueStats": {"limits"}}


def proto_fields(message_name: str) -> set[str]:
    descriptor = pb.DESCRIPTOR.message_types_by_name[message_name]
    return {wire_name(field.name) for field in descriptor.fields} - PROTO_ONLY.get(
        message_name, set()
    )


def struct_fields(struct: type[msgspec.Struct]) -> set[str]:
    fields = set(struct.__struct_fields__)
    if issubclass(struct, s.Request) or struct is s.EnqueueItem:
        fields -= ENVELOPE
    return fields


def nested_structs(struct: type[msgspec.Struct]) -> set[type[msgspec.Struct]]:
    found: set[type[msgspec.Struct]] = set()
    for hint in typing.get_type_hints(struct, include_extras=True).values():
        stack = [hint]
        while stack:
            item = stack.pop()
            if isinstance(item, type) and issubclass(item, msgspec.Struct):
                found.add(item)
            stack.extend(typing.get_args(item))
    return found


@pytest.mark.parametrize("op_name", sorted(OPS))
def test_every_op_has_an_rpc_with_matching_messages(op_name: str) -> None:
    op = OPS[op_name]
    method = SERVICE.methods_by_name.get(rpc_name(op_name))
    assert method is not None, f"no RPC {rpc_name(op_name)} for op {op_name}"
    assert not method.client_streaming and not method.server_streaming
    assert method.input_type.name == op.request.__name__ + "Request"
    assert method.output_type.name == op.reply.__name__
    assert proto_fields(method.input_type.name) == struct_fields(op.request)
    assert proto_fields(method.output_type.name) == struct_fields(op.reply)


def test_nested_messages_match_their_structs() -> None:
    seen: set[type[msgspec.Struct]] = set()
    for op in OPS.values():
        seen |= nested_structs(op.request) | nested_structs(op.reply)
    for struct in seen:
        assert struct in NESTED, f"{struct.__name__} has no proto message listed in NESTED"
        assert proto_fields(NESTED[struct]) == struct_fields(struct), struct.__name__


def test_no_rpc_without_an_op() -> None:
    ops = {rpc_name(name) for name in OPS}
    assert {m.name for m in SERVICE.methods} - ops == {"Work"}
    work = SERVICE.methods_by_name["Work"]
    assert work.client_streaming and work.server_streaming


def test_generated_code_is_what_the_proto_gives(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    fresh = generate.generate(tmp_path)
    for path in fresh:
        committed = generate.HERE / path.name
        assert committed.read_text() == path.read_text(), (
            f"{committed.name} is stale: run python -m durable_tq.servers.grpc.generate"
        )


def test_the_proto_ships_in_the_package() -> None:
    assert generate.PROTO.is_file()
    assert pb.DESCRIPTOR.package == "durable_tq.v1"


def test_grpc_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from durable_tq import errors
    from durable_tq.config import load_settings

    monkeypatch.chdir(tmp_path)
    assert load_settings().grpc_address is None
    assert load_settings(grpc="[::1]:7999").grpc_address == ("::1", 7999)
    monkeypatch.setenv("DURABLE_TQ_GRPC_ENABLED", "true")
    monkeypatch.setenv("DURABLE_TQ_GRPC_PORT", "0")
    assert load_settings(host="0.0.0.0").grpc_address == ("0.0.0.0", 0)
    with pytest.raises(errors.ConfigError, match="grpc"):
        load_settings(grpc="no-port")


def test_parent_is_a_oneof_of_task_id_and_index() -> None:
    parent = pb.DESCRIPTOR.message_types_by_name["Parent"]
    assert [field.name for field in parent.oneofs_by_name["ref"].fields] == ["task_id", "index"]


def test_after_converts_task_ids_and_index_references() -> None:
    from durable_tq import errors
    from durable_tq.servers.grpc.convert import to_struct

    request = pb.EnqueueManyRequest(
        tasks=[
            pb.EnqueueRequest(queue="q"),
            pb.EnqueueRequest(
                queue="q",
                after=[pb.Parent(task_id=7), pb.Parent(index=0)],
                on_parent_failure="run",
            ),
        ]
    )
    many = to_struct(request, s.EnqueueMany)
    assert many.tasks[0].after is None
    assert many.tasks[1].after == [7, s.EarlierItem(index=0)]
    assert many.tasks[1].on_parent_failure is s.ParentFailure.RUN
    with pytest.raises(errors.BadRequest):
        to_struct(pb.EnqueueRequest(queue="q", after=[pb.Parent()]), s.Enqueue)
    with pytest.raises(errors.BadRequest):
        to_struct(pb.EnqueueRequest(queue="q", after=[pb.Parent(task_id=0)]), s.Enqueue)


def test_queue_settings_result_ttl_json_sets_clears_or_keeps() -> None:
    from durable_tq.servers.grpc.convert import to_struct

    def convert(**fields: str) -> s.QueueSettings:
        return to_struct(pb.QueueSettingsRequest(queue="q", **fields), s.QueueSettings)

    assert convert(result_ttl_json="60").result_ttl == 60
    assert convert(result_ttl_json="null").result_ttl is None
    assert convert().result_ttl is msgspec.UNSET
