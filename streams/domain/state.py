"""A task's state: what the fold knows about one task after the events so far.

``TaskState`` is immutable; the fold returns a new one for every accepted event. States convert
to and from plain JSON-ready dicts (:func:`state_to_dict`, :func:`state_from_dict`) for the
``tasks`` table and for replay comparisons; two equal states give identical dicts.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """Where a task is in its life.

    ``awaited`` and ``missing`` are not task statuses in the usual sense: they mark an id that
    other tasks depend on but that was not created (yet, or within their wait bound).
    """

    AWAITED = "awaited"
    MISSING = "missing"
    PENDING = "pending"
    READY = "ready"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PERIODIC = "periodic"
    """Not a task: an active periodic definition (``periodic:<name>``), which creates a task
    at each occurrence; a removed one is ``cancelled``."""

    @property
    def is_terminal(self) -> bool:
        """True once nothing can change the outcome."""
        return self in _TERMINAL

    @property
    def is_created(self) -> bool:
        """True for a task that was actually created (not a mere placeholder)."""
        return self not in (Status.AWAITED, Status.MISSING)


_TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})


@dataclass(frozen=True)
class TaskPolicy:
    """How a task is run, fixed when it is created (see ``TaskCreated``)."""

    timeout_ms: int = 0
    max_attempts: int = 1
    retry_delay_ms: int = 0
    result_ttl_ms: int = 0
    dependency_wait_ms: int = 0
    max_rate_limited: int = 10
    """How many "rate limited" answers in a row fail the task (see ``TaskCreated``)."""


@dataclass(frozen=True)
class PeriodicSpec:
    """The schedule of a periodic definition and where it stands (see ``PeriodicScheduled``).

    Attributes:
        every_ms: interval of an ``every`` schedule, 0 for a cron one.
        cron: cron expression (UTC) of a cron schedule, "" for an ``every`` one.
        start_ms: no occurrence before it; an ``every`` schedule's grid starts here.
        next_due_ms: the next occurrence to create (None once the definition is removed).
        last_occurrence_ms: the latest occurrence created, None before the first.
        occurrences: occurrences created so far.
        skipped: occurrences missed (no worker was there in time) and not created.
    """

    every_ms: int = 0
    cron: str = ""
    start_ms: int = 0
    next_due_ms: int | None = None
    last_occurrence_ms: int | None = None
    occurrences: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class Transition:
    """The task entered ``status`` at ``at_ms`` because of event ``event_id``."""

    status: Status
    at_ms: int
    event_id: str


@dataclass(frozen=True)
class TaskState:
    """Everything the fold knows about one task.

    Attributes:
        open_dependencies: dependencies not yet resolved (sorted).
        dependents: tasks that registered as waiting for this one to finish (sorted); kept once
            it has (not for a missing id: its dependents are told and forgotten).
        waiting: tasks waiting on this one directly or transitively; kept only while the task
            could still be part of a dependency cycle (awaited or pending).
        awaited_until_ms: for an awaited id, when its dependents stop waiting for it.
        deadline_ms: when the running attempt times out.
        retry_due_at_ms: when the scheduled retry becomes due.
        held_reason, held_detail, held_until_ms: why the scheduler holds the ready task back
            (from its ``TaskDeferred``), until when if known.
        rate_limited_in_row: "rate limited" answers since the last other outcome of an attempt
            (completion, failure, timeout); at ``policy.max_rate_limited`` the task fails.
        not_before_ms: the task's delay from its ``TaskCreated`` (None: it had none).
        is_delayed: the delay still holds the task (``pending`` until it has passed, even with
            every dependency met); cleared by ``TaskDelayElapsed`` or a later dependency answer.
        periodic: for a periodic definition (``periodic:<name>``), its schedule; the task
            fields (type, platform, target, priority, policy) are its occurrences' template.
        seen_event_ids: ids of every event applied, for idempotence.
    """

    task_id: str
    status: Status
    task_type: str = ""
    platform: str = ""
    target: str = ""
    priority: int = 0
    dependencies: tuple[str, ...] = ()
    open_dependencies: tuple[str, ...] = ()
    dependents: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()
    policy: TaskPolicy = field(default_factory=TaskPolicy)
    attempt: int = 0
    progress: float = 0.0
    result: bytes | None = None
    result_content_type: str = ""
    last_error: str = ""
    created_at_ms: int = 0
    updated_at_ms: int = 0
    completed_at_ms: int | None = None
    awaited_until_ms: int | None = None
    deadline_ms: int | None = None
    retry_due_at_ms: int | None = None
    held_reason: str = ""
    held_detail: str = ""
    held_until_ms: int | None = None
    rate_limited_in_row: int = 0
    history: tuple[Transition, ...] = ()
    seen_event_ids: tuple[str, ...] = ()
    not_before_ms: int | None = None
    is_delayed: bool = False
    periodic: PeriodicSpec | None = None

    def result_expires_at_ms(self) -> int | None:
        """When the result stops being served, or None if there is no result."""
        if self.completed_at_ms is None:
            return None
        return self.completed_at_ms + self.policy.result_ttl_ms

    def result_available(self, now_ms: int) -> bool:
        """Whether the result is served at ``now_ms`` (there is one, and it has not expired)."""
        expires_at_ms = self.result_expires_at_ms()
        return self.result is not None and expires_at_ms is not None and now_ms < expires_at_ms


_FIELD_NAMES = frozenset(f.name for f in fields(TaskState))


def evolve(state: TaskState, **changes: Any) -> TaskState:
    """``state`` with ``changes``: what ``dataclasses.replace`` gives, without its cost.

    ``replace`` calls ``__init__`` with every field, three times per event on average; this
    copies the instance's attributes and sets the changed ones. It holds because ``TaskState``
    has no ``__post_init__`` and no ``init=False`` field; a name that is no field is refused
    as ``replace`` refuses it.
    """
    if not changes.keys() <= _FIELD_NAMES:
        unknown = ", ".join(sorted(changes.keys() - _FIELD_NAMES))
        raise TypeError(f"TaskState has no field {unknown}")
    new = object.__new__(TaskState)
    values = new.__dict__
    values.update(state.__dict__)
    values.update(changes)
    return new


def state_to_dict(state: TaskState) -> dict[str, Any]:
    """A JSON-ready dict of ``state`` (bytes as base64, enums as strings), keys sorted.

    Built field by field rather than with ``dataclasses.asdict``, which deep-copies every value
    and was the largest single cost of storing a state (this runs for every event folded).
    """
    data = {name: getattr(state, name) for name in _STATE_FIELDS}
    for name, default in _OPTIONAL_FIELDS.items():
        if data[name] == default:
            del data[name]
    if state.periodic is not None:
        data["periodic"] = {name: getattr(state.periodic, name) for name in _PERIODIC_FIELDS}
    data["status"] = str(state.status)
    policy = state.policy
    data["policy"] = {name: getattr(policy, name) for name in _POLICY_FIELDS}
    data["history"] = [[str(t.status), t.at_ms, t.event_id] for t in state.history]
    if state.result is not None:
        data["result"] = base64.b64encode(state.result).decode("ascii")
    for name in _ID_LISTS:
        data[name] = list(data[name])
    return data


def state_from_dict(data: dict[str, Any]) -> TaskState:
    """The inverse of :func:`state_to_dict`; unknown keys are ignored, missing ones default."""
    values = {k: v for k, v in data.items() if k in _KNOWN_FIELDS}
    values["status"] = Status(data["status"])
    values["policy"] = TaskPolicy(**data.get("policy", {}))
    if data.get("periodic") is not None:
        values["periodic"] = PeriodicSpec(**data["periodic"])
    values["history"] = tuple(
        Transition(Status(s), at, eid) for s, at, eid in data.get("history", ())
    )
    if data.get("result") is not None:
        values["result"] = base64.b64decode(data["result"])
    for name in _ID_LISTS:
        values[name] = tuple(data.get(name, ()))
    return TaskState(**values)


def state_to_json(state: TaskState) -> bytes:
    """``state`` as compact, canonical JSON bytes (the ``tasks`` table's value format)."""
    return _CANONICAL.encode(state_to_dict(state)).encode("utf-8")


def state_from_json(data: bytes) -> TaskState:
    """The inverse of :func:`state_to_json`."""
    return state_from_dict(json.loads(data))


_STATE_FIELDS = tuple(sorted(f.name for f in fields(TaskState)))
_KNOWN_FIELDS = frozenset(_STATE_FIELDS)
_POLICY_FIELDS = tuple(sorted(f.name for f in fields(TaskPolicy)))
_PERIODIC_FIELDS = tuple(sorted(f.name for f in fields(PeriodicSpec)))
_OPTIONAL_FIELDS: dict[str, Any] = {"not_before_ms": None, "is_delayed": False, "periodic": None}
"""Fields added after the golden log (``tests/golden``) was recorded, left out of the dict while
at their default: a task that uses none of them has the dict it had before they existed, so
recorded states, and states written by workers of the version before, still compare equal."""
_ID_LISTS = ("dependencies", "open_dependencies", "dependents", "waiting", "seen_event_ids")
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
"""One encoder for every state: ``json.dumps`` with options builds a new one per call."""


def waiting_on(state: TaskState) -> dict[str, Any] | None:
    """What a task that is not running waits for: the answer to "why is my task not running"
    (None: it waits for nothing)."""
    if state.status is Status.PENDING and state.is_delayed and not state.open_dependencies:
        return {
            "reason": "not_before",
            "not_before_ms": state.not_before_ms,
            "detail": f"not before {utc_iso(state.not_before_ms or 0)}",
        }
    if state.status is Status.PENDING:
        waits: dict[str, Any] = {
            "reason": "dependencies",
            "dependencies": list(state.open_dependencies),
        }
        if state.is_delayed:
            waits["not_before_ms"] = state.not_before_ms
            waits["detail"] = f"and not before {utc_iso(state.not_before_ms or 0)}"
        return waits
    if state.status is Status.PERIODIC and state.periodic is not None:
        return {
            "reason": "periodic",
            "next_due_ms": state.periodic.next_due_ms,
            "detail": f"next occurrence at {utc_iso(state.periodic.next_due_ms or 0)}",
        }
    if state.status is Status.RETRYING:
        return {
            "reason": "retry",
            "due_at_ms": state.retry_due_at_ms,
            "last_error": state.last_error,
        }
    if state.status is Status.READY and state.held_reason:
        return {
            "reason": state.held_reason,
            "detail": state.held_detail,
            "until_ms": state.held_until_ms,
        }
    if state.status is Status.READY:
        return {
            "reason": "scheduling",
            "detail": "waiting for its platform's scheduler or a caller",
        }
    return None


def utc_iso(at_ms: int) -> str:
    """``at_ms`` (Unix ms) as ISO-8601 in UTC: ``2026-01-01T00:05:00Z``, with milliseconds
    (``.250``) only when there are some.

    Integer arithmetic on the proleptic Gregorian calendar (H. Hinnant's ``civil_from_days``):
    the core may not import ``datetime``, which can read the clock. UTC has no daylight
    saving, so the same instant always gives the same text.
    """
    days, ms_of_day = divmod(at_ms, 86_400_000)
    seconds, ms = divmod(ms_of_day, 1000)
    era, day_of_era = divmod(days + 719_468, 146_097)
    year_of_era = (
        day_of_era - day_of_era // 1_460 + day_of_era // 36_524 - day_of_era // 146_096
    ) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * month_index + 2) // 5 + 1
    month = month_index + 3 if month_index < 10 else month_index - 9
    year = year_of_era + era * 400 + (1 if month <= 2 else 0)
    clock = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    fraction = f".{ms:03d}" if ms else ""
    return f"{year:04d}-{month:02d}-{day:02d}T{clock}{fraction}Z"
