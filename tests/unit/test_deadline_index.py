"""The timer's deadline index: one entry per task, however many events the task has."""

from __future__ import annotations

from streams.domain.timers import DeadlineIndex


def test_the_same_deadline_tracked_many_times_is_one_entry() -> None:
    index = DeadlineIndex()
    for _ in range(30_000):  # one track per folded progress event of a running task
        index.track("t", 5_000)
    assert len(index) == 1
    assert len(index._heap) == 1
    assert index.pop_due(5_000) == ["t"]
    assert index.pop_due(10_000) == []


def test_a_moved_deadline_replaces_the_earlier_one() -> None:
    index = DeadlineIndex()
    index.track("t", 1_000)
    index.track("t", 3_000)
    assert index.pop_due(2_000) == []
    assert index.pop_due(3_000) == ["t"]


def test_no_deadline_forgets_the_task() -> None:
    index = DeadlineIndex()
    index.track("t", 1_000)
    index.track("t", None)
    assert len(index) == 0
    assert index.pop_due(2_000) == []


def test_stale_entries_are_dropped_when_they_outnumber_live_ones() -> None:
    index = DeadlineIndex()
    for deadline in range(10_000):
        index.track("t", deadline)
    assert len(index._heap) <= 2 * len(index) + 1_000
    assert index.pop_due(10_000) == ["t"]


def test_due_tasks_come_in_deadline_order_each_once() -> None:
    index = DeadlineIndex()
    for n, task in enumerate(["c", "a", "b"]):
        index.track(task, 100 * (n + 1))
    index.track("a", 200)
    assert index.pop_due(300) == ["c", "a", "b"]
