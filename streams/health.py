"""Whether a worker does its work: ``GET /health`` and the ``orchestrator_healthy`` gauge.

A worker is unhealthy while

- a store refuses writes: the ``tasks`` table (the fold then stops its partitions) or the
  scheduler's tables (the scheduler stops between two records), until a write succeeds again;
- the fold or the scheduler makes no progress on a partition that has records waiting, for
  ``health_stall_s`` seconds; or the fold has not opened a partition assigned to it for that
  long (a restore, or reopening after failures, that does not end).

:class:`Health` is the judgement, pure: it is given samples (where each component stands on
each partition, and what failed) with the time they were taken. :class:`HealthCheck` takes
the samples from a running worker, every few seconds and at each ``GET /health``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from streams.agents.fold import FoldService
from streams.agents.scheduler import SchedulerService
from streams.app import Runtime

log = logging.getLogger(__name__)

FOLD = "fold"
SCHEDULER = "scheduler"


@dataclass(frozen=True)
class Lane:
    """Where one component stands on one partition, at one sample."""

    component: str
    """``fold`` or ``scheduler``."""
    partition: str
    """The partition, as reasons name it (``3``, ``task.ready[3]``)."""
    position: int | None
    """The offset of the last record it finished (-1: none yet); None: not open."""
    lag: int | None
    """Records waiting for it (0: caught up); None: not known."""


@dataclass
class _Watch:
    position: int | None
    since: float
    """When the lane was last seen progressing, or with nothing to do."""


class Health:
    """The reasons a worker is unhealthy, from samples taken over time.

    A lane (a component on a partition) is stalled when its position has not changed for
    ``stall_s`` seconds while records wait for it, or when it has not been open for that long.
    A lane seen caught up (lag 0) counts as progressing, so an idle partition never stalls.
    """

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.reasons: list[str] = []
        self._watches: dict[tuple[str, str], _Watch] = {}

    @property
    def healthy(self) -> bool:
        """True when the last observation found no reason."""
        return not self.reasons

    def observe(self, now: float, lanes: Iterable[Lane], failures: Iterable[str]) -> list[str]:
        """Take a sample taken at ``now`` (seconds, monotonic); return the reasons it gives.

        ``failures`` are reasons as they are (a store refusing writes); lanes no longer in a
        sample (a partition revoked) are forgotten.
        """
        reasons = list(failures)
        seen = set()
        for lane in lanes:
            key = (lane.component, lane.partition)
            seen.add(key)
            watch = self._watches.get(key)
            idle = lane.position is not None and lane.lag is not None and lane.lag <= 0
            if watch is None or watch.position != lane.position or idle:
                watch = self._watches[key] = _Watch(lane.position, now)
            stalled_s = now - watch.since
            if stalled_s < self.stall_s:
                continue
            if lane.position is None:
                reasons.append(
                    f"{lane.component} has not opened partition {lane.partition} "
                    f"for {stalled_s:.0f} s"
                )
            elif lane.lag:
                reasons.append(
                    f"{lane.component} made no progress on partition {lane.partition} "
                    f"for {stalled_s:.0f} s while it lags {lane.lag} records"
                )
        for key in set(self._watches) - seen:
            del self._watches[key]
        self.reasons = reasons
        return reasons


def sample_interval(stall_s: float) -> float:
    """How often a worker samples: often enough to see a stall soon after ``stall_s``."""
    return min(5.0, max(0.2, stall_s / 4))


class HealthCheck:
    """Samples a running worker's fold, scheduler and stores into a :class:`Health`."""

    def __init__(self, runtime: Runtime, fold: FoldService, scheduler: SchedulerService) -> None:
        self.runtime = runtime
        self.fold = fold
        self.scheduler = scheduler
        self.health = Health(runtime.settings.health_stall_s)
        self.lanes: list[Lane] = []
        """The lanes of the last sample (``GET /health`` shows them)."""
        self._was_healthy = True

    async def refresh(self) -> list[str]:
        """Sample now; update the gauge; log when the verdict changes. Returns the reasons."""
        lanes = [*await self._fold_lanes(), *await self._scheduler_lanes()]
        failures = []
        if self.runtime.tasks.failure is not None:
            failures.append(f"store write failed (tasks table): {self.runtime.tasks.failure}")
        scheduler_failure = self.scheduler.failure
        if scheduler_failure is not None:
            failures.append(f"store write failed (scheduler store): {scheduler_failure}")
        self.lanes = lanes
        reasons = self.health.observe(time.monotonic(), lanes, failures)
        self.runtime.metrics.healthy.set(0 if reasons else 1)
        if reasons and self._was_healthy:
            log.warning("health: the worker is unhealthy: %s", "; ".join(reasons))
        elif not reasons and not self._was_healthy:
            log.info("health: the worker is healthy again")
        self._was_healthy = not reasons
        return reasons

    async def _fold_lanes(self) -> list[Lane]:
        fold = self.fold
        positions = fold.positions()
        lags = await fold.lags()
        assigned = set(positions)
        events = self.runtime.settings.topics.events
        assigned |= {tp.partition for tp in _assignment(self.runtime) if tp.topic == events}
        return [
            Lane(FOLD, str(p), positions.get(p), lags.get(p) if p in positions else None)
            for p in sorted(assigned)
        ]

    async def _scheduler_lanes(self) -> list[Lane]:
        lags = await self.scheduler.lags()
        topics = self.runtime.settings.topics
        lanes = [Lane(SCHEDULER, name, done, waiting) for name, (done, waiting) in lags.items()]
        # assigned here but not open (yet): no position, records waiting unknown
        for tp in sorted(_assignment(self.runtime)):
            name = f"{tp.topic}[{tp.partition}]"
            if tp.topic in (topics.ready, topics.signals) and name not in lags:
                lanes.append(Lane(SCHEDULER, name, None, None))
        return lanes


def _assignment(runtime: Runtime) -> set[Any]:
    """The partitions faust's consumer group gives this worker now (empty if not known)."""
    try:
        assigned: set[Any] = set(runtime.app.consumer.assignment())
    except Exception:  # not started yet
        return set()
    return assigned


def register(runtime: Runtime, fold: FoldService, scheduler: SchedulerService) -> HealthCheck:
    """Sample the worker's health every few seconds (the gauge stays current)."""
    check = HealthCheck(runtime, fold, scheduler)
    interval = sample_interval(runtime.settings.health_stall_s)

    @runtime.app.timer(interval=interval, name="health")  # type: ignore[untyped-decorator]
    async def sample() -> None:
        await check.refresh()

    return check
