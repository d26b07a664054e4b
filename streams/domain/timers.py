"""Deadlines: when a task needs an event that only the passing of time can cause.

Five things happen by the clock: a running attempt times out, a scheduled retry becomes due,
an awaited dependency that was never created stops being waited for, a delayed task's
``not_before`` passes, a periodic definition's next occurrence comes, a completed task's result
expires (its ``result_ttl``), and a finished task leaves the tasks table (the worker's
``task_retention``, passed here as ``retention_ms``; None: never). The fold cannot notice
them (it has no clock); a timer on the worker that owns the task asks :func:`next_deadline`
when to look again, and :func:`due_event` which event to write once that time has come. The
event's id is derived from the deadline it answers, so two timers (or one timer twice, across a
rebalance) write the same id and the fold applies it once.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from streams.domain.events import (
    DependencyWaitExpired,
    Event,
    Payload,
    PeriodicOccurrenceDue,
    Source,
    TaskDelayElapsed,
    TaskResultExpired,
    TaskRetired,
    TaskRetryDue,
    TaskTimedOut,
    derived_event_id,
)
from streams.domain.periodic import Recurrence, due_occurrence, every_of
from streams.domain.state import PeriodicSpec, Status, TaskState

RecurrenceOf = Callable[[PeriodicSpec], Recurrence | None]
"""How a timer finds a definition's recurrence: :func:`~streams.domain.periodic.every_of` in
the core (``every`` only), ``streams.cron.recurrence_of`` on a worker (cron as well)."""


def next_deadline(state: TaskState, retention_ms: int | None = None) -> int | None:
    """When (Unix ms) the task next needs a timer event, or None if time cannot change it.

    ``retention_ms``: how long a finished task (or a placeholder found missing) stays in the
    table after its last change; None keeps it forever.
    """
    status = state.status
    if status in (Status.RUNNING, Status.DISPATCHED):
        return state.deadline_ms
    if status is Status.RETRYING:
        return state.retry_due_at_ms
    if status is Status.AWAITED:
        return state.awaited_until_ms
    if status is Status.PENDING and state.is_delayed:
        return state.not_before_ms
    if status is Status.PERIODIC and state.periodic is not None:
        return state.periodic.next_due_ms
    if status is Status.COMPLETED and state.result is not None:
        return state.result_expires_at_ms()
    if retention_ms is not None and (status.is_terminal or status is Status.MISSING):
        return state.updated_at_ms + retention_ms
    return None


def due_event(
    state: TaskState,
    now_ms: int,
    retention_ms: int | None = None,
    recurrence_of: RecurrenceOf = every_of,
) -> Event | None:
    """The timer event the task needs at ``now_ms``, or None if nothing is due.

    ``recurrence_of`` gives a periodic definition's recurrence (None: not known here, so
    nothing is due: a cron definition met by the core alone).
    """
    deadline = next_deadline(state, retention_ms)
    if deadline is None or now_ms < deadline:
        return None
    if state.status is Status.PERIODIC and state.periodic is not None:
        return _occurrence_event(state, state.periodic, now_ms, recurrence_of)
    payload: Payload
    status = state.status
    if status is Status.PENDING:
        payload, kind = TaskDelayElapsed(deadline), "delay-elapsed"
    elif status is Status.RETRYING:
        payload, kind = TaskRetryDue(state.attempt), "retry-due"
    elif status is Status.AWAITED:
        payload, kind = DependencyWaitExpired(), "wait-expired"
    elif status in (Status.RUNNING, Status.DISPATCHED):
        payload, kind = TaskTimedOut(state.attempt), "timed-out"
    elif status is Status.COMPLETED and state.result is not None:
        payload, kind = TaskResultExpired(), "result-expired"
    else:
        payload, kind = TaskRetired(retention_ms or 0), "retired"
    event_id = derived_event_id(state.task_id, kind, state.attempt, deadline)
    return Event(event_id, state.task_id, now_ms, Source.TIMER, payload)


def _occurrence_event(
    state: TaskState, spec: PeriodicSpec, now_ms: int, recurrence_of: RecurrenceOf
) -> Event | None:
    recurrence = recurrence_of(spec)
    if recurrence is None:
        return None
    due = due_occurrence(spec, now_ms, recurrence)
    if due is None:
        return None
    # the id names the occurrence alone: two timers that see it due write one event
    event_id = derived_event_id(state.task_id, "occurrence-due", due.occurrence_ms)
    payload = PeriodicOccurrenceDue(due.occurrence_ms, due.next_due_ms, due.skipped)
    return Event(event_id, state.task_id, now_ms, Source.TIMER, payload)


class DeadlineIndex:
    """Tasks by their next deadline: one entry per task, whatever the number of its events.

    A heap of (deadline, task) with the latest deadline of each task beside it; an entry that
    is no longer a task's latest is skipped when popped, and the heap is rebuilt when such
    stale entries outnumber the live ones.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._latest: dict[str, int] = {}

    def track(self, task_id: str, deadline_ms: int | None) -> None:
        """Look at ``task_id`` again at ``deadline_ms`` (None: never)."""
        if deadline_ms is None:
            self._latest.pop(task_id, None)
            return
        if self._latest.get(task_id) == deadline_ms:
            return
        self._latest[task_id] = deadline_ms
        heapq.heappush(self._heap, (deadline_ms, task_id))
        if len(self._heap) > 2 * len(self._latest) + 1_000:
            self._heap = [(deadline, task) for task, deadline in self._latest.items()]
            heapq.heapify(self._heap)

    def pop_due(self, now_ms: int) -> list[str]:
        """The tasks whose deadline is at or before ``now_ms``, each once."""
        due: dict[str, None] = {}
        while self._heap and self._heap[0][0] <= now_ms:
            deadline, task_id = heapq.heappop(self._heap)
            if self._latest.get(task_id) == deadline:
                del self._latest[task_id]
                due[task_id] = None
        return list(due)

    def clear(self) -> None:
        """Forget everything (before a rebuild)."""
        self._heap.clear()
        self._latest.clear()

    def __len__(self) -> int:
        return len(self._latest)
