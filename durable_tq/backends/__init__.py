"""Storage backends: what the core calls to keep tasks.

``sqlite/`` is the default: a group-commit writer (``store.Store``), its SQL (``queries``),
the reads shared with the offline CLI (``reads``) and the numbered migrations (``migrate``,
files in ``migrations/sqlite/``). ``postgres/`` is the same for several brokers on one
PostgreSQL database (``db_url``), with files in ``migrations/postgres/``.

Both run the core's write functions ``fn(conn, batch)`` unchanged: ``conn`` answers
``execute(sql, params)`` with a cursor that has ``fetchone``, ``fetchall``, ``rowcount``,
``lastrowid`` and iteration, and the SQL comes from the store's own ``queries`` module
(the same names in both). :class:`Backend` is what the core uses of a store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from durable_tq.backends.sqlite.store import Batch, StoreStats
    from durable_tq.config import Settings

T = TypeVar("T")

#: URL schemes that select PostgreSQL.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(text: str | None) -> bool:
    return text is not None and text.startswith(POSTGRES_SCHEMES)


class Backend(Protocol):
    """What the broker asks of its storage (``backends.sqlite.store.Store`` is one,
    ``backends.postgres.store.Store`` the other)."""

    @property
    def queries(self) -> ModuleType:
        """The backend's SQL by name (``backends.sqlite.queries`` or
        ``backends.postgres.queries``)."""
        ...

    stats: StoreStats
    #: Queues that may hold ready tasks (``in``, and ``|`` with a set of names).
    ready_queues: Any
    before_commit: Callable[[Any, Batch], None] | None
    after_commit: Callable[[Batch], None] | None
    commit_hook: Callable[[int, float], None] | None
    #: Whether other brokers write the same database; then the store calls these on the
    #: event loop with what they committed: ready tasks of a queue, finished tasks, a queue
    #: whose settings changed.
    shared: bool
    on_ready: Callable[[str, int], None] | None
    on_done: Callable[[list[int]], None] | None
    on_queue_changed: Callable[[str], None] | None

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def write(
        self,
        fn: Callable[[Any, Batch], T],
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

    async def lead(self) -> bool:
        """Whether this broker runs the sweeps now (always, when it is the only writer)."""
        ...

    @property
    def pending_writes(self) -> int: ...


def open_store(settings: Settings) -> Backend:
    """The store ``settings`` name: PostgreSQL for a ``db_url``, else the SQLite file."""
    if settings.db_url is not None:
        try:
            from durable_tq.backends.postgres.store import Store as PostgresStore
        except ImportError as exc:  # psycopg is an extra
            from durable_tq import errors

            raise errors.ConfigError(
                "db_url names PostgreSQL, which needs the postgres extra: "
                "pip install 'durable_tq[postgres]'"
            ) from exc
        return PostgresStore(settings)
    from durable_tq.backends.sqlite.store import Store as SqliteStore

    return SqliteStore(settings)
