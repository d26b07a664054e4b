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

A disk that refuses writes (full: ENOSPC) does not stop a record half-way: the tables' store
(:class:`SchedulerStore`) keeps a refused write in memory, so the record is processed whole
(its changelog records are in its transaction as always); the agent then stops between two
records, logs why once, and resumes when the reopened databases take the kept writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

from faust.stores import rocksdb as faust_rocksdb
from faust.streams import current_event
from faust.types import TP, EventT, StoreT, StreamT
from rocksdict import WriteBatch

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
from streams.task_store import raise_if_disk_full_injected

log = logging.getLogger(__name__)

_SEP = "\x1f"
RETICK_MS = 1_000
"""After a tick is written, look again this long later anyway, in case the tick was lost."""
STORE_RETRY_S = 1.0
"""While the tables' databases refuse writes, try them again this often."""


class SchedulerStore(faust_rocksdb.Store):
    """faust's RocksDB store, for the scheduler's tables, that a failing disk does not break.

    Once a write fails (a full disk), RocksDB refuses every later write, and a read-only
    database stays so until it is reopened. faust's store would raise into the agent half-way
    through a record (some of its outputs sent, its table writes half done) and faust would
    restart the agent on the next record, again and again, with the failed record never
    finished. Here a refused write is kept in memory (:attr:`refused`, which reads see); the
    table had already sent its changelog record, so the record completes normally and Kafka
    holds everything. :meth:`retry` reopens the databases and writes what was kept.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused: dict[int, dict[bytes, bytes | None]] = {}
        """Per partition, the writes RocksDB refused, latest value per key (None: deleted)."""
        self.failure: str | None = None
        """Why the first refused write failed, until :meth:`retry` has written them all."""

    def _write(self, partition: int, writes: list[tuple[bytes, bytes | None]]) -> None:
        """Write to ``partition``'s database in one batch (a None value deletes its key)."""
        refused = self.refused.get(partition)
        if refused is None:
            try:
                raise_if_disk_full_injected()
                self._db_for_partition(partition).write(_batch(writes))
                return
            except Exception as exc:  # rocksdict raises a bare Exception("IO error: ...")
                self.failure = self.failure or f"{type(exc).__name__}: {exc}"
                refused = self.refused[partition] = {}
        refused.update(writes)  # after the refused ones: retry writes them all in one batch

    def retry(self) -> bool:
        """Reopen the databases that refused writes and write what they refused; True if done."""
        if not self.refused:
            return True
        if not _takes_writes(self.path):
            return False  # reopening on a full disk fails, and the old handles at least read
        for partition in sorted(self.refused):
            stale = self._dbs.pop(partition, None)
            if stale is not None:
                # a database in error takes a second to close (on the event loop) unless its
                # background work is cancelled first; closing fails like the writes did, and
                # the handle is let go anyway (what it held is in its log file, or kept here)
                with contextlib.suppress(Exception):
                    stale.cancel_all_background(False)
                with contextlib.suppress(Exception):
                    stale.close()
            try:
                raise_if_disk_full_injected()
                self._db_for_partition(partition).write(_batch(self.refused[partition].items()))
            except Exception as exc:
                self.failure = f"{type(exc).__name__}: {exc}"
                return False
            del self.refused[partition]
        self.failure = None
        return True

    def _set(self, key: bytes, value: bytes | None) -> None:
        event = current_event()
        assert event is not None  # the agent writes the tables, each write within a record
        partition = event.message.partition
        self._key_index[key] = partition
        self._write(partition, [(key, value)])

    def _del(self, key: bytes) -> None:
        if key in self._key_index:
            partitions: Iterable[int] = [self._key_index[key]]
        else:
            partitions = {*self._dbs, *self.refused}
        for partition in partitions:
            self._write(partition, [(key, None)])

    def _get(self, key: bytes) -> bytes | None:
        for refused in self.refused.values():
            if key in refused:
                return refused[key]
        value: bytes | None = super()._get(key)
        return value

    def _contains(self, key: bytes) -> bool:
        for refused in self.refused.values():
            if key in refused:
                return refused[key] is not None
        found: bool = super()._contains(key)
        return found

    def _iteritems(self) -> Iterator[tuple[bytes, bytes]]:
        kept = {
            key: value
            for refused in self.refused.values()
            for key, value in refused.items()
            if key != self.offset_key
        }
        for key, value in super()._iteritems():
            if key not in kept:
                yield key, value
        for key, maybe in kept.items():
            if maybe is not None:
                yield key, maybe

    def _iterkeys(self) -> Iterator[bytes]:
        for key, _ in self._iteritems():
            yield key

    def _itervalues(self) -> Iterator[bytes]:
        for _, value in self._iteritems():
            yield value

    def _size(self) -> int:
        return sum(1 for _ in self._iteritems())

    def persisted_offset(self, tp: TP) -> int | None:
        refused = self.refused.get(tp.partition, {})
        if self.offset_key in refused:
            stored = refused[self.offset_key]
            return int(stored) if stored is not None else None
        offset: int | None = super().persisted_offset(tp)
        return offset

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self._write(tp.partition, [(self.offset_key, str(offset).encode())])

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT[Any]],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        writes: dict[int, list[tuple[bytes, bytes | None]]] = {}
        offsets: dict[TP, int] = {}
        for event in batch:
            message = event.message
            if message.key is not None:
                writes.setdefault(message.partition, []).append((message.key, message.value))
            offsets[message.tp] = max(message.offset, offsets.get(message.tp, -1))
        for partition, partition_writes in writes.items():
            self._write(partition, partition_writes)
        for tp, offset in offsets.items():
            self.set_persisted_offset(tp, offset)

    def revoke_partitions(self, table: Any, tps: Any) -> None:
        super().revoke_partitions(table, tps)
        for tp in tps:
            if tp.topic in table.changelog_topic.topics:
                # the next owner (this worker too) restores them from the changelog, which
                # has every write kept here (a table sends it before writing the store)
                self.refused.pop(tp.partition, None)
        if not self.refused:
            self.failure = None


def _batch(writes: Iterable[tuple[bytes, bytes | None]]) -> WriteBatch:
    batch = WriteBatch(raw_mode=True)
    for key, value in writes:
        if value is None:
            batch.delete(key)
        else:
            batch.put(key, value)
    return batch


def _takes_writes(directory: Any) -> bool:
    """Whether a file can be written (and synced) in ``directory`` now."""
    try:
        raise_if_disk_full_injected()
        with tempfile.TemporaryFile(dir=directory) as probe:
            probe.write(bytes(1 << 16))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError:
        return False
    return True


class _Table(transactions.TrackedTable):
    """A scheduler table, stored in a :class:`SchedulerStore`."""

    def _new_store_by_url(self, url: Any) -> StoreT[Any, Any]:
        return SchedulerStore(
            url,
            self.app,
            self,
            table_name=self.name,
            key_type=self.key_type,
            key_serializer=self.key_serializer,
            value_serializer=self.value_serializer,
            value_type=self.value_type,
            loop=self.loop,
            options=self.options,
        )


class SchedulerService:
    """The in-memory schedulers of the platforms this worker owns, and their wake-up times."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        app = runtime.app
        self.platforms = _Table(
            app,
            name="scheduler_platforms",
            partitions=runtime.settings.partitions,
            beacon=app.tables.beacon,
        )
        self.queue = _Table(
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
        self.taken: dict[TP, int] = {}
        """Per partition of the agent's topics, the offset of the record it took last."""
        self.done: dict[TP, int] = {}
        """Per partition of the agent's topics, the offset of the record it finished last."""
        self.resumed = asyncio.Event()
        """Clear while the agent waits for the tables' store to take writes again."""
        self.resumed.set()
        self._outage = False

    @property
    def failure(self) -> str | None:
        """Why the tables' databases refuse writes (None: they take them)."""
        return next((s.failure for s in self._stores() if s.failure is not None), None)

    def _stores(self) -> list[SchedulerStore]:
        return [cast(SchedulerStore, table.data) for table in (self.platforms, self.queue)]

    def retry_stores(self) -> bool:
        """Reopen the databases that refused writes and write what they kept; True if done.

        The start and the end of an outage are logged once each.
        """
        failure = self.failure
        if failure is not None and not self._outage:
            self._outage = True
            log.error(
                "scheduler: its tables' store refused a write (%s); scheduling stops, and "
                "resumes by itself once the store takes writes again",
                failure,
            )
            return False  # tried a second later
        if failure is not None and not all([store.retry() for store in self._stores()]):
            return False
        if self._outage:
            self._outage = False
            log.warning("scheduler: the store takes writes again; scheduling resumes")
        return True

    async def wait_for_stores(self) -> None:
        """Stop between two records until the tables' databases take writes again.

        The record that met the failure is finished and acknowledged (its writes kept in
        memory, and in its transaction's changelog records); nothing more is taken meanwhile.
        """
        if self.retry_stores():
            return
        self.resumed.clear()
        try:
            while True:
                await asyncio.sleep(STORE_RETRY_S)
                if self.retry_stores():
                    break
        finally:
            self.resumed.set()

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
                report = scheduler.load(json.loads(stored), _now_ms())
                if report.changed:
                    log.warning(
                        "scheduler %s: rate-limit windows restored: %s",
                        platform,
                        report.describe(),
                    )
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
            tp = event.message.tp
            service.taken[tp] = event.message.offset
            async with gate.lock:
                await _process(service, event)
                await stream.ack(event)  # with its outputs, in the same transaction
            service.done[tp] = event.message.offset
            # a refused store write (a full disk): stop here, between two records
            await service.wait_for_stores()

    @app.timer(interval=STORE_RETRY_S, name="scheduler-store-retry")  # type: ignore[untyped-decorator]
    async def retry_stores() -> None:
        # a write refused outside a record (faust's offset write at a commit) while the agent
        # is idle: retried here; while the agent waits, it retries itself
        if service.resumed.is_set():
            service.retry_stores()

    @app.timer(interval=0.02, name="scheduler-ticks")  # type: ignore[untyped-decorator]
    async def ticks() -> None:
        if not app.rebalancing:
            await service.send_due_ticks()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        service.forget()
        for tp in revoked:
            service.taken.pop(tp, None)
            service.done.pop(tp, None)

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
