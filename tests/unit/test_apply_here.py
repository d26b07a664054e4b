"""``apply_here``: an event and the follow-ups it causes for tasks of the same partition, applied
in one step, with the same final states as when every follow-up goes round through the log."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain import (
    DependencyResolved,
    Event,
    FollowUp,
    ReadyToSchedule,
    Status,
    TaskState,
    apply,
    apply_here,
)
from tests.unit import taskflow as tf


def _states_after(events: list[Event], here: set[str]) -> tuple[dict[str, TaskState], list[Event]]:
    """Fold ``events`` as a partition would, follow-ups of ``here`` tasks applied at once and
    every follow-up also appended to the log (read back later as a duplicate)."""
    states: dict[str, TaskState] = {}
    log = list(events)
    written: list[Event] = []
    for event in log:
        for step in apply_here(event, states.get, here.__contains__):
            if step.outcome.state is not None:
                states[step.event.task_id] = step.outcome.state
            for effect in step.outcome.effects:
                if isinstance(effect, FollowUp):
                    written.append(effect.event)
                    log.append(effect.event)
    return states, written


def test_a_dependency_of_the_same_partition_makes_its_dependent_ready_in_the_same_step() -> None:
    states: dict[str, TaskState] = {}
    for event in (tf.created("wf/a"), tf.created("wf/b", "wf/a")):
        for step in apply_here(event, states.get, lambda task_id: True):
            assert step.outcome.state is not None
            states[step.event.task_id] = step.outcome.state
    for event in (tf.dispatched("wf/a"), tf.started("wf/a")):
        states["wf/a"] = tf.accept(states["wf/a"], event).state  # type: ignore[assignment]
    steps = apply_here(tf.completed("wf/a"), states.get, lambda task_id: True)
    assert [(s.event.task_id, type(s.event.payload)) for s in steps][:2] == [
        ("wf/a", type(tf.completed("x").payload)),
        ("wf/b", DependencyResolved),
    ]
    dependent = steps[1].outcome
    assert dependent.state is not None and dependent.state.status is Status.READY
    assert any(isinstance(e, ReadyToSchedule) for e in dependent.effects)


def test_a_follow_up_for_a_task_elsewhere_waits_for_its_record() -> None:
    states: dict[str, TaskState] = {}
    steps = apply_here(tf.created("b", "a"), states.get, lambda task_id: task_id == "b")
    assert [s.event.task_id for s in steps] == ["b"]  # the registration is for "a"


def test_the_number_of_follow_ups_applied_at_once_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys.modules["streams.domain.fold"], "MAX_LOCAL_FOLLOW_UPS", 2)
    dependencies = [f"d{i}" for i in range(5)]
    steps = apply_here(tf.created("b", *dependencies), {}.get, lambda task_id: True)
    assert len(steps) == 1 + 2


_TASKS = ["g/a", "g/b", "g/c", "g/d"]


@st.composite
def _workloads(draw: st.DrawFn, ends: tuple[str, ...], cycles: bool) -> list[Event]:
    """Tasks of one group with random dependencies (cycles if ``cycles``) and random ends."""
    events: list[Event] = []
    for index, task_id in enumerate(_TASKS):
        others = [t for t in _TASKS if t != task_id] if cycles else _TASKS[:index]
        deps = draw(st.lists(st.sampled_from(others), unique=True, max_size=2)) if others else []
        events.append(tf.created(task_id, *deps))
    for task_id in draw(st.permutations(_TASKS)):
        end = draw(st.sampled_from(ends))
        if end == "complete":
            events += [tf.dispatched(task_id), tf.started(task_id), tf.completed(task_id)]
        elif end == "fail":
            events += [tf.dispatched(task_id), tf.started(task_id)]
            events.append(tf.failed(task_id, retryable=False))
        elif end == "cancel":
            events.append(tf.cancelled(task_id))
    return events


def _run_to_the_end(creations: list[Event], here: set[str]) -> tuple[dict[str, TaskState], int]:
    """Fold the creations, then, round after round, run every task found ready (dispatch,
    start, complete), as the scheduler and a handler would; the follow-ups of ``here`` tasks
    are applied at once, the others come back through the log. Returns the final states and
    the rounds it took."""
    states: dict[str, TaskState] = {}
    log = list(creations)
    rounds = 0
    while True:
        for event in log:
            for step in apply_here(event, states.get, here.__contains__):
                if step.outcome.state is not None:
                    states[step.event.task_id] = step.outcome.state
                log.extend(e.event for e in step.outcome.effects if isinstance(e, FollowUp))
        ready = sorted(t for t, s in states.items() if s.status is Status.READY)
        if not ready:
            return states, rounds
        rounds += 1
        log = [e for t in ready for e in (tf.dispatched(t), tf.started(t), tf.completed(t))]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 3), max_size=2), min_size=4, max_size=4),
    st.sets(st.sampled_from(_TASKS)),
)
def test_a_group_without_cycles_completes_whichever_follow_ups_are_applied_here(
    dependencies: list[list[int]], here: set[str]
) -> None:
    # each task depends only on tasks before it: no cycle, so every task must complete
    creations = [
        tf.created(task_id, *sorted({_TASKS[d] for d in deps if d < index}))
        for index, (task_id, deps) in enumerate(zip(_TASKS, dependencies, strict=True))
    ]
    inline, rounds_inline = _run_to_the_end(creations, here)
    round_trip, rounds = _run_to_the_end(creations, set())
    assert (
        {s.status for s in inline.values()}
        == {Status.COMPLETED}
        == {s.status for s in round_trip.values()}
    )
    assert rounds_inline == rounds  # each round runs what is ready: the same chain


@settings(max_examples=100, deadline=None)
@given(_workloads(("complete", "fail", "cancel", "nothing"), cycles=True))
def test_a_follow_up_applied_here_is_a_duplicate_when_its_record_comes_back(
    events: list[Event],
) -> None:
    states, written = _states_after(events, set(_TASKS))
    for event in written:
        state = states.get(event.task_id)
        assert state is not None
        assert apply(state, event).state is state  # already seen: no change, no effect
