"""``durable-tq torture``: SIGKILL a broker and its workers under load, then check every promise."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from durable_tq import errors
from durable_tq.cli._app import EXIT_OPERATION_ERROR, EXIT_USAGE, app
from durable_tq.cli._common import fail


@app.command()
def torture(
    duration: Annotated[
        float, typer.Option(help="Seconds of chaos (kills happen in them).")
    ] = 120.0,
    kills: Annotated[int, typer.Option(help="Broker SIGKILLs.")] = 30,
    consumer_kills: Annotated[
        int | None, typer.Option(help="Consumer SIGKILLs [default: half of --kills].")
    ] = None,
    producers: Annotated[int, typer.Option(help="Producer processes.")] = 2,
    consumers: Annotated[int, typer.Option(help="Consumer processes.")] = 3,
    settle_consumers: Annotated[
        int | None,
        typer.Option(
            help="Consumers that claim and settle in batches through settle "
            "[default: half of --consumers, rounded up]."
        ),
    ] = None,
    rate: Annotated[
        float, typer.Option(help="Enqueues per second per producer (0: as fast as possible).")
    ] = 50.0,
    lease: Annotated[float, typer.Option(help="Lease of every claim, seconds.")] = 2.0,
    synchronous: Annotated[str, typer.Option(help="FULL or NORMAL.")] = "FULL",
    db: Annotated[
        str | None,
        typer.Option(
            help="A postgresql://USER@HOST:PORT/DB URL: torture several brokers on that "
            "(empty) database instead of one on a file (docs/postgres.md)."
        ),
    ] = None,
    brokers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Brokers on the --db database, killed one at a time [default: 3]; "
            "SQLite runs one.",
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the kill schedule and the load.")
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Folder for the database and histories [default: a temp one]."),
    ] = None,
    keep: Annotated[
        bool, typer.Option(help="Keep the folder even when every check passed.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Torture a broker: SIGKILL it at random moments under load, then verify.

    Producers and consumers run as processes that record every reply they get;
    some consumers use claim/ack/fail/release, the others settle in batches
    that also claim (--settle-consumers).
    The broker is killed --kills times (its file checked with PRAGMA
    integrity_check while it is down) and consumers --consumer-kills times.
    Producers also enqueue chains and fan-ins (after=...) and wait for results;
    interval schedules fire throughout.
    Then the queue is drained and the histories are held against the database:
    no ok'd write lost, every ok'd task succeeded, no task acked twice, no
    dependent run before its parents, every wait true, every schedule slot once (one
    SQLite broker; the fleet below checks the first three and the ones it adds).
    With --db postgresql://..., --brokers brokers share that database, the
    children move to another broker when theirs dies, one broker at a time is
    killed (often the sweeping one), and the checks add that the others kept
    serving and took the sweeps over.
    Exits 1 when any check fails.
    """
    # Imported here: every command module is imported when any command runs, and a broker
    # restarting after a crash should not pay for the harness.
    from rich.console import Console

    from durable_tq import backends
    from durable_tq.tools import torture as harness

    if db is not None and not backends.is_postgres_url(db):
        fail(
            "--db takes a postgresql:// URL (a SQLite run keeps its file in --workdir)", EXIT_USAGE
        )
    if db is None and brokers not in (None, 1):
        fail("several brokers share a PostgreSQL database: give --db postgresql://...", EXIT_USAGE)
    config = harness.TortureConfig(
        duration=duration,
        kills=kills,
        consumer_kills=consumer_kills,
        producers=producers,
        consumers=consumers,
        settle_consumers=settle_consumers,
        seed=seed,
        workdir=workdir,
        rate=rate,
        lease=lease,
        synchronous=synchronous.upper(),
        db_url=db,
        brokers=brokers or (3 if db is not None else 1),
    )
    errors_console = Console(stderr=True)

    def progress(message: str) -> None:
        errors_console.print(f"[dim]torture: {message}[/]", highlight=False)

    if db is None:
        report = harness.run_torture(config, progress=progress)
    else:
        from durable_tq.tools.torture import fleet

        try:
            report = fleet.run_fleet_torture(config, progress=progress)
        except errors.ConfigError as exc:
            fail(exc.message, EXIT_USAGE)
    kept = not report.passed or keep or workdir is not None
    if not kept:
        harness.remove_workdir(report)
    if as_json:
        json.dump({**report.to_dict(), "workdir_kept": kept}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        harness.render(report, kept=kept)
    if not report.passed:
        raise typer.Exit(EXIT_OPERATION_ERROR)
