"""The size bounds of ``streams.domain.bounds``, as the fold enforces them.

Whatever an event holds, the state it leaves must fit the ``tasks`` changelog, and a refused
event must leave the state as it was.
"""

from __future__ import annotations

import base64

import pytest

import tests.unit.taskflow as tf
from streams.domain import (
    DependencyOutcome,
    RejectionCode,
    Status,
    TaskState,
    Transition,
    apply,
    bounds,
    state_to_json,
)
from streams.domain.state import TaskPolicy


def _id(n: int, width: int = bounds.MAX_ID_CHARS) -> str:
    return f"{n}".rjust(width, "x")


def _worst_state() -> TaskState:
    """Every field at its bound at once (more than any reachable state holds together)."""
    ids = tuple(_id(i) for i in range(bounds.MAX_DEPENDENTS))
    deps = ids[: bounds.MAX_DEPENDENCIES]
    worst_text = "\x01" * bounds.MAX_REASON_CHARS  # a control character escapes to 6 bytes
    event_id = "e" * bounds.MAX_EVENT_ID_CHARS
    return TaskState(
        task_id=_id(0),
        status=Status.COMPLETED,
        task_type="t" * bounds.MAX_NAME_CHARS,
        platform="p" * bounds.MAX_NAME_CHARS,
        target="é" * (bounds.MAX_TARGET_BYTES // 2),  # 2 UTF-8 bytes, 6 in escaped JSON
        priority=bounds.MAX_PRIORITY,
        dependencies=deps,
        open_dependencies=deps,
        dependents=ids,
        waiting=ids,
        policy=TaskPolicy(*(bounds.MAX_POLICY_MS,) * 5),
        attempt=bounds.MAX_ATTEMPTS,
        progress=1.0,
        result=b"\xff" * bounds.MAX_RESULT_BYTES,
        result_content_type="c" * bounds.MAX_CONTENT_TYPE_CHARS,
        last_error=worst_text,
        held_reason=worst_text,
        held_detail=worst_text,
        created_at_ms=2**62,
        updated_at_ms=2**62,
        completed_at_ms=2**62,
        history=tuple(Transition(Status.RUNNING, 2**62, event_id) for _ in range(200)),
        seen_event_ids=(event_id,) * bounds.SEEN_EVENT_IDS_KEPT,
    )


def test_the_largest_state_the_bounds_allow_fits_the_changelog() -> None:
    size = len(state_to_json(_worst_state()))
    assert size <= bounds.MAX_STATE_BYTES < bounds.LARGE_RECORD_MAX_BYTES


def test_progress_events_without_end_keep_the_state_small() -> None:
    state = tf.state_in(Status.RUNNING)
    for _ in range(30_000):
        state = apply(state, tf.progress("t", 0.5)).state
    assert state is not None
    assert len(state.seen_event_ids) == bounds.SEEN_EVENT_IDS_KEPT
    assert len(state_to_json(state)) < 32_000


def test_a_duplicate_within_the_kept_ids_changes_nothing() -> None:
    state = tf.state_in(Status.RUNNING)
    first = tf.progress("t", 0.2)
    state = tf.accept(state, first).state
    for _ in range(bounds.SEEN_EVENT_IDS_KEPT - 1):
        state = tf.accept(state, tf.progress("t", 0.3)).state
    assert apply(state, first) == apply(state, first)
    assert apply(state, first).state is state


def test_history_keeps_its_first_and_newest_transitions() -> None:
    state = tf.play(tf.created("t", max_rate_limited=bounds.MAX_ATTEMPTS))
    first = state.history[0]
    for _ in range(bounds.HISTORY_KEPT):  # throttled attempts: no attempt is spent
        state = tf.accept(state, tf.started("t")).state
        outcome = tf.accept(state, tf.failed("t", throttled_ms=1000))
        retry = tf.only_follow_up(outcome)
        state = tf.accept(outcome.state, retry).state
        state = tf.accept(state, tf.retry_due("t", state.attempt, at=retry.payload.due_at_ms)).state
    assert len(state.history) == bounds.HISTORY_KEPT
    assert state.history[0] == first
    assert state.history[-1].status is Status.READY


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("target", "\x01" * 200_000, RejectionCode.TOO_LARGE),
        ("target", "x" * (bounds.MAX_TARGET_BYTES + 1), RejectionCode.TOO_LARGE),
        ("target", "a\x00b", RejectionCode.INVALID_PAYLOAD),
        ("task_type", "t" * (bounds.MAX_NAME_CHARS + 1), RejectionCode.TOO_LARGE),
        ("platform", "linked in", RejectionCode.INVALID_PAYLOAD),
        ("dependencies", tuple(_id(i, 8) for i in range(20_000)), RejectionCode.TOO_LARGE),
        ("dependencies", ("a/b/c",), RejectionCode.INVALID_ID),
        ("priority", bounds.MAX_PRIORITY + 1, RejectionCode.INVALID_PAYLOAD),
        ("timeout_ms", bounds.MAX_POLICY_MS + 1, RejectionCode.TOO_LARGE),
        ("max_attempts", bounds.MAX_ATTEMPTS + 1, RejectionCode.TOO_LARGE),
    ],
)
def test_creation_over_a_bound_is_refused(field: str, value: object, code: RejectionCode) -> None:
    rejection = tf.refuse(None, tf.created("t", **{field: value}))
    assert rejection.code is code
    assert "limit" in rejection.reason or code is not RejectionCode.TOO_LARGE


@pytest.mark.parametrize(
    "task_id",
    ["../state", "a/b/c", "a//b", "/b", "a/", "a/.b", "", "x" * 201, "é", ".hidden", "a b"],
)
def test_an_event_for_an_invalid_task_id_is_refused(task_id: str) -> None:
    assert tf.refuse(None, tf.created(task_id)).code is RejectionCode.INVALID_ID


def test_ids_of_the_whole_alphabet_and_length_are_accepted() -> None:
    task_id = ("Az09._:@=+~-" * 20)[: bounds.MAX_ID_CHARS]
    assert tf.accept(None, tf.created(task_id, eid="e1")).state is not None


@pytest.mark.parametrize("task_id", ["wf-42/fetch", "a/b", ("g" * 99) + "/" + ("n" * 100)])
def test_a_grouped_id_is_accepted(task_id: str) -> None:
    assert tf.accept(None, tf.created(task_id, eid="e1")).state is not None


def test_a_result_over_the_bound_is_refused() -> None:
    running = tf.state_in(Status.RUNNING)
    big = b"r" * (bounds.MAX_RESULT_BYTES + 1)
    assert tf.refuse(running, tf.completed("t", big)).code is RejectionCode.RESULT_TOO_LARGE
    assert tf.accept(running, tf.completed("t", big[:-1])).state.status is Status.COMPLETED


def test_a_long_error_is_cut_not_refused() -> None:
    state = tf.accept(tf.state_in(Status.RUNNING), tf.failed("t", "e" * 900_000)).state
    assert len(state.last_error) == bounds.MAX_REASON_CHARS
    assert state.last_error.endswith("[cut from 900000 characters]")


def test_a_registration_past_the_dependents_bound_is_answered_refused() -> None:
    state = tf.state_in(Status.RUNNING, "z")
    for i in range(bounds.MAX_DEPENDENTS):
        state = tf.accept(state, tf.registered("z", f"d{i}")).state
    outcome = tf.accept(state, tf.registered("z", "late"))
    assert outcome.state.dependents == state.dependents
    answer = tf.only_follow_up(outcome)
    assert answer.task_id == "late"
    assert answer.payload.outcome is DependencyOutcome.REFUSED


def test_a_refused_registration_cancels_the_dependent_saying_why() -> None:
    pending = tf.play(tf.created("late", "a"))
    outcome = tf.accept(pending, tf.resolved("late", "a", DependencyOutcome.REFUSED))
    assert outcome.state.status is Status.CANCELLED
    assert "refused the registration" in outcome.state.last_error


def test_a_completed_task_with_the_most_dependents_still_answers_late_ones() -> None:
    state = tf.state_in(Status.COMPLETED, "z")
    for i in range(bounds.MAX_DEPENDENTS + 5):
        state = tf.accept(state, tf.registered("z", f"d{i}")).state
    assert len(state.dependents) == bounds.MAX_DEPENDENTS
    answer = tf.only_follow_up(tf.accept(state, tf.registered("z", "late")))
    assert answer.payload.outcome is DependencyOutcome.COMPLETED


def test_a_chain_waiting_past_the_bound_is_refused() -> None:
    pending = tf.play(tf.created("a", "root"))
    waiting = [_id(i, 10) for i in range(bounds.MAX_WAITING + 1)]
    outcome = tf.accept(pending, tf.registered("a", waiting[0], waiting))
    assert outcome.state.waiting == pending.waiting
    assert tf.only_follow_up(outcome).payload.outcome is DependencyOutcome.REFUSED


def test_a_result_in_state_is_base64_so_its_bound_is_on_the_raw_bytes() -> None:
    encoded = base64.b64encode(b"\xff" * bounds.MAX_RESULT_BYTES)
    assert len(encoded) < bounds.MAX_STATE_BYTES
