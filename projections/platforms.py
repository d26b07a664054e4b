"""Per-platform statistics: outcomes, durations, attempts and time held back by the scheduler.

Everything is computed from the folded records alone, with event times (``occurred_at_ms``):

- ``tasks``: tasks created; ``statuses``: how many are in each status now; ``outcomes``: how many
  ended ``completed`` / ``failed`` / ``cancelled``.
- durations (count, total, mean, p50, p95, max, in ms): ``total_ms`` from creation to completion,
  ``queue_ms`` from each readiness to the dispatch (or start) that ended it, ``run_ms`` of each
  attempt from its start to its end (completed, failed, timed out).
- ``attempts``: attempts made by tasks that completed or failed (mean, max), ``retries`` (an
  attempt failed or timed out and another one was scheduled; a "rate limited" answer is not a
  retry, see ``throttled``), ``timeouts``.
- ``throttled``: answers "rate limited, retry after" (``TaskFailed.throttled_ms``) and the delays
  they asked for.
- ``held``: per scheduler reason (``rate_limit``, ``concurrency``, ``overall_concurrency``,
  ``paused``) how many tasks were held back and for how long: from the ``TaskDeferred`` event
  (written the first time the scheduler holds a ready task back) to the moment the task left
  ``ready``. The scheduler writes one ``TaskDeferred`` per readiness, so a task held for one
  reason and then another is counted under the first.
- ``rejected``: records refused by the fold for tasks of this platform.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from projections.log import Step, Verdict
from streams.domain import Status, TaskDeferred, TaskFailed, TaskState, TaskTimedOut

_ENDINGS = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)
_LEAVE_QUEUE = (Status.DISPATCHED, Status.RUNNING)


def distribution(values_ms: list[int]) -> dict[str, float | int]:
    """Count, total, mean, p50, p95 and max of ``values_ms`` (nearest-rank percentiles)."""
    if not values_ms:
        return {"count": 0}
    ordered = sorted(values_ms)
    n = len(ordered)

    def rank(percent: int) -> int:
        return ordered[max(0, -(-percent * n // 100) - 1)]

    total = sum(ordered)
    return {
        "count": n,
        "total_ms": total,
        "mean_ms": round(total / n, 1),
        "p50_ms": rank(50),
        "p95_ms": rank(95),
        "max_ms": ordered[-1],
    }


@dataclass
class PlatformTally:
    """What the log says about one platform's tasks."""

    tasks: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    total_ms: list[int] = field(default_factory=list)
    queue_ms: list[int] = field(default_factory=list)
    run_ms: list[int] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    retries: int = 0
    timeouts: int = 0
    throttled: int = 0
    throttled_ms: int = 0
    held: Counter[str] = field(default_factory=Counter)
    held_ms: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)

    def to_json(self, statuses: Counter[str]) -> dict[str, Any]:
        """The tally as a JSON-ready dict; ``statuses`` counts its tasks' current statuses."""
        return {
            "tasks": self.tasks,
            "statuses": dict(sorted(statuses.items())),
            "outcomes": {name: self.outcomes[name] for name in map(str, _ENDINGS)},
            "total_ms": distribution(self.total_ms),
            "queue_ms": distribution(self.queue_ms),
            "run_ms": distribution(self.run_ms),
            "attempts": {
                "tasks": len(self.attempts),
                "sum": sum(self.attempts),
                "mean": round(sum(self.attempts) / len(self.attempts), 3) if self.attempts else 0,
                "max": max(self.attempts, default=0),
            },
            "retries": self.retries,
            "timeouts": self.timeouts,
            "throttled": {"count": self.throttled, "total_ms": self.throttled_ms},
            "held": {
                reason: {"count": self.held[reason], "total_ms": self.held_ms[reason]}
                for reason in sorted(self.held)
            },
            "rejected": dict(sorted(self.rejected.items())),
        }


class PlatformStatsView:
    """Statistics per platform (tasks not created yet, such as awaited ids, have none)."""

    name = "platforms"

    def __init__(self) -> None:
        self._tallies: dict[str, PlatformTally] = {}
        self._status: dict[str, tuple[str, Status]] = {}
        self._held_since: dict[str, tuple[str, int]] = {}

    def tally(self, platform: str) -> PlatformTally:
        """The platform's tally (an empty one if it has no task)."""
        return self._tallies.get(platform, PlatformTally())

    def observe(self, step: Step) -> None:
        """Count what the record did to its task."""
        state = step.after or step.before
        if state is None or not state.platform or state.periodic is not None:
            return  # (a periodic definition is no task: its occurrences are counted as tasks)
        tally = self._tallies.get(state.platform)
        if tally is None:
            tally = self._tallies[state.platform] = PlatformTally()
        if step.verdict is Verdict.REJECTED:
            tally.rejected[step.reason] += 1
            return
        if step.verdict is not Verdict.APPLIED or step.after is None or step.event is None:
            return
        self._status[step.task_id] = (state.platform, step.after.status)
        at_ms = step.event.occurred_at_ms
        payload = step.event.payload
        throttled = isinstance(payload, TaskFailed) and payload.throttled_ms > 0
        if isinstance(payload, TaskTimedOut):
            tally.timeouts += 1
        elif isinstance(payload, TaskFailed) and throttled:
            tally.throttled += 1
            tally.throttled_ms += payload.throttled_ms
        elif isinstance(payload, TaskDeferred) and step.after.held_reason:
            self._held_since.setdefault(step.task_id, (step.after.held_reason, at_ms))
        before = step.before
        if before is None or not before.status.is_created:
            if step.after.status.is_created:
                tally.tasks += 1
        elif before.status is not step.after.status:
            self._left(tally, step.task_id, before, step.after, at_ms)
        for status in step.entered:
            self._entered(tally, step.after, status, at_ms, throttled)

    def _left(
        self, tally: PlatformTally, task_id: str, before: TaskState, after: TaskState, at_ms: int
    ) -> None:
        since_ms = before.history[-1].at_ms if before.history else at_ms
        if before.status is Status.READY:
            if after.status in _LEAVE_QUEUE:
                tally.queue_ms.append(at_ms - since_ms)
            held = self._held_since.pop(task_id, None)
            if held is not None:
                tally.held[held[0]] += 1
                tally.held_ms[held[0]] += at_ms - held[1]
        elif before.status is Status.RUNNING:
            tally.run_ms.append(at_ms - since_ms)

    def _entered(
        self, tally: PlatformTally, after: TaskState, status: Status, at_ms: int, throttled: bool
    ) -> None:
        if status is Status.RETRYING:
            tally.retries += 0 if throttled else 1
        elif status in _ENDINGS:
            tally.outcomes[str(status)] += 1
            if status is Status.COMPLETED:
                tally.total_ms.append(at_ms - after.created_at_ms)
            if status is not Status.CANCELLED:
                tally.attempts.append(after.attempt)

    def to_json(self) -> dict[str, Any]:
        """``{"platforms": {platform: tally}}``."""
        statuses: dict[str, Counter[str]] = {}
        for platform, status in self._status.values():
            statuses.setdefault(platform, Counter())[str(status)] += 1
        return {
            "platforms": {
                platform: tally.to_json(statuses.get(platform, Counter()))
                for platform, tally in sorted(self._tallies.items())
            }
        }
