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

Across a restart the logs are restored by period (:func:`restore_logs`): a window whose period
is unchanged keeps its log, any other window is rebuilt from the saved logs so that it counts
every saved dispatch it must count, possibly late but never too few (:func:`seed_log`).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from itertools import accumulate

from streams.domain.bounds import MAX_POLICY_MS

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

    def widened(self, slot_ms: int) -> RateLimit:
        """The window the scheduler counts so that handler *starts* keep this one, when each
        start may come up to ``slot_ms`` after its dispatch: the same calls over
        ``period_ms + slot_ms``.

        Starts in any ``[t, t + period)`` were dispatched in ``[t - slot, t + period)``, an
        interval of the widened length, which holds at most ``calls`` dispatches.
        """
        return RateLimit(self.calls, self.period_ms + slot_ms)


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
    if kept and kept[-1][0] >= start:
        # the same bucket, or one after ``now_ms`` (a log seeded late, a clock that stepped
        # back): counting the dispatch with the newest bucket keeps the log sorted and counts
        # it for longer, never shorter
        kept[-1] = (kept[-1][0], kept[-1][1] + 1)
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
    return now_ms + limit.period_ms  # allowed_calls < 1: no count is low enough


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


# -- restoring window logs across a restart ------------------------------------------------------

MAX_BUCKET_MS = MAX_POLICY_MS // BUCKETS_PER_PERIOD
"""The widest bucket a valid configuration gives a window (its period is at most
:data:`~streams.domain.bounds.MAX_POLICY_MS`): the bound on the unknown width of an old-format
log whose bucket starts say nothing tighter."""


class Restore(StrEnum):
    """What a restart did with one window's log."""

    KEPT = "kept"
    """The period is unchanged: the saved log as it was (the calls may have changed)."""
    SEEDED = "seeded"
    """New or changed period, and a saved window at least as long: rebuilt from the saved logs,
    counting every recent dispatch (possibly late, never too few)."""
    PARTIAL = "partial"
    """New or changed period longer than every saved window: rebuilt from the saved logs, which
    no longer hold dispatches older than the longest saved period, so it may count too few."""
    EMPTY = "empty"
    """Nothing was saved: the log starts empty."""
    OLD_FORMAT = "old_format"
    """Rebuilt from a snapshot of the old format, whose logs carry no period."""
    DROPPED = "dropped"
    """A saved window no longer configured: its log is dropped."""


@dataclass(frozen=True)
class WindowRestore:
    """What a restart did with one window (``window``: the configured one, or the saved one if
    ``DROPPED``)."""

    window: RateLimit
    action: Restore
    source: RateLimit | None = None
    """``KEPT``: the saved window of the same period; ``SEEDED``/``PARTIAL``: the longest saved
    window; otherwise None."""
    old_logs: int = 0
    """``OLD_FORMAT``: how many logs the old snapshot held."""

    def describe(self) -> str:
        """One clause for the log line of a restart."""
        name = _name(self.window)
        if self.action is Restore.KEPT:
            changed = self.source is not None and self.source != self.window
            return f"{name} kept" + (f" (was {_name(self.source)})" if changed else "")
        if self.action is Restore.SEEDED:
            return f"{name} rebuilt from the saved logs (longest {_name(self.source)})"
        if self.action is Restore.PARTIAL:
            return (
                f"{name} rebuilt from the saved logs, which reach back only "
                f"{_period(self.source)}: older dispatches are not counted"
            )
        if self.action is Restore.EMPTY:
            return f"{name} starts empty (nothing saved)"
        if self.action is Restore.OLD_FORMAT:
            return (
                f"{name} rebuilt from {self.old_logs} old-format logs (periods unknown: "
                "exact up to the longest saved window, older dispatches are not counted)"
            )
        return f"{name} dropped (no longer configured)"


@dataclass(frozen=True)
class LoadReport:
    """What a restart did with every window: for one log line in the adapter (the core logs
    nothing)."""

    windows: tuple[WindowRestore, ...] = ()
    old_format: bool = False

    @property
    def changed(self) -> bool:
        """Something other than every window keeping its log unchanged: worth a log line."""
        return self.old_format or any(
            w.action is not Restore.KEPT or w.source != w.window for w in self.windows
        )

    def describe(self) -> str:
        """The whole report as one line."""
        clauses = "; ".join(w.describe() for w in self.windows) or "no windows"
        return ("old snapshot format: " if self.old_format else "") + "windows: " + clauses


def _period(limit: RateLimit | None) -> str:
    return "?" if limit is None else f"{limit.period_ms / 1000:g} s"


def _name(limit: RateLimit | None) -> str:
    return "?" if limit is None else f"{limit.calls} per {_period(limit)}"


def restore_logs(
    saved: Sequence[tuple[RateLimit, WindowLog]],
    limits: Sequence[RateLimit],
    now_ms: int | None = None,
) -> tuple[list[WindowLog], LoadReport]:
    """The logs of ``limits`` from the windows and logs a snapshot saved, matched by period.

    A window whose period was saved keeps that log (its bucket width is the same, and a log
    records dispatches whatever the calls). Any other window is rebuilt by :func:`seed_log` from
    every saved log: when a saved window is at least as long, some saved log holds every
    dispatch the new window must count, so it counts too many, never too few (``SEEDED``);
    when none is, the dispatches older than the longest saved period were never kept and the
    new window may count too few, though it misses fewer than an empty log would (``PARTIAL``).
    A saved window no longer configured is dropped. ``now_ms`` (the time of the load, if known)
    bounds when the saved dispatches can have happened: see :func:`seed_log`.
    """
    by_period: dict[int, tuple[RateLimit, WindowLog]] = {}
    for window, log in saved:
        by_period.setdefault(window.period_ms, (window, log))  # one period: identical logs
    sources = [(log, window.bucket_ms) for window, log in by_period.values()]
    longest = max(
        (window for window, _ in by_period.values()),
        key=lambda w: w.period_ms,
        default=None,
    )
    logs: list[WindowLog] = []
    report: list[WindowRestore] = []
    for limit in limits:
        if limit.period_ms in by_period:
            window, log = by_period[limit.period_ms]
            logs.append(log)
            report.append(WindowRestore(limit, Restore.KEPT, window))
        elif longest is None:
            logs.append(WindowLog())
            report.append(WindowRestore(limit, Restore.EMPTY))
        else:
            logs.append(seed_log(sources, limit, now_ms))
            covered = longest.period_ms >= limit.period_ms
            action = Restore.SEEDED if covered else Restore.PARTIAL
            report.append(WindowRestore(limit, action, longest))
    configured = {limit.period_ms for limit in limits}
    report += [
        WindowRestore(window, Restore.DROPPED)
        for window, _ in saved
        if window.period_ms not in configured
    ]
    return logs, LoadReport(tuple(report))


def restore_old_format_logs(
    saved: Sequence[WindowLog], limits: Sequence[RateLimit], now_ms: int | None = None
) -> tuple[list[WindowLog], LoadReport]:
    """The logs of ``limits`` from a snapshot of the old format: logs without their windows.

    Matching them by position (what the old format was read with) counts too few whenever a
    period changed across the restart, and nothing in the snapshot tells whether one did. What
    is known is enough to rebuild every window conservatively with :func:`seed_log`: every log
    recorded the same dispatches, each holds all of them since its oldest bucket, and a log's
    bucket width divides every one of its bucket starts, so the greatest common divisor of the
    starts (or :data:`MAX_BUCKET_MS`, whichever is smaller) is never narrower than the real
    width. Every window then counts every saved dispatch it must, possibly late, as long as its
    period is at most the longest saved one; a longer window may count too few (those older
    dispatches were never kept), as with ``PARTIAL``. The price is paid once, on the first start
    after the upgrade: dispatches counted a bit long. A log with a single bucket bounds its width
    by nothing but :data:`MAX_BUCKET_MS` (44 minutes), so pass ``now_ms``: no saved dispatch is
    later than the load, which caps the over-count at the time the restart took.
    """
    sources = [(log, _width_bound(log)) for log in saved]
    if not sources:
        empty = tuple(WindowRestore(limit, Restore.EMPTY) for limit in limits)
        return [WindowLog() for _ in limits], LoadReport(empty, old_format=True)
    logs = [seed_log(sources, limit, now_ms) for limit in limits]
    report = tuple(
        WindowRestore(limit, Restore.OLD_FORMAT, old_logs=len(saved)) for limit in limits
    )
    return logs, LoadReport(report, old_format=True)


def _width_bound(log: WindowLog) -> int:
    """A width at least that of ``log``'s buckets (each start is a multiple of it)."""
    divisor = 0
    for start, _ in log.buckets:
        divisor = math.gcd(divisor, start)
    return min(divisor, MAX_BUCKET_MS) if divisor > 0 else MAX_BUCKET_MS


def seed_log(
    sources: Sequence[tuple[WindowLog, int]], limit: RateLimit, now_ms: int | None = None
) -> WindowLog:
    """A log of ``limit`` that counts at least every dispatch the ``(log, bucket_ms)`` sources
    show, built so that rounding only ever makes it count more.

    Each source log is a bucketed copy of the same dispatches and holds all of them since its
    oldest bucket start ``s0``. Place each bucket's dispatches at the last instant the bucket
    covers, or at ``now_ms`` if that is earlier and still in the bucket (the load comes after
    every saved dispatch): never earlier than they happened. Then for every ``x`` at or after
    ``s0``, the source's count of dispatches at or after ``x`` is at least the true count. The
    seed takes, for every ``x``, the smallest such count among the sources that reach back to
    ``x`` (the finest, most recent logs where they exist, the long coarse ones further back)
    and, before every source's ``s0``, the largest total (the longest window's log holds all
    the others' dispatches). That bound never increases with ``x``, so it is itself the count of
    a set of dispatch times; each goes into the bucket of ``limit`` that contains it, whose end
    is after the time, so the new window counts it at least as long as it really lasts.
    """
    prepared = []
    for log, bucket_ms in sources:
        if log.buckets:
            last = [start + bucket_ms - 1 for start, _ in log.buckets]
            # ``now_ms`` caps the time, never below the bucket's start (a clock stepped back)
            times = (
                last
                if now_ms is None
                else [
                    max(start, min(t, now_ms))
                    for (start, _), t in zip(log.buckets, last, strict=True)
                ]
            )
            at_or_after = [*reversed(list(accumulate(c for _, c in reversed(log.buckets)))), 0]
            prepared.append((log.buckets[0][0], times, at_or_after))
    if not prepared:
        return WindowLog()
    most = max(counts[0] for _, _, counts in prepared)

    def bound(x: int) -> int:
        """Dispatches at or after ``x``, at most."""
        reaching = [counts[bisect_left(times, x)] for s0, times, counts in prepared if s0 <= x]
        return min(reaching) if reaching else most

    candidates = {t for _, times, _ in prepared for t in times}
    candidates |= {s0 - 1 for s0, _, _ in prepared}
    points = [(y, bound(y) - bound(y + 1)) for y in sorted(candidates)]
    return rebucket(((y, n) for y, n in points if n > 0), limit)


def rebucket(points: Iterable[tuple[int, int]], limit: RateLimit) -> WindowLog:
    """A log of ``limit`` with ``count`` dispatches at each ``(time, count)``: each in the
    bucket that contains its time, which the window counts at least as long as the time."""
    counts: dict[int, int] = {}
    for time, count in points:
        start = time - time % limit.bucket_ms
        counts[start] = counts.get(start, 0) + count
    return WindowLog(tuple(sorted(counts.items())))
