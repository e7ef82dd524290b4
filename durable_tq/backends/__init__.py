"""Storage backends: what the core calls to keep tasks.

``sqlite/`` is the one there is: a group-commit writer (``store.Store``), its SQL
(``queries``), the reads shared with the offline CLI (``reads``) and the numbered migrations
(``migrate``, files in ``migrations/sqlite/``). The interface the core uses is
:class:`Backend` below; a second backend (PostgreSQL) implements the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Backend(Protocol):
    """What the broker asks of its storage (``backends.sqlite.store.Store`` is one)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def write(
        self,
        fn: Callable[..., T],
        *,
        heavy: bool = False,
        atomic: bool = False,
        durable: bool = True,
    ) -> T:
        """Run ``fn(connection, batch)`` in the next group commit; its result once committed
        (durably, unless ``durable=False`` for lease writes)."""
        ...

    async def read(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(connection)`` in one consistent read."""
        ...

    def may_have_ready(self, queues: Iterable[str]) -> bool:
        """False only when none of ``queues`` can hold a committed ready task: a claim then
        answers at once without writing. A backend shared by several brokers says True."""
        ...

    @property
    def pending_writes(self) -> int: ...
