"""Rate limits: rolling windows that can never be exceeded, and adaptive throttling.

A platform allows ``calls`` per ``period`` for several periods at once (5 per second, 100 per
minute, 2,000 per day). Each window keeps the recent dispatches in buckets of ``period / 200``
and counts every bucket that overlaps the rolling window ``(now - period, now]``, so the count
can only be too high, never too low: no rolling window of that length ever holds more than its
limit, and a dispatch is delayed by at most one bucket (0.5 % of the period) compared to an
exact log of timestamps. Memory per window is bounded by the bucket count, whatever the rate.

Adaptive throttling (AIMD): a "rate limited" answer that repeats the previous answer from the
platform halves the fraction of the configured limits the scheduler uses (a lone one only pauses
the platform: platforms answer 429 now and then for reasons of their own); each success adds
``AIMD_STEP`` back, up to 1 (never above the configured limits), and never goes below
``AIMD_FLOOR``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

BUCKETS_PER_PERIOD = 200
AIMD_DECREASE = 0.5
AIMD_STEP = 0.1
AIMD_FLOOR = 0.1


@dataclass(frozen=True)
class RateLimit:
    """At most ``calls`` dispatches in any rolling ``period_ms``."""

    calls: int
    period_ms: int

    @property
    def bucket_ms(self) -> int:
        """Width of one bucket of this window's log."""
        return max(1, self.period_ms // BUCKETS_PER_PERIOD)


@dataclass(frozen=True)
class WindowLog:
    """Dispatches of one window, as ``(bucket_start_ms, count)`` pairs, oldest first."""

    buckets: tuple[tuple[int, int], ...] = ()


def effective_calls(limit: RateLimit, rate_factor: float) -> int:
    """The calls the scheduler allows itself in ``limit``'s window under throttling (>= 1)."""
    return max(1, int(limit.calls * rate_factor))


def count_in_window(log: WindowLog, limit: RateLimit, now_ms: int) -> int:
    """Dispatches in buckets overlapping ``(now_ms - period, now_ms]`` (an upper bound)."""
    horizon = now_ms - limit.period_ms
    return sum(count for start, count in log.buckets if start + limit.bucket_ms > horizon)


def record_dispatch(log: WindowLog, limit: RateLimit, now_ms: int) -> WindowLog:
    """``log`` with one more dispatch at ``now_ms``, and buckets out of every window dropped."""
    start = now_ms - now_ms % limit.bucket_ms
    horizon = now_ms - limit.period_ms
    kept = [(s, c) for s, c in log.buckets if s + limit.bucket_ms > horizon]
    if kept and kept[-1][0] == start:
        kept[-1] = (start, kept[-1][1] + 1)
    else:
        kept.append((start, 1))
    return WindowLog(tuple(kept))


def next_allowed_ms(log: WindowLog, limit: RateLimit, allowed_calls: int, now_ms: int) -> int:
    """The earliest time at or after ``now_ms`` when one more dispatch fits ``allowed_calls``."""
    live = [(s, c) for s, c in log.buckets if s + limit.bucket_ms > now_ms - limit.period_ms]
    excess = sum(c for _, c in live) - allowed_calls + 1
    if excess <= 0:
        return now_ms
    for start, count in live:
        excess -= count
        if excess <= 0:
            return start + limit.bucket_ms + limit.period_ms
    return now_ms + limit.period_ms  # unreachable: the live buckets hold the whole count


def remaining_calls(log: WindowLog, limit: RateLimit, allowed_calls: int, now_ms: int) -> int:
    """How many more dispatches the window allows right now."""
    return max(0, allowed_calls - count_in_window(log, limit, now_ms))


def throttled(rate_factor: float) -> float:
    """The rate factor after a "rate limited" answer (multiplicative decrease)."""
    return max(AIMD_FLOOR, rate_factor * AIMD_DECREASE)


def recovered(rate_factor: float) -> float:
    """The rate factor after a success (additive increase, capped at the configured limits)."""
    return min(1.0, round(rate_factor + AIMD_STEP, 6))


@dataclass(frozen=True)
class PlatformLimits:
    """A platform's configuration: its rate-limit windows and its concurrency cap."""

    platform: str
    limits: tuple[RateLimit, ...] = ()
    max_concurrent: int | None = None

    def with_cap(self, cap: int | None) -> PlatformLimits:
        """The same limits with another concurrency cap."""
        return replace(self, max_concurrent=cap)
