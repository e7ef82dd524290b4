"""Running the broker as a process: signals (graceful, then at once), errors before listening."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from durable_tq.config import Settings
from durable_tq.servers.tcp.listener import BrokerServer, raise_file_limit

log = logging.getLogger("durable_tq.servers.tcp")


# --- running as a process -----------------------------------------------------------------------


def run(settings: Settings, *, on_listening: Callable[[BrokerServer], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (graceful; a second signal exits at once). Blocking.

    ``on_listening`` is called once the server listens (the CLI prints the address there).
    Errors before listening (a locked database, a port in use) are raised as they are.
    """
    try:
        anyio.run(_run, settings, on_listening, backend="asyncio")
    except BaseExceptionGroup as group:
        # Task groups wrap what failed; a single error (a locked database, a port in use) is
        # raised as itself so callers can catch ConfigError or OSError.
        only = _only_exception(group)
        if only is None:
            raise
        raise only from None


def _only_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    if len(group.exceptions) != 1:
        return None
    inner = group.exceptions[0]
    return _only_exception(inner) if isinstance(inner, BaseExceptionGroup) else inner


async def _run(settings: Settings, on_listening: Callable[[BrokerServer], None] | None) -> None:
    raise_file_limit(settings)
    server = BrokerServer(settings)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def serve(*, task_status: anyio.abc.TaskStatus[BrokerServer]) -> None:
                await server.serve(task_status=task_status)
                tg.cancel_scope.cancel()  # stop watching signals

            tg.start_soon(_watch_signals, signals, server)
            try:
                await tg.start(serve)
            except BaseException:
                tg.cancel_scope.cancel()
                raise
            if on_listening is not None:
                on_listening(server)  # the caller says "listening" (durable-tq serve: stdout)
            else:
                log.info("listening on %s (database %s)", server.url, settings.database)


async def _watch_signals(signals: Any, server: BrokerServer) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if not server.stopping:
            log.info("%s: stopping gracefully (send it again to exit at once)", name)
            server.request_shutdown()
            continue
        log.warning("%s again: exiting at once", name)
        logging.shutdown()
        os._exit(128 + signum)
