"""Dependencies across partitions: registrations, answers, placeholders, cascades and cycles.

Given tasks submitted to a ``taskflow.Cluster`` (one inbox per task, follow-ups routed between
inboxes), when the inboxes are delivered in some order, then the tasks end as the protocol in
``streams.domain.fold`` says, whatever that order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from streams.domain import (
    DependencyOutcome,
    DependencyRegistered,
    DependencyResolved,
    Event,
    RejectionCode,
    Source,
    Status,
    apply,
)
from tests.unit import taskflow as tf
from tests.unit.taskflow import T0, WAIT_MS, Cluster

Chooser = Callable[[list[str]], str]


def _round_robin() -> Chooser:
    turn = itertools.count()
    return lambda busy: busy[next(turn) % len(busy)]


CHOOSERS = pytest.mark.parametrize("order", ["min", "max", "round_robin"])


def _chooser(order: str) -> Chooser:
    """Delivery orders: smallest busy id first, largest first, round robin."""
    choosers: dict[str, Chooser] = {"min": min, "max": max, "round_robin": _round_robin()}
    return choosers[order]


def _complete(cluster: Cluster, task_id: str, *, at: int = T0) -> None:
    """Run ``task_id`` (which must be ready) to completion, delivering its own inbox only."""
    assert cluster.status(task_id) is Status.READY, cluster.status(task_id)
    cluster.submit(tf.dispatched(task_id, at=at), tf.started(task_id, at=at))
    cluster.submit(tf.completed(task_id, at=at))
    while cluster.inboxes[task_id]:
        cluster.deliver(task_id)


def _fail(cluster: Cluster, task_id: str) -> None:
    cluster.submit(tf.started(task_id), tf.failed(task_id, "fatal", retryable=False))
    while cluster.inboxes[task_id]:
        cluster.deliver(task_id)


# -- readiness in dependency order -------------------------------------------------------------


@CHOOSERS
def test_chain_becomes_ready_in_dependency_order(order: str) -> None:
    cluster = Cluster()
    cluster.submit(tf.created("c", "b"), tf.created("b", "a"), tf.created("a"))
    cluster.run(_chooser(order))
    assert cluster.ready_ids() == ["a"]
    assert cluster.statuses() == {"a": Status.READY, "b": Status.PENDING, "c": Status.PENDING}
    _complete(cluster, "a")
    cluster.run(_chooser(order))
    assert cluster.ready_ids() == ["a", "b"]
    assert cluster.status("c") is Status.PENDING
    _complete(cluster, "b")
    cluster.run(_chooser(order))
    assert cluster.ready_ids() == ["a", "b", "c"]
    _complete(cluster, "c")
    assert [c.task_id for c in cluster.completed] == ["a", "b", "c"]
    assert cluster.rejected == []
    assert cluster.states["a"].dependents == ("b",)
    assert cluster.states["c"].dependencies == ("b",)


@CHOOSERS
def test_fan_out_makes_every_dependent_ready_at_once(order: str) -> None:
    cluster = Cluster()
    cluster.submit(*(tf.created(f"leaf{i}", "root") for i in range(4)), tf.created("root"))
    cluster.run(_chooser(order))
    assert cluster.ready_ids() == ["root"]
    _complete(cluster, "root")
    cluster.run(_chooser(order))
    assert sorted(cluster.ready_ids()[1:]) == [f"leaf{i}" for i in range(4)]
    assert cluster.states["root"].dependents == tuple(f"leaf{i}" for i in range(4))


@CHOOSERS
def test_diamond_joins_only_when_both_branches_completed(order: str) -> None:
    cluster = Cluster()
    cluster.submit(
        tf.created("join", "left", "right"),
        tf.created("left", "top"),
        tf.created("right", "top"),
        tf.created("top"),
    )
    cluster.run(_chooser(order))
    _complete(cluster, "top")
    cluster.run(_chooser(order))
    assert sorted(cluster.ready_ids()) == ["left", "right", "top"]
    _complete(cluster, "left")
    cluster.run(_chooser(order))
    join = cluster.states["join"]
    assert (join.status, join.open_dependencies) == (Status.PENDING, ("right",))
    _complete(cluster, "right")
    cluster.run(_chooser(order))
    assert cluster.ready_ids()[-1] == "join"
    assert cluster.states["join"].open_dependencies == ()
    assert cluster.rejected == []


# -- registration before creation, after the end -----------------------------------------------


def test_dependency_registered_before_it_exists_is_awaited_then_created() -> None:
    cluster = Cluster()
    cluster.submit(tf.created("b", "a", dependency_wait_ms=5_000))
    cluster.run()
    awaited = cluster.states["a"]
    assert awaited.status is Status.AWAITED
    assert (awaited.dependents, awaited.awaited_until_ms) == (("b",), T0 + 5_000)
    assert cluster.states["b"].status is Status.PENDING
    cluster.submit(tf.created("a", at=T0 + 1_000))
    cluster.run()
    a = cluster.states["a"]
    assert (a.status, a.dependents, a.awaited_until_ms) == (Status.READY, ("b",), None)
    _complete(cluster, "a", at=T0 + 2_000)
    cluster.run()
    assert cluster.ready_ids() == ["a", "b"]


def test_placeholder_keeps_the_earliest_wait_bound_of_its_dependents() -> None:
    cluster = Cluster()
    cluster.submit(tf.created("b", "a", dependency_wait_ms=9_000))
    cluster.submit(tf.created("c", "a", dependency_wait_ms=4_000, at=T0 + 1_000))
    cluster.run()
    assert cluster.states["a"].awaited_until_ms == T0 + 5_000
    assert cluster.states["a"].dependents == ("b", "c")


@pytest.mark.parametrize(
    ("end", "outcome", "dependent_status"),
    [
        (Status.COMPLETED, DependencyOutcome.COMPLETED, Status.READY),
        (Status.FAILED, DependencyOutcome.FAILED, Status.CANCELLED),
        (Status.CANCELLED, DependencyOutcome.CANCELLED, Status.CANCELLED),
    ],
)
def test_dependency_that_already_ended_answers_the_registration_at_once(
    end: Status, outcome: DependencyOutcome, dependent_status: Status
) -> None:
    cluster = Cluster()
    cluster.submit(tf.created("a"))
    cluster.run()
    if end is Status.COMPLETED:
        _complete(cluster, "a")
    elif end is Status.FAILED:
        _fail(cluster, "a")
    else:
        cluster.submit(tf.cancelled("a"))
        cluster.run()
    assert cluster.status("a") is end
    cluster.submit(tf.created("b", "a"))
    cluster.deliver("b")
    answer = tf.only_follow_up(cluster.deliver("a"))
    assert answer.task_id == "b"
    assert answer.payload == DependencyResolved("a", outcome)
    cluster.run()
    b = cluster.states["b"]
    assert b.status is dependent_status
    if dependent_status is Status.CANCELLED:
        assert b.last_error == f"dependency a {outcome}"


@pytest.mark.parametrize("end", [Status.COMPLETED, Status.FAILED, Status.CANCELLED])
def test_dependents_are_recorded_whether_they_registered_before_or_after_the_end(
    end: Status,
) -> None:
    """Regression: a registration answered at once used to be forgotten, so ``dependents`` of
    an ended task depended on whether the registration arrived before or after its end."""

    def finish(cluster: Cluster) -> None:
        if end is Status.COMPLETED:
            _complete(cluster, "a")
        elif end is Status.FAILED:
            _fail(cluster, "a")
        else:
            cluster.submit(tf.cancelled("a"))
        cluster.run()

    before = Cluster()
    before.submit(tf.created("a"), tf.created("b", "a"))
    before.run()
    finish(before)
    after = Cluster()
    after.submit(tf.created("a"))
    after.run()
    finish(after)
    after.submit(tf.created("b", "a"))
    after.run()
    assert before.states["a"].dependents == after.states["a"].dependents == ("b",)
    assert before.states["b"].status is after.states["b"].status


def test_registration_delivered_after_the_end_is_answered_no_earlier_than_the_end() -> None:
    """Regression: the answer was dated with the registration, so a registration written before
    the dependency completed but delivered after made the dependent ready before it had."""
    cluster = Cluster()
    cluster.submit(tf.created("a", at=T0), tf.created("b", "a", at=T0 + 10))
    cluster.deliver("a")
    cluster.deliver("b")
    registration = cluster.inboxes["a"].pop()  # dated T0 + 10, delivered after a completed
    assert registration.occurred_at_ms == T0 + 10
    _complete(cluster, "a", at=T0 + 50)
    cluster.submit(registration)
    cluster.run()
    b = cluster.states["b"]
    assert b.history[-1].status is Status.READY
    assert b.history[-1].at_ms == T0 + 50
    assert cluster.ready[-1].ready_at_ms == T0 + 50


def test_registration_written_after_the_end_is_answered_at_its_own_time() -> None:
    cluster = Cluster()
    cluster.submit(tf.created("a", at=T0))
    cluster.run()
    _complete(cluster, "a", at=T0 + 50)
    cluster.submit(tf.created("b", "a", at=T0 + 80))
    cluster.run()
    assert cluster.states["b"].history[-1].at_ms == T0 + 80


def test_dependent_is_cancelled_no_earlier_than_its_dependency_was_declared_missing() -> None:
    cluster = _waiting_on_ghost()
    cluster.submit(tf.created("late", "ghost", at=T0 + 1_000))
    cluster.deliver("late")
    registration = cluster.inboxes["ghost"].pop()  # delivered after ghost was declared missing
    cluster.tick(T0 + 5_000)
    cluster.run()
    cluster.submit(registration)
    cluster.run()
    late = cluster.states["late"]
    assert (late.status, late.history[-1].at_ms) == (Status.CANCELLED, T0 + 5_000)


# -- cascades ----------------------------------------------------------------------------------


def _three_levels() -> Cluster:
    """root <- mid <- leaf1, leaf2 <- tip (tip waits on leaf1 and an unrelated ready task)."""
    cluster = Cluster()
    cluster.submit(
        tf.created("tip", "leaf1", "other"),
        tf.created("leaf1", "mid"),
        tf.created("leaf2", "mid"),
        tf.created("mid", "root"),
        tf.created("root"),
        tf.created("other"),
    )
    cluster.run()
    return cluster


def test_failed_dependency_cancels_its_dependents_transitively() -> None:
    cluster = _three_levels()
    _fail(cluster, "root")
    cluster.run()
    assert cluster.statuses() == {
        "leaf1": Status.CANCELLED,
        "leaf2": Status.CANCELLED,
        "mid": Status.CANCELLED,
        "other": Status.READY,
        "root": Status.FAILED,
        "tip": Status.CANCELLED,
    }
    errors = {t: s.last_error for t, s in cluster.states.items()}
    assert errors["mid"] == "dependency root failed"
    assert errors["leaf1"] == errors["leaf2"] == "dependency mid cancelled"
    assert errors["tip"] == "dependency leaf1 cancelled"
    assert cluster.rejected == []


def test_cancelled_dependency_cancels_its_dependents_transitively() -> None:
    cluster = _three_levels()
    cluster.submit(tf.cancelled("root", "operator said so"))
    cluster.run()
    assert {t for t, s in cluster.statuses().items() if s is Status.CANCELLED} == {
        "root",
        "mid",
        "leaf1",
        "leaf2",
        "tip",
    }
    assert cluster.states["root"].last_error == "operator said so"
    assert cluster.states["mid"].last_error == "dependency root cancelled"
    assert cluster.states["tip"].last_error == "dependency leaf1 cancelled"


def test_cancelling_a_middle_task_leaves_its_dependencies_alone() -> None:
    cluster = _three_levels()
    cluster.submit(tf.cancelled("mid"))
    cluster.run()
    assert cluster.status("root") is Status.READY
    assert cluster.status("tip") is Status.CANCELLED
    _complete(cluster, "root")
    cluster.run()
    assert cluster.rejected == []
    assert cluster.status("mid") is Status.CANCELLED


# -- self-dependencies and cycles --------------------------------------------------------------


def test_self_dependency_fails_with_a_clear_reason() -> None:
    cluster = Cluster()
    cluster.submit(tf.created("a", "a"), tf.created("b", "a"))
    cluster.run()
    a = cluster.states["a"]
    assert (a.status, a.last_error) == (Status.FAILED, "task depends on itself")
    assert cluster.states["b"].status is Status.CANCELLED
    assert cluster.states["b"].last_error == "dependency a failed"
    assert cluster.ready == []


Edges = tuple[tuple[str, str], ...]


def _cycle_cases() -> list[tuple[Edges, tuple[str, ...], str]]:
    """(edges task -> dependency, creation order, delivery order) of 2- and 3-cycles."""
    two: Edges = (("a", "b"), ("b", "a"))
    three: Edges = (("a", "b"), ("b", "c"), ("c", "a"))
    cases: list[tuple[Edges, tuple[str, ...], str]] = []
    for edges in (two, three):
        members = tuple(sorted({t for t, _ in edges}))
        for creation in itertools.permutations(members):
            for order in ("min", "max", "round_robin", "all_created_first"):
                cases.append((edges, creation, order))
    return cases


@pytest.mark.parametrize(("edges", "creation", "order"), _cycle_cases())
def test_cycle_ends_with_every_member_failed_or_cancelled(
    edges: Edges, creation: tuple[str, ...], order: str
) -> None:
    deps = dict(edges)
    cluster = Cluster()
    if order == "all_created_first":
        # every member exists before any registration arrives
        for task_id in creation:
            cluster.submit(tf.created(task_id, deps[task_id]))
            cluster.deliver(task_id)
        cluster.run()
    else:
        for task_id in creation:
            cluster.submit(tf.created(task_id, deps[task_id]))
            cluster.run(_chooser(order))
    _assert_cycle_broken(cluster, set(deps))


def _assert_cycle_broken(cluster: Cluster, members: set[str]) -> None:
    assert cluster.busy() == []
    assert cluster.rejected == []
    assert cluster.ready == []
    statuses = {t: cluster.status(t) for t in members}
    assert set(statuses.values()) <= {Status.FAILED, Status.CANCELLED}, statuses
    reasons = [cluster.states[t].last_error for t in members]
    assert any("cycle" in r for r in reasons), reasons
    for task_id in members:
        state = cluster.states[task_id]
        assert (state.waiting, state.open_dependencies) == ((), ())


def test_cycle_reason_names_the_members() -> None:
    cluster = Cluster()
    cluster.submit(tf.created("b", "a"))
    cluster.run()
    cluster.submit(tf.created("a", "b"))
    cluster.run()
    assert cluster.states["a"].last_error == "dependency cycle through b"
    assert cluster.states["b"].last_error == "dependency a failed"


def test_tasks_waiting_on_a_cycle_are_cancelled() -> None:
    cluster = Cluster()
    cluster.submit(tf.created("outside", "x"), tf.created("x", "y"), tf.created("y", "x"))
    cluster.run(max)
    assert cluster.status("outside") is Status.CANCELLED
    _assert_cycle_broken(cluster, {"x", "y"})


def test_a_longer_chain_into_a_cycle_is_cancelled_whatever_the_creation_order() -> None:
    edges = {"p": ("q",), "q": ("r",), "r": ("s",), "s": ("q",)}
    for creation in itertools.permutations(edges):
        cluster = Cluster()
        for task_id in creation:
            cluster.submit(tf.created(task_id, *edges[task_id]))
            cluster.run(_round_robin())
        _assert_cycle_broken(cluster, {"q", "r", "s"})
        assert cluster.status("p") is Status.CANCELLED


# -- dependencies never created ----------------------------------------------------------------


def _waiting_on_ghost() -> Cluster:
    cluster = Cluster()
    cluster.submit(
        tf.created("b", "ghost", dependency_wait_ms=5_000),
        tf.created("c", "b"),
        tf.created("d", "ghost", "c", dependency_wait_ms=7_000),
    )
    cluster.run()
    assert cluster.status("ghost") is Status.AWAITED
    assert cluster.states["ghost"].awaited_until_ms == T0 + 5_000
    return cluster


def test_wait_expiry_before_the_bound_is_stale() -> None:
    cluster = _waiting_on_ghost()
    cluster.submit(tf.wait_expired("ghost", at=T0 + 4_999))
    cluster.run()
    ((_, rejection),) = cluster.rejected
    assert rejection.code is RejectionCode.STALE
    assert cluster.status("ghost") is Status.AWAITED
    assert cluster.tick(T0 + 4_999) == []


def test_wait_expiry_after_the_bound_declares_the_dependency_missing() -> None:
    cluster = _waiting_on_ghost()
    (timer,) = cluster.tick(T0 + 5_000)
    assert timer.source is Source.TIMER
    cluster.run()
    ghost = cluster.states["ghost"]
    assert (ghost.status, ghost.dependents, ghost.awaited_until_ms) == (Status.MISSING, (), None)
    assert ghost.history[-1].status is Status.MISSING
    assert cluster.statuses() == {
        "b": Status.CANCELLED,
        "c": Status.CANCELLED,
        "d": Status.CANCELLED,
        "ghost": Status.MISSING,
    }
    assert cluster.states["b"].last_error == "dependency ghost missing"
    assert "ghost" in cluster.states["d"].last_error
    assert cluster.states["c"].last_error == "dependency b cancelled"
    assert cluster.rejected == []
    # the timer firing again (same derived id) changes nothing
    assert apply(ghost, timer).effects == ()


def test_registration_after_the_dependency_was_declared_missing_is_answered_at_once() -> None:
    cluster = _waiting_on_ghost()
    cluster.tick(T0 + 5_000)
    cluster.run()
    cluster.submit(tf.created("late", "ghost", at=T0 + 6_000))
    cluster.run()
    late = cluster.states["late"]
    assert (late.status, late.last_error) == (Status.CANCELLED, "dependency ghost missing")


def test_task_created_after_being_declared_missing_is_a_normal_task() -> None:
    cluster = _waiting_on_ghost()
    cluster.tick(T0 + 5_000)
    cluster.run()
    cluster.submit(tf.created("ghost", at=T0 + 9_000))
    cluster.run()
    ghost = cluster.states["ghost"]
    assert (ghost.status, ghost.dependents, ghost.created_at_ms) == (Status.READY, (), T0 + 9_000)
    assert ghost.history[-1].status is Status.READY
    cluster.submit(tf.created("e", "ghost", at=T0 + 9_500))
    cluster.run()
    _complete(cluster, "ghost", at=T0 + 10_000)
    cluster.run()
    assert cluster.status("e") is Status.READY
    assert cluster.rejected == []


def test_task_created_in_time_is_not_declared_missing() -> None:
    cluster = _waiting_on_ghost()
    cluster.submit(tf.created("ghost", at=T0 + 4_000))
    cluster.run()
    assert cluster.tick(T0 + WAIT_MS) == []
    cluster.submit(tf.wait_expired("ghost", at=T0 + WAIT_MS))
    cluster.run()
    assert [r.code for _, r in cluster.rejected] == [RejectionCode.STALE]
    assert cluster.status("ghost") is Status.READY


# -- the registration itself -------------------------------------------------------------------


def test_duplicate_dependency_ids_are_collapsed() -> None:
    outcome = tf.accept(None, tf.created("b", "a", "x", "a", "x", "a"))
    b = outcome.state
    assert b is not None
    assert (b.dependencies, b.open_dependencies) == (("a", "x"), ("a", "x"))
    registrations = tf.follow_ups(outcome)
    assert [(e.task_id, e.kind) for e in registrations] == [
        ("a", "DependencyRegistered"),
        ("x", "DependencyRegistered"),
    ]
    cluster = Cluster()
    cluster.submit(tf.created("b", "a", "a"), tf.created("a"))
    cluster.run()
    _complete(cluster, "a")
    cluster.run()
    assert cluster.ready_ids() == ["a", "b"]


def test_creation_registers_with_every_dependency_as_a_fold_event() -> None:
    ev = tf.created("b", "a", at=T0 + 3, dependency_wait_ms=1_234)
    (registration,) = tf.follow_ups(tf.accept(None, ev))
    assert registration.task_id == "a"
    assert registration.source is Source.FOLD
    assert registration.occurred_at_ms == T0 + 3
    assert registration.payload == DependencyRegistered("b", ("b",), 1_234)
    # derived from the creation: the same creation registers under the same id
    (again,) = tf.follow_ups(apply(None, ev))
    assert again.event_id == registration.event_id


def test_repeated_answer_from_a_dependency_is_ignored() -> None:
    pending = tf.play(tf.created("b", "a", "c"))
    once = tf.play(tf.resolved("b", "a"), state=pending)
    twice = tf.accept(once, tf.resolved("b", "a"))
    assert twice.effects == ()
    assert twice.state is not None and twice.state.open_dependencies == ("c",)


def test_registration_with_a_pending_task_is_forwarded_to_its_open_dependencies() -> None:
    pending = tf.play(tf.created("b", "a"))
    outcome = tf.accept(pending, tf.registered("b", "c", ("c", "d")))
    (forward,) = tf.follow_ups(outcome)
    assert forward.task_id == "a"
    assert forward.payload == DependencyRegistered("b", ("b", "c", "d"), WAIT_MS)
    assert outcome.state is not None and outcome.state.waiting == ("c", "d")
    # nothing new learned: nothing forwarded
    assert tf.follow_ups(tf.accept(outcome.state, tf.registered("b", "c", ("c",)))) == []


def _signals_of(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.task_id, e.kind) for e in events]


def test_answers_go_to_every_dependent_when_the_dependency_ends() -> None:
    running = tf.play(
        tf.created("a"),
        tf.registered("a", "x"),
        tf.registered("a", "y"),
        tf.registered("a", "x"),
        tf.started("a"),
    )
    outcome = tf.accept(running, tf.completed("a"))
    assert _signals_of(tf.follow_ups(outcome)) == [
        ("x", "DependencyResolved"),
        ("y", "DependencyResolved"),
    ]
