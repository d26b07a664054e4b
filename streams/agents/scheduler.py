"""The scheduler agent: one ``PlatformScheduler`` per platform, fed by ``task.ready`` and signals.

``task.ready`` and ``scheduler.signals`` are both keyed by platform, so each platform has a
single writer: the worker owning that partition. For each record the agent updates the
platform's scheduler (pure code, ``streams.domain.scheduling``), then dispatches what the limits
allow now: a ``TaskDispatched`` event on ``task.events`` and a go-ahead on ``task.dispatch``,
both in the transaction of the record's partition. Tasks held back get one ``TaskDeferred``
event saying why. The queue (task by task) and each platform's window logs, in-flight set,
pause and rate factor live in two changelog-backed tables, so a restart resumes where it was.

Time passing (a window gaining room, a pause ending) needs a record too: the agent notes when
each platform should look again, and a timer writes a ``Tick`` signal then.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from faust.types import EventT, StreamT

from schemas.records import (
    decode_ready,
    decode_signal,
    encode_dispatch,
    encode_event,
    encode_rate_change,
    encode_signal,
)
from streams import handlers, transactions
from streams.app import Runtime
from streams.domain import Event, ReadyToSchedule, Source, derived_event_id
from streams.domain.events import TaskDeferred, TaskDispatched
from streams.domain.scheduling import HoldReason, PlatformScheduler, QueuedTask
from streams.domain.signals import (
    Dispatch,
    PlatformPaused,
    RateChangeRecord,
    SchedulerSignal,
    TaskReleased,
    Tick,
)
from streams.errors import SchemaError

log = logging.getLogger(__name__)

_SEP = "\x1f"
RETICK_MS = 1_000
"""After a tick is written, look again this long later anyway, in case the tick was lost."""


class SchedulerService:
    """The in-memory schedulers of the platforms this worker owns, and their wake-up times."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        app = runtime.app
        self.platforms = transactions.TrackedTable(
            app,
            name="scheduler_platforms",
            partitions=runtime.settings.partitions,
            beacon=app.tables.beacon,
        )
        self.queue = transactions.TrackedTable(
            app,
            name="scheduler_queue",
            partitions=runtime.settings.partitions,
            beacon=app.tables.beacon,
        )
        for table in (self.platforms, self.queue):
            table.key_serializer = table.value_serializer = "raw"
            table.source_topic = runtime.settings.topics.ready
            app.tables.add(table)
        self.schedulers: dict[str, PlatformScheduler] = {}
        self.wakeups: dict[str, int] = {}

    def scheduler_for(self, platform: str) -> PlatformScheduler:
        """The platform's scheduler, loaded from the tables the first time."""
        scheduler = self.schedulers.get(platform)
        if scheduler is None:
            settings = self.runtime.settings
            scheduler = PlatformScheduler(
                settings.platform_limits(platform), int(settings.ageing * 1000)
            )
            stored = self.platforms.get(platform.encode("utf-8"))
            if stored is not None:
                scheduler.load(json.loads(stored))
            prefix = f"{platform}{_SEP}".encode()
            for key, value in self.queue.items():
                if key.startswith(prefix):
                    scheduler.restore(QueuedTask(**json.loads(value)))
            self.schedulers[platform] = scheduler
        return scheduler

    def overall_free(self) -> int | None:
        """Slots left under ``max_concurrent_tasks`` among this worker's platforms."""
        cap = self.runtime.settings.max_concurrent_tasks
        if cap is None:
            return None
        return cap - sum(len(s.in_flight) for s in self.schedulers.values())

    def forget(self) -> None:
        """Drop the in-memory state (after a rebalance it is reloaded from the tables)."""
        self.schedulers.clear()
        self.wakeups.clear()

    async def send_due_ticks(self) -> None:
        """Write a ``Tick`` for every platform whose wake-up time has come."""
        now_ms = _now_ms()
        due = [platform for platform, at in self.wakeups.items() if at <= now_ms]
        if not due:
            return
        for platform in due:
            signal = SchedulerSignal(platform, now_ms, Tick())
            topic = self.runtime.settings.topics.signals
            await self.runtime.producer.send(topic, platform.encode(), encode_signal(signal))
            self.wakeups[platform] = now_ms + RETICK_MS


def register(runtime: Runtime) -> SchedulerService:
    """Add the scheduler agent and its tick timer to ``runtime.app``."""
    app = runtime.app
    service = SchedulerService(runtime)
    gate = transactions.gate_of(app)
    source = app.topic(
        runtime.settings.topics.ready,
        runtime.settings.topics.signals,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=runtime.settings.partitions,
    )

    @app.agent(source, name="scheduler", concurrency=1)
    async def schedule(stream: StreamT[Any]) -> None:
        async for event in stream.events():
            async with gate.lock:
                await _process(service, event)
                await stream.ack(event)  # with its outputs, in the same transaction

    @app.timer(interval=0.02, name="scheduler-ticks")  # type: ignore[untyped-decorator]
    async def ticks() -> None:
        if not app.rebalancing:
            await service.send_due_ticks()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        service.forget()

    return service


async def _process(service: SchedulerService, event: EventT[Any]) -> None:
    message = event.message
    outbox = _Outbox(service.runtime, event)
    try:
        if message.topic == service.runtime.settings.topics.ready:
            ready = decode_ready(message.value or b"")
            platform = ready.platform
            _enqueue(service, ready)
        else:
            signal = decode_signal(message.value or b"")
            platform = signal.platform
            await _on_signal(service, outbox, signal)
    except SchemaError as exc:
        log.warning(
            "scheduler skipped an undecodable record %s[%d]@%d: %s",
            message.topic,
            message.partition,
            message.offset,
            exc,
        )
        return
    await _run(service, outbox, platform)


def _enqueue(service: SchedulerService, ready: ReadyToSchedule) -> None:
    if handlers.handler_for(ready.task_type) is None:
        return  # no executor for this type here: the caller drives it (start_task, ...)
    task = QueuedTask(
        ready.task_id,
        ready.task_type,
        ready.target,
        ready.priority,
        ready.attempt,
        ready.ready_at_ms,
        ready.timeout_ms,
        ready.ready_id,
    )
    if service.scheduler_for(ready.platform).enqueue(task):
        service.queue[_queue_key(ready.platform, ready.task_id)] = json.dumps(
            task.as_dict()
        ).encode()


async def _on_signal(service: SchedulerService, outbox: _Outbox, signal: SchedulerSignal) -> None:
    scheduler = service.scheduler_for(signal.platform)
    payload = signal.payload
    if isinstance(payload, TaskReleased):
        if scheduler.remove(payload.task_id):
            service.queue.pop(_queue_key(signal.platform, payload.task_id), None)
        change = scheduler.release(
            payload.task_id, payload.completed, payload.throttled_ms, _now_ms()
        )
        if change is not None:
            record = RateChangeRecord(
                change.platform, _now_ms(), change.old_factor, change.new_factor, change.cause
            )
            log.info(
                "platform %s rate factor %.2f -> %.2f (%s)",
                change.platform,
                change.old_factor,
                change.new_factor,
                change.cause,
            )
            await outbox.send(
                service.runtime.settings.topics.scheduler_events,
                signal.platform,
                encode_rate_change(record),
            )
    elif isinstance(payload, PlatformPaused):
        scheduler.pause(payload.until_ms)


async def _run(service: SchedulerService, outbox: _Outbox, platform: str) -> None:
    scheduler = service.scheduler_for(platform)
    now_ms = _now_ms()
    dispatched, deferrals = scheduler.run(now_ms, service.overall_free())
    for task in dispatched:
        service.queue.pop(_queue_key(platform, task.task_id), None)
        dispatch_id = derived_event_id(task.ready_id or task.task_id, task.attempt, "dispatched")
        event = Event(
            dispatch_id,
            task.task_id,
            now_ms,
            Source.SCHEDULER,
            TaskDispatched(),
        )
        await outbox.send(service.runtime.settings.topics.events, task.task_id, encode_event(event))
        go = Dispatch(
            dispatch_id,
            task.task_id,
            platform,
            task.task_type,
            task.target,
            task.attempt,
            task.timeout_ms,
            now_ms,
        )
        await outbox.send(
            service.runtime.settings.topics.dispatch, task.task_id, encode_dispatch(go)
        )
    for deferral in deferrals:
        held = deferral.hold
        payload = TaskDeferred(str(held.reason), held.detail, held.until_ms or 0)
        event = Event(
            derived_event_id(deferral.ready_id or deferral.task_id, "deferred"),
            deferral.task_id,
            now_ms,
            Source.SCHEDULER,
            payload,
        )
        await outbox.send(
            service.runtime.settings.topics.events, deferral.task_id, encode_event(event)
        )
    service.platforms[platform.encode("utf-8")] = json.dumps(scheduler.snapshot()).encode()
    _plan_wakeups(service, platform, scheduler, now_ms)


def _plan_wakeups(
    service: SchedulerService, platform: str, scheduler: PlatformScheduler, now_ms: int
) -> None:
    """Note when the platform must look again, and wake platforms an overall slot now lets go."""
    hold = scheduler.hold(now_ms, service.overall_free())
    reason = str(hold.reason) if hold is not None and scheduler.pending else None
    service.runtime.metrics.observe_scheduler(scheduler, now_ms, reason)
    wakeup = scheduler.wakeup_ms(now_ms)
    if hold is not None and hold.reason is HoldReason.CONCURRENCY and hold.until_ms is None:
        wakeup = None  # a released slot will bring a signal
    if wakeup is None:
        service.wakeups.pop(platform, None)
    else:
        service.wakeups[platform] = wakeup
    if service.overall_free() is not None:
        for other, other_scheduler in service.schedulers.items():
            free = service.overall_free()
            if (
                other != platform
                and other_scheduler.pending
                and other_scheduler.hold(now_ms, free) is None
            ):
                service.wakeups[other] = now_ms


class _Outbox:
    """Sends records inside the transaction of the partition the current record came from."""

    def __init__(self, runtime: Runtime, event: EventT[Any]) -> None:
        self._app = runtime.app
        self._transaction = transactions.transactional_id_for(runtime.app, event)

    async def send(self, topic: str, key: str, value: bytes) -> None:
        await self._app.producer.send(
            topic, key.encode("utf-8"), value, None, None, None, transactional_id=self._transaction
        )


def _queue_key(platform: str, task_id: str) -> bytes:
    return f"{platform}{_SEP}{task_id}".encode()


def _now_ms() -> int:
    return int(time.time() * 1000)
