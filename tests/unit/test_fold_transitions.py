"""The state machine of one task: which event is legal in which status, and what it does.

Given a task in some status (built by ``taskflow.state_in``), when an event is applied, then the
new state and effects are as the table below says; a refused event leaves the state unchanged
and has exactly one ``Rejected`` effect with the expected code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from streams.domain import (
    MAX_RESULT_BYTES,
    CompletedTask,
    DependencyOutcome,
    DependencyResolved,
    Event,
    FollowUp,
    ReadyToSchedule,
    RejectionCode,
    Released,
    Source,
    Status,
    TaskRetryScheduled,
    TaskState,
    Transition,
    apply,
    fold,
    state_to_dict,
)
from streams.domain.retry import JITTER_FRACTION
from tests.unit import taskflow as tf
from tests.unit.taskflow import T0, TIMEOUT_MS, WAIT_MS

LATER = T0 + 10 * WAIT_MS
"""A time past every deadline of the tasks ``state_in`` builds."""
EXPIRY = T0 + 2 * 86_400_000
"""A time past the result's expiry (``result_ttl_ms`` of ``taskflow.created``: one day)."""

NEVER_SEEN = None
AWAITED, MISSING = Status.AWAITED, Status.MISSING
PENDING, READY, DISPATCHED = Status.PENDING, Status.READY, Status.DISPATCHED
RUNNING, RETRYING = Status.RUNNING, Status.RETRYING
COMPLETED, FAILED, CANCELLED = Status.COMPLETED, Status.FAILED, Status.CANCELLED

ALL_STATUSES: tuple[Status | None, ...] = (
    NEVER_SEEN,
    AWAITED,
    MISSING,
    PENDING,
    READY,
    DISPATCHED,
    RUNNING,
    RETRYING,
    COMPLETED,
    FAILED,
    CANCELLED,
)
PLACEHOLDERS = (NEVER_SEEN, AWAITED, MISSING)
CREATED = tuple(s for s in ALL_STATUSES if s not in PLACEHOLDERS)
ACTIVE = (PENDING, READY, DISPATCHED, RUNNING, RETRYING)
TERMINAL = (COMPLETED, FAILED, CANCELLED)

UNKNOWN = RejectionCode.UNKNOWN_TASK
ILLEGAL = RejectionCode.ILLEGAL_TRANSITION
DUPLICATE = RejectionCode.DUPLICATE_TASK
STALE = RejectionCode.STALE

RETIRED = "retired"
"""Accepted, and the task is gone from the table (the new state is None)."""

Expected = Status | RejectionCode | str
"""The status the task ends in if the event is accepted, the code it is refused with, or
:data:`RETIRED`."""


def _attempt(state: TaskState | None) -> int:
    return state.attempt if state is not None else 1


# One probe per payload type: an event that is legal in the right status at the right time.
PROBES: dict[str, Callable[[TaskState | None], Event]] = {
    "TaskCreated": lambda s: tf.created("t", at=LATER),
    "TaskDispatched": lambda s: tf.dispatched("t", at=LATER),
    "TaskStarted": lambda s: tf.started("t", at=LATER),
    "TaskProgress": lambda s: tf.progress("t", 0.5, at=LATER),
    "TaskCompleted": lambda s: tf.completed("t", at=LATER),
    "TaskFailed": lambda s: tf.failed("t", at=LATER),
    "TaskCancelled": lambda s: tf.cancelled("t", at=LATER),
    "TaskTimedOut": lambda s: tf.timed_out("t", _attempt(s), at=LATER),
    "TaskRetryScheduled": lambda s: tf.retry_scheduled("t", _attempt(s), 5, at=LATER),
    "TaskRetryDue": lambda s: tf.retry_due("t", _attempt(s), at=LATER),
    "DependencyRegistered": lambda s: tf.registered("t", "z", at=LATER),
    "DependencyResolved": lambda s: tf.resolved("t", "a", at=LATER),
    "DependencyWaitExpired": lambda s: tf.wait_expired("t", at=LATER),
    "TaskDeferred": lambda s: tf.deferred("t", at=LATER),
    "TaskResultExpired": lambda s: tf.result_expired("t", at=EXPIRY),
    "TaskRetired": lambda s: tf.retired("t", 1_000, at=LATER),
    "TaskRetryRequested": lambda s: tf.retry_requested("t", at=LATER),
    "TaskDelayElapsed": lambda s: tf.delay_elapsed("t", T0, at=LATER),
    "PeriodicScheduled": lambda s: tf.event("t", tf.periodic_scheduled("t").payload, at=LATER),
    "PeriodicCancelled": lambda s: tf.event("t", tf.periodic_cancelled("t").payload, at=LATER),
    "PeriodicOccurrenceDue": lambda s: tf.occurrence_due("t", T0, T0 + 2_000, at=LATER),
}


def _row(default: Expected, **by_status: Expected) -> dict[Status | None, Expected]:
    """Expected outcome per status: ``default`` for created tasks, placeholders unknown."""
    row: dict[Status | None, Expected] = dict.fromkeys(PLACEHOLDERS, UNKNOWN)
    row.update(dict.fromkeys(CREATED, default))
    row.update({Status(k.lower()): v for k, v in by_status.items()})
    return row


def _same_status() -> dict[Status | None, Expected]:
    """Accepted in every created status, which it keeps."""
    row: dict[Status | None, Expected] = dict.fromkeys(PLACEHOLDERS, UNKNOWN)
    row.update({s: s for s in CREATED if s is not None})
    return row


TABLE: dict[str, dict[Status | None, Expected]] = {
    "TaskCreated": {
        NEVER_SEEN: READY,
        AWAITED: READY,
        MISSING: READY,
        **dict.fromkeys(CREATED, DUPLICATE),
    },
    # a dispatch that lost a race (the task moved on) is accepted and gives the slot back
    "TaskDispatched": {**_same_status(), READY: DISPATCHED},
    "TaskStarted": _row(ILLEGAL, READY=RUNNING, DISPATCHED=RUNNING),
    "TaskProgress": _row(ILLEGAL, RUNNING=RUNNING),
    "TaskCompleted": _row(ILLEGAL, RUNNING=COMPLETED),
    "TaskFailed": _row(ILLEGAL, DISPATCHED=RETRYING, RUNNING=RETRYING),
    "TaskCancelled": _row(ILLEGAL, **{s.name: CANCELLED for s in ACTIVE}),
    "TaskTimedOut": _row(ILLEGAL, DISPATCHED=RETRYING, RUNNING=RETRYING),
    "TaskRetryScheduled": _row(ILLEGAL, RETRYING=RETRYING),
    "TaskRetryDue": _row(ILLEGAL, RETRYING=READY),
    # a registration is always answered: recorded, or answered at once if the task has ended
    "DependencyRegistered": {
        NEVER_SEEN: AWAITED,
        AWAITED: AWAITED,
        MISSING: MISSING,
        **{s: s for s in CREATED if s is not None},
    },
    # a late or repeated answer is accepted and changes nothing
    "DependencyResolved": {**_same_status(), PENDING: READY},
    "DependencyWaitExpired": {**dict.fromkeys(ALL_STATUSES, STALE), AWAITED: MISSING},
    "TaskDeferred": _same_status(),
    # the result is dropped; the task stays completed
    "TaskResultExpired": _row(ILLEGAL, COMPLETED=COMPLETED),
    # a finished task (or a placeholder found missing) leaves the table; never seen: a repeat
    "TaskRetired": {
        **_row(ILLEGAL, **{s.name: RETIRED for s in TERMINAL}),
        NEVER_SEEN: RETIRED,
        MISSING: RETIRED,
    },
    # a retry by hand: the tasks built by ``state_in`` depend on "a", which is asked anew
    "TaskRetryRequested": _row(ILLEGAL, FAILED=PENDING, CANCELLED=PENDING),
    # a task with no delay (as every one here) takes a late TaskDelayElapsed as a no-op
    "TaskDelayElapsed": _same_status(),
    # a task id is no periodic definition (those are keyed periodic:<name>; see
    # test_fold_schedule.py): defining one is refused, and removing or firing one is unknown
    "PeriodicScheduled": dict.fromkeys(ALL_STATUSES, RejectionCode.INVALID_ID),
    "PeriodicCancelled": dict.fromkeys(ALL_STATUSES, UNKNOWN),
    "PeriodicOccurrenceDue": dict.fromkeys(ALL_STATUSES, UNKNOWN),
}

CASES = [
    pytest.param(kind, status, TABLE[kind][status], id=f"{kind}-in-{status or 'never_seen'}")
    for kind in PROBES
    for status in ALL_STATUSES
]


def test_the_table_covers_every_payload_type_and_status() -> None:
    from streams.domain import PAYLOAD_TYPES

    assert set(PROBES) == set(TABLE) == {t.__name__ for t in PAYLOAD_TYPES}
    assert all(set(row) == set(ALL_STATUSES) for row in TABLE.values())


@pytest.mark.parametrize(("kind", "status", "expected"), CASES)
def test_event_in_status_is_accepted_or_refused_as_the_table_says(
    kind: str, status: Status | None, expected: Expected
) -> None:
    state = tf.state_in(status)
    ev = PROBES[kind](state)
    assert ev.kind == kind
    if isinstance(expected, RejectionCode):
        assert tf.refuse(state, ev).code is expected
        return
    if expected == RETIRED:
        retired = apply(state, ev)
        assert (retired.state, retired.effects) == (None, ())
        assert fold([ev], {"t": state} if state is not None else {}) == {}
        return
    outcome = tf.accept(state, ev)
    after = outcome.state
    assert after is not None
    assert after.status is expected
    assert after.task_id == "t"
    assert after.seen_event_ids[-1] == ev.event_id
    assert after.updated_at_ms == ev.occurred_at_ms
    before_history = state.history if state is not None else ()
    if expected is not status:
        assert after.history[-1] == Transition(expected, ev.occurred_at_ms, ev.event_id)
    else:
        assert after.history == before_history, "a transition recorded without a status change"
    # the same event again changes nothing and has no effect
    again = apply(after, ev)
    assert again.state == after
    assert again.effects == ()


@pytest.mark.parametrize("status", [s for s in CREATED if s is not READY])
def test_dispatch_that_lost_a_race_only_gives_the_slot_back(status: Status) -> None:
    state = tf.state_in(status)
    assert state is not None
    outcome = tf.accept(state, tf.dispatched("t", at=LATER))
    assert outcome.effects == (Released("t", "linkedin"),)
    assert outcome.state is not None
    assert outcome.state.attempt == state.attempt
    assert outcome.state.deadline_ms == state.deadline_ms


# -- attempts ----------------------------------------------------------------------------------


def test_dispatch_counts_an_attempt_and_start_after_dispatch_does_not() -> None:
    ready = tf.state_in(READY)
    assert ready is not None and ready.attempt == 0
    dispatched = tf.play(tf.dispatched("t", at=T0 + 10), state=ready)
    assert (dispatched.status, dispatched.attempt) == (DISPATCHED, 1)
    assert dispatched.deadline_ms == T0 + 10 + TIMEOUT_MS
    running = tf.play(tf.started("t", at=T0 + 20), state=dispatched)
    assert (running.status, running.attempt) == (RUNNING, 1)
    assert running.deadline_ms == T0 + 20 + TIMEOUT_MS


def test_start_without_dispatch_counts_an_attempt() -> None:
    running = tf.play(tf.started("t", at=T0 + 20), state=tf.state_in(READY))
    assert (running.status, running.attempt) == (RUNNING, 1)
    assert running.deadline_ms == T0 + 20 + TIMEOUT_MS


def test_ready_announces_the_attempt_about_to_be_made() -> None:
    outcome = tf.accept(None, tf.created("t", priority=2, eid="c1"))
    (ready,) = tf.readies(outcome)
    assert ready.task_id == "t"
    assert ready.attempt == 1
    assert (ready.platform, ready.task_type, ready.priority) == ("linkedin", "profile_scrape", 2)
    assert (ready.target, ready.timeout_ms, ready.ready_at_ms) == (
        "https://example.com/t",
        TIMEOUT_MS,
        T0,
    )
    # the same readiness derived again has the same id, so consumers can drop the repeat
    assert tf.readies(apply(None, tf.created("t", priority=2, eid="c1"))) == [ready]


def test_retry_announces_and_counts_the_next_attempt() -> None:
    retrying = tf.state_in(RETRYING)
    assert retrying is not None and retrying.retry_due_at_ms is not None
    outcome = tf.accept(retrying, tf.retry_due("t", 1, at=retrying.retry_due_at_ms))
    assert [r.attempt for r in tf.readies(outcome)] == [2]
    assert outcome.state is not None
    assert outcome.state.retry_due_at_ms is None
    again = tf.play(tf.dispatched("t", at=LATER), state=outcome.state)
    assert again.attempt == 2


def test_throttled_attempt_is_not_counted_and_is_retried_after_the_given_delay() -> None:
    running = tf.play(tf.created("u", max_attempts=1), tf.started("u"))
    ev = tf.failed("u", "429", throttled_ms=30_000, at=T0 + 5)
    outcome = tf.accept(running, ev)
    assert outcome.state is not None
    assert (outcome.state.status, outcome.state.attempt) == (RETRYING, 0)
    assert outcome.state.last_error == "429"
    retry = tf.only_follow_up(outcome)
    assert retry.payload == TaskRetryScheduled(0, 30_000, T0 + 5 + 30_000)
    assert Released("u", "linkedin", throttled_ms=30_000) in outcome.effects
    scheduled = tf.play(retry, state=outcome.state)
    due = tf.accept(scheduled, tf.retry_due("u", 0, at=T0 + 5 + 30_000))
    assert [r.attempt for r in tf.readies(due)] == [1]


# -- progress ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.0, 0.25, 1.0])
def test_progress_in_range_is_recorded(value: float) -> None:
    state = tf.play(tf.progress("t", value), state=tf.state_in(RUNNING))
    assert state.progress == value
    assert state.status is RUNNING


@pytest.mark.parametrize("value", [-0.01, 1.01, math.nan, math.inf, -math.inf, -1e300])
def test_progress_out_of_range_or_nan_is_refused(value: float) -> None:
    rejection = tf.refuse(tf.state_in(RUNNING), tf.progress("t", value))
    assert rejection.code is RejectionCode.PROGRESS_OUT_OF_RANGE


def test_progress_never_decreases_within_an_attempt() -> None:
    state = tf.play(tf.progress("t", 0.6), tf.progress("t", 0.6), state=tf.state_in(RUNNING))
    rejection = tf.refuse(state, tf.progress("t", 0.59))
    assert rejection.code is RejectionCode.PROGRESS_OUT_OF_RANGE
    assert "0.6" in rejection.reason


def test_progress_restarts_at_zero_on_a_new_attempt() -> None:
    running = tf.play(tf.progress("t", 0.9), state=tf.state_in(RUNNING))
    outcome = tf.accept(running, tf.failed("t", at=T0 + 10))
    retrying = tf.play(tf.only_follow_up(outcome), state=outcome.state)
    assert retrying.retry_due_at_ms is not None
    ready = tf.play(tf.retry_due("t", 1, at=retrying.retry_due_at_ms), state=retrying)
    dispatched = tf.play(tf.dispatched("t", at=LATER), state=ready)
    assert dispatched.progress == 0.0
    assert (
        tf.play(tf.started("t", at=LATER), tf.progress("t", 0.1), state=dispatched).progress == 0.1
    )


def test_progress_records_no_transition() -> None:
    running = tf.state_in(RUNNING)
    assert running is not None
    assert tf.play(tf.progress("t", 0.3), state=running).history == running.history


# -- completion --------------------------------------------------------------------------------


def test_completion_records_the_result_and_tells_the_outside_world() -> None:
    running = tf.play(tf.progress("t", 0.4), state=tf.state_in(RUNNING))
    ev = tf.completed("t", b"\x00\xffbinary", at=T0 + 9_000)
    outcome = tf.accept(running, ev)
    done = outcome.state
    assert done is not None
    assert done.status is COMPLETED
    assert (done.result, done.result_content_type, done.progress) == (
        b"\x00\xffbinary",
        "application/json",
        1.0,
    )
    assert (done.completed_at_ms, done.deadline_ms) == (T0 + 9_000, None)
    assert done.result_expires_at_ms() == T0 + 9_000 + done.policy.result_ttl_ms
    record = CompletedTask(
        task_id="t",
        task_type="profile_scrape",
        platform="linkedin",
        target="https://example.com/t",
        attempts=1,
        created_at_ms=T0,
        completed_at_ms=T0 + 9_000,
        result=b"\x00\xffbinary",
        content_type="application/json",
    )
    assert outcome.effects == (record, Released("t", "linkedin", completed=True))


def test_result_of_exactly_the_cap_is_accepted() -> None:
    state = tf.play(tf.completed("t", b"x" * MAX_RESULT_BYTES), state=tf.state_in(RUNNING))
    assert state.status is COMPLETED
    assert state.result is not None and len(state.result) == MAX_RESULT_BYTES


def test_result_over_the_cap_is_refused() -> None:
    rejection = tf.refuse(tf.state_in(RUNNING), tf.completed("t", b"x" * (MAX_RESULT_BYTES + 1)))
    assert rejection.code is RejectionCode.RESULT_TOO_LARGE


def test_no_result_until_completed() -> None:
    running = tf.state_in(RUNNING)
    assert running is not None
    assert (running.result, running.result_expires_at_ms()) == (None, None)


# -- failures and retries ----------------------------------------------------------------------


def _fail(state: TaskState | None, ev: Event) -> tuple[TaskState, Event]:
    """Apply a failure that schedules a retry; the new state and the retry follow-up."""
    outcome = tf.accept(state, ev)
    assert outcome.state is not None
    return outcome.state, tf.only_follow_up(outcome)


def test_retryable_failure_with_attempts_left_schedules_a_retry() -> None:
    ev = tf.failed("t", "connection reset", at=T0 + 5_000, eid="f1")
    outcome = tf.accept(tf.state_in(RUNNING), ev)
    state = outcome.state
    assert state is not None
    assert (state.status, state.attempt, state.last_error, state.deadline_ms) == (
        RETRYING,
        1,
        "connection reset",
        None,
    )
    retry = tf.only_follow_up(outcome)
    assert retry.task_id == "t"
    assert retry.source is Source.FOLD
    assert retry.occurred_at_ms == T0 + 5_000
    assert isinstance(retry.payload, TaskRetryScheduled)
    assert retry.payload.attempt == 1
    base = state.policy.retry_delay_ms
    assert base <= retry.payload.delay_ms <= base * (1 + JITTER_FRACTION)
    assert retry.payload.due_at_ms == T0 + 5_000 + retry.payload.delay_ms
    assert Released("t", "linkedin") in outcome.effects
    # the same failure gives the same follow-up, so a re-derived decision is dropped as a repeat
    assert tf.only_follow_up(apply(tf.state_in(RUNNING), ev)) == retry
    assert tf.play(retry, state=state).retry_due_at_ms == retry.payload.due_at_ms


def test_retry_delay_grows_with_the_attempt() -> None:
    base = tf.RETRY_DELAY_MS
    state: TaskState | None = tf.state_in(RUNNING)
    delays = []
    for attempt in (1, 2):
        state, retry = _fail(state, tf.failed("t", at=T0 + 10_000 * attempt))
        assert isinstance(retry.payload, TaskRetryScheduled)
        low = base * 2 ** (attempt - 1)
        assert low <= retry.payload.delay_ms <= low * (1 + JITTER_FRACTION)
        delays.append(retry.payload.delay_ms)
        state = tf.play(
            retry,
            tf.retry_due("t", attempt, at=retry.payload.due_at_ms),
            tf.started("t", at=retry.payload.due_at_ms),
            state=state,
        )
    assert delays[0] < delays[1]
    assert state is not None and state.attempt == 3


def test_failure_of_the_last_attempt_fails_the_task() -> None:
    running = tf.play(tf.created("t", max_attempts=1), tf.started("t"))
    ev = tf.failed("t", "still broken", at=T0 + 7)
    outcome = tf.accept(running, ev)
    state = outcome.state
    assert state is not None
    assert (state.status, state.last_error) == (FAILED, "still broken")
    assert outcome.effects == (Released("t", "linkedin"),)
    assert state.history[-1] == Transition(FAILED, T0 + 7, ev.event_id)


def test_non_retryable_failure_fails_the_task_at_once() -> None:
    outcome = tf.accept(tf.state_in(RUNNING), tf.failed("t", "404", retryable=False))
    assert outcome.state is not None
    assert (outcome.state.status, outcome.state.attempt) == (FAILED, 1)
    assert tf.follow_ups(outcome) == []


def test_failure_of_a_dispatched_attempt_is_retried_too() -> None:
    state, retry = _fail(tf.state_in(DISPATCHED), tf.failed("t", "executor lost"))
    assert (state.status, state.attempt) == (RETRYING, 1)
    assert isinstance(retry.payload, TaskRetryScheduled)


# -- timeouts ----------------------------------------------------------------------------------


def test_timeout_before_the_deadline_is_stale() -> None:
    running = tf.state_in(RUNNING)
    assert running is not None and running.deadline_ms is not None
    rejection = tf.refuse(running, tf.timed_out("t", 1, at=running.deadline_ms - 1))
    assert rejection.code is STALE


def test_timeout_at_the_deadline_retries_the_attempt() -> None:
    running = tf.state_in(RUNNING)
    assert running is not None and running.deadline_ms == T0 + 2_000 + TIMEOUT_MS
    state, retry = _fail(running, tf.timed_out("t", 1, at=running.deadline_ms))
    assert (state.status, state.last_error) == (RETRYING, f"timeout after {TIMEOUT_MS} ms")
    assert isinstance(retry.payload, TaskRetryScheduled) and retry.payload.attempt == 1


def test_timeout_of_another_attempt_is_stale() -> None:
    for attempt in (0, 2):
        rejection = tf.refuse(tf.state_in(RUNNING), tf.timed_out("t", attempt, at=LATER))
        assert rejection.code is STALE


def test_dispatched_attempt_times_out_from_the_dispatch_and_start_resets_the_deadline() -> None:
    dispatched = tf.state_in(DISPATCHED)
    assert dispatched is not None and dispatched.deadline_ms == T0 + 1_000 + TIMEOUT_MS
    timed_out = tf.play(tf.timed_out("t", 1, at=T0 + 1_000 + TIMEOUT_MS), state=dispatched)
    assert timed_out.status is RETRYING
    running = tf.state_in(RUNNING)
    rejection = tf.refuse(running, tf.timed_out("t", 1, at=T0 + 1_000 + TIMEOUT_MS))
    assert rejection.code is STALE


def test_timeout_of_the_last_attempt_fails_the_task() -> None:
    running = tf.play(tf.created("t", max_attempts=1), tf.started("t", at=T0))
    state = tf.play(tf.timed_out("t", 1, at=T0 + TIMEOUT_MS), state=running)
    assert (state.status, state.last_error) == (FAILED, f"timeout after {TIMEOUT_MS} ms")


# -- due retries -------------------------------------------------------------------------------


def test_retry_before_it_is_due_is_stale() -> None:
    retrying = tf.state_in(RETRYING)
    assert retrying is not None and retrying.retry_due_at_ms is not None
    assert tf.refuse(retrying, tf.retry_due("t", 1, at=retrying.retry_due_at_ms - 1)).code is STALE


def test_due_retry_makes_the_task_ready() -> None:
    retrying = tf.state_in(RETRYING)
    assert retrying is not None and retrying.retry_due_at_ms is not None
    ev = tf.retry_due("t", 1, at=retrying.retry_due_at_ms)
    outcome = tf.accept(retrying, ev)
    assert outcome.state is not None and outcome.state.status is READY
    (ready,) = outcome.effects
    assert isinstance(ready, ReadyToSchedule)
    assert (ready.attempt, ready.ready_at_ms) == (2, retrying.retry_due_at_ms)


def test_retry_of_another_attempt_is_stale() -> None:
    for attempt in (0, 2):
        assert tf.refuse(tf.state_in(RETRYING), tf.retry_due("t", attempt, at=LATER)).code is STALE


def test_retry_due_before_the_retry_was_scheduled_is_stale() -> None:
    outcome = tf.accept(tf.state_in(RUNNING), tf.failed("t"))
    assert tf.refuse(outcome.state, tf.retry_due("t", 1, at=LATER)).code is STALE


def test_retry_scheduled_for_another_attempt_is_stale() -> None:
    rejection = tf.refuse(tf.state_in(RETRYING), tf.retry_scheduled("t", 2, 10, at=LATER))
    assert rejection.code is STALE


# -- cancellation ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ACTIVE)
def test_cancel_ends_an_active_task_and_tells_its_dependents(status: Status) -> None:
    state = tf.play(tf.registered("t", "child", at=T0 + 1), state=tf.state_in(status))
    ev = tf.cancelled("t", "not needed", at=LATER)
    outcome = tf.accept(state, ev)
    after = outcome.state
    assert after is not None
    assert (after.status, after.last_error) == (CANCELLED, "not needed")
    assert (after.deadline_ms, after.retry_due_at_ms, after.open_dependencies) == (None, None, ())
    assert after.history[-1] == Transition(CANCELLED, LATER, ev.event_id)
    answer = FollowUp(tf.only_follow_up(outcome))
    assert answer.event.task_id == "child"
    assert answer.event.payload == DependencyResolved("t", DependencyOutcome.CANCELLED)
    released = [e for e in outcome.effects if isinstance(e, Released)]
    scheduled = status in (READY, DISPATCHED, RUNNING)
    assert released == ([Released("t", "linkedin")] if scheduled else [])


# -- terminal states ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", TERMINAL)
@pytest.mark.parametrize("kind", sorted(set(PROBES) - {"TaskRetryRequested"}))
def test_terminal_task_never_changes_its_outcome(status: Status, kind: str) -> None:
    """Every event is refused, except the signals that must still be answered or that lost a
    race (a dispatch, a deferral, a dependency's registration or late answer, a delay's late
    timer): those are accepted but leave status, result, error and history as they were. The
    clock's housekeeping is the other exception: an expired result is dropped (the task stays
    completed), and a retired task leaves the table (no state, hence no other outcome). (A
    user's retry of a failed or cancelled task is the one way out: see the tests of retries by
    hand.)"""
    state = tf.state_in(status)
    assert state is not None
    outcome = apply(state, PROBES[kind](state))
    if kind == "TaskRetired":
        assert outcome.state is None and not outcome.is_rejected
        return
    if kind == "TaskResultExpired" and status is COMPLETED:
        expired = outcome.state
        assert expired is not None and (expired.result, expired.status) == (None, COMPLETED)
        assert expired.history == state.history
        return
    late = ("TaskDispatched", "TaskDeferred", "DependencyRegistered", "DependencyResolved")
    if kind not in (*late, "TaskDelayElapsed"):
        assert outcome.is_rejected
        assert outcome.state == state
        return
    after = outcome.state
    assert after is not None
    same = ("status", "result", "last_error", "history", "attempt", "completed_at_ms", "progress")
    assert {k: getattr(after, k) for k in same} == {k: getattr(state, k) for k in same}


# -- idempotence and history -------------------------------------------------------------------


def _lifecycle() -> list[Event]:
    """A task through every status: pending, ready, dispatched, running, retrying, completed."""
    return [
        tf.created("t", "a", at=T0, eid="created"),
        tf.registered("t", "child", at=T0 + 1, eid="registered"),
        tf.resolved("t", "a", at=T0 + 2, eid="resolved"),
        tf.deferred("t", at=T0 + 3, eid="deferred"),
        tf.dispatched("t", at=T0 + 4, eid="dispatched-1"),
        tf.started("t", at=T0 + 5, eid="started-1"),
        tf.progress("t", 0.5, at=T0 + 6, eid="progress-1"),
        tf.failed("t", at=T0 + 7, eid="failed-1"),
        tf.retry_scheduled("t", 1, 0, at=T0 + 7, eid="retry-scheduled-1"),
        tf.retry_due("t", 1, at=T0 + 8, eid="retry-due-1"),
        tf.started("t", at=T0 + 9, eid="started-2"),
        tf.completed("t", at=T0 + 10, eid="completed"),
    ]


def test_history_records_each_status_change_with_its_event_and_time() -> None:
    state = tf.play(*_lifecycle())
    assert state.history == (
        Transition(PENDING, T0, "created"),
        Transition(READY, T0 + 2, "resolved"),
        Transition(DISPATCHED, T0 + 4, "dispatched-1"),
        Transition(RUNNING, T0 + 5, "started-1"),
        Transition(RETRYING, T0 + 7, "failed-1"),
        Transition(READY, T0 + 8, "retry-due-1"),
        Transition(RUNNING, T0 + 9, "started-2"),
        Transition(COMPLETED, T0 + 10, "completed"),
    )
    assert (state.attempt, state.created_at_ms, state.updated_at_ms) == (2, T0, T0 + 10)
    assert state.seen_event_ids == tuple(e.event_id for e in _lifecycle())


def test_every_accepted_event_applied_twice_changes_nothing_the_second_time() -> None:
    state: TaskState | None = None
    for ev in _lifecycle():
        state = tf.accept(state, ev).state
        again = apply(state, ev)
        assert again.state == state
        assert again.effects == ()
    twice = fold([e for ev in _lifecycle() for e in (ev, ev)])
    assert state is not None
    assert state_to_dict(twice["t"]) == state_to_dict(state)


def test_an_earlier_event_delivered_again_later_changes_nothing() -> None:
    events = _lifecycle()
    state = tf.play(*events)
    for ev in events:
        again = apply(state, ev)
        assert (again.state, again.effects) == (state, ())


def test_a_refused_event_is_refused_again_and_not_remembered() -> None:
    running = tf.state_in(RUNNING)
    ev = tf.progress("t", 2.0)
    assert tf.refuse(running, ev).code is RejectionCode.PROGRESS_OUT_OF_RANGE
    assert tf.refuse(running, ev).code is RejectionCode.PROGRESS_OUT_OF_RANGE
    assert running is not None and ev.event_id not in running.seen_event_ids


# -- deferrals ---------------------------------------------------------------------------------


def test_deferral_of_a_ready_task_is_recorded_until_it_is_dispatched() -> None:
    held = tf.play(
        tf.deferred("t", "concurrency", "2 of 2 slots busy", 0), state=tf.state_in(READY)
    )
    assert (held.held_reason, held.held_detail, held.held_until_ms) == (
        "concurrency",
        "2 of 2 slots busy",
        None,
    )
    held = tf.play(tf.deferred("t", "rate_limit", "5/s", T0 + 99), state=held)
    assert (held.held_reason, held.held_until_ms) == ("rate_limit", T0 + 99)
    dispatched = tf.play(tf.dispatched("t"), state=held)
    assert (dispatched.held_reason, dispatched.held_detail, dispatched.held_until_ms) == (
        "",
        "",
        None,
    )


def test_deferral_of_a_task_that_moved_on_changes_nothing_but_its_bookkeeping() -> None:
    running = tf.state_in(RUNNING)
    assert running is not None
    after = tf.play(tf.deferred("t"), state=running)
    assert after.held_reason == ""
    assert after.history == running.history


# -- invalid payloads --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("task_type", ""),
        ("platform", ""),
        ("target", ""),
        ("priority", 0),
        ("timeout_ms", 0),
        ("max_attempts", 0),
        ("retry_delay_ms", -1),
        ("result_ttl_ms", -1),
        ("dependency_wait_ms", 0),
        ("dependencies", ("a", "")),
    ],
)
def test_creation_with_an_invalid_field_is_refused_naming_it(field: str, value: Any) -> None:
    rejection = tf.refuse(None, tf.created("t", **{field: value}))
    expected = (
        RejectionCode.INVALID_ID if field == "dependencies" else RejectionCode.INVALID_PAYLOAD
    )
    assert rejection.code is expected
    assert field in rejection.reason


def test_invalid_creation_of_an_awaited_task_leaves_the_placeholder() -> None:
    awaited = tf.state_in(AWAITED)
    assert tf.refuse(awaited, tf.created("t", priority=0)).code is RejectionCode.INVALID_PAYLOAD


def test_task_cannot_register_as_its_own_dependent() -> None:
    for state in (None, tf.state_in(PENDING), tf.state_in(COMPLETED)):
        rejection = tf.refuse(state, tf.registered("t", "t"))
        assert rejection.code is RejectionCode.INVALID_PAYLOAD


def test_answer_about_a_task_that_is_not_a_dependency_is_refused() -> None:
    rejection = tf.refuse(tf.state_in(PENDING), tf.resolved("t", "stranger"))
    assert rejection.code is RejectionCode.INVALID_PAYLOAD
    assert "stranger" in rejection.reason


def test_event_applied_to_the_state_of_another_task_is_refused() -> None:
    rejection = tf.refuse(tf.state_in(RUNNING), tf.completed("other"))
    assert rejection.code is RejectionCode.INVALID_PAYLOAD


def test_events_of_a_task_never_created_are_refused_as_unknown() -> None:
    for ev in (tf.started("ghost"), tf.cancelled("ghost"), tf.resolved("ghost", "a")):
        assert tf.refuse(None, ev).code is UNKNOWN
