"""The fold: ``apply(state, event) -> Outcome``, the one definition of how a task evolves.

The live fold agent and the offline replay both call :func:`apply`, so the same log always
gives the same states. It never raises for bad input and never reads a clock: a refused event
comes back as a :class:`Rejected` effect with the state unchanged, and time comes from
``event.occurred_at_ms``.

Dependencies across partitions (a task and its dependency usually live in different
partitions, and each partition is folded by one worker) are a protocol of events:

1. B is created depending on A: B is ``pending`` and emits ``DependencyRegistered(B)`` keyed by A.
2. A records B as a dependent (an ``awaited`` placeholder if A does not exist yet) and answers
   ``DependencyResolved(A, outcome)`` keyed by B when it finishes, or at once if it has.
3. B counts its open dependencies down; at zero it is ``ready``. A dependency that failed, was
   cancelled, or was never created cancels B, and B tells its own dependents in turn.

Cycles are found by the ``waiting`` set carried by registrations: the tasks that wait, directly
or transitively, on the registering task. A pending task forwards what it learns to its own open
dependencies; a task that finds itself in the set is in a cycle and fails, which cancels the
rest of the cycle through step 3.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from streams.domain import bounds
from streams.domain.effects import (
    CompletedTask,
    Effect,
    FollowUp,
    ReadyToSchedule,
    Rejected,
    RejectionCode,
    Released,
    ResultExpired,
)
from streams.domain.events import (
    MAX_RATE_LIMITED,
    DependencyOutcome,
    DependencyRegistered,
    DependencyResolved,
    DependencyWaitExpired,
    Event,
    Payload,
    PeriodicCancelled,
    PeriodicOccurrenceDue,
    PeriodicScheduled,
    Source,
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
    TaskTimedOut,
    derived_event_id,
)
from streams.domain.periodic import (
    Every,
    every_of,
    is_definition_id,
    name_of,
    occurrence_id,
    schedule_problem,
)
from streams.domain.periodic import name_problem as periodic_name_problem
from streams.domain.retry import retry_delay_ms
from streams.domain.state import (
    PeriodicSpec,
    Status,
    TaskPolicy,
    TaskState,
    Transition,
    evolve,
)

MAX_RESULT_BYTES = bounds.MAX_RESULT_BYTES
"""Largest result accepted in ``TaskCompleted`` (see ``streams.domain.bounds``)."""

_ACTIVE = frozenset(
    {Status.PENDING, Status.READY, Status.DISPATCHED, Status.RUNNING, Status.RETRYING}
)
_SCHEDULED = frozenset({Status.READY, Status.DISPATCHED, Status.RUNNING})
"""Statuses in which a task is queued at, or holds a slot of, its platform's scheduler."""
_OUTCOME_OF = {
    Status.COMPLETED: DependencyOutcome.COMPLETED,
    Status.FAILED: DependencyOutcome.FAILED,
    Status.CANCELLED: DependencyOutcome.CANCELLED,
    Status.MISSING: DependencyOutcome.MISSING,
}


@dataclass(frozen=True)
class Outcome:
    """The result of applying one event: the new state (None: still no task) and its effects."""

    state: TaskState | None
    effects: tuple[Effect, ...] = ()

    @property
    def is_rejected(self) -> bool:
        """True if the event was refused."""
        return any(isinstance(e, Rejected) for e in self.effects)


class _Refusal(Exception):
    """Raised inside a handler to refuse the event; :func:`apply` turns it into ``Rejected``."""

    def __init__(self, code: RejectionCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def apply(state: TaskState | None, event: Event) -> Outcome:
    """Apply ``event`` to ``state`` (None if the task id was never seen).

    Returns the new state and the effects to carry out. An event whose id was already applied
    changes nothing and has no effect; a refused event leaves the state as it was and has
    exactly one effect, :class:`Rejected`.
    """
    if state is not None and event.event_id in state.seen_event_ids:
        return Outcome(state)
    if state is not None and state.task_id != event.task_id:
        return _refused(state, RejectionCode.INVALID_PAYLOAD, "event is for another task")
    handler = _HANDLERS[type(event.payload)]
    try:
        _check_bounds(event)
        new_state, effects = handler(state, event, event.payload)
    except _Refusal as refusal:
        return _refused(state, refusal.code, refusal.reason)
    if new_state is None:  # retired: the task leaves the table (its events stay in the log)
        return Outcome(None, effects)
    seen = (*new_state.seen_event_ids, event.event_id)[-bounds.SEEN_EVENT_IDS_KEPT :]
    return Outcome(
        evolve(new_state, seen_event_ids=seen, updated_at_ms=event.occurred_at_ms), effects
    )


def fold(
    events: Iterable[Event], states: dict[str, TaskState] | None = None
) -> dict[str, TaskState]:
    """Apply ``events`` in order to ``states`` (a fresh dict if None); effects are dropped.

    This is replay: every effect that changes state is itself an event in the log.
    """
    result = {} if states is None else states
    for event in events:
        outcome = apply(result.get(event.task_id), event)
        if outcome.state is not None:
            result[event.task_id] = outcome.state
        else:  # never seen, or retired
            result.pop(event.task_id, None)
    return result


MAX_LOCAL_FOLLOW_UPS = 1_000
"""Follow-ups applied at once per event (:func:`apply_here`); any further ones wait for their
record, which is written anyway."""


@dataclass(frozen=True)
class Applied:
    """One event applied by :func:`apply_here`: the state it met and its outcome."""

    event: Event
    before: TaskState | None
    outcome: Outcome


def apply_here(
    event: Event,
    state_of: Callable[[str], TaskState | None],
    here: Callable[[str], bool],
) -> list[Applied]:
    """Apply ``event``, then at once every follow-up it causes for a task folded here.

    A follow-up (a dependency's answer, a registration, a scheduled retry) is an event for
    another task, written to ``task.events``; when that task is folded in the same place
    (``here(task_id)``: the same partition), waiting for the record to come back through the log
    costs a commit and a fetch. So it is applied now, in order (breadth-first, as the log would
    hold them), up to :data:`MAX_LOCAL_FOLLOW_UPS`. Its record is still written: the log stays
    complete, and when the record comes back the task has seen its event id (a duplicate, no
    effect). The live fold and the replay both fold this way, so they agree.

    ``state_of`` gives a task's state before ``event``; the states the steps make are in the
    returned list (the last step of a task holds its newest state). Effects are not removed:
    the caller writes every follow-up, applied here or not.
    """
    states: dict[str, TaskState | None] = {}
    steps: list[Applied] = []
    queue = [event]
    local = 0
    for current in queue:
        task_id = current.task_id
        before = states[task_id] if task_id in states else state_of(task_id)
        outcome = apply(before, current)
        states[task_id] = outcome.state
        steps.append(Applied(current, before, outcome))
        for effect in outcome.effects:
            if (
                type(effect) is FollowUp
                and local < MAX_LOCAL_FOLLOW_UPS
                and here(effect.event.task_id)
            ):
                queue.append(effect.event)
                local += 1
    return steps


def _refused(state: TaskState | None, code: RejectionCode, reason: str) -> Outcome:
    return Outcome(state, (Rejected(code, reason),))


# -- bounds ---------------------------------------------------------------------------------


def _check_bounds(event: Event) -> None:
    """Refuse an event whose fields are over the bounds of ``streams.domain.bounds``.

    Whatever a producer wrote, an accepted event can then never grow a state (or an output)
    past what its topic takes. Free text (errors, reasons) is cut by the handlers instead.
    """
    _refuse_id(bounds.id_problem("task_id", event.task_id))
    if not event.event_id or len(event.event_id) > bounds.MAX_EVENT_ID_CHARS:
        raise _Refusal(
            RejectionCode.INVALID_PAYLOAD,
            f"event_id must have 1 to {bounds.MAX_EVENT_ID_CHARS} characters",
        )
    p = event.payload
    if isinstance(p, TaskCreated):
        _check_created(p)
        if p.not_before_ms < 0 or p.not_before_ms - event.occurred_at_ms > bounds.MAX_POLICY_MS:
            _refuse(
                f"not_before_ms {p.not_before_ms} is negative or more than "
                f"{bounds.MAX_POLICY_MS} ms after the event",
                RejectionCode.INVALID_PAYLOAD,
            )
    elif isinstance(p, PeriodicScheduled):
        _check_created(_template(p))
        _refuse_span("every_ms", p.every_ms)
    elif isinstance(p, TaskCompleted):
        _refuse(bounds.result_problem(len(p.result)), RejectionCode.RESULT_TOO_LARGE)
        if len(p.content_type) > bounds.MAX_CONTENT_TYPE_CHARS:
            _refuse(f"content_type over {bounds.MAX_CONTENT_TYPE_CHARS} characters")
    elif isinstance(p, DependencyRegistered):
        _refuse_id(bounds.id_problem("dependent_id", p.dependent_id))
        if len(p.waiting) > bounds.MAX_WAITING + 1:
            _refuse(f"{len(p.waiting)} waiting tasks, more than {bounds.MAX_WAITING + 1}")
        _refuse_id(
            next(filter(None, (bounds.id_problem("waiting id", w) for w in p.waiting)), None)
        )
        _refuse_span("wait_ms", p.wait_ms)
    elif isinstance(p, DependencyResolved):
        _refuse_id(bounds.id_problem("dependency_id", p.dependency_id))
    elif isinstance(p, TaskFailed):
        _refuse_span("throttled_ms", p.throttled_ms)
    elif isinstance(p, TaskRetryScheduled):
        _refuse_span("delay_ms", p.delay_ms)


def _check_created(p: TaskCreated) -> None:
    # over a size bound: too_large; otherwise malformed: invalid_payload (ids: invalid_id)
    for name, value in (("task_type", p.task_type), ("platform", p.platform)):
        _refuse(bounds.name_problem(name, value), _code(len(value) > bounds.MAX_NAME_CHARS))
    target_bytes = len(p.target.encode("utf-8", "surrogatepass"))
    _refuse(bounds.target_problem(p.target), _code(target_bytes > bounds.MAX_TARGET_BYTES))
    too_many = len(p.dependencies) > bounds.MAX_DEPENDENCIES
    problem = bounds.dependencies_problem(p.dependencies)
    _refuse(problem, RejectionCode.TOO_LARGE if too_many else RejectionCode.INVALID_ID)
    if p.priority > bounds.MAX_PRIORITY:
        _refuse(f"priority {p.priority} above {bounds.MAX_PRIORITY}", RejectionCode.INVALID_PAYLOAD)
    if p.max_attempts > bounds.MAX_ATTEMPTS:
        _refuse(f"max_attempts {p.max_attempts} above the limit of {bounds.MAX_ATTEMPTS}")
    if p.max_rate_limited > MAX_RATE_LIMITED:
        _refuse(f"max_rate_limited {p.max_rate_limited} above the limit of {MAX_RATE_LIMITED}")
    for name in ("timeout_ms", "retry_delay_ms", "result_ttl_ms", "dependency_wait_ms"):
        _refuse_span(name, getattr(p, name))


def _code(oversize: bool) -> RejectionCode:
    return RejectionCode.TOO_LARGE if oversize else RejectionCode.INVALID_PAYLOAD


def _refuse(problem: str | None, code: RejectionCode = RejectionCode.TOO_LARGE) -> None:
    if problem is not None:
        raise _Refusal(code, problem)


def _refuse_id(problem: str | None) -> None:
    _refuse(problem, RejectionCode.INVALID_ID)


def _refuse_span(name: str, value_ms: int) -> None:
    if value_ms > bounds.MAX_POLICY_MS:
        _refuse(f"{name} {value_ms} above the limit of {bounds.MAX_POLICY_MS} ms")


_Result = tuple[TaskState, tuple[Effect, ...]]
_Ending = tuple[TaskState | None, tuple[Effect, ...]]
"""What a handler that may remove the task (None) returns."""


# -- creation -------------------------------------------------------------------------------


def _on_created(state: TaskState | None, event: Event, p: TaskCreated) -> _Result:
    if state is not None and state.status.is_created:
        raise _Refusal(RejectionCode.DUPLICATE_TASK, f"task {event.task_id} already exists")
    _validate_created(p)
    dependencies = tuple(dict.fromkeys(p.dependencies))
    placeholder = state if state is not None and state.status is Status.AWAITED else None
    task = TaskState(
        task_id=event.task_id,
        status=Status.PENDING,
        task_type=p.task_type,
        platform=p.platform,
        target=p.target,
        priority=p.priority,
        dependencies=dependencies,
        dependents=placeholder.dependents if placeholder else (),
        waiting=placeholder.waiting if placeholder else (),
        policy=TaskPolicy(
            timeout_ms=p.timeout_ms,
            max_attempts=p.max_attempts,
            retry_delay_ms=p.retry_delay_ms,
            result_ttl_ms=p.result_ttl_ms,
            dependency_wait_ms=p.dependency_wait_ms,
            max_rate_limited=p.max_rate_limited,
        ),
        created_at_ms=event.occurred_at_ms,
        seen_event_ids=state.seen_event_ids if state is not None else (),
    )
    if p.not_before_ms > event.occurred_at_ms:  # a time not in the future is no delay
        task = evolve(task, not_before_ms=p.not_before_ms, is_delayed=True)
    if event.task_id in dependencies:
        return _finish_failed(task, event, "task depends on itself")
    cycle = sorted(set(dependencies) & set(task.waiting))
    if cycle:
        return _finish_failed(task, event, f"dependency cycle through {', '.join(cycle)}")
    if not dependencies and task.is_delayed:
        return _enter(task, Status.PENDING, event), ()
    if not dependencies:
        return _become_ready(task, event)
    task = _enter(
        evolve(task, open_dependencies=tuple(sorted(dependencies))), Status.PENDING, event
    )
    waiting = tuple(sorted({*task.waiting, task.task_id}))
    registrations = tuple(
        _follow_up(event, dep, DependencyRegistered(task.task_id, waiting, p.dependency_wait_ms))
        for dep in dependencies
    )
    return task, registrations


def _validate_created(p: TaskCreated) -> None:
    problems = [
        name
        for name, ok in (
            ("task_type", bool(p.task_type)),
            ("platform", bool(p.platform)),
            ("target", bool(p.target)),
            ("priority", p.priority >= 1),
            ("timeout_ms", p.timeout_ms > 0),
            ("max_attempts", p.max_attempts >= 1),
            ("retry_delay_ms", p.retry_delay_ms >= 0),
            ("result_ttl_ms", p.result_ttl_ms >= 0),
            ("dependency_wait_ms", p.dependency_wait_ms > 0),
            ("max_rate_limited", p.max_rate_limited >= 1),
            ("dependencies", all(bool(d) for d in p.dependencies)),
        )
        if not ok
    ]
    if problems:
        raise _Refusal(RejectionCode.INVALID_PAYLOAD, f"invalid TaskCreated: {', '.join(problems)}")


# -- the dependency protocol ----------------------------------------------------------------


def _on_registered(state: TaskState | None, event: Event, p: DependencyRegistered) -> _Result:
    if p.dependent_id == event.task_id:
        raise _Refusal(RejectionCode.INVALID_PAYLOAD, "a task cannot be its own dependent")
    if state is not None and _is_full(state, p):
        # answered at once and not recorded: the state must stay within its bounds
        return state, (_answer(event, p.dependent_id, DependencyOutcome.REFUSED),)
    if state is None or state.status is Status.AWAITED:
        return _await(state, event, p), ()
    if state.status is Status.PERIODIC:  # a definition is no task: nothing can wait for it
        return state, (_answer(event, p.dependent_id, DependencyOutcome.REFUSED),)
    if state.status is Status.MISSING:  # its dependents were dropped when it was declared missing
        return state, (_late_answer(state, event, p.dependent_id),)
    if state.status.is_terminal and len(state.dependents) >= bounds.MAX_DEPENDENTS:
        return state, (_late_answer(state, event, p.dependent_id),)  # answered, not recorded
    task = evolve(state, dependents=_with(state.dependents, p.dependent_id))
    if task.status in _OUTCOME_OF:
        # recorded even though it is answered at once, so that a task's dependents do not depend
        # on whether their registrations arrived before or after it ended
        return task, (_late_answer(task, event, p.dependent_id),)
    if task.status is not Status.PENDING:
        return task, ()
    if task.task_id in p.waiting:
        return _finish_failed(task, event, f"dependency cycle through {', '.join(p.waiting)}")
    waiting = tuple(sorted({*task.waiting, *p.waiting}))
    if waiting == task.waiting:
        return task, ()
    forwarded = tuple(sorted({*waiting, task.task_id}))
    signal = DependencyRegistered(task.task_id, forwarded, task.policy.dependency_wait_ms)
    return evolve(task, waiting=waiting), tuple(
        _follow_up(event, dep, signal) for dep in task.open_dependencies
    )


def _is_full(state: TaskState, p: DependencyRegistered) -> bool:
    """Whether recording this registration would take ``state`` past its bounds."""
    if p.dependent_id in state.dependents or state.status.is_terminal:
        return False
    if len(state.dependents) >= bounds.MAX_DEPENDENTS:
        return True
    waits = state.status in (Status.AWAITED, Status.PENDING)
    return waits and len({*state.waiting, *p.waiting}) > bounds.MAX_WAITING


def _await(state: TaskState | None, event: Event, p: DependencyRegistered) -> TaskState:
    until = event.occurred_at_ms + p.wait_ms
    if state is None:
        placeholder = TaskState(task_id=event.task_id, status=Status.AWAITED)
        placeholder = _enter(placeholder, Status.AWAITED, event)
    else:
        placeholder = state
        if placeholder.awaited_until_ms is not None:
            until = min(until, placeholder.awaited_until_ms)
    return evolve(
        placeholder,
        dependents=_with(placeholder.dependents, p.dependent_id),
        waiting=tuple(sorted({*placeholder.waiting, *p.waiting})),
        awaited_until_ms=until,
    )


def _on_resolved(state: TaskState | None, event: Event, p: DependencyResolved) -> _Result:
    task = _require_created(state, event)
    if p.dependency_id not in task.dependencies:
        raise _Refusal(RejectionCode.INVALID_PAYLOAD, f"{p.dependency_id} is not a dependency")
    if task.status is not Status.PENDING or p.dependency_id not in task.open_dependencies:
        return task, ()  # a late or repeated answer: the dependency was already accounted for
    if p.outcome is DependencyOutcome.REFUSED:
        reason = (
            f"dependency {p.dependency_id} refused the registration: it has "
            f"{bounds.MAX_DEPENDENTS} dependents, or {bounds.MAX_WAITING} tasks wait on it"
        )
        return _finish(task, event, Status.CANCELLED, reason, DependencyOutcome.CANCELLED)
    if p.outcome is not DependencyOutcome.COMPLETED:
        reason = f"dependency {p.dependency_id} {p.outcome}"
        return _finish(task, event, Status.CANCELLED, reason, DependencyOutcome.CANCELLED)
    remaining = tuple(d for d in task.open_dependencies if d != p.dependency_id)
    task = evolve(task, open_dependencies=remaining)
    return _become_ready_unless_delayed(task, event) if not remaining else (task, ())


# -- delays (``TaskCreated.not_before_ms``) ------------------------------------------------


def _become_ready_unless_delayed(task: TaskState, event: Event) -> _Result:
    """A pending task whose last dependency was met: ready now, unless its delay still holds it
    (then it stays ``pending`` until its timer's ``TaskDelayElapsed``; an event at or after
    the delay is that moment itself)."""
    if task.is_delayed and task.not_before_ms is not None:
        if event.occurred_at_ms < task.not_before_ms:
            return task, ()
        task = evolve(task, is_delayed=False)
    return _become_ready(task, event)


def _on_delay_elapsed(state: TaskState | None, event: Event, p: TaskDelayElapsed) -> _Result:
    task = _require_created(state, event)
    if task.status is not Status.PENDING or not task.is_delayed:
        return task, ()  # a late copy: the delay was already over
    if p.not_before_ms != task.not_before_ms:
        raise _Refusal(RejectionCode.STALE, f"the task's delay is not {p.not_before_ms}")
    if task.not_before_ms is None or event.occurred_at_ms < task.not_before_ms:
        raise _Refusal(RejectionCode.STALE, "the task's delay has not passed yet")
    task = evolve(task, is_delayed=False)
    return _become_ready(task, event) if not task.open_dependencies else (task, ())


# -- periodic definitions (``streams.domain.periodic``) ------------------------------------


def _template(p: PeriodicScheduled) -> TaskCreated:
    """The ``TaskCreated`` of an occurrence of the definition ``p``."""
    return TaskCreated(
        task_type=p.task_type,
        platform=p.platform,
        target=p.target,
        priority=p.priority,
        dependencies=(),
        timeout_ms=p.timeout_ms,
        max_attempts=p.max_attempts,
        retry_delay_ms=p.retry_delay_ms,
        result_ttl_ms=p.result_ttl_ms,
        dependency_wait_ms=p.dependency_wait_ms,
        max_rate_limited=p.max_rate_limited,
    )


def _on_periodic_scheduled(state: TaskState | None, event: Event, p: PeriodicScheduled) -> _Result:
    if not is_definition_id(event.task_id):
        raise _Refusal(RejectionCode.INVALID_ID, "a periodic definition's key starts 'periodic:'")
    _refuse_id(periodic_name_problem(name_of(event.task_id)))
    if state is not None and state.periodic is None:
        raise _Refusal(RejectionCode.DUPLICATE_TASK, f"{event.task_id} is a task, not a definition")
    _validate_created(_template(p))
    _refuse(schedule_problem(p.every_ms, p.cron), RejectionCode.INVALID_PAYLOAD)
    if p.start_ms < 0 or (p.cron and p.first_due_ms < max(p.start_ms, 1)):
        raise _Refusal(RejectionCode.INVALID_PAYLOAD, "start_ms or first_due_ms out of range")
    before = state.periodic if state is not None else None
    last = before.last_occurrence_ms if before is not None else None
    after = max(event.occurred_at_ms, -1 if last is None else last + 1)
    first = Every(p.start_ms, p.every_ms).first_at_or_after(after) if p.every_ms else p.first_due_ms
    spec = PeriodicSpec(
        every_ms=p.every_ms,
        cron=p.cron,
        start_ms=p.start_ms,
        next_due_ms=first,
        last_occurrence_ms=last,
        occurrences=before.occurrences if before is not None else 0,
        skipped=before.skipped if before is not None else 0,
    )
    base = state if state is not None else TaskState(event.task_id, Status.PERIODIC)
    definition = evolve(
        base,
        task_type=p.task_type,
        platform=p.platform,
        target=p.target,
        priority=p.priority,
        policy=TaskPolicy(
            timeout_ms=p.timeout_ms,
            max_attempts=p.max_attempts,
            retry_delay_ms=p.retry_delay_ms,
            result_ttl_ms=p.result_ttl_ms,
            dependency_wait_ms=p.dependency_wait_ms,
            max_rate_limited=p.max_rate_limited,
        ),
        created_at_ms=base.created_at_ms or event.occurred_at_ms,
        last_error="",
        periodic=spec,
    )
    return _enter(definition, Status.PERIODIC, event), ()


def _on_periodic_cancelled(state: TaskState | None, event: Event, p: PeriodicCancelled) -> _Result:
    definition = _require_definition(state, event)
    if definition.status is not Status.PERIODIC:
        raise _Refusal(RejectionCode.ILLEGAL_TRANSITION, "the definition is already removed")
    spec = replace(definition.periodic or PeriodicSpec(), next_due_ms=None)
    removed = evolve(definition, periodic=spec, last_error=bounds.cut_reason(p.reason))
    return _enter(removed, Status.CANCELLED, event), ()


def _on_occurrence_due(state: TaskState | None, event: Event, p: PeriodicOccurrenceDue) -> _Result:
    definition = _require_definition(state, event)
    spec = definition.periodic or PeriodicSpec()
    due = spec.next_due_ms
    if definition.status is not Status.PERIODIC or due is None or p.occurrence_ms < due:
        return definition, ()  # removed meanwhile, or created already: a late timer's copy
    if p.occurrence_ms > event.occurred_at_ms:
        raise _Refusal(RejectionCode.STALE, "the occurrence is not due yet")
    every = every_of(spec)
    malformed = p.next_due_ms <= p.occurrence_ms or p.skipped < 0
    off_grid = every is not None and (
        not every.is_occurrence(p.occurrence_ms)
        or p.next_due_ms != p.occurrence_ms + every.every_ms
    )
    if malformed or off_grid:
        raise _Refusal(RejectionCode.INVALID_PAYLOAD, "the occurrence is not one of the schedule")
    created = TaskCreated(
        task_type=definition.task_type,
        platform=definition.platform,
        target=definition.target,
        priority=definition.priority,
        dependencies=(),
        timeout_ms=definition.policy.timeout_ms,
        max_attempts=definition.policy.max_attempts,
        retry_delay_ms=definition.policy.retry_delay_ms,
        result_ttl_ms=definition.policy.result_ttl_ms,
        dependency_wait_ms=definition.policy.dependency_wait_ms,
        max_rate_limited=definition.policy.max_rate_limited,
    )
    # an every schedule's skips are counted here, from the state the event meets: the timer
    # that computed them may have met an older state (a due event of the worker before it
    # still in the log); a cron schedule's are the writer's, which the core cannot count
    skipped = every.count_between(due, p.occurrence_ms) if every is not None else p.skipped
    spec = replace(
        spec,
        next_due_ms=p.next_due_ms,
        last_occurrence_ms=p.occurrence_ms,
        occurrences=spec.occurrences + 1,
        skipped=spec.skipped + skipped,
    )
    task_id = occurrence_id(name_of(definition.task_id), p.occurrence_ms)
    return evolve(definition, periodic=spec), (_follow_up(event, task_id, created),)


def _require_definition(state: TaskState | None, event: Event) -> TaskState:
    if state is None or state.periodic is None:
        raise _Refusal(RejectionCode.UNKNOWN_TASK, f"no periodic definition {event.task_id}")
    return state


def _on_wait_expired(state: TaskState | None, event: Event, p: DependencyWaitExpired) -> _Result:
    if state is None or state.status is not Status.AWAITED:
        raise _Refusal(RejectionCode.STALE, "the task is not awaited")
    if state.awaited_until_ms is None or event.occurred_at_ms < state.awaited_until_ms:
        raise _Refusal(RejectionCode.STALE, "the wait bound has not passed yet")
    answers = _answer_all(state, event, DependencyOutcome.MISSING)
    missing = _enter(state, Status.MISSING, event)
    return evolve(missing, dependents=(), waiting=(), awaited_until_ms=None), answers


# -- running ------------------------------------------------------------------------------


def _on_dispatched(state: TaskState | None, event: Event, p: TaskDispatched) -> _Result:
    task = _require_created(state, event)
    if task.status is not Status.READY:
        # the dispatch lost a race (the task was cancelled, or a caller started it): it takes no
        # slot, so the scheduler must get the slot back
        return task, (Released(task.task_id, task.platform),)
    return _start_attempt(task, event, Status.DISPATCHED, task.attempt + 1), ()


def _on_deferred(state: TaskState | None, event: Event, p: TaskDeferred) -> _Result:
    task = _require_created(state, event)
    if task.status is not Status.READY:
        return task, ()  # it moved on meanwhile: nothing to explain any more
    until = p.until_ms or None
    reason, detail = bounds.cut_reason(p.reason), bounds.cut_reason(p.detail)
    return evolve(task, held_reason=reason, held_detail=detail, held_until_ms=until), ()


def _on_started(state: TaskState | None, event: Event, p: TaskStarted) -> _Result:
    task = _require(state, event, Status.READY, Status.DISPATCHED)
    attempt = task.attempt + 1 if task.status is Status.READY else task.attempt
    return _start_attempt(task, event, Status.RUNNING, attempt), ()


def _on_progress(state: TaskState | None, event: Event, p: TaskProgress) -> _Result:
    task = _require(state, event, Status.RUNNING)
    if math.isnan(p.progress) or not 0.0 <= p.progress <= 1.0:
        raise _Refusal(RejectionCode.PROGRESS_OUT_OF_RANGE, f"progress {p.progress} not in [0, 1]")
    if p.progress < task.progress:
        raise _Refusal(
            RejectionCode.PROGRESS_OUT_OF_RANGE,
            f"progress {p.progress} is below {task.progress} already reported",
        )
    return evolve(task, progress=p.progress), ()


def _on_completed(state: TaskState | None, event: Event, p: TaskCompleted) -> _Result:
    task = _require(state, event, Status.RUNNING)
    if len(p.result) > MAX_RESULT_BYTES:
        raise _Refusal(
            RejectionCode.RESULT_TOO_LARGE,
            f"result of {len(p.result)} bytes exceeds {MAX_RESULT_BYTES}",
        )
    task = evolve(
        task,
        progress=1.0,
        result=p.result,
        result_content_type=p.content_type,
        completed_at_ms=event.occurred_at_ms,
        deadline_ms=None,
        rate_limited_in_row=0,
    )
    task, effects = _finish(task, event, Status.COMPLETED, "", DependencyOutcome.COMPLETED)
    record = CompletedTask(
        task_id=task.task_id,
        task_type=task.task_type,
        platform=task.platform,
        target=task.target,
        attempts=task.attempt,
        created_at_ms=task.created_at_ms,
        completed_at_ms=event.occurred_at_ms,
        result=p.result,
        content_type=p.content_type,
    )
    return task, (record, *effects)


def _on_failed(state: TaskState | None, event: Event, p: TaskFailed) -> _Result:
    task = _require(state, event, Status.RUNNING, Status.DISPATCHED)
    if p.interrupted:
        return _interrupt_attempt(task, event, bounds.cut_reason(p.error))
    return _fail_attempt(task, event, bounds.cut_reason(p.error), p.retryable, p.throttled_ms)


def _on_timed_out(state: TaskState | None, event: Event, p: TaskTimedOut) -> _Result:
    task = _require(state, event, Status.RUNNING, Status.DISPATCHED)
    if p.attempt != task.attempt:
        raise _Refusal(RejectionCode.STALE, f"attempt {p.attempt} is not the current one")
    if task.deadline_ms is None or event.occurred_at_ms < task.deadline_ms:
        raise _Refusal(RejectionCode.STALE, "the attempt has not reached its timeout")
    return _fail_attempt(task, event, f"timeout after {task.policy.timeout_ms} ms", True)


def _on_retry_scheduled(state: TaskState | None, event: Event, p: TaskRetryScheduled) -> _Result:
    task = _require(state, event, Status.RETRYING)
    if p.attempt != task.attempt:
        raise _Refusal(RejectionCode.STALE, f"attempt {p.attempt} is not the current one")
    return evolve(task, retry_due_at_ms=p.due_at_ms), ()


def _on_retry_due(state: TaskState | None, event: Event, p: TaskRetryDue) -> _Result:
    task = _require(state, event, Status.RETRYING)
    if p.attempt != task.attempt or task.retry_due_at_ms is None:
        raise _Refusal(RejectionCode.STALE, f"no retry of attempt {p.attempt} is scheduled")
    if event.occurred_at_ms < task.retry_due_at_ms:
        raise _Refusal(RejectionCode.STALE, "the retry is not due yet")
    return _become_ready(evolve(task, retry_due_at_ms=None), event)


def _on_cancelled(state: TaskState | None, event: Event, p: TaskCancelled) -> _Result:
    task = _require(state, event, *_ACTIVE)
    task = evolve(task, deadline_ms=None, retry_due_at_ms=None)
    reason = bounds.cut_reason(p.reason)
    return _finish(task, event, Status.CANCELLED, reason, DependencyOutcome.CANCELLED)


def _on_result_expired(state: TaskState | None, event: Event, p: TaskResultExpired) -> _Result:
    task = _require(state, event, Status.COMPLETED)
    expires_at_ms = task.result_expires_at_ms()
    if task.result is None or expires_at_ms is None:
        raise _Refusal(RejectionCode.STALE, "the task holds no result")
    if event.occurred_at_ms < expires_at_ms:
        raise _Refusal(RejectionCode.STALE, f"the result is served until {expires_at_ms} ms")
    return evolve(task, result=None, result_content_type=""), (ResultExpired(task.task_id),)


def _on_retired(state: TaskState | None, event: Event, p: TaskRetired) -> _Ending:
    if state is None:
        return None, ()  # retired already (a timer's second write, say): nothing to do
    if state.status is Status.AWAITED:
        raise _Refusal(RejectionCode.UNKNOWN_TASK, f"task {event.task_id} does not exist")
    if not (state.status.is_terminal or state.status is Status.MISSING):
        reason = f"{event.kind} is not allowed in status {state.status}"
        raise _Refusal(RejectionCode.ILLEGAL_TRANSITION, reason)
    if p.retention_ms < 0 or event.occurred_at_ms < state.updated_at_ms + p.retention_ms:
        raise _Refusal(RejectionCode.STALE, f"the task changed less than {p.retention_ms} ms ago")
    return None, ()


def _on_retry_requested(state: TaskState | None, event: Event, p: TaskRetryRequested) -> _Result:
    """Run a failed or cancelled task again: a new attempt, the way a due retry goes.

    The attempt count goes on from where it stopped. A task that had attempts left (a
    non-retryable failure, a cancellation) keeps them; one that had spent them all gets one
    more, so ``attempt <= policy.max_attempts`` still holds and a failure of that attempt is
    final. A task with dependencies is ``pending`` again and asks each of them anew (the
    answers it had were dropped when it ended): it runs once they have all completed, and is
    cancelled again if one of them has not.
    """
    task = _require(state, event, Status.FAILED, Status.CANCELLED)
    if task.periodic is not None:
        raise _Refusal(
            RejectionCode.ILLEGAL_TRANSITION, "a periodic definition is no task: define it again"
        )
    if task.attempt >= bounds.MAX_ATTEMPTS:
        raise _Refusal(
            RejectionCode.ILLEGAL_TRANSITION,
            f"task {task.task_id} has made {task.attempt} attempts, the most a task may make",
        )
    if task.task_id in task.dependencies:
        raise _Refusal(RejectionCode.ILLEGAL_TRANSITION, "the task depends on itself")
    policy = task.policy
    if task.attempt >= policy.max_attempts:
        policy = replace(policy, max_attempts=task.attempt + 1)
    task = evolve(task, policy=policy, progress=0.0, rate_limited_in_row=0)
    if not task.dependencies:
        return _become_ready(task, event)
    task = _enter(
        evolve(task, open_dependencies=tuple(sorted(task.dependencies))), Status.PENDING, event
    )
    signal = DependencyRegistered(task.task_id, (task.task_id,), policy.dependency_wait_ms)
    return task, tuple(_follow_up(event, dep, signal) for dep in task.dependencies)


# -- shared steps --------------------------------------------------------------------------


def _start_attempt(task: TaskState, event: Event, status: Status, attempt: int) -> TaskState:
    deadline = event.occurred_at_ms + task.policy.timeout_ms
    started = evolve(
        task,
        attempt=attempt,
        progress=0.0,
        deadline_ms=deadline,
        held_reason="",
        held_detail="",
        held_until_ms=None,
    )
    return _enter(started, status, event)


def _fail_attempt(
    task: TaskState, event: Event, error: str, retryable: bool, throttled_ms: int = 0
) -> _Result:
    task = evolve(task, last_error=error, deadline_ms=None)
    if throttled_ms > 0:  # the platform said "not now": this attempt does not count
        in_row = task.rate_limited_in_row + 1
        task = evolve(task, rate_limited_in_row=in_row)
        if in_row >= task.policy.max_rate_limited:  # ... unless it keeps saying so: give up
            reason = bounds.cut_reason(f"rate limited {in_row} times in a row: {error}")
            outcome = DependencyOutcome.FAILED
            return _finish(task, event, Status.FAILED, reason, outcome, throttled_ms=throttled_ms)
        task = evolve(task, attempt=task.attempt - 1)
        delay = throttled_ms
    elif not retryable or task.attempt >= task.policy.max_attempts:
        task = evolve(task, rate_limited_in_row=0)
        return _finish(task, event, Status.FAILED, error, DependencyOutcome.FAILED)
    else:
        task = evolve(task, rate_limited_in_row=0)
        delay = retry_delay_ms(task.policy.retry_delay_ms, task.attempt, event.event_id)
    retry = TaskRetryScheduled(task.attempt, delay, event.occurred_at_ms + delay)
    released = Released(task.task_id, task.platform, throttled_ms=max(throttled_ms, 0))
    retrying = _enter(task, Status.RETRYING, event)
    return retrying, (_follow_up(event, task.task_id, retry), released)


def _interrupt_attempt(task: TaskState, event: Event, error: str) -> _Result:
    """The worker running the attempt stopped before it ended: retry at once, for free.

    The attempt is not counted and the "rate limited" count is left as it is (the platform gave
    no answer); the slot is released without a pause, so the platform's rate is not touched.
    """
    task = evolve(task, last_error=error, deadline_ms=None, attempt=task.attempt - 1)
    retry = TaskRetryScheduled(task.attempt, 0, event.occurred_at_ms)
    released = Released(task.task_id, task.platform)
    retrying = _enter(task, Status.RETRYING, event)
    return retrying, (_follow_up(event, task.task_id, retry), released)


def _finish_failed(task: TaskState, event: Event, reason: str) -> _Result:
    return _finish(task, event, Status.FAILED, reason, DependencyOutcome.FAILED)


def _finish(
    task: TaskState,
    event: Event,
    status: Status,
    reason: str,
    outcome: DependencyOutcome,
    throttled_ms: int = 0,
) -> _Result:
    """Enter a terminal ``status`` and tell every dependent how this task ended.

    ``throttled_ms``: the attempt ended with a "rate limited" answer, passed on to the
    scheduler with the released slot (it pauses the platform).
    """
    answers = _answer_all(task, event, outcome)
    if task.status in _SCHEDULED:
        completed = status is Status.COMPLETED
        released = Released(task.task_id, task.platform, completed, throttled_ms)
        answers = (released, *answers)
    ended = evolve(
        task,
        last_error=reason or task.last_error,
        waiting=(),
        open_dependencies=(),
        held_reason="",
        held_detail="",
        held_until_ms=None,
    )
    return _enter(ended, status, event), answers


def _become_ready(task: TaskState, event: Event) -> _Result:
    task = _enter(evolve(task, waiting=()), Status.READY, event)
    ready = ReadyToSchedule(
        ready_id=derived_event_id(event.event_id, "ready"),
        task_id=task.task_id,
        platform=task.platform,
        task_type=task.task_type,
        priority=task.priority,
        attempt=task.attempt + 1,
        ready_at_ms=event.occurred_at_ms,
        target=task.target,
        timeout_ms=task.policy.timeout_ms,
    )
    return task, (ready,)


def _answer_all(task: TaskState, event: Event, outcome: DependencyOutcome) -> tuple[Effect, ...]:
    return tuple(_answer(event, dependent, outcome) for dependent in task.dependents)


def _answer(
    event: Event, dependent_id: str, outcome: DependencyOutcome, not_before_ms: int | None = None
) -> FollowUp:
    payload = DependencyResolved(event.task_id, outcome)
    return _follow_up(event, dependent_id, payload, not_before_ms)


def _late_answer(task: TaskState, event: Event, dependent_id: str) -> FollowUp:
    """The answer to a registration that arrived after ``task`` ended (or was declared missing).

    It is dated no earlier than that end, as the answer sent at the end would have been: a
    registration written before the end but delivered after it must not make the dependent
    ready (or cancelled) before its dependency ended.
    """
    ended_at = task.history[-1].at_ms if task.history else event.occurred_at_ms
    return _answer(event, dependent_id, _OUTCOME_OF[task.status], ended_at)


def _follow_up(
    cause: Event, task_id: str, payload: Payload, not_before_ms: int | None = None
) -> FollowUp:
    event_id = derived_event_id(cause.event_id, type(payload).__name__, task_id)
    at = cause.occurred_at_ms if not_before_ms is None else max(cause.occurred_at_ms, not_before_ms)
    return FollowUp(Event(event_id, task_id, at, Source.FOLD, payload))


def _enter(task: TaskState, status: Status, event: Event) -> TaskState:
    transition = Transition(status, event.occurred_at_ms, event.event_id)
    history = (*task.history, transition)
    if len(history) > bounds.HISTORY_KEPT:  # keep the creation and the newest transitions
        history = (history[0], *history[len(history) - bounds.HISTORY_KEPT + 1 :])
    return evolve(task, status=status, history=history)


def _with(ids: tuple[str, ...], new_id: str) -> tuple[str, ...]:
    return ids if new_id in ids else tuple(sorted((*ids, new_id)))


def _require_created(state: TaskState | None, event: Event) -> TaskState:
    if state is None or not state.status.is_created:
        raise _Refusal(RejectionCode.UNKNOWN_TASK, f"task {event.task_id} does not exist")
    return state


def _require(state: TaskState | None, event: Event, *allowed: Status) -> TaskState:
    task = _require_created(state, event)
    if task.status not in allowed:
        raise _Refusal(
            RejectionCode.ILLEGAL_TRANSITION, f"{event.kind} is not allowed in status {task.status}"
        )
    return task


_HANDLERS: dict[type[Any], Callable[[TaskState | None, Event, Any], _Result | _Ending]] = {
    TaskCreated: _on_created,
    TaskDispatched: _on_dispatched,
    TaskStarted: _on_started,
    TaskProgress: _on_progress,
    TaskCompleted: _on_completed,
    TaskFailed: _on_failed,
    TaskCancelled: _on_cancelled,
    TaskTimedOut: _on_timed_out,
    TaskRetryScheduled: _on_retry_scheduled,
    TaskRetryDue: _on_retry_due,
    DependencyRegistered: _on_registered,
    DependencyResolved: _on_resolved,
    DependencyWaitExpired: _on_wait_expired,
    TaskDeferred: _on_deferred,
    TaskResultExpired: _on_result_expired,
    TaskRetired: _on_retired,
    TaskRetryRequested: _on_retry_requested,
    TaskDelayElapsed: _on_delay_elapsed,
    PeriodicScheduled: _on_periodic_scheduled,
    PeriodicCancelled: _on_periodic_cancelled,
    PeriodicOccurrenceDue: _on_occurrence_due,
}
