"""What the operator commands share: reaching the broker, ending on errors, showing values."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from durable_tq import errors, locate
from durable_tq.cli._app import DEBUG_ENV, EXIT_OPERATION_ERROR, EXIT_UNREACHABLE, EXIT_USAGE
from durable_tq.client import Client
from durable_tq.client.url import shown_url

P = ParamSpec("P")
T = TypeVar("T")


# --- options every broker command takes ---------------------------------------------------------

_CONNECTION = "Connection"

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Broker address, tcp://HOST:PORT or tls://HOST:PORT "
        "(default: $DURABLE_TQ_URL, else host and port from the settings).",
        rich_help_panel=_CONNECTION,
        show_default=False,
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Settings file (TOML); default ./durable_tq.toml or $DURABLE_TQ_CONFIG.",
        rich_help_panel=_CONNECTION,
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Auth token (default: $DURABLE_TQ_TOKEN, else the first of the settings' "
        "auth_tokens).",
        rich_help_panel=_CONNECTION,
        show_default=False,
    ),
]
CafileOption = Annotated[
    Path | None,
    typer.Option(
        "--cafile",
        help="CA certificate(s) to check a TLS broker against (default: $DURABLE_TQ_CAFILE, "
        "else the system's, plus the settings' tls_cert when it is self-signed).",
        rich_help_panel=_CONNECTION,
        show_default=False,
    ),
]
TimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout",
        min=0.1,
        help="Seconds to wait for the broker, connecting included.",
        rich_help_panel=_CONNECTION,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print JSON for scripts instead of tables (docs/cli.md)."),
]
DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Read this SQLite database file directly (read-only; works while the broker is "
        "down). For PostgreSQL, give --url of any broker on the database.",
        show_default=False,
    ),
]

DEFAULT_TIMEOUT = 30.0


# --- errors -------------------------------------------------------------------------------------


class UsageError(Exception):
    """The command line itself is wrong: exit 2."""


class BrokerUnreachable(Exception):
    """No broker answered at ``url``: exit 3."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the broker at {url}: {reason}")
        self.url = url
        self.reason = reason


def error_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    return Console(highlight=False)


def fail(message: str, exit_code: int) -> NoReturn:
    """Print one ``error: ...`` line on stderr and end the command with ``exit_code``."""
    line = Text("error: ", style="bold red")
    line.append(message)
    error_console().print(line)
    raise typer.Exit(exit_code)


def describe_error(exc: errors.DurableTQError) -> str:
    """``code: message``, the way the broker named it on the wire."""
    return f"{exc.code}: {exc.message}"


def debug_enabled() -> bool:
    """``--traceback`` was given (it sets DURABLE_TQ_DEBUG) or DURABLE_TQ_DEBUG is on."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _print_trace(exc: BaseException) -> None:
    if debug_enabled():
        sys.stderr.write("".join(traceback.format_exception(exc)))
        sys.stderr.flush()


def handles_errors(command: Callable[P, T]) -> Callable[P, T]:
    """How every command fails: one ``error: ...`` line on stderr and a documented exit code.

    0 success, 1 the operation failed (the wire code is printed), 2 usage, 3 no broker.
    With ``--traceback`` (or DURABLE_TQ_DEBUG=1) the whole Python trace comes first. An
    error no command expects is a bug: one line, exit 1, and the trace on request.
    """

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.exceptions.TyperException):
            raise  # typer's own ways out (typer.Exit is a RuntimeError)
        except KeyboardInterrupt:
            error_console().print("interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # stdout went away (`| head`): nothing more can be said there; leave quietly.
            _silence_stdout()
            raise typer.Exit(EXIT_OPERATION_ERROR) from None
        except Exception as exc:
            _print_trace(exc)
            message, code = _failure(exc)
            fail(message, code)

    return run


def _failure(exc: Exception) -> tuple[str, int]:
    """The one line and the exit code ``exc`` ends a command with."""
    if isinstance(exc, UsageError):
        return str(exc), EXIT_USAGE
    if isinstance(exc, BrokerUnreachable):
        return str(exc), EXIT_UNREACHABLE
    if isinstance(exc, errors.ConfigError):
        return exc.message, EXIT_USAGE
    if isinstance(exc, errors.DurableTQError):
        return describe_error(exc), EXIT_OPERATION_ERROR
    if isinstance(exc, OSError):  # a file we were told to read or write: permissions, disk full
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}", EXIT_OPERATION_ERROR
    hint = "" if debug_enabled() else "; run again with --traceback to see where"
    return f"unexpected {type(exc).__name__}: {exc} (a bug in durable-tq{hint})", 1


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


#: Broker refusals that mean "not available right now" rather than "this request is wrong".
_UNREACHABLE = frozenset({"too_many_connections", "shutting_down", "connection_lost"})


_root_reason = locate.unreachable_reason


# --- reaching the broker ------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerOptions:
    """The connection options of one command line."""

    url: str | None = None
    config: Path | None = None
    token: str | None = None
    cafile: Path | None = None
    timeout: float = DEFAULT_TIMEOUT


def resolve_target(options: BrokerOptions) -> locate.BrokerTarget:
    """The broker's address, token and TLS context (durable_tq.locate: flags, env, settings)."""
    return locate.locate_broker(
        url=options.url, token=options.token, cafile=options.cafile, config_file=options.config
    )


def unreachable(url: str, exc: BaseException) -> BrokerUnreachable:
    """The exit-3 error for a broker at ``url`` that could not be reached because of ``exc``."""
    reason = _root_reason(exc)
    if url.startswith("tcp://") and "during hello" in reason:
        reason = "it closed the connection during hello (if it uses TLS, use tls://)"
    return BrokerUnreachable(shown_url(url), reason)


def _quiet_client_log() -> None:
    """The client logs its retries as warnings; a command reports the outcome itself."""
    logger = logging.getLogger("durable_tq.client")
    if not logger.handlers:
        # Without any handler, logging's last resort would print warnings on stderr.
        logger.addHandler(logging.NullHandler())


@contextmanager
def broker_client(options: BrokerOptions, *, busy_retries: int = 10) -> Iterator[Client]:
    """A connected blocking client; a broker that cannot be reached ends in BrokerUnreachable.

    ``busy_retries=0`` leaves ``busy`` replies to the command (see ``while_busy``).
    """
    target = resolve_target(options)
    url = shown_url(target.url)
    _quiet_client_log()
    try:
        client = Client.from_url(
            target.url,
            token=target.token,
            ssl_context=target.ssl_context,
            timeout=options.timeout,
            connect_timeout=min(options.timeout, 10.0),
            connect_attempts=2,
            reconnect_timeout=options.timeout,
            busy_retries=busy_retries,
            client_name="durable-tq-cli/0.1",
        )
    except (errors.ConnectionLost, errors.TooManyConnections, errors.ShuttingDown) as exc:
        raise unreachable(url, exc) from exc
    except OSError as exc:  # TLS handshake failures surface as ssl.SSLError
        raise unreachable(url, exc) from exc
    try:
        yield client
    except (errors.ShuttingDown, errors.TooManyConnections) as exc:
        raise BrokerUnreachable(url, describe_error(exc)) from exc
    except errors.ConnectionLost as exc:
        refusal = exc.__cause__
        if isinstance(refusal, errors.DurableTQError) and refusal.code not in _UNREACHABLE:
            # The broker refused a request and closed (frame_too_large, unauthorized): say so.
            raise refusal from exc
        raise BrokerUnreachable(url, _root_reason(exc)) from exc
    finally:
        client.close()


def while_busy(call: Callable[[], T], what: str, limit: float) -> T:
    """``call()``, again while the broker answers ``busy`` (a full queue), for ``limit`` s.

    The first ``busy`` is said at once on stderr, with the bound, so a full queue is never a
    silent wait; the last one, past the bound, is raised (exit 1).
    """
    deadline = time.monotonic() + limit
    said = False
    while True:
        try:
            return call()
        except errors.Busy as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            if not said:
                error_console().print(
                    f"{what}: the broker is busy ({exc.message}); retrying for up to "
                    f"{limit:g}s (--timeout)"
                )
                said = True
            time.sleep(min(max(exc.retry_after, 0.05), left))


# --- output -------------------------------------------------------------------------------------


def print_json(value: Any) -> None:
    """One JSON document on one line of stdout."""
    sys.stdout.write(json.dumps(value, ensure_ascii=False, allow_nan=False) + "\n")
    sys.stdout.flush()


def parse_json_argument(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON (column {exc.colno}: {exc.msg})") from exc
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON ({exc})") from exc


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def human_duration(seconds: float) -> str:
    """3.2s, 45s, 3m 05s, 2h 10m, 4d 3h."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600}h"


def relative(moment: float, now: float | None = None) -> str:
    """'3m 05s ago' or 'in 2h 10m'."""
    now = time.time() if now is None else now
    if moment <= now:
        return f"{human_duration(now - moment)} ago"
    return f"in {human_duration(moment - now)}"


def local_time(moment: float) -> str:
    return datetime.fromtimestamp(moment).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


STATE_STYLES = {
    "waiting": "bright_blue",
    "scheduled": "blue",
    "queued": "cyan",
    "leased": "yellow",
    "succeeded": "green",
    "dead": "bold red",
    "cancelled": "magenta",
    "running": "green",
    "quiet": "yellow",
    "terminate": "red",
}


def styled_state(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def stdin_is_terminal() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (AttributeError, ValueError, OSError):
        return False
