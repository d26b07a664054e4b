"""Properties of the fold, checked with hypothesis.

(a) The order of delivery across tasks does not matter: random DAGs of tasks with random
    lifecycles, delivered in any interleaving (with duplicates, and registrations arriving before
    the dependency is created), end in the same states as a canonical delivery.
(b) Replay is deterministic: folding the same log twice gives identical states.
(c) Garbage never breaks the fold: any sequence of events for a task is either accepted or
    refused with exactly one ``Rejected`` and the state unchanged, and states stay consistent.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from streams.domain import (
    MAX_RESULT_BYTES,
    DependencyOutcome,
    DependencyRegistered,
    DependencyResolved,
    DependencyWaitExpired,
    Event,
    Outcome,
    Payload,
    ReadyToSchedule,
    Rejected,
    Source,
    Status,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskDeferred,
    TaskDispatched,
    TaskFailed,
    TaskProgress,
    TaskRetryDue,
    TaskRetryRequested,
    TaskRetryScheduled,
    TaskStarted,
    TaskState,
    TaskTimedOut,
    apply,
    fold,
    state_to_dict,
)
from streams.domain.timers import due_event
from tests.unit import taskflow as tf
from tests.unit.taskflow import T0, WAIT_MS, Cluster

# -- (a) order independence --------------------------------------------------------------------

RETRIES = ("fail", "throttle", "timeout")
"""Attempt outcomes after which the task is retried."""
ENDINGS = ("complete", "complete", "complete", "fatal", "cancel_ready", "cancel_running")
"""How a task's last attempt ends (completion weighted up so chains get deep)."""


@dataclass(frozen=True)
class Plan:
    """What happens to one task each time it becomes ready: ``steps[i]`` at readiness ``i``."""

    task_id: str
    dependencies: tuple[str, ...]
    steps: tuple[str, ...]
    max_attempts: int
    defer: bool
    dispatch: bool
    progress: tuple[float, ...]

    def creation(self) -> Event:
        return tf.created(
            self.task_id,
            *self.dependencies,
            eid=f"{self.task_id}/created",
            max_attempts=self.max_attempts,
        )


GHOST = "ghost"


@st.composite
def workloads(draw: st.DrawFn) -> list[Plan]:
    """5 to 15 tasks; task ``i`` depends only on tasks before it, so there is no cycle.

    A few depend on ``ghost``, which is never created: it is declared missing when due.
    """
    count = draw(st.integers(5, 15))
    ids = [f"t{i:02d}" for i in range(count)]
    plans = []
    for i, task_id in enumerate(ids):
        # duplicates allowed on purpose: creation collapses them
        deps = draw(st.lists(st.sampled_from(ids[:i]), max_size=3)) if i else []
        if draw(st.integers(0, 19)) == 19:
            deps.append(GHOST)
        retries = draw(st.lists(st.sampled_from(RETRIES), max_size=2))
        ending = draw(st.sampled_from(ENDINGS))
        fails = retries.count("fail") + retries.count("timeout")
        plans.append(
            Plan(
                task_id=task_id,
                dependencies=tuple(deps),
                steps=(*retries, ending),
                max_attempts=fails + 1 + draw(st.integers(0, 1)),
                defer=draw(st.booleans()),
                dispatch=draw(st.booleans()),
                progress=tuple(
                    sorted(draw(st.lists(st.floats(0.0, 1.0), max_size=2, unique=True)))
                ),
            )
        )
    return plans


@dataclass
class Executor:
    """Drives each task through its plan: reacts to readiness like a scheduler, an executor and
    a timer would. Every event it writes has an id and a time fixed by the plan, never by the
    delivery order."""

    plans: dict[str, Plan]
    readiness: dict[str, int] = field(default_factory=dict)

    def __call__(self, cluster: Cluster, ev: Event, outcome: Outcome) -> None:
        for effect in outcome.effects:
            if isinstance(effect, ReadyToSchedule):
                self._run(cluster, effect.task_id, effect.attempt)
        state = outcome.state
        if state and state.status is Status.AWAITED and state.task_id == GHOST:
            # the timer, when the wait bound passes (the same id each time: applied once)
            assert state.awaited_until_ms == T0 + WAIT_MS
            timer = due_event(state, state.awaited_until_ms)
            assert timer is not None
            cluster.submit(timer)
        if isinstance(ev.payload, TaskRetryScheduled) and state and state.retry_due_at_ms:
            # the timer, at the time the retry is due
            timer = due_event(state, state.retry_due_at_ms)
            assert timer is not None
            cluster.submit(timer)

    def _run(self, cluster: Cluster, task_id: str, attempt: int) -> None:
        plan = self.plans[task_id]
        n = self.readiness.get(task_id, 0)
        self.readiness[task_id] = n + 1
        step = plan.steps[n]
        events: list[Event] = []
        eid = f"{task_id}/r{n}"
        if plan.defer and n == 0:
            events.append(tf.deferred(task_id, eid=f"{eid}/deferred"))
        if step == "cancel_ready":
            cluster.submit(*events, tf.cancelled(task_id, "plan", eid=f"{eid}/cancelled"))
            return
        if plan.dispatch:
            events.append(tf.dispatched(task_id, eid=f"{eid}/dispatched"))
        events.append(tf.started(task_id, eid=f"{eid}/started"))
        events.extend(
            tf.progress(task_id, p, eid=f"{eid}/progress{i}") for i, p in enumerate(plan.progress)
        )
        end = f"{eid}/{step}"
        if step == "fail":
            events.append(tf.failed(task_id, "flaky", eid=end))
        elif step == "throttle":
            events.append(tf.failed(task_id, "429", throttled_ms=1_000 * (n + 1), eid=end))
        elif step == "fatal":
            events.append(tf.failed(task_id, "fatal", retryable=False, eid=end))
        elif step == "timeout":  # every event is at T0, so the attempt times out at T0 + timeout
            events.append(tf.timed_out(task_id, attempt, at=T0 + tf.TIMEOUT_MS, eid=end))
        elif step == "complete":
            events.append(tf.completed(task_id, task_id.encode(), eid=end))
        else:
            assert step == "cancel_running"
            events.append(tf.cancelled(task_id, "plan", eid=end))
        cluster.submit(*events)


def _canonical(plans: list[Plan]) -> Cluster:
    """Every task created in id order, then the smallest busy inbox delivered first."""
    cluster = Cluster(driver=Executor({p.task_id: p for p in plans}))
    cluster.submit(*(p.creation() for p in plans))
    cluster.run()
    return cluster


def _interleaved(plans: list[Plan], data: st.DataObject, duplicates: int) -> Cluster:
    """Creations, deliveries and duplicate deliveries in an order hypothesis chooses."""
    cluster = Cluster(driver=Executor({p.task_id: p for p in plans}))
    uncreated = [p.creation() for p in plans]
    left = duplicates
    while uncreated or cluster.busy():
        busy = cluster.busy()
        options = len(uncreated) + len(busy) + (1 if left and cluster.delivered else 0)
        choice = data.draw(st.integers(0, options - 1))
        if choice < len(uncreated):
            cluster.submit(uncreated.pop(choice))
        elif choice < len(uncreated) + len(busy):
            cluster.deliver(busy[choice - len(uncreated)])
        else:
            index = data.draw(st.integers(0, len(cluster.delivered) - 1))
            cluster.submit(cluster.delivered[index])
            left -= 1
    return cluster


def _comparable(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Every task's ``state_to_dict``, without what legitimately depends on delivery order.

    - ``seen_event_ids``: its order is the delivery order, and the ids of dependency answers
      depend on whether the dependency answered the registration at once (it had ended) or
      when it ended (it had not). Compared instead: the set of ids of events not derived by the
      fold (client, scheduler, executor, timer events), which must be the same.
    - ``updated_at_ms``: the time of whichever event came last (a late registration, say).
    - the event id of each history transition: a transition caused by a dependency's answer
      names that answer, whose id depends on the order as above. Status and time are compared.
    - ``last_error`` of a task cancelled by a dependency when more than one of its dependencies
      failed, was cancelled or is missing: the first answer to arrive names its dependency.
      Checked instead: it names one of them.
    - the time of a cancellation by a dependency: it is when the dependency named in
      ``last_error`` ended, which may be either of two (above), or a dependency cancelled at
      either of two times, transitively. Checked instead: it is when that dependency ended.
    """
    sources = {e.event_id: e.source for e in cluster.delivered}
    result = {}
    for task_id, state in cluster.states.items():
        data = state_to_dict(state)
        del data["seen_event_ids"], data["updated_at_ms"]
        data["history"] = [[status, at] for status, at, _ in data["history"]]
        data["non_fold_events"] = sorted(
            eid for eid in state.seen_event_ids if sources[eid] is not Source.FOLD
        )
        if state.status is Status.CANCELLED and state.last_error.startswith("dependency "):
            causes = {
                f"dependency {d} {cluster.states[d].status}"
                for d in state.dependencies
                if cluster.states[d].status in (Status.FAILED, Status.CANCELLED, Status.MISSING)
            }
            assert state.last_error in causes, (state.last_error, causes)
            # cancelled when (in event time) the dependency it names ended, never before
            cause = cluster.states[state.last_error.split()[1]]
            assert state.history[-1].at_ms == cause.history[-1].at_ms
            data["history"][-1][1] = "when the dependency named in last_error ended"
            if len(causes) > 1:
                data["last_error"] = sorted(causes)
        result[task_id] = data
    return result


def _differences(
    got: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]]
) -> list[tuple[str, str, Any, Any]]:
    """(task, field, got, want) for every field that differs."""
    assert got.keys() == want.keys()
    return [
        (task_id, name, got[task_id].get(name), want[task_id].get(name))
        for task_id in sorted(want)
        for name in sorted(want[task_id].keys() | got[task_id].keys())
        if got[task_id].get(name) != want[task_id].get(name)
    ]


def _check_settled(cluster: Cluster, plans: list[Plan]) -> None:
    assert cluster.busy() == []
    assert cluster.rejected == [], cluster.rejected
    for plan in plans:
        state = cluster.states[plan.task_id]
        assert state.status.is_terminal, (plan, state.status)
        assert (state.waiting, state.open_dependencies) == ((), ())


@settings(
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(plans=workloads(), data=st.data(), duplicates=st.integers(0, 10))
def test_any_delivery_order_ends_in_the_same_states(
    plans: list[Plan], data: st.DataObject, duplicates: int
) -> None:
    reference = _canonical(plans)
    _check_settled(reference, plans)
    cluster = _interleaved(plans, data, duplicates)
    _check_settled(cluster, plans)
    assert _differences(_comparable(cluster), _comparable(reference)) == []
    assert sorted(c.task_id for c in cluster.completed) == sorted(
        c.task_id for c in reference.completed
    )
    for label in _what_happened(cluster):
        event(label)


def _what_happened(cluster: Cluster) -> list[str]:
    """Labels for hypothesis' statistics: did the interleavings reach the interesting cases?"""
    first: dict[tuple[str, str], int] = {}
    for i, ev in enumerate(cluster.delivered):
        first.setdefault((ev.task_id, ev.kind), i)
    created = {t for t, kind in first if kind == "TaskCreated"}
    early = [
        t
        for t in created
        if first.get((t, "DependencyRegistered"), 1 << 30) < first[(t, "TaskCreated")]
    ]
    ids = [ev.event_id for ev in cluster.delivered]
    return [
        f"registrations before creation: {'yes' if early else 'no'}",
        f"duplicate deliveries: {'yes' if len(ids) > len(set(ids)) else 'no'}",
        f"missing dependency: {'yes' if (GHOST, 'DependencyWaitExpired') in first else 'no'}",
    ]


@settings(deadline=None, max_examples=40)
@given(plans=workloads(), data=st.data())
def test_every_task_ends_as_its_plan_and_dependencies_say(
    plans: list[Plan], data: st.DataObject
) -> None:
    cluster = _interleaved(plans, data, duplicates=0)
    ends = {
        "complete": Status.COMPLETED,
        "fatal": Status.FAILED,
        "cancel_ready": Status.CANCELLED,
        "cancel_running": Status.CANCELLED,
    }
    for plan in plans:  # in id order: dependencies first
        state = cluster.states[plan.task_id]
        deps_ok = all(cluster.states[d].status is Status.COMPLETED for d in plan.dependencies)
        if not deps_ok:
            assert state.status is Status.CANCELLED
            assert state.attempt == 0
            continue
        assert state.status is ends[plan.steps[-1]]
        counted = 0 if plan.steps[-1] == "cancel_ready" else 1  # throttled attempts never count
        assert state.attempt == plan.steps.count("fail") + plan.steps.count("timeout") + counted
        assert cluster.ready_ids().count(plan.task_id) == len(plan.steps)
        if state.status is Status.COMPLETED:
            assert state.result == plan.task_id.encode()


# -- cycles in any order -----------------------------------------------------------------------


@settings(deadline=None, max_examples=150)
@given(size=st.integers(2, 4), tail=st.booleans(), data=st.data())
def test_cycles_end_failed_or_cancelled_in_any_order(
    size: int, tail: bool, data: st.DataObject
) -> None:
    members = [f"c{i}" for i in range(size)]
    deps = {m: (members[(i + 1) % size],) for i, m in enumerate(members)}
    if tail:
        deps["outside"] = (members[0],)
    cluster = Cluster()
    uncreated = [tf.created(t, *d, eid=f"{t}/created") for t, d in deps.items()]
    while uncreated or cluster.busy():
        busy = cluster.busy()
        choice = data.draw(st.integers(0, len(uncreated) + len(busy) - 1))
        if choice < len(uncreated):
            cluster.submit(uncreated.pop(choice))
        else:
            cluster.deliver(busy[choice - len(uncreated)])
    assert cluster.rejected == []
    assert cluster.ready == []
    assert {cluster.status(t) for t in deps} <= {Status.FAILED, Status.CANCELLED}
    assert any("cycle" in cluster.states[m].last_error for m in members)
    if tail:
        assert cluster.status("outside") is Status.CANCELLED


# -- (b) replay --------------------------------------------------------------------------------


@settings(deadline=None, max_examples=40)
@given(plans=workloads(), data=st.data(), duplicates=st.integers(0, 5))
def test_folding_the_same_log_twice_gives_identical_states(
    plans: list[Plan], data: st.DataObject, duplicates: int
) -> None:
    cluster = _interleaved(plans, data, duplicates)
    log = list(cluster.delivered)
    first, second = fold(log), fold(log)
    dump = {t: json.dumps(state_to_dict(s), sort_keys=True) for t, s in first.items()}
    assert dump == {t: json.dumps(state_to_dict(s), sort_keys=True) for t, s in second.items()}
    # the replay is what the live fold computed
    assert first == cluster.states
    # a replay of a replay's log, with every event delivered twice, is the same again
    assert fold(e for ev in log for e in (ev, ev)) == first


# -- (c) garbage -------------------------------------------------------------------------------

IDS = ("t", "a", "b", "")
LONG = st.integers(-(2**63), 2**63 - 1)
SMALL = st.integers(-3, 6)
MS = st.one_of(st.integers(-5, 5), st.integers(0, 4 * WAIT_MS), LONG)
TEXT = st.sampled_from(["", "x", "boom", "rate_limit"])


def payloads() -> st.SearchStrategy[Payload]:
    id_lists = st.lists(st.sampled_from(IDS), max_size=4).map(tuple)
    return st.one_of(
        st.builds(
            TaskCreated,
            task_type=TEXT,
            platform=TEXT,
            target=TEXT,
            priority=SMALL,
            dependencies=id_lists,
            timeout_ms=MS,
            max_attempts=SMALL,
            retry_delay_ms=MS,
            result_ttl_ms=MS,
            dependency_wait_ms=MS,
        ),
        st.just(TaskDispatched()),
        st.just(TaskStarted()),
        st.builds(TaskProgress, st.floats(allow_nan=True, allow_infinity=True)),
        st.builds(
            TaskCompleted,
            st.one_of(st.binary(max_size=8), st.just(b"x" * (MAX_RESULT_BYTES + 1))),
            TEXT,
        ),
        st.builds(TaskFailed, TEXT, st.booleans(), MS),
        st.builds(TaskCancelled, TEXT),
        st.builds(TaskTimedOut, SMALL),
        st.builds(TaskRetryScheduled, SMALL, MS, MS),
        st.builds(TaskRetryDue, SMALL),
        st.builds(DependencyRegistered, st.sampled_from(IDS), id_lists, MS),
        st.builds(DependencyResolved, st.sampled_from(IDS), st.sampled_from(DependencyOutcome)),
        st.just(DependencyWaitExpired()),
        st.builds(TaskDeferred, TEXT, TEXT, MS),
        st.just(TaskRetryRequested()),
    )


def garbage_events() -> st.SearchStrategy[Event]:
    return st.builds(
        Event,
        event_id=st.sampled_from([f"e{i}" for i in range(12)]),  # repeats on purpose
        task_id=st.just("t"),
        occurred_at_ms=st.one_of(st.integers(T0 - 10, T0 + 4 * WAIT_MS), LONG),
        source=st.sampled_from(Source),
        payload=payloads(),
    )


def _check_consistent(state: TaskState) -> None:
    assert state.task_id == "t"
    assert state.history and state.history[-1].status is state.status
    assert len(set(state.seen_event_ids)) == len(state.seen_event_ids)
    assert not math.isnan(state.progress) and 0.0 <= state.progress <= 1.0
    assert (state.status is Status.COMPLETED) == (state.result is not None)
    assert state.attempt >= 0
    if state.status.is_created:
        assert state.attempt <= state.policy.max_attempts
    if state.open_dependencies:
        assert state.status is Status.PENDING
        assert set(state.open_dependencies) <= set(state.dependencies)
    if state.status.is_terminal:
        assert (state.waiting, state.open_dependencies) == ((), ())
        assert (state.deadline_ms, state.retry_due_at_ms) == (None, None)
    if state.status is not Status.AWAITED:
        assert state.awaited_until_ms is None
    json.dumps(state_to_dict(state), sort_keys=True)


@settings(deadline=None, max_examples=400)
@given(events=st.lists(garbage_events(), max_size=40))
def test_garbage_is_accepted_or_refused_with_one_rejection_and_never_raises(
    events: list[Event],
) -> None:
    state: TaskState | None = None
    for ev in events:
        outcome = apply(state, ev)
        rejections = [e for e in outcome.effects if isinstance(e, Rejected)]
        if rejections:
            assert len(outcome.effects) == 1
            assert outcome.state == state
            continue
        after = outcome.state
        if after is None:
            assert state is None
            continue
        if state is not None and ev.event_id in state.seen_event_ids:
            assert (after, outcome.effects) == (state, ())
            continue
        assert after.seen_event_ids == (*(state.seen_event_ids if state else ()), ev.event_id)
        assert after.updated_at_ms == ev.occurred_at_ms
        _check_consistent(after)
        state = after


@settings(deadline=None, max_examples=200)
@given(events=st.lists(garbage_events(), max_size=40))
def test_garbage_folds_to_what_applying_one_by_one_gives(events: list[Event]) -> None:
    state: TaskState | None = None
    for ev in events:
        outcome = apply(state, ev)
        if outcome.state is not None:
            state = outcome.state
    assert fold(events).get("t") == state
