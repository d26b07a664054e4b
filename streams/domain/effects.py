"""What the fold asks the outside world to do after an event: the adapters carry these out.

The fold never performs I/O; it returns effects, and the fold agent turns each into a record on
a topic. Replay ignores them: every effect that changes state comes back as an event on
``task.events``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from streams.domain.events import Event


class RejectionCode(StrEnum):
    """Why an event was refused; the label of the DLQ metric and the DLQ reason header."""

    ILLEGAL_TRANSITION = "illegal_transition"
    INVALID_PAYLOAD = "invalid_payload"
    UNKNOWN_TASK = "unknown_task"
    DUPLICATE_TASK = "duplicate_task"
    STALE = "stale"
    PROGRESS_OUT_OF_RANGE = "progress_out_of_range"
    RESULT_TOO_LARGE = "result_too_large"
    TOO_LARGE = "too_large"
    """A field is over its bound (``streams.domain.bounds``)."""
    INVALID_ID = "invalid_id"
    """The task id (or a dependency id) is empty, too long or uses characters outside the
    id alphabet."""


@dataclass(frozen=True)
class ReadyToSchedule:
    """The task may run now: a record on ``task.ready``, keyed by platform.

    Attributes:
        ready_id: deterministic id of this readiness, for consumers that de-duplicate.
        attempt: the attempt about to be made (1 for the first run).
    """

    ready_id: str
    task_id: str
    platform: str
    task_type: str
    priority: int
    attempt: int
    ready_at_ms: int
    target: str = ""
    timeout_ms: int = 0


@dataclass(frozen=True)
class FollowUp:
    """An event the fold derived (dependency signal, scheduled retry), for ``task.events``."""

    event: Event


@dataclass(frozen=True)
class CompletedTask:
    """A record on ``task.completed``: the task finished with this result."""

    task_id: str
    task_type: str
    platform: str
    target: str
    attempts: int
    created_at_ms: int
    completed_at_ms: int
    result: bytes
    content_type: str


@dataclass(frozen=True)
class ResultExpired:
    """The task's result is no longer served: a tombstone on ``task.completed`` (keyed by the
    task id) removes it from the compacted topic."""

    task_id: str


@dataclass(frozen=True)
class Released:
    """The task left the ready/dispatched/running states (or a dispatch of it lost a race):
    its scheduler must drop it from the queue and free its slot. A signal keyed by platform.
    """

    task_id: str
    platform: str
    completed: bool = False
    throttled_ms: int = 0


@dataclass(frozen=True)
class Rejected:
    """The event was refused and the state left unchanged; it belongs in the DLQ."""

    code: RejectionCode
    reason: str


Effect = ReadyToSchedule | FollowUp | CompletedTask | ResultExpired | Released | Rejected
