"""The worker's logs (``streams.logs``): the JSON format, the filter of faust's false error, the
fields of the lines about tasks, the start-up line and the ``log_format`` setting."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from streams import cli
from streams.config import load_settings
from streams.errors import ConfigurationError
from streams.logs import (
    FIELDS,
    STREAM_IDLE_SINCE_START,
    JsonFormatter,
    configure,
    log_retries,
    shown,
)
from tests.unit import taskflow as tf


def _record(msg: str, *args: Any, level: int = logging.WARNING, **extra: Any) -> logging.LogRecord:
    logger = logging.getLogger("streams.test")
    record = logger.makeRecord(logger.name, level, __file__, 1, msg, args, None, extra=extra)
    return record


def _json(record: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(record)
    assert "\n" not in line, "one record, one line"
    parsed: dict[str, Any] = json.loads(line)
    return parsed


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own (not the root), writing to a string, restored afterwards."""
    out = io.StringIO()
    logger = logging.Logger("streams.test.own")
    logger.addHandler(logging.StreamHandler(out))
    yield logger, out
    logging.captureWarnings(False)


def test_a_line_is_one_json_object_with_time_level_logger_and_message() -> None:
    line = _json(_record("handler failed: task=%s", "t-1\nsecond line"))
    assert line["level"] == "WARNING"
    assert line["logger"] == "streams.test"
    assert line["message"] == "handler failed: task=t-1\nsecond line"
    assert isinstance(line["pid"], int)
    assert line["ts"].endswith("Z")
    ts = datetime.fromisoformat(line["ts"].replace("Z", "+00:00"))
    assert ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs((datetime.now(UTC) - ts).total_seconds()) < 60


def test_known_extra_fields_are_fields_of_the_line_and_others_are_not() -> None:
    extra: dict[str, Any] = {
        "task_id": "t-1",
        "platform": "youtube",
        "attempt": 2,
        "reason": "RuntimeError: boom",
        "partition": 3,
        "offset": 42,
        "topic": b"task.events",  # not a JSON value: written as text
        "secret": "not a known field",
    }
    line = _json(_record("x", **extra))
    assert {k: line[k] for k in ("task_id", "platform", "attempt", "reason", "partition")} == {
        "task_id": "t-1",
        "platform": "youtube",
        "attempt": 2,
        "reason": "RuntimeError: boom",
        "partition": 3,
    }
    assert line["offset"] == 42
    assert line["topic"] == "b'task.events'"
    assert "secret" not in line
    assert set(line) <= {"ts", "level", "logger", "pid", "message", "exc", "stack", *FIELDS}


def test_a_traceback_is_one_string_field() -> None:
    try:
        raise RuntimeError("boom\nacross lines")
    except RuntimeError:
        record = _record("the fold stopped", level=logging.ERROR)
        record.exc_info = sys.exc_info()
    line = _json(record)
    assert line["message"] == "the fold stopped"
    assert line["exc"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: boom\nacross lines" in line["exc"]


def test_a_line_with_bad_arguments_is_not_lost() -> None:
    line = _json(_record("%d tasks", "not a number"))
    assert "%d tasks" in line["message"] and "not a number" in line["message"]


def test_configure_json_writes_only_json_lines(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logger
    configure("json", log)
    log.warning("handler failed: task=%s", "t-1", extra={"task_id": "t-1", "attempt": 1})
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("oops")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["handler failed: task=t-1", "oops"]
    assert lines[0]["task_id"] == "t-1" and lines[0]["attempt"] == 1
    assert "ValueError: bad" in lines[1]["exc"]


def test_configure_text_keeps_the_text_format(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logger
    log.handlers[0].setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    configure("text", log)
    log.warning("hello %s", "there")
    assert out.getvalue() == "WARNING hello there\n"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_faust_false_idle_error_is_dropped_and_its_other_errors_kept(
    logger: tuple[logging.Logger, io.StringIO], log_format: str
) -> None:
    from faust.transport.drivers import aiokafka as faust_aiokafka

    log, out = logger
    configure(log_format, log)
    configure(log_format, log)  # again (faust's handlers, later): one filter per handler
    assert len(log.handlers[0].filters) == 1
    tp = "TP(topic='task.dispatch', partition=1)"
    # faust's service logger puts its label in front of the template (args stay apart)
    idle = "[^---_ConsumerThread]: " + faust_aiokafka.SLOW_PROCESSING_STREAM_IDLE_SINCE_START
    slow = "[^---_ConsumerThread]: " + faust_aiokafka.SLOW_PROCESSING_STREAM_IDLE
    log.error(idle + " There are multiple possible explanations", tp, "16.02 seconds ago")
    log.error(slow, tp, "6 minutes ago")
    log.error("a stream logged %s", "Stream has not started processing TP(...)")  # data, kept
    text = out.getvalue()
    assert "has not started processing TP(topic=" not in text
    assert "Stream stopped processing, or is slow" in text
    assert "a stream logged Stream has not started processing TP(...)" in text


def test_the_filter_matches_the_faust_message_it_silences() -> None:
    from faust.transport.drivers import aiokafka as faust_aiokafka

    assert faust_aiokafka.SLOW_PROCESSING_STREAM_IDLE_SINCE_START.startswith(
        STREAM_IDLE_SINCE_START
    )


def test_configure_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="xml"):
        configure("xml", logging.Logger("streams.test.unused"))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ""),
        (b"task-1", "task-1"),
        ("task-1", "task-1"),
        (b"caf\xc3\xa9", "café"),
        (b"\x00\xffbad\nkey", "\\x00\\xffbad\\nkey"),
        ("tab\there", "tab\\there"),
    ],
)
def test_a_key_is_shown_escaped(raw: bytes | str | None, expected: str) -> None:
    assert shown(raw) == expected


def test_a_long_key_is_cut_to_200_characters() -> None:
    assert shown(b"k" * 200) == "k" * 200
    cut = shown(b"k" * 400_000)
    assert len(cut) == 200 and cut.endswith("…")
    assert len(shown(b"\xff" * 1000)) == 200  # escapes count in the 200


def test_one_info_line_per_retry_the_fold_schedules() -> None:
    running = tf.play(tf.created("t-9", retry_delay_ms=750), tf.started("t-9"))
    outcome = tf.accept(running, tf.failed("t-9", "RuntimeError: boom", eid="the-failure"))
    assert outcome.state is not None
    records: list[logging.LogRecord] = []
    log = logging.Logger("streams.test.retries")
    log.addHandler(_Collect(records))
    log_retries(log, running, outcome.state, outcome.effects)
    (record,) = records
    assert record.levelno == logging.INFO
    line = _json(record)
    assert line["message"].startswith("retry scheduled: task=t-9 platform=")
    assert line["task_id"] == "t-9"
    assert line["platform"] == running.platform
    assert line["attempt"] == 1
    assert line["reason"] == "RuntimeError: boom"
    assert line["retry_in_ms"] >= 750


def test_no_line_when_the_outcome_schedules_no_retry() -> None:
    running = tf.play(tf.created("t-8"), tf.started("t-8"))
    outcome = tf.accept(running, tf.failed("t-8", "gone", retryable=False))
    records: list[logging.LogRecord] = []
    log = logging.Logger("streams.test.retries")
    log.addHandler(_Collect(records))
    assert outcome.state is not None
    log_retries(log, running, outcome.state, outcome.effects)
    assert records == []


class _Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_start_line_says_what_the_worker_serves_and_where() -> None:
    from streams.worker import start_line

    settings = load_settings(
        environ={},
        overrides={
            "bootstrap_servers": "k1:9092,k2:9092",
            "app_id": "orch-a",
            "topic_prefix": "team.",
            "partitions": 12,
            "web_host": "0.0.0.0",
            "web_port": 7070,
        },
    )
    message, fields = start_line(settings, ["my.handlers", "other.handlers"])
    text = message % fields
    for part in (
        "brokers=k1:9092,k2:9092",
        "app_id=orch-a",
        "topic_prefix='team.'",
        "team.task.events",
        "partitions=12",
        "http://0.0.0.0:7070",
        "/ready",
        "/health",
        "/metrics",
        "handler modules=my.handlers,other.handlers",
    ):
        assert part in text


def test_log_format_setting_from_the_environment_and_checked() -> None:
    assert load_settings(environ={}).log_format == "text"
    assert load_settings(environ={"ORCHESTRATOR_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigurationError, match="log_format"):
        load_settings(environ={}, overrides={"log_format": "xml"})


def test_worker_command_takes_log_format() -> None:
    parser = cli._parser()
    assert parser.parse_args(["worker", "--log-format", "json"]).log_format == "json"
    assert parser.parse_args(["worker"]).log_format is None
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--log-format", "xml"])
