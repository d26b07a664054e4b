"""The health judgement (``streams.health.Health``), from injected samples and clock."""

from __future__ import annotations

from streams.health import FOLD, SCHEDULER, Health, Lane, sample_interval

STALL_S = 60.0


def fold(partition: int, position: int | None, lag: int | None) -> Lane:
    return Lane(FOLD, str(partition), position, lag)


def test_no_lanes_and_no_failures_is_healthy() -> None:
    health = Health(STALL_S)
    assert health.observe(0.0, [], []) == []
    assert health.healthy


def test_a_lagging_partition_whose_position_stands_still_stalls_after_the_bound() -> None:
    health = Health(STALL_S)
    assert health.observe(0.0, [fold(3, 41, 10)], []) == []
    assert health.observe(59.9, [fold(3, 41, 10)], []) == []
    assert health.observe(61.0, [fold(3, 41, 10)], []) == [
        "fold made no progress on partition 3 for 61 s while it lags 10 records"
    ]
    assert not health.healthy
    # one record folded: progress, healthy at once
    assert health.observe(62.0, [fold(3, 42, 9)], []) == []
    assert health.healthy


def test_a_partition_that_progresses_never_stalls() -> None:
    health = Health(STALL_S)
    for second in range(0, 600, 5):
        assert health.observe(float(second), [fold(0, second, 1_000)], []) == []


def test_an_idle_partition_never_stalls() -> None:
    health = Health(STALL_S)
    for second in range(0, 600, 5):
        assert health.observe(float(second), [fold(0, 99, 0)], []) == []


def test_the_stall_clock_starts_when_records_start_waiting() -> None:
    health = Health(STALL_S)
    assert health.observe(0.0, [fold(1, 7, 0)], []) == []
    assert health.observe(100.0, [fold(1, 7, 0)], []) == []  # idle for 100 s: fine
    assert health.observe(105.0, [fold(1, 7, 4)], []) == []  # records arrive, nothing folded
    assert health.observe(159.0, [fold(1, 7, 4)], []) == []  # 59 s since last seen idle
    assert health.observe(161.0, [fold(1, 7, 4)], []) == [
        "fold made no progress on partition 1 for 61 s while it lags 4 records"
    ]


def test_a_partition_not_opened_for_the_bound_is_a_reason() -> None:
    health = Health(STALL_S)
    assert health.observe(0.0, [fold(2, None, None)], []) == []
    assert health.observe(60.0, [fold(2, None, None)], []) == [
        "fold has not opened partition 2 for 60 s"
    ]
    assert health.observe(61.0, [fold(2, 5, 0)], []) == []  # opened (restored) at last


def test_store_failures_are_reasons_at_once_and_clear_with_the_failure() -> None:
    health = Health(STALL_S)
    failure = "store write failed (tasks table): OSError: [Errno 28] No space left on device"
    assert health.observe(0.0, [fold(0, 1, 0)], [failure]) == [failure]
    assert not health.healthy
    assert health.observe(1.0, [fold(0, 1, 0)], []) == []
    assert health.healthy


def test_failures_come_first_then_stalls_of_each_component() -> None:
    health = Health(STALL_S)
    lanes = [fold(0, 5, 3), Lane(SCHEDULER, "task.ready[0]", 8, 1)]
    failure = "store write failed (scheduler tables): Exception: IO error"
    health.observe(0.0, lanes, [failure])
    assert health.observe(75.0, lanes, [failure]) == [
        failure,
        "fold made no progress on partition 0 for 75 s while it lags 3 records",
        "scheduler made no progress on partition task.ready[0] for 75 s while it lags 1 records",
    ]


def test_a_revoked_partition_is_forgotten_and_starts_afresh_when_assigned_again() -> None:
    health = Health(STALL_S)
    health.observe(0.0, [fold(4, 10, 2)], [])
    assert health.observe(30.0, [], []) == []  # revoked
    assert health.observe(70.0, [fold(4, 10, 2)], []) == []  # back: its clock starts now
    assert health.observe(130.0, [fold(4, 10, 2)], []) == [
        "fold made no progress on partition 4 for 60 s while it lags 2 records"
    ]


def test_an_unknown_lag_never_counts_as_lagging() -> None:
    health = Health(STALL_S)
    health.observe(0.0, [fold(0, 3, None)], [])
    assert health.observe(600.0, [fold(0, 3, None)], []) == []


def test_samples_are_taken_often_enough_for_the_bound() -> None:
    assert sample_interval(60.0) == 5.0
    assert sample_interval(2.0) == 0.5
    assert sample_interval(0.1) == 0.2
