"""The client's and the adapters' side of delayed and periodic tasks: validation with clear
errors before anything is written, the events written, cron in UTC, and the schema history.

Given bad input (naive datetimes, zero or negative intervals, bad cron, huge targets), when a
``TaskManager`` call is made, then ``ValidationError`` says what is wrong and nothing is sent.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from schemas import decode_event, encode_event
from schemas.codec import SingleObjectCodec
from schemas.records import event_to_record
from streams.cron import Cron, cron_problem, recurrence_of
from streams.domain import (
    Event,
    PeriodicCancelled,
    PeriodicScheduled,
    Source,
    TaskCreated,
    TaskDelayElapsed,
)
from streams.domain.periodic import Every, due_occurrence
from streams.domain.state import PeriodicSpec
from streams.errors import ValidationError
from tests.unit.test_client_validation import GOOD, manager, sent
from tests.unit.test_codec import _history


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _sent_events(tm: Any) -> list[Event]:
    return [decode_event(value) for _, value, _ in sent(tm)]


# -- create_task(not_before=...) -------------------------------------------------------------


async def test_not_before_is_fixed_into_task_created() -> None:
    tm = manager()
    at = datetime.now(UTC) + timedelta(minutes=5)
    await tm.create_task(**GOOD, task_id="later", not_before=at)
    (event,) = _sent_events(tm)
    assert isinstance(event.payload, TaskCreated)
    assert event.payload.not_before_ms == int(at.timestamp() * 1000)


async def test_an_aware_time_in_another_zone_is_the_same_instant() -> None:
    tm = manager()
    at = (datetime.now(UTC) + timedelta(hours=1)).astimezone(timezone(timedelta(hours=-5)))
    await tm.create_task(**GOOD, task_id="later", not_before=at)
    (event,) = _sent_events(tm)
    assert event.payload.not_before_ms == int(at.timestamp() * 1000)  # type: ignore[union-attr]


async def test_a_time_in_the_past_means_now() -> None:
    tm = manager()
    await tm.create_task(**GOOD, task_id="now", not_before=datetime(2020, 1, 1, tzinfo=UTC))
    (event,) = _sent_events(tm)
    assert event.payload.not_before_ms == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (datetime(2030, 1, 1), "must be timezone-aware"),
        ("2030-01-01T00:00:00Z", "must be a timezone-aware datetime"),
        (1_900_000_000, "must be a timezone-aware datetime"),
        (datetime.now(UTC) + timedelta(days=400), "at most 366 days ahead"),
    ],
)
async def test_a_bad_not_before_is_refused_and_nothing_is_sent(value: Any, message: str) -> None:
    tm = manager()
    with pytest.raises(ValidationError, match=message):
        await tm.create_task(**GOOD, not_before=value)
    assert sent(tm) == []


# -- schedule_periodic / cancel_periodic -------------------------------------------------------


async def test_an_every_definition_is_written_on_its_key() -> None:
    tm = manager()
    start = datetime(2030, 1, 1, tzinfo=UTC)
    key = await tm.schedule_periodic(
        "scan",
        task_type="feed_scan",
        platform="twitter",
        target="feed/1",
        every=timedelta(seconds=2),
        start_at=start,
    )
    assert key == "periodic:scan"
    (event,) = _sent_events(tm)
    assert event.task_id == "periodic:scan"
    p = event.payload
    assert isinstance(p, PeriodicScheduled)
    assert (p.every_ms, p.cron, p.start_ms) == (2_000, "", _ms(start))
    assert (p.task_type, p.platform, p.target, p.priority) == ("feed_scan", "twitter", "feed/1", 5)


async def test_a_cron_definition_carries_its_first_occurrence() -> None:
    tm = manager()
    start = datetime(2030, 1, 1, 0, 3, tzinfo=UTC)
    await tm.schedule_periodic(
        "five", task_type="t", platform="p", target="x", cron="*/5 * * * *", start_at=start
    )
    (event,) = _sent_events(tm)
    p = event.payload
    assert isinstance(p, PeriodicScheduled)
    assert p.first_due_ms == _ms(datetime(2030, 1, 1, 0, 5, tzinfo=UTC))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"every": timedelta(0)}, "positive interval"),
        ({"every": timedelta(seconds=-5)}, "positive interval"),
        ({"every": 0.5}, "at least 1 s"),
        ({"every": float("nan")}, "positive interval"),
        ({"every": timedelta(days=400)}, "at most 366 days"),
        ({"every": "5s"}, "timedelta or seconds"),
        ({"every": None}, "exactly one of every"),
        ({"cron": "* * * * *"}, "exactly one of every"),
        ({"every": None, "cron": "61 * * * *"}, "not a valid cron"),
        ({"every": None, "cron": "*/5 * * * * *"}, "five fields"),
        ({"start_at": datetime(2030, 1, 1)}, "start_at must be timezone-aware"),
        ({"target": "x" * 20_000}, "target"),
        ({"priority": 0}, "priority"),
    ],
)
async def test_a_bad_definition_is_refused_and_nothing_is_sent(
    changes: dict[str, Any], message: str
) -> None:
    tm = manager()
    arguments: dict[str, Any] = {
        "task_type": "feed_scan",
        "platform": "twitter",
        "target": "feed/1",
        "every": timedelta(seconds=2),
        **changes,
    }
    with pytest.raises(ValidationError, match=message):
        await tm.schedule_periodic("scan", **arguments)
    assert sent(tm) == []


@pytest.mark.parametrize("name", ["", "a/b", "x@y", "-lead", "n" * 101])
async def test_a_bad_name_is_refused(name: str) -> None:
    tm = manager()
    with pytest.raises(ValidationError, match="periodic name"):
        await tm.schedule_periodic(name, task_type="t", platform="p", target="x", every=5)
    with pytest.raises(ValidationError, match="periodic name"):
        await tm.cancel_periodic(name)
    assert sent(tm) == []


async def test_cancel_periodic_writes_the_removal() -> None:
    tm = manager()
    await tm.cancel_periodic("scan")
    (event,) = _sent_events(tm)
    assert (event.task_id, event.payload) == (
        "periodic:scan",
        PeriodicCancelled("removed by user"),
    )


# -- cron in UTC ----------------------------------------------------------------------------


def test_cron_occurrences_are_found_in_utc() -> None:
    start = _ms(datetime(2026, 1, 1, 0, 3, 30, tzinfo=UTC))
    cron = Cron("*/5 * * * *", start)
    five = _ms(datetime(2026, 1, 1, 0, 5, tzinfo=UTC))
    assert cron.first_at_or_after(start) == five
    assert cron.first_at_or_after(five) == five
    assert cron.first_at_or_after(five + 1) == five + 300_000
    assert cron.latest_at_or_before(five + 299_999) == five
    assert cron.latest_at_or_before(five - 1) is None  # before start_ms
    assert cron.count_between(five, five + 900_000) == 3


def test_a_daily_cron_keeps_24_hours_across_a_daylight_saving_change() -> None:
    cron = Cron("30 1 * * *", 0)
    before = _ms(datetime(2026, 3, 29, 1, 30, tzinfo=UTC))  # the night Europe changes clocks
    assert cron.first_at_or_after(before + 1) - before == 86_400_000


def test_the_timer_computes_a_cron_occurrence_with_the_latest_missed_policy() -> None:
    spec = PeriodicSpec(
        cron="*/5 * * * *", start_ms=0, next_due_ms=_ms(datetime(2026, 1, 1, 0, 5, tzinfo=UTC))
    )
    recurrence = recurrence_of(spec)
    assert recurrence is not None
    now = _ms(datetime(2026, 1, 1, 0, 21, tzinfo=UTC))
    due = due_occurrence(spec, now, recurrence)
    assert due is not None
    assert due.occurrence_ms == _ms(datetime(2026, 1, 1, 0, 20, tzinfo=UTC))
    assert due.next_due_ms == _ms(datetime(2026, 1, 1, 0, 25, tzinfo=UTC))
    assert due.skipped == 3  # 00:05, 00:10, 00:15


def test_an_unparsable_cron_from_another_producer_has_no_recurrence() -> None:
    assert recurrence_of(PeriodicSpec(cron="not a cron", next_due_ms=1)) is None
    assert isinstance(recurrence_of(PeriodicSpec(every_ms=1_000)), Every)


@pytest.mark.parametrize("expression", ["", "   ", "* * *", "x * * * *", 5])
def test_bad_cron_expressions_are_named(expression: Any) -> None:
    assert cron_problem(expression) is not None


# -- schema history -----------------------------------------------------------------------------


def test_a_v3_task_created_decodes_with_no_delay() -> None:
    """v3 is the schema before ``not_before_ms`` and the periodic payloads."""
    created = TaskCreated("t", "p", "x", 5, (), 1_000, 1, 0, 0, 1_000)
    event = Event("e", "t", 1_700_000_000_000, Source.CLIENT, created)
    record = event_to_record(event)
    record["payload"][1].pop("not_before_ms")
    decoded = decode_event(SingleObjectCodec(_history(3)).encode(record))
    assert decoded == event and decoded.payload.not_before_ms == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "payload",
    [
        TaskDelayElapsed(5),
        PeriodicScheduled("t", "p", "x", 5, 1_000, 1, 0, 0, 1_000, 10, 2_000, "", 0, 0),
        PeriodicCancelled("gone"),
    ],
)
def test_the_new_payloads_round_trip(payload: Any) -> None:
    event = Event("e", "periodic:n", 1_700_000_000_000, Source.TIMER, payload)
    assert decode_event(encode_event(event)) == event
