"""The scheduler of one platform: windows, caps, priority with ageing, pause, adaptive throttling,
deferrals, status, and persistence across restarts (window logs matched by period).

The two property tests at the end run arbitrary sequences of operations, restarts included, and
check the dispatch times exactly: no window ever holds more than its calls, in-flight never
exceeds a cap, no task is overtaken by more than its ageing allows.
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.limits import (
    PlatformLimits,
    RateLimit,
    Restore,
    WindowLog,
    count_in_window,
    effective_calls,
)
from streams.domain.scheduling import (
    Deferral,
    Hold,
    HoldReason,
    PlatformScheduler,
    QueuedTask,
    RateChanged,
    StartSlot,
    start_slot,
)

T0 = 1_715_000_040_000  # an epoch time in ms, on a minute: bucket starts look like real ones
SECOND = RateLimit(2, 1_000)  # buckets of 5 ms


def _task(task_id: str, priority: int = 1, ready: int = T0, **kw: Any) -> QueuedTask:
    return QueuedTask(task_id, "t", "target", priority, 1, ready, ready_id=f"r-{task_id}", **kw)


def _scheduler(
    *limits: RateLimit, cap: int | None = None, ageing: int = 60_000
) -> PlatformScheduler:
    return PlatformScheduler(PlatformLimits("p", limits, cap), ageing)


def _ids(tasks: list[QueuedTask]) -> list[str]:
    return [t.task_id for t in tasks]


def _restart(s: PlatformScheduler, snapshot: dict[str, Any] | None = None) -> PlatformScheduler:
    """A fresh scheduler from what the adapter stores: the snapshot (as JSON) and the queue."""
    fresh = PlatformScheduler(s.limits, s.ageing_ms, s.slot_ms)
    fresh.load(json.loads(json.dumps(snapshot or s.snapshot())))
    for task in s.queued():
        fresh.restore(QueuedTask(**json.loads(json.dumps(task.as_dict()))))
    return fresh


# -- windows and caps -----------------------------------------------------------------------------


def test_a_window_holds_the_next_dispatch_until_its_oldest_bucket_leaves() -> None:
    s = _scheduler(SECOND)
    for name in "abc":
        s.enqueue(_task(name))
    dispatched, deferrals = s.run(T0)
    assert _ids(dispatched) == ["a", "b"]
    until = T0 + 5 + 1_000  # the bucket [T0, T0 + 5) leaves the rolling second
    hold = Hold(HoldReason.RATE_LIMIT, "2 calls per 1 s used", until)
    assert deferrals == [Deferral("c", hold, "r-c")]
    assert s.hold(until - 1) == hold
    assert s.run(until - 1) == ([], [])
    assert s.wakeup_ms(T0 + 10) == until
    assert _ids(s.run(until)[0]) == ["c"]


def test_every_window_must_have_room() -> None:
    s = _scheduler(RateLimit(5, 1_000), RateLimit(3, 60_000))
    for i in range(5):
        s.enqueue(_task(f"t{i}"))
    assert len(s.run(T0)[0]) == 3
    hold = s.hold(T0 + 2_000)
    assert hold is not None and hold.reason is HoldReason.RATE_LIMIT
    assert hold.detail == "3 calls per 60 s used" and hold.until_ms == T0 + 300 + 60_000


def test_the_concurrency_cap_holds_until_a_slot_is_released() -> None:
    s = _scheduler(cap=2)
    for name in "abc":
        s.enqueue(_task(name))
    assert _ids(s.run(T0)[0]) == ["a", "b"]
    assert s.hold(T0) == Hold(HoldReason.CONCURRENCY, "2 of 2 running")
    assert s.wakeup_ms(T0) is None  # a release, not time, frees a slot
    s.release("a", completed=True, throttled_ms=0, now_ms=T0 + 1)
    assert _ids(s.run(T0 + 1)[0]) == ["c"]


def test_the_overall_cap_is_shared_with_other_platforms() -> None:
    s = _scheduler()
    for name in "abc":
        s.enqueue(_task(name))
    dispatched, deferrals = s.run(T0, overall_free=1)
    assert _ids(dispatched) == ["a"]
    overall = Hold(HoldReason.OVERALL_CONCURRENCY, "max_concurrent_tasks reached")
    assert [d.hold for d in deferrals] == [overall, overall]
    assert s.hold(T0, overall_free=0) == overall
    assert s.run(T0, overall_free=0)[0] == []
    assert _ids(s.run(T0)[0]) == ["b", "c"]  # no overall cap


# -- order ----------------------------------------------------------------------------------------


def test_a_held_task_counts_once_per_reason_however_many_passes_hold_it() -> None:
    s = _scheduler(RateLimit(2, 60_000), cap=1)
    for name in "abc":
        s.enqueue(_task(name))
    assert _ids(s.run(T0)[0]) == ["a"]
    assert s.newly_held(HoldReason.CONCURRENCY) == 2  # b and c
    assert s.newly_held(HoldReason.CONCURRENCY) == 0  # another pass: the same tasks
    s.release("a", completed=True, throttled_ms=0, now_ms=T0 + 1)
    assert _ids(s.run(T0 + 1)[0]) == ["b"]  # b leaves the queue: no longer counted
    s.enqueue(_task("d"))
    assert s.newly_held(HoldReason.CONCURRENCY) == 1  # d only
    s.release("b", completed=True, throttled_ms=0, now_ms=T0 + 2)
    assert s.hold(T0 + 2) is not None and s.hold(T0 + 2).reason is HoldReason.RATE_LIMIT  # type: ignore[union-attr]
    assert s.newly_held(HoldReason.RATE_LIMIT) == 2  # c and d, for another reason
    assert s.remove("d")
    s.enqueue(_task("d"))  # queued again: a new wait, counted again
    assert s.newly_held(HoldReason.RATE_LIMIT) == 1


def test_priority_first_then_readiness() -> None:
    s = _scheduler()
    s.enqueue(_task("low", priority=3, ready=T0))
    s.enqueue(_task("late", priority=1, ready=T0 + 10))
    s.enqueue(_task("early", priority=1, ready=T0 + 5))
    assert _ids(s.queued()) == ["early", "late", "low"]
    assert _ids(s.run(T0 + 10)[0]) == ["early", "late", "low"]


def test_ageing_lets_a_waiting_task_pass_later_urgent_work() -> None:
    """Priority 3 ready at 0 with 1 s of ageing ranks as priority 1 ready at 2 s."""
    s = _scheduler(ageing=1_000)
    s.enqueue(_task("old-p3", priority=3, ready=T0))
    s.enqueue(_task("p1-before", priority=1, ready=T0 + 1_999))
    s.enqueue(_task("p1-after", priority=1, ready=T0 + 2_001))
    assert _ids(s.run(T0 + 3_000)[0]) == ["p1-before", "old-p3", "p1-after"]


def test_equal_ranks_go_by_task_id() -> None:
    s = _scheduler(ageing=1_000)
    s.enqueue(_task("b", priority=2, ready=T0))
    s.enqueue(_task("a", priority=1, ready=T0 + 1_000))
    assert _ids(s.queued()) == _ids(s.run(T0 + 1_000)[0]) == ["a", "b"]


# -- the queue ------------------------------------------------------------------------------------


def test_a_repeated_ready_record_is_refused_while_queued_or_running() -> None:
    s = _scheduler()
    assert s.enqueue(_task("a"))
    assert not s.enqueue(_task("a", ready=T0 + 1))  # queued
    s.run(T0)
    assert not s.enqueue(_task("a", ready=T0 + 2))  # running
    s.release("a", completed=True, throttled_ms=0, now_ms=T0 + 3)
    assert s.enqueue(_task("a", ready=T0 + 4))  # a new attempt, after the slot is free
    assert s.pending == 1


def test_a_removed_task_is_never_dispatched() -> None:
    s = _scheduler()
    s.enqueue(_task("a"))
    s.enqueue(_task("b", ready=T0 + 1))
    assert s.remove("a")
    assert not s.remove("a") and not s.remove("unknown")
    assert s.pending == 1
    assert _ids(s.run(T0 + 1)[0]) == ["b"]
    assert s.wakeup_ms(T0 + 1) is None  # nothing left


def test_a_task_queued_again_takes_its_new_place_not_its_old_one() -> None:
    s = _scheduler(cap=1)
    s.enqueue(_task("a", ready=T0))
    s.enqueue(_task("b", ready=T0 + 10))
    s.remove("a")
    s.enqueue(_task("a", ready=T0 + 20))  # its old heap entry (rank T0) must not be used
    s.enqueue(_task("c", ready=T0 + 30))
    order = []
    for i in range(3):
        (task,), _ = s.run(T0 + 100 + i)
        order.append(task.task_id)
        s.release(task.task_id, completed=True, throttled_ms=0, now_ms=T0 + 100 + i)
    assert order == ["b", "a", "c"]


# -- pause ----------------------------------------------------------------------------------------


def test_pause_holds_until_its_end_and_zero_resumes() -> None:
    s = _scheduler()
    s.enqueue(_task("a"))
    s.pause(T0 + 500)
    assert s.hold(T0) == Hold(HoldReason.PAUSED, "platform paused", T0 + 500)
    assert s.wakeup_ms(T0) == T0 + 500
    assert s.run(T0 + 499)[0] == []
    s.pause(0)
    assert s.wakeup_ms(T0) == T0  # dispatchable now
    assert _ids(s.run(T0)[0]) == ["a"]


def test_a_pause_ends_by_itself() -> None:
    s = _scheduler()
    s.enqueue(_task("a"))
    s.pause(T0 + 500)
    assert _ids(s.run(T0 + 500)[0]) == ["a"]


# -- adaptive throttling --------------------------------------------------------------------------


def _running(s: PlatformScheduler, *names: str) -> None:
    for name in names:
        s.enqueue(_task(name))
    s.run(T0)


def test_a_lone_throttle_only_pauses() -> None:
    s = _scheduler()
    _running(s, "a", "b", "c")
    assert s.release("a", completed=False, throttled_ms=2_000, now_ms=T0 + 100) is None
    assert s.rate_factor == 1.0 and s.paused_until_ms == T0 + 2_100
    # a success in between: the next throttle is a lone one again
    assert s.release("b", completed=True, throttled_ms=0, now_ms=T0 + 200) is None  # already 1
    assert s.release("c", completed=False, throttled_ms=50, now_ms=T0 + 300) is None
    assert s.rate_factor == 1.0
    assert s.paused_until_ms == T0 + 2_100  # a shorter throttle never shortens a pause


def test_throttled_twice_in_a_row_halves_the_rate() -> None:
    s = _scheduler()
    _running(s, "a", "b")
    s.release("a", completed=False, throttled_ms=1_000, now_ms=T0)
    change = s.release("b", completed=False, throttled_ms=1_000, now_ms=T0 + 1)
    assert change == RateChanged("p", 1.0, 0.5, "rate limited again, retry after 1000 ms")
    assert s.paused_until_ms == T0 + 1_001


def test_the_rate_never_goes_below_the_floor_and_success_climbs_back_to_one() -> None:
    s = _scheduler()
    _running(s, *[f"t{i}" for i in range(20)])
    factors = []
    for i in range(6):
        s.release(f"t{i}", completed=False, throttled_ms=10, now_ms=T0 + i)
        factors.append(s.rate_factor)
    assert factors == [1.0, 0.5, 0.25, 0.125, 0.1, 0.1]
    changes = [s.release(f"t{i}", True, 0, T0 + i) for i in range(6, 17)]
    assert [c.new_factor for c in changes if c is not None] == [
        0.2,
        0.3,
        0.4,
        0.5,
        0.6,
        0.7,
        0.8,
        0.9,
        1.0,
    ]
    assert changes[0] == RateChanged("p", 0.1, 0.2, "success")
    assert changes[-1] is None  # capped at 1: no change to report


def test_a_failure_leaves_the_rate_alone() -> None:
    s = _scheduler()
    _running(s, "a")
    s.rate_factor = 0.5
    assert s.release("a", completed=False, throttled_ms=0, now_ms=T0) is None
    assert s.rate_factor == 0.5 and s.in_flight == set()


def test_the_windows_use_the_calls_under_the_rate_factor() -> None:
    s = _scheduler(RateLimit(10, 1_000))
    s.rate_factor = 0.25
    for i in range(5):
        s.enqueue(_task(f"t{i}"))
    assert len(s.run(T0)[0]) == 2
    assert s.hold(T0) == Hold(HoldReason.RATE_LIMIT, "2 calls per 1 s used", T0 + 1_005)


# -- deferrals and status -------------------------------------------------------------------------


def test_each_task_is_deferred_once_and_only_if_it_waits() -> None:
    s = _scheduler(RateLimit(1, 1_000))
    s.enqueue(_task("a"))
    s.enqueue(_task("b"))
    s.enqueue(_task("gone"))
    s.remove("gone")
    dispatched, deferrals = s.run(T0)
    assert _ids(dispatched) == ["a"]  # dispatched at once: no deferral
    assert [(d.task_id, d.ready_id) for d in deferrals] == [("b", "r-b")]
    assert s.run(T0 + 1) == ([], [])  # still waiting, already told
    s.enqueue(_task("c"))
    s.restore(_task("d"))  # queued before a restart: told then
    s.restore(_task("c"))  # a repeat: ignored, and "c" is still owed its deferral
    assert [d.task_id for d in s.run(T0 + 2)[1]] == ["c"]


def test_status_reports_windows_caps_pause_and_what_holds() -> None:
    s = _scheduler(SECOND, cap=3)
    for name in "abc":
        s.enqueue(_task(name))
    s.run(T0)
    s.pause(T0 + 50)
    assert s.status(T0 + 10) == {
        "platform": "p",
        "windows": [
            {
                "calls": 2,
                "period_s": 1.0,
                "effective_calls": 2,
                "remaining": 0,
                "next_call_at_ms": T0 + 1_005,
            }
        ],
        "start_slot_ms": 0,
        "max_concurrent": 3,
        "in_flight": 2,
        "pending": 1,
        "paused_until_ms": T0 + 50,
        "rate_factor": 1.0,
        "held_by": {"reason": "paused", "detail": "platform paused", "until_ms": T0 + 50},
    }
    later = s.status(T0 + 2_000)
    assert later["paused_until_ms"] is None and later["held_by"] is None
    assert later["windows"][0]["remaining"] == 2


# -- persistence ----------------------------------------------------------------------------------


def test_a_snapshot_round_trip_keeps_every_decision() -> None:
    s = _scheduler(SECOND, RateLimit(3, 60_000), cap=2)
    for name in "abcd":
        s.enqueue(_task(name, priority=2 if name == "a" else 1))
    s.run(T0)
    s.release("b", completed=False, throttled_ms=100, now_ms=T0 + 1)  # pause, and throttled
    s.pause(T0 + 300)
    fresh = _restart(s)
    assert fresh.snapshot() == s.snapshot()
    assert fresh.status(T0 + 2) == s.status(T0 + 2)
    assert _ids(fresh.queued()) == _ids(s.queued())
    for sched in (s, fresh):
        assert _ids(sched.run(T0 + 1_005)[0]) == ["d"]  # "a" ranks later; "c" still running
        # the previous answer was a throttle: one more halves the rate, in both
        assert sched.release("c", False, 10, T0 + 1_006) is not None


def test_a_snapshot_saves_each_log_with_its_window() -> None:
    s = _scheduler(SECOND)
    s.enqueue(_task("a"))
    s.run(T0 + 7)
    assert s.snapshot()["windows"] == [{"calls": 2, "period_ms": 1_000, "buckets": [[T0 + 5, 1]]}]


def _dispatch_at(s: PlatformScheduler, *times: int) -> None:
    for i, t in enumerate(times):
        s.enqueue(_task(f"x{t}-{i}", ready=t))
        assert len(s.run(t)[0]) == 1


def test_a_changed_period_is_rebuilt_from_a_longer_saved_window_not_taken_by_position() -> None:
    """Before: 5 per second and 5 per 10 s. After: 5 per 10 s and 5 per 5 s. Taking the logs by
    position would give the new 5 s window the one-second log (1 dispatch): it must see 4."""
    before = _scheduler(RateLimit(5, 1_000), RateLimit(5, 10_000))
    _dispatch_at(before, T0, T0 + 1_000, T0 + 2_000, T0 + 3_000)
    after = PlatformScheduler(PlatformLimits("p", (RateLimit(5, 10_000), RateLimit(5, 5_000))))
    report = after.load(json.loads(json.dumps(before.snapshot())))
    assert [(w.window.period_ms, w.action) for w in report.windows] == [
        (10_000, Restore.KEPT),
        (5_000, Restore.SEEDED),
        (1_000, Restore.DROPPED),
    ]
    assert report.changed
    assert count_in_window(after.logs[1], RateLimit(5, 5_000), T0 + 4_000) == 4
    after.enqueue(_task("y"))
    after.enqueue(_task("z"))
    assert _ids(after.run(T0 + 4_000)[0]) == ["y"]  # 5 in 5 s: "z" waits


def test_a_window_longer_than_every_saved_one_keeps_what_was_saved() -> None:
    before = _scheduler(RateLimit(5, 1_000))
    _dispatch_at(before, T0, T0 + 900)
    after = _scheduler(RateLimit(3, 60_000))
    report = after.load(before.snapshot())
    assert report.windows[0].action is Restore.PARTIAL
    assert count_in_window(after.logs[0], RateLimit(3, 60_000), T0 + 1_000) == 2


def test_the_old_format_is_still_read_conservatively() -> None:
    before = _scheduler(RateLimit(5, 1_000), RateLimit(5, 10_000))
    _dispatch_at(before, T0, T0 + 1_000, T0 + 2_000, T0 + 3_000)
    snapshot = before.snapshot()
    old = {k: v for k, v in snapshot.items() if k != "windows"}
    old["logs"] = [w["buckets"] for w in snapshot["windows"]]
    after = PlatformScheduler(PlatformLimits("p", (RateLimit(5, 10_000), RateLimit(5, 5_000))))
    report = after.load(old, now_ms=T0 + 3_500)
    assert report.old_format and report.changed
    assert {w.action for w in report.windows} == {Restore.OLD_FORMAT}
    assert count_in_window(after.logs[1], RateLimit(5, 5_000), T0 + 4_000) == 4
    assert after.in_flight == before.in_flight


def test_an_old_log_out_of_order_is_read_in_order() -> None:
    s = _scheduler(SECOND)
    s.load({"logs": [[[T0 + 10, 1], [T0, 2], [T0 + 10, 1]]]})
    # widths unknown: at most 10 ms (the gcd of the starts), so each bucket's dispatches go to
    # its last instant, T0 + 9 and T0 + 19
    assert s.logs[0].buckets == ((T0 + 5, 2), (T0 + 15, 2))


def test_a_snapshot_without_logs_starts_every_window_empty() -> None:
    s = _scheduler(SECOND)
    report = s.load({})
    assert s.logs == [WindowLog()] and report.windows[0].action is Restore.EMPTY
    assert (s.paused_until_ms, s.rate_factor, s.last_answer_throttled) == (0, 1.0, False)


# -- start slots ----------------------------------------------------------------------------------


def _slotted(*limits: RateLimit, slot: int) -> PlatformScheduler:
    return PlatformScheduler(PlatformLimits("p", limits), slot_ms=slot)


def test_a_start_slot_runs_from_the_recorded_dispatch_to_the_slot_after_it() -> None:
    slot = start_slot(T0, 50)
    assert slot == StartSlot(T0, T0 + 50)
    assert [slot.allows(t) for t in (T0 - 1, T0, T0 + 50, T0 + 51)] == [False, True, True, False]
    assert slot.start_ms(T0 - 30) == T0  # early: the handler waits for not_before
    assert slot.start_ms(T0 + 20) == T0 + 20
    assert slot.start_ms(T0 + 50) == T0 + 50
    assert slot.start_ms(T0 + 51) is None  # too late: given back
    assert start_slot(T0, 0).start_ms(T0 - 5) == T0
    with pytest.raises(ValueError, match="slot_ms"):
        start_slot(T0, -1)
    with pytest.raises(ValueError, match="slot_ms"):
        _slotted(SECOND, slot=-1)


def test_every_window_is_counted_over_its_period_and_the_slot() -> None:
    """10 per second with a 50 ms slot: counted as 10 per 1.05 s (buckets of 5 ms)."""
    s = _slotted(RateLimit(10, 1_000), slot=50)
    assert s.limits.limits == (RateLimit(10, 1_000),) and s.windows == (RateLimit(10, 1_050),)
    _dispatch_at(s, *(T0 + 100 * i for i in range(10)))
    s.enqueue(_task("eleventh", ready=T0 + 950))
    # the plain window would let it go at T0 + 1_005; the widened one when the bucket
    # [T0, T0 + 5) leaves the last 1.05 s
    until = T0 + 5 + 1_050
    assert s.hold(T0 + 1_005) == Hold(HoldReason.RATE_LIMIT, "10 calls per 1 s used", until)
    assert s.wakeup_ms(T0 + 1_005) == until
    assert s.run(until - 1)[0] == []
    assert _ids(s.run(until)[0]) == ["eleventh"]
    s.enqueue(_task("twelfth", ready=until))
    assert s.wakeup_ms(until) == T0 + 100 + 5 + 1_050  # the second bucket's turn


def test_a_slot_of_zero_counts_the_configured_windows() -> None:
    s = _slotted(SECOND, RateLimit(3, 60_000), slot=0)
    assert s.windows == s.limits.limits and s.slot_ms == 0


def test_the_status_shows_the_configured_window_and_the_slot() -> None:
    s = _slotted(SECOND, slot=50)
    for name in "abc":
        s.enqueue(_task(name))
    s.run(T0)
    status = s.status(T0 + 1_010)  # the configured second alone would have room again
    assert status["start_slot_ms"] == 50
    assert status["windows"] == [
        {
            "calls": 2,
            "period_s": 1.0,
            "effective_calls": 2,
            "remaining": 0,
            "next_call_at_ms": T0 + 1_055,
        }
    ]
    assert status["held_by"] == {
        "reason": "rate_limit",
        "detail": "2 calls per 1 s used",
        "until_ms": T0 + 1_055,
    }


def test_a_snapshot_saves_the_windows_as_counted_and_the_same_slot_keeps_them() -> None:
    s = _slotted(RateLimit(3, 1_000), slot=100)
    _dispatch_at(s, T0, T0 + 400, T0 + 1_050)
    snapshot = json.loads(json.dumps(s.snapshot()))
    assert [(w["calls"], w["period_ms"]) for w in snapshot["windows"]] == [(3, 1_100)]
    fresh = _slotted(RateLimit(3, 1_000), slot=100)
    report = fresh.load(snapshot, T0 + 1_060)
    assert [w.action for w in report.windows] == [Restore.KEPT] and not report.changed
    assert fresh.logs == s.logs
    assert fresh.status(T0 + 1_060) == s.status(T0 + 1_060)


def test_a_changed_slot_is_a_changed_period_and_never_counts_too_few() -> None:
    """3 per second, saved with a 100 ms slot (counted over 1.1 s), dispatches at 0, 400 and
    1,050 ms. Loaded with no slot, the 1 s window is rebuilt from the 1.1 s log; loaded with a
    300 ms slot, the 1.3 s window still counts all three (the saved log reaches back 1.1 s)."""
    before = _slotted(RateLimit(3, 1_000), slot=100)
    _dispatch_at(before, T0, T0 + 400, T0 + 1_050)
    snapshot = json.loads(json.dumps(before.snapshot()))

    shorter = _slotted(RateLimit(3, 1_000), slot=0)
    report = shorter.load(snapshot, T0 + 1_060)
    assert [(w.window, w.action) for w in report.windows] == [
        (RateLimit(3, 1_000), Restore.SEEDED),
        (RateLimit(3, 1_100), Restore.DROPPED),
    ]
    for now, exact in [(T0 + 1_060, 2), (T0 + 1_399, 2), (T0 + 1_405, 1), (T0 + 2_055, 0)]:
        assert count_in_window(shorter.logs[0], RateLimit(3, 1_000), now) >= exact

    longer = _slotted(RateLimit(3, 1_000), slot=300)
    report = longer.load(snapshot, T0 + 1_060)
    assert [(w.window, w.action) for w in report.windows] == [
        (RateLimit(3, 1_300), Restore.PARTIAL),
        (RateLimit(3, 1_100), Restore.DROPPED),
    ]
    assert count_in_window(longer.logs[0], RateLimit(3, 1_300), T0 + 1_060) == 3
    longer.enqueue(_task("next", ready=T0 + 1_060))
    until = T0 + 6 + 1_300  # the rebuilt bucket [T0, T0 + 6) leaves the last 1.3 s
    assert longer.hold(T0 + 1_060) == Hold(HoldReason.RATE_LIMIT, "3 calls per 1 s used", until)
    assert longer.run(until - 1)[0] == []
    assert _ids(longer.run(until)[0]) == ["next"]


# -- properties -----------------------------------------------------------------------------------


@st.composite
def _configurations(draw: st.DrawFn) -> tuple[PlatformLimits, int | None, int]:
    windows = draw(
        st.lists(
            st.builds(RateLimit, st.integers(1, 5), st.integers(1, 3_000)),
            min_size=1,
            max_size=3,
        )
    )
    cap = draw(st.none() | st.integers(1, 4))
    overall = draw(st.none() | st.integers(1, 4))
    ageing = draw(st.integers(0, 2_000))
    return PlatformLimits("p", tuple(windows), cap), overall, ageing


@st.composite
def _changed(
    draw: st.DrawFn, before: tuple[PlatformLimits, int | None, int]
) -> tuple[PlatformLimits, int | None, int]:
    """Another configuration, often the same windows reordered with some periods changed (the
    case position matching gets wrong)."""
    limits, overall, ageing = before
    if draw(st.booleans()):
        return draw(_configurations())
    periods = [w.period_ms for w in limits.limits]
    windows = [
        RateLimit(
            draw(st.integers(1, 5)),
            draw(st.sampled_from(periods) | st.integers(1, 3_000)),
        )
        for _ in draw(st.permutations(limits.limits))
    ]
    return PlatformLimits("p", tuple(windows), limits.max_concurrent), overall, ageing


_ENQUEUE = st.tuples(st.just("enqueue"), st.integers(1, 5), st.integers(1, 3))  # priority, tasks
_RUN = st.tuples(st.just("run"), st.integers(0, 60) | st.integers(0, 600))  # after
_RELEASE = st.tuples(
    st.just("release"),
    st.integers(0, 300),  # after
    st.integers(0, 50),  # which task
    st.booleans(),  # completed
    st.sampled_from([0, 0, 40, 400]),  # throttled_ms
)
_TICK = st.tuples(st.just("tick"))  # at the wakeup the scheduler asks for: window boundaries
_OPERATIONS = st.lists(
    st.one_of(
        _ENQUEUE,
        _RUN,
        _RELEASE,
        _TICK,
        _ENQUEUE,
        _TICK,
        _RELEASE,
        st.tuples(st.just("pause"), st.integers(-1, 1_500)),  # -1: resume
        st.tuples(st.just("remove"), st.integers(0, 50), st.booleans()),  # which, queue again
        st.tuples(st.just("restart"), st.booleans(), st.booleans()),  # old format, load time
    ),
    min_size=5,
    max_size=80,
)
_BACKLOG = st.lists(st.integers(1, 5), max_size=12)
"""Priorities of the tasks ready at the start: work waiting keeps the windows full."""


@dataclass
class _Run:
    """Operations on a scheduler, restarts included, recording every dispatch."""

    scheduler: PlatformScheduler
    overall: int | None
    now: int = T0
    made: int = 0
    dispatches: list[tuple[int, float]] = field(default_factory=list)
    """(time, rate factor then), in dispatch order, across every restart."""

    def apply(self, operation: tuple[Any, ...]) -> None:
        """One operation, then a run at the same time (the adapter runs after every signal)."""
        self.step(operation)
        self.run(0)

    def step(self, operation: tuple[Any, ...]) -> None:
        s = self.scheduler
        match operation:
            case ("enqueue", priority, tasks):
                for _ in range(tasks):
                    self.made += 1
                    s.enqueue(_task(f"t{self.made:03}", priority, self.now))
            case ("run", after):
                self.run(after)
            case ("tick",):
                wakeup = s.wakeup_ms(self.now)
                self.run(0 if wakeup is None else wakeup - self.now)
            case ("release", after, which, completed, throttled_ms):
                self.now += after
                running = sorted(s.in_flight)
                if running:
                    s.release(running[which % len(running)], completed, throttled_ms, self.now)
            case ("pause", until):
                s.pause(0 if until < 0 else self.now + until)
            case ("remove", which, again):
                queued = s.queued()
                if queued:
                    task = queued[which % len(queued)]
                    assert s.remove(task.task_id)
                    if again:  # ready again, now: it must take its new place in the queue
                        s.enqueue(_task(task.task_id, task.priority, self.now))
            case ("restart", old_format, knows_time):
                self.restart(s.limits, old_format, knows_time)

    def drain(self) -> None:
        """Tick at every wakeup until nothing can go any more (in flight never ends here)."""
        for _ in range(100):
            wakeup = self.scheduler.wakeup_ms(self.now)
            if wakeup is None:
                return
            self.run(wakeup - self.now)

    def run(self, after: int) -> None:
        s = self.scheduler
        self.now += after
        free = None if self.overall is None else self.overall - len(s.in_flight)
        factor, running = s.rate_factor, len(s.in_flight)
        dispatched, _ = s.run(self.now, free)
        self.dispatches += [(self.now, factor)] * len(dispatched)
        # a run never takes in-flight above a cap (a cap lowered across a restart may find more
        # running already: then nothing goes)
        for cap in (s.limits.max_concurrent, self.overall):
            assert cap is None or len(s.in_flight) <= max(cap, running)
        # ageing: nothing still queued ranks before what went, so nothing that went was ready
        # more than (p - 1) * ageing after a waiting task of priority p
        for waiting in s.queued():
            for task in dispatched:
                assert task.rank(s.ageing_ms) <= waiting.rank(s.ageing_ms)
                allowance = (waiting.priority - 1) * s.ageing_ms
                assert task.ready_at_ms <= waiting.ready_at_ms + allowance

    def restart(self, limits: PlatformLimits, old_format: bool, knows_time: bool) -> None:
        old = self.scheduler
        snapshot = json.loads(json.dumps(old.snapshot()))
        if old_format:
            snapshot["logs"] = [w["buckets"] for w in snapshot.pop("windows")]
        fresh = PlatformScheduler(limits, old.ageing_ms)
        fresh.load(snapshot, self.now if knows_time else None)
        for task in old.queued():
            fresh.restore(task)
        assert fresh.in_flight == old.in_flight and fresh.pending == old.pending
        self.scheduler = fresh

    @property
    def times(self) -> list[int]:
        return [t for t, _ in self.dispatches]


def _most_in_any_window(times: list[int], period_ms: int) -> int:
    """The most dispatches in any half-open ``[a, a + period)`` (one starts at a dispatch)."""
    return max((bisect_left(times, t + period_ms) - i for i, t in enumerate(times)), default=0)


@settings(deadline=None, max_examples=300)
@given(configuration=_configurations(), backlog=_BACKLOG, operations=_OPERATIONS)
def test_no_window_ever_holds_more_than_its_calls_across_restarts(
    configuration: tuple[PlatformLimits, int | None, int],
    backlog: list[int],
    operations: list[tuple[Any, ...]],
) -> None:
    """Checked exactly against every dispatch time of the run, restarts (either snapshot format)
    included: the configured calls are the hard bound, the calls under the rate factor of the
    moment bound each dispatch."""
    limits, overall, ageing = configuration
    run = _Run(PlatformScheduler(limits, ageing), overall)
    for operation in [("enqueue", priority, 1) for priority in backlog] + operations:
        run.apply(operation)
    run.drain()  # and whatever can go in the end
    times = run.times
    for limit in limits.limits:
        assert _most_in_any_window(times, limit.period_ms) <= limit.calls
        # and under throttling, the calls it allowed itself at each dispatch
        for k, (t, factor) in enumerate(run.dispatches):
            in_window = k + 1 - bisect_right(times, t - limit.period_ms, 0, k + 1)
            assert in_window <= effective_calls(limit, factor)


@settings(deadline=None, max_examples=300)
@given(
    before=_configurations(),
    data=st.data(),
    backlog=_BACKLOG,
    operations=_OPERATIONS,
    later=_OPERATIONS,
    old_format=st.booleans(),
    knows_time=st.booleans(),
    burst=st.integers(0, 6),
)
def test_a_configuration_change_across_a_restart_never_lets_a_window_overflow(
    before: tuple[PlatformLimits, int | None, int],
    data: st.DataObject,
    backlog: list[int],
    operations: list[tuple[Any, ...]],
    later: list[tuple[Any, ...]],
    old_format: bool,
    knows_time: bool,
    burst: int,
) -> None:
    """Each new window no longer than the longest old one counts every dispatch, before the
    restart too; a longer one can only count those since."""
    after = data.draw(_changed(before), label="after")
    run = _Run(PlatformScheduler(before[0], before[2]), before[1])
    for operation in [("enqueue", priority, 1) for priority in backlog] + operations:
        if operation[0] != "restart":
            run.apply(operation)
    run.restart(after[0], old_format, knows_time)
    run.overall = after[1]
    restarted = len(run.dispatches)
    for _ in range(burst):  # work waiting at the restart: where a window that lost count shows
        run.step(("enqueue", 1, 1))
    run.run(0)
    for operation in later:
        if operation[0] != "restart":
            run.apply(operation)
    run.drain()
    times = run.times
    longest_before = max(w.period_ms for w in before[0].limits)
    for limit in after[0].limits:
        first = 0 if limit.period_ms <= longest_before else restarted
        for k in range(restarted, len(times)):
            since = max(first, bisect_right(times, times[k] - limit.period_ms, 0, k + 1))
            assert k + 1 - since <= limit.calls


def test_the_checker_sees_an_overflow() -> None:
    assert _most_in_any_window([0, 999, 1_000], 1_000) == 2
    assert _most_in_any_window([0, 500, 999], 1_000) == 3
    assert _most_in_any_window([], 1_000) == 0


@pytest.mark.parametrize("period", [1, 7, 1_000])
def test_the_checker_agrees_with_a_brute_force_count(period: int) -> None:
    times = [0, 0, 3, 5, 8, 1_000, 1_004, 1_999, 2_000]
    brute = max(sum(a <= t < a + period for t in times) for a in range(-10, 2_100))
    assert _most_in_any_window(times, period) == brute


def test_a_plain_failure_between_two_throttles_means_no_halving() -> None:
    scheduler = PlatformScheduler(PlatformLimits("p", (RateLimit(10, 1_000),)))
    for task_id in ("a", "b", "c"):
        scheduler.enqueue(QueuedTask(task_id, "t", "x", 1, 1, 0))
    scheduler.run(0)
    assert scheduler.release("a", False, 100, 10) is None  # a lone throttle: pause only
    assert scheduler.release("b", False, 0, 20) is None  # a plain failure
    assert scheduler.release("c", False, 100, 30) is None  # not "again": still no halving
    assert scheduler.rate_factor == 1.0


# -- a next readiness read before the release of the attempt in flight ---------------------------


def _again(task_id: str, ready: int = T0 + 100) -> QueuedTask:
    """The task's next readiness (its retry): another ``ready_id``."""
    return QueuedTask(task_id, "t", "target", 1, 1, ready, ready_id=f"r2-{task_id}")


def test_a_next_readiness_read_before_the_release_waits_for_it() -> None:
    s = _scheduler()
    s.enqueue(_task("a"))
    assert _ids(s.run(T0)[0]) == ["a"]
    assert s.enqueue(_again("a"))  # kept: task.ready was read before scheduler.signals
    assert s.run(T0 + 100) == ([], [])  # never beside the attempt still holding the slot
    s.release("a", completed=False, throttled_ms=0, now_ms=T0 + 200)
    dispatched, _ = s.run(T0 + 200)
    assert [(t.task_id, t.ready_id) for t in dispatched] == [("a", "r2-a")]
    assert s.in_flight == {"a"} and s.dispatched_readiness == {"a": "r2-a"}


def test_the_dispatched_readiness_read_again_is_ignored() -> None:
    s = _scheduler()
    s.enqueue(_task("a"))
    s.run(T0)
    assert not s.enqueue(_task("a"))
    s.release("a", completed=True, throttled_ms=0, now_ms=T0 + 10)
    assert s.run(T0 + 20) == ([], [])


def test_a_readiness_set_apart_survives_a_restart_and_can_be_removed() -> None:
    s = _scheduler()
    s.enqueue(_task("a"))
    s.enqueue(_task("b"))
    s.run(T0)
    s.enqueue(_again("a"))
    assert [t.ready_id for t in s.queued()] == ["r2-a"]
    fresh = _restart(s)
    assert fresh.dispatched_readiness == {"a": "r-a", "b": "r-b"}
    assert fresh.run(T0 + 200) == ([], [])
    fresh.release("a", completed=True, throttled_ms=0, now_ms=T0 + 300)
    assert _ids(fresh.run(T0 + 300)[0]) == ["a"]
    fresh.enqueue(_again("b"))
    assert fresh.remove("b") and fresh.queued() == []
    fresh.release("b", completed=True, throttled_ms=0, now_ms=T0 + 400)
    assert fresh.run(T0 + 400) == ([], [])
