"""The Starlette application: one ASGI endpoint per route of ``routes.ROUTES``.

An endpoint authenticates the bearer token, builds the op's request from path, query and
body (through ``codec.parse_line``, so HTTP validates exactly as the wire does), calls the
broker method the op table names, and answers with the op's reply as JSON, or with the
wire's ``{"error": {...}}`` and the status mapped from its code (``STATUS``).

A claim (or a settle that claims) whose client disconnects, or that is ended by shutdown,
hands the tasks it leased straight back, as the TCP side does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute
from starlette.types import Receive, Scope, Send

from durable_tq import errors
from durable_tq.core.broker import Broker, Result, Session
from durable_tq.servers.http import auth, health, openapi
from durable_tq.servers.http.dashboard import Dashboard
from durable_tq.servers.http.metrics import Metrics
from durable_tq.servers.http.routes import ROUTES, Route
from durable_tq.wire import codec
from durable_tq.wire import schema as s
from durable_tq.wire.ops import OPS, Op

if TYPE_CHECKING:
    from durable_tq.servers.tcp import BrokerServer

log = logging.getLogger("durable_tq.http")

#: Wire error code -> HTTP status.
STATUS: dict[str, int] = {
    "bad_request": 400,
    "unknown_op": 400,
    "unsupported_version": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "lease_lost": 409,
    "frame_too_large": 413,
    "busy": 429,
    "too_many_connections": 503,
    "shutting_down": 503,
    "internal": 500,
}
JSON = "application/json"

_BODY = msgspec.json.Decoder(dict[str, msgspec.Raw])


class HttpState:
    """What the endpoints share: the broker, the server, parked claims, shutdown."""

    def __init__(self, server: BrokerServer) -> None:
        self.server = server
        self.broker: Broker = server.broker
        self.settings = server.settings
        self.stopping = False
        self.claims: set[anyio.CancelScope] = set()
        self.metrics = Metrics(self)
        #: Open HTTP connections (uvicorn's count; set by HttpFront).
        self.connection_count: Callable[[], int] = lambda: 0

    def begin_shutdown(self) -> None:
        self.stopping = True
        for scope in list(self.claims):
            scope.cancel()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(codec.encode(body), status, headers, media_type=JSON)


def error_response(exc: errors.DurableTQError) -> Response:
    headers: dict[str, str] = {}
    if isinstance(exc, errors.Busy):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    elif isinstance(exc, errors.Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="durable_tq"'
    return json_response({"error": exc.to_wire()}, STATUS.get(exc.code, 500), headers)


# --- building the request ---------------------------------------------------------------------


def _takes_text(info: msgspec.inspect.Type) -> bool:
    """Whether a field of this type takes a string (then a parameter is sent as one)."""
    if isinstance(info, msgspec.inspect.StrType | msgspec.inspect.EnumType):
        return True
    if isinstance(info, msgspec.inspect.LiteralType):
        return any(isinstance(value, str) for value in info.values)
    if isinstance(info, msgspec.inspect.UnionType):
        return any(_takes_text(member) for member in info.types)
    return False


def _text_fields(request_type: type[s.Request]) -> frozenset[str]:
    info = msgspec.inspect.type_info(request_type)
    assert isinstance(info, msgspec.inspect.StructType)
    return frozenset(f.name for f in info.fields if _takes_text(f.type))


def _param(text: str, as_text: bool) -> msgspec.Raw:
    """A path or query parameter as raw JSON: a string for text fields, else the number or
    boolean it spells (anything else stays a string, and validation names the field)."""
    if not as_text:
        try:
            value = msgspec.json.decode(text)
        except msgspec.DecodeError:
            pass
        else:
            if isinstance(value, int | float | bool) and text.isascii():
                return msgspec.Raw(text.encode())
    return msgspec.Raw(msgspec.json.encode(text))


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.FrameTooLarge(f"body is longer than max_frame_bytes ({limit})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise errors.FrameTooLarge(f"body is longer than max_frame_bytes ({limit})")
        chunks.append(chunk)
    return b"".join(chunks)


class _Builder:
    """Builds one route's request: path, query and body fields into the op's request type."""

    def __init__(self, route: Route, op: Op, max_bytes: int) -> None:
        self.route = route
        self.op = op
        self.max_bytes = max_bytes
        self.text_fields = _text_fields(op.request)
        self.field_names = frozenset(op.request.__struct_fields__) - {"id"}

    async def build(self, request: Request) -> s.Request:
        route = self.route
        fields: dict[str, msgspec.Raw] = {}
        if route.body:
            fields = self._body(await _read_body(request, self.max_bytes))
        for name in request.query_params:
            if name not in route.query and name not in route.required_query:
                raise errors.BadRequest(f"{name}: not a query parameter of this route")
        for param, field in route.query.items():
            value = request.query_params.get(param)
            if value is not None:
                fields[field] = _param(value, field in self.text_fields)
        for param, text in request.path_params.items():
            wrap = route.path_fields.get(param)
            if wrap is not None:
                name, value = wrap(int(text) if text.isdigit() and len(text) < 19 else text)
                fields[name] = msgspec.Raw(msgspec.json.encode(value))
            elif param in self.field_names:
                fields[param] = _param(text, param in self.text_fields)
        line = msgspec.json.encode({"op": self.op.name, **fields})
        try:
            return codec.parse_line(line)
        except codec.FrameRejected as rejected:
            raise rejected.error from None

    def _body(self, body: bytes) -> dict[str, msgspec.Raw]:
        if not body.strip():
            return {}
        try:
            fields = _BODY.decode(body)
        except msgspec.ValidationError:
            raise errors.BadRequest("body must be a JSON object") from None
        except msgspec.DecodeError as exc:
            raise errors.BadRequest(f"body is not valid JSON: {exc}") from None
        for name in fields:
            if name in self.route.path_params or name in self.route.query.values():
                raise errors.BadRequest(f"{name}: given in the path or query, not the body")
            if name in ("op", "id"):
                raise errors.BadRequest(f"{name}: not a field of this route")
        return fields


# --- endpoints ----------------------------------------------------------------------------------


def _call(broker: Broker, request: s.Request, op: Op) -> Awaitable[Result]:
    fields = request.__struct_fields__
    kwargs = {name: getattr(request, name) for name in fields if name != "id"}
    method: Callable[..., Awaitable[Result]] = getattr(broker, op.handler)
    return method(**kwargs, session=Session(greeted=True))


class OpEndpoint:
    """The ASGI app of one route."""

    def __init__(self, state: HttpState, route: Route) -> None:
        self.state = state
        self.route = route
        self.op = OPS[route.op]
        self.builder = _Builder(route, self.op, state.settings.max_frame_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        leased: list[Result] = []
        try:
            response, leased = await self._respond(request, receive)
        except errors.DurableTQError as exc:
            if isinstance(exc, errors.Internal):
                log.warning("%s %s failed: %s", self.route.method, self.route.path, exc.message)
            response = error_response(exc)
        except Exception:
            log.exception("internal error in %s %s", self.route.method, self.route.path)
            response = error_response(
                errors.Internal(f"internal error in {self.op.name}; see the broker's log")
            )
        if response is None:  # a claim whose client left: its tasks were handed back
            return
        try:
            await response(scope, receive, send)
        except BaseException:
            if leased:
                with anyio.CancelScope(shield=True):
                    await hand_back(self.state.broker, leased)
            raise

    async def _respond(
        self, request: Request, receive: Receive
    ) -> tuple[Response | None, list[Result]]:
        state = self.state
        if state.stopping:
            raise errors.ShuttingDown("the broker is stopping")
        auth.check_request(state.settings, request, self.op.role)
        if self.route.required_query:
            self._confirm(request)
        wire_request = await self.builder.build(request)
        if self.op.leases:
            return await self._leasing(wire_request, receive)
        result = await _call(state.broker, wire_request, self.op)
        if self.route.view is not None:
            result = self._view(request, result)
        return json_response(result, self.route.status), []

    def _confirm(self, request: Request) -> None:
        for name in self.route.required_query:
            expected = request.path_params.get("queue")
            if request.query_params.get(name) != expected:
                raise errors.BadRequest(f"{name}: must repeat the queue name ({expected!r})")

    def _view(self, request: Request, result: Result) -> Result:
        if self.route.view is s.QueueStats:
            queue = request.path_params["queue"]
            stats: Result | None = result["queues"].get(queue)
            if stats is None:
                raise errors.NotFound(f"queue {queue} has no tasks and no settings")
            return stats
        return {"queues": result["queues"]}

    async def _leasing(
        self, request: s.Request, receive: Receive
    ) -> tuple[Response | None, list[Result]]:
        """Run a claim or settle that may long-poll: ended early by the client leaving or by
        shutdown, and then whatever it leased goes straight back."""
        state = self.state
        result: Result | None = None
        refused: errors.DurableTQError | None = None
        left = False
        with anyio.CancelScope() as scope:
            state.claims.add(scope)
            try:
                async with anyio.create_task_group() as watch:

                    async def watch_disconnect() -> None:
                        nonlocal left
                        while (await receive())["type"] != "http.disconnect":
                            pass
                        left = True
                        scope.cancel()

                    watch.start_soon(watch_disconnect)
                    try:
                        result = await _call(state.broker, request, self.op)
                        await anyio.lowlevel.checkpoint()  # a disconnect already seen lands now
                    except errors.DurableTQError as exc:  # raised as itself, not in a group
                        refused = exc
                    watch.cancel_scope.cancel()
            finally:
                state.claims.discard(scope)
        if refused is not None:
            raise refused
        tasks: list[Result] = [] if result is None else result.get("tasks") or []
        if scope.cancel_called or left:
            if tasks:
                with anyio.CancelScope(shield=True):
                    await hand_back(state.broker, tasks)
            if state.stopping:
                raise errors.ShuttingDown("the broker is stopping")
            if left:
                return None, []
        if result is None:  # ended while it long-polled: it leased nothing
            if self.op.name == "claim":
                return json_response({"tasks": []}), []
            raise errors.Conflict("the request ended: the settles were committed, the claim not")
        return json_response(result, self.route.status), tasks


async def hand_back(broker: Broker, tasks: list[Result]) -> None:
    for task in tasks:
        try:
            await broker.release(task["task_id"], task["lease_token"])
        except errors.DurableTQError as exc:
            log.warning(
                "task %d (queue %s): its claim ended undelivered and it could not be handed "
                "back (%s); it returns when its lease expires",
                task["task_id"],
                task["queue"],
                exc.message,
            )
        else:
            log.info(
                "task %d (queue %s): handed back, its HTTP claim ended undelivered",
                task["task_id"],
                task["queue"],
            )


# --- the application ----------------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error: errors.DurableTQError = errors.NotFound(f"no route {request.url.path}")
    else:
        error = errors.BadRequest(f"{request.method} {request.url.path}: {exc.detail}")
    response = error_response(error)
    response.status_code = exc.status_code
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def build_app(state: HttpState) -> Starlette:
    routes = [
        StarletteRoute(route.path, OpEndpoint(state, route), methods=[route.method])
        for route in ROUTES
    ]
    spec = openapi.build_spec()
    routes += [
        StarletteRoute("/healthz", health.healthz, methods=["GET"]),
        StarletteRoute("/readyz", health.readyz, methods=["GET"]),
        StarletteRoute("/metrics", state.metrics.endpoint, methods=["GET"]),
        StarletteRoute(
            "/openapi.json", lambda _: json_response(spec), methods=["GET"], name="openapi"
        ),
    ]
    routes += Dashboard(state.settings).routes()
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.http = state
    return app
