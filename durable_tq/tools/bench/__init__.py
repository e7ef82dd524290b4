"""``durable-tq bench``: how many tasks a second the broker moves, and how long a task waits.

    names.py           the scenario names (for --help, without loading the rest)
    wire.py            a bare blocking NDJSON connection and pre-built frames (the load side)
    loadgen.py         the roles a load process plays: producers, consumers, Worker processes
    fleet.py           load processes: start, hold at a common start line, collect results
    broker_process.py  the broker under test as a subprocess; its memory and CPU via psutil
    limits.py          raw SQLite commits on the same disk: the ceiling to read figures against
    runner.py          one run: broker, control connection, measuring one scenario variant
    scenarios.py       the scenarios and their variants
    report.py          measurements, machine info, tables and JSON
    merge.py           --repeat: medians over whole runs
    profile.py         --profile: py-spy on the broker, summarized

docs/benchmarks.md has the method, the figures, and where the time goes.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from durable_tq.tools.bench.report import Measurement, Report, markdown, render
    from durable_tq.tools.bench.runner import BenchOptions
    from durable_tq.tools.bench.scenarios import DEFAULT_SCENARIOS, SCENARIOS

__all__ = [
    "DEFAULT_SCENARIOS",
    "SCENARIOS",
    "BenchOptions",
    "Measurement",
    "Report",
    "markdown",
    "render",
    "run",
]

# Imported on first use: ``durable-tq --help`` needs only ``names``, and the rest needs
# psutil (the ``bench`` extra).
_LAZY = {
    "DEFAULT_SCENARIOS": "durable_tq.tools.bench.scenarios",
    "SCENARIOS": "durable_tq.tools.bench.scenarios",
    "BenchOptions": "durable_tq.tools.bench.runner",
    "Measurement": "durable_tq.tools.bench.report",
    "Report": "durable_tq.tools.bench.report",
    "markdown": "durable_tq.tools.bench.report",
    "render": "durable_tq.tools.bench.report",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'durable_tq.tools.bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def run(options: BenchOptions, console: Console, *, show_progress: bool = True) -> Report:
    """Run the chosen scenarios (in their fixed order), ``options.repeat`` times on a fresh
    broker each; the report (of medians, when repeated)."""
    from durable_tq.tools.bench.merge import median_report
    from durable_tq.tools.bench.runner import Bench
    from durable_tq.tools.bench.scenarios import SCENARIOS

    options = options.effective()
    unknown = [name for name in options.scenarios if name not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s): {', '.join(unknown)}")
    chosen = [name for name in SCENARIOS if name in options.scenarios]
    reports: list[Report] = []
    for number in range(1, options.repeat + 1):
        this_run = options
        if options.repeat > 1 and options.profile_dir is not None:
            this_run = replace(options, profile_dir=options.profile_dir / f"run{number}")
        with Bench(this_run, console, show_progress=show_progress) as bench:
            for name in chosen:
                SCENARIOS[name](bench)
        reports.append(bench.report)
    return median_report(reports)
