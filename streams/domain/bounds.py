"""Size bounds: how large each field of an event, and so each task's state, may grow.

Every record the worker writes must fit the ``max.message.bytes`` of its topic, or the broker
refuses it and the event behind it could never be folded. The bounds below are chosen from
those topic limits (set by ``streams.topics`` when it creates the topics), so that no event the
fold accepts can produce a refused record:

- an event on ``task.events`` is at most :data:`EVENT_RECORD_MAX_BYTES`, so its dead-letter copy
  (key, value and a short reason) always fits the DLQ's :data:`LARGE_RECORD_MAX_BYTES`;
- a task's state is at most :data:`MAX_STATE_BYTES` as stored (JSON), under the changelog's
  :data:`LARGE_RECORD_MAX_BYTES`; ``tests/unit/test_bounds.py`` builds the largest state the
  bounds allow and checks it;
- lists that other tasks make grow (dependents, waiting) are capped, and what would pass the
  cap is refused with a clear reason instead of being stored.

The client refuses oversize input with a ``ValidationError`` naming the limit; the fold refuses
(dead-letters) the same input from any other producer. Long free-text reasons (a failure's
error, a cancellation's reason) are cut to :data:`MAX_REASON_CHARS` instead, so that reporting a
long traceback never fails.
"""

from __future__ import annotations

import math
import re

EVENT_RECORD_MAX_BYTES = 1_048_576
"""``max.message.bytes`` of ``task.events``: the largest record a producer may write there."""

LARGE_RECORD_MAX_BYTES = 2_097_152
"""``max.message.bytes`` of the DLQ and of the ``tasks`` changelog."""

PRODUCER_MAX_REQUEST_BYTES = LARGE_RECORD_MAX_BYTES + 65_536
"""The producers' ``max_request_size``: above every topic limit, so the broker, not the client,
is the one to refuse a record (with an error the fold attributes to that record)."""

MAX_ID_CHARS = 200
"""Task ids (and dependency ids): at most this many characters of :data:`ID_ALPHABET`."""

ID_ALPHABET = (
    "A-Z a-z 0-9 and . _ : @ = + ~ -, starting with a letter or digit, and at most one / "
    "between a group and a name (group/name, each starting with a letter or digit)"
)
_ID_PART = "[A-Za-z0-9][A-Za-z0-9._:@=+~-]*"
_ID = re.compile(rf"{_ID_PART}(?:/{_ID_PART})?")
"""A task id; ``group/name`` places the task with its group (``streams.partitions``). The length
is checked on its own (:func:`_token_problem`)."""

MAX_NAME_CHARS = 64
"""Task types and platforms: at most this many characters of :data:`NAME_ALPHABET`."""

NAME_ALPHABET = "A-Z a-z 0-9 and . _ -, starting with a letter or digit"
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME_CHARS - 1}}}")

MAX_TARGET_BYTES = 16_384
"""A task's target, in UTF-8 bytes; control characters other than tab and newline are refused."""

MAX_DEPENDENCIES = 500
"""Dependencies one task may have."""

MAX_DEPENDENTS = 1_000
"""Tasks that may depend on one task; a registration beyond it is answered ``refused``."""

MAX_WAITING = 1_000
"""Tasks that may wait, directly or transitively, on one pending task (the set that finds
dependency cycles); a task whose chain grows beyond it fails."""

MAX_RESULT_BYTES = 512 * 1024
"""A result in ``TaskCompleted``, in bytes."""

MAX_CONTENT_TYPE_CHARS = 128
"""A result's content type."""

MAX_REASON_CHARS = 2_000
"""A failure's error, a cancellation's reason, a hold's detail: longer text is cut to this."""

MAX_EVENT_ID_CHARS = 64
"""An event id (a uuid is 36 characters)."""

SEEN_EVENT_IDS_KEPT = 256
"""The newest event ids a task's state keeps for idempotence: a duplicate delivered after this
many later events of the same task is applied again (and most kinds are then refused as
illegal transitions)."""

HISTORY_KEPT = 200
"""Transitions a task's state keeps: the first (its creation) and the newest ones. The log
keeps them all (``projections.audit``)."""

MAX_STATE_BYTES = 1_572_864
"""The largest task state the bounds allow, as stored (canonical JSON): 1.5 MiB, under the
changelog's :data:`LARGE_RECORD_MAX_BYTES` with room for the record's key and framing."""

MAX_POLICY_MS = 366 * 24 * 60 * 60 * 1000
"""Largest timeout, retry delay, result TTL or dependency wait: a year."""

MAX_ATTEMPTS = 1_000
"""Largest ``max_attempts``."""

MAX_PRIORITY = 10
"""Priorities run from 1 (most urgent) to this."""

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def id_problem(name: str, value: object) -> str | None:
    """Why ``value`` is not a valid task id (None if it is)."""
    return _token_problem(name, value, MAX_ID_CHARS, _ID, ID_ALPHABET)


def name_problem(name: str, value: object) -> str | None:
    """Why ``value`` is not a valid task type or platform (None if it is)."""
    return _token_problem(name, value, MAX_NAME_CHARS, _NAME, NAME_ALPHABET)


def _token_problem(
    name: str, value: object, max_chars: int, pattern: re.Pattern[str], alphabet: str
) -> str | None:
    if not isinstance(value, str) or not value:
        return f"{name} must be a non-empty string"
    if len(value) > max_chars:
        return f"{name} has {len(value)} characters, more than the limit of {max_chars}"
    if not pattern.fullmatch(value):
        return f"{name} {_shown(value)} may only use {alphabet}"
    return None


def target_problem(value: object) -> str | None:
    """Why ``value`` is not a valid target (None if it is)."""
    if not isinstance(value, str) or not value:
        return "target must be a non-empty string"
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_TARGET_BYTES:
        return f"target has {size} bytes, more than the limit of {MAX_TARGET_BYTES}"
    if _CONTROL.search(value):
        return "target contains control characters"
    return None


def dependencies_problem(values: object) -> str | None:
    """Why ``values`` are not valid dependency ids (None if they are)."""
    if not isinstance(values, (list, tuple)):
        return "dependencies must be a list of task ids"
    if len(values) > MAX_DEPENDENCIES:
        return f"{len(values)} dependencies, more than the limit of {MAX_DEPENDENCIES}"
    for value in values:
        problem = id_problem("a dependency id", value)
        if problem is not None:
            return f"dependencies: {problem}"
    return None


def result_problem(size: int) -> str | None:
    """Why a result of ``size`` bytes is refused (None if it is not)."""
    if size > MAX_RESULT_BYTES:
        return f"result of {size} bytes exceeds the limit of {MAX_RESULT_BYTES}"
    return None


def finite_problem(name: str, value: object) -> str | None:
    """Why ``value`` is not a finite number (None if it is)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number"
    if not math.isfinite(value):
        return f"{name} must be finite, not {value}"
    return None


def cut_reason(text: str) -> str:
    """``text`` cut to :data:`MAX_REASON_CHARS` characters (marked as cut)."""
    if len(text) <= MAX_REASON_CHARS:
        return text
    marker = f"… [cut from {len(text)} characters]"
    return text[: MAX_REASON_CHARS - len(marker)] + marker


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "…")
