"""Rate-limit windows: bucketed logs that only ever count too many, an exact "next allowed" time,
AIMD arithmetic, and the restoration of logs across a restart by period (never too few)."""

from __future__ import annotations

from bisect import bisect_right

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.config import MAX_POLICY_S
from streams.domain.limits import (
    AIMD_FLOOR,
    AIMD_STEP,
    BUCKETS_PER_PERIOD,
    MAX_BUCKET_MS,
    LoadReport,
    PlatformLimits,
    RateLimit,
    Restore,
    WindowLog,
    WindowRestore,
    count_in_window,
    effective_calls,
    next_allowed_ms,
    rebucket,
    record_dispatch,
    recovered,
    remaining_calls,
    restore_logs,
    restore_old_format_logs,
    seed_log,
    throttled,
)

SECOND = RateLimit(5, 1_000)  # buckets of 5 ms
MINUTE = RateLimit(100, 60_000)  # buckets of 300 ms


def _log(limit: RateLimit, times: list[int]) -> WindowLog:
    log = WindowLog()
    for t in times:
        log = record_dispatch(log, limit, t)
    return log


def _exact(times: list[int], start_exclusive: int, end_inclusive: int) -> int:
    """Dispatches in ``(start_exclusive, end_inclusive]`` of the sorted ``times``."""
    return bisect_right(times, end_inclusive) - bisect_right(times, start_exclusive)


# -- windows --------------------------------------------------------------------------------------


def test_bucket_width_is_a_two_hundredth_of_the_period_and_at_least_one_ms() -> None:
    assert SECOND.bucket_ms == 1_000 // BUCKETS_PER_PERIOD == 5
    assert RateLimit(1, 150).bucket_ms == 1
    assert RateLimit(1, 1).bucket_ms == 1


def test_a_window_widened_by_a_start_slot_keeps_its_calls_over_a_longer_period() -> None:
    assert SECOND.widened(50) == RateLimit(5, 1_050)
    assert SECOND.widened(0) == SECOND
    assert MINUTE.widened(200).bucket_ms == 60_200 // BUCKETS_PER_PERIOD


def test_effective_calls_scale_down_with_the_rate_factor_but_never_below_one() -> None:
    assert effective_calls(RateLimit(10, 1_000), 1.0) == 10
    assert effective_calls(RateLimit(10, 1_000), 0.55) == 5  # floored: never above the factor
    assert effective_calls(RateLimit(3, 1_000), AIMD_FLOOR) == 1


def test_the_window_rolls_one_period_after_each_bucket_ends() -> None:
    log = _log(SECOND, [1_000, 1_001, 1_500])  # buckets 1000 (x2) and 1500
    assert log.buckets == ((1_000, 2), (1_500, 1))
    assert count_in_window(log, SECOND, 1_500) == 3
    # bucket 1000 covers [1000, 1005): it is counted while its end is inside (now - 1 s, now]
    assert count_in_window(log, SECOND, 2_004) == 3
    assert count_in_window(log, SECOND, 2_005) == 1
    assert count_in_window(log, SECOND, 2_505) == 0
    assert remaining_calls(log, SECOND, 5, 1_500) == 2
    assert remaining_calls(log, SECOND, 2, 1_500) == 0  # never negative


def test_recording_drops_the_buckets_out_of_the_window() -> None:
    log = _log(SECOND, [0, 3, 7, 2_000])
    assert log.buckets == ((2_000, 1),)


def test_a_dispatch_before_the_newest_bucket_is_counted_with_it() -> None:
    """A log seeded late, or a clock that stepped back: the log stays sorted, counts longer."""
    log = record_dispatch(WindowLog(((1_200, 1),)), SECOND, 1_000)
    assert log.buckets == ((1_200, 2),)


@settings(deadline=None, max_examples=200)
@given(
    period=st.integers(1, 5_000),
    gaps=st.lists(st.integers(0, 700), min_size=1, max_size=60),
    later=st.integers(0, 6_000),
)
def test_bucketing_only_ever_counts_too_many_and_by_at_most_one_bucket(
    period: int, gaps: list[int], later: int
) -> None:
    limit = RateLimit(1, period)
    times = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    log = WindowLog()
    for i, t in enumerate(times):
        log = record_dispatch(log, limit, t)
        for now in (t, t + later):
            counted = count_in_window(log, limit, now)
            assert counted >= _exact(times[: i + 1], now - period, now)
            assert counted <= _exact(times[: i + 1], now - period - limit.bucket_ms, now)
    assert len(log.buckets) <= BUCKETS_PER_PERIOD + 1  # memory bounded by the bucket count


@settings(deadline=None, max_examples=200)
@given(
    period=st.integers(1, 3_000),
    gaps=st.lists(st.integers(0, 400), min_size=1, max_size=40),
    allowed=st.integers(1, 6),
    later=st.integers(0, 4_000),
)
def test_next_allowed_is_exact_at_the_boundary(
    period: int, gaps: list[int], allowed: int, later: int
) -> None:
    limit = RateLimit(allowed, period)
    times = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    log = _log(limit, times)
    now = times[-1] + later
    until = next_allowed_ms(log, limit, allowed, now)
    assert until >= now
    assert count_in_window(log, limit, until) < allowed  # one more fits at ``until``...
    if until > now:  # ...and not a millisecond earlier
        assert count_in_window(log, limit, until - 1) >= allowed
        assert remaining_calls(log, limit, allowed, until - 1) == 0


def test_next_allowed_names_the_bucket_whose_end_frees_the_call() -> None:
    log = _log(SECOND, [1_000, 1_000, 1_100, 1_200])
    assert next_allowed_ms(log, SECOND, 5, 1_300) == 1_300
    assert next_allowed_ms(log, SECOND, 4, 1_300) == 1_000 + 5 + 1_000
    assert next_allowed_ms(log, SECOND, 2, 1_300) == 1_100 + 5 + 1_000
    assert next_allowed_ms(log, SECOND, 0, 1_300) == 2_300  # no call allowed: a period later


# -- AIMD -----------------------------------------------------------------------------------------


def test_throttling_halves_down_to_the_floor_and_success_steps_back_up_to_one() -> None:
    assert throttled(1.0) == 0.5
    assert throttled(0.15) == AIMD_FLOOR
    assert throttled(AIMD_FLOOR) == AIMD_FLOOR
    assert recovered(0.5) == 0.6
    assert recovered(0.95) == 1.0
    assert recovered(1.0) == 1.0
    factor = AIMD_FLOOR
    for _ in range(round((1 - AIMD_FLOOR) / AIMD_STEP)):
        factor = recovered(factor)
    assert factor == 1.0  # rounded at each step: no 0.9999999 left behind


def test_with_cap_replaces_only_the_cap() -> None:
    limits = PlatformLimits("p", (SECOND,), 3)
    assert limits.with_cap(None) == PlatformLimits("p", (SECOND,), None)


# -- restoring logs across a restart --------------------------------------------------------------


def test_rebucket_puts_each_time_in_the_bucket_that_contains_it() -> None:
    log = rebucket([(1_004, 2), (1_000, 1), (1_005, 1)], SECOND)
    assert log.buckets == ((1_000, 3), (1_005, 1))


def test_seed_from_nothing_is_empty() -> None:
    assert seed_log([], SECOND) == WindowLog()
    assert seed_log([(WindowLog(), 5)], SECOND) == WindowLog()


def test_seed_of_the_same_width_is_the_log_itself() -> None:
    log = _log(MINUTE, [0, 10, 400, 59_000])
    assert seed_log([(log, MINUTE.bucket_ms)], RateLimit(7, MINUTE.period_ms)) == log


def test_seed_places_a_coarse_bucket_at_its_last_instant() -> None:
    """A minute bucket [600, 900) may hold a dispatch at 899: a second window counts it late."""
    log = WindowLog(((600, 2),))
    assert seed_log([(log, MINUTE.bucket_ms)], SECOND).buckets == ((895, 2),)


def test_seed_uses_the_finest_log_where_it_reaches_and_the_coarse_one_before() -> None:
    times = [100, 700, 59_990, 59_991]
    fine, coarse = _log(SECOND, times), _log(MINUTE, times)
    assert fine.buckets == ((59_990, 2),)
    seeded = seed_log([(fine, SECOND.bucket_ms), (coarse, MINUTE.bucket_ms)], RateLimit(9, 2_000))
    # the two recent ones at the 5 ms of the second's log (late by at most 4 ms); the older ones
    # at the end of the minute's 300 ms buckets [0, 300) and [600, 900)
    assert seeded.buckets == ((290, 1), (890, 1), (59_990, 2))
    assert count_in_window(seeded, RateLimit(9, 2_000), 60_500) == 2


@settings(deadline=None, max_examples=300)
@given(
    periods=st.lists(st.integers(1, 4_000), min_size=1, max_size=3),
    target=st.integers(1, 4_000),
    gaps=st.lists(st.integers(0, 500), min_size=0, max_size=50),
    base=st.sampled_from([0, 1_715_000_000_000]),
    later=st.lists(st.integers(0, 5_000), min_size=1, max_size=5),
    old_format=st.booleans(),
    load_after=st.none() | st.integers(0, 3_000),
)
def test_a_seeded_window_never_counts_too_few(
    periods: list[int],
    target: int,
    gaps: list[int],
    base: int,
    later: list[int],
    old_format: bool,
    load_after: int | None,
) -> None:
    """Whatever windows saved the logs, a window no longer than the longest of them counts every
    real dispatch in its rolling window, with the saved widths or with the old format's bound,
    whether the load knows its time or not."""
    limits = [RateLimit(1, p) for p in periods]
    times = [base + sum(gaps[: i + 1]) for i in range(len(gaps))]
    logs = [_log(limit, times) for limit in limits]
    new = RateLimit(1, target)
    last = times[-1] if times else base
    loaded_at = None if load_after is None else last + load_after
    if old_format:
        (seeded,), report = restore_old_format_logs(logs, [new], loaded_at)
        assert report.windows[0].action is Restore.OLD_FORMAT
    else:
        (seeded,), report = restore_logs(list(zip(limits, logs, strict=True)), [new], loaded_at)
    for dt in later:
        now = (last if loaded_at is None else loaded_at) + dt
        counted = count_in_window(seeded, new, now)
        if target <= max(periods):
            assert counted >= _exact(times, now - target, now)
        # and it counts no dispatch that never happened in the saved logs' reach
        assert counted <= len(times)


def test_windows_are_matched_by_period_not_by_position() -> None:
    second_log, minute_log = _log(SECOND, [59_000]), _log(MINUTE, [1_000, 59_000])
    saved = [(SECOND, second_log), (MINUTE, minute_log)]
    day = RateLimit(2_000, 86_400_000)
    two_seconds = RateLimit(10, 2_000)
    configured = [RateLimit(50, 60_000), two_seconds, day]
    logs, report = restore_logs(saved, configured)
    assert logs[0] is minute_log  # same period, other calls: the log is still the log
    assert count_in_window(logs[1], two_seconds, 59_500) == 1
    assert count_in_window(logs[2], day, 59_500) == 2  # what was kept, at least
    assert [(w.window, w.action, w.source) for w in report.windows] == [
        (RateLimit(50, 60_000), Restore.KEPT, MINUTE),
        (two_seconds, Restore.SEEDED, MINUTE),
        (day, Restore.PARTIAL, MINUTE),
        (SECOND, Restore.DROPPED, None),
    ]
    assert report.changed
    assert report.describe() == (
        "windows: 50 per 60 s kept (was 100 per 60 s); "
        "10 per 2 s rebuilt from the saved logs (longest 100 per 60 s); "
        "2000 per 86400 s rebuilt from the saved logs, which reach back only 60 s: "
        "older dispatches are not counted; "
        "5 per 1 s dropped (no longer configured)"
    )


def test_an_unchanged_configuration_keeps_every_log_and_is_not_worth_a_line() -> None:
    saved = [(SECOND, _log(SECOND, [5])), (MINUTE, _log(MINUTE, [5]))]
    logs, report = restore_logs(saved, [SECOND, MINUTE])
    assert logs == [log for _, log in saved]
    assert not report.changed
    assert report.describe() == "windows: 5 per 1 s kept; 100 per 60 s kept"


def test_nothing_saved_starts_empty() -> None:
    logs, report = restore_logs([], [SECOND])
    assert logs == [WindowLog()]
    assert report.windows == (WindowRestore(SECOND, Restore.EMPTY),)
    assert report.describe() == "windows: 5 per 1 s starts empty (nothing saved)"
    assert restore_logs([], []) == ([], LoadReport())
    assert LoadReport().describe() == "windows: no windows"
    assert not LoadReport().changed


def test_the_old_format_is_rebuilt_for_every_window_and_always_reported() -> None:
    logs, report = restore_old_format_logs([], [SECOND])
    assert logs == [WindowLog()] and report.old_format and report.changed
    assert report.windows == (WindowRestore(SECOND, Restore.EMPTY),)
    old = [_log(SECOND, [59_000]), _log(MINUTE, [1_000, 59_000])]
    logs, report = restore_old_format_logs(old, [SECOND, MINUTE])
    assert [
        count_in_window(log, w, 59_100) for log, w in zip(logs, [SECOND, MINUTE], strict=True)
    ] == [1, 2]
    assert report.windows[0] == WindowRestore(SECOND, Restore.OLD_FORMAT, old_logs=2)
    assert report.describe().startswith(
        "old snapshot format: windows: 5 per 1 s rebuilt from 2 old-format logs (periods unknown"
    )


def test_an_old_log_without_a_telling_start_is_given_the_widest_bucket() -> None:
    """A single bucket at 0 says nothing of its width: assume the widest any period allows."""
    (seeded,), _ = restore_old_format_logs([WindowLog(((0, 1),))], [SECOND])
    assert seeded.buckets == ((MAX_BUCKET_MS - 5, 1),)  # counted until the widest bucket's end


def test_the_time_of_the_load_caps_an_unknown_width() -> None:
    """No saved dispatch is later than the load: a lone old bucket is counted from then on."""
    burst = WindowLog(((1_715_000_000_000, 3),))
    (seeded,), _ = restore_old_format_logs([burst], [SECOND], now_ms=1_715_000_060_000)
    assert seeded.buckets == ((1_715_000_060_000, 3),)
    assert count_in_window(seeded, SECOND, 1_715_000_061_004) == 3
    assert count_in_window(seeded, SECOND, 1_715_000_061_005) == 0  # not 44 minutes later


def test_a_load_time_before_a_saved_bucket_keeps_the_dispatches_in_their_bucket() -> None:
    """A clock stepped back across the restart: the cap never moves a dispatch earlier than its
    bucket."""
    (seeded,), _ = restore_logs([(MINUTE, WindowLog(((600, 2),)))], [SECOND], now_ms=100)
    assert seeded.buckets == ((600, 2),)


def test_the_widest_bucket_matches_the_longest_period_the_configuration_accepts() -> None:
    assert RateLimit(1, MAX_POLICY_S * 1_000).bucket_ms == MAX_BUCKET_MS


@pytest.mark.parametrize(
    ("restore", "text"),
    [
        (WindowRestore(SECOND, Restore.KEPT), "5 per 1 s kept"),
        (
            WindowRestore(SECOND, Restore.SEEDED),
            "5 per 1 s rebuilt from the saved logs (longest ?)",
        ),
    ],
)
def test_a_report_without_its_source_still_reads(restore: WindowRestore, text: str) -> None:
    assert restore.describe() == text
