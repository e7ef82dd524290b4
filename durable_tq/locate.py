"""Where the broker is: its URL, the token and the TLS trust, found the same way everywhere.

The CLI commands, ``durable-tq worker``, ``Worker`` without a ``url`` and
``Client.from_env()`` all call :func:`locate_broker`, which takes each value from the first
place that has it:

1. what the caller was told explicitly (a command-line flag, an argument);
2. the environment: ``DURABLE_TQ_URL``, ``DURABLE_TQ_TOKEN``, ``DURABLE_TQ_CAFILE``;
3. the broker's settings, read as ``durable-tq serve`` reads them (``--config FILE``, else
   ``DURABLE_TQ_CONFIG``, else ``./durable_tq.toml``, then ``DURABLE_TQ_HOST`` /
   ``DURABLE_TQ_PORT``): host and port, the first of ``auth_tokens``, and ``tls_cert`` as the
   trust anchor of a self-signed broker;
4. the defaults, ``tcp://127.0.0.1:7480`` without a token.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from durable_tq import config, errors
from durable_tq.client import url as broker_url

__all__ = [
    "CAFILE_ENV",
    "TOKEN_ENV",
    "URL_ENV",
    "BrokerTarget",
    "locate_broker",
    "unreachable_reason",
]

URL_ENV = "DURABLE_TQ_URL"
TOKEN_ENV = "DURABLE_TQ_TOKEN"
CAFILE_ENV = "DURABLE_TQ_CAFILE"


@dataclass(frozen=True)
class BrokerTarget:
    """How to reach the broker. ``url`` may carry a token in its user part."""

    url: str
    token: str | None
    ssl_context: ssl.SSLContext | None
    #: Where the address came from: ``--url``, ``env DURABLE_TQ_URL``, ``settings``.
    source: str

    @property
    def shown_url(self) -> str:
        """``url`` without a token that may sit in its user part."""
        return broker_url.shown_url(self.url)


def client_host(host: str) -> str:
    """Where to connect to reach a broker listening on ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def tls_context(cafile: Path | None, broker_cert: Path | None = None) -> ssl.SSLContext:
    """The system's trust, or ``cafile``'s, or the broker's own certificate as the anchor."""
    context = ssl.create_default_context()
    try:
        if cafile is not None:
            context.load_verify_locations(cafile)
        elif broker_cert is not None:
            context.load_verify_locations(broker_cert)
            # The broker's own certificate as the trust anchor (self-signed or not).
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    except (OSError, ssl.SSLError) as exc:
        raise errors.ConfigError(f"cannot load CA certificates: {exc}") from exc
    return context


def locate_broker(
    *,
    url: str | None = None,
    token: str | None = None,
    cafile: str | Path | None = None,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> BrokerTarget:
    """The broker's address, token and TLS context: arguments, then environment, then settings.

    The settings are read only when something is still missing, so a bad ``durable_tq.toml``
    does not matter to a caller that gave everything. Raises ``errors.ConfigError`` for a URL
    that is not ``tcp://`` or ``tls://``, bad settings, or unreadable CA certificates.
    """
    env = os.environ if environ is None else environ
    settings: config.Settings | None = None

    def loaded() -> config.Settings:
        nonlocal settings
        if settings is None:
            settings = config.load_settings(config_file)
        return settings

    if url:
        source = "--url"
    elif env.get(URL_ENV):
        url, source = env[URL_ENV], f"env {URL_ENV}"
    if url:
        if url.partition("://")[0] not in broker_url.SCHEMES:
            raise errors.ConfigError(
                f"the broker URL must look like tcp://HOST:PORT or tls://HOST:PORT, got {url!r} "
                f"(from {source})"
            )
        from_settings = False
    else:
        host = client_host(loaded().host)
        shown = f"[{host}]" if ":" in host else host
        scheme = "tls" if loaded().tls_enabled else "tcp"
        url, source, from_settings = f"{scheme}://{shown}:{loaded().port}", "settings", True

    token = token or env.get(TOKEN_ENV) or None
    if token is None and "@" not in url.split("//", 1)[-1]:
        token = loaded().first_token()

    ssl_context = None
    if url.startswith("tls://"):
        trust = cafile or env.get(CAFILE_ENV) or None
        broker_cert = loaded().tls_cert if trust is None and from_settings else None
        ssl_context = tls_context(Path(trust) if trust else None, broker_cert)
    return BrokerTarget(url=url, token=token, ssl_context=ssl_context, source=source)


def unreachable_reason(exc: BaseException) -> str:
    """The innermost OS-level reason of a connection failure, e.g. 'connection refused'."""
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
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"the broker's certificate was not accepted: {current.verify_message}"
        if isinstance(current, OSError) and current.strerror:
            return current.strerror.lower() if current.strerror[:1].isupper() else current.strerror
        if isinstance(current, TimeoutError):
            return "timed out"
        if isinstance(current, (errors.TooManyConnections, errors.ShuttingDown)):
            return f"{current.code}: {current.message}"
        current = current.__cause__ or current.__context__
    return reason
