"""Broker URLs (durable_tq.client.url): the one parser every URL goes through."""

from __future__ import annotations

import pytest

from durable_tq import errors
from durable_tq.client.url import BrokerURL, parse_url, shown_url
from durable_tq.tools.bench.wire import parse_endpoint


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("tcp://example.com:9000", BrokerURL("example.com", 9000, None, tls=False)),
        ("tcp://", BrokerURL("127.0.0.1", 7480, None, tls=False)),
        ("tcp://h", BrokerURL("h", 7480, None, tls=False)),
        ("tls://s3cret@broker.internal", BrokerURL("broker.internal", 7480, "s3cret", tls=True)),
        ("tcp://user:pass@h:1", BrokerURL("h", 1, "pass", tls=False)),
        ("tcp://a%40b%2Fc@h:1", BrokerURL("h", 1, "a@b/c", tls=False)),
        ("tcp://[::1]:7000", BrokerURL("::1", 7000, None, tls=False)),
        ("TCP://H:5", BrokerURL("h", 5, None, tls=False)),
    ],
)
def test_parse_url(url: str, expected: BrokerURL) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["http://h:1", "h:1", "", "unix:///tmp/s"])
def test_other_schemes_are_config_errors(url: str) -> None:
    with pytest.raises(errors.ConfigError, match="tcp:// or tls://"):
        parse_url(url)


@pytest.mark.parametrize("url", ["tcp://h:port", "tcp://h:99999", "tcp://h:-1"])
def test_bad_ports_are_config_errors(url: str) -> None:
    with pytest.raises(errors.ConfigError, match="bad port"):
        parse_url(url)


def test_address_leaves_the_token_out_and_brackets_ipv6() -> None:
    assert parse_url("tls://t@h:1").address == "tls://h:1"
    assert parse_url("tcp://[::1]:2").address == "tcp://[::1]:2"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("tcp://s3cret@h:1", "tcp://h:1"),
        ("tls://user:pw@h", "tls://h"),
        ("tcp://h:1", "tcp://h:1"),
        ("tcp://a@b@h:1", "tcp://h:1"),
    ],
)
def test_shown_url_hides_the_token(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def test_the_benchmark_endpoint_uses_the_same_parser() -> None:
    endpoint = parse_endpoint("tcp://tok@h:9")
    assert (endpoint.host, endpoint.port, endpoint.token) == ("h", 9, "tok")
    assert parse_endpoint("tcp://tok@h:9", token="given").token == "given"
    with pytest.raises(ValueError, match="plain tcp"):
        parse_endpoint("tls://h:9")
    with pytest.raises(ValueError, match="bad port"):
        parse_endpoint("tcp://h:x")
