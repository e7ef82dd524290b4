"""OpenAPI 3.1 for the HTTP API, generated from the op table's msgspec types (never by hand).

Each route's body type is the op's request type without the fields the path or query carry
(``msgspec.defstruct``); replies are the op's reply types; every schema comes out of one
``msgspec.json.schema_components`` call, so the document always matches what is decoded.
"""

from __future__ import annotations

import functools
import operator
import types
import typing
from typing import Any

import msgspec

from durable_tq.servers.http.routes import ROUTES, Route
from durable_tq.wire import schema as s
from durable_tq.wire.ops import OPS

REF = "#/components/schemas/{name}"
ERROR_STATUSES = {
    "400": "bad_request: a field is missing or wrong (the message names it)",
    "401": "unauthorized: missing or wrong bearer token",
    "403": "forbidden: the token's role may not do this",
    "404": "not_found: no such task, queue, worker or route",
    "409": "conflict (not allowed in the task's state) or lease_lost (stale lease_token)",
    "413": "frame_too_large: body over max_frame_bytes",
    "429": "busy: backpressure; retry after Retry-After seconds",
    "500": "internal: see the broker's log",
    "503": "shutting_down: the broker is stopping; retry later",
}


class ErrorDetail(msgspec.Struct, kw_only=True):
    """The wire's error object: ``code`` and ``message``, and sometimes more (``retry_after``
    for busy, ``task_id``, ``state``)."""

    code: str
    message: str
    retry_after: float | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    error: ErrorDetail


class Health(msgspec.Struct, kw_only=True):
    status: str
    reason: str | None = None


#: Example request bodies, by route name (the docs' curl lines use the same shapes).
EXAMPLES: dict[str, Any] = {
    "post_/v1/queues/{queue}/tasks": {"payload": {"to": "ada@example.com"}, "priority": 5},
    "post_/v1/tasks:batch": {
        "tasks": [{"queue": "emails", "payload": {"n": 1}}, {"queue": "emails", "payload": 2}]
    },
    "post_/v1/queues/{queue}/claim": {"max": 10, "wait": 20, "lease": 60},
    "post_/v1/claim": {"queues": ["emails", "reports"], "max": 1, "wait": 5},
    "post_/v1/tasks/{task_id}/ack": {"lease_token": "LEASE_TOKEN", "result": {"sent": True}},
    "post_/v1/tasks/{task_id}/fail": {"lease_token": "LEASE_TOKEN", "error": "SMTP timeout"},
    "post_/v1/tasks/{task_id}/release": {"lease_token": "LEASE_TOKEN", "delay": 10},
    "post_/v1/tasks/{task_id}/extend": {"lease_token": "LEASE_TOKEN", "lease": 120},
    "post_/v1/settle": {
        "settles": [{"task_id": 1, "lease_token": "LEASE_TOKEN", "outcome": "ack"}],
        "claim": {"queues": ["emails"], "max": 1, "wait": 5},
    },
    "post_/v1/requeue": {"queue": "emails", "state": "dead"},
    "post_/v1/workers/{worker_id}/state": {"state": "quiet"},
}


@functools.cache
def _mirror(tp: Any) -> Any:
    """``tp`` for the schema: Structs whose payload or result defaults to raw ``null`` (which
    msgspec cannot put in a schema) are copied with ``Any = None`` there; the rest as is."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        fields = msgspec.structs.fields(tp)
        specs = [_field_spec(field) for field in fields]
        if all(spec[1] is field.type for spec, field in zip(specs, fields, strict=True)):
            return tp  # nothing raw in it, nor in the types it holds
        forbid = bool(tp.__struct_config__.forbid_unknown_fields)
        return msgspec.defstruct(tp.__name__, specs, kw_only=True, forbid_unknown_fields=forbid)
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        inner, *metadata = typing.get_args(tp)
        mirrored = _mirror(inner)
        return tp if mirrored is inner else typing.Annotated[(mirrored, *metadata)]
    if origin is list:
        (item,) = typing.get_args(tp)
        return tp if _mirror(item) is item else list[_mirror(item)]  # type: ignore[misc]
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(tp)
        mirrored_members = tuple(_mirror(m) for m in members)
        if all(a is b for a, b in zip(members, mirrored_members, strict=True)):
            return tp
        return functools.reduce(operator.or_, mirrored_members)
    return tp


def _field_spec(field: msgspec.structs.FieldInfo) -> tuple[Any, ...]:
    if isinstance(field.default, msgspec.Raw):  # payload, result: any JSON, null if left out
        return (field.name, Any, None)
    tp = _mirror(field.type)
    if field.required:
        return (field.name, tp)
    if field.default_factory is not msgspec.NODEFAULT:
        return (field.name, tp, msgspec.field(default_factory=field.default_factory))
    return (field.name, tp, field.default)


def _fields(route: Route) -> list[msgspec.structs.FieldInfo]:
    return list(msgspec.structs.fields(OPS[route.op].request))


def _body_type(route: Route) -> type[msgspec.Struct] | None:
    if not route.body:
        return None
    taken = set(route.path_params) | set(route.query.values()) | {"id"}
    taken |= {wrap(0)[0] for wrap in route.path_fields.values()}
    specs = [_field_spec(field) for field in _fields(route) if field.name not in taken]
    name = "".join(part.title() for part in route.op.split("_")) + "Body"
    if route.path_fields or route.path == "/v1/claim":
        name = name.replace("Body", "In" + _title(route) + "Body")
    return msgspec.defstruct(name, specs, kw_only=True, forbid_unknown_fields=True)


def _title(route: Route) -> str:
    return "Path" if route.path_fields else "Queues"


def _param_type(route: Route, param: str, field_name: str | None) -> Any:
    for field in _fields(route):
        if field.name == field_name:
            return field.type
    if param == "task_id":
        return s.TaskId
    return s.QueueName if param == "queue" else str


def _reply_type(route: Route) -> Any:
    return route.view or OPS[route.op].reply


@functools.cache
def build_spec() -> dict[str, Any]:
    """The whole OpenAPI document (built once)."""
    bodies = {route.name: _body_type(route) for route in ROUTES}
    params: dict[tuple[str, str], Any] = {}
    for route in ROUTES:
        for param in route.path_params:
            wrapped = param in route.path_fields
            params[(route.name, param)] = _param_type(route, param, None if wrapped else param)
        for param, field_name in route.query.items():
            params[(route.name, param)] = _param_type(route, param, field_name)
    types: list[Any] = [ErrorBody, Health]
    types += [b for b in bodies.values() if b is not None]
    types += [_reply_type(route) for route in ROUTES]
    types += list(params.values())
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    schema_of = dict(zip(map(id, types), schemas, strict=False))
    error_schema = schema_of[id(ErrorBody)]
    health_schema = schema_of[id(Health)]

    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op = OPS[route.op]
        operation: dict[str, Any] = {
            "operationId": route.name.replace("/", "_").replace("{", "").replace("}", ""),
            "summary": route.summary or op.summary,
            "description": f"Op `{op.name}` of the wire protocol (role: "
            f"{op.role.name.lower()}; writes: {str(op.writes).lower()}).",
            "tags": [_tag(route)],
            "parameters": _parameters(route, params, schema_of),
            "responses": _responses(route, schema_of[id(_reply_type(route))], error_schema),
        }
        body = bodies[route.name]
        if body is not None:
            media: dict[str, Any] = {"schema": schema_of[id(body)]}
            if route.name in EXAMPLES:
                media["example"] = EXAMPLES[route.name]
            operation["requestBody"] = {"required": False, "content": {"application/json": media}}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    paths.update(_plain_paths(health_schema))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "durable_tq HTTP API",
            "version": s.SERVER_NAME.rsplit("/", 1)[-1],
            "description": "Every route is an op of the wire protocol (docs/protocol.md), "
            "with the same field names and error codes. See docs/http.md.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "durable_tq_token",
                    "description": "Set by the dashboard's login (base64url of the token). "
                    "A POST, PUT or DELETE authenticated by it needs X-Durable-TQ-CSRF: 1.",
                },
            },
        },
        "security": [{"bearer": []}, {"cookie": []}],
    }


def _tag(route: Route) -> str:
    if route.op in ("claim", "ack", "fail", "release", "extend", "settle"):
        return "workers"
    if route.op in ("enqueue", "enqueue_many", "get", "list", "cancel", "requeue"):
        return "tasks"
    return "operations"


def _parameters(
    route: Route, params: dict[tuple[str, str], Any], schema_of: dict[int, Any]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {
            "name": param,
            "in": "path",
            "required": True,
            "schema": schema_of[id(params[(route.name, param)])],
        }
        for param in route.path_params
    ]
    for param in route.query:
        schema = schema_of[id(params[(route.name, param)])]
        out.append({"name": param, "in": "query", "required": False, "schema": schema})
    for param in route.required_query:
        out.append(
            {
                "name": param,
                "in": "query",
                "required": True,
                "description": "Must repeat the queue name.",
                "schema": {"type": "string"},
            }
        )
    return out


def _responses(route: Route, reply_schema: Any, error_schema: Any) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(route.status): {
            "description": "ok",
            "content": {"application/json": {"schema": reply_schema}},
        }
    }
    for status, description in ERROR_STATUSES.items():
        responses[status] = {
            "description": description,
            "content": {"application/json": {"schema": error_schema}},
        }
    return responses


def _plain_paths(health_schema: Any) -> dict[str, Any]:
    def health(summary: str) -> dict[str, Any]:
        content = {"application/json": {"schema": health_schema}}
        return {
            "get": {
                "operationId": summary.split()[0].lower(),
                "summary": summary,
                "tags": ["health"],
                "security": [],
                "responses": {
                    "200": {"description": "ok", "content": content},
                    "503": {"description": "not ready, with the reason", "content": content},
                },
            }
        }

    return {
        "/healthz": health("Healthz: the process answers."),
        "/readyz": health("Readyz: the database is open, migrated and writable."),
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format).",
                "tags": ["health"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
