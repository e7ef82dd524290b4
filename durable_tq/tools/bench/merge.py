"""``--repeat N``: N whole runs (a fresh broker each) folded into one report of medians.

Each figure is the median of that figure over the runs (so a p99 is the median of the runs'
p99s); the throughput of every run is kept beside it, so the spread stays visible.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

from durable_tq.tools.bench.report import Latency, Measurement, Report


def _median(values: Sequence[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    middle = statistics.median(present)
    return round(middle) if all(isinstance(v, int) for v in present) else middle


def _median_latency(latencies: Sequence[Latency | None]) -> Latency | None:
    present = [latency for latency in latencies if latency is not None]
    if not present:
        return None
    return Latency(
        of=present[0].of,
        samples=sum(latency.samples for latency in present),
        p50_ms=statistics.median(latency.p50_ms for latency in present),
        p95_ms=statistics.median(latency.p95_ms for latency in present),
        p99_ms=statistics.median(latency.p99_ms for latency in present),
        max_ms=statistics.median(latency.max_ms for latency in present),
    )


def _median_measurement(runs: Sequence[Measurement]) -> Measurement:
    first = runs[0]
    changes: dict[str, Any] = {}
    for f in fields(Measurement):
        values = [getattr(run, f.name) for run in runs]
        if f.name in ("latency", "other_latency"):
            changes[f.name] = _median_latency(values)
        elif all(isinstance(v, int | float) or v is None for v in values):
            changes[f.name] = _median(values)
    merged = replace(first, **changes)
    merged.extra = {
        **first.extra,
        "runs": [
            {
                "throughput": run.throughput,
                "p99_ms": None if run.latency is None else run.latency.p99_ms,
            }
            for run in runs
        ],
    }
    return merged


def _median_limits(limits: Sequence[dict[str, Any]]) -> dict[str, Any]:
    present = [entry for entry in limits if entry.get("runs")]
    if not present:
        return {}
    merged: dict[str, Any] = dict(present[0])
    merged["runs"] = []
    for i, first_run in enumerate(present[0]["runs"]):
        values = {key: [entry["runs"][i][key] for entry in present] for key in first_run}
        merged["runs"].append(
            {
                key: _median(found) if isinstance(first_run[key], int | float) else first_run[key]
                for key, found in values.items()
            }
        )
    for key in [k for k in present[0] if k.endswith("_per_second")]:
        merged[key] = _median([entry.get(key) for entry in present])
    return merged


def median_report(reports: Sequence[Report]) -> Report:
    """One report whose every figure is the median over ``reports`` (runs of the same set)."""
    if len(reports) == 1:
        return reports[0]
    first, last = reports[0], reports[-1]
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for report in reports:
        for m in report.measurements:
            groups.setdefault((m.scenario, m.variant), []).append(m)
    peaks = [float(r.broker["rss_peak_mb"]) for r in reports if r.broker.get("rss_peak_mb")]
    merged = Report(
        config={**first.config, "repeat": len(reports)},
        machine={
            **first.machine,
            "loadavg_end": last.machine.get("loadavg_end"),
            "loadavg_runs": [
                [r.machine.get("loadavg_start"), r.machine.get("loadavg_end")] for r in reports
            ],
        },
        measurements=[_median_measurement(runs) for runs in groups.values()],
        limits=_median_limits([r.limits for r in reports]),
        broker={**first.broker, "rss_peak_mb": max(peaks) if peaks else None},
        notes=[
            *first.notes,
            f"every figure is the median of {len(reports)} runs, each on a fresh broker "
            "(latency percentiles: the median of the runs' percentiles)",
        ],
        extra=first.extra,
    )
    return merged
