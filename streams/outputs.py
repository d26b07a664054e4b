"""The record each effect of the fold becomes: topic, key and encoded value.

Shared by the fold (``streams.agents.fold``) and the benchmark's peer (``bench.peer_quix``), so
both write the same records. A ``Rejected`` effect has no record of its own: it sends the
refused input to the DLQ, which the caller writes with the original bytes and the reason.
"""

from __future__ import annotations

from schemas import encode_completed, encode_event, encode_ready
from schemas.records import encode_signal
from streams.domain import (
    CompletedTask,
    Effect,
    FollowUp,
    ReadyToSchedule,
    Released,
    ResultExpired,
)
from streams.domain.signals import SchedulerSignal, TaskReleased
from streams.topics import TopicNames


def effect_record(
    effect: Effect, topics: TopicNames, event_time_ms: int
) -> tuple[str, bytes, bytes | None]:
    """``(topic, key, value)`` of ``effect``; ``event_time_ms`` dates scheduler signals. A value
    of None is a tombstone (an expired result, removed from the compacted ``task.completed``).

    Raises:
        TypeError: ``effect`` is a ``Rejected`` (see the module doc) or unknown.
    """
    if isinstance(effect, ReadyToSchedule):
        return topics.ready, effect.platform.encode(), encode_ready(effect)
    if isinstance(effect, FollowUp):
        return topics.events, effect.event.task_id.encode("utf-8"), encode_event(effect.event)
    if isinstance(effect, CompletedTask):
        return topics.completed, effect.task_id.encode("utf-8"), encode_completed(effect)
    if isinstance(effect, ResultExpired):
        return topics.completed, effect.task_id.encode("utf-8"), None
    if isinstance(effect, Released):
        released = TaskReleased(effect.task_id, effect.completed, effect.throttled_ms)
        signal = SchedulerSignal(effect.platform, event_time_ms, released)
        return topics.signals, effect.platform.encode(), encode_signal(signal)
    raise TypeError(f"no record for effect {effect!r}")
