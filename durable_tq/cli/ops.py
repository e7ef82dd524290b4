"""Operator commands about queues and workers: stats, pause, resume, purge, workers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from durable_tq import config, errors
from durable_tq.cli import _offline
from durable_tq.cli._app import EXIT_OPERATION_ERROR, app
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
    fail,
    handles_errors,
    human_duration,
    plural,
    print_json,
    relative,
    stdin_is_terminal,
    stdout_console,
    styled_state,
)
from durable_tq.client import Client
from durable_tq.client.url import shown_url
from durable_tq.protocol import TaskState

COUNT_STATES = [state.value for state in TaskState]


# --- stats --------------------------------------------------------------------------------------


def _count_cell(state: str, count: int) -> Text:
    if count == 0:
        return Text("0", style="dim")
    style = {
        "dead": "bold red",
        "queued": "cyan",
        "leased": "yellow",
        "scheduled": "blue",
        "waiting": "bright_blue",
    }
    return Text(f"{count:,}", style=style.get(state, ""))


def stats_table(
    stats: dict[str, Any], source: str, console: Console | None = None
) -> RenderableType:
    """Queues x states, one row per queue, a total row, and the broker's head counts.

    When the table does not fit ``console``'s width (an 80-column terminal with long queue
    names), each queue is shown stacked instead: its name on one line, its counts under it,
    so no name or count is ever cut.
    """
    queues: dict[str, dict[str, Any]] = stats.get("queues", {})
    footer = _stats_footer(stats)
    if not queues:
        hint = Text(
            "No queues yet. Add a task: durable-tq enqueue QUEUE '{\"hello\": 1}'", style="dim"
        )
        return Group(Text(f"Queues — {source}", style="italic"), hint, footer)
    table = _queues_table(queues, source)
    if console is not None:
        unbounded = console.options.update_width(1_000_000)
        needed = Measurement.get(console, unbounded, table).maximum
        if needed > console.width:
            return Group(_queues_stacked(queues, source), footer)
    return Group(table, footer)


def _totals(queues: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {state: sum(int(q.get(state, 0)) for q in queues.values()) for state in COUNT_STATES}


def _shown_states(totals: dict[str, int]) -> list[str]:
    """Every state, but ``waiting`` (tasks held by their parents) only when some task waits:
    most brokers never use dependencies, and an always-zero column costs width."""
    return [s for s in COUNT_STATES if s != TaskState.WAITING or totals[s]]


def _queues_table(queues: dict[str, dict[str, Any]], source: str) -> Table:
    table = Table(
        title=f"Queues — {source}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        header_style="bold",
        show_footer=len(queues) > 1,
        footer_style="bold",
    )
    totals = _totals(queues)
    states = _shown_states(totals)
    table.add_column("Queue", footer="total", no_wrap=True)
    for state in states:
        table.add_column(
            state.capitalize(), justify="right", footer=f"{totals[state]:,}", no_wrap=True
        )
    table.add_column("Oldest ready", justify="right", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    for name in sorted(queues):
        counts = queues[name]
        age = counts.get("oldest_queued_age")
        status = Text("paused", style="bold yellow") if counts.get("paused") else Text("active")
        table.add_row(
            Text(name, style="bold"),
            *[_count_cell(state, int(counts.get(state, 0))) for state in states],
            Text("—", style="dim") if age is None else Text(human_duration(age)),
            status,
        )
    return table


#: The stacked layout's two lines of counts: tasks still to run, then finished ones.
_STACKED_LINES = (
    ("waiting", "queued", "scheduled", "leased"),
    ("succeeded", "dead", "cancelled"),
)


def _counts_line(counts: dict[str, Any], shown: list[str]) -> list[Text]:
    lines = []
    for states in _STACKED_LINES:
        line = Text("  ")
        for index, state in enumerate(s for s in states if s in shown):
            if index:
                line.append(" · ", style="dim")
            line.append(f"{state} ")
            line.append_text(_count_cell(state, int(counts.get(state, 0))))
        lines.append(line)
    return lines


def _queues_stacked(queues: dict[str, dict[str, Any]], source: str) -> RenderableType:
    """One block per queue: name, status and age on a line, the counts on two lines under it."""
    parts: list[RenderableType] = [Text(f"Queues — {source}", style="italic"), Text("")]
    totals = _totals(queues)
    shown = _shown_states(totals)
    for name in sorted(queues):
        counts = queues[name]
        head = Text(name, style="bold")
        if counts.get("paused"):
            head.append("  paused", style="bold yellow")
        age = counts.get("oldest_queued_age")
        if age is not None:
            head.append(f"  oldest ready {human_duration(age)}")
        parts += [head, *_counts_line(counts, shown)]
    if len(queues) > 1:
        parts += [Text("total", style="bold"), *_counts_line(dict(totals), shown)]
    parts.append(Text(""))
    return Group(*parts)


def _stats_footer(stats: dict[str, Any]) -> Text:
    return Text.assemble(
        (plural(int(stats.get("workers", 0)), "live worker"), "bold"),
        " · ",
        (
            "connections: n/a (read from the database file)"
            if stats.get("connections") is None
            else plural(int(stats["connections"]), "connection")
        ),
        " · ",
        (time.strftime("%H:%M:%S"), "dim"),
    )


@app.command(rich_help_panel="Inspect")
@handles_errors
def stats(
    seconds: Annotated[
        float | None,
        typer.Argument(
            metavar="SECONDS",
            help="With --watch: seconds between refreshes (default 2).",
            show_default=False,
        ),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh in place until Ctrl-C.")
    ] = False,
    count: Annotated[
        int | None,
        typer.Option("--count", min=1, help="With --watch: stop after this many refreshes."),
    ] = None,
    db: DbOption = None,
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Tasks per queue and state, paused queues, oldest ready task, workers, connections.

    `durable-tq stats --watch [SECONDS]` refreshes in place; with --json it prints one line
    per refresh.
    """
    if seconds is not None and not watch:
        raise UsageError("SECONDS is the refresh interval of --watch; add --watch")
    if seconds is not None and seconds <= 0:
        raise UsageError("SECONDS must be more than 0")
    if db is not None and url is not None:
        raise UsageError("give --db or --url, not both")
    interval = seconds if seconds is not None else 2.0
    options = BrokerOptions(url, config_file, token, cafile, timeout)
    if db is not None:
        _watch_or_once(
            _db_stats_reader(db, config_file), str(db), watch, interval, count, json_output
        )
        return
    with broker_client(options) as client:
        _watch_or_once(
            lambda: msgspec.to_builtins(client.stats()),
            shown_url(client.async_client.url),
            watch,
            interval,
            count,
            json_output,
        )


def _db_stats_reader(db: str, config_file: Path | None) -> Callable[[], dict[str, Any]]:
    """Stats from the file; live workers are judged by the settings' worker_timeout."""
    worker_timeout = config.load_settings(config_file).worker_timeout

    def read() -> dict[str, Any]:
        with _offline.open_database(db) as conn:
            return _offline.stats(conn, worker_timeout)

    return read


def _watch_or_once(
    read: Callable[[], dict[str, Any]],
    source: str,
    watch: bool,
    interval: float,
    count: int | None,
    json_output: bool,
) -> None:
    console = stdout_console()
    if not watch:
        result = read()
        if json_output:
            print_json(result)
        else:
            console.print(stats_table(result, source, console))
        return
    refreshes = 0
    try:
        if json_output:
            while count is None or refreshes < count:
                if refreshes:
                    time.sleep(interval)
                print_json(read())
                refreshes += 1
            return
        source = f"{source} · every {interval:g}s"
        if not console.is_terminal:
            # A file or a pipe cannot be redrawn in place: one plain frame per refresh.
            _watch_plain(console, read, source, interval, count)
            return
        with Live(console=console, auto_refresh=False, transient=False) as live:
            _watch_live(live, read, source, interval, count)
    except KeyboardInterrupt:
        return  # Ctrl-C is how --watch ends


#: Errors a watching table rides out (the broker restarting); it keeps trying every interval.
_PASSING_TROUBLE = (errors.ConnectionLost, errors.ShuttingDown, errors.TooManyConnections)


def _watch_frames(
    console: Console,
    read: Callable[[], dict[str, Any]],
    source: str,
    interval: float,
    count: int | None,
) -> Iterator[RenderableType]:
    """A frame per refresh until ``count``; a broker that goes away is shown, not fatal."""
    refreshes = 0
    last: RenderableType | None = None
    trouble_since: float | None = None
    while count is None or refreshes < count:
        if refreshes:
            time.sleep(interval)
        refreshes += 1
        try:
            last = stats_table(read(), source, console)
            trouble_since = None
            yield last
        except _PASSING_TROUBLE as exc:
            if last is None:
                raise  # never reached it: report as any other command would
            trouble_since = trouble_since or time.time()
            warning = Text.assemble(
                ("broker unreachable", "bold red"),
                f" since {time.strftime('%H:%M:%S', time.localtime(trouble_since))} "
                f"({exc.code}); retrying every {interval:g}s. Last counts:",
            )
            yield Group(warning, last)


def _watch_live(
    live: Live,
    read: Callable[[], dict[str, Any]],
    source: str,
    interval: float,
    count: int | None,
) -> None:
    """Redraw in place, in a terminal."""
    for frame in _watch_frames(live.console, read, source, interval, count):
        live.update(frame, refresh=True)


def _watch_plain(
    console: Console,
    read: Callable[[], dict[str, Any]],
    source: str,
    interval: float,
    count: int | None,
) -> None:
    """One frame after another, each flushed at once (``> file``, ``| tee``, a log)."""
    for frame in _watch_frames(console, read, source, interval, count):
        console.print(frame)
        console.print()
        console.file.flush()


# --- workers ------------------------------------------------------------------------------------


def workers_table(workers: list[dict[str, Any]], source: str) -> RenderableType:
    if not workers:
        return Text(f"No workers registered at {source}.", style="dim")
    now = time.time()
    table = Table(
        title=f"Workers — {source}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        header_style="bold",
    )
    table.add_column("Worker", style="bold", no_wrap=True)
    table.add_column("State", no_wrap=True)
    table.add_column("Queues")
    table.add_column("Leased", justify="right", no_wrap=True)
    table.add_column("Last heartbeat", justify="right", no_wrap=True)
    table.add_column("Connection", no_wrap=True)
    for worker in workers:
        heartbeat = worker.get("last_heartbeat")
        alive = worker.get("alive")
        connected = worker.get("connected")
        if alive is False:
            link = Text("gone", style="red")
        elif connected is False:
            link = Text("disconnected", style="yellow")
        else:
            link = Text("connected", style="green")
        queues = worker.get("queues")
        table.add_row(
            str(worker["id"]),
            styled_state(str(worker.get("state", "?"))),
            ", ".join(queues) if queues else Text("all", style="dim"),
            f"{worker.get('leased', 0)}/{worker.get('concurrency', 1)}",
            "—" if heartbeat is None else relative(float(heartbeat), now),
            link,
        )
    return table


@app.command(rich_help_panel="Inspect")
@handles_errors
def workers(
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Registered workers: state, queues, leases held out of their concurrency, heartbeat."""
    with broker_client(BrokerOptions(url, config_file, token, cafile, timeout)) as client:
        reply = {"workers": msgspec.to_builtins(client.workers())}
        if json_output:
            print_json({"workers": reply.get("workers", [])})
            return
        stdout_console().print(
            workers_table(reply.get("workers", []), shown_url(client.async_client.url))
        )


class WorkerCommandChoice(StrEnum):
    running = "running"
    quiet = "quiet"
    terminate = "terminate"


@app.command("worker-state", rich_help_panel="Operate")
@handles_errors
def worker_state(
    worker_id: Annotated[str, typer.Argument(metavar="ID", help="The worker's id.")],
    state: Annotated[
        WorkerCommandChoice,
        typer.Argument(
            metavar="STATE",
            help="quiet: stop claiming; terminate: finish up and exit; running: carry on.",
        ),
    ],
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Tell a worker to go quiet, terminate, or run again (at its next heartbeat)."""
    with broker_client(BrokerOptions(url, config_file, token, cafile, timeout)) as client:
        client.worker_state(worker_id, state.value)
    if json_output:
        print_json({"worker_id": worker_id, "state": state.value})
        return
    stdout_console().print(
        Text.assemble(
            "worker ",
            (worker_id, "bold"),
            " will be told ",
            styled_state(state.value),
            " at its next heartbeat",
        )
    )


# --- pause, resume, purge -----------------------------------------------------------------------

QueueArgument = Annotated[str, typer.Argument(metavar="QUEUE", help="The queue's name.")]


def _set_paused(queue: str, paused: bool, json_output: bool, options: BrokerOptions) -> None:
    with broker_client(options) as client:
        if paused:
            client.pause(queue)
        else:
            client.resume(queue)
    if json_output:
        print_json({"queue": queue, "paused": paused})
        return
    word = Text("paused", style="bold yellow") if paused else Text("resumed", style="bold green")
    detail = (
        " (enqueues are still accepted; no claims are handed out)"
        if paused
        else " (claims are handed out again)"
    )
    stdout_console().print(Text.assemble("queue ", (queue, "bold"), " ", word, detail))


@app.command(rich_help_panel="Operate")
@handles_errors
def pause(
    queue: QueueArgument,
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Stop handing out tasks of QUEUE; enqueues are still accepted."""
    _set_paused(queue, True, json_output, BrokerOptions(url, config_file, token, cafile, timeout))


@app.command(rich_help_panel="Operate")
@handles_errors
def resume(
    queue: QueueArgument,
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Hand out tasks of a paused QUEUE again."""
    _set_paused(queue, False, json_output, BrokerOptions(url, config_file, token, cafile, timeout))


class PurgeState(StrEnum):
    scheduled = "scheduled"
    queued = "queued"
    succeeded = "succeeded"
    dead = "dead"
    cancelled = "cancelled"


def _confirm_purge(client: Client, queue: str, state: str | None) -> None:
    """Show what would go and ask; anything but yes ends the command."""
    counts = msgspec.to_builtins(client.stats())["queues"].get(queue)
    if counts is None:
        doomed = "no tasks"
    elif state is not None:
        doomed = plural(int(counts.get(state, 0)), f"{state} task")
    else:
        doomed = (
            plural(
                sum(int(counts.get(s, 0)) for s in COUNT_STATES if s != TaskState.LEASED), "task"
            )
            + " (every state but leased)"
        )
    console = stdout_console()
    console.print(
        Text.assemble(
            "About to delete ",
            (doomed, "bold red"),
            " of queue ",
            (queue, "bold"),
            ". This cannot be undone.",
        )
    )
    if not typer.confirm("Purge?", default=False):
        fail("purge aborted; nothing was deleted", EXIT_OPERATION_ERROR)


@app.command(rich_help_panel="Operate")
@handles_errors
def purge(
    queue: QueueArgument,
    state: Annotated[
        PurgeState | None,
        typer.Option(
            "--state",
            help="Only tasks in this state (default: all but leased).",
            show_default=False,
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: JsonOption = False,
    url: UrlOption = None,
    config_file: ConfigOption = None,
    token: TokenOption = None,
    cafile: CafileOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Delete the tasks of QUEUE (never leased ones); asks first unless --yes."""
    state_name = state.value if state is not None else None
    if not yes and not stdin_is_terminal():
        raise UsageError(
            "purge deletes tasks for good and there is no terminal to confirm on; "
            "add --yes to purge anyway"
        )
    with broker_client(BrokerOptions(url, config_file, token, cafile, timeout)) as client:
        if not yes:
            _confirm_purge(client, queue, state_name)
        count = client.purge(queue, state_name)
    if json_output:
        print_json({"count": count})
        return
    what = f"{state_name} task" if state_name else "task"
    stdout_console().print(
        Text.assemble("purged ", (plural(count, what), "bold"), " from queue ", (queue, "bold"))
    )
