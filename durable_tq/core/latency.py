"""Latency histograms the broker fills from its own timestamps, read by ``/metrics``.

Two figures, each observed where the broker already holds both timestamps, so they add no
read to the claim or the ack: *enqueue -> claim* is the claim's time minus the task's
``run_at`` (returned by the claim's UPDATE: the enqueue for a task ready at once, the moment it
fell due for a delayed or retried one), and *claim -> ack* is the ack's time minus the lease's
``leased_at`` (returned by the ack's UPDATE). Both are in the broker's time
(:mod:`durable_tq.core.clock`).

A histogram here is a list of bucket counts and a sum: no lock, no label lookup, a bisect per
observation. Observations may come from the database thread (a heavy batch), so a reader takes
the count from the buckets themselves, never from a separate total that could disagree.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = ["BUCKETS", "Latencies", "LatencyHistogram"]

#: Upper bounds (seconds) of the buckets: from a millisecond to an hour.
BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip


class LatencyHistogram:
    """Counts per bucket (``le`` bounds, as Prometheus reads them) and the sum of values."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float] = BUCKETS) -> None:
        self.bounds = tuple(bounds)
        #: One count per bound, then the values above the last bound (+Inf).
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)  # a clock read twice within one tick
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, values at or below it), ending with ``inf`` and the count."""
        running = 0
        result = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            result.append((bound, running))
        return result


class Latencies:
    """The broker's two latency histograms."""

    __slots__ = ("claim_to_ack", "enqueue_to_claim")

    def __init__(self) -> None:
        self.enqueue_to_claim = LatencyHistogram()
        self.claim_to_ack = LatencyHistogram()
