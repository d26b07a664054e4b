"""The demo's live view: it folds ``task.events`` itself, with the same pure fold as the worker.

Reading the log (read committed) and applying :func:`streams.domain.apply` gives every task's
state without asking the worker; the progress bars and the final summary come from those states
and from the events themselves (retries, "rate limited" answers, deferrals).
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field

from streams.domain import (
    Event,
    Status,
    TaskDeferred,
    TaskFailed,
    TaskRetryScheduled,
    TaskState,
    apply,
)


@dataclass
class LiveView:
    """Task states and counters built from the events seen so far."""

    topic_prefix: str = ""
    states: dict[str, TaskState] = field(default_factory=dict)
    retries: int = 0
    throttled: int = 0
    deferrals: Counter[str] = field(default_factory=Counter)
    events: int = 0

    def apply(self, event: Event) -> None:
        """Fold one event in."""
        self.events += 1
        outcome = apply(self.states.get(event.task_id), event)
        if outcome.is_rejected or outcome.state is None:
            return
        self.states[event.task_id] = outcome.state
        payload = event.payload
        if isinstance(payload, TaskRetryScheduled) and outcome.state is not None:
            self.retries += 1
        elif isinstance(payload, TaskFailed) and payload.throttled_ms:
            self.throttled += 1
        elif isinstance(payload, TaskDeferred):
            self.deferrals[payload.reason] += 1

    def done_by_platform(self) -> Counter[str]:
        """Tasks in a terminal status, per platform."""
        return Counter(s.platform for s in self.states.values() if s.status.is_terminal)

    def outcomes(self) -> Counter[str]:
        """Tasks per status."""
        return Counter(str(s.status) for s in self.states.values() if s.status.is_created)

    def durations_s(self) -> list[float]:
        """First start to completion of each completed task."""
        return [
            d for s in self.states.values() if (d := _between(s, Status.RUNNING, Status.COMPLETED))
        ]

    def queue_waits_s(self) -> list[float]:
        """Ready to dispatched, for every dispatch."""
        waits = []
        for state in self.states.values():
            ready_at = None
            for transition in state.history:
                if transition.status is Status.READY:
                    ready_at = transition.at_ms
                elif transition.status is Status.DISPATCHED and ready_at is not None:
                    waits.append((transition.at_ms - ready_at) / 1000)
        return waits

    def example(self, status: Status) -> str | None:
        """The id of some task in ``status`` (preferring one that was retried)."""
        candidates = [s for s in self.states.values() if s.status is status]
        candidates.sort(key=lambda s: -s.attempt)
        return candidates[0].task_id if candidates else None


def percentiles(values: list[float]) -> tuple[float, float, float]:
    """p50, p95 and p99 of ``values`` (zeros if empty)."""
    if len(values) < 2:
        value = values[0] if values else 0.0
        return value, value, value
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98]


def _between(state: TaskState, start: Status, end: Status) -> float | None:
    first = next((t.at_ms for t in state.history if t.status is start), None)
    last = next((t.at_ms for t in reversed(state.history) if t.status is end), None)
    if first is None or last is None:
        return None
    return max(0, last - first) / 1000
