"""One run of a worker on one client: claiming, heartbeats, running tasks, stopping.

The worker claims only for free slots, hands each task to the executor, keeps its lease alive
while it runs, and settles the outcome. Stopping (a signal, ``Worker.stop``, the broker's
``terminate``, or an idle queue with ``until_idle``) stops claiming, lets running tasks finish
within ``grace`` seconds, and releases the rest so another worker picks them up at once.
"""

from __future__ import annotations

import logging
import signal
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import anyio
import anyio.abc
from anyio.from_thread import BlockingPortal

from durable_tq import errors
from durable_tq.client import AsyncClient, ClaimArgs, ClaimedTask, SettleReply
from durable_tq.protocol import WorkerCommand
from durable_tq.worker.context import TaskContext
from durable_tq.worker.execute import Executor
from durable_tq.worker.leases import Lease, LeaseKeeper
from durable_tq.worker.outcome import Cancelled, Outcome, Released, Succeeded
from durable_tq.worker.settle import Settler, backoff
from durable_tq.worker.task import Task

__all__ = ["Runtime", "RuntimeConfig"]

logger = logging.getLogger("durable_tq.worker")

#: Heartbeat period when the broker did not announce one.
DEFAULT_HEARTBEAT = 5.0
#: How long stopping waits for release/ack/fail replies after the grace period.
SETTLE_ON_STOP = 10.0
#: The same, when told to stop at once.
SETTLE_ON_STOP_NOW = 2.0
#: ``until_idle``: how often to look at the queues while tasks run elsewhere or are scheduled.
IDLE_POLL = 0.1
#: Progress is sent at most this often per task (the last value always before settling).
PROGRESS_EVERY = 1.0
#: How often the INFO line counting settled tasks is written (when there were any).
SUMMARY_EVERY = 10.0


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    worker_id: str
    queues: tuple[str, ...]
    concurrency: int
    claim_batch: int
    wait: float
    lease: float | None
    grace: float
    request_timeout: float
    max_error_chars: int
    heartbeat_interval: float | None = None
    renew_fraction: float = 0.5
    #: Tasks held beyond ``concurrency``, waiting for a slot (claimed ahead).
    prefetch: int = 0


class _Slots:
    """Handler slots, first come first served. A free slot is taken without a checkpoint (the
    handler that follows yields anyway): ``anyio.CapacityLimiter`` paid two per task."""

    def __init__(self, count: int) -> None:
        self.free = count
        self._waiters: deque[anyio.Event] = deque()

    async def take(self) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        handed = anyio.Event()
        self._waiters.append(handed)
        try:
            await handed.wait()
        except BaseException:
            if handed.is_set():
                self.give()  # handed a slot as we were cancelled: pass it on
            else:
                self._waiters.remove(handed)
            raise

    def give(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()  # straight to the next in line
        else:
            self.free += 1


@dataclass(eq=False)
class _Running:
    lease: Lease
    task: Task
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    #: Its handler has a slot (False: prefetched, waiting for one).
    started: bool = False
    settling: bool = False
    #: Its scope was cancelled because the task's cancel was requested (not a stop).
    revoked: bool = False


class Runtime:
    """The running state of a worker between connect and disconnect."""

    def __init__(
        self,
        config: RuntimeConfig,
        tasks: Mapping[str, Task],
        client: AsyncClient,
        portal: BlockingPortal,
    ) -> None:
        self.config = config
        self.tasks = tasks
        self.client = client
        self.portal = portal
        self.executor = Executor(config.concurrency, max_error_chars=config.max_error_chars)
        self.keeper = LeaseKeeper(
            client,
            lease=config.lease,
            renew_fraction=config.renew_fraction,
            request_timeout=config.request_timeout,
            on_cancel=lambda lease: self._revoke([lease.task.task_id]),
        )
        self.settler = Settler(
            client,
            request_timeout=config.request_timeout,
            claim_for=self._claim_with_settle,
            on_reply=self._settled,
        )
        #: Handlers running at once at most; prefetched tasks wait here for a slot.
        self.slots = _Slots(config.concurrency)
        self.running: dict[int, _Running] = {}
        self.stop_requested = anyio.Event()
        self.stop_now = False
        #: The broker asked for ``quiet``: claim nothing until it says ``running`` again.
        self.quiet = False
        self.processed = 0
        self._changed = anyio.Event()
        self._claims = anyio.CancelScope()
        self._claim_call: anyio.CancelScope | None = None
        self._work: anyio.abc.TaskGroup | None = None

    # ------------------------------------------------------------------ control

    def request_stop(self, *, now: bool = False) -> None:
        """Stop claiming and wind down (``now``: do not wait for running tasks)."""
        if not self.stop_requested.is_set():
            self.stop_requested.set()
            self._claims.cancel()
        if now:
            self.stop_now = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()

    # ------------------------------------------------------------------ the run

    async def run(self, *, until_idle: bool = False, handle_signals: bool = False) -> None:
        async with anyio.create_task_group() as services:
            services.start_soon(self.keeper.run, name="durable_tq lease keeper")
            services.start_soon(self._heartbeats, name="durable_tq heartbeats")
            services.start_soon(self.settler.run, name="durable_tq settler")
            services.start_soon(self._summaries, name="durable_tq summaries")
            services.start_soon(self._progress_reports, name="durable_tq progress")
            if handle_signals:
                services.start_soon(self._watch_signals, name="durable_tq signals")
            async with anyio.create_task_group() as work:
                self._work = work
                services.start_soon(self._claim_loop, name="durable_tq claims")
                if until_idle:
                    services.start_soon(self._watch_idle, name="durable_tq idle watch")
                await self.stop_requested.wait()
                await self._wind_down(work)
            services.cancel_scope.cancel()

    async def _wind_down(self, work: anyio.abc.TaskGroup) -> None:
        self._release_prefetched()
        await self._refuse_new_work()
        self._release_prefetched()  # claimed by a settle that was on the wire meanwhile
        grace = self.config.grace
        if self.running and not self.stop_now:
            logger.info(
                "worker %s stopping: waiting up to %g s for %d running task(s)",
                self.config.worker_id,
                grace,
                sum(1 for running in self.running.values() if running.started),
            )
            with anyio.move_on_after(grace):
                await self._wait_until(lambda: not self.running or self.stop_now)
        for running in list(self.running.values()):
            if not running.settling:
                running.scope.cancel()
        bound = SETTLE_ON_STOP_NOW if self.stop_now else SETTLE_ON_STOP
        with anyio.move_on_after(bound):
            await self._wait_until(lambda: not self.running)
        if self.running:
            for running in self.running.values():
                logger.error(
                    "%s: could not be settled before the worker stopped; the broker hands it "
                    "out again when its lease expires",
                    running.lease.about,
                )
            work.cancel_scope.cancel()
        logger.info("worker %s stopped after %d task(s)", self.config.worker_id, self.processed)

    def _release_prefetched(self) -> None:
        """Tasks held but not started go back at once, not after the grace period: another
        worker can run them now (their ``_process`` releases them, in one settle)."""
        for running in self.running.values():
            if not running.started and not running.settling:
                running.scope.cancel()

    async def _refuse_new_work(self) -> None:
        """Tell the broker to hand this worker nothing more.

        Cancelling our claim does not end it on the broker: a long-poll may still be parked
        there, and it would lease the very tasks we are about to release. A worker in state
        ``terminate`` gets no tasks; registering again (the next start) resets it.
        """
        if not self.client.connected:
            return  # no connection, no parked claim
        try:
            await self.client.worker_state(
                self.config.worker_id, WorkerCommand.TERMINATE, timeout=5.0
            )
        except errors.DurableTQError as exc:
            logger.debug("could not mark worker %s as stopping: %s", self.config.worker_id, exc)

    # ------------------------------------------------------------------ claiming

    def _free_slots(self) -> int:
        """Tasks this worker may still take: ``concurrency + prefetch`` minus those held."""
        return self.config.concurrency + self.config.prefetch - len(self.running)

    def _claim_with_settle(self) -> ClaimArgs | None:
        """What a settle going out now should claim: the free slots, or nothing."""
        free = self._free_slots()
        if free <= 0 or self.quiet or self.stop_requested.is_set():
            return None
        config = self.config
        return ClaimArgs(
            queues=list(config.queues), max=min(free, config.claim_batch), lease=config.lease
        )

    def _settled(self, reply: SettleReply) -> None:
        """A settle's reply: start what it claimed, obey the state it carried."""
        for task in reply.tasks or ():
            if self.stop_requested.is_set():
                assert self._work is not None
                lease = self.keeper.hold(task)
                self.keeper.drop(lease)
                self._work.start_soon(self._release_unhandled, lease)
            else:
                self._start(task)
        if reply.worker_state is not None:
            self._obey(reply.worker_state)
        self._revoke(reply.cancel)

    def _revoke(self, task_ids: list[int]) -> None:
        """The broker asked for these tasks to be cancelled (in a heartbeat's, a settle's, an
        extend's or a progress report's reply): stop their handlers. An async handler is
        cancelled at once; a sync one sees ``ctx.cancelled`` (cooperative); a prefetched task
        not started yet never starts."""
        for task_id in task_ids:
            running = self.running.get(task_id)
            if running is None or running.lease.cancel_requested:
                continue
            running.lease.cancel_requested = True
            logger.info("%s: cancel requested; stopping its handler", running.lease.about)
            if (running.task.is_async or not running.started) and not running.settling:
                running.revoked = True
                running.scope.cancel()

    async def _progress_reports(self) -> None:
        """Every PROGRESS_EVERY seconds, send the progress reported since the last time."""
        while True:
            await anyio.sleep(PROGRESS_EVERY)
            for running in list(self.running.values()):
                if running.lease.progress is not None and not running.settling:
                    await self._send_progress(running.lease)

    async def _send_progress(self, lease: Lease) -> None:
        report, lease.progress = lease.progress, None
        if report is None or lease.lost:
            return
        task = lease.task
        try:
            cancel = await self.client.progress(
                task.task_id, task.lease_token, report[0], report[1], timeout=5.0
            )
        except errors.DurableTQError as exc:
            logger.debug("%s: progress not recorded: %s", lease.about, exc)
            return
        if cancel:
            self._revoke([task.task_id])

    async def _claim_loop(self) -> None:
        config = self.config
        failures = 0
        with self._claims:
            while True:
                # While outcomes are being settled, their settle claims for the free slots
                # (one round trip); the long-poll is for a worker with nothing to settle.
                await self._wait_until(
                    lambda: self._free_slots() > 0 and not self.quiet and not self.settler.busy
                )
                wanted = min(self._free_slots(), config.claim_batch)
                claimed: list[ClaimedTask] = []
                try:
                    # Its own scope, so ``quiet`` can call off a long-poll in progress (the
                    # client releases whatever that claim still brings).
                    with anyio.CancelScope() as self._claim_call:
                        claimed = await self.client.claim(
                            list(config.queues),
                            max=wanted,
                            wait=config.wait,
                            lease=config.lease,
                        )
                except errors.DurableTQError as exc:
                    failures += 1
                    delay = backoff(failures)
                    level = logging.WARNING if failures <= 3 else logging.DEBUG
                    logger.log(level, "claim failed (%s); trying again in %.2f s", exc, delay)
                    await anyio.sleep(delay)
                    continue
                finally:
                    self._claim_call = None
                failures = 0
                for task in claimed:
                    self._start(task)

    def _start(self, claimed: ClaimedTask) -> None:
        task = self.tasks.get(claimed.queue)
        lease = self.keeper.hold(claimed)
        assert self._work is not None
        if task is None:  # the broker gave us a queue we did not ask for
            logger.error("%s: no handler for this queue; releasing it", lease.about)
            self.keeper.drop(lease)
            self._work.start_soon(self._release_unhandled, lease)
            return
        running = _Running(lease, task)
        self.running[claimed.task_id] = running
        self._work.start_soon(self._process, running, name=f"durable_tq task {claimed.task_id}")

    async def _release_unhandled(self, lease: Lease) -> None:
        task = lease.task
        try:
            await self.client.release(task.task_id, task.lease_token, delay=5.0)
        except errors.DurableTQError as exc:
            logger.warning("%s: could not release it: %s", lease.about, exc)

    # ------------------------------------------------------------------ one task

    async def _process(self, running: _Running) -> None:
        lease, task = running.lease, running.task
        claimed = lease.task
        ctx = TaskContext(
            task_id=claimed.task_id,
            queue=claimed.queue,
            attempt=claimed.attempt,
            priority=claimed.priority,
            lease_token=claimed.lease_token,
            worker_id=self.config.worker_id,
            _lease=lease,
            _extend=self.keeper.extend,
            _portal=self.portal,
        )
        started = anyio.current_time()
        try:
            if logger.isEnabledFor(logging.DEBUG):  # ``about`` formats a string: skip it
                logger.debug("%s: running %s", lease.about, task.name)
            outcome: Outcome = Released("the worker is stopping")
            with running.scope:
                await self.slots.take()
                try:
                    # Cancelled while it waited (the worker is stopping): it stays released.
                    if not running.scope.cancel_called:
                        running.started = True
                        outcome = await self.executor.execute(task, claimed.payload, ctx)
                finally:
                    self.slots.give()
            if lease.cancel_requested and not isinstance(outcome, Succeeded):
                # Stopped on a cancel request (or gave up after seeing it): it ends cancelled.
                # A handler that finished anyway is acked: its work is done.
                outcome = Cancelled("cancelled while running")
            running.settling = True
            if lease.progress is not None:
                await self._send_progress(lease)  # the last value, before the outcome
            elapsed = anyio.current_time() - started
            await self.settler.settle(lease, task, outcome, elapsed)
        finally:
            self.keeper.drop(lease)
            del self.running[claimed.task_id]
            self.processed += 1
            self._notify()

    # ------------------------------------------------------------------ heartbeats

    async def _heartbeats(self) -> None:
        failures = 0
        while True:
            interval = (
                self.config.heartbeat_interval
                or self.client.heartbeat_interval
                or DEFAULT_HEARTBEAT
            )
            await anyio.sleep(interval if failures == 0 else min(interval, backoff(failures)))
            if failures == 0 and anyio.current_time() - self.settler.last_answered < interval:
                continue  # a settle answered within the interval: it was our heartbeat
            try:
                beat = await self.client.heartbeat_reply(timeout=max(interval, 5.0))
            except errors.NotFound:
                # The broker forgot us (a long outage); a new connection registers again.
                logger.warning(
                    "the broker does not know worker %s; registering again", self.config.worker_id
                )
                await self._reconnect()
                continue
            except errors.DurableTQError as exc:
                failures += 1
                logger.log(
                    logging.WARNING if failures <= 3 else logging.DEBUG,
                    "heartbeat failed (%s)",
                    exc,
                )
                continue
            failures = 0
            self._obey(beat.state)
            self._revoke(beat.cancel)

    async def _reconnect(self) -> None:
        try:
            await self.client.bye(timeout=5.0)
        except errors.DurableTQError as exc:
            logger.debug("bye before registering again failed: %s", exc)

    def _obey(self, state: str) -> None:
        if state == WorkerCommand.TERMINATE:
            if not self.stop_requested.is_set():
                logger.warning(
                    "the broker asked worker %s to terminate: stopping gracefully",
                    self.config.worker_id,
                )
            self.request_stop()
        elif state == WorkerCommand.QUIET and not self.quiet:
            logger.warning(
                "the broker asked worker %s to be quiet: no new tasks until it says running",
                self.config.worker_id,
            )
            self.quiet = True
            if self._claim_call is not None:
                self._claim_call.cancel()
            self._notify()
        elif state == WorkerCommand.RUNNING and self.quiet:
            logger.warning("worker %s is running again: claiming tasks", self.config.worker_id)
            self.quiet = False
            self._notify()

    async def _summaries(self) -> None:
        """Every ``SUMMARY_EVERY`` seconds, one INFO line counting the outcomes settled."""
        while True:
            await anyio.sleep(SUMMARY_EVERY)
            self._log_summary()

    def _log_summary(self) -> None:
        tally = self.settler.tally
        if tally.succeeded or tally.failed or tally.released or tally.lost:
            logger.info(
                "worker %s: %d task(s) succeeded, %d failed, %d released, %d lease(s) lost "
                "in the last %g s",
                self.config.worker_id,
                tally.succeeded,
                tally.failed,
                tally.released,
                tally.lost,
                SUMMARY_EVERY,
            )
        tally.succeeded = tally.failed = tally.released = tally.lost = 0

    # ------------------------------------------------------------------ stopping

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not self.stop_requested.is_set():
                    logger.warning(
                        "received %s: worker %s stops claiming and gives %d running task(s) up "
                        "to %g s; send it again to stop at once",
                        name,
                        self.config.worker_id,
                        len(self.running),
                        self.config.grace,
                    )
                    self.request_stop()
                else:
                    logger.warning("received %s again: stopping at once", name)
                    self.request_stop(now=True)

    async def _watch_idle(self) -> None:
        while True:
            await self._wait_until(lambda: not self.running)
            try:
                stats = await self.client.stats(timeout=self.config.request_timeout)
            except errors.DurableTQError as exc:
                logger.debug("idle check failed: %s", exc)
                await anyio.sleep(IDLE_POLL * 5)
                continue
            waiting = 0
            for name in self.config.queues:
                counts = stats.queues.get(name)
                if counts is not None:
                    waiting += counts.queued + counts.scheduled + counts.leased
            if waiting == 0 and not self.running:
                logger.info(
                    "queues %s are empty and nothing runs: worker %s stops (until_idle)",
                    ", ".join(self.config.queues),
                    self.config.worker_id,
                )
                self.request_stop()
                return
            await anyio.sleep(IDLE_POLL)
