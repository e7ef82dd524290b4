"""Broker settings: defaults <- TOML file <- DURABLE_TQ_* environment <- explicit overrides."""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from durable_tq import errors

ENV_PREFIX = "DURABLE_TQ_"
DEFAULT_CONFIG_FILE = "durable_tq.toml"
DEFAULT_PORT = 7480
DEFAULT_HTTP_PORT = 7481


class Synchronous(StrEnum):
    FULL = "FULL"
    NORMAL = "NORMAL"


TokenRole = Literal["producer", "worker", "admin"]


class AuthToken(BaseModel):
    """One accepted token and what it may do: ``token`` itself, or the ``sha256`` hex of it
    (so the config file need not hold the secret), and its ``role``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str | None = None
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    role: TokenRole = "admin"

    @model_validator(mode="after")
    def _one_form(self) -> AuthToken:
        if (self.token is None) == (self.sha256 is None):
            raise ValueError("give token or sha256, not both and not neither")
        if self.token is not None and not self.token.strip():
            raise ValueError("token is empty or blank, which would let anyone in")
        return self

    def digest(self) -> bytes:
        """The SHA-256 of the token, which is what the broker compares."""
        if self.sha256 is not None:
            return bytes.fromhex(self.sha256)
        assert self.token is not None
        return hashlib.sha256(self.token.encode("utf-8", "surrogatepass")).digest()


class Settings(BaseSettings):
    """Every knob the broker has. Durations are seconds."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, frozen=True
    )

    # network
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(7480, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    tls_cert: Path | None = Field(None, description="PEM certificate chain; enables TLS.")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert.")
    auth_tokens: Annotated[list[str | AuthToken], NoDecode] = Field(
        default_factory=list,
        description="Accepted hello tokens; empty means no auth. A plain token is admin; "
        "{token or sha256, role} entries give a role. In the environment: a,b,c or JSON.",
    )
    max_connections: int = Field(1024, ge=1, description="Open connections at most.")
    max_frame_bytes: int = Field(1 << 20, ge=1024, description="Longest request line.")
    max_inflight: int = Field(
        256, ge=1, description="Requests one connection may have unanswered at once."
    )
    hello_timeout: float = Field(10.0, gt=0, description="Close connections silent before hello.")
    idle_timeout: float | None = Field(
        None, gt=0, description="Close connections silent this long after hello (None: never)."
    )
    max_reply_buffer: int = Field(
        4 << 20,
        ge=65536,
        description="Reply bytes one connection may have unwritten before it is no longer "
        "read (a peer that sends without reading).",
    )
    max_total_reply_buffer: int = Field(
        256 << 20,
        ge=65536,
        description="Unwritten reply bytes of all connections together before the ones "
        "holding more than their share stop being read.",
    )
    write_timeout: float = Field(
        30.0,
        gt=0,
        description="Close a connection whose replies stay over max_reply_buffer this long.",
    )
    drain_timeout: float = Field(
        10.0,
        gt=0,
        description="On shutdown, how long requests already read may take to finish and be "
        "written; then every connection is closed, unwritten replies dropped.",
    )
    release_on_disconnect: bool = Field(
        False, description="Release a worker's leases as soon as its connection drops."
    )

    # storage
    db_path: Path = Field(Path("durable_tq.db"), description="SQLite database file.")
    db_url: str | None = Field(
        None,
        description="postgresql://USER@HOST:PORT/DB: keep tasks in PostgreSQL (several "
        "brokers may share it; docs/postgres.md) instead of the SQLite file db_path.",
    )
    synchronous: Synchronous = Field(
        Synchronous.FULL, description="FULL: every ok is on disk. NORMAL: faster, WAL-safe."
    )
    busy_timeout: float = Field(5.0, ge=0, description="Wait this long for a SQLite lock.")
    read_connections: int = Field(2, ge=1, le=16, description="Read-only SQLite connections.")
    max_batch: int = Field(1024, ge=1, description="Write requests per group commit at most.")
    max_pending_writes: int = Field(
        8192, ge=1, description="Queued write requests before connections stop reading."
    )
    file_check_interval: float = Field(
        1.0,
        gt=0,
        description="Seconds between checks that the database, its WAL and lock file are "
        "still the files the broker opened.",
    )

    # task semantics
    default_lease: float = Field(30.0, gt=0, description="Lease of a claim, unless given.")
    max_lease: float = Field(86400.0, gt=0, description="Longest lease a claim may ask for.")
    max_attempts: int = Field(5, ge=1, description="Attempts of a task, unless given.")
    backoff_base: float = Field(1.0, ge=0, description="First retry delay.")
    backoff_cap: float = Field(3600.0, ge=0, description="Longest retry delay.")
    backoff_jitter: float = Field(
        0.5, ge=0, le=1, description="Retry delay grows by up to this fraction at random."
    )
    max_queue_depth: int = Field(
        1_000_000, ge=0, description="Ready + scheduled tasks per queue; 0 is unlimited."
    )
    max_claim: int = Field(1000, ge=1, description="Tasks one claim may take at most.")
    max_wait: float = Field(300.0, ge=0, description="Longest long-poll a claim may ask for.")
    max_enqueue_many: int = Field(10_000, ge=1, description="Tasks in one enqueue_many.")

    # background work
    sweep_interval: float = Field(1.0, gt=0, description="Seconds between sweeps.")
    heartbeat_interval: float = Field(5.0, gt=0, description="Told to workers in hello.")
    worker_timeout: float = Field(30.0, gt=0, description="A worker silent this long is dead.")
    retention: float = Field(
        7 * 86400.0, ge=0, description="Keep finished tasks this long; 0 keeps them forever."
    )

    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")

    # gRPC (the grpc extra; docs/grpc.md)
    grpc: str | None = Field(
        None, description="HOST:PORT for the gRPC API; enables it (overrides grpc_host/port)."
    )
    grpc_enabled: bool = Field(False, description="Serve the gRPC API on grpc_host:grpc_port.")
    grpc_host: str | None = Field(None, description="gRPC address [default: host].")
    grpc_port: int = Field(7482, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    # HTTP API (docs/http.md): same process, same tokens, same TLS certificate
    http_enabled: bool = Field(True, description="Serve the HTTP API, /metrics and health.")
    http_host: str | None = Field(None, description="HTTP address; None: the same as host.")
    http_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="HTTP port; None: 7481 beside the default port 7480, else a free one.",
    )
    http_max_connections: int = Field(
        1024, ge=1, description="Concurrent HTTP connections and requests at most (then 503)."
    )
    http_keep_alive_timeout: float = Field(
        5.0, gt=0, description="Close an idle HTTP keep-alive connection after this long."
    )
    http_max_header_bytes: int = Field(
        16384, ge=1024, description="Longest HTTP request head (request line and headers)."
    )

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("auth_tokens", mode="before")
    @classmethod
    def _token_list(cls, value: Any) -> Any:
        # From the environment: comma-separated, or a JSON list.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError as exc:
                    raise ValueError(f"not a JSON list of strings: {exc}") from None
            # Every item counts, blank ones too: "a,,b" or an empty variable is refused below
            # rather than read as fewer tokens (or none: no auth at all).
            return [token.strip() for token in value.split(",")]
        return value

    @model_validator(mode="before")
    @classmethod
    def _auth_table(cls, data: Any) -> Any:
        # TOML may say [[auth.tokens]] (an ``auth`` table) for auth_tokens.
        if isinstance(data, dict) and "auth" in data:
            data = dict(data)
            auth = data.pop("auth")
            if not isinstance(auth, dict) or set(auth) - {"tokens"}:
                raise ValueError("auth: the auth table holds only tokens ([[auth.tokens]])")
            if "auth_tokens" in data:
                raise ValueError("give auth_tokens or [[auth.tokens]], not both")
            data["auth_tokens"] = auth.get("tokens", [])
        return data

    @field_validator("auth_tokens")
    @classmethod
    def _no_empty_token(cls, tokens: list[str | AuthToken]) -> list[str | AuthToken]:
        # An empty token would let in every client that sends none, or an empty one.
        blank = [n for n, t in enumerate(tokens) if isinstance(t, str) and not t.strip()]
        if blank:
            raise ValueError(
                f"token {blank[0] + 1} of {len(tokens)} is empty or blank, which would let "
                "anyone in; remove it (no tokens at all means no auth)"
            )
        return tokens

    @field_validator("db_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("give a postgresql://USER@HOST:PORT/DB URL")
        return value

    @property
    def database(self) -> str:
        """The database as the listening line and logs name it (no password)."""
        if self.db_url is None:
            return str(Path(self.db_path).resolve())
        from urllib.parse import urlsplit

        parts = urlsplit(self.db_url)
        if parts.password is None:
            return self.db_url
        return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()

    @field_validator("synchronous", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.backoff_cap < self.backoff_base:
            raise ValueError("backoff_cap must be >= backoff_base")
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    @property
    def auth_entries(self) -> list[AuthToken]:
        """Every accepted token with its role (a plain string is an admin token)."""
        return [
            AuthToken(token=entry) if isinstance(entry, str) else entry
            for entry in self.auth_tokens
        ]

    def first_token(self) -> str | None:
        """A token a local client can send (the first one whose secret is in the settings)."""
        return next((entry.token for entry in self.auth_entries if entry.token), None)

    @field_validator("grpc")
    @classmethod
    def _grpc_address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_address(value)
        return value

    @property
    def grpc_address(self) -> tuple[str, int] | None:
        """Where the gRPC API listens, or None when it is off."""
        if self.grpc is not None:
            return parse_address(self.grpc)
        if self.grpc_enabled:
            return (self.grpc_host or self.host, self.grpc_port)
        return None

    @property
    def http_address(self) -> tuple[str, int]:
        """Where the HTTP API listens: http_host/http_port; by default the TCP host and 7481
        beside the default TCP port 7480, and a free port beside any other TCP port (a guess
        like port + 1 could be taken; ``durable-tq serve`` prints the HTTP address)."""
        host = self.http_host if self.http_host is not None else self.host
        if self.http_port is not None:
            return host, self.http_port
        return host, DEFAULT_HTTP_PORT if self.port == DEFAULT_PORT else 0


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port)


SECRET_FIELDS = frozenset({"auth_tokens"})


def _settings_class(config_file: Path | None) -> type[Settings]:
    """A Settings subclass whose TOML source reads ``config_file``."""

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            return tuple(sources)

    _FileSettings.__name__ = "Settings"
    return _FileSettings


def find_config_file(config_file: str | Path | None) -> Path | None:
    """The TOML file to read: the one given (must exist), else ./durable_tq.toml if present."""
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise errors.ConfigError(f"config file {path} does not exist")
        return path
    env_path = os.environ.get(ENV_PREFIX + "CONFIG")
    if env_path:
        return find_config_file(env_path)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def _read_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise errors.ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def value_sources(config_file: Path | None, overrides: dict[str, Any]) -> dict[str, str]:
    """Where each setting's value comes from: override, env, file or default."""
    file_values = _read_toml(config_file)
    where: dict[str, str] = {}
    for name in Settings.model_fields:
        if name in overrides:
            where[name] = "override"
        elif (ENV_PREFIX + name).upper() in {k.upper() for k in os.environ}:
            where[name] = f"env {ENV_PREFIX}{name.upper()}"
        elif name in file_values:
            where[name] = f"file {config_file}"
        else:
            where[name] = "default"
    return where


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the effective settings; a bad value raises ConfigError naming field and source."""
    path = find_config_file(config_file)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    _read_toml(path)  # fail on broken TOML with our own message
    try:
        return _settings_class(path)(**overrides)
    except SettingsError as exc:  # a value the environment source could not even decode
        raise errors.ConfigError(f"invalid settings: {exc}") from exc
    except ValidationError as exc:
        sources = value_sources(path, overrides)
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "settings"
            source = sources.get(field, "settings")
            problems.append(f"{field} (from {source}): {err['msg']}")
        raise errors.ConfigError("invalid settings: " + "; ".join(problems)) from exc


def describe(settings: Settings, sources: dict[str, str]) -> list[tuple[str, str, str]]:
    """(name, value, source) for every setting, secrets masked."""
    rows = []
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name in SECRET_FIELDS and value:
            shown = f"[{len(value)} hidden]"
        else:
            shown = str(value.value if isinstance(value, StrEnum) else value)
        rows.append((name, shown, sources.get(name, "default")))
    return rows
