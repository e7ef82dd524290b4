"""The ``Work`` stream: a worker's channel, flow-controlled by the credits it grants.

The worker opens with its registration, then sends ``credit`` (free slots) and ``settles``
in any mix. One pump per stream does the broker work, in this order:

1. settles waiting: one ``settle`` for all of them (one commit), claiming up to the credit
   left in the same transaction; the reply goes back as ``settled`` with the new tasks;
2. else credit left: a long-poll ``claim`` for up to that many tasks, woken by commits on
   the worker's queues (no polling); new settles or credit end the wait early;
3. else wait for the worker.

Every task pushed uses one credit, so the worker never holds more than it asked for. While
the stream is open the worker's heartbeat is kept by the broker; when it closes the worker's
session ends as a dropped TCP connection's does (``Broker.session_closed``: its leases run
out, or are released with ``release_on_disconnect``). Tasks leased but not written to the
stream are handed back at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import grpc.aio

from durable_tq import errors
from durable_tq.core.broker import Result, Session
from durable_tq.servers.grpc import auth, convert
from durable_tq.servers.grpc import durable_tq_pb2 as pb
from durable_tq.servers.grpc.service import DurableTQService, abort
from durable_tq.wire import schema
from durable_tq.wire.ops import OPS

log = logging.getLogger("durable_tq.grpc.work")

#: Longest a stream's claim parks before it claims again (bounded by ``max_wait``).
LONG_POLL = 30.0
#: Pause between claims when ``max_wait`` is 0 (long-polling is off).
NO_LONG_POLL_PAUSE = 0.05


class Work:
    """The stream RPC handler; one :class:`_Stream` per open stream."""

    def __init__(self, service: DurableTQService) -> None:
        self.service = service
        self.broker = service.broker
        self.settings = service.settings
        self._streams: set[_Stream] = set()

    def begin_shutdown(self) -> None:
        for stream in list(self._streams):
            stream.stop()

    async def handle(
        self,
        requests: AsyncIterator[pb.WorkRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        failure: errors.DurableTQError | None = None
        try:
            await self._serve(requests, context)
        except errors.DurableTQError as exc:
            failure = exc
        except Exception:
            log.exception("grpc: internal error in the work stream")
            failure = errors.Internal("internal error in the work stream; see the broker's log")
        if failure is not None:
            await abort(context, failure)

    async def _serve(
        self, requests: AsyncIterator[pb.WorkRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        if self.service.stopping:
            raise errors.ShuttingDown("the broker is stopping")
        token = auth.bearer_token(context)
        auth.authorize(self.settings, token, OPS["claim"])
        first = await anext(aiter(requests), None)
        if first is None:
            return
        if not first.HasField("open"):
            raise errors.BadRequest("the first message of a work stream must carry open")
        spec = convert.to_struct(first.open.worker, schema.WorkerSpec)
        if not spec.queues:
            raise errors.BadRequest("open.worker.queues: name the queues to work")
        lease = first.open.lease if first.open.HasField("lease") else None
        session = Session()
        opened = await self.broker.hello(
            schema.PROTOCOL_VERSION,
            token=token,
            client=first.open.client or None,
            worker=spec,
            session=session,
        )
        stream = _Stream(self, context, session, list(spec.queues), lease, spec)
        self._streams.add(stream)
        try:
            await stream.send(pb.WorkResponse(opened=convert.fill_reply(pb.HelloReply(), opened)))
            stream.take(first)
            await stream.run(requests)
        finally:
            self._streams.discard(stream)
            with anyio.CancelScope(shield=True):
                await self.broker.session_closed(session)
        if stream.stopped:
            raise errors.ShuttingDown("the broker is stopping")


class _Stream:
    def __init__(
        self,
        work: Work,
        context: grpc.aio.ServicerContext[Any, Any],
        session: Session,
        queues: list[str],
        lease: float | None,
        spec: schema.WorkerSpec,
    ) -> None:
        self.work = work
        self.broker = work.broker
        self.context = context
        self.session = session
        self.queues = queues
        self.lease = lease
        self.worker_id = spec.id
        #: Unused credit is capped here: a worker holds no more than it registered for.
        self.max_credit = spec.concurrency + spec.prefetch
        self.credit = 0
        self.settles: list[schema.SettleItem] = []
        self.command = schema.WorkerCommand.RUNNING.value
        self.stopped = False
        self._reading_done = False
        self._wake = anyio.Event()
        self._park: anyio.CancelScope | None = None
        self._write_lock = anyio.Lock()
        self._notices: list[str] = []  # worker commands not yet sent
        self._cancels_sent: set[int] = set()  # cancel requests the worker was told of
        settings = work.settings
        self._long_poll = min(LONG_POLL, settings.max_wait)

    # --- from the worker ------------------------------------------------------------------

    def take(self, message: pb.WorkRequest) -> None:
        """A message from the worker: settles to commit, credit to use."""
        if message.settles:
            for item in message.settles:
                self.settles.append(convert.to_struct(item, schema.SettleItem))
            self._end_park()
        if message.credit:
            self.credit = min(self.credit + message.credit, self.max_credit)
            self._end_park()
        self._wake.set()

    def stop(self) -> None:
        """The broker is stopping: settles already received are committed, then the end."""
        self.stopped = True
        self._end_park()
        self._wake.set()

    def _end_park(self) -> None:
        if self._park is not None:
            self._park.cancel()

    async def _read(self, requests: AsyncIterator[pb.WorkRequest]) -> None:
        async for message in requests:
            if message.HasField("open"):
                raise errors.BadRequest("open may only be sent once, first")
            self.take(message)
        self._reading_done = True  # the worker is done: settle what came, then end
        self._end_park()
        self._wake.set()

    # --- the pump ---------------------------------------------------------------------------

    async def run(self, requests: AsyncIterator[pb.WorkRequest]) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(self._read, requests)
            group.start_soon(self._heartbeats)
            await self._pump()
            group.cancel_scope.cancel()

    async def _pump(self) -> None:
        while True:
            if self.settles:
                await self._settle()
                continue
            if self.stopped or self._reading_done:
                return
            if self.credit > 0 and self.command == schema.WorkerCommand.RUNNING:
                await self._claim()
                continue
            self._wake = anyio.Event()
            await self._wake.wait()

    def _claim_args(self, wait: float) -> schema.ClaimArgs | None:
        if self.credit <= 0 or self.stopped or self.command != schema.WorkerCommand.RUNNING:
            return None
        return schema.ClaimArgs(queues=self.queues, max=self.credit, wait=wait, lease=self.lease)

    async def _settle(self) -> None:
        items, self.settles = self.settles, []
        try:
            result = await self.broker.settle(items, self._claim_args(0.0), session=self.session)
        except errors.DurableTQError as exc:
            # The whole batch failed (storage, too many items): nothing of it was committed.
            result = {
                "results": [
                    {"task_id": item.task_id, "ok": False, "error": exc.to_wire()} for item in items
                ]
            }
        if "worker_state" in result:
            self._set_command(str(result["worker_state"]))
        tasks = result.pop("tasks", None) or []
        settled = convert.fill_reply(pb.SettleReply(), result)
        await self._deliver(tasks, settled=settled)

    async def _claim(self) -> None:
        args = self._claim_args(self._long_poll)
        assert args is not None
        result: Result | None = None
        with anyio.CancelScope() as park:
            self._park = park
            try:
                result = await self.broker.claim(
                    args.queues, args.max, args.wait, args.lease, session=self.session
                )
            finally:
                self._park = None
        if result is None:  # ended early by settles, credit or shutdown: nothing leased
            return
        tasks = result["tasks"]
        if tasks:
            await self._deliver(tasks)
        elif self._long_poll <= 0:
            await anyio.sleep(NO_LONG_POLL_PAUSE)

    async def _deliver(self, tasks: list[Result], settled: Any = None) -> None:
        """Send tasks (and a settle reply); tasks that cannot be sent are handed back."""
        self.credit -= len(tasks)
        response = pb.WorkResponse(settled=settled) if settled is not None else pb.WorkResponse()
        for task in tasks:
            convert.fill_reply(response.tasks.add(), task)
        try:
            await self.send(response)
        except BaseException:
            await self.work.service.hand_back({"tasks": tasks})
            raise

    # --- heartbeats and commands -----------------------------------------------------------

    async def _heartbeats(self) -> None:
        interval = self.work.settings.heartbeat_interval
        while True:
            await anyio.sleep(interval)
            try:
                result = await self.broker.heartbeat(session=self.session)
            except errors.DurableTQError as exc:
                log.warning("worker %s: heartbeat failed: %s", self.worker_id, exc.message)
                continue
            self._set_command(str(result["state"]))
            cancel = [int(task_id) for task_id in result.get("cancel") or ()]
            new = [task_id for task_id in cancel if task_id not in self._cancels_sent]
            self._cancels_sent = set(cancel)
            if self._notices or new:
                await self.send(pb.WorkResponse(cancel=new))

    def _set_command(self, command: str) -> None:
        if command == self.command:
            return
        self.command = command
        log.info("worker %s: told to be %s (work stream)", self.worker_id, command)
        self._wake.set()
        self._end_park()
        self._notices.append(command)  # goes out with the next message sent

    # --- writing ----------------------------------------------------------------------------

    async def send(self, response: pb.WorkResponse) -> None:
        if self._notices:
            notices, self._notices = self._notices, []
            response.worker_state = notices[-1]
        async with self._write_lock:
            try:
                await self.context.write(response)
            except Exception as exc:  # grpc raises various kinds once the peer is gone
                raise errors.ConnectionLost(f"the work stream is gone: {exc}") from exc
