"""The names of the bench scenarios, in run order: what ``--help`` lists without loading them."""

from __future__ import annotations

from typing import Final

#: Every scenario (``scenarios.SCENARIOS`` has one function for each, in this order).
SCENARIO_NAMES: Final = (
    "limits",
    "enqueue-seq",
    "enqueue-pipelined",
    "enqueue-many",
    "http-enqueue",
    "drain",
    "e2e",
    "latency",
    "grpc",
    "claim-scaling",
)
#: What runs when no ``--scenario`` is given: claim-scaling fills tables of a million rows.
DEFAULT_SCENARIO_NAMES: Final = tuple(name for name in SCENARIO_NAMES if name != "claim-scaling")
