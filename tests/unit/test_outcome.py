"""How a handler's run is classified (durable_tq.worker.outcome): pure functions, no broker."""

from __future__ import annotations

import math

import pytest

from durable_tq.worker.outcome import (
    MAX_ERROR_CHARS,
    Fail,
    Failed,
    Retry,
    Succeeded,
    describe_exception,
    failure_from,
    safe_result,
    summarize,
)


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a traceback, as a handler would have raised it."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_retry_is_requested_and_keeps_its_delay() -> None:
    outcome = failure_from(Retry("rate limited", delay=30))
    assert outcome == Failed(
        "Retry: rate limited", "Retry: rate limited", retry=True, delay=30, requested=True
    )


def test_retry_without_reason_or_delay() -> None:
    outcome = failure_from(Retry())
    assert (outcome.error, outcome.retry, outcome.delay) == ("Retry: retry requested", True, None)


def test_retry_refuses_a_negative_delay() -> None:
    with pytest.raises(ValueError, match="negative"):
        Retry(delay=-1)


def test_fail_is_final_and_names_its_cause() -> None:
    try:
        try:
            raise KeyError("mailbox")
        except KeyError as cause:
            raise Fail("no such mailbox") from cause
    except Fail as exc:
        outcome = failure_from(exc)
    assert outcome.retry is False and outcome.requested is False and outcome.delay is None
    assert outcome.error.startswith("Fail: no such mailbox\nCaused by KeyError: 'mailbox'")
    assert outcome.summary == "Fail: no such mailbox"
    assert outcome.exc is None


def test_any_other_exception_is_retried_and_kept_for_the_log() -> None:
    exc = raised(ValueError("bad input"))
    outcome = failure_from(exc)  # type: ignore[arg-type]
    assert outcome.retry is True and outcome.requested is False and outcome.exc is exc
    assert outcome.summary == "ValueError: bad input"
    assert outcome.error.startswith("ValueError: bad input\nTraceback (innermost 1 frames):")


def test_types_outside_builtins_are_named_with_their_module() -> None:
    class Custom(Exception):
        pass

    where = f"{__name__}.test_types_outside_builtins_are_named_with_their_module.<locals>"
    assert summarize(Custom("x")) == f"{where}.Custom: x"
    assert summarize(Exception()) == "Exception"


def test_summary_is_one_bounded_line() -> None:
    summary = summarize(ValueError("line one\n  line two " + "x" * 500), limit=60)
    assert "\n" not in summary and len(summary) == 60 and summary.endswith(" ... (truncated)")
    assert summary.startswith("ValueError: line one line two")


def test_stored_errors_are_bounded() -> None:
    error = describe_exception(raised(RuntimeError("y" * 10_000)))
    assert len(error) <= MAX_ERROR_CHARS
    assert len(describe_exception(raised(RuntimeError("z" * 500)), limit=100)) <= 100
    retried = failure_from(Retry("r" * 10_000))
    assert len(retried.error) <= MAX_ERROR_CHARS


def test_only_the_innermost_frames_are_kept() -> None:
    def recurse(depth: int) -> None:
        if depth == 0:
            raise RuntimeError("deep")
        recurse(depth - 1)

    try:
        recurse(20)
    except RuntimeError as exc:
        error = describe_exception(exc)
    assert "Traceback (innermost 5 frames):" in error
    assert "in test_only_the_innermost_frames_are_kept" not in error  # the outermost frame


@pytest.mark.parametrize("value", [None, 1, "text", [1, {"a": 2.5}], {"nested": {"x": [True]}}])
def test_json_results_succeed(value: object) -> None:
    assert safe_result(value) == Succeeded(value)


def test_results_are_made_json_able_first() -> None:
    assert safe_result((1, 2)) == Succeeded([1, 2])


@pytest.mark.parametrize("value", [math.nan, math.inf, {"a": -math.inf}, object()])
def test_results_that_cannot_be_stored_fail_for_good(value: object) -> None:
    outcome = safe_result(value)
    assert isinstance(outcome, Failed) and outcome.retry is False
    assert outcome.error.startswith("the handler's return value cannot be stored as JSON")
    assert len(outcome.summary) <= 200
