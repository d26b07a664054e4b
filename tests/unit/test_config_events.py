"""Run-time settings: which one holds for a task, how changes fold, how values are checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.records import decode_config, encode_config
from streams.config import file_settings, policy_keys_given, setting_value
from streams.config_log import worker_changes
from streams.domain.config_events import ANY, ConfigChange, ConfigTable, config_key, scope_problem
from streams.errors import ConfigurationError, SchemaError


def _set(name: str, value: object, platform: str = ANY, task_type: str = ANY) -> ConfigChange:
    return ConfigChange(name, platform, task_type, value, 1_700_000_000_000, "test")


def test_the_most_specific_setting_holds_for_each_key() -> None:
    table = ConfigTable()
    for change in (
        _set("default_timeout", 10.0),
        _set("default_timeout", 20.0, task_type="scrape"),
        _set("default_timeout", 30.0, platform="linkedin"),
        _set("default_timeout", 40.0, platform="linkedin", task_type="scrape"),
        _set("max_retries", 1),
        _set("retry_delay", 2.0, platform="linkedin"),
    ):
        assert table.apply(change)
    assert table.policy("linkedin", "scrape") == {
        "default_timeout": 40.0,
        "max_retries": 1,
        "retry_delay": 2.0,
    }
    assert table.policy("linkedin", "other")["default_timeout"] == 30.0
    assert table.policy("github", "scrape") == {"default_timeout": 20.0, "max_retries": 1}
    assert table.policy("github", "other") == {"default_timeout": 10.0, "max_retries": 1}


def test_unset_falls_back_and_a_repeat_changes_nothing() -> None:
    table = ConfigTable()
    table.apply(_set("default_timeout", 10.0))
    table.apply(_set("default_timeout", 30.0, platform="linkedin"))
    assert not table.apply(_set("default_timeout", 30.0, platform="linkedin"))
    assert table.apply(_set("default_timeout", None, platform="linkedin"))
    assert not table.apply(_set("default_timeout", None, platform="linkedin"))
    assert table.policy("linkedin", "x") == {"default_timeout": 10.0}


def test_rate_limits_belong_to_one_platform() -> None:
    limits = {"limits": [{"calls": 5, "period": 1}]}
    table = ConfigTable()
    table.apply(_set("rate_limits", limits, platform="linkedin"))
    assert table.rate_limits("linkedin") == limits
    assert table.rate_limits("github") is None
    assert table.policy("linkedin", "x") == {}  # limits are no task policy
    assert scope_problem("rate_limits", ANY, ANY) is not None
    assert scope_problem("rate_limits", "linkedin", "scrape") is not None
    assert scope_problem("rate_limits", "linkedin", ANY) is None
    assert scope_problem("colour", ANY, ANY) == (
        "unknown setting 'colour'; settable: rate_limits, default_timeout, max_retries, "
        "retry_delay, result_ttl, dependency_wait, max_rate_limited"
    )


def test_a_change_is_keyed_by_its_platform_first() -> None:
    change = _set("default_timeout", 5.0, platform="linkedin", task_type="scrape")
    assert change.key == config_key("default_timeout", "linkedin", "scrape")
    assert change.key.split("/")[0] == "linkedin"  # placed with the platform's scheduler


def test_a_change_round_trips_through_its_schema() -> None:
    for value in (None, 2.5, {"limits": [{"calls": 1, "period": 3600}], "max_concurrent": 2}):
        change = _set("rate_limits", value, platform="linkedin")
        assert decode_config(encode_config(change)) == change
    with pytest.raises(SchemaError):
        decode_config(b"\x00not a setting")


def test_values_are_checked_as_the_setting_takes_them() -> None:
    assert setting_value("task_timeout", ANY, 2) == 2.0
    assert setting_value("retry_attempts", ANY, 0) == 0
    assert setting_value("rate_limits", "x", [{"calls": 1, "period": 1}]) == [
        {"calls": 1, "period": 1}
    ]
    for name, value in (
        ("default_timeout", -1),
        ("default_timeout", "soon"),
        ("max_retries", 10_000),
        ("max_rate_limited", 0),
        ("rate_limits", {"limits": 5}),
        ("rate_limits", {"limits": [{"calls": 1, "period": float("nan")}]}),
        ("colour", "blue"),
    ):
        with pytest.raises(ConfigurationError):
            setting_value(name, "x", value)


def test_a_client_own_policy_keys_hold_over_run_time_ones() -> None:
    given = policy_keys_given({"task_timeout": 3, "api_url": "http://x:1"}, environ={})
    assert given == {"default_timeout"}
    from_env = policy_keys_given({}, environ={"ORCHESTRATOR_RETRY_DELAY": "2"})
    assert from_env == {"retry_delay"}


def test_a_worker_writes_only_what_its_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "worker.json"
    path.write_text(
        json.dumps(
            {
                "task_timeout": 2,
                "retry_attempts": 0,
                "linkedin_rate_limits": {"limits": [{"calls": 5, "period": 1}]},
                "data_dir": "/tmp/x",  # not a run-time setting
            }
        )
    )
    assert sorted(file_settings(path)) == [
        ("default_timeout", ANY, 2.0),
        ("max_retries", ANY, 0),
        ("rate_limits", "linkedin", {"limits": [{"calls": 5, "period": 1}]}),
    ]
    table = ConfigTable()
    table.apply(_set("default_timeout", 2.0))
    written = worker_changes(path, table)
    assert [(c.name, c.platform, c.value) for c in written] == [
        ("max_retries", ANY, 0),
        ("rate_limits", "linkedin", {"limits": [{"calls": 5, "period": 1}]}),
    ]
    assert all(c.by.startswith("worker ") and str(path) in c.by for c in written)
