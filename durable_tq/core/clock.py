"""Where the broker gets the time: a clock you can pass in (and a fake one for tests).

The broker stores deadlines (leases, run times, heartbeats, retention) as Unix seconds, because
they must survive a restart and be readable by people and by the offline CLI. While it runs it
must not trust the wall clock to measure them, though: an NTP step or a hand-set date would
shorten or stretch every lease. So :class:`BrokerTime` reads the wall clock once, when the
broker starts, and from then on moves only with the monotonic clock:
``now() = wall at start + monotonic elapsed since start``. A wall step while running changes
nothing; a restart reads the wall clock afresh (docs/guarantees.md, "Time").
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """The two clocks the broker reads."""

    def wall(self) -> float:
        """Unix seconds (may step)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never steps, never goes back."""
        ...


class SystemClock:
    """The real clocks: ``time.time`` and ``time.monotonic``."""

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock for tests: time moves only when told.

    ``advance(s)`` moves both clocks (time passes); ``step_wall(s)`` moves only the wall clock
    (an NTP step, a hand-set date), forward or backward.
    """

    def __init__(self, wall: float = 1_700_000_000.0, monotonic: float = 1000.0) -> None:
        self._wall = wall
        self._monotonic = monotonic

    def wall(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go back; use step_wall for a wall-clock step")
        self._wall += seconds
        self._monotonic += seconds

    def step_wall(self, seconds: float) -> None:
        self._wall += seconds


class BrokerTime:
    """The broker's "now" in Unix seconds: anchored to the wall clock once, then monotonic."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = SystemClock() if clock is None else clock
        self.anchor()

    def anchor(self) -> None:
        """Read the wall clock again (at start-up; the broker calls it when it opens)."""
        self._wall_at_start = self.clock.wall()
        self._monotonic_at_start = self.clock.monotonic()

    def now(self) -> float:
        """Unix seconds as the broker counts them: a wall step after :meth:`anchor` is ignored."""
        return self._wall_at_start + (self.clock.monotonic() - self._monotonic_at_start)

    def monotonic(self) -> float:
        return self.clock.monotonic()

    def wall_drift(self) -> float:
        """How far the wall clock now is from the broker's now (positive: wall is ahead)."""
        return self.clock.wall() - self.now()
