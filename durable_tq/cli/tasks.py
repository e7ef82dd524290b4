"""Operator commands about tasks: tasks list/show, enqueue (one or a JSONL file), requeue."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any

import msgspec
import typer
from rich import box
from rich.console import Group, RenderableType
from rich.json import JSON
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from durable_tq import errors
from durable_tq.cli import _offline
from durable_tq.cli._app import app
from durable_tq.cli._common import (
    DEFAULT_TIMEOUT,
    BrokerOptions,
    CafileOption,
    ConfigOption,
    DbOption,
    JsonOption,
    TimeoutOption,
    TokenOption,
    UrlOption,
    UsageError,
    broker_client,
    compact_json,
    error_console,
    handles_errors,
    local_time,
    parse_json_argument,
    plural,
    print_json,
    relative,
    stdout_console,
    styled_state,
    while_busy,
)
from durable_tq.client import Client
from durable_tq.client.url import shown_url
from durable_tq.protocol import TaskState

tasks_app = typer.Typer(
    help="List tasks and show one in full.", no_args_is_help=True, add_completion=False
)
app.add_typer(tasks_app, name="tasks", rich_help_panel="Inspect")


class StateChoice(StrEnum):
    waiting = "waiting"
    scheduled = "scheduled"
    queued = "queued"
    leased = "leased"
    succeeded = "succeeded"
    dead = "dead"
    cancelled = "cancelled"


class RequeueState(StrEnum):
    dead = "dead"
    cancelled = "cancelled"


QueueName = Annotated[str, typer.Argument(metavar="QUEUE", help="The queue's name.")]


# --- tasks list ---------------------------------------------------------------------------------


def _due(task: dict[str, Any], now: float) -> Text:
    """When the task runs (waiting states), its lease ends (leased), or when it finished."""
    state = task["state"]
    if state in (TaskState.SCHEDULED, TaskState.QUEUED) and task.get("run_at") is not None:
        return Text(relative(float(task["run_at"]), now))
    if state == TaskState.LEASED and task.get("lease_expires_at") is not None:
        return Text(f"lease {relative(float(task['lease_expires_at']), now)}", style="yellow")
    return Text(relative(float(task["updated_at"]), now), style="dim")


def _one_line(text: str) -> Text:
    first = text.splitlines()[0] if text else ""
    return Text(first, no_wrap=True, overflow="ellipsis")


def tasks_table(page: dict[str, Any], source: str) -> RenderableType:
    tasks: list[dict[str, Any]] = page.get("tasks", [])
    if not tasks:
        return Text(f"No tasks match at {source}.", style="dim")
    now = time.time()
    table = Table(
        box=box.SIMPLE_HEAD, header_style="bold", title=f"Tasks — {source}", title_justify="left"
    )
    table.add_column("ID", justify="right", style="bold", no_wrap=True, min_width=2)
    table.add_column("Queue", no_wrap=True, max_width=16, overflow="ellipsis")
    table.add_column("State", no_wrap=True, min_width=9)
    table.add_column("Pri", justify="right", no_wrap=True, min_width=3)
    table.add_column("Tries", justify="right", no_wrap=True, min_width=5)
    table.add_column("When", no_wrap=True, min_width=10)
    # Only a page with keyed tasks (a queue with key_concurrency) spends width on the key.
    keys_shown = any(task.get("concurrency_key") is not None for task in tasks)
    if keys_shown:
        table.add_column("Key", no_wrap=True, max_width=24, overflow="ellipsis")
    # Payload and error give way when the terminal is narrow: their columns may shrink (the
    # cells themselves stay one line, cut with an ellipsis).
    table.add_column("Payload", max_width=60)
    errors_shown = any(task.get("last_error") for task in tasks)
    if errors_shown:
        table.add_column("Last error", max_width=40, style="red")
    for task in tasks:
        cells: list[RenderableType] = [
            str(task["task_id"]),
            str(task["queue"]),
            styled_state(str(task["state"])),
            str(task.get("priority", 0)),
            f"{task.get('attempts', 0)}/{task.get('max_attempts', '?')}",
            _due(task, now),
        ]
        if keys_shown:
            key = task.get("concurrency_key")
            cells.append(Text("—", style="dim") if key is None else Text(str(key)))
        cells.append(_one_line(compact_json(task.get("payload"))))
        if errors_shown:
            cells.append(_one_line(str(task.get("last_error") or "")))
        table.add_row(*cells)
    shown = plural(len(tasks), "task")
    next_after = page.get("next_after_id")
    footer = (
        Text.assemble(shown, " · more: ", (f"--after {next_after}", "bold"))
        if next_after is not None
        else Text(f"{shown} · end of list", style="dim")
    )
    return Group(table, footer)


@tasks_app.command("list")
@handles_errors
def list_tasks(
    queue: Annotated[
        str | None, typer.Option("--queue", "-q", help="Only this queue.", show_default=False)
    ] = None,
    state: Annotated[
        StateChoice | None,
        typer.Option("--state", "-s", help="Only tasks in this state.", show_default=False),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=10_000, help="Tasks per page.")
    ] = 50,
    after: Annotated[
        int | None,
        typer.Option(
            "--after", min=0, help="Start after this task id (paging).", show_default=False
        ),
    ] = None,
    db: DbOption = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Tasks by id, oldest first; filter by queue and state, page with --after."""
    state_name = state.value if state is not None else None
    if db is not None:
        if url is not None:
            raise UsageError("give --db or --url, not both")
        with _offline.open_database(db) as conn:
            page = _offline.list_tasks(conn, queue, state_name, limit, after)
        source = str(db)
    else:
        with broker_client(BrokerOptions(url, config_file, token, cafile, timeout)) as client:
            page = msgspec.to_builtins(client.list_tasks(queue, state_name, limit, after))
            source = shown_url(client.async_client.url)
    if json_output:
        print_json({"tasks": page.get("tasks", []), "next_after_id": page.get("next_after_id")})
        return
    stdout_console().print(tasks_table(page, source))


# --- tasks show ---------------------------------------------------------------------------------


def _moment(value: float | None, now: float) -> Text:
    if value is None:
        return Text("—", style="dim")
    return Text.assemble(local_time(float(value)), (f"  ({relative(float(value), now)})", "dim"))


def task_panel(task: dict[str, Any]) -> RenderableType:
    now = time.time()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("Queue", str(task["queue"]))
    grid.add_row("State", styled_state(str(task["state"])))
    grid.add_row("Priority", str(task.get("priority", 0)))
    grid.add_row("Attempts", f"{task.get('attempts', 0)} of {task.get('max_attempts', '?')}")
    if task.get("unique_key") is not None:
        grid.add_row("Unique key", str(task["unique_key"]))
    if task.get("concurrency_key") is not None:
        grid.add_row("Concurrency key", str(task["concurrency_key"]))
    if task.get("worker_id") is not None:
        grid.add_row("Worker", str(task["worker_id"]))
    grid.add_row("Created", _moment(task.get("created_at"), now))
    grid.add_row("Updated", _moment(task.get("updated_at"), now))
    grid.add_row("Run at", _moment(task.get("run_at"), now))
    if task.get("lease_expires_at") is not None:
        grid.add_row("Lease ends", _moment(task["lease_expires_at"], now))
    if task.get("finished_at") is not None:
        grid.add_row("Finished", _moment(task["finished_at"], now))
    if task.get("progress") is not None:
        message = task.get("progress_message") or ""
        grid.add_row("Progress", f"{float(task['progress']):.0%} {message}".rstrip())
    if task.get("cancel_requested"):
        grid.add_row("Cancel", "requested: its worker is told to stop it")
    if task.get("expires_at") is not None:
        grid.add_row("Expires", _moment(task["expires_at"], now))
    parts: list[RenderableType] = [grid, Text(""), Text("Payload", style="bold")]
    parts.append(JSON(json.dumps(task.get("payload"), ensure_ascii=False)))
    if task.get("last_error"):
        parts += [
            Text(""),
            Text("Last error", style="bold"),
            Text(str(task["last_error"]), style="red"),
        ]
    if task.get("result") is not None:
        parts += [
            Text(""),
            Text("Result", style="bold"),
            JSON(json.dumps(task["result"], ensure_ascii=False)),
        ]
    title = Text.assemble(("Task ", "bold"), (str(task["task_id"]), "bold"))
    return Panel(
        Group(*parts),
        title=title,
        title_align="left",
        expand=False,
        border_style=_border(str(task["state"])),
    )


def _border(state: str) -> str:
    return {"dead": "red", "succeeded": "green", "leased": "yellow"}.get(state, "blue")


@tasks_app.command("show")
@handles_errors
def show_task(
    task_id: Annotated[int, typer.Argument(metavar="ID", min=1, help="The task's id.")],
    db: DbOption = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Everything about one task: payload, last error, result, timestamps."""
    if db is not None:
        if url is not None:
            raise UsageError("give --db or --url, not both")
        with _offline.open_database(db) as conn:
            task = _offline.get_task(conn, task_id)
    else:
        with broker_client(BrokerOptions(url, config_file, token, cafile, timeout)) as client:
            task = msgspec.to_builtins(client.get(task_id))
    if json_output:
        print_json(task)
        return
    stdout_console().print(task_panel(task))


@tasks_app.command("wait")
@handles_errors
def wait_task(
    task_id: Annotated[int, typer.Argument(metavar="ID", min=1, help="The task's id.")],
    wait_timeout: Annotated[
        float,
        typer.Option("--timeout", min=0, help="Give up after this many seconds (exit 4)."),
    ] = 60.0,
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
) -> None:
    """Wait until a task is finished, then show it. Exit 0 succeeded, 1 dead or cancelled,
    4 when --timeout passes first."""
    options = BrokerOptions(url, config_file, token, cafile, wait_timeout + 30.0)
    try:
        with broker_client(options) as client:
            task = msgspec.to_builtins(client.wait(task_id, timeout=wait_timeout))
    except errors.WaitTimeout as exc:
        if json_output and exc.task is not None:
            print_json({**msgspec.to_builtins(exc.task), "done": False})
        else:
            error_console().print(f"error: wait_timeout: {exc.message}")
        raise typer.Exit(4) from None
    if json_output:
        print_json({**task, "done": True})
    else:
        stdout_console().print(task_panel(task))
    if task["state"] != "succeeded":
        raise typer.Exit(1)


# --- enqueue ------------------------------------------------------------------------------------

BAD_LINES_SHOWN = 20


@dataclass
class _JsonlCheck:
    """What a first pass over a JSONL file found."""

    good: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)
    bad_count: int = 0


def _payload_lines(stream: IO[str]) -> Iterator[tuple[int, Any | errors.BadRequest]]:
    """(line number, payload) for every non-blank line; a bad line gives a BadRequest."""
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            yield number, errors.BadRequest(f"column {exc.colno}: {exc.msg}")
        except ValueError as exc:  # e.g. a number too long to convert
            yield number, errors.BadRequest(str(exc))


def _check_jsonl(path: Path) -> _JsonlCheck:
    check = _JsonlCheck()
    last_line = 0
    with _open_text(path) as stream:
        try:
            for number, payload in _payload_lines(stream):
                last_line = number
                if isinstance(payload, errors.BadRequest):
                    check.bad_count += 1
                    if len(check.bad) < BAD_LINES_SHOWN:
                        check.bad.append((number, payload.message))
                else:
                    check.good += 1
        except UnicodeDecodeError as exc:
            raise UsageError(
                f"{path} is not UTF-8 text ({exc.reason} after line {last_line}); nothing was "
                "enqueued"
            ) from exc
    return check


def _open_text(path: Path) -> IO[str]:
    try:
        return path.open("r", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _report_bad_lines(path: Path, check: _JsonlCheck) -> None:
    err = error_console()
    err.print(Text(f"{path}: {plural(check.bad_count, 'line')} not valid JSON:", style="bold"))
    for number, message in check.bad:
        err.print(Text.assemble(f"  {path}:{number}: ", (message, "red")))
    if check.bad_count > len(check.bad):
        err.print(f"  ... and {check.bad_count - len(check.bad)} more")


@dataclass
class _BulkOutcome:
    sent: int = 0
    created: int = 0
    first_id: int | None = None
    last_id: int | None = None
    #: The last line of the last batch the broker acknowledged.
    last_line: int = 0
    #: The first line of the batch on the wire, while it is.
    sending_line: int | None = None


def _enqueue_file(
    client: Client,
    path: Path,
    queue: str,
    options: dict[str, Any],
    batch_size: int,
    progress: Progress,
    total: int,
    outcome: _BulkOutcome,
    limit: float,
) -> None:
    """Send the file's payloads in batches; ``outcome`` says how far it got, even on error.

    A batch the broker answers ``busy`` is retried for up to ``limit`` seconds."""
    bar = progress.add_task(f"enqueue → {queue}", total=total)
    batch: list[dict[str, Any]] = []
    batch_lines: list[int] = []

    def flush() -> None:
        outcome.sending_line = batch_lines[0]
        results = while_busy(
            lambda: client.enqueue_many(batch),
            f"{path}: the batch starting at line {batch_lines[0]}",
            limit,
        )
        outcome.sending_line = None
        outcome.sent += len(results)
        outcome.created += sum(1 for r in results if r.created)
        if results:
            outcome.first_id = outcome.first_id or results[0].task_id
            outcome.last_id = results[-1].task_id
        outcome.last_line = batch_lines[-1]
        progress.advance(bar, len(batch))
        batch.clear()
        batch_lines.clear()

    with _open_text(path) as stream:
        for number, payload in _payload_lines(stream):
            if isinstance(payload, errors.BadRequest):
                continue  # reported (or refused) before anything was sent
            batch.append({"queue": queue, "payload": payload, **options})
            batch_lines.append(number)
            if len(batch) >= batch_size:
                flush()
    if batch:
        flush()


def _report_partial_load(path: Path, outcome: _BulkOutcome) -> None:
    """Say exactly what is in, so the operator can load the rest and nothing twice."""
    where = f"lines up to {outcome.last_line}" if outcome.sent else "no lines"
    message = f"{path}: enqueued {plural(outcome.sent, 'task')} ({where})"
    if outcome.sending_line is not None:
        message += (
            f"; the batch starting at line {outcome.sending_line} failed and was not enqueued"
            " (all-or-nothing, unless the connection broke after the broker received it)"
        )
    error_console().print(message)


def _enqueue_bulk(
    client: Client,
    path: Path,
    queue: str,
    options: dict[str, Any],
    batch_size: int,
    skip_invalid: bool,
    json_output: bool,
    limit: float,
) -> None:
    check = _check_jsonl(path)
    if check.bad_count:
        _report_bad_lines(path, check)
        if not skip_invalid:
            raise UsageError(
                f"{path}: nothing was enqueued; fix the lines above or add --skip-invalid"
            )
    console = stdout_console()
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=json_output or not console.is_terminal,
    )
    outcome = _BulkOutcome()
    started = time.monotonic()
    try:
        with progress:
            _enqueue_file(
                client, path, queue, options, batch_size, progress, check.good, outcome, limit
            )
    except errors.DurableTQError:
        _report_partial_load(path, outcome)
        raise
    elapsed = time.monotonic() - started
    if json_output:
        print_json(
            {
                "count": outcome.sent,
                "created": outcome.created,
                "first_task_id": outcome.first_id,
                "last_task_id": outcome.last_id,
                "skipped_lines": check.bad_count,
            }
        )
        return
    rate = outcome.sent / elapsed if elapsed > 0 else 0.0
    line = Text.assemble(
        "enqueued ",
        (plural(outcome.sent, "task"), "bold"),
        " to ",
        (queue, "bold"),
        f" in {elapsed:.2f}s ({rate:,.0f}/s)",
    )
    if outcome.first_id is not None:
        line.append(f", ids {outcome.first_id}…{outcome.last_id}")
    if outcome.created != outcome.sent:
        line.append(f"; {outcome.sent - outcome.created} already existed (unique_key)")
    if check.bad_count:
        line.append(f"; skipped {plural(check.bad_count, 'invalid line')}", style="yellow")
    console.print(line)


@app.command(rich_help_panel="Operate")
@handles_errors
def enqueue(
    queue: QueueName,
    payload_json: Annotated[
        str | None,
        typer.Argument(metavar="PAYLOAD_JSON", help="The payload, as JSON.", show_default=False),
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Enqueue every line of this JSONL file as one payload.",
            show_default=False,
        ),
    ] = None,
    priority: Annotated[int, typer.Option("--priority", "-p", help="Higher runs first.")] = 0,
    delay: Annotated[
        float | None,
        typer.Option(
            "--delay",
            min=0,
            help="Run no sooner than this many seconds from now.",
            show_default=False,
        ),
    ] = None,
    unique_key: Annotated[
        str | None,
        typer.Option(
            "--unique-key", help="Skip if a live task of QUEUE has this key.", show_default=False
        ),
    ] = None,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            "--max-attempts",
            min=1,
            help="Attempts before the task is dead (default: the broker's).",
            show_default=False,
        ),
    ] = None,
    lease: Annotated[
        float | None,
        typer.Option(
            "--lease",
            min=0.001,
            help="Lease of each claim, in seconds (default: the broker's).",
            show_default=False,
        ),
    ] = None,
    concurrency_key: Annotated[
        str | None,
        typer.Option(
            "--concurrency-key",
            help="The queue's --key-concurrency limits tasks with the same key.",
            show_default=False,
        ),
    ] = None,
    after: Annotated[
        list[int] | None,
        typer.Option(
            "--after",
            min=1,
            help="Run only once this task succeeded (repeatable); the task waits till then.",
            show_default=False,
        ),
    ] = None,
    result_ttl: Annotated[
        float | None,
        typer.Option(
            "--result-ttl",
            min=0,
            help="Keep the finished task this many seconds (default: queue's, else retention).",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", min=1, max=10_000, help="With --from: tasks per enqueue_many request."
        ),
    ] = 500,
    skip_invalid: Annotated[
        bool,
        typer.Option(
            "--skip-invalid",
            help="With --from: enqueue the valid lines and "
            "skip the rest (default: refuse the whole file).",
        ),
    ] = False,
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Add a task to QUEUE, or every line of a JSONL file with --from."""
    if (payload_json is None) == (from_file is None):
        raise UsageError("give PAYLOAD_JSON or --from FILE.jsonl (one of them)")
    options: dict[str, Any] = {"priority": priority}
    for name, value in (
        ("delay", delay),
        ("max_attempts", max_attempts),
        ("lease", lease),
        ("concurrency_key", concurrency_key),
        ("result_ttl", result_ttl),
    ):
        if value is not None:
            options[name] = value
    if after:
        options["after"] = list(after)
    if from_file is not None:
        if unique_key is not None:
            raise UsageError("--unique-key gives one key to one task; it cannot go with --from")
        if not from_file.is_file():
            raise UsageError(f"--from: {from_file} is not a file")
        broker = BrokerOptions(url, config_file, token, cafile, timeout)
        with broker_client(broker, busy_retries=0) as client:
            _enqueue_bulk(
                client, from_file, queue, options, batch_size, skip_invalid, json_output, timeout
            )
        return
    assert payload_json is not None
    payload = parse_json_argument(payload_json, "PAYLOAD_JSON")
    if unique_key is not None:
        options["unique_key"] = unique_key
    broker = BrokerOptions(url, config_file, token, cafile, timeout)
    with broker_client(broker, busy_retries=0) as client:
        reply = msgspec.to_builtins(
            while_busy(lambda: client.enqueue(queue, payload, **options), f"queue {queue}", timeout)
        )
    if json_output:
        print_json({"task_id": reply["task_id"], "created": reply.get("created", True)})
        return
    if reply.get("created", True):
        message = Text.assemble(
            "enqueued task ", (str(reply["task_id"]), "bold"), " to ", (queue, "bold")
        )
    else:
        message = Text.assemble(
            "task ",
            (str(reply["task_id"]), "bold"),
            " already holds unique key ",
            (str(unique_key), "bold"),
            "; nothing new was enqueued",
        )
    stdout_console().print(message)


# --- requeue, cancel ----------------------------------------------------------------------------


@app.command(rich_help_panel="Operate")
@handles_errors
def requeue(
    task_ids: Annotated[
        list[int] | None,
        typer.Argument(
            metavar="ID", help="Tasks to requeue (dead or cancelled ones).", show_default=False
        ),
    ] = None,
    queue: Annotated[
        str | None,
        typer.Option(
            "--queue", "-q", help="Requeue every task of this queue in --state.", show_default=False
        ),
    ] = None,
    state: Annotated[
        RequeueState | None,
        typer.Option(
            "--state", "-s", help="With --queue: which tasks [default: dead].", show_default=False
        ),
    ] = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Put dead or cancelled tasks back to queued, attempts reset: by id, or a whole queue."""
    if task_ids and queue is not None:
        raise UsageError("give task ids or --queue, not both")
    if not task_ids and queue is None:
        raise UsageError("give task ids, or --queue QUEUE [--state dead|cancelled]")
    if state is not None and queue is None:
        raise UsageError("--state goes with --queue")
    with broker_client(BrokerOptions(url, config_file, token, cafile, timeout)) as client:
        if task_ids:
            report = client.requeue_report(task_ids)
        else:
            report = client.requeue_report(queue=queue, state=(state or RequeueState.dead).value)
    count = report.count
    skipped: list[dict[str, Any]] = msgspec.to_builtins(report.skipped)
    if json_output:
        print_json({"count": count, "skipped": skipped})
        return
    console = stdout_console()
    console.print(Text.assemble("requeued ", (plural(count, "task"), "bold")))
    for item in skipped:
        line = Text(f"  task {item['task_id']}: {item['reason']}", style="yellow")
        console.print(line, soft_wrap=True)


@app.command(rich_help_panel="Operate")
@handles_errors
def cancel(
    task_id: Annotated[int, typer.Argument(metavar="ID", min=1, help="The task's id.")],
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Cancel a task: a waiting, scheduled, queued or dead one at once (state cancelled); a
    running (leased) one is marked and its worker told to stop it (state cancelling)."""
    with broker_client(BrokerOptions(url, config_file, token, cafile, timeout)) as client:
        state = client.cancel(task_id)
    if json_output:
        print_json({"task_id": task_id, "state": state})
        return
    if state == "cancelling":
        stdout_console().print(
            Text.assemble(
                "task ",
                (str(task_id), "bold"),
                " is running: it is being cancelled (its worker is told to stop it; "
                "wait for it with ",
                ("durable-tq tasks wait", "bold"),
                ")",
            )
        )
        return
    stdout_console().print(
        Text.assemble("task ", (str(task_id), "bold"), " is now ", styled_state(state))
    )
