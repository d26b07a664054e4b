"""A user's retry of a failed or cancelled task (``TaskRetryRequested``): a new attempt.

Given a task that ended failed or cancelled, when the retry request is folded, then the task is
ready again (or pending, asking its dependencies anew), its next attempt is counted when it is
dispatched, and ``attempt <= policy.max_attempts`` still holds. Every other status refuses the
request as an illegal transition (the table of ``test_fold_transitions`` covers each status).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain import (
    CompletedTask,
    DependencyOutcome,
    DependencyRegistered,
    DependencyResolved,
    RejectionCode,
    Status,
    TaskState,
    Transition,
    apply,
)
from streams.domain.bounds import MAX_ATTEMPTS
from streams.domain.state import evolve
from tests.unit import taskflow as tf
from tests.unit.taskflow import T0

LATER = T0 + 100_000


def _failed_after_every_attempt(task_id: str = "t", max_attempts: int = 2) -> TaskState:
    """A task without dependencies that failed each of its ``max_attempts`` attempts."""
    state = tf.play(tf.created(task_id, max_attempts=max_attempts, at=T0))
    at = T0
    for attempt in range(1, max_attempts + 1):
        state = tf.play(
            tf.dispatched(task_id, at=at + 1), tf.started(task_id, at=at + 2), state=state
        )
        outcome = tf.accept(state, tf.failed(task_id, f"boom {attempt}", at=at + 3))
        state = outcome.state
        assert state is not None
        if attempt < max_attempts:  # the automatic retry: scheduled, then due
            state = tf.play(tf.only_follow_up(outcome), state=state)
            assert state.retry_due_at_ms is not None
            state = tf.play(tf.retry_due(task_id, attempt, at=state.retry_due_at_ms), state=state)
        at += 10_000
    assert (state.status, state.attempt) == (Status.FAILED, max_attempts)
    return state


def test_a_task_that_spent_its_attempts_is_ready_again_with_one_more() -> None:
    failed = _failed_after_every_attempt(max_attempts=2)
    ev = tf.retry_requested("t", at=LATER)

    outcome = tf.accept(failed, ev)

    after = outcome.state
    assert after is not None
    assert after.status is Status.READY
    assert after.history[-1] == Transition(Status.READY, LATER, ev.event_id)
    assert after.attempt == 2, "the attempt is counted when it is dispatched or started"
    assert after.policy.max_attempts == 3
    assert after.last_error == "boom 2", "the last failure is still reported"
    (ready,) = tf.readies(outcome)
    assert (ready.task_id, ready.attempt, ready.ready_at_ms) == ("t", 3, LATER)
    assert ready.ready_id != ""


def test_the_extra_attempt_runs_and_completes() -> None:
    ready = tf.play(tf.retry_requested("t", at=LATER), state=_failed_after_every_attempt())
    running = tf.play(tf.dispatched("t", at=LATER + 1), tf.started("t", at=LATER + 2), state=ready)
    assert (running.status, running.attempt, running.progress) == (Status.RUNNING, 3, 0.0)

    outcome = tf.accept(running, tf.completed("t", at=LATER + 3))

    assert outcome.state is not None and outcome.state.status is Status.COMPLETED
    (record,) = [e for e in outcome.effects if isinstance(e, CompletedTask)]
    assert record.attempts == 3


def test_a_failure_of_the_extra_attempt_is_final() -> None:
    ready = tf.play(tf.retry_requested("t", at=LATER), state=_failed_after_every_attempt())
    running = tf.play(tf.dispatched("t", at=LATER + 1), tf.started("t", at=LATER + 2), state=ready)

    failed = tf.play(tf.failed("t", "still broken", at=LATER + 3), state=running)

    assert (failed.status, failed.attempt, failed.last_error) == (Status.FAILED, 3, "still broken")


def test_a_task_that_had_attempts_left_keeps_them() -> None:
    """A non-retryable failure on attempt 1 of 3: the retry does not grow the policy, and a
    retryable failure of attempt 2 is retried automatically."""
    state = tf.play(
        tf.created("t", at=T0),
        tf.dispatched("t", at=T0 + 1),
        tf.started("t", at=T0 + 2),
        tf.failed("t", "HTTP 404", retryable=False, at=T0 + 3),
    )
    assert (state.status, state.attempt, state.policy.max_attempts) == (Status.FAILED, 1, 3)

    state = tf.play(
        tf.retry_requested("t", at=LATER),
        tf.dispatched("t", at=LATER + 1),
        tf.started("t", at=LATER + 2),
        state=state,
    )
    assert (state.attempt, state.policy.max_attempts) == (2, 3)
    assert tf.play(tf.failed("t", at=LATER + 3), state=state).status is Status.RETRYING


def test_a_cancelled_task_without_dependencies_is_ready_again() -> None:
    cancelled = tf.play(tf.created("t", at=T0), tf.cancelled("t", at=T0 + 1))

    outcome = tf.accept(cancelled, tf.retry_requested("t", at=LATER))

    assert outcome.state is not None
    assert (outcome.state.status, outcome.state.attempt) == (Status.READY, 0)
    assert [r.attempt for r in tf.readies(outcome)] == [1]


def test_a_task_with_dependencies_asks_each_of_them_anew() -> None:
    failed = tf.state_in(Status.FAILED)  # depends on "a", which completed
    assert failed is not None and failed.dependencies == ("a",)
    ev = tf.retry_requested("t", at=LATER)

    outcome = tf.accept(failed, ev)

    after = outcome.state
    assert after is not None
    assert (after.status, after.open_dependencies) == (Status.PENDING, ("a",))
    (registration,) = tf.follow_ups(outcome)
    assert registration.task_id == "a"
    assert registration.payload == DependencyRegistered(
        "t", ("t",), after.policy.dependency_wait_ms
    )
    assert tf.readies(outcome) == []
    # "a" completed long ago: its answer makes the task ready
    ready = tf.play(tf.resolved("t", "a", at=LATER + 1), state=after)
    assert ready.status is Status.READY


def test_a_dependent_cancelled_by_a_failed_dependency_runs_once_that_one_is_retried() -> None:
    """a fails, so b (waiting on a) is cancelled; retrying b alone cancels it again; retrying a
    (which then completes) and b makes b ready."""
    cluster = tf.Cluster()
    cluster.submit(tf.created("a", at=T0), tf.created("b", "a", at=T0))
    cluster.run()
    cluster.submit(
        tf.dispatched("a", at=T0 + 1),
        tf.started("a", at=T0 + 2),
        tf.failed("a", "gone", retryable=False, at=T0 + 3),
    )
    cluster.run()
    assert cluster.statuses() == {"a": Status.FAILED, "b": Status.CANCELLED}

    cluster.submit(tf.retry_requested("b", at=T0 + 10))
    cluster.run()
    assert cluster.status("b") is Status.CANCELLED
    assert cluster.states["b"].last_error == "dependency a failed"

    cluster.submit(
        tf.retry_requested("a", at=T0 + 20),
        tf.dispatched("a", at=T0 + 21),
        tf.started("a", at=T0 + 22),
        tf.completed("a", at=T0 + 23),
        tf.retry_requested("b", at=T0 + 30),
    )
    cluster.run()
    assert cluster.statuses() == {"a": Status.COMPLETED, "b": Status.READY}
    assert cluster.rejected == []


def test_a_retried_dependency_still_running_answers_the_dependent_when_it_ends() -> None:
    cluster = tf.Cluster()
    cluster.submit(tf.created("a", at=T0), tf.created("b", "a", at=T0))
    cluster.run()
    cluster.submit(tf.cancelled("a", at=T0 + 1))
    cluster.run()
    cluster.submit(
        tf.retry_requested("a", at=T0 + 10),
        tf.retry_requested("b", at=T0 + 11),
        tf.dispatched("a", at=T0 + 12),
    )
    cluster.run()
    assert cluster.statuses() == {"a": Status.DISPATCHED, "b": Status.PENDING}

    cluster.submit(tf.started("a", at=T0 + 13), tf.completed("a", at=T0 + 14))
    cluster.run()
    assert cluster.statuses() == {"a": Status.COMPLETED, "b": Status.READY}
    resolved = [e for e in cluster.delivered if isinstance(e.payload, DependencyResolved)]
    assert resolved[-1].payload == DependencyResolved("a", DependencyOutcome.COMPLETED)


def test_a_task_that_depends_on_itself_is_not_retried() -> None:
    failed = tf.play(tf.created("t", "t", at=T0))
    assert (failed.status, failed.last_error) == (Status.FAILED, "task depends on itself")

    rejection = tf.refuse(failed, tf.retry_requested("t", at=LATER))

    assert rejection.code is RejectionCode.ILLEGAL_TRANSITION
    assert "depends on itself" in rejection.reason


def test_a_task_at_the_most_attempts_a_task_may_make_is_not_retried() -> None:
    failed = evolve(_failed_after_every_attempt(max_attempts=1), attempt=MAX_ATTEMPTS)

    rejection = tf.refuse(failed, tf.retry_requested("t", at=LATER))

    assert rejection.code is RejectionCode.ILLEGAL_TRANSITION
    assert f"{MAX_ATTEMPTS} attempts" in rejection.reason


def test_the_refusal_in_another_status_names_the_status() -> None:
    running = tf.state_in(Status.RUNNING)

    rejection = tf.refuse(running, tf.retry_requested("t", at=LATER))

    assert rejection.code is RejectionCode.ILLEGAL_TRANSITION
    assert rejection.reason == "TaskRetryRequested is not allowed in status running"


@settings(deadline=None, max_examples=200)
@given(rounds=st.lists(st.sampled_from(["fail", "fatal", "cancel", "complete"]), max_size=12))
def test_every_retry_by_hand_is_one_more_attempt(rounds: list[str]) -> None:
    """However attempts end and are retried by hand, each retry announces the attempt after the
    last one, dispatching it counts it, and the count never passes the policy's attempts."""
    state = tf.play(tf.created("t", max_attempts=1, at=T0))
    at = T0
    for ending in rounds:
        if state.status is Status.COMPLETED:
            assert apply(state, tf.retry_requested("t", at=at)).is_rejected
            break
        if state.status.is_terminal:
            outcome = tf.accept(state, tf.retry_requested("t", at=at))
            assert [r.attempt for r in tf.readies(outcome)] == [state.attempt + 1]
            assert outcome.state is not None
            state = outcome.state
        before = state.attempt
        state = tf.play(tf.dispatched("t", at=at + 1), state=state)
        assert state.attempt == before + 1 <= state.policy.max_attempts
        if ending == "cancel":
            state = tf.play(tf.cancelled("t", at=at + 2), state=state)
        else:
            state = tf.play(tf.started("t", at=at + 2), state=state)
            last = {
                "fail": tf.failed("t", at=at + 3),
                "fatal": tf.failed("t", retryable=False, at=at + 3),
                "complete": tf.completed("t", at=at + 3),
            }[ending]
            state = tf.play(last, state=state)
        assert state.status.is_terminal  # max_attempts=1: no automatic retry
        at += 1_000
