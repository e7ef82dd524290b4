"""Settings sources and their order: defaults < TOML file < environment < overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from durable_tq import config, errors


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(__import__("os").environ):
        if name.startswith(config.ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    settings = config.load_settings()
    assert settings.port == 7480
    assert settings.db_path == Path("durable_tq.db")
    assert settings.synchronous is config.Synchronous.FULL
    assert settings.max_attempts == 5 and settings.default_lease == 30
    assert settings.max_frame_bytes == 1 << 20


def test_source_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "durable_tq.toml"
    toml.write_text('port = 9000\nmax_attempts = 9\nsynchronous = "normal"\nlog_level = "debug"\n')
    settings = config.load_settings()
    assert (settings.port, settings.max_attempts) == (9000, 9)
    assert settings.synchronous is config.Synchronous.NORMAL
    monkeypatch.setenv("DURABLE_TQ_PORT", "9100")
    settings = config.load_settings()
    assert (settings.port, settings.max_attempts) == (9100, 9)
    settings = config.load_settings(port=9200)
    assert settings.port == 9200
    sources = config.value_sources(config.find_config_file(None), {"port": 9200})
    assert sources["port"] == "override"
    assert sources["max_attempts"].startswith("file")
    assert sources["retention"] == "default"


def test_invalid_value_names_field_and_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_TQ_DEFAULT_LEASE", "-3")
    expected = r"default_lease \(from env DURABLE_TQ_DEFAULT_LEASE\)"
    with pytest.raises(errors.ConfigError, match=expected):
        config.load_settings()


def test_invalid_file_value_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "custom.toml"
    path.write_text('synchronous = "SOMETIMES"\n')
    with pytest.raises(errors.ConfigError, match=r"synchronous \(from file"):
        config.load_settings(path)


def test_unknown_key_and_broken_toml_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "custom.toml"
    path.write_text("portt = 1\n")
    with pytest.raises(errors.ConfigError, match="portt"):
        config.load_settings(path)
    path.write_text("port = \n")
    with pytest.raises(errors.ConfigError, match="not valid TOML"):
        config.load_settings(path)
    with pytest.raises(errors.ConfigError, match="does not exist"):
        config.load_settings(tmp_path / "missing.toml")


def test_tls_needs_cert_and_key(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="tls_cert and tls_key"):
        config.load_settings(tls_cert=tmp_path / "c.pem")


def test_describe_masks_secrets() -> None:
    settings = config.load_settings(auth_tokens=["hunter2"])
    rows = {name: (value, source) for name, value, source in config.describe(settings, {})}
    assert "hunter2" not in rows["auth_tokens"][0]


def test_auth_tokens_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_TQ_AUTH_TOKENS", "a, b,c")
    assert config.load_settings().auth_tokens == ["a", "b", "c"]
    monkeypatch.setenv("DURABLE_TQ_AUTH_TOKENS", '["x,y", "z"]')
    assert config.load_settings().auth_tokens == ["x,y", "z"]
    monkeypatch.setenv("DURABLE_TQ_AUTH_TOKENS", "[broken")
    with pytest.raises(errors.ConfigError, match="auth_tokens"):
        config.load_settings()


def test_a_complex_value_the_environment_cannot_decode_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DURABLE_TQ_TLS_CERT", "")  # an empty path is not a file
    with pytest.raises(errors.ConfigError):
        config.load_settings()


@pytest.mark.parametrize("tokens", [[""], ["   "], ["ok", ""], ["\t\n"]])
def test_an_empty_auth_token_is_refused(tokens: list[str]) -> None:
    with pytest.raises(errors.ConfigError, match=r"auth_tokens .*empty") as caught:
        config.load_settings(auth_tokens=tokens)
    assert "\n" not in caught.value.message


@pytest.mark.parametrize("value", ['[""]', '["a", " "]', "a,,b", "a, ,b", "a,", "", "  "])
def test_an_empty_auth_token_from_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DURABLE_TQ_AUTH_TOKENS", value)
    with pytest.raises(errors.ConfigError, match=r"auth_tokens \(from env .*empty"):
        config.load_settings()


def test_an_empty_auth_token_in_the_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "durable_tq.toml").write_text('auth_tokens = ["s3cret", ""]\n')
    with pytest.raises(errors.ConfigError, match=r"auth_tokens \(from file .*empty"):
        config.load_settings()
