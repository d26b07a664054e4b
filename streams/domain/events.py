"""The facts of a task's life, as written to ``task.events``.

Every event is an :class:`Event` envelope around one payload. Payloads are frozen dataclasses
named in the past tense. The Avro schema in ``schemas/task_event.avsc`` mirrors these types
field by field; ``schemas.codec`` converts between the two.

Ids of events that the system derives from other events (dependency signals, scheduled retries,
timer decisions) are computed with :func:`derived_event_id`, so writing the same decision twice
produces the same id and the fold drops the second copy.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum

_DERIVED_NAMESPACE = uuid.UUID("6f1b7f3e-0c55-4d0e-9a3c-5b1e2c7d9a10")

MAX_RATE_LIMITED = 1_000
"""The largest ``TaskCreated.max_rate_limited``."""


class Source(StrEnum):
    """Who wrote an event."""

    CLIENT = "client"
    FOLD = "fold"
    SCHEDULER = "scheduler"
    EXECUTOR = "executor"
    TIMER = "timer"


class DependencyOutcome(StrEnum):
    """How a dependency ended, as told to the task waiting on it."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    MISSING = "missing"
    REFUSED = "refused"
    """The dependency refused the registration: it has the most dependents a task may have
    (``bounds.MAX_DEPENDENTS``), or too long a chain waits on it (``bounds.MAX_WAITING``)."""


@dataclass(frozen=True)
class TaskCreated:
    """A task was submitted. Carries the task's own policy, fixed at creation.

    Attributes:
        dependencies: ids of tasks that must complete before this one is ready.
        timeout_ms: how long one attempt may run before it is timed out.
        max_attempts: attempts in all (first run plus retries).
        retry_delay_ms: base of the exponential retry backoff.
        result_ttl_ms: how long the result is served after completion.
        dependency_wait_ms: how long a dependency that does not exist yet is waited for.
        max_rate_limited: "rate limited" answers in a row (``TaskFailed.throttled_ms > 0``)
            after which the task fails, 1 to :data:`MAX_RATE_LIMITED` (events written before
            the field existed decode with the default, 10).
        not_before_ms: the task is not ready before this time (Unix ms; Celery's ``eta``);
            0, or a time not after the event's own, means no delay (events written before the
            field existed decode with 0).
    """

    task_type: str
    platform: str
    target: str
    priority: int
    dependencies: tuple[str, ...]
    timeout_ms: int
    max_attempts: int
    retry_delay_ms: int
    result_ttl_ms: int
    dependency_wait_ms: int
    max_rate_limited: int = 10
    not_before_ms: int = 0


@dataclass(frozen=True)
class TaskDispatched:
    """The scheduler let the task run now: a slot and every rate-limit window allowed it."""


@dataclass(frozen=True)
class TaskStarted:
    """An executor (or a caller driving the task itself) started an attempt."""


@dataclass(frozen=True)
class TaskProgress:
    """The running attempt reported progress, a fraction in [0, 1]."""

    progress: float


@dataclass(frozen=True)
class TaskCompleted:
    """The running attempt finished with a result (bytes, typed by ``content_type``)."""

    result: bytes
    content_type: str = "application/json"


@dataclass(frozen=True)
class TaskFailed:
    """The running attempt failed; ``retryable`` says whether another attempt may help."""

    error: str
    retryable: bool = True
    throttled_ms: int = 0
    """If > 0, the platform answered "rate limited, retry after" this long: the attempt is not
    counted, and the task is retried after that delay; ``max_rate_limited`` such answers in a
    row fail the task."""
    interrupted: bool = False
    """The worker running the attempt stopped (SIGTERM) before the attempt ended: the attempt
    is not counted and the task is retried at once. Not a "rate limited" answer: it neither
    counts towards ``max_rate_limited`` nor resets the count, nor pauses the platform."""


@dataclass(frozen=True)
class TaskCancelled:
    """The task was cancelled: by a user, or because a dependency failed or was cancelled."""

    reason: str


@dataclass(frozen=True)
class TaskTimedOut:
    """A timer found ``attempt`` still running past its timeout."""

    attempt: int


@dataclass(frozen=True)
class TaskRetryScheduled:
    """A failed attempt will be retried at ``due_at_ms``, after ``delay_ms`` (jitter included)."""

    attempt: int
    delay_ms: int
    due_at_ms: int


@dataclass(frozen=True)
class TaskRetryDue:
    """A timer found the retry of ``attempt`` due: the task is ready again."""

    attempt: int


@dataclass(frozen=True)
class TaskResultExpired:
    """A timer found the completed task's result past its ``result_ttl``: the result is dropped
    (and tombstoned on ``task.completed``); the task stays completed."""


@dataclass(frozen=True)
class TaskRetired:
    """A timer found the finished task unchanged for ``retention_ms`` (the worker's
    ``task_retention``): it leaves the tasks table. Its history stays in ``task.events``."""

    retention_ms: int


@dataclass(frozen=True)
class TaskDeferred:
    """The scheduler held a ready task back for the first time: ``reason`` until ``until_ms``.

    ``reason`` is one of ``paused``, ``concurrency``, ``overall_concurrency``, ``rate_limit``;
    ``until_ms`` is 0 when the time is not known (a slot must free up first).
    """

    reason: str
    detail: str
    until_ms: int


@dataclass(frozen=True)
class TaskRetryRequested:
    """A user asked to run a failed or cancelled task again, as a new attempt.

    The task goes back the way a due retry takes it: ``ready`` (and then to its platform's
    scheduler), or ``pending`` first if it has dependencies, which it asks anew. Refused in any
    other status.
    """


@dataclass(frozen=True)
class DependencyRegistered:
    """Keyed by the dependency: ``dependent_id`` waits for it to finish.

    Attributes:
        waiting: every task known to wait, directly or through others, on the dependent
            (the dependent included); a task that finds itself in it is part of a cycle.
        wait_ms: how long the dependent waits for this dependency if it does not exist yet.
    """

    dependent_id: str
    waiting: tuple[str, ...]
    wait_ms: int


@dataclass(frozen=True)
class DependencyResolved:
    """Keyed by the dependent: ``dependency_id`` finished with ``outcome``."""

    dependency_id: str
    outcome: DependencyOutcome


@dataclass(frozen=True)
class DependencyWaitExpired:
    """A timer found that a task others wait for was never created within their wait bound."""


@dataclass(frozen=True)
class TaskDelayElapsed:
    """A timer found the task's ``not_before_ms`` passed: its delay no longer holds it."""

    not_before_ms: int


@dataclass(frozen=True)
class PeriodicScheduled:
    """A periodic definition was made or changed: keyed by ``periodic:<name>``.

    Each occurrence creates the task ``<name>@<occurrence in UTC ISO-8601>`` with this
    template (the fields a ``TaskCreated`` has, but dependencies and delay).

    Attributes:
        every_ms: the interval of an ``every`` schedule (0 for a cron schedule); occurrences
            are ``start_ms + k * every_ms``.
        cron: the cron expression (UTC) of a cron schedule ("" for an ``every`` schedule).
        start_ms: no occurrence before this time.
        first_due_ms: a cron schedule's first occurrence at or after the definition, computed
            by its writer (the core has no cron); ignored for ``every`` (the fold computes it).
    """

    task_type: str
    platform: str
    target: str
    priority: int
    timeout_ms: int
    max_attempts: int
    retry_delay_ms: int
    result_ttl_ms: int
    dependency_wait_ms: int
    max_rate_limited: int
    every_ms: int
    cron: str
    start_ms: int
    first_due_ms: int


@dataclass(frozen=True)
class PeriodicCancelled:
    """A periodic definition was removed: no occurrence after this event."""

    reason: str


@dataclass(frozen=True)
class PeriodicOccurrenceDue:
    """A timer found the definition's occurrence at ``occurrence_ms`` due.

    The fold creates that occurrence's task (a ``TaskCreated`` follow-up with an id derived
    from this event's, whose own id is derived from the definition and the occurrence): the
    same occurrence written twice creates one task.

    Attributes:
        next_due_ms: the occurrence after this one, computed by the writer.
        skipped: occurrences between the one due before and this one that were not created
            (the worker was down: only the latest missed occurrence is created). The fold
            counts an ``every`` schedule's skips itself, from the state the event meets.
    """

    occurrence_ms: int
    next_due_ms: int
    skipped: int = 0


Payload = (
    TaskCreated
    | TaskDispatched
    | TaskStarted
    | TaskProgress
    | TaskCompleted
    | TaskFailed
    | TaskCancelled
    | TaskTimedOut
    | TaskRetryScheduled
    | TaskRetryDue
    | DependencyRegistered
    | DependencyResolved
    | DependencyWaitExpired
    | TaskDeferred
    | TaskResultExpired
    | TaskRetired
    | TaskRetryRequested
    | TaskDelayElapsed
    | PeriodicScheduled
    | PeriodicCancelled
    | PeriodicOccurrenceDue
)

PAYLOAD_TYPES: tuple[type[Payload], ...] = (
    TaskCreated,
    TaskDispatched,
    TaskStarted,
    TaskProgress,
    TaskCompleted,
    TaskFailed,
    TaskCancelled,
    TaskTimedOut,
    TaskRetryScheduled,
    TaskRetryDue,
    DependencyRegistered,
    DependencyResolved,
    DependencyWaitExpired,
    TaskDeferred,
    TaskResultExpired,
    TaskRetired,
    TaskRetryRequested,
    TaskDelayElapsed,
    PeriodicScheduled,
    PeriodicCancelled,
    PeriodicOccurrenceDue,
)


@dataclass(frozen=True)
class Event:
    """One fact about one task.

    Attributes:
        event_id: unique id; applying an event with a known id again changes nothing.
        task_id: the task it is about; also the Kafka key on ``task.events``.
        occurred_at_ms: when it happened (Unix ms); the fold's only notion of time.
        source: who wrote it.
    """

    event_id: str
    task_id: str
    occurred_at_ms: int
    source: Source
    payload: Payload = field(repr=True)

    @property
    def kind(self) -> str:
        """The payload's type name, e.g. ``"TaskCreated"``."""
        return type(self.payload).__name__


def derived_event_id(*parts: str | int) -> str:
    """A deterministic event id for a decision derived from ``parts``.

    The same parts always give the same id, so a decision written twice is applied once.
    """
    return str(uuid.uuid5(_DERIVED_NAMESPACE, "/".join(str(p) for p in parts)))
