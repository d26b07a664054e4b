"""Prometheus metrics of a worker, served at ``/metrics``.

Names follow Prometheus conventions: the ``orchestrator_`` prefix, ``_total`` counters, ``_seconds``
histograms, labels ``platform`` and ``task_type`` where they help and never a task id. Counters
count what *this* worker folded or scheduled: sum them over workers (they restart from zero with
the process, which Prometheus' ``rate()`` handles). The registry also holds prometheus_client's
process and platform collectors: ``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
``process_open_fds``, ``process_max_fds``, ``process_start_time_seconds`` (Linux) and
``python_info``.
"""

from __future__ import annotations

import collections
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from streams.domain import Event, Status, TaskState
from streams.domain.scheduling import PlatformScheduler

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_TERMINAL_COUNTERS = {
    Status.COMPLETED: "completed",
    Status.FAILED: "failed",
    Status.CANCELLED: "cancelled",
}


class Metrics:
    """The worker's metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._counts: collections.Counter[tuple[str, tuple[str, str]]] = collections.Counter()
        """Task counts not yet added to ``tasks`` (see :meth:`flush_fold`)."""
        r = self.registry
        # CPU, memory, open file descriptors of this worker's process (read from /proc at each
        # scrape; nothing on systems without it) and the Python version, as python_info
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        labels = ["platform", "task_type"]
        self.tasks = {
            name: Counter(f"orchestrator_tasks_{name}_total", f"Tasks {name}.", labels, registry=r)
            for name in (
                "created",
                "started",
                "completed",
                "failed",
                "cancelled",
                "retried",
                "timed_out",
            )
        }
        self.progress = Histogram(
            "orchestrator_task_progress_ratio",
            "Progress values reported by running tasks.",
            ["platform"],
            buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
            registry=r,
        )
        self.duration = Histogram(
            "orchestrator_task_duration_seconds",
            "From the first start of a task to its completion.",
            labels,
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "orchestrator_task_queue_wait_seconds",
            "From ready to dispatched or started.",
            ["platform"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.dlq = Counter(
            "orchestrator_dlq_records_total", "Records sent to the DLQ.", ["reason"], registry=r
        )
        self.remaining = Gauge(
            "orchestrator_rate_limit_remaining_calls",
            "Calls a rate-limit window still allows now.",
            ["platform", "window"],
            registry=r,
        )
        self.reset = Gauge(
            "orchestrator_rate_limit_reset_timestamp_seconds",
            "When the window next allows a call.",
            ["platform", "window"],
            registry=r,
        )
        self.hits = Counter(
            "orchestrator_rate_limit_hits_total",
            "Queued tasks a scheduler held back, each counted once per reason while queued.",
            ["platform", "reason"],
            registry=r,
        )
        self.slots_missed = Counter(
            "orchestrator_start_slots_missed_total",
            "Go-aheads given back because they reached the handler past their start slot.",
            ["platform"],
            registry=r,
        )
        self.in_flight = Gauge(
            "orchestrator_tasks_in_flight",
            "Dispatched tasks not yet ended.",
            ["platform"],
            registry=r,
        )
        self.pending = Gauge(
            "orchestrator_pending_tasks",
            "Ready tasks queued by the scheduler.",
            ["platform"],
            registry=r,
        )
        self.paused = Gauge(
            "orchestrator_platform_paused",
            '1 while a pause holds the platform\'s dispatches (a "rate limited" answer, or '
            "orchestrator pause), else 0.",
            ["platform"],
            registry=r,
        )
        self.rate_factor = Gauge(
            "orchestrator_rate_factor",
            "Share of its limits a platform gets (adaptive throttling).",
            ["platform"],
            registry=r,
        )
        self.lag = Gauge(
            "orchestrator_fold_consumer_lag",
            "Records of task.events not yet folded.",
            ["partition"],
            registry=r,
        )
        self.fold_commits = Counter(
            "orchestrator_fold_transactions_total",
            "Transactions the fold ended: committed, or failed (their records are folded again).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("committed", "failed"):  # present from the start: increase() sees the 1st
            self.fold_commits.labels(outcome)
        self.fold_reopens = Counter(
            "orchestrator_fold_reopens_total",
            "Times the fold reopened its partitions after a failure.",
            registry=r,
        )
        self.healthy = Gauge(
            "orchestrator_healthy",
            "1 while GET /health answers 200; 0 while a store refuses writes or the fold or the "
            "scheduler makes no progress on a partition with records waiting.",
            registry=r,
        )
        self.healthy.set(1)

    def observe_fold(self, before: TaskState | None, event: Event, after: TaskState | None) -> None:
        """Count what an accepted event did to a task (a periodic definition is no task: its
        occurrences are counted as the tasks they create).

        Counts are kept aside and added to the counters by :meth:`flush_fold`, once per fetched
        batch: a counter's ``inc`` takes a lock, and most events of a batch count the same few
        things. Histograms observe each value at once (every value lands in its own bucket).
        """
        if after is None or after is before or after.periodic is not None:
            return
        labels = (after.platform, after.task_type)
        old = before.status if before is not None else None
        new = after.status
        kind = event.kind
        counts = self._counts
        if kind == "TaskCreated":
            counts[("created", labels)] += 1
        elif kind == "TaskProgress":
            self._child(self.progress, (after.platform,)).observe(after.progress)
        if kind == "TaskTimedOut":
            counts[("timed_out", labels)] += 1
        if new is old:
            return
        if new is Status.RUNNING:
            counts[("started", labels)] += 1
        if new in (Status.DISPATCHED, Status.RUNNING) and old is Status.READY:
            self._child(self.queue_wait, (after.platform,)).observe(
                _seconds_in(before, Status.READY, event)
            )
        if new is Status.RETRYING:
            counts[("retried", labels)] += 1
        if new in _TERMINAL_COUNTERS:
            counts[(_TERMINAL_COUNTERS[new], labels)] += 1
        if new is Status.COMPLETED:
            first_start = next((t.at_ms for t in after.history if t.status is Status.RUNNING), None)
            if first_start is not None:
                self._child(self.duration, labels).observe(
                    max(0, event.occurred_at_ms - first_start) / 1000
                )

    def flush_fold(self) -> None:
        """Add the counts :meth:`observe_fold` kept aside to the task counters."""
        counts, self._counts = self._counts, collections.Counter()
        for (name, labels), count in counts.items():
            self._child(self.tasks[name], labels).inc(count)

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        """``metric.labels(*labels)``, looked up once: the fold counts every event, and
        prometheus_client validates the labels and takes a lock on each lookup."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_scheduler(
        self, scheduler: PlatformScheduler, now_ms: int, held: tuple[str, int] | None
    ) -> None:
        """Record a platform's limit status after a scheduler pass, and the tasks it found held
        for a reason for the first time (``held``: the reason and how many)."""
        platform = scheduler.limits.platform
        status = scheduler.status(now_ms)
        for window in status["windows"]:
            name = f"{window['calls']}/{window['period_s']:g}s"
            self.remaining.labels(platform, name).set(window["remaining"])
            self.reset.labels(platform, name).set(window["next_call_at_ms"] / 1000)
        self.in_flight.labels(platform).set(status["in_flight"])
        self.pending.labels(platform).set(status["pending"])
        self.rate_factor.labels(platform).set(status["rate_factor"])
        self.paused.labels(platform).set(0 if status["paused_until_ms"] is None else 1)
        if held is not None and held[1] > 0:
            self.hits.labels(platform, held[0]).inc(held[1])

    def totals(self, counter: Counter, label: str | None = None) -> dict[str, float]:
        """A counter's values now, by the value of ``label`` (without one: under ``""``)."""
        totals: dict[str, float] = {}
        for metric in counter.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    name = sample.labels.get(label, "") if label else ""
                    totals[name] = totals.get(name, 0.0) + sample.value
        return totals

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)


def _seconds_in(state: TaskState | None, status: Status, event: Event) -> float:
    if state is None:
        return 0.0
    entered = next(
        (t.at_ms for t in reversed(state.history) if t.status is status), event.occurred_at_ms
    )
    return max(0, event.occurred_at_ms - entered) / 1000
