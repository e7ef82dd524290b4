"""Throughput over the last minutes: the broker's task counters, sampled into a ring in memory.

The broker counts tasks enqueued, claimed, succeeded, failed and dead since it started
(``Broker.counters``, also read by ``/metrics``). :class:`ThroughputRing` keeps a snapshot of
those counters at most every ``interval`` seconds, for ``window`` seconds; two neighbouring
snapshots give the rates over the time between them. The sweeper's loop takes the snapshots
(it wakes at least every ``sweep_interval``), so nothing here owns a task or a timer, and a
snapshot costs a tuple of five integers. Nothing is written to the database: a restart starts
the ring afresh, as it starts the counters.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The counters sampled, in the order each snapshot holds them.
COUNTED = ("enqueued", "claimed", "succeeded", "failed", "dead")
#: Seconds between snapshots, at least.
INTERVAL = 5.0
#: Seconds of history kept.
WINDOW = 900.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    totals: tuple[int, ...]


class ThroughputRing:
    """Snapshots of the counters; :meth:`rates` turns neighbours into per-second rates."""

    def __init__(self, interval: float = INTERVAL, window: float = WINDOW) -> None:
        if interval <= 0 or window < interval:
            raise ValueError("the interval must be positive and no longer than the window")
        self.interval = interval
        self.window = window
        # One more than the intervals in the window: n snapshots bound n - 1 intervals.
        self._snapshots: deque[Snapshot] = deque(maxlen=round(window / interval) + 1)

    def sample(self, now: float, counters: Mapping[str, int]) -> bool:
        """Keep a snapshot of ``counters`` unless the last one is younger than ``interval``
        (a clock that went back counts as young). Whether one was kept."""
        snapshots = self._snapshots
        if snapshots and now - snapshots[-1].at < self.interval:
            return False
        snapshots.append(Snapshot(now, tuple(counters.get(name, 0) for name in COUNTED)))
        return True

    def rates(self, now: float) -> list[dict[str, Any]]:
        """Per-second rates between neighbouring snapshots, oldest first, those that end within
        the window before ``now``: ``at`` (the end), ``seconds`` (the length), one rate per
        counter. A broker that slept longer than ``interval`` between two snapshots (a long
        sweep, a paused process) shows one long interval at its average rate."""
        since = now - self.window
        result: list[dict[str, Any]] = []
        previous: Snapshot | None = None
        for snapshot in self._snapshots:
            if previous is not None and snapshot.at > since:
                seconds = snapshot.at - previous.at
                sample: dict[str, Any] = {"at": snapshot.at, "seconds": seconds}
                for name, before, after in zip(
                    COUNTED, previous.totals, snapshot.totals, strict=True
                ):
                    sample[name] = max(0, after - before) / seconds
                result.append(sample)
            previous = snapshot
        return result
