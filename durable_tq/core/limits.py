"""Per-queue flow control: a rate (token bucket), a cap on leased tasks, per-key concurrency.

Limits live in the ``queues`` table (``set_queue_limits``) and in :class:`QueueLimits` in the
broker's memory; a claim on a limited queue picks its tasks here, inside the claim's
transaction, and an unlimited queue never comes here (the claim path checks a set).

- ``rate``: at most ``rate`` tasks per second handed out, across all workers. A token bucket
  of ``burst`` tokens (default 1: smooth) kept in memory, refilled by the clock. A restart
  starts every bucket full: a broker restarted within a second may hand out up to ``burst``
  tasks more than the rate in that second. On a store shared by several brokers
  (PostgreSQL: ``sql.LOCK_BUCKETS``) the bucket is kept in the queue's row instead, on the
  database's clock, and each claim spends from it under the row lock in its own transaction
  (:func:`lock_buckets`, :func:`save_buckets`): the rate holds across brokers, and a broker
  restart changes nothing. The memory bucket then mirrors the row as last seen, for a parked
  claim to know when to look again.
- ``max_leased``: at most this many of the queue's tasks leased at once (``queue_counts``
  knows the leased count: no rows are counted).
- ``key_concurrency``: at most this many tasks with the same ``concurrency_key`` leased at
  once. The claim walks the distinct keys that have ready tasks through
  ``tasks_ready_by_key`` (one index seek per key) and reads only the best tasks of keys with
  room, so a saturated key's ready tasks are skipped without being read: the cost grows with
  the number of keys that have ready tasks, not with the tasks behind a limit.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from durable_tq.backends.sqlite import queries
from durable_tq.backends.sqlite.store import Batch
from durable_tq.wire.schema import TaskState


@dataclass(frozen=True)
class QueueLimits:
    """A queue's limits; None is no limit."""

    rate: float | None = None
    burst: int | None = None
    max_leased: int | None = None
    key_concurrency: int | None = None

    @property
    def limited(self) -> bool:
        """Whether claims on the queue must go through :func:`pick_ready`."""
        return any(v is not None for v in (self.rate, self.max_leased, self.key_concurrency))

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, **changes: float | int | None) -> QueueLimits:
        """These limits with ``changes`` applied: None keeps a value, 0 removes the limit."""
        values = asdict(self)
        for name, value in changes.items():
            if value is not None:
                values[name] = None if value == 0 else value
        return QueueLimits(**values)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` kept; starts full."""

    __slots__ = ("burst", "rate", "tokens", "updated_at")

    def __init__(self, rate: float, burst: int | None, now: float) -> None:
        self.rate = rate
        self.burst = float(burst or 1)
        self.tokens = self.burst
        self.updated_at = now

    def refill(self, now: float) -> None:
        if now > self.updated_at:
            self.tokens = min(self.burst, self.tokens + (now - self.updated_at) * self.rate)
        self.updated_at = max(self.updated_at, now)

    def available(self, now: float) -> int:
        self.refill(now)
        return math.floor(self.tokens + 1e-9)

    def take(self, count: int, now: float) -> None:
        self.refill(now)
        self.tokens -= count

    def next_token_in(self, now: float) -> float:
        """Seconds until a whole token is there (0 if one is)."""
        self.refill(now)
        missing = 1.0 - self.tokens
        return 0.0 if missing <= 1e-9 else missing / self.rate


def bucket_of_row(
    rate: float, burst: int | None, tokens: float | None, tokens_at: float | None, now: float
) -> TokenBucket:
    """A bucket kept in a ``queues`` row (``tokens`` None: full), as it stands at ``now``."""
    bucket = TokenBucket(rate, burst, now)
    if tokens is not None:
        bucket.tokens = tokens
        bucket.updated_at = now if tokens_at is None else tokens_at
    return bucket


def lock_buckets(
    conn: sqlite3.Connection, queues: Sequence[str], sql: Any
) -> tuple[dict[str, TokenBucket], float]:
    """The stored buckets of the rate-limited ``queues``, their rows locked until the
    transaction ends, and the database's clock (Unix seconds) to spend them at."""
    rows = conn.execute(sql.LOCK_BUCKETS, (sorted(queues),)).fetchall()
    now = float(rows[0][5]) if rows else 0.0
    return {
        name: bucket_of_row(rate, burst, tokens, tokens_at, now)
        for name, rate, burst, tokens, tokens_at, _ in rows
    }, now


def save_buckets(
    conn: sqlite3.Connection, buckets: Mapping[str, TokenBucket], queues: Iterable[str], sql: Any
) -> None:
    """Write back the buckets of ``queues`` (those that spent tokens)."""
    for queue in queues:
        bucket = buckets.get(queue)
        if bucket is not None:
            conn.execute(sql.SAVE_BUCKET, (bucket.tokens, bucket.updated_at, queue))


def leased_count(conn: sqlite3.Connection, batch: Batch, queue: str, sql: Any = queries) -> int:
    """Leased tasks of ``queue`` now, this transaction's changes included."""
    row = conn.execute(sql.QUEUE_STATE_COUNT, (queue, TaskState.LEASED)).fetchone()
    return (row[0] if row else 0) + batch.net(queue, TaskState.LEASED)


def pick_ready(
    conn: sqlite3.Connection,
    batch: Batch,
    queue: str,
    limits: QueueLimits,
    want: int,
    sql: Any = queries,
) -> list[tuple[int, int]]:
    """(id, priority) of the best ready tasks of ``queue`` that its limits let out now, at
    most ``want`` (the caller has already capped ``want`` by the rate's tokens)."""
    if sql.LOCK_LIMITED_QUEUE is not None and (limits.max_leased or limits.key_concurrency):
        conn.execute(sql.LOCK_LIMITED_QUEUE, (queue,))
    if limits.max_leased is not None:
        want = min(want, limits.max_leased - leased_count(conn, batch, queue, sql))
    if want <= 0:
        return []
    if limits.key_concurrency is None:
        return [(r[0], r[1]) for r in conn.execute(sql.READY_IN_QUEUE, (queue, want))]
    cap = limits.key_concurrency
    leased = dict(conn.execute(sql.LEASED_BY_KEY, (queue,)).fetchall())
    candidates: list[tuple[int, int]] = [
        (r[0], r[1]) for r in conn.execute(sql.READY_UNKEYED, (queue, want))
    ]
    for (key,) in conn.execute(sql.READY_KEYS, {"queue": queue}).fetchall():
        room = min(want, cap - leased.get(key, 0))
        if room > 0:
            candidates.extend(
                (r[0], r[1]) for r in conn.execute(sql.READY_OF_KEY, (queue, key, room))
            )
    candidates.sort(key=lambda c: (-c[1], c[0]))
    return candidates[:want]


def pick_across(
    conn: sqlite3.Connection,
    batch: Batch,
    queues: Sequence[str],
    want: int,
    limits: Mapping[str, QueueLimits],
    buckets: Mapping[str, TokenBucket],
    now: float,
    sql: Any = queries,
) -> list[int]:
    """Ids of the best ``want`` ready tasks across ``queues``, each queue within its limits
    (a rate-limited queue gives at most the tokens its bucket has at ``now``)."""
    candidates: list[tuple[int, int]] = []
    for queue in queues:
        queue_limits = limits.get(queue)
        if queue_limits is None or not queue_limits.limited:
            rows = conn.execute(sql.READY_IN_QUEUE, (queue, want))
            candidates.extend((r[0], r[1]) for r in rows)
            continue
        room = want
        bucket = buckets.get(queue)
        if bucket is not None:
            room = min(room, bucket.available(now))
        candidates.extend(pick_ready(conn, batch, queue, queue_limits, room, sql))
    candidates.sort(key=lambda c: (-c[1], c[0]))
    return [task_id for task_id, _ in candidates[:want]]


def take_tokens(
    buckets: Mapping[str, TokenBucket], leased_queues: Sequence[str], now: float
) -> None:
    """Spend one token per task leased from a rate-limited queue."""
    for queue, count in Counter(leased_queues).items():
        bucket = buckets.get(queue)
        if bucket is not None:
            bucket.take(count, now)
