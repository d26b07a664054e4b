"""The current status of every task: the ``tasks`` table as a fresh fold of the log gives it.

The view keeps, per task, the state after the last record applied to it and that record's
position, so every entry says which event it comes from. ``orchestrator verify`` compares
:meth:`TaskStatusView.states` with the live table field by field.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from projections.log import Position, Step, Verdict
from streams.domain import TaskState, state_to_dict


@dataclass(frozen=True)
class TaskEntry:
    """A task's state and the position of the record that produced it."""

    state: TaskState
    position: Position


class TaskStatusView:
    """Every task's latest state (placeholders of awaited or missing ids included)."""

    name = "status"

    def __init__(self) -> None:
        self._tasks: dict[str, TaskEntry] = {}

    def observe(self, step: Step) -> None:
        """Keep the state an applied record produced."""
        if step.verdict is not Verdict.APPLIED:
            return
        if step.after is not None:
            self._tasks[step.task_id] = TaskEntry(step.after, step.record.position)
        else:  # retired: gone from the table, as from the worker's
            self._tasks.pop(step.task_id, None)

    def entry(self, task_id: str) -> TaskEntry | None:
        """The task's state and where it comes from, or None if no record created it."""
        return self._tasks.get(task_id)

    def states(self) -> dict[str, TaskState]:
        """Every task's state, by id."""
        return {task_id: entry.state for task_id, entry in self._tasks.items()}

    def counts(self) -> dict[str, int]:
        """How many tasks are in each status, by status name (sorted)."""
        counted = Counter(str(entry.state.status) for entry in self._tasks.values())
        return dict(sorted(counted.items()))

    def to_json(self) -> dict[str, Any]:
        """``{"counts": {status: n}, "tasks": {task_id: summary}}`` (see :func:`summary`)."""
        return {
            "counts": self.counts(),
            "tasks": {task_id: summary(entry) for task_id, entry in sorted(self._tasks.items())},
        }


_SUMMARY_FIELDS = (
    "status",
    "task_type",
    "platform",
    "target",
    "priority",
    "dependencies",
    "open_dependencies",
    "attempt",
    "progress",
    "last_error",
    "created_at_ms",
    "updated_at_ms",
    "completed_at_ms",
    "history",
)


def summary(entry: TaskEntry) -> dict[str, Any]:
    """The fields of a task a reader wants (not the result bytes nor the seen event ids), plus
    ``position``, the ``PARTITION:OFFSET`` of the record that last changed it."""
    document = state_to_dict(entry.state)
    brief = {name: document[name] for name in _SUMMARY_FIELDS}
    brief["result_bytes"] = len(entry.state.result) if entry.state.result is not None else None
    brief["position"] = str(entry.position)
    return brief
