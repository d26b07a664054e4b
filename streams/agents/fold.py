"""The fold agent: ``task.events`` → the ``tasks`` table, and the effects of each event.

For each message: decode it, apply the pure fold to the task's state, store the new state, and
write the effects (``task.ready``, ``task.completed``, follow-up events on ``task.events``,
refused input on ``task.events.dlq``), all inside the transaction of the partition the message
came from (see ``streams.transactions``). Nothing here decides anything about a task.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from faust.types import EventT, StreamT

from schemas import encode_completed, encode_event, encode_ready
from schemas.records import Refusal, encode_signal, event_of_record
from streams import transactions
from streams.app import Runtime
from streams.domain import (
    CompletedTask,
    Effect,
    FollowUp,
    ReadyToSchedule,
    Rejected,
    Released,
    apply,
    state_from_json,
    state_to_json,
)
from streams.domain.signals import SchedulerSignal, TaskReleased
from streams.domain.timers import next_deadline

log = logging.getLogger(__name__)

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}".encode()
"""The ``worker`` header of every output: which process wrote it."""


def register(runtime: Runtime) -> None:
    """Add the fold agent to ``runtime.app``."""
    app = runtime.app
    gate = transactions.gate_of(app)

    @app.agent(runtime.events_topic, name="fold", concurrency=1)
    async def fold_events(stream: StreamT[Any]) -> None:
        async for event in stream.events():
            async with gate.lock:
                await _process(runtime, event)
                # acknowledged before the gate opens, so a commit never takes the outputs of an
                # event without its offset
                await stream.ack(event)
            await runtime.processed.advance(event.message.partition, event.message.offset)


async def _process(runtime: Runtime, event: EventT[Any]) -> None:
    outbox = _Outbox(runtime, event)
    message = event.message
    task_event = event_of_record(message.key, message.value or b"")
    if isinstance(task_event, Refusal):
        await outbox.dead_letter(task_event.reason, task_event.detail)
        return
    try:
        stored = runtime.tasks.get(message.key)
        state = state_from_json(stored) if stored is not None else None
        outcome = apply(state, task_event)
        if outcome.state is not None and outcome.state is not state:
            runtime.metrics.observe_fold(state, task_event, outcome.state)
            runtime.tasks[message.key] = state_to_json(outcome.state)
            runtime.deadlines.track(task_event.task_id, next_deadline(outcome.state))
        for effect in outcome.effects:
            await outbox.carry_out(effect)
    except Exception as exc:  # a bug must not stop the stream: park the event, keep going
        log.exception("fold failed on %s[%d]@%d", message.topic, message.partition, message.offset)
        await outbox.dead_letter("processing_error", f"{type(exc).__name__}: {exc}")


class _Outbox:
    """Sends the effects of one source event inside that event's transaction."""

    def __init__(self, runtime: Runtime, event: EventT[Any]) -> None:
        self._app = runtime.app
        self._topics = runtime.settings.topics
        self._metrics = runtime.metrics
        self._event = event
        self._transaction = transactions.transactional_id_for(runtime.app, event)
        self._event_time_ms = int(event.message.timestamp * 1000)
        message = event.message
        # where each output came from: an audit can trace any record back to its event
        self._provenance = [
            ("source.topic", message.topic.encode()),
            ("source.partition", str(message.partition).encode()),
            ("source.offset", str(message.offset).encode()),
            ("worker", WORKER_ID),
        ]

    async def carry_out(self, effect: Effect) -> None:
        if isinstance(effect, ReadyToSchedule):
            await self._send(self._topics.ready, effect.platform.encode(), encode_ready(effect))
        elif isinstance(effect, FollowUp):
            key = effect.event.task_id.encode("utf-8")
            await self._send(self._topics.events, key, encode_event(effect.event))
        elif isinstance(effect, CompletedTask):
            key = effect.task_id.encode("utf-8")
            await self._send(self._topics.completed, key, encode_completed(effect))
        elif isinstance(effect, Released):
            released = TaskReleased(effect.task_id, effect.completed, effect.throttled_ms)
            signal = SchedulerSignal(effect.platform, self._event_time_ms, released)
            await self._send(self._topics.signals, effect.platform.encode(), encode_signal(signal))
        elif isinstance(effect, Rejected):
            await self.dead_letter(str(effect.code), effect.reason)

    async def dead_letter(self, reason: str, detail: str) -> None:
        self._metrics.dlq.labels(reason).inc()
        message = self._event.message
        headers = [("reason", reason.encode()), ("detail", detail.encode())]
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s",
            message.topic,
            message.partition,
            message.offset,
            reason,
            detail,
        )
        await self._send(self._topics.dlq, message.key, message.value or b"", headers)

    async def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        await self._app.producer.send(
            topic,
            key,
            value,
            None,
            None,
            [*(headers or ()), *self._provenance],
            transactional_id=self._transaction,
        )
