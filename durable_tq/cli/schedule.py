"""The `schedule` commands (durable cron and intervals) and `queue set/show` (limits)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

import msgspec
import typer
from rich.table import Table
from rich.text import Text

from durable_tq import errors
from durable_tq.cli._app import app
from durable_tq.cli._common import (
    DEFAULT_TIMEOUT,
    BrokerOptions,
    CafileOption,
    ConfigOption,
    JsonOption,
    TimeoutOption,
    TokenOption,
    UrlOption,
    UsageError,
    broker_client,
    handles_errors,
    parse_json_argument,
    print_json,
    relative,
    stdout_console,
)
from durable_tq.core import schedules

schedule_app = typer.Typer(
    help="Durable schedules: cron expressions and intervals the broker fires.",
    no_args_is_help=True,
)
queue_app = typer.Typer(
    help="Per-queue limits: rate, max leased, concurrency per key.", no_args_is_help=True
)
app.add_typer(schedule_app, name="schedule", rich_help_panel="Operate")
app.add_typer(queue_app, name="queue", rich_help_panel="Operate")

NameArgument = Annotated[str, typer.Argument(metavar="NAME", help="The schedule's name.")]


class MissedChoice(StrEnum):
    latest = "latest"
    none = "none"


def _options(
    url: str | None, config_file: Any, token: str | None, cafile: Any, timeout: float
) -> BrokerOptions:
    return BrokerOptions(url, config_file, token, cafile, timeout)


def _when(schedule: dict[str, Any]) -> str:
    if schedule.get("cron"):
        return f"cron {schedule['cron']}" + (f" ({schedule['tz']})" if schedule.get("tz") else "")
    return f"every {schedule['every']:g}s"


@schedule_app.command("add")
@handles_errors
def schedule_add(
    name: NameArgument,
    queue: Annotated[str, typer.Option("--queue", "-q", help="Queue the tasks go to.")],
    cron: Annotated[
        str | None,
        typer.Option("--cron", help='5-field cron, e.g. "*/5 * * * *".', show_default=False),
    ] = None,
    tz: Annotated[
        str | None,
        typer.Option("--tz", help="Time zone of --cron (IANA, default UTC).", show_default=False),
    ] = None,
    every: Annotated[
        str | None,
        typer.Option("--every", help="Interval: 30s, 5m, 1h, 1d.", show_default=False),
    ] = None,
    payload_json: Annotated[
        str, typer.Option("--payload", help="The tasks' payload (JSON).")
    ] = "null",
    priority: Annotated[int, typer.Option("--priority", "-p", help="Higher runs first.")] = 0,
    missed: Annotated[
        MissedChoice,
        typer.Option(
            "--missed",
            help="After downtime: latest fires the last missed slot once; none skips them.",
        ),
    ] = MissedChoice.latest,
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Create or update schedule NAME (the same spec again changes nothing)."""
    if (cron is None) == (every is None):
        raise UsageError("give --cron EXPR or --every DURATION (one of them)")
    try:
        seconds = None if every is None else schedules.parse_every(every)
    except errors.BadRequest as exc:
        raise UsageError(exc.message) from None
    payload = parse_json_argument(payload_json, "--payload")
    with broker_client(_options(url, config_file, token, cafile, timeout)) as client:
        reply = client.schedule_upsert(
            name,
            queue=queue,
            cron=cron,
            tz=tz,
            every=seconds,
            payload=payload,
            priority=priority,
            missed=missed.value,
        )
    schedule = msgspec.to_builtins(reply.schedule)
    if json_output:
        print_json({"schedule": schedule, "change": reply.change})
        return
    stdout_console().print(
        Text.assemble(
            "schedule ",
            (name, "bold"),
            f" {reply.change}: {_when(schedule)} -> queue {queue}; next run ",
            relative(schedule["next_run_at"]),
        )
    )


@schedule_app.command("list")
@handles_errors
def schedule_list(
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Every schedule with its next run time."""
    with broker_client(_options(url, config_file, token, cafile, timeout)) as client:
        found = [msgspec.to_builtins(s) for s in client.schedule_list()]
    if json_output:
        print_json({"schedules": found})
        return
    if not found:
        stdout_console().print("no schedules")
        return
    table = Table("name", "when", "queue", "missed", "next run", "last slot")
    for schedule in found:
        next_run = "paused" if schedule["paused"] else relative(schedule["next_run_at"])
        last = relative(schedule["last_slot"]) if schedule["last_slot"] is not None else "-"
        table.add_row(
            schedule["name"], _when(schedule), schedule["queue"], schedule["missed"], next_run, last
        )
    stdout_console().print(table)


def _named(action: str, name: str, json_output: bool, options: BrokerOptions) -> None:
    with broker_client(options) as client:
        if action == "remove":
            client.schedule_remove(name)
        elif action == "pause":
            client.schedule_pause(name)
        else:
            client.schedule_resume(name)
    done = {"remove": "removed", "pause": "paused", "resume": "resumed"}[action]
    if json_output:
        print_json({"name": name, "done": done})
        return
    stdout_console().print(Text.assemble("schedule ", (name, "bold"), f" {done}"))


@schedule_app.command("remove")
@handles_errors
def schedule_remove(
    name: NameArgument,
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Delete schedule NAME (tasks it already enqueued stay)."""
    _named("remove", name, json_output, _options(url, config_file, token, cafile, timeout))


@schedule_app.command("pause")
@handles_errors
def schedule_pause(
    name: NameArgument,
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Stop schedule NAME from firing."""
    _named("pause", name, json_output, _options(url, config_file, token, cafile, timeout))


@schedule_app.command("resume")
@handles_errors
def schedule_resume(
    name: NameArgument,
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Let schedule NAME fire again, from its first slot after now (no catching up)."""
    _named("resume", name, json_output, _options(url, config_file, token, cafile, timeout))


# --- queue limits -------------------------------------------------------------------------------

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|m|h))?\s*$")


def parse_rate(text: str) -> float:
    """``"20/s"``, ``"600/m"``, ``"100/h"`` or plain ``"20"`` (per second) as tasks per second;
    ``0`` removes the limit."""
    match = _RATE.match(text)
    if match is None:
        raise UsageError(f"--rate: {text!r} is not a rate (try 20/s or 600/m)")
    per = {"s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[match.group(2)]
    return float(match.group(1)) / per


QueueArgument = Annotated[str, typer.Argument(metavar="QUEUE", help="The queue's name.")]


def _show_info(info: dict[str, Any]) -> None:
    limits = info["limits"]
    rows = [
        ("rate", "-" if limits["rate"] is None else f"{limits['rate']:g}/s"),
        ("burst", "-" if limits["burst"] is None else str(limits["burst"])),
        ("max leased", "-" if limits["max_leased"] is None else str(limits["max_leased"])),
        ("key concurrency", "-" if limits["key_concurrency"] is None
         else str(limits["key_concurrency"])),
        ("tokens", "-" if info.get("tokens") is None else str(info["tokens"])),
        ("paused", "yes" if info["paused"] else "no"),
    ]  # fmt: skip
    counts = info["counts"]
    rows.append(("tasks", ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "none"))
    grid = Table.grid(padding=(0, 2))
    for label, value in rows:
        grid.add_row(Text(label, style="bold"), value)
    stdout_console().print(Text.assemble("queue ", (info["queue"], "bold")))
    stdout_console().print(grid)


@queue_app.command("set")
@handles_errors
def queue_set(
    queue: QueueArgument,
    rate: Annotated[
        str | None,
        typer.Option(
            "--rate",
            help="At most N tasks handed out per second (N/s) or minute "
            "(N/m), across all workers; 0 removes it.",
            show_default=False,
        ),
    ] = None,
    burst: Annotated[
        int | None,
        typer.Option(
            "--burst",
            min=0,
            help="Tasks the rate may hand out at once (default 1).",
            show_default=False,
        ),
    ] = None,
    max_leased: Annotated[
        int | None,
        typer.Option(
            "--max-leased",
            min=0,
            help="At most N tasks leased at once; 0 removes it.",
            show_default=False,
        ),
    ] = None,
    key_concurrency: Annotated[
        int | None,
        typer.Option(
            "--key-concurrency",
            min=0,
            help="At most N tasks with the same --concurrency-key leased at once; 0 removes it.",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Set QUEUE's limits (applied at once; options left out keep their value)."""  # fmt: skip
    if rate is None and burst is None and max_leased is None and key_concurrency is None:
        raise UsageError("give at least one of --rate, --burst, --max-leased, --key-concurrency")
    per_second = None if rate is None else parse_rate(rate)
    with broker_client(_options(url, config_file, token, cafile, timeout)) as client:
        reply = client.set_queue_limits(
            queue,
            rate=per_second,
            burst=burst,
            max_leased=max_leased,
            key_concurrency=key_concurrency,
        )
    info = msgspec.to_builtins(reply)
    if json_output:
        print_json(info)
        return
    _show_info(info)


@queue_app.command("show")
@handles_errors
def queue_show(
    queue: QueueArgument,
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """QUEUE's limits, rate tokens and task counts."""
    with broker_client(_options(url, config_file, token, cafile, timeout)) as client:
        info = msgspec.to_builtins(client.queue_info(queue))
    if json_output:
        print_json(info)
        return
    _show_info(info)
