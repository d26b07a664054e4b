"""Builders of task events and a small in-memory cluster, for the unit tests of the fold.

Builders give every event a readable, unique id and a fixed time (``T0`` unless told), so
states built from them are comparable. :func:`state_in` builds a task in any status.

:class:`Cluster` stands in for Kafka and the fold agents: one FIFO inbox (a "partition") per task
id. :meth:`Cluster.deliver` pops the next event of one inbox, applies it, stores the new state and
routes every ``FollowUp`` to the inbox of the task it is keyed by; the other effects are collected
in lists. Tests choose the order of deliveries across inboxes, which is all the freedom Kafka has.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from streams.domain import (
    CompletedTask,
    DependencyOutcome,
    DependencyRegistered,
    DependencyResolved,
    DependencyWaitExpired,
    Event,
    FollowUp,
    Outcome,
    Payload,
    PeriodicCancelled,
    PeriodicOccurrenceDue,
    PeriodicScheduled,
    ReadyToSchedule,
    Rejected,
    Released,
    Source,
    Status,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskDeferred,
    TaskDelayElapsed,
    TaskDispatched,
    TaskFailed,
    TaskProgress,
    TaskResultExpired,
    TaskRetired,
    TaskRetryDue,
    TaskRetryRequested,
    TaskRetryScheduled,
    TaskStarted,
    TaskState,
    TaskTimedOut,
    apply,
)
from streams.domain.timers import due_event

T0 = 1_700_000_000_000
"""The time of every event built here unless told otherwise."""
TIMEOUT_MS = 60_000
RETRY_DELAY_MS = 1_000
WAIT_MS = 3_600_000
MAX_ATTEMPTS = 3
RESULT = b'{"profile": "ok"}'

_ids = itertools.count(1)


def event_id(hint: str) -> str:
    """A fresh, unique, readable event id."""
    return f"{hint}#{next(_ids)}"


def event(
    task_id: str,
    payload: Payload,
    *,
    at: int = T0,
    eid: str | None = None,
    source: Source = Source.CLIENT,
) -> Event:
    """An event about ``task_id`` (a fresh id unless ``eid`` is given)."""
    return Event(
        eid or event_id(f"{task_id}/{type(payload).__name__}"), task_id, at, source, payload
    )


def created(
    task_id: str,
    *dependencies: str,
    at: int = T0,
    eid: str | None = None,
    **policy: Any,
) -> Event:
    """``TaskCreated`` with a valid default policy; ``policy`` overrides any payload field."""
    payload = TaskCreated(
        task_type="profile_scrape",
        platform="linkedin",
        target=f"https://example.com/{task_id}",
        priority=5,
        dependencies=tuple(dependencies),
        timeout_ms=TIMEOUT_MS,
        max_attempts=MAX_ATTEMPTS,
        retry_delay_ms=RETRY_DELAY_MS,
        result_ttl_ms=86_400_000,
        dependency_wait_ms=WAIT_MS,
    )
    return event(task_id, replace(payload, **policy), at=at, eid=eid)


def dispatched(task_id: str, *, at: int = T0, eid: str | None = None) -> Event:
    return event(task_id, TaskDispatched(), at=at, eid=eid, source=Source.SCHEDULER)


def started(task_id: str, *, at: int = T0, eid: str | None = None) -> Event:
    return event(task_id, TaskStarted(), at=at, eid=eid, source=Source.EXECUTOR)


def progress(task_id: str, value: float, *, at: int = T0, eid: str | None = None) -> Event:
    return event(task_id, TaskProgress(value), at=at, eid=eid, source=Source.EXECUTOR)


def completed(
    task_id: str, result: bytes = RESULT, *, at: int = T0, eid: str | None = None
) -> Event:
    return event(task_id, TaskCompleted(result), at=at, eid=eid, source=Source.EXECUTOR)


def failed(
    task_id: str,
    error: str = "boom",
    *,
    retryable: bool = True,
    throttled_ms: int = 0,
    at: int = T0,
    eid: str | None = None,
) -> Event:
    payload = TaskFailed(error, retryable=retryable, throttled_ms=throttled_ms)
    return event(task_id, payload, at=at, eid=eid, source=Source.EXECUTOR)


def cancelled(
    task_id: str, reason: str = "cancelled by user", *, at: int = T0, eid: str | None = None
) -> Event:
    return event(task_id, TaskCancelled(reason), at=at, eid=eid)


def timed_out(task_id: str, attempt: int, *, at: int, eid: str | None = None) -> Event:
    return event(task_id, TaskTimedOut(attempt), at=at, eid=eid, source=Source.TIMER)


def result_expired(task_id: str, *, at: int, eid: str | None = None) -> Event:
    return event(task_id, TaskResultExpired(), at=at, eid=eid, source=Source.TIMER)


def retired(task_id: str, retention_ms: int = 0, *, at: int, eid: str | None = None) -> Event:
    return event(task_id, TaskRetired(retention_ms), at=at, eid=eid, source=Source.TIMER)


def retry_scheduled(
    task_id: str, attempt: int, delay_ms: int, *, at: int = T0, eid: str | None = None
) -> Event:
    payload = TaskRetryScheduled(attempt, delay_ms, at + delay_ms)
    return event(task_id, payload, at=at, eid=eid, source=Source.FOLD)


def retry_due(task_id: str, attempt: int, *, at: int, eid: str | None = None) -> Event:
    return event(task_id, TaskRetryDue(attempt), at=at, eid=eid, source=Source.TIMER)


def retry_requested(task_id: str, *, at: int = T0, eid: str | None = None) -> Event:
    return event(task_id, TaskRetryRequested(), at=at, eid=eid)


def registered(
    task_id: str,
    dependent_id: str,
    waiting: Iterable[str] | None = None,
    *,
    wait_ms: int = WAIT_MS,
    at: int = T0,
    eid: str | None = None,
) -> Event:
    """``DependencyRegistered`` keyed by ``task_id``: ``dependent_id`` waits for it."""
    chain = tuple(sorted(waiting)) if waiting is not None else (dependent_id,)
    payload = DependencyRegistered(dependent_id, chain, wait_ms)
    return event(task_id, payload, at=at, eid=eid, source=Source.FOLD)


def resolved(
    task_id: str,
    dependency_id: str,
    outcome: DependencyOutcome = DependencyOutcome.COMPLETED,
    *,
    at: int = T0,
    eid: str | None = None,
) -> Event:
    """``DependencyResolved`` keyed by the dependent ``task_id``."""
    payload = DependencyResolved(dependency_id, outcome)
    return event(task_id, payload, at=at, eid=eid, source=Source.FOLD)


def wait_expired(task_id: str, *, at: int, eid: str | None = None) -> Event:
    return event(task_id, DependencyWaitExpired(), at=at, eid=eid, source=Source.TIMER)


def deferred(
    task_id: str,
    reason: str = "rate_limit",
    detail: str = "5 calls per 1 s",
    until_ms: int = T0 + 1_000,
    *,
    at: int = T0,
    eid: str | None = None,
) -> Event:
    payload = TaskDeferred(reason, detail, until_ms)
    return event(task_id, payload, at=at, eid=eid, source=Source.SCHEDULER)


def delay_elapsed(task_id: str, not_before_ms: int, *, at: int, eid: str | None = None) -> Event:
    payload = TaskDelayElapsed(not_before_ms)
    return event(task_id, payload, at=at, eid=eid, source=Source.TIMER)


def periodic_scheduled(
    name: str,
    *,
    every_ms: int = 2_000,
    cron: str = "",
    start_ms: int = T0,
    first_due_ms: int = 0,
    at: int = T0,
    eid: str | None = None,
    **template: Any,
) -> Event:
    """``PeriodicScheduled`` keyed ``periodic:<name>``; ``template`` overrides task fields."""
    payload = PeriodicScheduled(
        task_type="feed_scan",
        platform="twitter",
        target=f"feed/{name}",
        priority=5,
        timeout_ms=TIMEOUT_MS,
        max_attempts=MAX_ATTEMPTS,
        retry_delay_ms=RETRY_DELAY_MS,
        result_ttl_ms=86_400_000,
        dependency_wait_ms=WAIT_MS,
        max_rate_limited=10,
        every_ms=every_ms,
        cron=cron,
        start_ms=start_ms,
        first_due_ms=first_due_ms,
    )
    return event(f"periodic:{name}", replace(payload, **template), at=at, eid=eid)


def periodic_cancelled(name: str, *, at: int = T0, eid: str | None = None) -> Event:
    return event(f"periodic:{name}", PeriodicCancelled("removed by user"), at=at, eid=eid)


def occurrence_due(
    definition: str,
    occurrence_ms: int,
    next_due_ms: int,
    skipped: int = 0,
    *,
    at: int,
    eid: str | None = None,
) -> Event:
    """``PeriodicOccurrenceDue`` keyed by ``definition`` (``periodic:<name>``)."""
    payload = PeriodicOccurrenceDue(occurrence_ms, next_due_ms, skipped)
    return event(definition, payload, at=at, eid=eid, source=Source.TIMER)


# -- applying ---------------------------------------------------------------------------------


def accept(state: TaskState | None, ev: Event) -> Outcome:
    """Apply ``ev``, which must be accepted; the outcome (its state is never None)."""
    outcome = apply(state, ev)
    assert not outcome.is_rejected, f"{ev.kind} refused: {outcome.effects}"
    assert outcome.state is not None
    return outcome


def refuse(state: TaskState | None, ev: Event) -> Rejected:
    """Apply ``ev``, which must be refused: exactly one ``Rejected`` and the state unchanged."""
    outcome = apply(state, ev)
    assert len(outcome.effects) == 1, f"{ev.kind} accepted: {outcome}"
    rejection = outcome.effects[0]
    assert isinstance(rejection, Rejected), f"{ev.kind} not refused: {outcome.effects}"
    assert outcome.state == state
    return rejection


def play(*events: Event, state: TaskState | None = None) -> TaskState:
    """Apply ``events`` in order, each of which must be accepted; the final state."""
    for ev in events:
        state = accept(state, ev).state
    assert state is not None
    return state


def follow_ups(outcome: Outcome) -> list[Event]:
    """The events the outcome asks to write to ``task.events``."""
    return [e.event for e in outcome.effects if isinstance(e, FollowUp)]


def readies(outcome: Outcome) -> list[ReadyToSchedule]:
    return [e for e in outcome.effects if isinstance(e, ReadyToSchedule)]


def only_follow_up(outcome: Outcome) -> Event:
    """The one follow-up event of ``outcome``."""
    (follow_up,) = follow_ups(outcome)
    return follow_up


def state_in(status: Status | None, task_id: str = "t") -> TaskState | None:
    """A task ``task_id`` in ``status`` (None: never seen).

    Created tasks depend on ``"a"`` (resolved unless pending) and allow ``MAX_ATTEMPTS``
    attempts; the running attempt (if any) is attempt 1, dispatched at ``T0 + 1000`` and started
    at ``T0 + 2000``.
    """
    if status is None:
        return None
    if status is Status.PERIODIC:  # a definition: keyed periodic:<task_id>
        return play(periodic_scheduled(task_id, at=T0))
    if status is Status.AWAITED:
        return play(registered(task_id, "d", at=T0))
    if status is Status.MISSING:
        return play(wait_expired(task_id, at=T0 + WAIT_MS), state=state_in(Status.AWAITED, task_id))
    pending = play(created(task_id, "a", at=T0))
    if status is Status.PENDING:
        return pending
    ready = play(resolved(task_id, "a", at=T0), state=pending)
    if status is Status.READY:
        return ready
    if status is Status.CANCELLED:
        return play(cancelled(task_id, at=T0 + 500), state=ready)
    dispatched_ = play(dispatched(task_id, at=T0 + 1_000), state=ready)
    if status is Status.DISPATCHED:
        return dispatched_
    running = play(started(task_id, at=T0 + 2_000), state=dispatched_)
    if status is Status.RUNNING:
        return running
    if status is Status.COMPLETED:
        return play(completed(task_id, at=T0 + 3_000), state=running)
    if status is Status.FAILED:
        return play(failed(task_id, retryable=False, at=T0 + 3_000), state=running)
    assert status is Status.RETRYING
    outcome = accept(running, failed(task_id, at=T0 + 3_000))
    return play(only_follow_up(outcome), state=outcome.state)


# -- the cluster ------------------------------------------------------------------------------

Driver = Callable[["Cluster", Event, Outcome], None]
"""Called after every delivery; may submit more events (an executor, a timer)."""


@dataclass
class Cluster:
    """Per-task FIFO inboxes, the fold applied on delivery, follow-ups routed between inboxes."""

    driver: Driver | None = None
    states: dict[str, TaskState] = field(default_factory=dict)
    inboxes: dict[str, deque[Event]] = field(default_factory=dict)
    ready: list[ReadyToSchedule] = field(default_factory=list)
    completed: list[CompletedTask] = field(default_factory=list)
    released: list[Released] = field(default_factory=list)
    rejected: list[tuple[Event, Rejected]] = field(default_factory=list)
    delivered: list[Event] = field(default_factory=list)
    """Every event applied, in order: the log a replay would fold."""

    def submit(self, *events: Event) -> None:
        """Append ``events`` to the inboxes of the tasks they are about."""
        for ev in events:
            self.inboxes.setdefault(ev.task_id, deque()).append(ev)

    def busy(self) -> list[str]:
        """Ids of the tasks with undelivered events, sorted."""
        return sorted(task_id for task_id, inbox in self.inboxes.items() if inbox)

    def deliver(self, task_id: str) -> Outcome:
        """Apply the next event of ``task_id``'s inbox and route its effects."""
        ev = self.inboxes[task_id].popleft()
        outcome = apply(self.states.get(task_id), ev)
        self.delivered.append(ev)
        if outcome.state is not None:
            self.states[task_id] = outcome.state
        for effect in outcome.effects:
            if isinstance(effect, FollowUp):
                self.submit(effect.event)
            elif isinstance(effect, ReadyToSchedule):
                self.ready.append(effect)
            elif isinstance(effect, CompletedTask):
                self.completed.append(effect)
            elif isinstance(effect, Released):
                self.released.append(effect)
            else:
                self.rejected.append((ev, effect))
        if self.driver is not None:
            self.driver(self, ev, outcome)
        return outcome

    def run(self, choose: Callable[[list[str]], str] = min, *, max_steps: int = 100_000) -> None:
        """Deliver until every inbox is empty; ``choose`` picks the next inbox among the busy."""
        for _ in range(max_steps):
            busy = self.busy()
            if not busy:
                return
            self.deliver(choose(busy))
        raise AssertionError(f"still busy after {max_steps} deliveries: {self.busy()}")

    def tick(self, now_ms: int) -> list[Event]:
        """Submit the timer event every task needs at ``now_ms`` (see ``timers.due_event``)."""
        due = [ev for state in self.states.values() if (ev := due_event(state, now_ms))]
        self.submit(*due)
        return due

    def status(self, task_id: str) -> Status | None:
        state = self.states.get(task_id)
        return None if state is None else state.status

    def statuses(self) -> dict[str, Status]:
        return {task_id: state.status for task_id, state in sorted(self.states.items())}

    def ready_ids(self) -> list[str]:
        """Ids of the tasks announced ready, in the order they were."""
        return [r.task_id for r in self.ready]
