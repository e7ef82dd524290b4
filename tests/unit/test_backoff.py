"""The one backoff formula (durable_tq.backoff): growth, cap, and both kinds of jitter."""

from __future__ import annotations

import random

import pytest

from durable_tq.backoff import backoff_delay


def test_without_jitter_it_doubles_from_base_up_to_cap() -> None:
    delays = [backoff_delay(n, base=0.5, cap=10.0, jitter=0.0) for n in range(1, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


@pytest.mark.parametrize("attempt", [0, -3])
def test_attempts_below_one_count_as_one(attempt: int) -> None:
    assert backoff_delay(attempt, base=0.5, cap=10.0, jitter=0.0) == 0.5


def test_huge_attempts_stay_at_the_cap_without_overflow() -> None:
    assert backoff_delay(10_000, base=1.0, cap=3600.0, jitter=0.0) == 3600.0


def test_positive_jitter_grows_the_delay_but_never_past_the_cap() -> None:
    random.seed(1)
    for attempt in range(1, 12):
        ceiling = min(100.0, 1.0 * 2.0 ** (attempt - 1))
        for _ in range(50):
            delay = backoff_delay(attempt, base=1.0, cap=100.0, jitter=0.5)
            assert ceiling <= delay <= min(100.0, ceiling * 1.5)


def test_negative_jitter_keeps_half_fixed_and_half_random_even_at_the_cap() -> None:
    random.seed(2)
    at_cap = [backoff_delay(20, base=0.2, cap=5.0, jitter=-0.5) for _ in range(200)]
    assert all(2.5 <= delay <= 5.0 for delay in at_cap)
    assert len(set(at_cap)) > 100  # spread out: clients that lost one broker do not return together
    first = [backoff_delay(1, base=0.2, cap=5.0, jitter=-0.5) for _ in range(200)]
    assert all(0.1 <= delay <= 0.2 for delay in first)


def test_the_broker_default_grows_strictly_while_below_the_cap() -> None:
    # base 1, cap 3600, jitter 0.5 (config defaults): the smallest delay of try n+1 (2^n) is
    # above the largest of try n (1.5 * 2^(n-1)).
    random.seed(3)
    for attempt in range(1, 11):
        now = [backoff_delay(attempt, base=1.0, cap=3600.0, jitter=0.5) for _ in range(20)]
        then = [backoff_delay(attempt + 1, base=1.0, cap=3600.0, jitter=0.5) for _ in range(20)]
        assert max(now) < min(then)
