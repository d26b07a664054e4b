"""Bounded reads of Kafka for the dashboard: one task's timeline, the latest dead letters.

Each read uses a consumer of its own with no group (it commits nothing and joins no
rebalance), reads ``read_committed`` as the fold does, and is bounded three ways: in records
(a fixed budget), in time (:data:`READ_TIMEOUT_S`) and in concurrency (one read of each kind
at a time per worker: a dashboard polling several tabs waits its turn instead of stacking
consumers). They run on the worker's event loop, so the budgets also bound how long the fold
waits for the loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from projections.log import LogRecord, Position
from projections.timeline import (
    CLOCK_MARGIN_MS,
    MAX_SCAN_RECORDS,
    ScanPlan,
    clip,
    fold_timeline,
    plan_scan,
)
from streams.agents.transactional import committed_reader
from streams.config import Settings
from streams.domain.signatures import SigningKey, signature_of

READ_TIMEOUT_S = 5.0
"""The longest one read takes; a read past it answers what it has, marked incomplete."""
MAX_DEAD_LETTERS = 100
"""The most DLQ records one answer holds."""
DETAIL_CHARS = 300
"""A dead letter's detail is cut to this many characters in the answer."""

_timeline_turn = asyncio.Semaphore(1)
_dlq_turn = asyncio.Semaphore(1)


async def read_timeline(
    settings: Settings,
    task_id: str,
    partition: int,
    first_known_ms: int | None,
    max_records: int = MAX_SCAN_RECORDS,
    signing: SigningKey | None = None,
) -> dict[str, Any]:
    """The task's timeline from a bounded stretch of its partition (``projections.timeline``).

    Args:
        first_known_ms: the earliest time the task's state knows of (None: not in the table;
            the last ``max_records`` records are read).

    Returns:
        ``{"task_id", "partition", "scan": {...}, "scanned", "complete", "entries",
        "omitted", "omitted_after"}``; ``complete`` is False when records of the task may lie
        outside what was read (before the scan, or past the budget or the deadline).
    """
    topic = settings.topics.events
    tp = TopicPartition(topic, partition)
    async with _timeline_turn:
        consumer = _reader(settings)
        await consumer.start()
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                plan = await _plan(consumer, tp, first_known_ms, max_records)
            key = task_id.encode("utf-8")
            records, scanned, stopped = await _read_keyed(consumer, tp, plan, key)
        finally:
            await consumer.stop()
    entries = fold_timeline(records, task_id, settings.partitions, signing)
    complete = plan.from_beginning and plan.to_end and stopped >= plan.stop
    return {
        "task_id": task_id,
        "partition": partition,
        "scan": {**plan.to_json(), "read_to": stopped, "max_records": max_records},
        "scanned": scanned,
        "complete": complete,
        **clip(entries),
    }


async def _plan(
    consumer: AIOKafkaConsumer, tp: TopicPartition, first_known_ms: int | None, max_records: int
) -> ScanPlan:
    beginning = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    found = None
    if first_known_ms is not None:
        hit = (await consumer.offsets_for_times({tp: max(0, first_known_ms - CLOCK_MARGIN_MS)}))[tp]
        found = hit.offset if hit is not None else end
    return plan_scan(beginning, end, found, max_records)


async def _read_keyed(
    consumer: AIOKafkaConsumer, tp: TopicPartition, plan: ScanPlan, key: bytes
) -> tuple[list[LogRecord], int, int]:
    """The records of ``plan`` keyed ``key``, the records read, and the offset reached."""
    consumer.assign([tp])
    consumer.seek(tp, plan.start)
    deadline = time.monotonic() + READ_TIMEOUT_S
    kept: list[LogRecord] = []
    scanned = 0
    reached = plan.start
    while reached < plan.stop and time.monotonic() < deadline:
        batches = await consumer.getmany(tp, timeout_ms=200, max_records=5_000)
        for record in batches.get(tp, ()):
            if record.offset >= plan.stop:
                break
            scanned += 1
            if record.key == key:
                position = Position(tp.partition, record.offset)
                value, signature = record.value or b"", signature_of(record.headers)
                kept.append(LogRecord(position, record.timestamp, record.key, value, signature))
        # transaction markers take offsets but are no records: the position says how far
        reached = await consumer.position(tp)
    return kept, scanned, min(reached, plan.stop)


async def latest_dead_letters(settings: Settings, limit: int) -> dict[str, Any]:
    """The newest ``limit`` records of ``task.events.dlq`` (at most ``limit`` per partition
    read, then the newest of them by timestamp), each with its reason, detail and provenance.

    Returns:
        ``{"topic", "records": [...], "complete"}``, newest first; ``complete`` is False if the
        read stopped at :data:`READ_TIMEOUT_S`.
    """
    topic = settings.topics.dlq
    async with _dlq_turn:
        consumer = _reader(settings)
        await consumer.start()
        try:
            # every topic of the orchestrator has settings.partitions partitions
            tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
            async with asyncio.timeout(READ_TIMEOUT_S):
                beginnings = await consumer.beginning_offsets(tps) if tps else {}
                ends = await consumer.end_offsets(tps) if tps else {}
            records, complete = await _read_tails(consumer, tps, beginnings, ends, limit)
        finally:
            await consumer.stop()
    records.sort(key=lambda r: (r["timestamp_ms"], r["partition"], r["offset"]), reverse=True)
    return {"topic": topic, "records": records[:limit], "complete": complete}


async def _read_tails(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    beginnings: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
    limit: int,
) -> tuple[list[dict[str, Any]], bool]:
    wanted = {tp: max(beginnings[tp], ends[tp] - limit) for tp in tps if ends[tp] > beginnings[tp]}
    if not wanted:
        return [], True
    consumer.assign(list(wanted))
    for tp, start in wanted.items():
        consumer.seek(tp, start)
    deadline = time.monotonic() + READ_TIMEOUT_S
    records: list[dict[str, Any]] = []
    active = set(wanted)
    while active and time.monotonic() < deadline:
        batches = await consumer.getmany(*active, timeout_ms=200, max_records=limit * len(active))
        for tp, batch in batches.items():
            records.extend(dead_letter(r) for r in batch if r.offset < ends[tp])
        for tp in list(active):
            if await consumer.position(tp) >= ends[tp]:
                active.discard(tp)
    return records, not active


def dead_letter(record: Any) -> dict[str, Any]:
    """A DLQ record as the dashboard shows it (the key as text; the value only as its size)."""
    headers = {name: value for name, value in record.headers or ()}

    def text(name: str) -> str:
        return bytes(headers.get(name) or b"").decode("utf-8", "replace")

    detail = text("detail")
    if len(detail) > DETAIL_CHARS:
        detail = detail[:DETAIL_CHARS] + "…"
    key = record.key
    return {
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp,
        "key": key.decode("utf-8", "replace") if key is not None else None,
        "reason": text("reason"),
        "detail": detail,
        "source": f"{text('source.topic')}[{text('source.partition')}]@{text('source.offset')}"
        if "source.topic" in headers
        else None,
        "value_bytes": len(record.value or b""),
    }


def _reader(settings: Settings) -> AIOKafkaConsumer:
    return committed_reader(settings)
