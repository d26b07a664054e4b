"""Delayed tasks and periodic definitions in the pure core.

Given a task created with ``not_before_ms`` (or a periodic definition), when its events are
folded, then the task waits for its time (and its dependencies), the deadline index wakes it
then, and a definition creates each occurrence's task once, whatever the timer repeats.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streams.domain import (
    PeriodicOccurrenceDue,
    ReadyToSchedule,
    RejectionCode,
    Status,
    TaskCreated,
    TaskDelayElapsed,
    apply,
    fold,
    state_from_dict,
    state_to_dict,
)
from streams.domain.periodic import Every, due_occurrence, occurrence_id, schedule_problem
from streams.domain.state import PeriodicSpec, utc_iso, waiting_on
from streams.domain.timers import due_event, next_deadline
from tests.unit import taskflow as tf
from tests.unit.taskflow import T0

DELAY_MS = 3_000


# -- not_before ------------------------------------------------------------------------------


def test_a_delayed_task_is_pending_until_its_time_and_says_so() -> None:
    outcome = tf.accept(None, tf.created("t", at=T0, not_before_ms=T0 + DELAY_MS))
    task = outcome.state
    assert task is not None
    assert (task.status, task.not_before_ms, task.is_delayed) == (
        Status.PENDING,
        T0 + DELAY_MS,
        True,
    )
    assert tf.readies(outcome) == []
    assert waiting_on(task) == {
        "reason": "not_before",
        "not_before_ms": T0 + DELAY_MS,
        "detail": f"not before {utc_iso(T0 + DELAY_MS)}",
    }
    assert next_deadline(task) == T0 + DELAY_MS


def test_the_timer_writes_nothing_before_the_time_and_the_delay_event_at_it() -> None:
    task = tf.play(tf.created("t", at=T0, not_before_ms=T0 + DELAY_MS))
    assert due_event(task, T0 + DELAY_MS - 1) is None
    event = due_event(task, T0 + DELAY_MS)
    assert event is not None and event.payload == TaskDelayElapsed(T0 + DELAY_MS)
    assert due_event(task, T0 + DELAY_MS + 500).event_id == event.event_id  # type: ignore[union-attr]
    outcome = tf.accept(task, event)
    assert outcome.state is not None and outcome.state.status is Status.READY
    assert [r.task_id for r in tf.readies(outcome)] == ["t"]
    assert outcome.state.is_delayed is False and next_deadline(outcome.state) is None
    assert apply(outcome.state, event).state == outcome.state  # the repeat is a duplicate


def test_a_delay_event_before_the_time_is_refused_as_stale() -> None:
    task = tf.play(tf.created("t", at=T0, not_before_ms=T0 + DELAY_MS))
    early = tf.delay_elapsed("t", T0 + DELAY_MS, at=T0 + DELAY_MS - 1)
    assert tf.refuse(task, early).code is RejectionCode.STALE
    other = tf.delay_elapsed("t", T0 + 1, at=T0 + DELAY_MS)
    assert tf.refuse(task, other).code is RejectionCode.STALE


@pytest.mark.parametrize("not_before_ms", [0, T0 - 1, T0])
def test_a_time_not_after_the_creation_is_no_delay(not_before_ms: int) -> None:
    outcome = tf.accept(None, tf.created("t", at=T0, not_before_ms=not_before_ms))
    assert outcome.state is not None and outcome.state.status is Status.READY
    assert outcome.state.not_before_ms is None and not outcome.state.is_delayed


def test_dependencies_met_before_the_time_leave_the_task_pending_until_it() -> None:
    task = tf.play(tf.created("t", "a", at=T0, not_before_ms=T0 + DELAY_MS))
    assert waiting_on(task)["reason"] == "dependencies"  # type: ignore[index]
    outcome = tf.accept(task, tf.resolved("t", "a", at=T0 + 1_000))
    assert outcome.state is not None and outcome.state.status is Status.PENDING
    assert tf.readies(outcome) == []
    assert waiting_on(outcome.state)["reason"] == "not_before"  # type: ignore[index]
    event = due_event(outcome.state, T0 + DELAY_MS)
    assert event is not None
    ready = tf.accept(outcome.state, event)
    assert ready.state is not None and ready.state.status is Status.READY


def test_the_time_passing_before_the_dependencies_are_met_waits_for_them() -> None:
    task = tf.play(tf.created("t", "a", at=T0, not_before_ms=T0 + DELAY_MS))
    event = due_event(task, T0 + DELAY_MS)
    assert event is not None
    waiting = tf.accept(task, event)
    assert waiting.state is not None and waiting.state.status is Status.PENDING
    assert not waiting.state.is_delayed and tf.readies(waiting) == []
    assert next_deadline(waiting.state) is None
    ready = tf.accept(waiting.state, tf.resolved("t", "a", at=T0 + DELAY_MS + 10))
    assert ready.state is not None and ready.state.status is Status.READY


def test_a_dependency_met_after_the_time_makes_the_task_ready_without_the_timer() -> None:
    task = tf.play(tf.created("t", "a", at=T0, not_before_ms=T0 + DELAY_MS))
    ready = tf.accept(task, tf.resolved("t", "a", at=T0 + DELAY_MS))
    assert ready.state is not None and ready.state.status is Status.READY
    assert not ready.state.is_delayed


def test_a_delayed_task_can_be_cancelled_and_its_deadline_goes() -> None:
    task = tf.play(tf.created("t", at=T0, not_before_ms=T0 + DELAY_MS))
    cancelled = tf.play(tf.cancelled("t", at=T0 + 1), state=task)
    assert cancelled.status is Status.CANCELLED and next_deadline(cancelled) is None


def test_an_undelayed_state_has_the_dict_it_had_before_delays_existed() -> None:
    """The golden log's recorded states hold no key for the fields added since."""
    task = tf.play(tf.created("t", at=T0))
    data = state_to_dict(task)
    assert not {"not_before_ms", "is_delayed", "periodic"} & data.keys()
    delayed = tf.play(tf.created("t", at=T0, not_before_ms=T0 + DELAY_MS))
    assert state_from_dict(state_to_dict(delayed)) == delayed


def test_a_delay_beyond_a_year_is_refused() -> None:
    event = tf.created("t", at=T0, not_before_ms=T0 + 367 * 86_400_000)
    assert tf.refuse(None, event).code is RejectionCode.INVALID_PAYLOAD


def test_a_replay_gives_the_same_states() -> None:
    events = [
        tf.created("t", "a", at=T0, not_before_ms=T0 + DELAY_MS),
        tf.created("a", at=T0),
        tf.resolved("t", "a", at=T0 + 10),
        tf.delay_elapsed("t", T0 + DELAY_MS, at=T0 + DELAY_MS + 5),
    ]
    assert fold(events) == fold(events)
    assert fold(events)["t"].status is Status.READY


# -- every: arithmetic in UTC ------------------------------------------------------------------


def test_every_finds_the_first_and_latest_occurrences_on_its_grid() -> None:
    every = Every(start_ms=10_000, every_ms=2_000)
    assert every.first_at_or_after(0) == 10_000
    assert every.first_at_or_after(10_000) == 10_000
    assert every.first_at_or_after(10_001) == 12_000
    assert every.latest_at_or_before(9_999) is None
    assert every.latest_at_or_before(13_999) == 12_000
    assert every.count_between(10_000, 16_000) == 3  # 10, 12, 14
    assert every.count_between(10_000, 10_000) == 0


def test_a_daily_schedule_keeps_24_hours_across_a_daylight_saving_change() -> None:
    """UTC has no daylight saving: the occurrence after 2026-03-29 00:30Z (the night Europe
    moves its clocks) is exactly 24 h later, and the task id says it in UTC."""
    start = int(datetime(2026, 3, 28, 0, 30, tzinfo=UTC).timestamp() * 1000)
    every = Every(start, 86_400_000)
    second = every.first_at_or_after(start + 1)
    third = every.first_at_or_after(second + 1)
    assert (second - start, third - second) == (86_400_000, 86_400_000)
    assert occurrence_id("daily", third) == "daily@2026-03-30T00:30:00Z"


@pytest.mark.parametrize(
    "at_ms", [0, 1, 999, 1_000, 951_782_400_000, 1_767_225_900_250, 4_102_444_799_999]
)
def test_utc_iso_matches_datetime(at_ms: int) -> None:
    at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=at_ms)
    expected = at.strftime("%Y-%m-%dT%H:%M:%S") + (f".{at_ms % 1000:03d}" if at_ms % 1000 else "")
    assert utc_iso(at_ms) == expected + "Z"


@pytest.mark.parametrize(
    ("every_ms", "cron", "problem"),
    [
        (0, "", "exactly one"),
        (2_000, "* * * * *", "exactly one"),
        (999, "", "at least 1 s"),
        (0, "*" * 201, "over 200"),
    ],
)
def test_a_bad_schedule_is_named(every_ms: int, cron: str, problem: str) -> None:
    found = schedule_problem(every_ms, cron)
    assert found is not None and problem in found


# -- periodic definitions --------------------------------------------------------------------

DEFINITION = "periodic:scan"


def _defined(every_ms: int = 2_000, start_ms: int = T0 + 2_000) -> tf.TaskState:
    return tf.play(tf.periodic_scheduled("scan", every_ms=every_ms, start_ms=start_ms, at=T0))


def test_a_definition_is_folded_with_its_schedule_and_next_occurrence() -> None:
    definition = _defined()
    assert definition.status is Status.PERIODIC
    assert definition.periodic == PeriodicSpec(
        every_ms=2_000, start_ms=T0 + 2_000, next_due_ms=T0 + 2_000
    )
    assert (definition.task_type, definition.platform) == ("feed_scan", "twitter")
    assert next_deadline(definition) == T0 + 2_000
    assert waiting_on(definition)["reason"] == "periodic"  # type: ignore[index]


def test_an_occurrence_creates_its_task_once() -> None:
    definition = _defined()
    assert due_event(definition, T0 + 1_999) is None
    due = due_event(definition, T0 + 2_100)
    assert due is not None
    assert due.payload == PeriodicOccurrenceDue(T0 + 2_000, T0 + 4_000, 0)
    outcome = tf.accept(definition, due)
    (created,) = tf.follow_ups(outcome)
    assert created.task_id == occurrence_id("scan", T0 + 2_000)
    assert created.task_id == f"scan@{utc_iso(T0 + 2_000)}"
    assert isinstance(created.payload, TaskCreated)
    assert (created.payload.task_type, created.payload.platform) == ("feed_scan", "twitter")
    after = outcome.state
    assert after is not None and after.periodic is not None
    assert (after.periodic.next_due_ms, after.periodic.occurrences) == (T0 + 4_000, 1)
    # the same occurrence written again (a timer's repeat, a second worker): nothing new
    assert apply(after, due).effects == ()
    again = due_event(definition, T0 + 2_900)  # another timer computing it later
    assert again is not None and again.event_id == due.event_id
    # the created task folds once; its copy is a duplicate
    task = tf.accept(None, created).state
    assert task is not None and task.status is Status.READY
    assert apply(task, created).state == task


def test_a_late_copy_of_an_older_occurrence_is_ignored_not_refused() -> None:
    definition = _defined()
    first = due_event(definition, T0 + 2_000)
    assert first is not None
    after = tf.play(first, state=definition)
    stale = tf.occurrence_due(DEFINITION, T0 + 2_000, T0 + 4_000, at=T0 + 4_500)
    outcome = apply(after, stale)
    assert not outcome.is_rejected and tf.follow_ups(outcome) == []


def test_missed_occurrences_create_only_the_latest_and_count_the_rest() -> None:
    """The policy: after downtime, one task for the latest missed occurrence."""
    definition = _defined()
    due = due_event(definition, T0 + 9_500)  # occurrences at +2, +4, +6, +8 s were due
    assert due is not None
    assert due.payload == PeriodicOccurrenceDue(T0 + 8_000, T0 + 10_000, 3)
    outcome = tf.accept(definition, due)
    assert [e.task_id for e in tf.follow_ups(outcome)] == [occurrence_id("scan", T0 + 8_000)]
    spec = outcome.state.periodic  # type: ignore[union-attr]
    assert spec is not None and (spec.occurrences, spec.skipped) == (1, 3)


def test_an_occurrence_not_due_yet_or_off_the_grid_is_refused() -> None:
    definition = _defined()
    early = tf.occurrence_due(DEFINITION, T0 + 2_000, T0 + 4_000, at=T0 + 1_000)
    assert tf.refuse(definition, early).code is RejectionCode.STALE
    off_grid = tf.occurrence_due(DEFINITION, T0 + 3_000, T0 + 5_000, at=T0 + 6_000)
    assert tf.refuse(definition, off_grid).code is RejectionCode.INVALID_PAYLOAD
    backwards = tf.occurrence_due(DEFINITION, T0 + 2_000, T0 + 2_000, at=T0 + 6_000)
    assert tf.refuse(definition, backwards).code is RejectionCode.INVALID_PAYLOAD


def test_a_removed_definition_creates_nothing_more_and_can_be_defined_again() -> None:
    definition = _defined()
    removed = tf.play(tf.periodic_cancelled("scan", at=T0 + 1_000), state=definition)
    assert removed.status is Status.CANCELLED and next_deadline(removed) is None
    late = tf.occurrence_due(DEFINITION, T0 + 2_000, T0 + 4_000, at=T0 + 2_100)
    assert apply(removed, late).effects == ()
    again = tf.refuse(removed, tf.periodic_cancelled("scan", at=T0 + 1_500))
    assert again.code is RejectionCode.ILLEGAL_TRANSITION
    redefined = tf.play(tf.periodic_scheduled("scan", every_ms=5_000, at=T0 + 3_000), state=removed)
    assert redefined.status is Status.PERIODIC
    assert [t.status for t in redefined.history] == [
        Status.PERIODIC,
        Status.CANCELLED,
        Status.PERIODIC,
    ]
    assert redefined.periodic is not None and redefined.periodic.every_ms == 5_000


def test_a_change_keeps_the_count_and_never_repeats_an_occurrence() -> None:
    definition = _defined()
    fired = tf.play(due_event(definition, T0 + 2_000), state=definition)  # type: ignore[arg-type]
    changed = tf.play(
        tf.periodic_scheduled("scan", every_ms=1_000, start_ms=T0, at=T0 + 2_000), state=fired
    )
    assert changed.periodic is not None
    assert changed.periodic.next_due_ms == T0 + 3_000  # not +2 s again: it was created
    assert changed.periodic.occurrences == 1


def test_a_cron_definition_takes_its_times_from_its_events() -> None:
    start = int(datetime(2026, 1, 1, 0, 3, tzinfo=UTC).timestamp() * 1000)
    first = start + 2 * 60_000
    event = tf.periodic_scheduled(
        "five", every_ms=0, cron="*/5 * * * *", start_ms=start, first_due_ms=first, at=start
    )
    definition = tf.play(event)
    assert definition.periodic is not None and definition.periodic.next_due_ms == first
    assert due_event(definition, first) is None  # the core alone cannot compute a cron
    due = tf.occurrence_due("periodic:five", first, first + 300_000, at=first + 10)
    outcome = tf.accept(definition, due)
    assert [e.task_id for e in tf.follow_ups(outcome)] == ["five@2026-01-01T00:05:00Z"]


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"every_ms": 500}, RejectionCode.INVALID_PAYLOAD),
        ({"every_ms": 0}, RejectionCode.INVALID_PAYLOAD),
        ({"every_ms": 0, "cron": "* * * * *"}, RejectionCode.INVALID_PAYLOAD),  # no first_due
        ({"task_type": ""}, RejectionCode.INVALID_PAYLOAD),
        ({"target": "x" * 20_000}, RejectionCode.TOO_LARGE),
        ({"priority": 0}, RejectionCode.INVALID_PAYLOAD),
    ],
)
def test_a_bad_definition_is_refused(changes: dict[str, object], code: RejectionCode) -> None:
    assert tf.refuse(None, tf.periodic_scheduled("scan", **changes)).code is code  # type: ignore[arg-type]


def test_a_definition_over_an_ordinary_task_is_refused_and_vice_versa() -> None:
    task = tf.play(tf.created(DEFINITION, at=T0))
    refused = tf.refuse(task, tf.periodic_scheduled("scan"))
    assert refused.code is RejectionCode.DUPLICATE_TASK
    definition = _defined()
    assert tf.refuse(definition, tf.created(DEFINITION)).code is RejectionCode.DUPLICATE_TASK


def test_nothing_can_depend_on_a_definition() -> None:
    outcome = tf.accept(_defined(), tf.registered(DEFINITION, "child", at=T0 + 1))
    (answer,) = tf.follow_ups(outcome)
    assert answer.task_id == "child" and answer.payload.outcome == "refused"  # type: ignore[union-attr]


def test_due_occurrence_is_none_before_the_next_one() -> None:
    spec = PeriodicSpec(every_ms=2_000, start_ms=T0, next_due_ms=T0 + 2_000)
    assert due_occurrence(spec, T0 + 1_999, Every(T0, 2_000)) is None


def test_readiness_of_an_occurrence_is_scheduled_for_its_platform() -> None:
    definition = _defined()
    created = tf.only_follow_up(tf.accept(definition, due_event(definition, T0 + 2_000)))  # type: ignore[arg-type]
    (ready,) = [e for e in apply(None, created).effects if isinstance(e, ReadyToSchedule)]
    assert (ready.platform, ready.task_type) == ("twitter", "feed_scan")


def test_skips_of_an_every_schedule_are_counted_from_the_state_not_the_timer() -> None:
    """A restarted worker's timer may count an occurrence whose due event (written by the
    worker before it) is still ahead of it in the log: the fold counts what it skips."""
    definition = _defined()
    old_timer = due_event(definition, T0 + 2_100)  # +2 s, written just before a crash
    new_timer = due_event(definition, T0 + 6_100)  # +6 s, counting +2 and +4 as skipped
    assert old_timer is not None and new_timer is not None
    assert new_timer.payload.skipped == 2  # type: ignore[union-attr]
    state = tf.play(old_timer, new_timer, state=definition)
    assert state.periodic is not None
    assert (state.periodic.occurrences, state.periodic.skipped) == (2, 1)  # +4 s alone


def test_a_definition_is_not_counted_as_a_task_by_the_platform_view() -> None:
    """Its occurrences are the tasks; the definition and its removal are no outcome."""
    from projections.log import feed
    from projections.platforms import PlatformStatsView
    from tests.unit.test_projections import log_of

    definition = tf.periodic_scheduled("scan", at=T0)
    state = tf.play(definition)
    occurrence = tf.only_follow_up(tf.accept(state, due_event(state, T0 + 2_000)))  # type: ignore[arg-type]
    due = due_event(state, T0 + 2_000)
    stats = PlatformStatsView()
    feed(log_of(definition, due, occurrence, tf.periodic_cancelled("scan", at=T0 + 3_000)), [stats])  # type: ignore[arg-type]
    twitter = stats.to_json()["platforms"]["twitter"]
    assert twitter["tasks"] == 1
    assert twitter["outcomes"]["cancelled"] == 0
    assert twitter["statuses"] == {"ready": 1}
