"""The scheduler of one platform: a priority queue released under rate limits and a cap.

Order: priority first (1 is the most urgent), then the time the task became ready, with ageing:
a task of priority ``p`` ready at ``r`` ranks as a priority-1 task ready at
``r + (p - 1) * ageing_ms``. The rank never changes while the task waits, so the queue is a heap
(dispatch costs O(log n) in the number of pending tasks) and a task of priority ``p`` is never
overtaken by more than ``(p - 1) * ageing_ms`` worth of later, more urgent work.

A task is dispatched only when the platform is not paused, its in-flight count is under its cap
(and the caller's overall cap), and every rate-limit window has room (see ``limits``). When the
queue's head must wait, :meth:`PlatformScheduler.hold` says why and until when.

The limits hold at the handler *call*, not at the decision: a dispatch is recorded at its
``not_before`` time and its handler may start only within its :class:`StartSlot`,
``[not_before, not_before + slot_ms]``; a go-ahead that comes later is given back (the task is
released without starting, its dispatch still counted). Every window is counted as if its period
were ``period + slot_ms`` (:meth:`~streams.domain.limits.RateLimit.widened`), so no interval of
the configured period ever holds more than its calls in starts.

This is pure code: time comes in as ``now_ms``; the class mutates only itself.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from streams.domain.limits import (
    LoadReport,
    PlatformLimits,
    RateLimit,
    WindowLog,
    effective_calls,
    next_allowed_ms,
    record_dispatch,
    recovered,
    remaining_calls,
    restore_logs,
    restore_old_format_logs,
    throttled,
)

DEFAULT_AGEING_MS = 60_000


class HoldReason(StrEnum):
    """Why the head of a platform's queue waits."""

    PAUSED = "paused"
    CONCURRENCY = "concurrency"
    OVERALL_CONCURRENCY = "overall_concurrency"
    RATE_LIMIT = "rate_limit"


@dataclass(frozen=True)
class QueuedTask:
    """A ready task waiting for its platform."""

    task_id: str
    task_type: str
    target: str
    priority: int
    attempt: int
    ready_at_ms: int
    timeout_ms: int = 0
    ready_id: str = ""
    """Id of this readiness (unique even when an attempt number repeats)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the inverse is ``QueuedTask(**d)``)."""
        return asdict(self)

    def rank(self, ageing_ms: int) -> int:
        """The task's place in the queue (lower goes first)."""
        return self.ready_at_ms + (self.priority - 1) * ageing_ms


@dataclass(frozen=True)
class Hold:
    """The queue's head cannot go now: ``reason``, explained, and when it may (if known)."""

    reason: HoldReason
    detail: str
    until_ms: int | None = None


@dataclass(frozen=True)
class Deferral:
    """A task was held back the first time: for the log, so audits can answer "why waiting"."""

    task_id: str
    hold: Hold
    ready_id: str = ""


@dataclass(frozen=True)
class RateChanged:
    """Adaptive throttling moved the platform's rate factor."""

    platform: str
    old_factor: float
    new_factor: float
    cause: str


@dataclass(frozen=True)
class StartSlot:
    """When the handler of one dispatch may start: from the time its dispatch was recorded at
    (``not_before_ms``, never earlier: the executor waits until then) to ``not_after_ms``
    (a go-ahead that comes later is given back). Both ends are included."""

    not_before_ms: int
    not_after_ms: int

    def allows(self, start_ms: int) -> bool:
        """Whether a handler may start at ``start_ms``."""
        return self.not_before_ms <= start_ms <= self.not_after_ms

    def start_ms(self, go_ahead_ms: int) -> int | None:
        """When a handler whose go-ahead arrives at ``go_ahead_ms`` starts (it waits for
        ``not_before_ms`` if early), or None if the go-ahead came too late and is given back."""
        start = max(self.not_before_ms, go_ahead_ms)
        return start if self.allows(start) else None


def start_slot(not_before_ms: int, slot_ms: int) -> StartSlot:
    """The start slot of a dispatch recorded at ``not_before_ms`` by a scheduler whose windows
    were widened by ``slot_ms`` (:attr:`PlatformScheduler.slot_ms`)."""
    if slot_ms < 0:
        raise ValueError(f"slot_ms must be >= 0, not {slot_ms}")
    return StartSlot(not_before_ms, not_before_ms + slot_ms)


class StartLead:
    """How far ahead of a decision its dispatch is counted (``not_before = decision + lead``).

    The go-aheads of a decision reach the executor only once the broker acknowledged the
    transaction holding them; a go-ahead that arrives after its start slot is given back. The
    lead is therefore at least ``least_ms`` (the ``start_lead`` setting) and at least one and a
    half times the time this worker's recent commits took (the longest observed, decaying by
    :attr:`DECAY` per observation), at most ``most_ms``. On a replicated cluster, whose commits
    wait for the in-sync replicas, it lengthens by itself; a longer lead only delays the starts,
    it never lets more through a window (the dispatch is counted at its ``not_before``).
    """

    DECAY = 0.9
    MARGIN = 1.5
    SPARE_MS = 10

    def __init__(self, least_ms: int, most_ms: int = 5_000) -> None:
        if least_ms < 0 or most_ms < least_ms:
            raise ValueError(f"need 0 <= least_ms <= most_ms, got {least_ms}, {most_ms}")
        self.least_ms = least_ms
        self.most_ms = most_ms
        self._recent_ms = 0.0

    def observe(self, elapsed_ms: float) -> None:
        """Note that a commit took ``elapsed_ms`` (from its decision to the acknowledgement)."""
        if elapsed_ms == elapsed_ms and elapsed_ms >= 0:  # not NaN, not negative (a clock step)
            self._recent_ms = max(float(elapsed_ms), self._recent_ms * self.DECAY)

    @property
    def ms(self) -> int:
        """The lead to give a decision now."""
        wanted = int(self._recent_ms * self.MARGIN) + self.SPARE_MS if self._recent_ms else 0
        return max(self.least_ms, min(self.most_ms, wanted))


class PlatformScheduler:
    """Queue, in-flight set, window logs, pause and rate factor of one platform.

    ``limits`` is the platform's configuration; ``slot_ms`` how long after its recorded dispatch
    a handler may still start (:class:`StartSlot`). The windows are counted and checked as
    :attr:`windows`, each configured one widened by the slot.
    """

    def __init__(
        self, limits: PlatformLimits, ageing_ms: int = DEFAULT_AGEING_MS, slot_ms: int = 0
    ) -> None:
        if slot_ms < 0:
            raise ValueError(f"slot_ms must be >= 0, not {slot_ms}")
        self.limits = limits
        self.ageing_ms = ageing_ms
        self.slot_ms = slot_ms
        self.windows: tuple[RateLimit, ...] = tuple(w.widened(slot_ms) for w in limits.limits)
        """The configured windows as counted: each period lengthened by ``slot_ms``."""
        self.in_flight: set[str] = set()
        self.dispatched_readiness: dict[str, str] = {}
        """Per task in flight, the ``ready_id`` it was dispatched under (if known)."""
        self.logs: list[WindowLog] = [WindowLog() for _ in self.windows]
        self.paused_until_ms = 0
        self.rate_factor = 1.0
        self.last_answer_throttled = False
        self._queue: list[tuple[int, str]] = []
        self._tasks: dict[str, QueuedTask] = {}
        self._not_yet_deferred: list[str] = []
        self._held_counted: dict[HoldReason, set[str]] = {}
        """Per hold reason, the queued tasks already counted as held for it."""
        self._parked: dict[str, QueuedTask] = {}
        """Next readinesses of tasks still in flight: queued when their slot is released."""

    # -- the queue ------------------------------------------------------------------------

    def enqueue(self, task: QueuedTask) -> bool:
        """Add a ready task; False if it is already queued, or is the readiness in flight.

        A *next* readiness of a task still in flight (its retry, read before the release of
        the attempt before it: ``task.ready`` and the releases come on two topics) is kept
        apart and queued when that release comes, never dispatched beside the attempt still
        holding its slot. Returns True when the task is kept (queued or set apart).
        """
        task_id = task.task_id
        if task_id in self._tasks or task_id in self._parked:
            return False
        if task_id in self.in_flight:
            dispatched = self.dispatched_readiness.get(task_id)
            if not task.ready_id or dispatched is None or task.ready_id == dispatched:
                return False  # the readiness that was dispatched, read again
            self._parked[task_id] = task
            return True
        self._queue_up(task)
        return True

    def restore(self, task: QueuedTask) -> None:
        """Re-add a task that was queued before a restart (already deferred once)."""
        if self.enqueue(task) and task.task_id in self._tasks:
            self._not_yet_deferred.remove(task.task_id)

    def remove(self, task_id: str) -> bool:
        """Drop a queued task (cancelled elsewhere); True if it was queued."""
        self._uncount(task_id)
        return (
            self._tasks.pop(task_id, None) is not None
            or self._parked.pop(task_id, None) is not None
        )

    def newly_held(self, reason: HoldReason) -> int:
        """The queued tasks held for ``reason`` that were not yet counted for it, now counted:
        a platform's "rate-limit hits" count each held task once per reason, however many
        scheduler passes find it held."""
        counted = self._held_counted.setdefault(reason, set())
        new = self._tasks.keys() - counted
        counted.update(new)
        return len(new)

    def _uncount(self, task_id: str) -> None:
        for counted in self._held_counted.values():
            counted.discard(task_id)

    def _queue_up(self, task: QueuedTask) -> None:
        self._tasks[task.task_id] = task
        heapq.heappush(self._queue, (task.rank(self.ageing_ms), task.task_id))
        self._not_yet_deferred.append(task.task_id)

    @property
    def pending(self) -> int:
        """Tasks waiting in the queue."""
        return len(self._tasks)

    def queued(self) -> list[QueuedTask]:
        """The queued tasks in dispatch order, then the next readinesses set apart until their
        task's slot is released (for inspection and storage; O(n log n))."""
        order = sorted(self._tasks.values(), key=lambda t: (t.rank(self.ageing_ms), t.task_id))
        return [*order, *sorted(self._parked.values(), key=lambda t: t.task_id)]

    # -- decisions --------------------------------------------------------------------------

    def run(
        self, now_ms: int, overall_free: int | None = None
    ) -> tuple[list[QueuedTask], list[Deferral]]:
        """Dispatch every task the limits allow now, in order; return them and new deferrals.

        Each dispatch is recorded at ``now_ms``: the ``not_before`` of its :class:`StartSlot`.
        A caller whose go-aheads take up to ``lead`` to reach the executor passes the time of
        the decision plus ``lead``.

        Args:
            overall_free: slots left under the overall cap shared with other platforms
                (None: no overall cap).
        """
        dispatched: list[QueuedTask] = []
        while self._head() is not None:
            free = None if overall_free is None else overall_free - len(dispatched)
            if self.hold(now_ms, free) is not None:
                break
            task = self._pop()
            self._record(task, now_ms)
            dispatched.append(task)
        return dispatched, self._deferrals(now_ms, overall_free, len(dispatched))

    def hold(self, now_ms: int, overall_free: int | None = None) -> Hold | None:
        """Why the next dispatch must wait, or None if it may happen now."""
        if self.paused_until_ms > now_ms:
            return Hold(HoldReason.PAUSED, "platform paused", self.paused_until_ms)
        cap = self.limits.max_concurrent
        if cap is not None and len(self.in_flight) >= cap:
            return Hold(HoldReason.CONCURRENCY, f"{len(self.in_flight)} of {cap} running")
        if overall_free is not None and overall_free <= 0:
            return Hold(HoldReason.OVERALL_CONCURRENCY, "max_concurrent_tasks reached")
        for limit, window, log in zip(self.limits.limits, self.windows, self.logs, strict=True):
            allowed = effective_calls(limit, self.rate_factor)
            until = next_allowed_ms(log, window, allowed, now_ms)
            if until > now_ms:
                detail = f"{allowed} calls per {limit.period_ms / 1000:g} s used"
                return Hold(HoldReason.RATE_LIMIT, detail, until)
        return None

    def wakeup_ms(self, now_ms: int) -> int | None:
        """When a tick should look again: a window frees up or a pause ends (None: no need)."""
        if self._head() is None:
            return None
        hold = self.hold(now_ms)
        return hold.until_ms if hold is not None else now_ms

    def release(
        self, task_id: str, completed: bool, throttled_ms: int, now_ms: int
    ) -> RateChanged | None:
        """A dispatched attempt ended: free its slot; adapt the rate to the platform's answer.

        A "rate limited" answer pauses the platform for ``throttled_ms``; if the previous answer
        was one too, the rate factor is halved. A success raises it by a step. A next
        readiness of the task that came before this release is queued now.
        """
        self.in_flight.discard(task_id)
        self.dispatched_readiness.pop(task_id, None)
        parked = self._parked.pop(task_id, None)
        if parked is not None:
            self._queue_up(parked)
        old, cause = self.rate_factor, ""
        if throttled_ms > 0:
            self.paused_until_ms = max(self.paused_until_ms, now_ms + throttled_ms)
            if self.last_answer_throttled:  # repeated: the platform wants less, not just a pause
                self.rate_factor = throttled(old)
                cause = f"rate limited again, retry after {throttled_ms} ms"
            self.last_answer_throttled = True
        elif completed:
            self.rate_factor = recovered(old)
            self.last_answer_throttled = False
            cause = "success"
        else:  # an answer that is no "rate limited": the next one is not "again"
            self.last_answer_throttled = False
        if self.rate_factor == old:
            return None
        return RateChanged(self.limits.platform, old, self.rate_factor, cause)

    def pause(self, until_ms: int) -> None:
        """Hold every dispatch until ``until_ms`` (0 resumes at once)."""
        self.paused_until_ms = until_ms

    def status(self, now_ms: int) -> dict[str, Any]:
        """The platform's limit status: windows (remaining, reset), pause, in flight, pending.

        Each window shows its configured ``calls`` and ``period_s``; what remains and when the
        next call may go are counted over the period widened by ``start_slot_ms``.
        """
        windows = []
        for limit, window, log in zip(self.limits.limits, self.windows, self.logs, strict=True):
            allowed = effective_calls(limit, self.rate_factor)
            windows.append(
                {
                    "calls": limit.calls,
                    "period_s": limit.period_ms / 1000,
                    "effective_calls": allowed,
                    "remaining": remaining_calls(log, window, allowed, now_ms),
                    "next_call_at_ms": next_allowed_ms(log, window, allowed, now_ms),
                }
            )
        hold = self.hold(now_ms)
        return {
            "platform": self.limits.platform,
            "windows": windows,
            "start_slot_ms": self.slot_ms,
            "max_concurrent": self.limits.max_concurrent,
            "in_flight": len(self.in_flight),
            "pending": self.pending,
            "paused_until_ms": self.paused_until_ms if self.paused_until_ms > now_ms else None,
            "rate_factor": self.rate_factor,
            "held_by": None
            if hold is None
            else {"reason": str(hold.reason), "detail": hold.detail, "until_ms": hold.until_ms},
        }

    # -- persistence --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything but the queue (which is stored task by task), JSON-ready.

        Each window's log is saved with the window as counted (``calls``, ``period_ms``, the
        slot included): a log means nothing without its period (its bucket width and what it may
        have dropped), and the configuration, slot included, may change before it is loaded.
        """
        return {
            "in_flight": sorted(self.in_flight),
            "dispatched_readiness": dict(sorted(self.dispatched_readiness.items())),
            "windows": [
                {
                    "calls": window.calls,
                    "period_ms": window.period_ms,
                    "buckets": [list(b) for b in log.buckets],
                }
                for window, log in zip(self.windows, self.logs, strict=True)
            ],
            "paused_until_ms": self.paused_until_ms,
            "rate_factor": self.rate_factor,
            "last_answer_throttled": self.last_answer_throttled,
        }

    def load(self, snapshot: dict[str, Any], now_ms: int | None = None) -> LoadReport:
        """Restore what :meth:`snapshot` saved; return what became of each window's log.

        Logs are matched to the windows as counted (:attr:`windows`) by period, never by
        position, so a changed configuration never makes a window count too few of the
        dispatches that were saved: see :func:`~streams.domain.limits.restore_logs`. A snapshot
        of the old format (``logs``: a list of logs without their windows) is read with
        :func:`~streams.domain.limits.restore_old_format_logs`. The report is for the caller to
        log (the core logs nothing); ``report.changed`` says whether it is worth a line.

        A changed ``slot_ms`` is a changed period like any other, and the report names the
        widened windows. A longer slot is reported ``PARTIAL``, yet starts still keep every
        window: the dispatches the saved logs no longer hold are older than the saved widened
        period, so their handlers started (or were given back) before any interval the new
        dispatches' starts can share. A shorter slot counts every saved dispatch over the
        shorter widened period, which does not cover a handler of the old slot that starts late
        after the load: shorten the slot only when no go-ahead of the old one is outstanding.

        Args:
            now_ms: the time of the load, if known. No saved dispatch is later, so a log rebuilt
                for a changed window never counts one past it (it matters most for the old
                format, whose bucket widths are unknown).
        """
        self.in_flight = set(snapshot.get("in_flight", ()))
        self.dispatched_readiness = {
            str(task_id): str(ready_id)
            for task_id, ready_id in snapshot.get("dispatched_readiness", {}).items()
            if task_id in self.in_flight
        }
        if "windows" not in snapshot and "logs" in snapshot:
            old = [_window_log(buckets) for buckets in snapshot["logs"]]
            self.logs, report = restore_old_format_logs(old, self.windows, now_ms)
        else:
            saved = [
                (RateLimit(int(w["calls"]), int(w["period_ms"])), _window_log(w["buckets"]))
                for w in snapshot.get("windows", ())
            ]
            self.logs, report = restore_logs(saved, self.windows, now_ms)
        self.paused_until_ms = int(snapshot.get("paused_until_ms", 0))
        self.rate_factor = float(snapshot.get("rate_factor", 1.0))
        self.last_answer_throttled = bool(snapshot.get("last_answer_throttled", False))
        return report

    # -- internals ----------------------------------------------------------------------------

    def _head(self) -> QueuedTask | None:
        while self._queue:
            rank, task_id = self._queue[0]
            task = self._tasks.get(task_id)
            if task is not None and task.rank(self.ageing_ms) == rank:
                return task
            # removed, dispatched, or removed and queued again with another rank: its current
            # entry is elsewhere in the heap, and this stale one must not let it jump the queue
            heapq.heappop(self._queue)
        return None

    def _pop(self) -> QueuedTask:
        _, task_id = heapq.heappop(self._queue)
        self._uncount(task_id)
        return self._tasks.pop(task_id)

    def _record(self, task: QueuedTask, now_ms: int) -> None:
        self.in_flight.add(task.task_id)
        if task.ready_id:
            self.dispatched_readiness[task.task_id] = task.ready_id
        self.logs = [
            record_dispatch(log, window, now_ms)
            for window, log in zip(self.windows, self.logs, strict=True)
        ]

    def _deferrals(self, now_ms: int, overall_free: int | None, used: int) -> list[Deferral]:
        waiting = [tid for tid in self._not_yet_deferred if tid in self._tasks]
        self._not_yet_deferred = []
        if not waiting:
            return []
        free = None if overall_free is None else overall_free - used
        hold = self.hold(now_ms, free) or Hold(HoldReason.CONCURRENCY, "queued behind other tasks")
        return [Deferral(tid, hold, self._tasks[tid].ready_id) for tid in waiting]


def overall_free(cap: int | None, schedulers: Iterable[PlatformScheduler]) -> int | None:
    """Slots left under an overall cap shared by ``schedulers`` (None: no cap)."""
    if cap is None:
        return None
    return cap - sum(len(scheduler.in_flight) for scheduler in schedulers)


def runs_here(task_type: str, handled_types: Collection[str]) -> bool:
    """Whether a ready task is scheduled by this worker: only types it has a handler for are.

    Others stay ``ready`` for a caller to drive (``start_task``, ``complete_task``); a worker
    that dispatched them would wait for an outcome nobody writes.
    """
    return task_type in handled_types


def _window_log(buckets: Any) -> WindowLog:
    """A saved log's ``[start, count]`` pairs, sorted by start and merged (a log is read oldest
    first; an old one may be out of order if the clock stepped back between two dispatches)."""
    counts: dict[int, int] = {}
    for start, count in buckets:
        counts[int(start)] = counts.get(int(start), 0) + int(count)
    return WindowLog(tuple(sorted(counts.items())))
