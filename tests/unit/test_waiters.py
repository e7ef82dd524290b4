"""Parked long-poll claims (durable_tq.core.waiters): who is woken, how many, and hand-ons."""

from __future__ import annotations

import pytest

from durable_tq.core.waiters import Waiters

# anyio.Event needs a running loop; nothing here waits.
pytestmark = pytest.mark.anyio


async def test_join_counts_each_claim_once_across_its_queues() -> None:
    waiters = Waiters()
    a = waiters.join(["q1", "q2", "q1"])
    waiters.join(["q2"])
    assert a.queues == ("q1", "q2")
    assert (waiters.waiting("q1"), waiters.waiting("q2"), waiters.waiting()) == (1, 2, 2)
    assert waiters.waiting("nobody") == 0


async def test_notify_wakes_at_most_count_in_arrival_order() -> None:
    waiters = Waiters()
    first, second, third = (waiters.join(["q"]) for _ in range(3))
    assert waiters.notify("q", 2) == 2
    assert [w.event.is_set() for w in (first, second, third)] == [True, True, False]
    assert first.woken_by == second.woken_by == "q" and third.woken_by is None
    # Woken ones are not woken twice: the next task goes to the third.
    assert waiters.notify("q", 5) == 1
    assert third.woken_by == "q"
    assert waiters.notify("q") == 0


@pytest.mark.parametrize("count", [0, -1])
async def test_notify_of_nothing_wakes_nobody(count: int) -> None:
    waiters = Waiters()
    parked = waiters.join(["q"])
    assert waiters.notify("q", count) == 0
    assert waiters.notify("other", 3) == 0
    assert not parked.event.is_set()


async def test_notify_all_wakes_every_claim_on_that_queue_only() -> None:
    waiters = Waiters()
    here = [waiters.join(["q"]) for _ in range(4)]
    elsewhere = waiters.join(["r"])
    assert waiters.notify_all("q") == 4
    assert all(w.event.is_set() for w in here) and not elsewhere.event.is_set()
    assert waiters.notify_all("empty") == 0


async def test_leave_unparks_from_every_queue() -> None:
    waiters = Waiters()
    parked = waiters.join(["a", "b"])
    waiters.leave(parked)
    assert waiters.waiting() == 0 and waiters.waiting("a") == 0 and waiters.waiting("b") == 0
    assert waiters.notify("a") == 0
    waiters.leave(parked)  # twice is harmless


async def test_a_woken_claim_that_leaves_hands_its_wake_up_on() -> None:
    waiters = Waiters()
    woken = waiters.join(["q"])
    sleeping = waiters.join(["q"])
    assert waiters.notify("q", 1) == 1
    waiters.leave(woken)  # e.g. its claim timed out before it could claim again
    assert sleeping.event.is_set() and sleeping.woken_by == "q"
    assert waiters.waiting("q") == 1


async def test_a_claim_that_leaves_unwoken_hands_nothing_on() -> None:
    waiters = Waiters()
    leaving = waiters.join(["q"])
    staying = waiters.join(["q"])
    waiters.leave(leaving)
    assert not staying.event.is_set()


async def test_the_hand_on_goes_to_the_queue_that_woke_it() -> None:
    waiters = Waiters()
    multi = waiters.join(["a", "b"])
    on_a = waiters.join(["a"])
    on_b = waiters.join(["b"])
    assert waiters.notify("b", 1) == 1 and multi.woken_by == "b"
    waiters.leave(multi)
    assert on_b.event.is_set() and not on_a.event.is_set()


async def test_rearm_forgets_the_wake_up() -> None:
    waiters = Waiters()
    parked = waiters.join(["q"])
    waiters.notify("q")
    old_event = parked.event
    parked.rearm()
    assert parked.woken_by is None and not parked.event.is_set() and parked.event is not old_event
    assert waiters.notify("q") == 1  # can be woken again
    # A claim that rearmed and then left unwoken hands nothing on.
    fresh = waiters.join(["q"])
    parked.rearm()
    waiters.leave(parked)
    assert not fresh.event.is_set()
