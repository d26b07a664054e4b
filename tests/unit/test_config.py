"""Settings: precedence, aliases, files and errors that name the key."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams import cli
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


def test_request_timeout_defaults_to_30_s_and_reads_its_environment_variable() -> None:
    assert load_settings(environ={}).request_timeout == 30.0
    environ = {"ORCHESTRATOR_REQUEST_TIMEOUT": "2.5"}
    assert load_settings(environ=environ).request_timeout == 2.5


NUMBER_KEYS = [
    "default_timeout",
    "task_timeout",
    "read_timeout",
    "request_timeout",
    "commit_interval",
    "timer_interval",
    "session_timeout",
    "retry_delay",
    "result_ttl",
    "dependency_wait",
    "ageing",
]
INTEGER_KEYS = ["max_retries", "retry_attempts", "partitions", "replication_factor", "web_port"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("key", NUMBER_KEYS + INTEGER_KEYS)
def test_non_finite_numbers_are_refused_naming_the_key(key: str, value: float) -> None:
    named = {"task_timeout": "default_timeout", "retry_attempts": "max_retries"}.get(key, key)
    with pytest.raises(ConfigurationError, match=rf"^{named} must be an? \w+ \(finite\), got"):
        load_settings(overrides={key: value}, environ={})


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "NaN", "Infinity", "1e999"])
@pytest.mark.parametrize("key", ["READ_TIMEOUT", "REQUEST_TIMEOUT", "DEFAULT_TIMEOUT"])
def test_non_finite_numbers_from_the_environment_are_refused(key: str, raw: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"^{key.lower()} must be a number \(finite\)"):
        load_settings(environ={f"ORCHESTRATOR_{key}": raw})


@pytest.mark.parametrize("key", NUMBER_KEYS)
def test_non_numbers_are_refused_naming_the_key(key: str) -> None:
    with pytest.raises(ConfigurationError, match=r"must be a number, got 'soon'"):
        load_settings(overrides={key: "soon"}, environ={})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"web_port": 70000}, r"^web_port must be a port from 1 to 65535, got 70000$"),
        ({"web_port": 0}, r"^web_port must be greater than 0, got 0$"),
        ({"web_port": 65536}, r"^web_port must be a port from 1 to 65535"),
        ({"bootstrap_servers": "127.0.0.1:70000"}, r"^bootstrap_servers: the port of"),
        ({"bootstrap_servers": "a:9092,b:x"}, r"^bootstrap_servers: the port of 'b:x'"),
        ({"api_url": "http://127.0.0.1:70000"}, r"^api_url .* is not a valid URL"),
        ({"api_url": "127.0.0.1:6066"}, r"^api_url must be an http\(s\) URL"),
        ({"request_timeout": 0}, r"^request_timeout must be greater than 0"),
        ({"read_timeout": -1}, r"^read_timeout must be greater than 0"),
        ({"default_timeout": 0.0001}, r"^default_timeout must be at least 0\.001 s \(1 ms\)"),
        ({"retry_delay": 1e12}, r"^retry_delay must be at most 31622400 s"),
        ({"max_retries": 1000}, r"^max_retries must be at most 999"),
    ],
)
def test_ports_and_ranges_are_checked(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_settings(overrides=overrides, environ={})


def test_valid_ports_and_servers_are_accepted() -> None:
    settings = load_settings(
        overrides={
            "web_port": 65535,
            "bootstrap_servers": "a:1,b:65535,kafka",
            "api_url": "https://h:8443/api",
        },
        environ={},
    )
    assert settings.web_port == 65535


@pytest.mark.parametrize(
    ("window", "message"),
    [
        (
            {"calls": 5, "period": math.nan},
            r"limits\[0\]\.period must be a finite number > 0, got nan",
        ),
        (
            {"calls": 5, "period": math.inf},
            r"limits\[0\]\.period must be a finite number > 0, got inf",
        ),
        ({"calls": 5, "period": -1}, r"limits\[0\]\.period must be a finite number > 0, got -1"),
        ({"calls": 5, "period": 0}, r"limits\[0\]\.period must be a finite number > 0, got 0"),
        ({"calls": 5, "period": "1"}, r"limits\[0\]\.period must be a finite number > 0"),
        ({"calls": 5, "period": 0.0001}, r"limits\[0\]\.period must be from 0\.001 to 31622400"),
        ({"calls": 5, "period": 1e308}, r"limits\[0\]\.period must be from 0\.001"),
        ({"calls": math.nan, "period": 1}, r"limits\[0\]\.calls must be a positive integer"),
        ({"calls": math.inf, "period": 1}, r"limits\[0\]\.calls must be a positive integer"),
        ({"calls": True, "period": 1}, r"limits\[0\]\.calls must be a positive integer"),
    ],
)
def test_rate_limit_windows_refuse_non_finite_values_naming_the_path(
    window: dict[str, object], message: str
) -> None:
    for value in ({"limits": [window]}, [window]):  # the full form and the shorthand
        with pytest.raises(ConfigurationError, match=rf"^linkedin_rate_limits\.{message}"):
            load_settings(overrides={"linkedin_rate_limits": value}, environ={})


@pytest.mark.parametrize("cap", [math.nan, math.inf, 0, True, 2.5])
def test_max_concurrent_refuses_non_integers(cap: object) -> None:
    limits = {"limits": [], "max_concurrent": cap}
    with pytest.raises(ConfigurationError, match=r"^x_rate_limits\.max_concurrent must be"):
        load_settings(overrides={"x_rate_limits": limits}, environ={})
    with pytest.raises(ConfigurationError, match=r"^max_concurrent_tasks must be"):
        load_settings(overrides={"max_concurrent_tasks": cap}, environ={})


def test_a_nan_period_in_a_json_file_is_refused_at_load(tmp_path: Path) -> None:
    file = tmp_path / "limits.json"
    file.write_text('{"linkedin_rate_limits": {"limits": [{"calls": 5, "period": NaN}]}}')
    with pytest.raises(
        ConfigurationError,
        match=r"^linkedin_rate_limits\.limits\[0\]\.period must be a finite number > 0, got nan$",
    ):
        load_settings(file=file, environ={})


# -- the command line: one line, exit status 2, no traceback --------------------------------


@pytest.fixture(autouse=True)
def _aiokafka_log_level() -> Iterator[None]:
    """``cli.main`` quiets aiokafka's logger for client commands: undo it after each test."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('{"read_timeout": NaN}', "read_timeout must be a number (finite), got nan"),
        ('{"web_port": 70000}', "web_port must be a port from 1 to 65535, got 70000"),
        ('{"request_timeout": Infinity}', "request_timeout must be a number (finite), got inf"),
        (
            '{"linkedin_rate_limits": [{"calls": 5, "period": NaN}]}',
            "linkedin_rate_limits.limits[0].period must be a finite number > 0, got nan",
        ),
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ["status", "t1"],
        ["result", "t1"],
        ["submit", "t", "p", "x"],
        ["pause", "p", "5"],
        ["tail", "task.events"],
    ],
)
def test_the_cli_prints_one_line_and_exits_2_for_a_bad_config(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    config: str,
    message: str,
) -> None:
    monkeypatch.delenv("ORCHESTRATOR_DEBUG", raising=False)
    file = tmp_path / "bad.json"
    file.write_text(config)
    status = cli.main([*command, "--config", str(file), "--broker", "127.0.0.1:1"])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err == f"orchestrator: error: {message}\n"
    assert captured.out == ""


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["status", "../state"], "task_id '../state' may only use"),
        (["result", "a/b/c"], "task_id 'a/b/c' may only use"),
        (["pause", "linkedin", "nan"], "seconds must be a finite number of seconds, got nan"),
        (["pause", "linkedin", "inf"], "seconds must be a finite number of seconds, got inf"),
        (["submit", "t", "p", "x", "--priority", "11"], "priority must be an integer from 1 to 10"),
        (["submit", "t", "p", "x", "--task-id", "a/b/c"], "task_id 'a/b/c' may only use"),
        (["limits", "a/b"], "platform 'a/b' may only use"),
        (["worker", "--web-port", "70000"], "web_port must be a port from 1 to 65535"),
    ],
)
def test_the_cli_refuses_bad_input_before_connecting(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    message: str,
) -> None:
    monkeypatch.delenv("ORCHESTRATOR_DEBUG", raising=False)
    status = cli.main([*command, "--broker", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f"orchestrator: error: {message}")
    assert err.count("\n") == 1


def test_the_cli_reports_an_unreachable_broker_in_one_line_with_status_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORCHESTRATOR_DEBUG", raising=False)
    status = cli.main(["status", "t1", "--broker", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("orchestrator: error: cannot reach Kafka at 127.0.0.1:1")
    assert err.count("\n") == 1


def test_the_worker_command_prints_one_line_for_a_bad_config(tmp_path: Path) -> None:
    file = tmp_path / "bad.json"
    file.write_text('{"linkedin_rate_limits": {"limits": [{"calls": 5, "period": NaN}]}}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    done = subprocess.run(
        [sys.executable, "-m", "streams", "worker", "--config", str(file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "orchestrator: error: linkedin_rate_limits.limits[0].period must be a finite number > 0,"
        " got nan\n"
    )
