"""Broker URLs: ``tcp://[TOKEN@]HOST:PORT`` and ``tls://...``, parsed in this one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit

from durable_tq import errors

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "SCHEMES", "BrokerURL", "parse_url", "shown_url"]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 7480
#: ``tls`` connects with TLS; ``tcp`` without.
SCHEMES: Final = ("tcp", "tls")


@dataclass(frozen=True, slots=True)
class BrokerURL:
    """Where a broker listens, the token the URL carries (if any), and whether to use TLS."""

    host: str
    port: int
    token: str | None
    tls: bool

    @property
    def address(self) -> str:
        """``scheme://host:port`` (IPv6 hosts in brackets), without the token."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'tls' if self.tls else 'tcp'}://{host}:{self.port}"


def parse_url(url: str) -> BrokerURL:
    """``url`` taken apart; host and port default to 127.0.0.1:7480.

    The token is the URL's password, else its user name (``tcp://TOKEN@host``), unquoted.
    Raises ``errors.ConfigError`` for another scheme or a bad port.
    """
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise errors.ConfigError(f"broker URL must start with tcp:// or tls://, got {url!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise errors.ConfigError(f"bad port in broker URL {url!r}") from exc
    host = parts.hostname or DEFAULT_HOST
    secret = parts.password if parts.password is not None else parts.username
    token = unquote(secret) if secret else None
    return BrokerURL(host, port, token, parts.scheme == "tls")


def shown_url(url: str) -> str:
    """``url`` without a token that may sit in its user part (safe to print or log).

    Works on any string, parseable or not: it is used in messages about bad URLs too.
    """
    scheme, _, rest = url.partition("://")
    if "@" in rest:
        rest = rest.rsplit("@", 1)[1]
    return f"{scheme}://{rest}"
