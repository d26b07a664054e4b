"""Settings: precedence, aliases, files and errors that name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.config import load_settings
from streams.errors import ConfigurationError


def test_defaults_apply_without_any_source() -> None:
    settings = load_settings(environ={})
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.max_attempts == settings.max_retries + 1


def test_overrides_beat_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    file = tmp_path / "orchestrator.toml"
    file.write_text('max_retries = 1\nretry_delay = 2.5\nbootstrap_servers = "file:1"\n')
    settings = load_settings(
        file=file,
        overrides={"max_retries": 7},
        environ={"ORCHESTRATOR_BROKER": "env:2", "ORCHESTRATOR_MAX_RETRIES": "4"},
    )
    assert (settings.max_retries, settings.retry_delay, settings.bootstrap_servers) == (
        7,
        2.5,
        "env:2",
    )


def test_spec_aliases_map_to_their_settings() -> None:
    settings = load_settings(overrides={"task_timeout": 30, "retry_attempts": 2}, environ={})
    assert (settings.default_timeout, settings.max_retries) == (30.0, 2)


def test_json_files_are_read_and_rate_limit_keys_kept_for_the_scheduler(tmp_path: Path) -> None:
    limits = {"limits": [{"calls": 5, "period": 1}], "max_concurrent": 3}
    file = tmp_path / "config.json"
    file.write_text(json.dumps({"linkedin_rate_limits": limits, "max_concurrent_tasks": 10}))
    settings = load_settings(file=file, environ={})
    assert settings.extra == {"linkedin_rate_limits": limits, "max_concurrent_tasks": 10}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"retry_dleay": 1}, "unknown key 'retry_dleay'"),
        ({"partitions": "many"}, "partitions must be an integer"),
        ({"partitions": 0}, "partitions must be greater than 0"),
        ({"max_retries": -1}, "max_retries must not be negative"),
        ({"max_retries": 1.5}, "max_retries must be a whole number"),
        ({"default_timeout": True}, "default_timeout must be a number"),
        ({"bootstrap_servers": 9092}, "bootstrap_servers must be a string"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_settings(overrides=overrides, environ={})


def test_an_unreadable_or_malformed_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read config file"):
        load_settings(file=tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("max_retries = = 3")
    with pytest.raises(ConfigurationError, match="is not valid"):
        load_settings(file=bad, environ={})
