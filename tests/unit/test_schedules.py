"""Schedule slots: cron with time zones (DST included), intervals, missed-run policies."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from durable_tq import errors
from durable_tq.core.schedules import MISFIRE_GRACE, Firing, Timing, fire, parse_every

PARIS = ZoneInfo("Europe/Paris")


def at(*fields: int, tz: object = UTC) -> float:
    return datetime(*fields, tzinfo=tz).timestamp()  # type: ignore[arg-type, misc]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1.5h", 5400), ("1d", 86400), ("90", 90), ("2500ms", 2.5)],
)
def test_parse_every(text: str, seconds: float) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "-3s", "0.5s", "1w"])
def test_parse_every_refuses(text: str) -> None:
    with pytest.raises(errors.BadRequest):
        parse_every(text)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"cron": "* * * * *", "every": 5.0},
        {"cron": "* * * *"},
        {"cron": "61 * * * *"},
        {"cron": "* * * * *", "tz": "Mars/Olympus"},
        {"every": 5.0, "tz": "Europe/Paris"},
        {"every": 0.1},
    ],
)
def test_bad_timings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(errors.BadRequest):
        Timing(**kwargs)  # type: ignore[arg-type]


def test_cron_slot_boundaries_are_exact() -> None:
    every_five = Timing(cron="*/5 * * * *")
    noon = at(2026, 6, 1, 12, 0)
    assert every_five.next_after(noon - 0.001) == noon  # a slot is its own moment
    assert every_five.next_after(noon) == noon + 300  # strictly after
    assert every_five.latest_at_or_before(noon, since=0) == noon
    assert every_five.latest_at_or_before(noon - 1, since=0) == noon - 300
    assert every_five.latest_at_or_before(noon - 1, since=noon - 10) is None


def test_cron_in_a_time_zone_across_the_spring_forward_gap() -> None:
    daily = Timing(cron="30 2 * * *", tz="Europe/Paris")
    # 2026-03-29: clocks go from 02:00 to 03:00 in Paris; 02:30 does not exist that night.
    slot = daily.next_after(at(2026, 3, 29, 1, 0, tz=PARIS))
    assert datetime.fromtimestamp(slot, PARIS).strftime("%m-%d %H:%M %z") == "03-29 03:00 +0200"
    following = daily.next_after(slot)
    assert datetime.fromtimestamp(following, PARIS).strftime("%m-%d %H:%M") == "03-30 02:30"
    assert following - slot == 23.5 * 3600


def test_cron_in_a_time_zone_across_the_fall_back_hour() -> None:
    hourly = Timing(cron="0 * * * *", tz="Europe/Paris")
    # 2026-10-25: 03:00 CEST becomes 02:00 CET; both 02:00s are real and an hour apart.
    first = hourly.next_after(at(2026, 10, 25, 1, 30, tz=PARIS))
    second = hourly.next_after(first)
    third = hourly.next_after(second)
    assert [second - first, third - second] == [3600, 3600]
    assert {datetime.fromtimestamp(s, PARIS).hour for s in (first, second)} == {2}


def test_interval_slots_count_from_the_anchor() -> None:
    timing = Timing(every=30.0, anchor=1000.0)
    assert timing.next_after(999) == 1000
    assert timing.next_after(1000) == 1030
    assert timing.next_after(1044.5) == 1060
    assert timing.latest_at_or_before(1044.5, since=0) == 1030
    assert timing.latest_at_or_before(999, since=0) is None


def test_not_due_does_not_fire() -> None:
    assert fire(Timing(every=60.0), due_at=120.0, now=119.9, missed="latest") is None


def test_on_time_fires_its_slot() -> None:
    timing = Timing(every=60.0)
    assert fire(timing, due_at=120.0, now=120.2, missed="latest") == Firing(120.0, 180.0)
    assert fire(timing, due_at=120.0, now=120.2, missed="none") == Firing(120.0, 180.0)


def test_after_an_hour_down_latest_fires_once_for_the_last_slot() -> None:
    minutely = Timing(cron="* * * * *")
    due = at(2026, 6, 1, 12, 0)
    now = due + 3600 + 25  # sixty slots missed
    firing = fire(minutely, due_at=due, now=now, missed="latest")
    assert firing == Firing(due + 3600, due + 3660)  # one task, for 13:00; next at 13:01


def test_after_downtime_none_skips_but_a_little_late_still_fires() -> None:
    hourly = Timing(cron="0 * * * *")
    due = at(2026, 6, 1, 12, 0)
    skipped = fire(hourly, due_at=due, now=due + 2 * 3600 + MISFIRE_GRACE + 1, missed="none")
    assert skipped == Firing(None, due + 3 * 3600)
    late = fire(hourly, due_at=due, now=due + MISFIRE_GRACE - 1, missed="none")
    assert late == Firing(due, due + 3600)
