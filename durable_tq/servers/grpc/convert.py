"""Between protobuf messages and the wire's types, by field name (the proto mirrors schema.py).

A request message becomes the op's msgspec request, validated exactly as a TCP line is
(``msgspec.convert`` with the same constraints). A ``*_json`` field carries the JSON text of
the wire field without the suffix: checked for syntax, then passed through as
:class:`msgspec.Raw`, never decoded. A broker result (a dict) fills the reply message the
same way back. Field plans are built once per message type from its descriptor.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

import msgspec
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from durable_tq import errors

JSON_SUFFIX = "_json"
#: Wire fields whose JSON is decoded into a value rather than passed through as raw text
#: (``result_ttl_json`` of QueueSettingsRequest: a number, or ``null`` to clear it).
DECODED_JSON = frozenset({"meta", "result_ttl"})
#: Request messages that stand for a bare wire value when this field of theirs is set: a
#: ``Parent`` with ``task_id`` is the task id itself, one with ``index`` is ``{"index": n}``.
BARE_VALUE = {"Parent": "task_id"}

_MESSAGE = FieldDescriptor.TYPE_MESSAGE

S = TypeVar("S", bound=msgspec.Struct)
M = TypeVar("M", bound=Message)


def wire_name(field_name: str) -> str:
    """The wire field a proto field stands for (``payload_json`` -> ``payload``)."""
    return field_name.removesuffix(JSON_SUFFIX)


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _is_map(field: FieldDescriptor) -> bool:
    message_type = field.message_type
    return message_type is not None and message_type.GetOptions().map_entry


# --- requests -----------------------------------------------------------------------------------


def _raw_json(text: str, name: str) -> msgspec.Raw:
    try:
        return msgspec.json.decode(text.encode(), type=msgspec.Raw)
    except (msgspec.DecodeError, UnicodeEncodeError) as exc:
        raise errors.BadRequest(f"{name}: not JSON text: {exc}") from exc


def _message_value(message: Message) -> Any:
    """A nested request message as its wire value: its fields, or the bare value it stands for."""
    bare = BARE_VALUE.get(message.DESCRIPTOR.name)
    if bare is not None and message.HasField(bare):
        return getattr(message, bare)
    return message_to_fields(message)


def message_to_fields(message: Message) -> dict[str, Any]:
    """The fields set in a request message, as wire names and values."""
    fields: dict[str, Any] = {}
    for field, value in message.ListFields():
        name = field.name
        if field.type == _MESSAGE:
            if _is_repeated(field):
                fields[name] = [_message_value(item) for item in value]
            else:
                fields[name] = _message_value(value)
        elif name.endswith(JSON_SUFFIX):
            wire = wire_name(name)
            if wire in DECODED_JSON:
                try:
                    fields[wire] = msgspec.json.decode(value)
                except msgspec.DecodeError as exc:
                    raise errors.BadRequest(f"{name}: not JSON text: {exc}") from exc
            else:
                fields[wire] = _raw_json(value, name)
        elif _is_repeated(field):
            fields[name] = list(value)
        else:
            fields[name] = value
    return fields


def to_struct(message: Message, struct_type: type[S]) -> S:
    """The op's request (or a nested struct), validated as a TCP line is (``bad_request``)."""
    fields = message_to_fields(message)
    try:
        return msgspec.convert(fields, struct_type)
    except msgspec.ValidationError as exc:
        raise errors.BadRequest(str(exc)) from exc
    except ValueError as exc:  # a __post_init__ check (delay and run_at, ...)
        raise errors.BadRequest(str(exc)) from exc


# --- replies ------------------------------------------------------------------------------------

Filler = Callable[[Message, dict[str, Any]], None]


def _json_text(value: Any) -> str:
    if isinstance(value, msgspec.Raw):
        return bytes(value).decode()
    if isinstance(value, str):  # a result stored as text is already JSON
        return value
    return msgspec.json.encode(value).decode()


def _error_fields(message: Message, value: dict[str, Any]) -> None:
    details = {k: v for k, v in value.items() if k not in ("code", "message")}
    message.code = str(value.get("code", "internal"))  # type: ignore[attr-defined]
    message.message = str(value.get("message", ""))  # type: ignore[attr-defined]
    message.details_json = msgspec.json.encode(details).decode()  # type: ignore[attr-defined]


@cache
def _filler(descriptor: Descriptor) -> Filler:
    """A function that copies a result dict into a message of this type."""
    if descriptor.name == "Error":
        return _error_fields
    steps = [_field_step(field) for field in descriptor.fields]

    def fill(message: Message, value: dict[str, Any]) -> None:
        for step in steps:
            step(message, value)

    return fill


Step = Callable[[Message, dict[str, Any]], None]


def _field_step(field: FieldDescriptor) -> Step:
    if _is_map(field):
        return _map_step(field)
    if field.type == _MESSAGE:
        return _message_step(field)
    return _scalar_step(field)


def _map_step(field: FieldDescriptor) -> Step:
    name, key = field.name, wire_name(field.name)
    entry = field.message_type
    assert entry is not None
    fill_value = _filler(entry.fields_by_name["value"].message_type)

    def put_map(message: Message, value: dict[str, Any]) -> None:
        items = value.get(key)
        if items:
            target = getattr(message, name)
            for map_key, item in items.items():
                fill_value(target[map_key], item)

    return put_map


def _message_step(field: FieldDescriptor) -> Step:
    name, key = field.name, wire_name(field.name)
    fill_item = _filler(field.message_type)
    if _is_repeated(field):

        def put_messages(message: Message, value: dict[str, Any]) -> None:
            items = value.get(key)
            if items:
                target = getattr(message, name)
                for item in items:
                    fill_item(target.add(), item)

        return put_messages

    def put_message(message: Message, value: dict[str, Any]) -> None:
        item = value.get(key)
        if item is not None:
            fill_item(getattr(message, name), item)

    return put_message


def _scalar_step(field: FieldDescriptor) -> Step:
    name, key = field.name, wire_name(field.name)
    if name.endswith(JSON_SUFFIX):

        def put_json(message: Message, value: dict[str, Any]) -> None:
            item = value.get(key)
            if item is not None:
                setattr(message, name, _json_text(item))

        return put_json
    if _is_repeated(field):

        def put_list(message: Message, value: dict[str, Any]) -> None:
            items = value.get(key)
            if items:
                getattr(message, name).extend(items)

        return put_list

    def put_scalar(message: Message, value: dict[str, Any]) -> None:
        item = value.get(key)
        if item is not None:
            setattr(message, name, item)

    return put_scalar


def fill_reply(reply: M, result: dict[str, Any]) -> M:
    """``reply`` with the fields of a broker result (None leaves a field unset)."""
    _filler(reply.DESCRIPTOR)(reply, result)
    return reply
