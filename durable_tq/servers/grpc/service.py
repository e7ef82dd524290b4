"""The ``durable_tq.v1.DurableTQ`` service: a unary RPC per op, derived from the op table.

Each RPC decodes its message into the op's request type (the same validation as a TCP line),
calls the broker method the op table names, and fills the reply message from the result.
There is no connection session in gRPC: every unary call gets a fresh, greeted
:class:`Session`; a worker names itself with the ``durable-tq-worker-id`` metadata (for
``heartbeat``, and so its claims are recorded as its leases). The worker stream lives in
:mod:`durable_tq.servers.grpc.work`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import grpc
import grpc.aio
from google.protobuf.message import Message

from durable_tq import errors
from durable_tq.config import Settings
from durable_tq.core.broker import Broker, Result, Session
from durable_tq.servers.grpc import auth, convert, status
from durable_tq.servers.grpc import durable_tq_pb2 as pb
from durable_tq.wire import schema
from durable_tq.wire.ops import OPS, Op

log = logging.getLogger("durable_tq.grpc")

SERVICE_NAME = "durable_tq.v1.DurableTQ"
WORKER_ID_KEY = "durable-tq-worker-id"

Handler = Callable[[Message, grpc.aio.ServicerContext[Any, Any]], Awaitable[Message]]


def rpc_name(op_name: str) -> str:
    """The RPC of an op: ``enqueue_many`` -> ``EnqueueMany``."""
    return "".join(part.capitalize() for part in op_name.split("_"))


def message_class(name: str) -> type[Message]:
    cls: type[Message] = getattr(pb, name)
    return cls


def metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return value if isinstance(value, str) else value.decode()
    return None


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: errors.DurableTQError) -> None:
    """End the call with the status of ``error`` (raises)."""
    ended = status.to_status(error)
    await context.abort(ended.code, ended.details, ended.trailing_metadata)


class DurableTQService:
    """The unary RPCs; the worker stream is added by :mod:`~durable_tq.servers.grpc.work`."""

    def __init__(self, broker: Broker, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings
        self.stopping = False
        self._calls: set[anyio.CancelScope] = set()
        service = pb.DESCRIPTOR.services_by_name["DurableTQ"]
        self._methods = {method.name: method for method in service.methods}

    def begin_shutdown(self) -> None:
        """End parked claims; calls that come in from now on get ``shutting_down``."""
        self.stopping = True
        for scope in list(self._calls):
            scope.cancel()

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for op in OPS.values():
            method = self._methods[rpc_name(op.name)]
            request_class = message_class(method.input_type.name)
            reply_class = message_class(method.output_type.name)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                self._unary(op, reply_class),
                request_deserializer=request_class.FromString,
                response_serializer=reply_class.SerializeToString,
            )
        return handlers

    def _unary(self, op: Op, reply_class: type[Message]) -> Handler:
        async def handle(message: Message, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
            failure: errors.DurableTQError
            try:
                result = await self._handle(op, message, context)
                return convert.fill_reply(reply_class(), result)
            except errors.DurableTQError as exc:
                if isinstance(exc, errors.Internal):
                    log.warning("grpc %s failed: %s", op.name, exc.message)
                failure = exc
            except Exception:
                log.exception("grpc: internal error in %s", op.name)
                failure = errors.Internal(f"internal error in {op.name}; see the broker's log")
            await abort(context, failure)
            raise AssertionError("abort returned")  # pragma: no cover

        handle.__name__ = rpc_name(op.name)
        return handle

    async def _handle(
        self, op: Op, message: Message, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Result:
        if self.stopping:
            raise errors.ShuttingDown("the broker is stopping")
        request = convert.to_struct(message, op.request)
        token = auth.bearer_token(context)
        if isinstance(request, schema.Hello) and token is None:
            token = request.token
        role = auth.authorize(self.settings, token, op)
        session = Session(
            greeted=True,
            worker_id=metadata_value(context, WORKER_ID_KEY),
            client=metadata_value(context, "user-agent"),
            role=role,
        )
        if isinstance(request, schema.Hello):
            if request.worker is not None:  # registering a worker takes the worker role
                auth.authorize(self.settings, token, OPS["claim"])
            return await self._hello(request, token)
        if op.leases:
            return await self._leasing(op, request, session)
        return await self._call(op, request, session)

    def _call(self, op: Op, request: schema.Request, session: Session) -> Awaitable[Result]:
        fields = request.__struct_fields__
        kwargs = {name: getattr(request, name) for name in fields if name != "id"}
        method: Callable[..., Awaitable[Result]] = getattr(self.broker, op.handler)
        return method(**kwargs, session=session)

    async def _hello(self, request: schema.Hello, token: str | None) -> Result:
        # A unary hello checks version and token and (re)registers the worker; it opens no
        # session (there is none to close), so the worker is not counted as connected.
        result = await self.broker.hello(
            request.version, token=token, client=request.client, session=Session()
        )
        if request.worker is not None:
            await self.broker.register_worker(request.worker)
        return result

    async def _leasing(self, op: Op, request: schema.Request, session: Session) -> Result:
        """claim / settle in a task of its own: a cancelled call (deadline, client gone,
        shutdown) lands as anyio cancellation, which the broker's shielded writes hold off,
        so the call either leased nothing or has its tasks in hand to give back."""
        result: Result | None = None
        scope = anyio.CancelScope()

        async def run() -> None:
            nonlocal result
            with scope:
                result = await self._call(op, request, session)

        self._calls.add(scope)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(run)
        except BaseException:
            await self.hand_back(result)
            raise
        finally:
            self._calls.discard(scope)
        if scope.cancel_called and self.stopping:
            await self.hand_back(result)
            raise errors.ShuttingDown("the broker is stopping")
        if result is None:
            raise errors.ShuttingDown("the broker is stopping")
        return result

    async def hand_back(self, result: Result | None) -> None:
        """Release the tasks of a result that will not be delivered."""
        tasks = (result or {}).get("tasks") or []
        with anyio.CancelScope(shield=True):
            for task in tasks:
                try:
                    await self.broker.release(task["task_id"], task["lease_token"])
                except errors.DurableTQError as exc:
                    log.warning(
                        "task %d (queue %s): undelivered over gRPC and not handed back (%s); "
                        "it returns when its lease expires",
                        task["task_id"],
                        task["queue"],
                        exc.message,
                    )
                else:
                    log.info(
                        "task %d (queue %s): handed back, its gRPC reply was not delivered",
                        task["task_id"],
                        task["queue"],
                    )
