"""The scheduler: one ``PlatformScheduler`` per platform, fed by ``task.ready`` and signals,
exactly once, and the handlers it dispatches started by this worker right after the commit.

``task.ready`` and ``scheduler.signals`` are both keyed by platform, so partition ``p`` of each
holds the same platforms and each platform has a single writer: the worker owning ``p``. The
scheduler processes its partitions the way the fold does (``streams.agents.transactional``): a
consumer of its own (group ``{id}-scheduler``), one transactional producer per partition
(``{id}-scheduler-{p}``, which fences the previous owner when it starts), and a committed-only
store per partition (``data_dir/scheduler``) restored from ``{id}-scheduler-changelog``.

For each record it updates the platform's scheduler (pure code, ``streams.domain.scheduling``)
and dispatches what the limits allow: a ``TaskDispatched`` event on ``task.events`` and a
go-ahead on ``task.dispatch`` (a record of the decision), in the partition's transaction.
Tasks held back get one ``TaskDeferred`` event saying why. Time passing (a window gaining room,
a pause ending) needs no record: the loop notes when each platform should look again and
decides then, in a transaction of its own.

Rate limits hold at the handler call (docs/rate-limits.md): a decision at ``d`` counts the
dispatch at ``not_before = d + start_lead`` and checks every window as if its period were
``start_slot`` longer; a transaction that dispatched commits at once, and only once the broker
acknowledged the commit does this worker hand the go-aheads to its executor, which starts each
handler in ``[not_before, not_before + start_slot]`` or gives the go-ahead back. A go-ahead is
never read back from ``task.dispatch``: a worker that crashes after the commit loses the call
(the attempt times out and is retried), it never makes it twice, and a fenced worker commits
nothing, so it calls nothing.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.structs import RecordMetadata

from schemas.records import (
    decode_config,
    decode_ready,
    decode_signal,
    encode_dispatch,
    encode_event,
    encode_rate_change,
)
from streams import handlers, placement
from streams.agents.executor import Executor
from streams.agents.transactional import (
    COMMIT_TIMEOUT_S,
    TRANSACTION_ERRORS,
    AssignedPartitions,
    FailureLog,
    Superseded,
    committed_reader,
    delivery,
    records_behind,
    reopen_backoff,
    restore_from_changelog,
    send_now,
    start_fencing,
    stop_quietly,
    wait_for_event,
)
from streams.app import Runtime
from streams.config import parse_platform_limits
from streams.domain import Event, ReadyToSchedule, Source, derived_event_id
from streams.domain.config_events import ANY, RATE_LIMITS
from streams.domain.events import TaskDeferred, TaskDispatched
from streams.domain.scheduling import (
    HoldReason,
    PlatformScheduler,
    QueuedTask,
    StartLead,
    overall_free,
    runs_here,
)
from streams.domain.signals import (
    Dispatch,
    PlatformPaused,
    RateChangeRecord,
    SchedulerSignal,
    TaskReleased,
)
from streams.domain.signatures import signed_headers
from streams.errors import ConfigurationError, SchemaError
from streams.partitions import partition_of
from streams.task_store import PartitionStore, TaskStore
from streams.topics import scheduler_changelog

log = logging.getLogger(__name__)

PLATFORM_KEY = b"p\x1f"
"""Store keys of platforms' snapshots: this, then the platform's name."""
QUEUE_KEY = b"q\x1f"
"""Store keys of queued tasks: this, the platform's name, ``\\x1f``, the task id."""
MAX_RECORDS = 500
"""Records taken per fetch."""
MAX_FETCH_WAIT_MS = 100
"""The longest a fetch waits for records (a platform's wake-up shortens it)."""
HANDLER_STOP_WAIT_S = 2.0
"""How long a released task's slot waits for its cancelled handler to stop."""
EARLIER_TABLES = {"scheduler_platforms": PLATFORM_KEY, "scheduler_queue": QUEUE_KEY}
"""The faust tables of the scheduler before it kept its own store (changelogs
``{id}-{table}-changelog``, faust's consumer group ``{id}``), and the store key prefix each
table's keys take now."""


def scheduler_group(orchestrator_id: str) -> str:
    """The consumer group whose committed offsets say where the scheduler resumes."""
    return f"{orchestrator_id}-scheduler"


@dataclass
class _Lane:
    """One open partition ``p`` of ``task.ready`` and of ``scheduler.signals``."""

    number: int
    producer: AIOKafkaProducer
    store: PartitionStore
    next_offsets: dict[TopicPartition, int]
    """Per input partition, the offset of the next record to take."""
    schedulers: dict[str, PlatformScheduler] = field(default_factory=dict)
    wakeups: dict[str, int] = field(default_factory=dict)
    """Per platform, when (wall clock, ms) its scheduler must look again."""
    changed: set[str] = field(default_factory=set)
    """Platforms whose snapshot changed in the open transaction."""
    limits: dict[str, Any] = field(default_factory=dict)
    """Per platform, the ``rate_limits`` set at run time (``orchestrator.config``) that hold
    over the worker's own configuration; kept in the platform's snapshot."""
    in_transaction: bool = False
    deliveries: list[asyncio.Future[RecordMetadata]] = field(default_factory=list)
    go_aheads: list[Dispatch] = field(default_factory=list)
    """Dispatched in the open transaction: handed to the executor once it commits."""
    last_commit: float = 0.0


class SchedulerService(AssignedPartitions):
    """Schedules the platforms of the partitions faust assigns to this worker."""

    what = "the scheduler"

    def __init__(self, runtime: Runtime, executor: Executor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runtime = runtime
        self.executor = executor
        settings = runtime.settings
        self.group = scheduler_group(settings.orchestrator_id)
        self.changelog = scheduler_changelog(settings.orchestrator_id)
        self._events = settings.topics.events
        self._signing = runtime.signing
        self.store = TaskStore(Path(settings.data_dir) / "scheduler", settings.partitions)
        self.lock = asyncio.Lock()
        self.lead = StartLead(int(settings.start_lead * 1000))
        self.slot_ms = int(settings.start_slot * 1000)
        self.dispatching = True
        """False once the worker stops: records are still taken, nothing is dispatched."""
        self._lanes: dict[int, _Lane] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._failures = 0
        self._store_broken = False
        self._outage = False
        self._failure_log = FailureLog(log)
        self.dispatched: collections.Counter[str] = collections.Counter()
        """Per platform, the go-aheads this worker committed since it started (the dashboard
        draws dispatches per second from successive readings)."""

    # -- what others see

    @property
    def failure(self) -> str | None:
        """Why the store refuses writes (None: it takes them)."""
        return self.store.failure

    def _busy(self) -> bool:
        return bool(self._lanes) or self._opening

    def stop_dispatching(self) -> None:
        """Dispatch nothing more (the worker stops); queues and releases are still kept."""
        self.dispatching = False

    def platform_status(self, platform: str) -> dict[str, Any] | None:
        """The platform's limit status, if its partition is open here (None: it is not)."""
        lane = self._lanes.get(self._partition_of(platform))
        if lane is None:
            return None
        scheduler = lane.schedulers.get(platform) or self._new_scheduler(
            platform, lane.limits.get(platform)
        )
        return scheduler.status(self._clock())

    def open_partitions(self) -> frozenset[int]:
        """The partitions of ``task.ready`` scheduled here now."""
        return frozenset(self._lanes)

    def platforms(self) -> list[str]:
        """The platforms scheduled here, sorted: those seen on an open partition, and those
        whose partition is open here and that have limits (configured or set at run time)."""
        names = set(self.runtime.settings.limited_platforms)
        for lane in self._lanes.values():
            names.update(lane.schedulers, lane.limits)
        return sorted(p for p in names if self._partition_of(p) in self._lanes)

    async def lags(self) -> dict[str, tuple[int, int]]:
        """Per open input partition (``topic[p]``): the last offset taken, and records waiting."""
        consumer = self._consumer
        if consumer is None:
            return {}
        lags = {}
        for lane in list(self._lanes.values()):
            for tp, next_offset in lane.next_offsets.items():
                behind = await records_behind(consumer, tp, next_offset)
                lags[f"{tp.topic}[{tp.partition}]"] = (next_offset - 1, behind)
        return lags

    # -- the loop

    async def run(self) -> None:
        consumer = self._consumer = committed_reader(self.runtime.settings, self.group)
        await consumer.start()
        try:
            while not self._stopping:
                try:
                    await self._step(consumer)
                except Exception as exc:
                    self._failure_log.report(
                        "loop", exc, "the scheduler failed; reopening its partitions"
                    )
                    self._reopen()
        finally:
            await self._close_all(commit=True)
            self.store.close()
            await consumer.stop()

    async def _step(self, consumer: AIOKafkaConsumer) -> None:
        if not self.ready:
            await self._settle(consumer)
            return
        if not self._lanes:
            self._changed.clear()
            await wait_for_event(self._changed, 1.0)
            return
        batches = await consumer.getmany(timeout_ms=self._fetch_wait_ms(), max_records=MAX_RECORDS)
        async with self.lock:
            for tp, records in batches.items():
                lane = self._lanes.get(tp.partition)
                if lane is None:
                    continue
                touched: dict[str, None] = {}
                for record in records:
                    platform = await self._take(lane, tp, record)
                    if platform is not None:
                        touched[platform] = None
                # decided once per fetched batch, what the batch changed: one transaction (and
                # one commit, below, before any handler starts) for all its dispatches
                for platform in touched:
                    await self._decide(lane, platform)
            now_ms = _now_ms()
            for lane in self._lanes.values():
                for platform in [p for p, at in lane.wakeups.items() if at <= now_ms]:
                    await self._begin(lane)
                    await self._decide(lane, platform)
            now = time.monotonic()
            due = [
                lane
                for lane in self._lanes.values()
                if lane.in_transaction
                and (
                    lane.go_aheads
                    or now - lane.last_commit >= self.runtime.settings.commit_interval
                )
            ]
            outcomes = await asyncio.gather(*(self._commit(lane) for lane in due))
        if not all(outcomes) or self._store_broken:
            self._reopen()

    def _fetch_wait_ms(self) -> int:
        """How long a fetch may wait: until the next wake-up, at most MAX_FETCH_WAIT_MS."""
        wakeups = [at for lane in self._lanes.values() for at in lane.wakeups.values()]
        if not wakeups:
            return MAX_FETCH_WAIT_MS
        return max(0, min(MAX_FETCH_WAIT_MS, min(wakeups) - _now_ms()))

    # -- one record

    async def _take(
        self, lane: _Lane, tp: TopicPartition, record: ConsumerRecord[Any, Any]
    ) -> str | None:
        """Take one record into the platform's scheduler; return the platform to decide on
        (None: nothing to decide, the record was taken before or dead-lettered)."""
        if record.offset < lane.next_offsets[tp]:
            return None  # taken already (a fetch from before the last seek)
        await self._begin(lane)
        topics = self.runtime.settings.topics
        platform: str | None
        try:
            if tp.topic == topics.ready:
                ready = decode_ready(record.value or b"")
                platform = ready.platform
                self._enqueue(lane, ready)
            elif tp.topic == topics.config:
                platform = self._on_config(lane, record)
            else:
                signal = decode_signal(record.value or b"")
                platform = signal.platform
                await self._on_signal(lane, signal)
        except SchemaError as exc:
            await self._dead_letter(lane, record, "undecodable", str(exc))
            platform = None
        except TRANSACTION_ERRORS:
            raise
        except Exception as exc:  # a bug must not stop the scheduler: park the record
            log.exception("scheduler failed on %s[%d]@%d", tp.topic, tp.partition, record.offset)
            await self._dead_letter(
                lane, record, "processing_error", f"{type(exc).__name__}: {exc}"
            )
            platform = None
        lane.next_offsets[tp] = record.offset + 1
        return platform

    def _enqueue(self, lane: _Lane, ready: ReadyToSchedule) -> None:
        if not runs_here(ready.task_type, handlers.registered_task_types()):
            return
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
        if self._scheduler(lane, ready.platform).enqueue(task):
            lane.store.put(
                _queue_key(ready.platform, task.task_id), json.dumps(task.as_dict()).encode()
            )

    async def _on_signal(self, lane: _Lane, signal: SchedulerSignal) -> None:
        scheduler = self._scheduler(lane, signal.platform)
        payload = signal.payload
        if isinstance(payload, TaskReleased) and payload.task_id not in scheduler.in_flight:
            # never dispatched (cancelled while queued, say): it leaves the queue
            if scheduler.remove(payload.task_id):
                lane.store.delete(_queue_key(signal.platform, payload.task_id))
        elif isinstance(payload, TaskReleased):
            # the dispatched attempt ended; a handler still running here (the task ended
            # elsewhere: cancelled, timed out) holds its slot until it has stopped. A next
            # readiness of the task that came first (task.ready and scheduler.signals are two
            # topics) waits in the scheduler until now
            await self.executor.stop(payload.task_id, "the task ended", HANDLER_STOP_WAIT_S)
            change = scheduler.release(
                payload.task_id, payload.completed, payload.throttled_ms, self._clock()
            )
            if change is not None:
                log.info(
                    "platform %s rate factor %.2f -> %.2f (%s)",
                    change.platform,
                    change.old_factor,
                    change.new_factor,
                    change.cause,
                )
                record = RateChangeRecord(
                    change.platform, _now_ms(), change.old_factor, change.new_factor, change.cause
                )
                await self._send(
                    lane,
                    self.runtime.settings.topics.scheduler_events,
                    signal.platform.encode(),
                    encode_rate_change(record),
                )
        elif isinstance(payload, PlatformPaused):
            scheduler.pause(payload.until_ms)
        lane.changed.add(signal.platform)

    def _on_config(self, lane: _Lane, record: ConsumerRecord[Any, Any]) -> str | None:
        """Fold a run-time setting: a platform's new ``rate_limits`` apply from now on (its
        windows keep the dispatches they counted). Returns the platform to decide on."""
        if record.value is None:
            return None
        change = decode_config(record.value)
        if change.name != RATE_LIMITS or change.platform == ANY:
            return None  # a task policy default: the clients' business
        platform = change.platform
        try:
            limits = parse_platform_limits(platform, change.value)
        except ConfigurationError as exc:  # written around `orchestrator config set`'s checks
            log.warning("scheduler %s: rate_limits from %s ignored: %s", platform, change.by, exc)
            return None
        if change.value is None:
            lane.limits.pop(platform, None)
            limits = self.runtime.settings.platform_limits(platform)
        else:
            lane.limits[platform] = change.value
        old = self._scheduler(lane, platform)
        new = PlatformScheduler(limits, int(self.runtime.settings.ageing * 1000), self.slot_ms)
        report = new.load(old.snapshot(), self._clock())
        for task in old.queued():
            new.restore(task)
        lane.schedulers[platform] = new
        lane.changed.add(platform)
        log.info(
            "scheduler %s: rate limits now %s (set by %s at %d)%s",
            platform,
            json.dumps(change.value),
            change.by,
            change.at_ms,
            f"; windows: {report.describe()}" if report.changed else "",
            extra={"platform": platform},
        )
        return platform

    # -- decisions

    async def _decide(self, lane: _Lane, platform: str) -> None:
        """Dispatch what the platform's limits allow now; note when to look again."""
        scheduler = self._scheduler(lane, platform)
        now_ms = _now_ms()
        clock = now_ms + self.lead_ms
        lane.wakeups.pop(platform, None)
        if not self.dispatching:
            return
        topics = self.runtime.settings.topics
        dispatched, deferrals = scheduler.run(clock, self._overall_free())
        for task in dispatched:
            lane.store.delete(_queue_key(platform, task.task_id))
            dispatch_id = derived_event_id(
                task.ready_id or task.task_id, task.attempt, "dispatched"
            )
            event = Event(dispatch_id, task.task_id, now_ms, Source.SCHEDULER, TaskDispatched())
            go = Dispatch(
                dispatch_id,
                task.task_id,
                platform,
                task.task_type,
                task.target,
                task.attempt,
                task.timeout_ms,
                now_ms,
                clock,
                clock + self.slot_ms,
            )
            key = task.task_id.encode()
            await self._send(lane, topics.events, key, encode_event(event))
            await self._send(lane, topics.dispatch, key, encode_dispatch(go))
            lane.go_aheads.append(go)
        for deferral in deferrals:
            held = deferral.hold
            event = Event(
                derived_event_id(deferral.ready_id or deferral.task_id, "deferred"),
                deferral.task_id,
                now_ms,
                Source.SCHEDULER,
                TaskDeferred(str(held.reason), held.detail, held.until_ms or 0),
            )
            await self._send(lane, topics.events, deferral.task_id.encode(), encode_event(event))
        if dispatched:
            lane.changed.add(platform)
        self._plan_wakeups(lane, platform, scheduler, clock)

    def _plan_wakeups(
        self, lane: _Lane, platform: str, scheduler: PlatformScheduler, clock: int
    ) -> None:
        """Note when the platform must look again; wake platforms an overall slot now lets go."""
        free = self._overall_free()
        hold = scheduler.hold(clock, free)
        held = (
            (str(hold.reason), scheduler.newly_held(hold.reason))
            if hold is not None and scheduler.pending
            else None
        )
        self.runtime.metrics.observe_scheduler(scheduler, clock, held)
        wakeup = scheduler.wakeup_ms(clock)
        if hold is not None and hold.reason is HoldReason.CONCURRENCY and hold.until_ms is None:
            wakeup = None  # a released slot will bring a signal
        if wakeup is not None:
            lane.wakeups[platform] = wakeup - self.lead_ms
        if free is not None and free > 0:
            for other_lane in self._lanes.values():
                for other, other_scheduler in other_lane.schedulers.items():
                    if (
                        other != platform
                        and other_scheduler.pending
                        and other_scheduler.hold(clock, free) is None
                    ):
                        other_lane.wakeups[other] = clock - self.lead_ms

    def _overall_free(self) -> int | None:
        """Slots left under ``max_concurrent_tasks`` among this worker's platforms."""
        schedulers = (s for lane in self._lanes.values() for s in lane.schedulers.values())
        return overall_free(self.runtime.settings.max_concurrent_tasks, schedulers)

    # -- the platforms' schedulers

    def _new_scheduler(self, platform: str, limits: Any = None) -> PlatformScheduler:
        """A platform's scheduler, with ``limits`` set at run time if any, else the worker's."""
        settings = self.runtime.settings
        return PlatformScheduler(
            settings.platform_limits(platform)
            if limits is None
            else parse_platform_limits(platform, limits),
            int(settings.ageing * 1000),
            slot_ms=self.slot_ms,
        )

    def _scheduler(self, lane: _Lane, platform: str, limits: Any = None) -> PlatformScheduler:
        scheduler = lane.schedulers.get(platform)
        if scheduler is None:
            scheduler = lane.schedulers[platform] = self._new_scheduler(platform, limits)
        return scheduler

    def _load(self, lane: _Lane) -> None:
        """Load every platform of the lane's committed store (snapshots, then queues)."""
        queued: list[tuple[str, QueuedTask]] = []
        for key, value in lane.store.items():
            if key.startswith(PLATFORM_KEY):
                platform = key[len(PLATFORM_KEY) :].decode()
                snapshot = json.loads(value)
                limits = snapshot.get("limits")  # set at run time, folded before the commit
                if limits is not None:
                    lane.limits[platform] = limits
                scheduler = self._scheduler(lane, platform, limits)
                report = scheduler.load(snapshot, self._clock())
                if report.changed:
                    log.warning(
                        "scheduler %s: rate-limit windows restored: %s", platform, report.describe()
                    )
            elif key.startswith(QUEUE_KEY):
                platform = key[len(QUEUE_KEY) :].split(b"\x1f", 1)[0].decode()
                queued.append((platform, QueuedTask(**json.loads(value))))
        for platform, task in queued:
            self._scheduler(lane, platform).restore(task)
        now_ms = _now_ms()
        for platform in lane.schedulers:
            lane.wakeups[platform] = now_ms  # look at once: time passed while it was closed

    # -- writing

    async def _begin(self, lane: _Lane) -> None:
        if not lane.in_transaction:
            await lane.producer.begin_transaction()
            lane.in_transaction = True

    async def _send(self, lane: _Lane, topic: str, key: bytes | None, value: bytes) -> None:
        # what the scheduler writes to the log (dispatches, holds) is signed as a worker's
        headers = signed_headers(self._signing, key, value) if topic == self._events else []
        sent = await lane.producer.send(topic, value, key=key, headers=headers)
        lane.deliveries.append(delivery(sent))

    async def _dead_letter(
        self, lane: _Lane, record: ConsumerRecord[Any, Any], reason: str, detail: str
    ) -> None:
        self.runtime.metrics.dlq.labels(reason).inc()
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s",
            record.topic,
            record.partition,
            record.offset,
            reason,
            detail,
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "reason": reason,
            },
        )
        headers = [
            ("reason", reason.encode()),
            ("detail", detail[:1_000].encode()),
            ("source.topic", record.topic.encode()),
            ("source.partition", str(record.partition).encode()),
            ("source.offset", str(record.offset).encode()),
        ]
        sent = await lane.producer.send(
            self.runtime.settings.topics.dlq, record.value or b"", key=record.key, headers=headers
        )
        lane.deliveries.append(delivery(sent))

    async def _commit(self, lane: _Lane) -> bool:
        """Write the changed state to the changelog; commit once every record was acknowledged."""
        for platform in lane.changed:
            snapshot = lane.schedulers[platform].snapshot()
            if platform in lane.limits:
                snapshot["limits"] = lane.limits[platform]
            lane.store.put(PLATFORM_KEY + platform.encode(), json.dumps(snapshot).encode())
        lane.changed.clear()
        started_ms = _now_ms()
        try:
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                last = None
                for key, value in lane.store.uncommitted.items():
                    last = await lane.producer.send(
                        self.changelog, value, key=key, partition=lane.number
                    )
                    lane.deliveries.append(delivery(last))
                await send_now(lane.producer)
                for sent in lane.deliveries:
                    await sent
                await lane.producer.send_offsets_to_transaction(lane.next_offsets, self.group)
                await lane.producer.commit_transaction()
                checkpoint = (await last).offset + 1 if last is not None else None
        except (*TRANSACTION_ERRORS, TimeoutError) as exc:
            self._failure_log.report(
                f"commit:{lane.number}",
                exc,
                f"scheduler: commit of partition {lane.number} failed; its records are taken again",
            )
            return False
        lane.in_transaction = False
        lane.deliveries = []
        lane.last_commit = time.monotonic()
        go_aheads, lane.go_aheads = lane.go_aheads, []
        # from the earliest decision it carries (or its own start) to the acknowledgement
        decided_ms = min((go.dispatched_at_ms for go in go_aheads), default=started_ms)
        self.lead.observe(_now_ms() - decided_ms)
        for go in go_aheads:  # committed: this worker, and no other, calls their handlers
            self.executor.start(go)
            self.dispatched[go.platform] += 1
        self._failures = 0
        self._store_committed(lane, checkpoint)
        return True

    def _store_committed(self, lane: _Lane, checkpoint: int | None) -> None:
        """Write what the lane's commit made final to its database (a full disk stops it)."""
        try:
            lane.store.commit(checkpoint)
        except Exception as exc:  # RocksDB: a full disk, say; the changelog has everything
            lane.store.discard()
            self._store_failed(exc)
            return
        self._store_works()

    def _store_failed(self, exc: BaseException) -> None:
        """The store refused a write: stop, say why once, reopen it (and retry) after a wait."""
        self.store.failure = f"{type(exc).__name__}: {exc}"
        self._store_broken = True
        if not self._outage:
            self._outage = True
            log.error(
                "scheduler: its store refused a write (%s); scheduling stops, and "
                "resumes by itself once the store takes writes again",
                self.store.failure,
            )

    def _store_works(self) -> None:
        """A store write went through: an outage, if there was one, is over."""
        if self._outage:
            self._outage = False
            log.warning("scheduler: the store takes writes again; scheduling resumes")
        self.store.failure = None

    # -- opening and closing partitions

    def _reopen(self) -> None:
        """Give up every open transaction and open the partitions again (after a backoff)."""
        self._failures += 1
        self._wanted_version += 1

    async def _settle(self, consumer: AIOKafkaConsumer) -> None:
        version, wanted = self._wanted_version, self._wanted
        await self._close_all(commit=not self._failures)
        consumer.assign([])
        if self._failures and wanted:
            self._changed.clear()
            await wait_for_event(self._changed, reopen_backoff(self._failures))
            if self._stopping or version != self._wanted_version:
                return
        if self._store_broken:
            self._store_broken = False
            self.store.reopen()
        if wanted:
            self._opening = True
            try:
                await self._open(consumer, wanted, version)
            except Superseded:
                await self._close_all(commit=False)
                return
            except TRANSACTION_ERRORS as exc:
                self._failure_log.report(
                    "open", exc, f"scheduler: opening partitions {sorted(wanted)} failed"
                )
                await self._close_all(commit=False)
                self._failures += 1
                return
            except Exception as exc:  # RocksDB could not open or write: a disk problem
                self._store_failed(exc)
                await self._close_all(commit=False)
                self._failures += 1
                return
            finally:
                self._opening = False
        self._open_version = version
        if self.ready:
            self._settled.set()
            log.info("scheduler: scheduling partitions %s", sorted(wanted))

    async def _open(self, consumer: AIOKafkaConsumer, wanted: frozenset[int], version: int) -> None:
        settings = self.runtime.settings
        topics = settings.topics
        # no linger: a dispatch's transaction commits at once, and waits for nothing
        outputs = (topics.events, topics.dispatch, topics.scheduler_events, self.changelog)
        fencing_ms = _now_ms()
        producers = await start_fencing(settings, "scheduler", wanted, 0, outputs)
        # a first estimate of what a commit takes here: each start is a round trip to the
        # transaction coordinator, which writes to its replicated log as a commit does
        self.lead.observe(_now_ms() - fencing_ms)
        try:
            stores = {p: self.store.database(p) for p in wanted}
            await restore_from_changelog(
                settings,
                self.changelog,
                stores,
                lambda: self._wanted_version != version or self._stopping,
                self.store.wipe,
            )
            self._store_works()
            tps = [
                TopicPartition(t, p)
                for p in sorted(wanted)
                for t in (topics.ready, topics.signals, topics.config)
            ]
            consumer.assign(tps)
            committed = {tp: await consumer.committed(tp) for tp in tps}
            never = [
                p
                for p in sorted(wanted)
                if stores[p].checkpoint == 0
                and all(committed[tp] is None for tp in tps if tp.partition == p)
            ]
            adopted = await self._adopt_earlier_version(never, stores, committed) if never else []
            starts: dict[TopicPartition, int] = {}
            for tp in tps:
                offset = committed[tp]
                if offset is None:
                    await consumer.seek_to_beginning(tp)
                    starts[tp] = await consumer.position(tp)
                else:
                    consumer.seek(tp, offset)
                    starts[tp] = offset
            for partition in sorted(wanted):
                offsets = {tp: starts[tp] for tp in tps if tp.partition == partition}
                lane = _Lane(partition, producers[partition], stores[partition], offsets)
                self._load(lane)
                if partition in adopted:
                    await self._begin(lane)  # the first commit writes it all to the changelog
                self._lanes[partition] = lane
                self.store.open[partition] = lane.store
        except BaseException:
            for partition, producer in producers.items():
                if partition not in self._lanes:
                    await stop_quietly(producer)
            raise

    async def _adopt_earlier_version(
        self,
        partitions: list[int],
        stores: dict[int, PartitionStore],
        committed: dict[TopicPartition, int | None],
    ) -> list[int]:
        """Take over what the scheduler of an earlier version left for ``partitions``.

        That scheduler kept its queues and windows in faust tables and its input offsets in
        faust's consumer group. For a partition this scheduler never committed, the tables'
        changelogs are read into the store (uncommitted: the first commit writes them to this
        scheduler's changelog) and the group's offsets become the starting points (in
        ``committed``), so an upgrade neither drops queued tasks nor dispatches the whole
        history of ``task.ready`` again. Returns the partitions that had such state.
        """
        settings = self.runtime.settings
        app_id = settings.orchestrator_id
        admin = settings.kafka.admin()
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(app_id)
            topics = set(await admin.list_topics())
        finally:
            await admin.close()
        adopted = set()
        for tp, position in offsets.items():
            if tp in committed and tp.partition in partitions and position.offset >= 0:
                committed[tp] = position.offset
                adopted.add(tp.partition)
        changelogs = {
            f"{app_id}-{table}-changelog": prefix
            for table, prefix in EARLIER_TABLES.items()
            if f"{app_id}-{table}-changelog" in topics
        }
        if changelogs:
            adopted |= await self._read_earlier_tables(changelogs, partitions, stores)
        if adopted:
            log.warning(
                "scheduler: partitions %s take over the state and offsets of the scheduler of an "
                "earlier version (faust tables %s, group %s)",
                sorted(adopted),
                ", ".join(EARLIER_TABLES),
                app_id,
            )
        return sorted(adopted)

    async def _read_earlier_tables(
        self, changelogs: dict[str, bytes], partitions: list[int], stores: dict[int, PartitionStore]
    ) -> set[int]:
        """Read the earlier tables' changelogs into the stores; the partitions that had any."""
        adopted = set()
        reader = committed_reader(self.runtime.settings)
        await reader.start()
        try:
            for changelog, prefix in changelogs.items():
                tps = [TopicPartition(changelog, p) for p in partitions]
                reader.assign(tps)
                ends = await reader.end_offsets(tps)
                await reader.seek_to_beginning(*tps)
                todo = {tp for tp in tps if ends[tp] > 0}
                while todo:
                    for tp, records in (await reader.getmany(*todo, timeout_ms=500)).items():
                        for record in records:
                            if record.key is None:
                                continue
                            key = prefix + record.key
                            if record.value is None:
                                stores[tp.partition].uncommitted.pop(key, None)
                            else:
                                stores[tp.partition].put(key, record.value)
                    for tp in list(todo):
                        if await reader.position(tp) >= ends[tp]:
                            todo.discard(tp)
                            if stores[tp.partition].uncommitted:
                                adopted.add(tp.partition)
        finally:
            await reader.stop()
        return adopted

    async def _close_all(self, commit: bool) -> None:
        """Close every open partition, committing its transaction first if ``commit``."""
        if not self._lanes:
            return
        async with self.lock:
            lanes = list(self._lanes.values())
            if commit:
                for lane in lanes:
                    if lane.in_transaction:
                        await self._commit(lane)
            self._lanes = {}
            self.store.open.clear()
            for lane in lanes:
                lane.store.discard()
        await asyncio.gather(*(stop_quietly(lane.producer) for lane in lanes))

    # -- helpers

    @property
    def lead_ms(self) -> int:
        """The lead of a decision now: ``start_lead``, or longer if commits take longer here."""
        return self.lead.ms

    def _partition_of(self, platform: str) -> int:
        return partition_of(platform.encode(), self.runtime.settings.partitions)

    def _clock(self) -> int:
        """The schedulers' clock: now plus the lead (a dispatch now counts at its not_before)."""
        return _now_ms() + self.lead_ms


def register(runtime: Runtime, executor: Executor) -> SchedulerService:
    """Add the scheduler to ``runtime.app``: its service, and the hooks that follow the
    assignment (faust's group places the partitions; the scheduler reads them itself)."""
    app = runtime.app
    service = SchedulerService(runtime, executor)
    topics = runtime.settings.topics
    placement.place_only(app, topics.ready, topics.signals)
    source = app.topic(
        topics.ready,
        topics.signals,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=runtime.settings.partitions,
    )

    # faust subscribes to both topics so its assignor places their partitions (and routes
    # /limits/{platform}); its consumer never fetches them (streams.placement)
    @app.agent(source, name="scheduler", concurrency=1)
    async def owns_ready(stream: Any) -> None:
        async for event in stream.events():
            log.error(
                "faust delivered %s[%d] to the scheduler",
                event.message.topic,
                event.message.partition,
            )

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def close_partitions(app: Any, revoked: Any, **kwargs: Any) -> None:
        await service.revoke()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def open_partitions(app: Any, assigned: Any, **kwargs: Any) -> None:
        service.assign(frozenset(tp.partition for tp in assigned if tp.topic == topics.ready))

    app.service(service)  # type: ignore[arg-type]
    return service


def _queue_key(platform: str, task_id: str) -> bytes:
    return QUEUE_KEY + f"{platform}\x1f{task_id}".encode()


def _now_ms() -> int:
    return int(time.time() * 1000)
