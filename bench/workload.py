"""What the cases share: the result record, event builders, a fast producer, a counting reader and
the worker launcher.

Every case runs on topics of its own (a fresh ``topic_prefix`` and ``app_id``), so cases never
see each other's records or consumer groups.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from schemas import encode_event
from streams import partitions as partitions_module
from streams.domain import (
    Event,
    Payload,
    Source,
    TaskCompleted,
    TaskCreated,
    TaskStarted,
    derived_event_id,
)
from streams.kafka_clients import KafkaConnection
from streams.process import WorkerProcess, free_port, start_worker
from streams.topics import TOPICS, TopicNames, ensure_topics

PARTITIONS = 8
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Result:
    """One figure of the run, as written to the JSON file."""

    name: str
    value: float
    unit: str
    ratio_to: str | None = None
    ratio: float | None = None


def created(
    task_id: str,
    dependencies: tuple[str, ...] = (),
    task_type: str = "bench",
    event_id: str | None = None,
    at_ms: int | None = None,
) -> Event:
    """A ``TaskCreated`` of a task with a 10-minute timeout, one attempt and no handler."""
    payload = TaskCreated(
        task_type, "bench", task_id, 5, dependencies, 600_000, 1, 0, 600_000, 600_000
    )
    return event(task_id, payload, event_id, at_ms)


def event(
    task_id: str, payload: Payload, event_id: str | None = None, at_ms: int | None = None
) -> Event:
    """A client event about ``task_id`` (a random id and the current time unless given)."""
    return Event(
        event_id or str(uuid.uuid4()),
        task_id,
        int(time.time() * 1000) if at_ms is None else at_ms,
        Source.CLIENT,
        payload,
    )


def lifecycle_events(tasks: int) -> list[Event]:
    """Created, started and completed for tasks ``t0`` ... : 3 events per task, in task order.

    Event ids are uuids derived from the task id, so the topic's bytes differ only by time.
    """
    events: list[Event] = []
    at = int(time.time() * 1000)
    for i in range(tasks):
        tid = f"t{i}"
        events += [
            created(tid, event_id=derived_event_id("bench", tid, "created"), at_ms=at),
            event(tid, TaskStarted(), derived_event_id("bench", tid, "started"), at),
            event(tid, TaskCompleted(b"{}"), derived_event_id("bench", tid, "completed"), at),
        ]
    return events


def partition_of(key: bytes, partitions: int = PARTITIONS) -> int:
    """The partition of ``key`` on the bench's topics (Kafka's default partitioner)."""
    return partitions_module.partition_of(key, partitions)


async def produce_records(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]]
) -> int:
    """Write ``(key, value)`` records to ``topic`` in batches per partition; return the count.

    Records of one key keep their order (same partition, appended in order). Batches go
    through aiokafka's batch API: far faster than one ``send`` per record, so pre-filling
    does not dominate the run.
    """
    producer = KafkaConnection(bootstrap).producer(
        acks="all", max_batch_size=1_000_000, linger_ms=50
    )
    await producer.start()
    count = 0
    try:
        batches = {p: producer.create_batch() for p in range(PARTITIONS)}
        pending = []
        for key, value in records:
            partition = partition_of(key)
            batch = batches[partition]
            if batch.append(key=key, value=value, timestamp=None) is None:
                pending.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
            count += 1
            if len(pending) > 32:
                await pending.pop(0)
        for partition, batch in batches.items():
            if batch.record_count():
                pending.append(await producer.send_batch(batch, topic, partition=partition))
        for future in pending:
            await future
    finally:
        await producer.stop()
    return count


async def produce_events(bootstrap: str, topic: str, events: Iterable[Event]) -> int:
    """Write ``events`` to ``topic`` (keyed by task id, Avro-encoded); return the count."""
    records = ((e.task_id.encode(), encode_event(e)) for e in events)
    return await produce_records(bootstrap, topic, records)


async def count_until(bootstrap: str, topic: str, wanted: int, timeout_s: float) -> float:
    """Seconds until ``wanted`` committed records are on ``topic`` (from its beginning).

    Raises:
        RuntimeError: fewer records after ``timeout_s``.
    """
    consumer = KafkaConnection(bootstrap).consumer(
        topic,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    started, seen = time.monotonic(), 0
    try:
        while seen < wanted and time.monotonic() - started < timeout_s:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            seen += sum(len(records) for records in batches.values())
    finally:
        await consumer.stop()
    if seen < wanted:
        raise RuntimeError(f"only {seen} of {wanted} records on {topic} after {timeout_s:g} s")
    return time.monotonic() - started


async def create_topics(bootstrap: str, topics: TopicNames) -> None:
    """Create the project's topics under ``topics.prefix``; outputs stamped by the broker.

    ``task.ready`` and ``task.completed`` get ``message.timestamp.type=LogAppendTime`` (on top
    of their usual configs): a record's timestamp is when the broker appended it, whoever wrote
    it (quixstreams, for one, stamps outputs with the input record's time), so rates taken from
    output timestamps compare like with like.
    """
    await ensure_topics(bootstrap, PARTITIONS, topics)
    admin = KafkaConnection(bootstrap).admin()
    await admin.start()
    try:
        resources = [
            ConfigResource(
                ConfigResourceType.TOPIC,
                topics.prefix + spec.name,
                {**spec.config, "message.timestamp.type": "LogAppendTime"},
            )
            for spec in TOPICS
            if topics.prefix + spec.name in (topics.ready, topics.completed)
        ]
        await admin.alter_configs(resources)
    finally:
        await admin.close()


def start(
    bootstrap: str,
    root: Path,
    name: str,
    handlers: bool = False,
    settings: dict[str, str] | None = None,
    wait: bool = True,
) -> WorkerProcess:
    """A worker with ``app_id`` and topic prefix ``name``, its data under ``root/name``."""
    values = {"app_id": name, "topic_prefix": f"{name}.", "partitions": str(PARTITIONS)}
    if handlers:
        values["handlers"] = "bench.handlers"
    values.update(settings or {})
    worker = start_worker(
        bootstrap, root / name, free_port(), values, extra_env={"PYTHONPATH": str(ROOT)}
    )
    if wait:
        worker.wait_ready(timeout_s=180)
    return worker


def unique(prefix: str) -> str:
    """A fresh name for a case's app id and topic prefix."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"
