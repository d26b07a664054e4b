"""Per-task audit timelines: every record filed under a task, in log order, with its verdict.

A timeline entry says when (the event's own time and the record's Kafka timestamp), who wrote
it (``source``), what it was (kind and payload in brief), where it is in the log, and what the
fold made of it: the statuses it entered, or ``duplicate``, or ``rejected`` with the reason the
live worker gave it in the DLQ. Records that do not even decode are in the timeline of the task
their key names, marked rejected (``undecodable`` / ``unknown_schema``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from projections.log import Position, Step, Verdict
from streams.domain import Payload


@dataclass(frozen=True)
class TimelineEntry:
    """One record of a task's history.

    Attributes:
        occurred_at_ms: the event's own time (None if the record did not decode).
        timestamp_ms: the record's Kafka timestamp.
        kind: the payload type (``TaskFailed``), or ``(undecodable)``.
        summary: the payload's fields in brief (a result as its size).
        status_before, status_after: the task's status around the record (None: no task yet).
        entered: the statuses the record made the task enter, in order.
        reason, detail: why a rejected record was refused.
    """

    position: Position
    timestamp_ms: int
    occurred_at_ms: int | None
    event_id: str
    source: str
    kind: str
    summary: str
    verdict: Verdict
    status_before: str | None
    status_after: str | None
    entered: tuple[str, ...]
    reason: str
    detail: str

    @property
    def is_rejected(self) -> bool:
        """True if the fold refused the record (it went to the DLQ)."""
        return self.verdict is Verdict.REJECTED

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict (``position`` as ``PARTITION:OFFSET``)."""
        document = dataclasses.asdict(self)
        document["position"] = str(self.position)
        document["verdict"] = str(self.verdict)
        document["entered"] = list(self.entered)
        return document


class AuditView:
    """The timeline of every task, or of the tasks named.

    Args:
        task_ids: keep only these tasks' timelines (None: every task; memory grows with the log).
    """

    name = "audit"

    def __init__(self, task_ids: Iterable[str] | None = None) -> None:
        self._only = frozenset(task_ids) if task_ids is not None else None
        # steps, not entries: a step only refers to states the fold keeps anyway, and most
        # timelines of a full replay are never rendered
        self._timelines: dict[str, list[Step]] = {}

    def observe(self, step: Step) -> None:
        """Append the step to its task's timeline."""
        if self._only is not None and step.task_id not in self._only:
            return
        steps = self._timelines.get(step.task_id)
        if steps is None:
            self._timelines[step.task_id] = [step]
        else:
            steps.append(step)

    def timeline(self, task_id: str) -> list[TimelineEntry]:
        """The task's entries in log order (empty if no record was filed under it)."""
        return [entry_of(step) for step in self._timelines.get(task_id, ())]

    def task_ids(self) -> list[str]:
        """Ids of the tasks with a timeline, sorted."""
        return sorted(self._timelines)

    def to_json(self) -> dict[str, Any]:
        """``{"timelines": {task_id: [entry, ...]}}``."""
        return {
            "timelines": {
                task_id: [entry.to_json() for entry in self.timeline(task_id)]
                for task_id in self.task_ids()
            }
        }


def entry_of(step: Step) -> TimelineEntry:
    """The timeline entry of one folded record."""
    event = step.event
    return TimelineEntry(
        position=step.record.position,
        timestamp_ms=step.record.timestamp_ms,
        occurred_at_ms=event.occurred_at_ms if event else None,
        event_id=event.event_id if event else "",
        source=str(event.source) if event else "",
        kind=event.kind if event else "(undecodable)",
        summary=describe_payload(event.payload) if event else f"{len(step.record.value)} bytes",
        verdict=step.verdict,
        status_before=str(step.before.status) if step.before else None,
        status_after=str(step.after.status) if step.after else None,
        entered=tuple(str(status) for status in step.entered),
        reason=step.reason,
        detail=step.detail,
    )


def describe_payload(payload: Payload) -> str:
    """The payload's fields as ``name=value`` pairs; bytes as their size, empty tuples left out."""
    parts = []
    for f in dataclasses.fields(payload):
        value = getattr(payload, f.name)
        if isinstance(value, bytes):
            parts.append(f"{f.name}=<{len(value)} bytes>")
        elif isinstance(value, tuple):
            if value:
                parts.append(f"{f.name}=[{', '.join(str(v) for v in value)}]")
        elif isinstance(value, str) and not isinstance(value, Enum):
            parts.append(f"{f.name}={value!r}")
        else:
            parts.append(f"{f.name}={value}")
    return " ".join(parts)
