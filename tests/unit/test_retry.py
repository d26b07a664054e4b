"""Retry backoff: exponential in the attempt, jitter from a seed (bounded and deterministic),
capped."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain import TaskRetryScheduled
from streams.domain.retry import JITTER_FRACTION, MAX_RETRY_DELAY_MS, retry_delay_ms
from tests.unit import taskflow as tf

BASE = 1_000
SEEDS = [f"event-{i}" for i in range(200)]


def _bounds(base: int, attempt: int) -> tuple[int, float]:
    low = base * 2 ** (attempt - 1)
    return min(low, MAX_RETRY_DELAY_MS), min(low * (1 + JITTER_FRACTION), MAX_RETRY_DELAY_MS)


@pytest.mark.parametrize("attempt", range(1, 11))
def test_jitter_stays_within_a_quarter_above_the_backoff(attempt: int) -> None:
    low, high = _bounds(BASE, attempt)
    delays = [retry_delay_ms(BASE, attempt, seed) for seed in SEEDS]
    assert all(low <= d <= high for d in delays)
    # the jitter really spreads tasks that failed together
    assert len(set(delays)) > len(SEEDS) // 2
    assert max(delays) - min(delays) > (high - low) / 2


def test_delay_grows_with_the_attempt_whatever_the_seeds() -> None:
    for seed_a, seed_b in zip(SEEDS, reversed(SEEDS), strict=True):
        for attempt in range(1, 12):
            assert retry_delay_ms(BASE, attempt, seed_a) < retry_delay_ms(BASE, attempt + 1, seed_b)


def test_same_seed_gives_the_same_delay() -> None:
    assert retry_delay_ms(BASE, 3, "abc") == retry_delay_ms(BASE, 3, "abc")
    assert retry_delay_ms(BASE, 3, "abc") != retry_delay_ms(BASE, 3, "abd")


def test_delay_is_capped() -> None:
    assert retry_delay_ms(BASE, 40, "x") == MAX_RETRY_DELAY_MS
    assert retry_delay_ms(MAX_RETRY_DELAY_MS, 1, "x") == MAX_RETRY_DELAY_MS
    assert retry_delay_ms(BASE, 10_000, "x") == MAX_RETRY_DELAY_MS  # no overflow
    assert retry_delay_ms(2**62, 10_000, "x") == MAX_RETRY_DELAY_MS


def test_zero_base_means_no_delay() -> None:
    assert [retry_delay_ms(0, n, "x") for n in (1, 5, 50)] == [0, 0, 0]


def test_attempt_below_one_is_treated_as_the_first() -> None:
    assert retry_delay_ms(BASE, 0, "x") == retry_delay_ms(BASE, 1, "x")
    assert retry_delay_ms(BASE, -3, "x") == retry_delay_ms(BASE, 1, "x")


@settings(deadline=None, max_examples=300)
@given(
    base=st.integers(0, 10**9),
    attempt=st.integers(1, 80),
    seed=st.text(max_size=40),
)
def test_any_delay_is_bounded_and_grows(base: int, attempt: int, seed: str) -> None:
    delay = retry_delay_ms(base, attempt, seed)
    low, high = _bounds(base, attempt)
    assert isinstance(delay, int)
    assert low <= delay <= high
    assert retry_delay_ms(base, attempt, seed) == delay
    assert retry_delay_ms(base, attempt + 1, seed) >= delay


def test_fold_schedules_the_retry_with_this_delay_seeded_by_the_failure() -> None:
    running = tf.play(tf.created("t", retry_delay_ms=750), tf.started("t"))
    ev = tf.failed("t", eid="the-failure")
    (retry,) = tf.follow_ups(tf.accept(running, ev))
    assert isinstance(retry.payload, TaskRetryScheduled)
    assert retry.payload.delay_ms == retry_delay_ms(750, 1, "the-failure")
