"""Exponential backoff with jitter: the one formula behind every retry delay."""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]


def backoff_delay(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Seconds to wait after failed try number ``attempt`` (1, 2, ...).

    ``min(cap, base * 2**(attempt-1))``, grown by a random fraction between 0 and ``jitter``
    and capped at ``cap`` again. A negative ``jitter`` shrinks it instead: ``-0.5`` gives
    "half fixed, half random" below the ceiling, which keeps clients that lost the same broker
    apart even once they reach the cap. Attempts below 1 count as 1.
    """
    exponent = min(max(attempt - 1, 0), 62)  # 2.0**63 and beyond only overflow into the cap
    ceiling = min(cap, base * 2.0**exponent)
    return min(cap, ceiling * (1.0 + random.uniform(0.0, jitter)))
