"""The throughput ring (durable_tq.core.throughput): snapshots, rates, the window."""

from __future__ import annotations

import pytest

from durable_tq.core.throughput import COUNTED, ThroughputRing


def counters(**values: int) -> dict[str, int]:
    return {name: values.get(name, 0) for name in COUNTED}


def test_rates_are_the_differences_over_the_seconds_between_snapshots() -> None:
    ring = ThroughputRing(interval=5, window=60)
    assert ring.sample(1000.0, counters())
    assert ring.sample(1005.0, counters(enqueued=50, succeeded=10))
    assert ring.sample(1015.0, counters(enqueued=60, succeeded=40, dead=2, claimed=45))
    assert ring.rates(1015.0) == [
        {"at": 1005.0, "seconds": 5.0, "enqueued": 10.0, "claimed": 0.0, "succeeded": 2.0,
         "failed": 0.0, "dead": 0.0},
        {"at": 1015.0, "seconds": 10.0, "enqueued": 1.0, "claimed": 4.5, "succeeded": 3.0,
         "failed": 0.0, "dead": 0.2},
    ]  # fmt: skip


def test_a_snapshot_younger_than_the_interval_is_not_kept() -> None:
    ring = ThroughputRing(interval=5, window=60)
    assert ring.sample(1000.0, counters())
    assert not ring.sample(1004.9, counters(enqueued=7))
    assert not ring.sample(990.0, counters(enqueued=7))  # a clock that went back
    assert ring.rates(1004.9) == []
    assert ring.sample(1005.0, counters(enqueued=10))
    assert [s["enqueued"] for s in ring.rates(1005.0)] == [2.0]


def test_only_the_window_is_kept_and_shown() -> None:
    ring = ThroughputRing(interval=1, window=10)
    for second in range(30):
        ring.sample(float(second), counters(enqueued=second * 3))
    samples = ring.rates(29.0)
    assert [s["at"] for s in samples] == [float(s) for s in range(20, 30)]
    assert {s["enqueued"] for s in samples} == {3.0}
    # Later, with no new snapshot, the old intervals leave the window.
    assert [s["at"] for s in ring.rates(35.0)] == [26.0, 27.0, 28.0, 29.0]


def test_a_counter_that_went_down_is_no_negative_rate() -> None:
    ring = ThroughputRing(interval=1, window=10)
    ring.sample(0.0, counters(dead=5))
    ring.sample(1.0, counters(dead=0))
    assert ring.rates(1.0)[0]["dead"] == 0.0


@pytest.mark.parametrize(("interval", "window"), [(0, 10), (-1, 10), (10, 5)])
def test_bad_shapes_are_refused(interval: float, window: float) -> None:
    with pytest.raises(ValueError):
        ThroughputRing(interval=interval, window=window)
