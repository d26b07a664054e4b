""" "Rate limited" answers are bounded: ``max_rate_limited`` in a row fail the task.

The fold counts throttled answers (``TaskFailed.throttled_ms > 0``) in a row in the task's state;
a completion, an ordinary failure or a timeout resets the count; an interruption by a stopping
worker (``TaskFailed.interrupted``) neither counts nor resets, and is retried at once.
"""

from __future__ import annotations

import pytest

import tests.unit.taskflow as tf
from streams.domain import (
    DependencyOutcome,
    DependencyResolved,
    Event,
    Outcome,
    RejectionCode,
    Released,
    Source,
    Status,
    TaskFailed,
    TaskRetryScheduled,
    TaskState,
    fold,
    state_from_dict,
    state_from_json,
    state_to_dict,
    state_to_json,
)
from streams.domain.events import MAX_RATE_LIMITED

T0 = tf.T0
ERROR = "rate limited, retry after 0.05 s"


class Life:
    """One task driven through attempts like the scheduler, the executor and the timer would."""

    def __init__(self, state: TaskState, at: int = T0 + 10_000) -> None:
        self.state = state
        self.at = at
        self.log: list[Event] = []
        """Every event applied to the task since, follow-ups included: what a replay folds."""

    def apply(self, ev: Event) -> Outcome:
        outcome = tf.accept(self.state, ev)
        self.state = outcome.state  # type: ignore[assignment]
        self.log.append(ev)
        return outcome

    def tick(self) -> int:
        self.at += 100
        return self.at

    def run_attempt(self) -> None:
        """Dispatch and start the next attempt (the task must be ready)."""
        assert self.state.status is Status.READY, self.state.status
        self.apply(tf.dispatched("t", at=self.tick()))
        self.apply(tf.started("t", at=self.tick()))

    def answer(self, ev: Event) -> Outcome:
        """The running attempt ends with ``ev``; a scheduled retry is carried out at once."""
        outcome = self.apply(ev)
        for follow_up in tf.follow_ups(outcome):
            if isinstance(follow_up.payload, TaskRetryScheduled):
                self.apply(follow_up)
                due = follow_up.payload.due_at_ms
                self.apply(tf.retry_due("t", self.state.attempt, at=max(due, self.tick())))
        return outcome

    def throttled(self, throttled_ms: int = 50) -> Outcome:
        self.run_attempt()
        return self.answer(tf.failed("t", ERROR, throttled_ms=throttled_ms, at=self.tick()))

    def failed(self) -> Outcome:
        self.run_attempt()
        return self.answer(tf.failed("t", "HTTP 500", at=self.tick()))

    def timed_out(self) -> Outcome:
        self.run_attempt()
        assert self.state.deadline_ms is not None
        self.at = self.state.deadline_ms
        return self.answer(tf.timed_out("t", self.state.attempt, at=self.at))

    def interrupted(self) -> Outcome:
        self.run_attempt()
        payload = TaskFailed("interrupted: worker stopping", True, interrupted=True)
        return self.answer(tf.event("t", payload, at=self.tick(), source=Source.EXECUTOR))

    def completed(self) -> Outcome:
        self.run_attempt()
        return self.answer(tf.completed("t", at=self.tick()))


def _ready(**policy: object) -> Life:
    """A ready task ``t`` (no dependencies) with ``policy`` overriding ``TaskCreated`` fields."""
    return Life(tf.play(tf.created("t", at=T0, **policy)))


def test_the_default_bound_is_ten_and_comes_from_task_created() -> None:
    assert _ready().state.policy.max_rate_limited == 10
    assert _ready(max_rate_limited=3).state.policy.max_rate_limited == 3


def test_nine_throttled_answers_then_a_success_complete_the_task() -> None:
    life = _ready()
    for n in range(1, 10):
        life.throttled()
        assert (life.state.status, life.state.rate_limited_in_row) == (Status.READY, n)
        assert life.state.attempt == 0, "a throttled attempt is not spent"

    outcome = life.completed()

    assert life.state.status is Status.COMPLETED
    assert life.state.attempt == 1
    assert life.state.rate_limited_in_row == 0
    assert Released("t", "linkedin", completed=True) in outcome.effects


def test_ten_throttled_answers_in_a_row_fail_the_task_with_the_reason() -> None:
    life = Life(tf.play(tf.registered("t", "dependent", at=T0), tf.created("t", at=T0 + 1)))
    for _ in range(9):
        life.throttled()

    outcome = life.throttled(throttled_ms=2_000)

    assert life.state.status is Status.FAILED
    assert life.state.last_error == f"rate limited 10 times in a row: {ERROR}"
    assert life.state.rate_limited_in_row == 10
    assert life.state.deadline_ms is None
    # the slot is released with the pause the platform asked for; dependents are told
    assert Released("t", "linkedin", completed=False, throttled_ms=2_000) in outcome.effects
    answers = [e.payload for e in tf.follow_ups(outcome)]
    assert answers == [DependencyResolved("t", DependencyOutcome.FAILED)]
    assert not any(isinstance(p, TaskRetryScheduled) for p in answers), "no retry"
    # the end is final: a late answer of the same attempt is refused
    tf.refuse(life.state, tf.failed("t", ERROR, throttled_ms=50, at=life.tick()))


@pytest.mark.parametrize("bound", [1, 3])
def test_a_smaller_bound_fails_after_that_many_answers(bound: int) -> None:
    life = _ready(max_rate_limited=bound)
    for _ in range(bound - 1):
        life.throttled()
        assert life.state.status is Status.READY
    life.throttled()
    assert life.state.status is Status.FAILED
    assert life.state.last_error == f"rate limited {bound} times in a row: {ERROR}"


@pytest.mark.parametrize("other", ["failed", "timed_out", "completed"])
def test_any_other_outcome_of_an_attempt_resets_the_count(other: str) -> None:
    life = _ready(max_attempts=5)
    for _ in range(9):
        life.throttled()
    assert life.state.rate_limited_in_row == 9

    getattr(life, other)()

    assert life.state.rate_limited_in_row == 0
    if other == "completed":
        return
    assert life.state.status is Status.READY and life.state.attempt == 1, "an attempt spent"
    for _ in range(9):
        life.throttled()
    assert life.state.status is Status.READY, "nine in a row again: not yet"
    life.throttled()
    assert life.state.status is Status.FAILED
    assert life.state.last_error.startswith("rate limited 10 times in a row: ")


def test_an_interruption_is_retried_at_once_and_neither_counts_nor_resets() -> None:
    life = _ready()
    for _ in range(4):
        life.throttled()
    life.run_attempt()
    payload = TaskFailed("interrupted: worker stopping", True, interrupted=True)
    at = life.tick()
    outcome = life.apply(tf.event("t", payload, at=at, source=Source.EXECUTOR))

    assert life.state.status is Status.RETRYING
    assert life.state.attempt == 0, "not spent"
    assert life.state.rate_limited_in_row == 4, "neither counted nor reset"
    assert life.state.last_error == "interrupted: worker stopping"
    (retry,) = tf.follow_ups(outcome)
    assert retry.payload == TaskRetryScheduled(0, 0, at), "due at once"
    # the slot is freed without a pause: the platform said nothing
    assert Released("t", "linkedin") in outcome.effects

    life.apply(retry)
    life.apply(tf.retry_due("t", 0, at=at))  # due at once: the next timer tick
    assert life.state.status is Status.READY
    for _ in range(5):
        life.throttled()
    assert life.state.status is Status.READY, "4 + 5 answers: one more allowed"
    life.throttled()
    assert life.state.status is Status.FAILED


def test_an_interruption_of_a_dispatched_attempt_is_retried_too() -> None:
    life = _ready()
    life.apply(tf.dispatched("t", at=life.tick()))
    payload = TaskFailed("interrupted: worker stopping", True, interrupted=True)
    life.answer(tf.event("t", payload, at=life.tick(), source=Source.EXECUTOR))
    assert (life.state.status, life.state.attempt) == (Status.READY, 0)


def test_the_count_survives_the_state_codec() -> None:
    life = _ready(max_rate_limited=7)
    for _ in range(5):
        life.throttled()

    stored = state_from_json(state_to_json(life.state))

    assert stored == life.state
    assert stored.rate_limited_in_row == 5
    assert stored.policy.max_rate_limited == 7
    life.state = stored
    life.throttled()
    assert life.state.status is Status.READY
    life.throttled()
    assert life.state.status is Status.FAILED
    assert life.state.last_error.startswith("rate limited 7 times in a row: ")


def test_a_state_stored_before_the_count_existed_reads_as_zero_of_ten() -> None:
    life = _ready()
    data = state_to_dict(life.state)
    del data["rate_limited_in_row"], data["policy"]["max_rate_limited"]

    old = state_from_dict(data)

    assert old.rate_limited_in_row == 0
    assert old.policy.max_rate_limited == 10


def test_a_replay_of_the_log_agrees_with_the_live_fold() -> None:
    creation = tf.created("t", at=T0, max_rate_limited=4)
    life = Life(tf.play(creation))
    life.throttled()
    life.failed()
    for _ in range(3):
        life.throttled()
    life.interrupted()
    life.throttled()
    assert life.state.status is Status.FAILED

    assert fold([creation, *life.log])["t"] == life.state
    assert fold([creation, *life.log])["t"] == life.state, "and again"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (0, RejectionCode.INVALID_PAYLOAD),
        (-1, RejectionCode.INVALID_PAYLOAD),
        (MAX_RATE_LIMITED + 1, RejectionCode.TOO_LARGE),
    ],
)
def test_a_bound_out_of_range_is_refused(value: int, code: RejectionCode) -> None:
    rejection = tf.refuse(None, tf.created("t", max_rate_limited=value))
    assert rejection.code is code
    assert "max_rate_limited" in rejection.reason


def test_the_largest_bound_is_accepted() -> None:
    assert _ready(max_rate_limited=MAX_RATE_LIMITED).state.policy.max_rate_limited == 1_000


# -- where the bound comes from: the settings and create_task ---------------------------------


def test_the_setting_defaults_to_ten_and_create_task_can_override_it() -> None:
    from streams.client import TaskManager

    tm = TaskManager({"max_rate_limited": 4})
    _, payload = tm._new_task("scrape", "linkedin", "in/ada", (), 5, None, None, None, None)
    assert payload.max_rate_limited == 4
    _, payload = tm._new_task("scrape", "linkedin", "in/ada", (), 5, None, None, None, None, 7)
    assert payload.max_rate_limited == 7
    _, payload = TaskManager({})._new_task("s", "p", "t", (), 5, None, None, None, None)
    assert payload.max_rate_limited == 10


@pytest.mark.parametrize("value", [0, 1_001, 2.5, True, "3"])
def test_create_task_refuses_a_bound_out_of_range(value: object) -> None:
    from streams.client import TaskManager
    from streams.errors import ValidationError

    with pytest.raises(ValidationError, match="max_rate_limited must be an integer from 1 to 1000"):
        TaskManager({})._new_task("s", "p", "t", (), 5, None, None, None, None, value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_rate_limited": 0}, "max_rate_limited must be an integer from 1 to 1000"),
        ({"max_rate_limited": 1_001}, "max_rate_limited must be an integer from 1 to 1000"),
        ({"max_rate_limited": 2.5}, "max_rate_limited must be a whole number"),
        ({"shutdown_grace": -1}, "shutdown_grace must not be negative"),
        ({"shutdown_grace": float("inf")}, "shutdown_grace must be a number"),
    ],
)
def test_the_settings_refuse_bad_values_naming_the_key(
    overrides: dict[str, object], message: str
) -> None:
    from streams.config import load_settings
    from streams.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=message):
        load_settings(overrides=overrides, environ={})


def test_the_shutdown_grace_comes_from_the_environment() -> None:
    from streams.config import load_settings

    assert load_settings(environ={}).shutdown_grace == 30.0
    settings = load_settings(environ={"ORCHESTRATOR_SHUTDOWN_GRACE": "0"})
    assert settings.shutdown_grace == 0.0
    assert load_settings(environ={"ORCHESTRATOR_MAX_RATE_LIMITED": "3"}).max_rate_limited == 3
