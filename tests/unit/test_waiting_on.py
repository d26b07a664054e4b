"""What a task's status document says it waits for, and whether its result is served: decided
by the pure core from the state and the time (``streams.domain.state``)."""

from __future__ import annotations

from streams.domain import apply
from streams.domain.events import Event
from streams.domain.limits import PlatformLimits
from streams.domain.scheduling import PlatformScheduler, QueuedTask, overall_free, runs_here
from streams.domain.state import TaskState, waiting_on
from tests.unit.taskflow import T0, completed, created, dispatched, failed, started

TTL_MS = 1_000


def _fold(*events: Event) -> TaskState:
    state = None
    for event in events:
        state = apply(state, event).state
    assert state is not None
    return state


def test_a_result_is_served_until_its_ttl_and_not_after() -> None:
    done = _fold(
        created("a", result_ttl_ms=TTL_MS),
        dispatched("a"),
        started("a"),
        completed("a", at=T0 + 10),
    )
    assert done.result_available(T0 + 10)
    assert done.result_available(T0 + 10 + TTL_MS - 1)
    assert not done.result_available(T0 + 10 + TTL_MS)


def test_a_task_without_a_result_has_none_available() -> None:
    assert not _fold(created("a")).result_available(T0)


def test_waiting_on_names_dependencies_a_retry_or_the_scheduler() -> None:
    assert waiting_on(_fold(created("b", "a"))) == {"reason": "dependencies", "dependencies": ["a"]}
    ready = _fold(created("a"))
    assert waiting_on(ready) == {
        "reason": "scheduling",
        "detail": "waiting for its platform's scheduler or a caller",
    }
    retrying = _fold(created("a"), dispatched("a"), started("a"), failed("a", "boom", at=T0 + 5))
    answer = waiting_on(retrying)
    assert answer is not None and answer["reason"] == "retry"
    assert answer["due_at_ms"] == retrying.retry_due_at_ms and answer["last_error"] == "boom"
    assert waiting_on(_fold(created("a"), dispatched("a"), started("a"))) is None


def test_an_overall_cap_counts_the_tasks_in_flight_of_every_platform() -> None:
    schedulers = []
    for platform, tasks in (("x", 2), ("y", 1)):
        scheduler = PlatformScheduler(PlatformLimits(platform, (), None))
        for i in range(tasks):
            scheduler.enqueue(QueuedTask(f"{platform}{i}", "t", "target", 1, 1, T0))
        scheduler.run(T0)
        schedulers.append(scheduler)
    assert overall_free(5, schedulers) == 2
    assert overall_free(3, schedulers) == 0
    assert overall_free(None, schedulers) is None


def test_only_task_types_with_a_handler_here_are_scheduled_here() -> None:
    assert runs_here("scrape", frozenset({"scrape"}))
    assert not runs_here("analyse", frozenset({"scrape"}))


def test_a_ready_tasks_status_names_what_holds_its_platform_now() -> None:
    from streams.web import held_now

    window = {"reason": "rate_limit", "detail": "2 calls per 3600 s used", "until_ms": 5}
    assert held_now({"held_by": window}) == window
    assert held_now({"held_by": None})["reason"] == "scheduling"
