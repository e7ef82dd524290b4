"""Results of a benchmark run: one :class:`Measurement` per scenario variant, the machine it
ran on, and the two ways to show them (rich tables for people, JSON for machines)."""

from __future__ import annotations

import math
import os
import platform
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs in the dev extras
from rich.console import Console
from rich.table import Table

MB = 1024 * 1024


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class Latency:
    """A latency distribution, in milliseconds."""

    of: str  # what was timed, e.g. "enqueue reply", "enqueue -> claim"
    samples: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of_seconds(cls, of: str, seconds: Sequence[float]) -> Latency | None:
        if not seconds:
            return None
        ordered = sorted(seconds)
        return cls(
            of=of,
            samples=len(ordered),
            p50_ms=percentile(ordered, 0.50) * 1000,
            p95_ms=percentile(ordered, 0.95) * 1000,
            p99_ms=percentile(ordered, 0.99) * 1000,
            max_ms=ordered[-1] * 1000,
        )


@dataclass
class Measurement:
    """One variant of one scenario (e.g. ``enqueue-seq``, ``4 producers``)."""

    scenario: str
    variant: str
    tasks: int
    seconds: float
    throughput: float  # tasks a second
    latency: Latency | None = None
    other_latency: Latency | None = None
    processes: int = 0  # load processes
    connections: int = 0
    commits: int | None = None  # group commits of the broker during the window
    writes: int | None = None  # write requests those commits carried
    broker_cpu_percent: float | None = None  # of one core
    db_busy_percent: float | None = None  # the writer thread's time in batches, of the window
    commit_ms: float | None = None  # average time of one COMMIT (the fsync, under FULL)
    broker_rss_peak_mb: float | None = None
    #: PostgreSQL's backends serving the benchmark's database, of one core (``--db``).
    database_cpu_percent: float | None = None
    loadgen_cpu_percent: float | None = None  # summed over load processes, of one core
    loadgen_cpu_us_per_task: float | None = None
    sqlite_fraction_1row: float | None = None  # throughput / raw single-row commits a second
    sqlite_fraction_100row: float | None = None  # throughput / raw rows a second, 100 a commit
    load: str = ""  # how the load was generated
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks_per_commit(self) -> float | None:
        if not self.commits:
            return None
        return self.tasks / self.commits

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tasks_per_commit"] = self.tasks_per_commit
        finite: dict[str, Any] = _finite(data)
        return finite


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _disk_of(path: Path) -> dict[str, Any]:
    """The device and file system a path lives on."""
    resolved = path.resolve()
    best: Any = None
    for part in psutil.disk_partitions(all=True):
        mount = Path(part.mountpoint)
        inside = resolved == mount or mount in resolved.parents
        if inside and (best is None or len(str(mount)) > len(str(best.mountpoint))):
            best = part
    info: dict[str, Any] = {"path": str(resolved)}
    if best is not None:
        info.update(device=best.device, fstype=best.fstype, mountpoint=best.mountpoint)
    rotational = _rotational(info.get("device", ""))
    if rotational is not None:
        info["rotational"] = rotational
    return info


def _rotational(device: str) -> bool | None:
    name = Path(device).name.rstrip("0123456789")
    flag = Path("/sys/block") / name / "queue" / "rotational"
    try:
        return flag.read_text().strip() == "1"
    except OSError:
        return None


def machine_info(db_dir: Path) -> dict[str, Any]:
    """What the numbers depend on: cores, memory, Python, SQLite, the disk, the load."""
    return {
        "nproc": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "disk": _disk_of(db_dir),
        "loadavg_start": list(os.getloadavg()),
    }


@dataclass
class Report:
    """Everything one ``durable-tq bench`` run found."""

    config: dict[str, Any]
    machine: dict[str, Any]
    measurements: list[Measurement] = field(default_factory=list)
    limits: dict[str, Any] = field(default_factory=dict)
    broker: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. claim_scaling's own report

    def to_json(self) -> dict[str, Any]:
        scenarios: dict[str, list[dict[str, Any]]] = {}
        for m in self.measurements:
            scenarios.setdefault(m.scenario, []).append(m.to_json())
        report: dict[str, Any] = _finite(
            {
                "config": self.config,
                "machine": self.machine,
                "broker": self.broker,
                "limits": self.limits,
                "scenarios": scenarios,
                "notes": self.notes,
                **self.extra,
            }
        )
        return report


# --- tables -------------------------------------------------------------------------------------


@dataclass
class Grid:
    """A table as plain strings, shown with rich or as Markdown (``--markdown``)."""

    title: str
    headers: list[str]
    right: set[int]  # right-aligned columns
    rows: list[list[str]] = field(default_factory=list)
    bold: int | None = None  # the column that matters most

    def rich(self) -> Table:
        table = Table(title=self.title, title_justify="left", header_style="bold")
        for index, header in enumerate(self.headers):
            table.add_column(
                header,
                justify="right" if index in self.right else "left",
                style="bold" if index == self.bold else None,
            )
        for row in self.rows:
            table.add_row(*row)
        return table

    def markdown(self) -> str:
        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", "<br>")

        lines = [
            f"**{self.title}**",
            "",
            "| " + " | ".join(cell(h) for h in self.headers) + " |",
            "| "
            + " | ".join("---:" if i in self.right else "---" for i in range(len(self.headers)))
            + " |",
        ]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:,.1f}"


def _load_cpu(m: Measurement) -> str:
    """The load processes' CPU, as a share of one core and per task (the client's cost)."""
    if m.loadgen_cpu_percent is None:
        return "-"
    shown = f"{m.loadgen_cpu_percent:.0f}%"
    if m.loadgen_cpu_us_per_task is not None:
        shown += f" ({m.loadgen_cpu_us_per_task:,.0f} µs/task)"
    return shown


def _cpu_per_task(percent: float | None, m: Measurement) -> str:
    """A CPU share of one core, and what it comes to per task moved."""
    if percent is None:
        return "-"
    shown = f"{percent:.0f}%"
    if m.throughput > 0:
        shown += f" ({percent / 100 / m.throughput * 1e6:,.0f} µs/task)"
    return shown


def throughput_grid(measurements: Sequence[Measurement]) -> Grid:
    repeated = any(m.extra.get("runs") for m in measurements)
    database = any(m.database_cpu_percent is not None for m in measurements)
    headers = ["scenario", "variant", "tasks", "tasks/s"]
    if repeated:
        headers.append("runs (min-max)")
    headers += [
        "commits",
        "tasks/commit",
        "commit ms",
        "DB busy",
        "broker CPU",
        *(["PostgreSQL CPU"] if database else []),
        "load CPU",
        "broker RSS",
        "x SQLite 1-row",
        "% SQLite 100-row",
    ]
    grid = Grid("Throughput", headers, set(range(2, len(headers))), bold=3)
    for m in measurements:
        spread = []
        if repeated:
            rates = [run["throughput"] for run in m.extra.get("runs", [])]
            spread = [f"{min(rates):,.0f}-{max(rates):,.0f}" if rates else "-"]
        grid.rows.append(
            [
                m.scenario,
                m.variant,
                _num(m.tasks),
                _num(m.throughput),
                *spread,
                _num(m.commits),
                _num(m.tasks_per_commit, 1),
                "-" if m.commit_ms is None else _ms(m.commit_ms),
                "-" if m.db_busy_percent is None else f"{m.db_busy_percent:.0f}%",
                _cpu_per_task(m.broker_cpu_percent, m),
                *([_cpu_per_task(m.database_cpu_percent, m)] if database else []),
                _load_cpu(m),
                "-" if m.broker_rss_peak_mb is None else f"{m.broker_rss_peak_mb:.0f} MB",
                _num(m.sqlite_fraction_1row, 1),
                "-" if m.sqlite_fraction_100row is None else f"{m.sqlite_fraction_100row:.0%}",
            ]
        )
    return grid


def latency_grid(measurements: Sequence[Measurement]) -> Grid:
    headers = ["scenario", "variant", "latency of", "p50", "p95", "p99", "max", "samples"]
    grid = Grid("Latency (ms)", headers, {3, 4, 5, 6, 7}, bold=5)
    for m in measurements:
        for latency in (m.latency, m.other_latency):
            if latency is None:
                continue
            grid.rows.append(
                [
                    m.scenario,
                    m.variant,
                    latency.of,
                    _ms(latency.p50_ms),
                    _ms(latency.p95_ms),
                    _ms(latency.p99_ms),
                    _ms(latency.max_ms),
                    _num(latency.samples),
                ]
            )
    return grid


def limits_grid(limits: dict[str, Any]) -> Grid:
    headers = [
        "schema",
        "rows per commit",
        "commits/s",
        "rows/s",
        "commit p50 ms",
        "commit p99 ms",
    ]
    grid = Grid(
        f"SQLite alone on the same disk (WAL, synchronous={limits.get('synchronous')})",
        headers,
        {1, 2, 3, 4, 5},
        bold=3,
    )
    for row in limits.get("runs", []):
        grid.rows.append(
            [
                str(row.get("schema", "plain")),
                str(row["rows_per_commit"]),
                _num(row["commits_per_second"]),
                _num(row["rows_per_second"]),
                _ms(row["commit_p50_ms"]),
                _ms(row["commit_p99_ms"]),
            ]
        )
    return grid


def profile_grid(measurements: Sequence[Measurement]) -> Grid:
    """The broker's self time during each measurement (py-spy), by area, thread, function."""
    headers = [
        "scenario",
        "variant",
        "areas (all samples)",
        "threads (busy samples)",
        "functions (busy samples)",
    ]
    grid = Grid("Where the broker's time went (py-spy self time; --profile)", headers, set())

    def shares(rows: list[dict[str, Any]], count: int) -> str:
        return "\n".join(f"{r['percent']:.0f}% {r['name']}" for r in rows[:count])

    for m in measurements:
        summary = m.extra["profile"]
        grid.rows.append(
            [
                m.scenario,
                m.variant,
                shares(summary["areas"], 6),
                shares(summary["threads"], 2),
                shares(summary["functions"], 6),
            ]
        )
    return grid


def _grids(report: Report) -> list[Grid]:
    grids = []
    if report.limits.get("runs"):
        grids.append(limits_grid(report.limits))
    measured = [m for m in report.measurements if m.scenario != "limits"]
    if measured:
        grids += [throughput_grid(measured), latency_grid(measured)]
    profiled = [m for m in measured if m.extra.get("profile")]
    if profiled:
        grids.append(profile_grid(profiled))
    return grids


def _summary_lines(report: Report) -> list[str]:
    machine = report.machine
    config = report.config
    disk = machine.get("disk", {})
    brokers = report.broker.get("urls") or [report.broker.get("url", "?")]
    where = f"broker {brokers[0]}"
    if config.get("database"):
        where = f"{len(brokers)} broker(s) {', '.join(brokers)} on {config['database']}"
    lines = [
        f"durable-tq bench: {config['tasks']:,} tasks, {config['payload_bytes']} byte payloads, "
        f"synchronous={config['synchronous']}, {where}",
        f"machine: {machine['nproc']} cores, {machine['memory_gb']} GB, Python "
        f"{machine['python']}, SQLite {machine['sqlite']}, disk {disk.get('device', '?')} "
        f"({disk.get('fstype', '?')}); load average {_loadavg(machine, 'loadavg_start')} at "
        f"the start, {_loadavg(machine, 'loadavg_end')} at the end",
    ]
    if machine.get("postgresql"):
        lines.append(
            f"PostgreSQL {machine['postgresql']}; broker CPU and RSS are summed over the "
            "brokers; PostgreSQL CPU is its backends serving this database"
        )
    return lines


def _closing_lines(report: Report) -> list[str]:
    lines = []
    peak = report.broker.get("rss_peak_mb")
    if peak is not None:
        lines.append(f"broker RSS: peak {peak:.0f} MB over the whole run (sampled every 50 ms)")
    for m in report.measurements:
        lines += [f"{m.scenario} ({m.variant}): {note}" for note in m.notes]
    return lines + report.notes


def render(report: Report, console: Console) -> None:
    """The report as rich tables."""
    for line in _summary_lines(report):
        console.print(line, markup=False)
    for grid in _grids(report):
        console.print(grid.rich())
    for line in _closing_lines(report):
        console.print(line, style="dim", markup=False)


def markdown(report: Report) -> str:
    """The report as Markdown (for docs/benchmarks.md)."""
    parts = ["  \n".join(_summary_lines(report))]
    parts += [grid.markdown() for grid in _grids(report)]
    parts += ["\n".join(f"- {line}" for line in _closing_lines(report))]
    return "\n\n".join(parts) + "\n"


def _loadavg(machine: dict[str, Any], key: str) -> str:
    values = machine.get(key)
    if not values:
        return "?"
    return " ".join(f"{v:.2f}" for v in values)
