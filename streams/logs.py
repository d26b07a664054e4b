"""The worker's logs: plain text (the default) or one JSON object per line, for log shippers.

``orchestrator worker --log-format json`` (or ``ORCHESTRATOR_LOG_FORMAT=json``) writes every
line, faust's and aiokafka's included, as one JSON object::

    {"ts": "2026-01-05T09:12:44.031Z", "level": "WARNING", "logger": "streams.agents.executor",
     "pid": 4242, "message": "handler failed: task=... platform=youtube attempt=1 error=...",
     "task_id": "...", "platform": "youtube", "attempt": 1, "reason": "..."}

``ts`` is ISO 8601 in UTC; the fields of :data:`FIELDS` are there when the line has them (the
project's log calls pass them with ``extra=``); a traceback is one string, ``exc``.

faust replaces the root logger's handlers when its worker starts; :func:`configure` is called
before that (the lines logged while the topics are created) and again on the handlers faust
installs (``streams.worker``). Both formats also drop faust's false "Stream has not started
processing" errors (:class:`DropFalseStreamIdleErrors`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from streams.domain import Effect, FollowUp, TaskRetryScheduled, TaskState

LOG_FORMATS = ("text", "json")
"""The values of ``--log-format`` and of the ``log_format`` setting."""

FIELDS = (
    "task_id",
    "platform",
    "attempt",
    "reason",
    "detail",
    "topic",
    "partition",
    "offset",
    "retry_in_ms",
)
"""Keys a log call may pass with ``extra=``, written as fields of the JSON line."""

SHOWN_KEY_MAX_CHARS = 200
"""A record key shown in a log line (a task id that may be anything) is cut to this."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in the message are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # bad arguments: show them rather than lose the line
            message = f"{record.msg!s} (arguments: {record.args!r})"
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": message,
        }
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            line["exc"] = record.exc_text or self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


STREAM_IDLE_SINCE_START = "Stream has not started processing %r"
"""The start of faust's ``SLOW_PROCESSING_STREAM_IDLE_SINCE_START`` (its unformatted text)."""


class DropFalseStreamIdleErrors(logging.Filter):
    """Drops faust's "Stream has not started processing TP(...)" error, false here.

    faust's consumer checks every partition it holds twice a second: if the partition's high
    watermark is above the consumer's position and the partition's stream has taken no event
    since the last rebalance (faust forgets every partition's last event at each rebalance),
    it logs this error once the *worker* has run for ``stream_processing_timeout`` (5 min).
    Every topic the agents read is written in transactions, so each partition ends with a
    transaction marker: an offset that is no record. After any rebalance (a worker joining or
    leaving), and while the tables restore (faust pauses the partitions), the position of an
    idle partition stays before that marker until the next fetch steps over it, so every idle
    partition of a worker older than 5 min is reported, although nothing waits in it.

    Raising the timeout would not help (it counts from the worker's start, not from the
    assignment) and would also silence faust's checks on fetching. A partition that really
    stalls is reported by ``GET /health`` (``health_stall_s``) and the lag metrics; faust's
    other slow-processing errors ("Stream stopped processing, or is slow", no fetch, no
    commit) are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and STREAM_IDLE_SINCE_START in record.msg)


def configure(log_format: str, root: logging.Logger | None = None) -> None:
    """Give every handler of ``root`` (default: the root logger) the format and the filter.

    ``json``: :class:`JsonFormatter`, and Python's warnings go through logging too, so that
    nothing but JSON reaches the output. A root logger without handlers gets one on stderr.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}: {log_format!r}")
    root = root or logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        if not any(isinstance(f, DropFalseStreamIdleErrors) for f in handler.filters):
            handler.addFilter(DropFalseStreamIdleErrors())
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
    if log_format == "json":
        logging.captureWarnings(True)


def shown(raw: bytes | str | None, limit: int = SHOWN_KEY_MAX_CHARS) -> str:
    """A key (or any text from a record) fit for one log line: at most ``limit`` characters,
    bytes that are not UTF-8 and unprintable characters escaped (``\\xff``, ``\\n``)."""
    if raw is None:
        return ""
    if isinstance(raw, bytes):
        raw = raw[: limit * 4].decode("utf-8", errors="backslashreplace")
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in raw[: limit + 1])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def log_retries(
    logger: logging.Logger,
    before: TaskState | None,
    after: TaskState,
    effects: Iterable[Effect],
) -> None:
    """One INFO line per retry among ``effects`` (a fold's outcome): task, platform, the
    attempt that ended, when the retry is due and why."""
    for effect in effects:
        retry = effect.event.payload if isinstance(effect, FollowUp) else None
        if not isinstance(retry, TaskRetryScheduled):
            continue
        attempt = before.attempt if before is not None else retry.attempt
        logger.info(
            "retry scheduled: task=%s platform=%s attempt=%d retry_in_ms=%d reason=%s",
            after.task_id,
            after.platform,
            attempt,
            retry.delay_ms,
            after.last_error,
            extra={
                "task_id": after.task_id,
                "platform": after.platform,
                "attempt": attempt,
                "retry_in_ms": retry.delay_ms,
                "reason": after.last_error,
            },
        )
