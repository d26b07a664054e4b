"""The replay runner: reads ``task.events`` from Kafka and feeds the projections.

No Faust here: a plain aiokafka consumer with no group (nothing is committed, nothing is
rebalanced) is assigned every partition, reads each from its beginning in large batches
(``getmany`` with ``max_records``, megabyte fetches) up to a stop offset, and hands every record
to :class:`~projections.log.LogFold`, which decodes it and applies the pure fold. The consumer
reads ``read_committed``, as the live fold agent does, so both see the same records.

Stop offsets, per partition (the replay reads offsets ``[beginning, stop)``):

- by default, the partition's last stable offset when the replay starts;
- ``until_ms``: the first offset whose record timestamp is later than ``until_ms``
  (``offsets_for_times(until_ms + 1)``), so the replay gives the state as it was at that instant
  (records are stamped by their producer: a record stamped later than a newer one of the same
  partition counts where it stands in the log);
- ``stop_offsets``: given explicitly (``orchestrator verify`` stops where a worker's table is).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from projections.audit import AuditView
from projections.instants import iso_utc
from projections.log import LogFold, LogRecord, Position, Projection
from projections.platforms import PlatformStatsView
from projections.status import TaskStatusView
from streams.errors import InfrastructureError
from streams.topics import TASK_EVENTS

BATCH_RECORDS = 50_000
"""Records per ``getmany``: large batches keep the consumer's per-call cost out of the way."""
FETCH_BYTES_PER_PARTITION = 16 * 1024 * 1024
FETCH_BYTES = 64 * 1024 * 1024
STALL_TIMEOUT_S = 60.0
"""A replay that reads nothing for this long while records remain fails instead of hanging."""

PROJECTIONS: dict[str, Callable[[], Projection]] = {
    TaskStatusView.name: TaskStatusView,
    AuditView.name: AuditView,
    PlatformStatsView.name: PlatformStatsView,
}
"""Every projection by name, with a factory for a fresh one."""


@dataclass(frozen=True)
class PartitionRange:
    """The offsets of one partition that a replay reads: ``[start, stop)``."""

    start: int
    stop: int


@dataclass(frozen=True)
class Progress:
    """How far a running replay is.

    Attributes:
        records: records read so far.
        total: records to read in all, as an offset span (transaction markers and aborted
            records count in it but are never read: the last update may fall short of it).
        elapsed_s: seconds since the replay started reading.
    """

    records: int
    total: int
    elapsed_s: float


@dataclass
class ReplayResult:
    """What a replay read and built.

    Attributes:
        ranges: the offsets read, per partition.
        records: records read (every one was folded, whatever its verdict).
        elapsed_s: seconds spent reading and folding (connection set-up excluded).
        log: the fold: every task's state and the count of each verdict.
        projections: the views fed, by name.
    """

    topic: str
    until_ms: int | None
    ranges: dict[int, PartitionRange]
    records: int
    elapsed_s: float
    log: LogFold
    projections: dict[str, Projection] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        """Records folded per second."""
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary: what was read, how fast, the verdicts, the tasks per status."""
        statuses: dict[str, int] = {}
        for state in self.log.states.values():
            statuses[str(state.status)] = statuses.get(str(state.status), 0) + 1
        return {
            "topic": self.topic,
            "until_ms": self.until_ms,
            "until": iso_utc(self.until_ms) if self.until_ms is not None else None,
            "partitions": {
                str(p): {"start": r.start, "stop": r.stop} for p, r in sorted(self.ranges.items())
            },
            "records": self.records,
            "verdicts": {str(verdict): n for verdict, n in self.log.counts.items()},
            "tasks": len(self.log.states),
            "statuses": dict(sorted(statuses.items())),
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s, 1),
        }

    def to_json(self) -> dict[str, Any]:
        """The summary and every projection's document, by name."""
        return {
            "summary": self.summary(),
            **{name: view.to_json() for name, view in self.projections.items()},
        }


async def replay(
    bootstrap_servers: str,
    topic: str = TASK_EVENTS,
    until_ms: int | None = None,
    projections: Sequence[Projection] | None = None,
    *,
    stop_offsets: Mapping[int, int] | None = None,
    keys: Collection[str] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    batch_records: int = BATCH_RECORDS,
) -> ReplayResult:
    """Fold ``topic`` from the beginning and feed ``projections``; return what was built.

    Args:
        bootstrap_servers: Kafka's ``host:port[,...]``.
        topic: the event log (``task.events``, with the orchestrator's topic prefix if any).
        until_ms: stop at this instant (Unix ms, inclusive): the state as it was then.
        projections: the views to feed (default: one of each, see :data:`PROJECTIONS`).
        stop_offsets: read each partition up to this offset (exclusive) instead; a partition
            absent from the mapping is not read. Combined with ``until_ms``, the earlier wins.
        keys: fold only the records keyed by these task ids (a task's state depends on its
            own records alone), e.g. for the audit of one task; the others are read, not decoded.
        on_progress: called after every batch.
        batch_records: the most records one ``getmany`` returns.

    Returns:
        The result: ``log.states`` (every task's state), ``records``, ``events_per_s``, the
        projections by name.

    Raises:
        InfrastructureError: Kafka cannot be reached, the topic does not exist, or the replay
            stalled (read nothing for ``STALL_TIMEOUT_S`` with records left to read).
    """
    views = list(projections) if projections is not None else [f() for f in PROJECTIONS.values()]
    wanted = frozenset(k.encode("utf-8") for k in keys) if keys is not None else None
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION,
        fetch_max_bytes=FETCH_BYTES,
        fetch_max_wait_ms=100,
    )
    try:
        count = await partition_count(bootstrap_servers, topic)
        await consumer.start()
        ranges = await _ranges(consumer, topic, count, until_ms, stop_offsets)
        reader = _Reader(consumer, topic, ranges, views, wanted, on_progress, count)
        await reader.run(batch_records)
    except KafkaError as exc:
        raise InfrastructureError(
            f"cannot replay {topic} from Kafka at {bootstrap_servers}: {exc}", retriable=True
        ) from exc
    finally:
        await consumer.stop()
    return ReplayResult(
        topic=topic,
        until_ms=until_ms,
        ranges=ranges,
        records=reader.records,
        elapsed_s=reader.elapsed_s,
        log=reader.log,
        projections={view.name: view for view in views},
    )


async def partition_count(bootstrap_servers: str, topic: str) -> int:
    """The number of partitions of ``topic``.

    Raises:
        InfrastructureError: the topic does not exist.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=15_000)
    try:
        await admin.start()
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [d["partitions"] for d in described if not d.get("error_code")]
    if not partitions or not partitions[0]:
        raise InfrastructureError(
            f"topic {topic} does not exist (is the topic prefix right? a worker creates the "
            "topics when it first starts)"
        )
    return len(partitions[0])


async def _ranges(
    consumer: AIOKafkaConsumer,
    topic: str,
    count: int,
    until_ms: int | None,
    stop_offsets: Mapping[int, int] | None,
) -> dict[int, PartitionRange]:
    tps = [TopicPartition(topic, p) for p in range(count)]
    if stop_offsets is not None:
        tps = [tp for tp in tps if tp.partition in stop_offsets]
    starts = await consumer.beginning_offsets(tps)
    stops: dict[TopicPartition, int] = dict(await consumer.end_offsets(tps))
    if stop_offsets is not None:
        stops = {tp: stop_offsets[tp.partition] for tp in tps}
    if until_ms is not None:
        found = await consumer.offsets_for_times({tp: until_ms + 1 for tp in tps})
        for tp, hit in found.items():
            if hit is not None:
                stops[tp] = min(stops[tp], hit.offset)
    return {tp.partition: PartitionRange(starts[tp], max(starts[tp], stops[tp])) for tp in tps}


class _Reader:
    """Reads the ranges and folds every record; one per replay."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topic: str,
        ranges: dict[int, PartitionRange],
        views: list[Projection],
        wanted: frozenset[bytes] | None,
        on_progress: Callable[[Progress], None] | None,
        partitions: int,
    ) -> None:
        self._consumer = consumer
        self._ranges = ranges
        self._tps = {p: TopicPartition(topic, p) for p in ranges}
        self._views = views
        self._wanted = wanted
        self._on_progress = on_progress
        self._total = sum(r.stop - r.start for r in ranges.values())
        self.log = LogFold(partitions=partitions)
        self.records = 0
        self.elapsed_s = 0.0

    async def run(self, batch_records: int) -> None:
        consumer = self._consumer
        consumer.assign(list(self._tps.values()))
        active = {p for p, r in self._ranges.items() if r.start < r.stop}
        for p, tp in self._tps.items():
            consumer.seek(tp, self._ranges[p].start)
            if p not in active:
                consumer.pause(tp)
        started = time.monotonic()
        last_read = started
        while active:
            batches = await consumer.getmany(timeout_ms=500, max_records=batch_records)
            for tp, records in batches.items():
                self._fold(tp.partition, records)
            for p in sorted(active):
                if await consumer.position(self._tps[p]) >= self._ranges[p].stop:
                    active.discard(p)
                    consumer.pause(self._tps[p])
            now = time.monotonic()
            self.elapsed_s = now - started
            if batches:
                last_read = now
                if self._on_progress is not None:
                    self._on_progress(Progress(self.records, self._total, self.elapsed_s))
            elif active and now - last_read > STALL_TIMEOUT_S:
                positions = {p: await consumer.position(self._tps[p]) for p in sorted(active)}
                where = ", ".join(
                    f"partition {p} at {at} of {self._ranges[p].stop}"
                    for p, at in positions.items()
                )
                raise InfrastructureError(
                    f"replay stalled: nothing read for {STALL_TIMEOUT_S:g} s ({where})",
                    retriable=True,
                )
        if self._on_progress is not None:
            self._on_progress(Progress(self.records, self._total, self.elapsed_s))

    def _fold(self, partition: int, records: list[Any]) -> None:
        stop = self._ranges[partition].stop
        fold = self.log.fold
        views = self._views
        wanted = self._wanted
        for r in records:
            if r.offset >= stop:
                break
            self.records += 1
            if wanted is not None and r.key not in wanted:
                continue
            record = LogRecord(Position(partition, r.offset), r.timestamp, r.key, r.value)
            for folded in fold(record):
                for view in views:
                    view.observe(folded)
