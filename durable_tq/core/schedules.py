"""When a schedule fires: cron expressions (croniter, with a time zone) and fixed intervals.

Pure functions of a schedule and a moment; no I/O and no clock of their own, so the broker
and the tests decide what "now" is. Moments are Unix seconds (floats).

A schedule's slots are the moments it is due: the cron expression's matches in its time zone,
or ``anchor + k * every``. The broker keeps the next slot of each schedule; when it is due it
fires at most once, for one slot, and moves on to the first slot after now:

- ``missed = "latest"`` (default): after downtime, one task for the most recent slot that was
  missed; none for the older ones.
- ``missed = "none"``: a slot more than ``MISFIRE_GRACE`` seconds late is skipped (a broker
  that was down does not catch up at all); a slot fired a little late (a sweep's delay) still
  fires.

Daylight saving time follows croniter: in a spring-forward gap a daily ``30 2 * * *`` in
Europe/Paris fires at 03:00, and in a fall-back hour an hourly schedule fires at both 02:00s
(both are real, distinct instants).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import (  # type: ignore[import-untyped]
    CroniterBadCronError,
    CroniterBadDateError,
    CroniterNotAlphaError,
    croniter,
)

from durable_tq import errors

Missed = Literal["latest", "none"]
MISSED_POLICIES: tuple[Missed, ...] = ("latest", "none")
#: How late a slot may fire under ``missed = "none"`` and still count as on time.
MISFIRE_GRACE = 60.0
#: Shortest interval schedule: a schedule is not a busy loop.
MIN_EVERY = 1.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_every(text: str) -> float:
    """``"30s"``, ``"5m"``, ``"1.5h"``, ``"1d"`` or plain seconds (``"90"``) as seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise errors.BadRequest(f"every: {text!r} is not a duration (try 30s, 5m, 1h, 1d)")
    seconds = float(match.group(1)) * _UNIT[match.group(2)]
    if seconds < MIN_EVERY:
        raise errors.BadRequest(f"every: {text!r} is shorter than {MIN_EVERY:g} s")
    return seconds


def zone(name: str | None) -> tzinfo:
    """The time zone ``name`` (IANA, e.g. ``Europe/Paris``); UTC when None."""
    if name is None:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise errors.BadRequest(f"tz: unknown time zone {name!r}") from None


@dataclass(frozen=True)
class Timing:
    """When a schedule is due: ``cron`` (with ``tz``) or ``every`` seconds from ``anchor``."""

    cron: str | None = None
    tz: str | None = None
    every: float | None = None
    anchor: float = 0.0

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise errors.BadRequest("give cron or every, not both and not neither")
        if self.cron is not None:
            check_cron(self.cron)
            zone(self.tz)
        elif self.tz is not None:
            raise errors.BadRequest("tz goes with cron, not with every")
        if self.every is not None and (not math.isfinite(self.every) or self.every < MIN_EVERY):
            raise errors.BadRequest(f"every: must be at least {MIN_EVERY:g} s")

    def next_after(self, moment: float) -> float:
        """The first slot strictly after ``moment``."""
        if self.every is not None:
            steps = math.floor((moment - self.anchor) / self.every) + 1
            return self.anchor + max(steps, 0) * self.every
        assert self.cron is not None
        start = datetime.fromtimestamp(moment, zone(self.tz))
        try:
            following: float = croniter(self.cron, start).get_next(float)
        except CroniterBadDateError as exc:  # e.g. "0 0 30 2 *": never matches
            raise errors.BadRequest(f"cron: {self.cron!r} never fires") from exc
        return following

    def latest_at_or_before(self, moment: float, since: float) -> float | None:
        """The last slot in ``[since, moment]``, or None if there is none."""
        if self.every is not None:
            if moment < self.anchor:
                return None
            slot = self.anchor + math.floor((moment - self.anchor) / self.every) * self.every
            return slot if slot >= since else None
        assert self.cron is not None
        start = datetime.fromtimestamp(moment, zone(self.tz))
        previous: float = croniter(self.cron, start).get_prev(float)
        # croniter's get_prev is strictly before ``start``: ``moment`` itself may be a slot.
        following = self.next_after(previous)
        if following <= moment:
            previous = following
        return previous if previous >= since else None


def check_cron(expression: str) -> None:
    """Five fields (minute hour day month weekday); anything else is a BadRequest."""
    if len(expression.split()) != 5:
        raise errors.BadRequest(
            f"cron: {expression!r} must have 5 fields (minute hour day-of-month month day-of-week)"
        )
    try:
        croniter(expression)
    except (CroniterBadCronError, CroniterNotAlphaError, ValueError, KeyError) as exc:
        raise errors.BadRequest(f"cron: {expression!r} is not valid: {exc}") from None


@dataclass(frozen=True)
class Firing:
    """What a due schedule does now: fire for ``slot`` (None: skip), then wait for ``next``."""

    slot: float | None
    next: float


def fire(timing: Timing, due_at: float, now: float, missed: Missed) -> Firing | None:
    """The firing of a schedule whose next slot is ``due_at``, at ``now``; None if not due."""
    if due_at > now:
        return None
    latest = timing.latest_at_or_before(now, due_at) or due_at
    following = timing.next_after(now)
    if missed == "none" and now - latest > MISFIRE_GRACE:
        return Firing(None, following)
    return Firing(latest, following)
