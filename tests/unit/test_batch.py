"""The group commit's Batch: what a write records counts only if that write is kept."""

from __future__ import annotations

from durable_tq.backends.sqlite.store import Batch


def test_moves_of_a_kept_write_count_and_a_dropped_one_do_not() -> None:
    batch = Batch()
    batch.begin_request()
    batch.moved("q", None, "queued", 3)
    batch.moved("q", "queued", "leased")
    batch.keep_request()
    assert batch.moves == {("q", "queued"): 2, ("q", "leased"): 1}

    batch.begin_request()  # a write that fails: its moves are dropped with it
    batch.moved("q", None, "queued", 5)
    assert batch.net("q", "queued") == 7  # seen while it runs (the depth check needs that)
    assert batch.request_net("q", "queued", "scheduled") == 5
    batch.begin_request()  # the next write starts clean
    assert batch.net("q", "queued") == 2
    assert batch.moves == {("q", "queued"): 2, ("q", "leased"): 1}


def test_finished_tasks_follow_the_same_rule() -> None:
    batch = Batch()
    batch.begin_request()
    batch.finished(1, "succeeded")
    batch.keep_request()
    batch.begin_request()
    batch.finished(2, "dead")
    batch.begin_request()  # dropped
    batch.finished(3, "cancelled")
    batch.keep_request()
    assert batch.done == [(1, "succeeded"), (3, "cancelled")]


def test_a_move_between_equal_states_nets_to_nothing() -> None:
    batch = Batch()
    batch.begin_request()
    batch.moved("q", "queued", "leased")
    batch.moved("q", "leased", "queued")
    batch.keep_request()
    assert all(n == 0 for n in batch.moves.values())
