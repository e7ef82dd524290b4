"""What the operator commands share: reaching the broker, ending on errors, showing values."""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from durable_tq import config, errors
from durable_tq.cli._app import EXIT_OPERATION_ERROR, EXIT_UNREACHABLE, EXIT_USAGE
from durable_tq.client import Client

P = ParamSpec("P")
T = TypeVar("T")

TOKEN_ENV = "DURABLE_TQ_TOKEN"
URL_ENV = "DURABLE_TQ_URL"

# --- options every broker command takes ---------------------------------------------------------

_CONNECTION = "Connection"

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar=URL_ENV,
        help="Broker address, tcp://HOST:PORT or tls://HOST:PORT "
        "(default: host and port from the settings).",
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
        envvar=TOKEN_ENV,
        help="Auth token (default: the first of the settings' auth_tokens).",
        rich_help_panel=_CONNECTION,
        show_default=False,
    ),
]
CafileOption = Annotated[
    Path | None,
    typer.Option(
        "--cafile",
        help="CA certificate(s) to check a TLS broker against (default: the system's, plus "
        "the settings' tls_cert when it is self-signed).",
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
    Path | None,
    typer.Option(
        "--db",
        help="Read this database file directly (read-only; works while the broker is down).",
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


def handles_errors(command: Callable[P, T]) -> Callable[P, T]:
    """Turn the errors a command expects into one line on stderr and its exit code.

    0 success, 1 the operation failed (the wire code is printed), 2 usage, 3 no broker.
    """

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return command(*args, **kwargs)
        except UsageError as exc:
            fail(str(exc), EXIT_USAGE)
        except BrokerUnreachable as exc:
            fail(str(exc), EXIT_UNREACHABLE)
        except errors.ConfigError as exc:
            fail(exc.message, EXIT_USAGE)
        except errors.DurableTQError as exc:
            fail(describe_error(exc), EXIT_OPERATION_ERROR)
        except BrokenPipeError:
            # stdout went away (`| head`): nothing more can be said there; leave quietly.
            _silence_stdout()
            raise typer.Exit(EXIT_OPERATION_ERROR) from None
        except OSError as exc:  # a file we were told to read or write: permissions, disk full
            where = f": {exc.filename}" if exc.filename else ""
            fail(f"{exc.strerror or exc}{where}", EXIT_OPERATION_ERROR)
        except KeyboardInterrupt:
            error_console().print("interrupted")
            raise typer.Exit(130) from None

    return run


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


#: Broker refusals that mean "not available right now" rather than "this request is wrong".
_UNREACHABLE = frozenset({"too_many_connections", "shutting_down", "connection_lost"})


def _root_reason(exc: BaseException) -> str:
    """The innermost OS-level reason of a connection failure, e.g. 'Connection refused'."""
    seen: set[int] = set()
    current: BaseException | None = exc
    reason = str(exc)
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BaseExceptionGroup) and current.exceptions:
            current = current.exceptions[0]
            continue
        if isinstance(current, ConnectionRefusedError):
            return "connection refused (is the broker running?)"
        if isinstance(current, socket.gaierror):
            return f"unknown host ({current.strerror})"
        if isinstance(current, OSError) and current.strerror:
            return current.strerror.lower() if current.strerror[:1].isupper() else current.strerror
        if isinstance(current, TimeoutError):
            return "timed out"
        if isinstance(current, (errors.TooManyConnections, errors.ShuttingDown)):
            return describe_error(current)
        current = current.__cause__ or current.__context__
    return reason


# --- reaching the broker ------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerOptions:
    """The connection options of one command line."""

    url: str | None = None
    config: Path | None = None
    token: str | None = None
    cafile: Path | None = None
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None
    ssl_context: ssl.SSLContext | None


def _client_host(host: str) -> str:
    """Where to connect to reach a broker listening on ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _tls_context(cafile: Path | None, self_signed: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    try:
        if cafile is not None:
            context.load_verify_locations(cafile)
        elif self_signed is not None:
            context.load_verify_locations(self_signed)
            # The broker's own certificate as the trust anchor (self-signed or not).
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    except (OSError, ssl.SSLError) as exc:
        raise errors.ConfigError(f"cannot load CA certificates: {exc}") from exc
    return context


def resolve_target(options: BrokerOptions) -> Target:
    """The broker's address, token and TLS context: --url, then the settings' host/port."""
    settings: config.Settings | None = None

    def loaded() -> config.Settings:
        nonlocal settings
        if settings is None:
            settings = config.load_settings(options.config)
        return settings

    if options.url:
        if not options.url.startswith(("tcp://", "tls://")):
            raise UsageError(f"--url must look like tcp://HOST:PORT or tls://HOST:PORT, got "
                             f"{options.url!r}")
        url = options.url
        tls = url.startswith("tls://")
    else:
        settings = loaded()
        host = _client_host(settings.host)
        shown = f"[{host}]" if ":" in host else host
        tls = settings.tls_enabled
        url = f"{'tls' if tls else 'tcp'}://{shown}:{settings.port}"
    token = options.token
    if token is None and "@" not in url.split("//", 1)[-1]:
        tokens = loaded().auth_tokens
        token = tokens[0] if tokens else None
    ssl_context = None
    if tls:
        self_signed = None
        if options.cafile is None and not options.url:
            self_signed = loaded().tls_cert
        ssl_context = _tls_context(options.cafile, self_signed)
    return Target(url=url, token=token, ssl_context=ssl_context)


def shown_url(url: str) -> str:
    """``url`` without a token that may sit in its user part."""
    scheme, _, rest = url.partition("://")
    if "@" in rest:
        rest = rest.rsplit("@", 1)[1]
    return f"{scheme}://{rest}"


def _quiet_client_log() -> None:
    """The client logs its retries as warnings; a command reports the outcome itself."""
    logger = logging.getLogger("durable_tq.client")
    if not logger.handlers:
        # Without any handler, logging's last resort would print warnings on stderr.
        logger.addHandler(logging.NullHandler())


@contextmanager
def broker_client(options: BrokerOptions) -> Iterator[Client]:
    """A connected blocking client; a broker that cannot be reached ends in BrokerUnreachable."""
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
            client_name="durable-tq-cli/0.1",
        )
    except (errors.ConnectionLost, errors.TooManyConnections, errors.ShuttingDown) as exc:
        reason = _root_reason(exc)
        if url.startswith("tcp://") and "during hello" in reason:
            reason = "it closed the connection during hello (if it uses TLS, use tls://)"
        raise BrokerUnreachable(url, reason) from exc
    except OSError as exc:  # TLS handshake failures surface as ssl.SSLError
        raise BrokerUnreachable(url, _root_reason(exc)) from exc
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
