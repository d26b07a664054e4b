"""Settings: the spec's configuration keys, read from a dict, a JSON/TOML file and the environment.

One frozen :class:`Settings` object is built once at start-up and validated; every error names
the key. The pure core never reads settings: a task's policy (timeout, attempts, retry delay,
result TTL) is resolved here when the task is created and travels inside ``TaskCreated``.

Precedence, lowest first: defaults, the config file, ``ORCHESTRATOR_*`` environment variables,
explicit overrides (command-line options or the dict given to ``TaskManager``).
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from streams import api_tls
from streams.domain.bounds import MAX_ATTEMPTS, MAX_POLICY_MS
from streams.domain.config_events import ANY, KEYS, POLICY_KEYS, RATE_LIMITS
from streams.domain.events import MAX_RATE_LIMITED
from streams.domain.limits import PlatformLimits, RateLimit
from streams.errors import ConfigurationError
from streams.kafka_clients import MECHANISMS, PROTOCOLS, KafkaConnection
from streams.topics import TopicNames

ENV_PREFIX = "ORCHESTRATOR_"


@dataclass(frozen=True)
class Settings:
    """Every setting of a worker and a client. Durations are in seconds (floats allowed)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, ``HOST:PORT[,HOST:PORT...]``. Env: ``ORCHESTRATOR_BROKER``."""
    app_id: str = "discovery-orchestrator"
    """Faust application id: consumer group, transactional ids and changelog topic prefix."""
    topic_prefix: str = ""
    """Prefix of every project topic name (letters, digits, ``.``, ``_``, ``-``), so several
    orchestrators can share one Kafka cluster."""
    security_protocol: str = "PLAINTEXT"
    """How every Kafka client of the project connects: ``PLAINTEXT``, ``SSL``,
    ``SASL_PLAINTEXT`` or ``SASL_SSL``. Env: ``ORCHESTRATOR_SECURITY_PROTOCOL``."""
    sasl_mechanism: str = ""
    """``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``: required with the SASL protocols.
    Env: ``ORCHESTRATOR_SASL_MECHANISM``."""
    sasl_username: str = ""
    """The SASL principal's name. Env: ``ORCHESTRATOR_SASL_USERNAME``."""
    sasl_password: str = field(default="", repr=False)
    """The SASL principal's password: never logged, printed or shown in a repr or an error.
    Env: ``ORCHESTRATOR_SASL_PASSWORD`` (or use ``sasl_password_file``)."""
    sasl_password_file: str = ""
    """A file holding ``sasl_password`` (one trailing newline is stripped), read at start-up;
    not both. Env: ``ORCHESTRATOR_SASL_PASSWORD_FILE``."""
    ssl_cafile: str = ""
    """PEM file of the certificate authorities that sign the brokers' certificates (``SSL`` and
    ``SASL_SSL``; empty: the system's). Env: ``ORCHESTRATOR_SSL_CAFILE``."""
    ssl_certfile: str = ""
    """PEM client certificate, for brokers that require mutual TLS (with ``ssl_keyfile``).
    Env: ``ORCHESTRATOR_SSL_CERTFILE``."""
    ssl_keyfile: str = ""
    """PEM private key of ``ssl_certfile`` (unencrypted). Env: ``ORCHESTRATOR_SSL_KEYFILE``."""
    partitions: int = 8
    """Partitions of every project topic (all equal, so tables stay co-partitioned)."""
    replication_factor: int = 1
    """Replicas of every project topic and changelog (3 with the three-broker compose profile)."""
    default_timeout: float = 300.0
    """How long one attempt of a task may run before it is timed out (alias: ``task_timeout``)."""
    max_retries: int = 3
    """Retries after the first attempt (alias: ``retry_attempts``)."""
    retry_delay: float = 5.0
    """Base of the exponential retry backoff."""
    result_ttl: float = 86_400.0
    """How long a completed task's result is served."""
    task_retention: float = 604_800.0
    """Seconds a finished task (completed, failed, cancelled, or an id found missing) stays in
    the worker's tasks table after its last change; then the timer writes ``TaskRetired`` and
    the task leaves the table (its status answers 404; its history stays in ``task.events``,
    ``audit`` and ``replay``). Default 7 days. Env: ``ORCHESTRATOR_TASK_RETENTION``."""
    dependency_wait: float = 3_600.0
    """How long a task waits for a dependency that does not exist yet before it is cancelled."""
    max_rate_limited: int = 10
    """How many "rate limited" answers in a row fail a task (1 to 1000; fixed in the task's
    ``TaskCreated``, so changing it affects only tasks created afterwards)."""
    data_dir: str = "./orchestrator-data"
    """Worker state directory (RocksDB tables). Each worker needs its own."""
    web_host: str = "127.0.0.1"
    """Address the worker's HTTP server binds to. Any address but a loopback one
    (127.0.0.0/8, ``::1``, ``localhost``) requires ``api_token``: the worker refuses to start
    without it. Env: ``ORCHESTRATOR_WEB_HOST``."""
    web_port: int = 6066
    """Port of the worker's HTTP server (status, results, /metrics)."""
    advertised_url: str = ""
    """The URL other workers reach this worker's HTTP server at (faust's ``canonical_url``:
    routed reads and fan-out views go there). Empty: ``http://{web_host}:{web_port}``; a
    worker binding a wildcard address (``0.0.0.0``, ``::``) must set it, as no other worker can
    reach a wildcard. Env: ``ORCHESTRATOR_ADVERTISED_URL``."""
    web_certfile: str = ""
    """PEM certificate chain of the worker's HTTP server (its certificate first, then any
    intermediates), with ``web_keyfile``: the worker then serves HTTPS only, and its
    ``canonical_url`` is ``https://{web_host}:{web_port}`` (an ``advertised_url`` must be
    ``https://``). The certificate must name the host other workers and clients reach it at.
    TLS does not replace ``api_token``: a non-loopback ``web_host`` needs one all the same.
    Env: ``ORCHESTRATOR_WEB_CERTFILE``."""
    web_keyfile: str = ""
    """PEM private key of ``web_certfile`` (unencrypted; keep it readable by the worker only).
    Its content is never logged or shown. Env: ``ORCHESTRATOR_WEB_KEYFILE``."""
    api_token: str = field(default="", repr=False)
    """The bearer token of the HTTP API: when set, every route but ``GET /health`` and
    ``GET /metrics`` (and the dashboard's static files) answers 401 without
    ``Authorization: Bearer <token>``; clients and workers send it. Never logged, printed or
    shown in a repr. Env: ``ORCHESTRATOR_API_TOKEN`` (or use ``api_token_file``)."""
    api_token_file: str = ""
    """A file holding ``api_token`` (one trailing newline is stripped), read at start-up;
    not both. Env: ``ORCHESTRATOR_API_TOKEN_FILE``."""
    api_url: str = "http://127.0.0.1:6066"
    """Where a client reads status and results: any worker's HTTP server (``https://...`` when
    the workers serve TLS)."""
    api_cafile: str = ""
    """PEM CA bundle that clients, the CLI and the workers themselves trust when they call a
    worker's HTTP API over ``https://`` (empty: the system's store). A certificate it does not
    verify is refused with ``UntrustedCertificateError``, never skipped.
    Env: ``ORCHESTRATOR_API_CAFILE``."""
    read_timeout: float = 10.0
    """How long a client read waits for the worker to catch up with the client's own writes
    (at most ``request_timeout``, and at most 120 s, the worker's cap)."""
    request_timeout: float = 30.0
    """Deadline of every client call (``TaskManager``, ``SmartScheduler``: connecting, writes,
    reads, closing); a call that passes it raises ``RequestTimeoutError`` naming what it waited
    for. Env: ``ORCHESTRATOR_REQUEST_TIMEOUT``."""
    commit_interval: float = 0.2
    """Seconds between the worker's transaction commits. Outputs become visible to
    ``read_committed`` readers at a commit, so this bounds the latency of ``task.ready``."""
    timer_interval: float = 0.5
    """Seconds between the timer's checks for timeouts, due retries and expired waits."""
    session_timeout: float = 10.0
    """Seconds after which a worker that stopped heart-beating (a crash) loses its partitions."""
    handlers: str = ""
    """Comma-separated modules that register handlers, imported by the worker (``--handlers``)."""
    ageing: float = 60.0
    """Seconds of waiting that improve a queued task's priority by one (so nothing starves)."""
    health_stall_s: float = 60.0
    """Seconds the fold or the scheduler may make no progress on a partition with records
    waiting before ``GET /health`` answers 503. Env: ``ORCHESTRATOR_HEALTH_STALL_S``."""
    shutdown_grace: float = 30.0
    """Seconds a stopping worker (SIGTERM) gives its running handlers to finish; the rest are
    cancelled and recorded as interrupted (retried at once elsewhere). Env:
    ``ORCHESTRATOR_SHUTDOWN_GRACE``."""
    start_lead: float = 0.15
    """Seconds between a scheduler's decision and the earliest start of the handler it
    dispatched (``not_before``): time for the decision's transaction to commit, within which
    the worker that decided starts the handler. The least lead: a scheduler whose commits take
    longer lengthens it (``streams.domain.scheduling.StartLead``). It costs latency, not
    throughput. Env: ``ORCHESTRATOR_START_LEAD``."""
    start_slot: float = 0.05
    """Seconds after ``not_before`` within which a dispatched handler must start, or its
    go-ahead is given back (retried at once, without spending the attempt). The rate-limit
    windows are checked as if each period were longer by this much, so no interval of a
    window's period ever holds more handler starts than its limit: the cost is that share of
    the allowed rate (docs/rate-limits.md). Env: ``ORCHESTRATOR_START_SLOT``."""
    log_format: str = "text"
    """The worker's log lines: ``text``, or ``json`` (one object per line, for log shippers;
    see ``streams.logs``). Env: ``ORCHESTRATOR_LOG_FORMAT``; ``--log-format``."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """``max_concurrent_tasks`` and the ``<platform>_rate_limits`` keys, as given."""

    def __repr__(self) -> str:
        # the dataclass repr already leaves api_token out; say whether one is set
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)
        secrets = ", ".join(
            f"{name}={'<set>' if getattr(self, name) else '<unset>'}" for name in sorted(_SECRETS)
        )
        return f"Settings({shown}, {secrets})"

    @property
    def kafka(self) -> KafkaConnection:
        """How this worker or client reaches Kafka: every Kafka client is built from it."""
        return KafkaConnection(
            bootstrap_servers=self.bootstrap_servers,
            security_protocol=self.security_protocol,
            sasl_mechanism=self.sasl_mechanism,
            sasl_username=self.sasl_username,
            sasl_password=self.sasl_password,
            ssl_cafile=self.ssl_cafile,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
        )

    @property
    def canonical_url(self) -> str:
        """Where other workers reach this one: ``advertised_url``, else built from
        ``web_host`` and ``web_port`` (``https`` when the worker serves TLS)."""
        scheme = "https" if self.serves_https else "http"
        return self.advertised_url or f"{scheme}://{self.web_host}:{self.web_port}"

    @property
    def serves_https(self) -> bool:
        """Whether the worker's HTTP server serves TLS (``web_certfile`` and ``web_keyfile``)."""
        return bool(self.web_certfile)

    @property
    def max_concurrent_tasks(self) -> int | None:
        """The overall cap on dispatched tasks (None: no cap)."""
        value = self.extra.get("max_concurrent_tasks")
        return None if value is None else int(value)

    def platform_limits(self, platform: str) -> PlatformLimits:
        """The limits configured for ``platform`` (none configured: no limits)."""
        return parse_platform_limits(platform, self.extra.get(f"{platform}_rate_limits"))

    @property
    def limited_platforms(self) -> list[str]:
        """Platforms that have a ``<platform>_rate_limits`` key."""
        return sorted(
            k.removesuffix("_rate_limits") for k in self.extra if k.endswith("_rate_limits")
        )

    @property
    def topics(self) -> TopicNames:
        """The names of this orchestrator's topics."""
        return TopicNames(self.topic_prefix)

    @property
    def orchestrator_id(self) -> str:
        """What names this orchestrator's consumer groups, transactional ids and changelogs.

        ``app_id`` behind the topic prefix, if there is one: two orchestrators on one cluster
        that differ only by ``topic_prefix`` then share no group, no transactional id and no
        changelog (with the same ``app_id`` alone, the second fenced the first's producers and
        loaded its tasks). Without a prefix it is ``app_id``, as before.
        """
        return f"{self.topic_prefix}{self.app_id}" if self.topic_prefix else self.app_id

    @property
    def task_retention_ms(self) -> int:
        """``task_retention`` in milliseconds, as the timer passes it to the pure core."""
        return int(self.task_retention * 1000)

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
    "replication_factor",
    "default_timeout",
    "dependency_wait",
    "web_port",
    "read_timeout",
    "request_timeout",
    "commit_interval",
    "session_timeout",
    "timer_interval",
    "ageing",
    "health_stall_s",
    "task_retention",
}
_NON_NEGATIVE = {
    "max_retries",
    "retry_delay",
    "result_ttl",
    "shutdown_grace",
    "start_lead",
    "start_slot",
}
_PORTS = {"web_port"}
_POLICY_SECONDS = {"default_timeout", "retry_delay", "result_ttl", "dependency_wait"}
"""Durations that travel in ``TaskCreated`` as milliseconds: 0 or at least 1 ms, at most
:data:`~streams.domain.bounds.MAX_POLICY_MS`."""
MAX_POLICY_S = MAX_POLICY_MS // 1000
"""The longest policy duration and rate-limit period, in seconds (366 days)."""


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
        if key == "handlers" and isinstance(value, list):
            values[key] = ",".join(str(v) for v in value)
        elif key in _FIELD_TYPES:
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
            _validate_extra(value)
            converted[key] = dict(value)
            continue
        if key in _SECRETS and not isinstance(value, str):
            raise ConfigurationError(f"{key} must be a string")  # the value stays unsaid
        converted[key] = _convert(key, value, _FIELD_TYPES[key])
    _resolve_token(converted)
    _resolve_kafka_security(converted)
    _check_web_tls(converted)
    prefix = converted.get("topic_prefix", "")
    if not re.fullmatch(r"[A-Za-z0-9._-]*", prefix):
        raise ConfigurationError(
            f"topic_prefix may hold only letters, digits, '.', '_', '-': {prefix!r}"
        )
    for key in _POSITIVE & converted.keys():
        if converted[key] <= 0:
            raise ConfigurationError(f"{key} must be greater than 0, got {converted[key]}")
    for key in _NON_NEGATIVE & converted.keys():
        if converted[key] < 0:
            raise ConfigurationError(f"{key} must not be negative, got {converted[key]}")
    for key in _PORTS & converted.keys():
        if not 1 <= converted[key] <= 65535:
            raise ConfigurationError(f"{key} must be a port from 1 to 65535, got {converted[key]}")
    for key in _POLICY_SECONDS & converted.keys():
        seconds = converted[key]
        if seconds > MAX_POLICY_S:
            raise ConfigurationError(
                f"{key} must be at most {MAX_POLICY_S} s (366 days), got {seconds:g}"
            )
        if 0 < seconds < 0.001:
            raise ConfigurationError(f"{key} must be at least 0.001 s (1 ms), got {seconds:g}")
    if converted.get("max_retries", 0) > MAX_ATTEMPTS - 1:
        raise ConfigurationError(
            f"max_retries must be at most {MAX_ATTEMPTS - 1}, got {converted['max_retries']}"
        )
    if not 1 <= converted.get("max_rate_limited", 1) <= MAX_RATE_LIMITED:
        raise ConfigurationError(
            f"max_rate_limited must be an integer from 1 to {MAX_RATE_LIMITED},"
            f" got {converted['max_rate_limited']}"
        )
    if converted.get("log_format", "text") not in ("text", "json"):
        raise ConfigurationError(
            f"log_format must be text or json, got {converted['log_format']!r}"
        )
    if "bootstrap_servers" in converted:
        _check_servers(converted["bootstrap_servers"])
    if "api_url" in converted:
        _check_api_url(converted["api_url"])
    if converted.get("advertised_url"):
        _check_api_url(converted["advertised_url"], key="advertised_url")
    return Settings(**converted)


_SECRETS = {"api_token", "sasl_password"}
"""Settings whose value no error message, log line or repr may show."""


def _resolve_token(converted: dict[str, Any]) -> None:
    """Read ``api_token_file`` into ``api_token`` and check the token (never showing it)."""
    path = converted.get("api_token_file", "")
    if path:
        if converted.get("api_token"):
            raise ConfigurationError("set api_token or api_token_file, not both")
        converted["api_token"] = read_token_file(Path(path))
    token = converted.get("api_token", "")
    if token and not re.fullmatch(r"[\x21-\x7e]+", token):
        raise ConfigurationError(
            "api_token must be printable ASCII without spaces (it travels in an HTTP header)"
        )


def read_token_file(path: Path, key: str = "api_token_file", what: str = "token") -> str:
    """The token (or password) ``path`` holds, its trailing newline stripped.

    Raises:
        ConfigurationError: the file cannot be read or holds nothing; the message names the
            key and the file, never its content.
    """
    try:
        token = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigurationError(f"{key}: cannot read {path}: {reason}") from None
    if not token:
        raise ConfigurationError(f"{key}: {path} holds no {what} (it is empty)")
    return token


def _resolve_kafka_security(converted: dict[str, Any]) -> None:
    """Read ``sasl_password_file`` and check the Kafka security settings fit together (every
    message names the key, never the password)."""
    path = converted.get("sasl_password_file", "")
    if path:
        if converted.get("sasl_password"):
            raise ConfigurationError("set sasl_password or sasl_password_file, not both")
        converted["sasl_password"] = read_token_file(
            Path(path), key="sasl_password_file", what="password"
        )
    protocol = converted.setdefault("security_protocol", "PLAINTEXT").upper()
    converted["security_protocol"] = protocol
    if protocol not in PROTOCOLS:
        raise ConfigurationError(
            f"security_protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}"
        )
    mechanism = converted.get("sasl_mechanism", "").upper()
    converted["sasl_mechanism"] = mechanism
    if protocol.startswith("SASL_"):
        if mechanism not in MECHANISMS:
            raise ConfigurationError(
                f"security_protocol {protocol} needs sasl_mechanism, one of "
                f"{', '.join(MECHANISMS)}; got {mechanism or 'none'}"
            )
        if not converted.get("sasl_username") or not converted.get("sasl_password"):
            raise ConfigurationError(
                f"security_protocol {protocol} needs sasl_username and sasl_password (or "
                "sasl_password_file, or ORCHESTRATOR_SASL_PASSWORD)"
            )
    elif mechanism or converted.get("sasl_username") or converted.get("sasl_password"):
        raise ConfigurationError(
            f"sasl_mechanism, sasl_username and sasl_password need a SASL security_protocol "
            f"(SASL_PLAINTEXT or SASL_SSL), not {protocol}"
        )
    files = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    if protocol not in ("SSL", "SASL_SSL") and any(converted.get(key) for key in files):
        raise ConfigurationError(
            f"ssl_cafile, ssl_certfile and ssl_keyfile need a TLS security_protocol "
            f"(SSL or SASL_SSL), not {protocol}"
        )
    if bool(converted.get("ssl_certfile")) != bool(converted.get("ssl_keyfile")):
        raise ConfigurationError("set ssl_certfile and ssl_keyfile together (mutual TLS)")
    for key in files:
        name = converted.get(key)
        if name and not os.access(name, os.R_OK):
            raise ConfigurationError(f"{key}: cannot read {name}")


def _check_web_tls(converted: dict[str, Any]) -> None:
    """Check the HTTP API's TLS files load (``web_certfile`` with ``web_keyfile``,
    ``api_cafile``) and that a worker serving TLS advertises an ``https://`` URL."""
    for key in ("web_certfile", "web_keyfile", "api_cafile"):
        name = converted.get(key)
        if name and not os.access(name, os.R_OK):
            raise ConfigurationError(f"{key}: cannot read {name}")
    api_tls.server_context(converted.get("web_certfile", ""), converted.get("web_keyfile", ""))
    if converted.get("api_cafile"):
        api_tls.client_context(converted["api_cafile"])
    advertised = converted.get("advertised_url", "")
    scheme = urllib.parse.urlsplit(advertised).scheme
    if converted.get("web_certfile") and advertised and scheme != "https":
        raise ConfigurationError(
            f"advertised_url {advertised!r} must be an https:// URL: web_certfile and"
            " web_keyfile make this worker serve HTTPS only"
        )


def _check_servers(servers: str) -> None:
    for entry in servers.split(","):
        host, colon, port = entry.strip().rpartition(":")
        if not entry.strip() or (colon and not host):
            raise ConfigurationError(f"bootstrap_servers must be HOST:PORT[,...], got {servers!r}")
        if colon and (not port.isdigit() or not 1 <= int(port) <= 65535):
            raise ConfigurationError(
                f"bootstrap_servers: the port of {entry.strip()!r} must be from 1 to 65535"
            )


def _check_api_url(url: str, key: str = "api_url") -> None:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"{key} {url!r} is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"{key} must be an http(s) URL with a host, got {url!r}")
    if port == 0:
        raise ConfigurationError(f"{key}: the port must be from 1 to 65535, got {url!r}")


def parse_platform_limits(platform: str, value: Any) -> PlatformLimits:
    """``<platform>_rate_limits`` as :class:`PlatformLimits`.

    Accepted forms: ``{"limits": [{"calls": 5, "period": 1}, ...], "max_concurrent": 3}``, or
    the list of windows alone as a shorthand.

    Raises:
        ConfigurationError: a malformed value; the message names the key.
    """
    key = f"{platform}_rate_limits"
    if value is None:
        return PlatformLimits(platform)
    if isinstance(value, list):
        value = {"limits": value}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{key} must be a mapping with 'limits' and 'max_concurrent'")
    unknown = set(value) - {"limits", "max_concurrent"}
    if unknown:
        raise ConfigurationError(f"{key}: unknown field(s) {', '.join(sorted(unknown))}")
    windows = value.get("limits", [])
    if not isinstance(windows, list):
        raise ConfigurationError(f"{key}.limits must be a list of {{calls, period}}")
    limits = tuple(_parse_window(f"{key}.limits[{i}]", w) for i, w in enumerate(windows))
    cap = value.get("max_concurrent")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ConfigurationError(f"{key}.max_concurrent must be a positive integer, got {cap!r}")
    return PlatformLimits(platform, limits, cap)


def _parse_window(key: str, window: Any) -> RateLimit:
    if not isinstance(window, Mapping) or set(window) != {"calls", "period"}:
        raise ConfigurationError(f'{key} must be {{"calls": N, "period": SECONDS}}, got {window!r}')
    calls, period = window["calls"], window["period"]
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
        raise ConfigurationError(f"{key}.calls must be a positive integer, got {calls!r}")
    if (
        isinstance(period, bool)
        or not isinstance(period, int | float)
        or not math.isfinite(period)
        or period <= 0
    ):
        raise ConfigurationError(f"{key}.period must be a finite number > 0, got {period!r}")
    if not 0.001 <= period <= MAX_POLICY_S:
        raise ConfigurationError(
            f"{key}.period must be from 0.001 to {MAX_POLICY_S} seconds, got {period!r}"
        )
    return RateLimit(calls, int(period * 1000))


def _validate_extra(extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if key.endswith("_rate_limits"):
            parse_platform_limits(key.removesuffix("_rate_limits"), value)
        elif key == "max_concurrent_tasks" and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigurationError(
                f"max_concurrent_tasks must be a positive integer, got {value!r}"
            )


def _convert(key: str, value: Any, annotation: Any) -> Any:
    kind = {"str": str, "int": int, "float": float}[str(annotation)]
    expected = {str: "a string", int: "an integer", float: "a number"}[kind]
    if isinstance(value, bool) or (kind is str and not isinstance(value, str)):
        raise ConfigurationError(f"{key} must be {expected}, got {value!r}")
    if kind is not str and isinstance(value, float) and not math.isfinite(value):
        raise ConfigurationError(f"{key} must be {expected} (finite), got {value!r}")
    try:
        converted = kind(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigurationError(f"{key} must be {expected}, got {value!r}") from exc
    if kind is float and not math.isfinite(converted):
        raise ConfigurationError(f"{key} must be {expected} (finite), got {value!r}")
    if kind is int and isinstance(value, float) and value != converted:
        raise ConfigurationError(f"{key} must be a whole number, got {value!r}")
    return converted


def setting_value(name: str, platform: str, value: Any) -> Any:
    """``value`` checked and converted as run-time setting ``name`` takes it (see
    :mod:`streams.domain.config_events`): a platform's ``rate_limits`` as its config key takes
    them, a policy default as the key of the same name (``task_timeout`` and
    ``retry_attempts`` are aliases).

    Raises:
        ConfigurationError: an unknown setting or a bad value; the message names the key.
    """
    name = _ALIASES.get(name, name)
    if name == RATE_LIMITS:
        parse_platform_limits(platform, value)
        return value
    if name not in POLICY_KEYS:
        raise ConfigurationError(
            f"unknown setting {name!r}; settable at run time: {', '.join(KEYS)}"
        )
    return getattr(_build({name: value}), name)


def policy_keys_given(
    overrides: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None
) -> frozenset[str]:
    """The policy defaults a client set itself (in its config or ``ORCHESTRATOR_*``): they
    hold over the run-time settings of ``orchestrator.config``."""
    given = set(_from_environment(os.environ if environ is None else environ))
    given.update(_ALIASES.get(key, key) for key in overrides or {})
    return frozenset(given & set(POLICY_KEYS))


def file_settings(path: Path) -> list[tuple[str, str, Any]]:
    """The run-time settings a worker's ``--config`` file holds, as ``(name, platform,
    value)``: each ``<platform>_rate_limits`` and each policy default (for every platform)."""
    found: list[tuple[str, str, Any]] = []
    for raw_key, value in read_config_file(path).items():
        key = _ALIASES.get(raw_key, raw_key)
        if key.endswith("_rate_limits"):
            platform = key.removesuffix("_rate_limits")
            found.append((RATE_LIMITS, platform, setting_value(RATE_LIMITS, platform, value)))
        elif key in POLICY_KEYS:
            found.append((key, ANY, setting_value(key, ANY, value)))
    return found
