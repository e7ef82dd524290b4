"""Fixtures shared by every kind of test: real SQLite files in temp folders, real brokers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from durable_tq.broker import Broker
from durable_tq.config import Settings, load_settings
from durable_tq.sweeper import Sweeper


@pytest.fixture
def anyio_backend() -> str:
    # aiosqlite runs on asyncio only.
    return "asyncio"


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings on a fresh database file in this test's temp folder, port 0, loopback."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "db_path": tmp_path / "broker.db",
            "host": "127.0.0.1",
            "port": 0,
            "sweep_interval": 0.1,
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def broker(settings: Settings) -> AsyncIterator[Broker]:
    """An open broker with its sweeper running, no network."""
    async with Broker(settings) as opened, anyio.create_task_group() as tg:
        tg.start_soon(Sweeper(opened).run)
        yield opened
        tg.cancel_scope.cancel()
