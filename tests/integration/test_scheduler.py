"""The scheduler end to end: real broker, a real worker with handlers, limits from its config."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from schemas import decode_event, decode_ready
from schemas.records import decode_rate_change
from streams.client import SmartScheduler, TaskManager
from streams.domain import (
    Event,
    TaskCompleted,
    TaskDeferred,
    TaskDispatched,
    TaskRetryScheduled,
    TaskStarted,
)
from streams.domain.limits import RateLimit
from tests.integration.conftest import AGEING_S, SCHEDULER_PREFIX, platform
from tests.integration.kafka_io import read_until

TERMINAL = {"completed", "failed", "cancelled"}


async def _events_of(
    bootstrap_servers: str, ids: Iterable[str], done: Callable[[list[Event]], bool]
) -> list[Event]:
    """Every event of the given tasks on the scheduler tests' task.events, in log order per task."""
    wanted = set(ids)
    records = await read_until(
        bootstrap_servers,
        f"{SCHEDULER_PREFIX}task.events",
        done=lambda kept: done([decode_event(r.value or b"") for r in kept]),
        keep=lambda r: (r.key or b"").decode() in wanted,
        timeout_s=60,
    )
    return [decode_event(r.value or b"") for r in records]


async def _wait_terminal(
    tm: TaskManager | SmartScheduler, ids: list[str], timeout_s: float = 120
) -> dict[str, Any]:
    """Poll until every task is terminal; return the last statuses."""
    deadline = time.monotonic() + timeout_s
    statuses: dict[str, Any] = {}
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        for tid in list(pending):
            statuses[tid] = await tm.get_task_status(tid)
            if statuses[tid]["status"] in TERMINAL:
                pending.remove(tid)
        if pending:
            await asyncio.sleep(0.2)
    return statuses


def _times(events: list[Event], kind: type) -> dict[str, list[int]]:
    times: dict[str, list[int]] = {}
    for event in events:
        if isinstance(event.payload, kind):
            times.setdefault(event.task_id, []).append(event.occurred_at_ms)
    return times


def fastest_span_ms(tasks: int, limits: list[RateLimit]) -> int:
    """First to last dispatch of ``tasks`` under ``limits``, sent greedily (exact windows)."""
    sent: list[int] = []
    now = 0
    while len(sent) < tasks:
        waits = []
        for limit in limits:
            recent = [t for t in sent if t > now - limit.period_ms]
            if len(recent) >= limit.calls:
                waits.append(recent[len(recent) - limit.calls] + limit.period_ms)
        if waits:
            now = max(waits)
            continue
        sent.append(now)
    return sent[-1] - sent[0]


def worst_window(times: list[int], period_ms: int) -> int:
    """The most dispatches in any rolling window ``(t - period, t]``."""
    ordered = sorted(times)
    worst, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - period_ms:
            start += 1
        worst = max(worst, end - start + 1)
    return worst


async def test_rate_limits_hold_in_every_rolling_window_and_the_run_is_near_the_fastest_allowed(
    scheduler_config: dict[str, Any], bootstrap_servers: str
) -> None:
    name = platform("rl")
    limits = [RateLimit(20, 1_000), RateLimit(50, 5_000)]
    async with SmartScheduler(scheduler_config) as scheduler:
        ids = [await scheduler.schedule_task("noop", name, f"t{i}") for i in range(300)]
        statuses = await _wait_terminal(scheduler, ids, timeout_s=90)
    events = await _events_of(
        bootstrap_servers, ids, lambda evs: len(_times(evs, TaskDispatched)) >= 300
    )
    dispatched = [t for times in _times(events, TaskDispatched).values() for t in times]

    worst = {limit.period_ms: worst_window(dispatched, limit.period_ms) for limit in limits}
    span = max(dispatched) - min(dispatched)
    fastest = fastest_span_ms(300, limits)
    print(
        f"rate limits: worst windows {worst} (limits 20/1s, 50/5s); "
        f"span {span} ms, fastest {fastest} ms; "
        f"achieved {299_000 / span:.2f}/s vs allowed {299_000 / fastest:.2f}/s; "
        f"{len(dispatched) - 300} go-aheads given back"
    )
    assert {s["status"] for s in statuses.values()} == {"completed"}
    # a go-ahead that reached its handler past its start slot was given back and dispatched
    # again: each dispatch counts in the windows, so every one of them is checked
    assert len(dispatched) >= 300
    assert worst[1_000] <= 20 and worst[5_000] <= 50, worst
    assert span <= fastest * 1.2, (span, fastest)


async def test_a_concurrency_cap_of_three_is_never_exceeded(
    scheduler_config: dict[str, Any], bootstrap_servers: str
) -> None:
    async with SmartScheduler(scheduler_config) as scheduler:
        ids = [await scheduler.schedule_task("slow", platform("cap"), f"t{i}") for i in range(15)]
        statuses = await _wait_terminal(scheduler, ids)
    events = await _events_of(
        bootstrap_servers, ids, lambda evs: len(_times(evs, TaskCompleted)) >= 15
    )
    starts, ends = _times(events, TaskStarted), _times(events, TaskCompleted)
    changes = sorted(
        [(starts[t][0], 1) for t in ids] + [(ends[t][0], -1) for t in ids],
        key=lambda c: (c[0], c[1]),
    )
    running, most = 0, 0
    for _, delta in changes:
        running += delta
        most = max(most, running)

    assert {s["status"] for s in statuses.values()} == {"completed"}
    assert most == 3, f"at most {most} tasks ran at once"


async def test_dispatch_follows_priority_then_readiness_after_a_pause(
    scheduler_config: dict[str, Any], bootstrap_servers: str
) -> None:
    name = platform("prio")
    rng = random.Random(11)
    async with SmartScheduler(scheduler_config) as scheduler:
        await scheduler.pause_platform(name, 300)
        ids = [
            await scheduler.schedule_task("noop", name, f"t{i}", priority=rng.randint(1, 10))
            for i in range(100)
        ]
        deadline = time.monotonic() + 60
        while (await scheduler.limit_status(name))["pending"] < 100 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        held = await scheduler.limit_status(name)
        await scheduler.resume_platform(name)
        await _wait_terminal(scheduler, ids)
    ready = await read_until(
        bootstrap_servers,
        f"{SCHEDULER_PREFIX}task.ready",
        done=lambda kept: len(kept) >= 100,
        keep=lambda r: decode_ready(r.value or b"").task_id in set(ids),
    )
    rank = {
        r.task_id: (r.ready_at_ms + (r.priority - 1) * int(AGEING_S * 1000), r.task_id)
        for r in (decode_ready(record.value or b"") for record in ready)
    }
    events = await _events_of(
        bootstrap_servers, ids, lambda evs: len(_times(evs, TaskDispatched)) >= 100
    )
    order = [e.task_id for e in events if isinstance(e.payload, TaskDispatched)]
    order.sort(key=lambda tid: _times(events, TaskDispatched)[tid][0])

    assert held["pending"] == 100 and held["held_by"]["reason"] == "paused"
    assert order == sorted(ids, key=lambda tid: rank[tid])


async def test_an_old_low_priority_task_is_dispatched_within_its_ageing_bound(
    scheduler_config: dict[str, Any], bootstrap_servers: str
) -> None:
    name = platform("ageing")
    bound_ms = 9 * int(AGEING_S * 1000)
    async with SmartScheduler(scheduler_config) as scheduler:
        old = await scheduler.schedule_task("noop", name, "old", priority=10)
        urgent: list[str] = []
        started = time.monotonic()
        while (
            time.monotonic() - started < 2 * bound_ms / 1000
        ):  # a steady stream at ~20/s, over the 10/s limit
            urgent.append(
                await scheduler.schedule_task("noop", name, f"u{len(urgent)}", priority=1)
            )
            await asyncio.sleep(0.05)
        await _wait_terminal(scheduler, [old, *urgent], timeout_s=120)
    ids = [old, *urgent]
    ready = await read_until(
        bootstrap_servers,
        f"{SCHEDULER_PREFIX}task.ready",
        done=lambda kept: len(kept) >= len(ids),
        keep=lambda r: decode_ready(r.value or b"").task_id in set(ids),
    )
    ready_at = {
        decode_ready(r.value or b"").task_id: decode_ready(r.value or b"").ready_at_ms
        for r in ready
    }
    events = await _events_of(
        bootstrap_servers, ids, lambda evs: len(_times(evs, TaskDispatched)) >= len(ids)
    )
    dispatched = {tid: times[0] for tid, times in _times(events, TaskDispatched).items()}
    before_old = [tid for tid in urgent if dispatched[tid] < dispatched[old]]
    later_than_bound = [tid for tid in urgent if ready_at[tid] > ready_at[old] + bound_ms]

    assert later_than_bound, "the urgent stream went on past the ageing bound"
    assert all(ready_at[tid] <= ready_at[old] + bound_ms for tid in before_old)
    assert all(dispatched[tid] > dispatched[old] for tid in later_than_bound)


async def test_retries_back_off_timeouts_retry_and_non_retryable_errors_fail_at_once(
    scheduler_config: dict[str, Any], bootstrap_servers: str
) -> None:
    name = platform("ret")
    async with TaskManager(scheduler_config) as tm:
        flaky = await tm.create_task("flaky", name, "f", max_retries=3, retry_delay=0.2)
        hang = await tm.create_task("hang", name, "h", timeout=1.0, max_retries=1, retry_delay=0.1)
        fatal = await tm.create_task("fatal", name, "x", max_retries=3)
        gone = await tm.create_task("gone", name, "y", max_retries=3)
        statuses = await _wait_terminal(tm, [flaky, hang, fatal, gone], timeout_s=60)
    events = await _events_of(
        bootstrap_servers, [flaky], lambda evs: len(_times(evs, TaskRetryScheduled)) >= 1
    )
    delays = [e.payload.delay_ms for e in events if isinstance(e.payload, TaskRetryScheduled)]

    assert (statuses[flaky]["status"], statuses[flaky]["attempt"]) == ("completed", 3)
    assert len(delays) == 2 and delays[0] < delays[1], delays
    assert 200 <= delays[0] <= 250 and 400 <= delays[1] <= 500, delays
    assert (statuses[hang]["status"], statuses[hang]["attempt"]) == ("failed", 2)
    assert statuses[hang]["last_error"] == "timeout after 1000 ms"
    assert (statuses[fatal]["status"], statuses[fatal]["attempt"]) == ("failed", 1)
    assert "does not exist" in statuses[fatal]["last_error"]
    assert (statuses[gone]["status"], statuses[gone]["attempt"]) == ("failed", 1)


async def test_rate_limited_answers_pause_only_that_platform_and_adapt_its_rate(
    scheduler_config: dict[str, Any], bootstrap_servers: str
) -> None:
    limited, other = platform("aimd"), platform("other")
    async with SmartScheduler(scheduler_config) as scheduler:
        throttled = await scheduler.schedule_task("throttled", limited, "429x3")
        deadline = time.monotonic() + 30
        while (await scheduler.limit_status(limited))[
            "paused_until_ms"
        ] is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        paused = await scheduler.limit_status(limited)
        flowing = [await scheduler.schedule_task("noop", other, f"o{i}") for i in range(5)]
        other_done = await _wait_terminal(scheduler, flowing, timeout_s=30)
        throttled_status = (await _wait_terminal(scheduler, [throttled], timeout_s=60))[throttled]
        successes = [await scheduler.schedule_task("noop", limited, f"s{i}") for i in range(6)]
        await _wait_terminal(scheduler, successes)
        expected = round(0.25 + 7 * 0.1, 6)  # the throttled task's own success, then six more
        deadline = time.monotonic() + 30
        recovered = (await scheduler.limit_status(limited))["rate_factor"]
        while recovered < expected and time.monotonic() < deadline:  # releases reach it after
            await asyncio.sleep(0.05)
            recovered = (await scheduler.limit_status(limited))["rate_factor"]
    changes = await read_until(
        bootstrap_servers,
        f"{SCHEDULER_PREFIX}scheduler.events",
        done=lambda kept: len(kept) >= 9,
        keep=lambda r: decode_rate_change(r.value or b"").platform == limited,
        timeout_s=10,
    )
    factors = [decode_rate_change(r.value or b"").new_factor for r in changes]
    other_finished = max(s["history"][-1][1] for s in other_done.values())
    throttled_ran = max(at for status, at, _ in throttled_status["history"] if status == "running")

    assert paused["paused_until_ms"] is not None and paused["held_by"]["reason"] == "paused"
    assert {s["status"] for s in other_done.values()} == {"completed"}
    assert other_finished < throttled_ran, "the other platform finished while this one was held"
    assert throttled_status["status"] == "completed" and throttled_status["attempt"] == 1
    assert recovered == expected == factors[-1], (recovered, factors)
    # three 429s in a row: the first only pauses, each repeat halves; then successes raise it
    assert factors[:2] == [0.5, 0.25] and factors[2:] == sorted(factors[2:]), factors


async def test_the_status_of_a_held_back_task_names_the_limit_and_when_it_may_go(
    scheduler_config: dict[str, Any], bootstrap_servers: str
) -> None:
    name = platform("busy")
    async with SmartScheduler(scheduler_config) as scheduler:
        first = await scheduler.schedule_task("noop", name, "first")
        await _wait_terminal(scheduler, [first])
        second = await scheduler.schedule_task("noop", name, "second")
        deadline = time.monotonic() + 30
        status = await scheduler.get_task_status(second)
        while status["waiting_on"]["reason"] != "rate_limit" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            status = await scheduler.get_task_status(second)
        limits = await scheduler.limit_status(name)
    events = await _events_of(
        bootstrap_servers,
        [first, second],
        lambda evs: any(isinstance(e.payload, TaskDeferred) for e in evs),
    )
    first_dispatch = _times(events, TaskDispatched)[first][0]
    deferrals = [
        e.payload for e in events if isinstance(e.payload, TaskDeferred) and e.task_id == second
    ]

    assert status["status"] == "ready"
    assert status["waiting_on"]["reason"] == "rate_limit"
    assert "1 calls per 3600 s" in status["waiting_on"]["detail"]
    expected_ms = first_dispatch + 3_600_000
    assert abs(status["waiting_on"]["until_ms"] - expected_ms) <= 3_600_000 // 200 + 1
    assert limits["windows"][0]["remaining"] == 0 and limits["pending"] == 1
    assert len(deferrals) == 1 and deferrals[0].reason == "rate_limit"
