"""Settings: the spec's configuration keys, read from a dict, a JSON/TOML file and the environment.

One frozen :class:`Settings` object is built once at start-up and validated; every error names
the key. The pure core never reads settings: a task's policy (timeout, attempts, retry delay,
result TTL) is resolved here when the task is created and travels inside ``TaskCreated``.

Precedence, lowest first: defaults, the config file, ``ORCHESTRATOR_*`` environment variables,
explicit overrides (command-line options or the dict given to ``TaskManager``).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from streams.errors import ConfigurationError

ENV_PREFIX = "ORCHESTRATOR_"


@dataclass(frozen=True)
class Settings:
    """Every setting of a worker and a client. Durations are in seconds (floats allowed)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, ``HOST:PORT[,HOST:PORT...]``. Env: ``ORCHESTRATOR_BROKER``."""
    app_id: str = "discovery-orchestrator"
    """Faust application id: consumer group, transactional ids and changelog topic prefix."""
    partitions: int = 8
    """Partitions of every project topic (all equal, so tables stay co-partitioned)."""
    default_timeout: float = 300.0
    """How long one attempt of a task may run before it is timed out (alias: ``task_timeout``)."""
    max_retries: int = 3
    """Retries after the first attempt (alias: ``retry_attempts``)."""
    retry_delay: float = 5.0
    """Base of the exponential retry backoff."""
    result_ttl: float = 86_400.0
    """How long a completed task's result is served."""
    dependency_wait: float = 3_600.0
    """How long a task waits for a dependency that does not exist yet before it is cancelled."""
    data_dir: str = "./orchestrator-data"
    """Worker state directory (RocksDB tables). Each worker needs its own."""
    web_host: str = "127.0.0.1"
    """Address the worker's HTTP server binds to and advertises."""
    web_port: int = 6066
    """Port of the worker's HTTP server (status, results, /metrics)."""
    api_url: str = "http://127.0.0.1:6066"
    """Where a client reads status and results: any worker's HTTP server."""
    read_timeout: float = 10.0
    """How long a client read waits for the worker to catch up with the client's own writes."""
    commit_interval: float = 0.2
    """Seconds between the worker's transaction commits. Outputs become visible to
    ``read_committed`` readers at a commit, so this bounds the latency of ``task.ready``."""
    timer_interval: float = 0.5
    """Seconds between the timer's checks for timeouts, due retries and expired waits."""
    session_timeout: float = 10.0
    """Seconds after which a worker that stopped heart-beating (a crash) loses its partitions."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Keys for later components (``max_concurrent_tasks``, ``<platform>_rate_limits``)."""

    @property
    def max_attempts(self) -> int:
        """Attempts in all: the first run plus ``max_retries``."""
        return self.max_retries + 1


_ALIASES = {
    "task_timeout": "default_timeout",
    "retry_attempts": "max_retries",
    "broker": "bootstrap_servers",
}
_EXTRA_KEYS = {"max_concurrent_tasks"}
_FIELD_TYPES = {f.name: f.type for f in fields(Settings) if f.name != "extra"}
_POSITIVE = {
    "partitions",
    "default_timeout",
    "dependency_wait",
    "web_port",
    "read_timeout",
    "commit_interval",
    "session_timeout",
    "timer_interval",
}
_NON_NEGATIVE = {"max_retries", "retry_delay", "result_ttl"}


def load_settings(
    file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from defaults, ``file`` (JSON or TOML), the environment, then ``overrides``.

    Raises:
        ConfigurationError: a file that cannot be read, an unknown key or a bad value; the
            message names the key.
    """
    values: dict[str, Any] = {}
    if file is not None:
        values.update(_normalise(read_config_file(Path(file)), origin=str(file)))
    values.update(_from_environment(os.environ if environ is None else environ))
    if overrides:
        values.update(_normalise(overrides, origin="config"))
    return _build(values)


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a JSON (``.json``) or TOML (any other suffix) config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"config file {path} is not valid: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"config file {path} must hold a mapping of keys to values")
    return data


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or not raw:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        key = _ALIASES.get(key, key)
        if key in _FIELD_TYPES:
            values[key] = raw
    return values


def _normalise(data: Mapping[str, Any], origin: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = _ALIASES.get(raw_key, raw_key)
        if key in _FIELD_TYPES:
            values[key] = value
        elif key in _EXTRA_KEYS or key.endswith("_rate_limits"):
            extra[key] = value
        else:
            raise ConfigurationError(f"{origin}: unknown key {raw_key!r}")
    if extra:
        values["extra"] = extra
    return values


def _build(values: dict[str, Any]) -> Settings:
    converted: dict[str, Any] = {}
    for key, value in values.items():
        if key == "extra":
            converted[key] = dict(value)
            continue
        converted[key] = _convert(key, value, _FIELD_TYPES[key])
    for key in _POSITIVE & converted.keys():
        if converted[key] <= 0:
            raise ConfigurationError(f"{key} must be greater than 0, got {converted[key]}")
    for key in _NON_NEGATIVE & converted.keys():
        if converted[key] < 0:
            raise ConfigurationError(f"{key} must not be negative, got {converted[key]}")
    return Settings(**converted)


def _convert(key: str, value: Any, annotation: Any) -> Any:
    kind = {"str": str, "int": int, "float": float}[str(annotation)]
    expected = {str: "a string", int: "an integer", float: "a number"}[kind]
    if isinstance(value, bool) or (kind is str and not isinstance(value, str)):
        raise ConfigurationError(f"{key} must be {expected}, got {value!r}")
    try:
        converted = kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{key} must be {expected}, got {value!r}") from exc
    if kind is int and isinstance(value, float) and value != converted:
        raise ConfigurationError(f"{key} must be a whole number, got {value!r}")
    return converted
