"""``durable-tq bench``: measure throughput and latency of a broker (docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from durable_tq.cli._app import EXIT_OPERATION_ERROR, EXIT_USAGE, app
from durable_tq.cli._common import error_console, print_json, stdout_console
from durable_tq.tools.bench import names

MISSING_EXTRA = (
    "error: durable-tq bench needs psutil, which the bench extra brings: "
    "pip install 'durable_tq[bench]'"
)


def _scenario_help() -> str:
    listed = ", ".join(names.SCENARIO_NAMES)
    return f"Scenario to run; repeat for several. One of: {listed}. Default: all but claim-scaling."


@app.command()
def bench(
    scenario: Annotated[
        list[str] | None,
        typer.Option("--scenario", "-s", help=_scenario_help(), show_default=False),
    ] = None,
    tasks: Annotated[int, typer.Option(min=1, help="Tasks per throughput measurement.")] = 20_000,
    payload_bytes: Annotated[int, typer.Option(min=0, help="Size of each task's payload.")] = 100,
    synchronous: Annotated[
        str,
        typer.Option(
            help="SQLite synchronous of the broker started here (FULL or NORMAL); also used "
            "by the limits scenario.",
            case_sensitive=False,
        ),
    ] = "FULL",
    rate: Annotated[
        float, typer.Option(min=1, help="Offered enqueues a second in latency and e2e (rate).")
    ] = 1000.0,
    duration: Annotated[
        float, typer.Option(min=0.1, help="Seconds the fixed-rate measurements last.")
    ] = 10.0,
    repeat: Annotated[
        int,
        typer.Option(
            min=1, help="Run everything this many times (a fresh broker each); report medians."
        ),
    ] = 1,
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny counts: only checks that the tool works.")
    ] = False,
    url: Annotated[
        str | None,
        typer.Option(
            help="Benchmark this running broker (tcp://[TOKEN@]HOST:PORT) instead of starting "
            "one. Its queues get bench* queues, which are purged afterwards.",
            show_default=False,
        ),
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="Auth token of the --url broker.", show_default=False)
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            help="Start the brokers on this PostgreSQL database (postgresql://USER@HOST:PORT/DB) "
            "instead of a SQLite file; bench* queues are purged afterwards.",
            show_default=False,
        ),
    ] = None,
    brokers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Brokers to start on the --db database; each measurement's load processes "
            "are spread over them.",
        ),
    ] = 1,
    db_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the temporary database (the disk matters); default: the system's "
            "temp folder.",
            show_default=False,
        ),
    ] = None,
    profile_dir: Annotated[
        Path | None,
        typer.Option(
            "--profile",
            help="Sample the broker with py-spy during each measurement; keep the raw "
            "profiles in this folder and show where the time went.",
            show_default=False,
        ),
    ] = None,
    claim_scaling_arg: Annotated[
        list[str] | None,
        typer.Option(
            help="Pass this argument on to benchmarks/claim_scaling.py (repeatable).",
            show_default=False,
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON document.")
    ] = False,
    markdown_output: Annotated[
        bool,
        typer.Option("--markdown", help="Print the report as Markdown tables (for the docs)."),
    ] = False,
    save: Annotated[
        Path | None,
        typer.Option(help="Also write the JSON report to this file.", show_default=False),
    ] = None,
) -> None:
    """Measure how many tasks a second the broker moves and how long tasks wait.

    Starts its own broker (python -m durable_tq serve) on a temporary database unless --url is
    given, drives it from separate load processes, and prints throughput, latency percentiles,
    commits per task and the broker's memory, next to what SQLite alone manages on the same disk.
    With --db postgresql://... it starts --brokers brokers on that database instead and spreads
    each measurement's load processes over them (docs/benchmarks.md, PostgreSQL).
    """
    level = synchronous.upper()
    if level not in ("FULL", "NORMAL"):
        error_console().print(f"error: --synchronous must be FULL or NORMAL, not {synchronous!r}")
        raise typer.Exit(EXIT_USAGE)
    chosen = tuple(scenario) if scenario else names.DEFAULT_SCENARIO_NAMES
    unknown = [name for name in chosen if name not in names.SCENARIO_NAMES]
    if unknown:
        error_console().print(
            f"error: unknown scenario(s) {', '.join(unknown)}; "
            f"choose from {', '.join(names.SCENARIO_NAMES)}"
        )
        raise typer.Exit(EXIT_USAGE)
    if db is not None and (url is not None or not db.startswith(("postgresql://", "postgres://"))):
        error_console().print("error: --db takes a postgresql:// URL, and not with --url")
        raise typer.Exit(EXIT_USAGE)
    if brokers > 1 and db is None:
        error_console().print("error: several brokers share a PostgreSQL database: give --db")
        raise typer.Exit(EXIT_USAGE)
    if importlib.util.find_spec("psutil") is None:
        error_console().print(MISSING_EXTRA, markup=False)
        raise typer.Exit(EXIT_OPERATION_ERROR)
    # Imported here, not at the top: every command module is imported when any command runs,
    # and ``serve`` or ``worker`` should not load (or need) the benchmark.
    from durable_tq.tools import bench as benchmark

    options = benchmark.BenchOptions(
        scenarios=chosen,
        tasks=tasks,
        payload_bytes=payload_bytes,
        synchronous=level,
        quick=quick,
        url=url,
        token=token,
        rate=rate,
        duration=duration,
        db_dir=db_dir,
        repeat=repeat,
        profile_dir=profile_dir,
        claim_scaling_args=tuple(claim_scaling_arg or ()),
        db_url=db,
        brokers=brokers,
    )
    progress_console = error_console()
    show_progress = progress_console.is_terminal
    try:
        report = benchmark.run(options, progress_console, show_progress=show_progress)
    except ValueError as exc:
        error_console().print(f"error: {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        error_console().print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:  # a load process or the broker failed: say what, not a traceback
        error_console().print(f"error: the benchmark failed: {exc}")
        raise typer.Exit(EXIT_OPERATION_ERROR) from None
    if save is not None:
        save.write_text(json.dumps(report.to_json(), indent=1, allow_nan=False) + "\n")
    if json_output:
        print_json(report.to_json())
    elif markdown_output:
        sys.stdout.write(benchmark.markdown(report))
    else:
        console = stdout_console()
        if not sys.stdout.isatty():
            console.width = max(console.width, 160)  # keep the wide tables whole in logs
        benchmark.render(report, console)
