"""Records between the fold, the schedulers and the executors (besides the task events).

``SchedulerSignal`` goes to a platform's scheduler on ``scheduler.signals``: a task released
its slot or left the queue, a tick to look again, a pause. ``Dispatch`` is the go-ahead on
``task.dispatch`` that an executor acts on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskReleased:
    """The task no longer holds a slot nor waits in the queue.

    Attributes:
        completed: the attempt succeeded (adaptive throttling counts it).
        throttled_ms: the platform answered "rate limited, retry after" this long.
    """

    task_id: str
    completed: bool = False
    throttled_ms: int = 0


@dataclass(frozen=True)
class Tick:
    """Look again: a rate-limit window may have room, or a pause may have ended."""


@dataclass(frozen=True)
class PlatformPaused:
    """Hold the platform's dispatches until ``until_ms`` (0 resumes)."""

    until_ms: int


SignalPayload = TaskReleased | Tick | PlatformPaused
SIGNAL_TYPES: tuple[type[SignalPayload], ...] = (TaskReleased, Tick, PlatformPaused)


@dataclass(frozen=True)
class SchedulerSignal:
    """A signal for the scheduler of ``platform``."""

    platform: str
    at_ms: int
    payload: SignalPayload


@dataclass(frozen=True)
class Dispatch:
    """Run attempt ``attempt`` of the task within its start slot, and within ``timeout_ms``.

    ``dispatch_id`` is the id of the matching ``TaskDispatched`` event: unique per dispatch
    (an attempt answered "rate limited" is dispatched again under the same number). The
    handler starts in ``[not_before_ms, not_after_ms]`` or not at all (the go-ahead is given
    back): the rate-limit windows count the dispatch at ``not_before_ms`` and are checked
    as if each period were longer by the slot's width (docs/rate-limits.md). A go-ahead of
    the first version has no slot (both 0).
    """

    dispatch_id: str
    task_id: str
    platform: str
    task_type: str
    target: str
    attempt: int
    timeout_ms: int
    dispatched_at_ms: int
    not_before_ms: int = 0
    not_after_ms: int = 0


@dataclass(frozen=True)
class RateChangeRecord:
    """Adaptive throttling changed ``platform``'s rate factor (a record on ``scheduler.events``)."""

    platform: str
    at_ms: int
    old_factor: float
    new_factor: float
    cause: str
