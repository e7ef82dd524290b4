"""``/metrics``: the broker's figures in Prometheus text format, through prometheus-client.

A custom collector reads what the broker already keeps: task counts per queue and state from
``stats`` (the ``queue_counts`` table, not a scan), the broker's in-memory counters, the
writer's pending writes, connections by kind and live workers. Commit batch sizes and commit
durations go into histograms from the store's commit hook. Process RSS and open fds come from
prometheus-client's process collector. Each app has its own registry (no global state).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from durable_tq.wire.schema import TaskState

if TYPE_CHECKING:
    from durable_tq.servers.http.app import HttpState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The broker's counters (Broker.counters) and their help texts.
COUNTERS = {
    "enqueued": "Tasks created (enqueue, enqueue_many; not unique_key duplicates).",
    "claimed": "Tasks handed out by claims (claim, settle with claim).",
    "succeeded": "Tasks acked.",
    "failed": "Failed attempts reported by workers (fail, settle with fail).",
    "dead": "Tasks that ended dead (a worker's fail, or a lease that expired on the last try).",
}
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)


class BrokerCollector(Collector):
    """Reads a stats snapshot taken just before the scrape (stats is async; collect is not)."""

    def __init__(self, state: HttpState) -> None:
        self.state = state
        self.snapshot: dict[str, Any] | None = None

    def collect(self) -> Iterator[Any]:
        state = self.state
        broker = state.broker
        counters = getattr(broker, "counters", {})
        for name, help_text in COUNTERS.items():
            yield CounterMetricFamily(f"durable_tq_tasks_{name}", help_text, counters.get(name, 0))
        connections = GaugeMetricFamily(
            "durable_tq_connections", "Open client connections by kind.", labels=["kind"]
        )
        connections.add_metric(["tcp"], broker.connections)
        connections.add_metric(["http"], state.connection_count())
        yield connections
        yield GaugeMetricFamily(
            "durable_tq_pending_writes",
            "Write requests waiting for the group-commit writer.",
            broker.store.pending_writes,
        )
        yield CounterMetricFamily(
            "durable_tq_commits", "Group commits.", broker.store.stats.commits
        )
        snapshot = self.snapshot
        if snapshot is None:
            return
        yield GaugeMetricFamily(
            "durable_tq_workers", "Registered workers heard from within worker_timeout.",
            snapshot["workers"],
        )  # fmt: skip
        tasks = GaugeMetricFamily(
            "durable_tq_tasks", "Tasks per queue and state.", labels=["queue", "state"]
        )
        oldest = GaugeMetricFamily(
            "durable_tq_oldest_queued_age_seconds",
            "Age of the oldest ready task per queue (0 when none waits).",
            labels=["queue"],
        )
        paused = GaugeMetricFamily("durable_tq_queue_paused", "1 if paused.", labels=["queue"])
        for queue, counts in snapshot["queues"].items():
            for task_state in TaskState:
                tasks.add_metric([queue, task_state.value], counts.get(task_state.value, 0))
            oldest.add_metric([queue], counts.get("oldest_queued_age") or 0.0)
            paused.add_metric([queue], 1.0 if counts.get("paused") else 0.0)
        yield tasks
        yield oldest
        yield paused


class Metrics:
    """The registry of one HTTP face, and its ``/metrics`` endpoint."""

    def __init__(self, state: HttpState) -> None:
        self.state = state
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = BrokerCollector(state)
        self.registry.register(self.collector)
        ProcessCollector(namespace="durable_tq", registry=self.registry)
        self.commit_batch = Histogram(
            "durable_tq_commit_batch_size",
            "Write requests per group commit.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "durable_tq_commit_duration_seconds",
            "Seconds in COMMIT (the fsync under synchronous=FULL).",
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        state.broker.store.commit_hook = self.observe_commit

    def observe_commit(self, writes: int, seconds: float) -> None:
        """Called by the store after each commit (possibly on the database thread)."""
        self.commit_batch.observe(writes)
        self.commit_seconds.observe(seconds)

    async def endpoint(self, request: Request) -> Response:
        self.collector.snapshot = await self.state.broker.stats()
        return Response(generate_latest(self.registry), 200, media_type=CONTENT_TYPE)
