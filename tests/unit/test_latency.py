"""The broker's latency histograms (durable_tq.core.latency): buckets as Prometheus reads them."""

from __future__ import annotations

import math

from durable_tq.core.latency import BUCKETS, LatencyHistogram


def test_a_value_on_a_bound_counts_in_that_bucket_and_every_later_one() -> None:
    histogram = LatencyHistogram((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 2.0, 7.0):
        histogram.observe(value)
    assert histogram.cumulative() == [(1.0, 2), (2.0, 4), (math.inf, 5)]
    assert histogram.total == 12.0


def test_a_negative_value_counts_as_zero() -> None:
    histogram = LatencyHistogram((1.0,))
    histogram.observe(-0.25)  # two clock reads within one tick, in the other order
    assert histogram.cumulative() == [(1.0, 1), (math.inf, 1)]
    assert histogram.total == 0.0


def test_the_default_buckets_run_from_a_millisecond_to_an_hour() -> None:
    histogram = LatencyHistogram()
    assert histogram.bounds == BUCKETS == tuple(sorted(BUCKETS))
    assert (BUCKETS[0], BUCKETS[-1]) == (0.001, 3600.0)
    assert histogram.cumulative()[-1] == (math.inf, 0)
