"""The EOS ceiling: the fold's exactly-once plumbing with no fold in it, over the fold's topic.

A bare aiokafka consume → transform → produce loop over the same pre-filled ``task.events`` the
fold case folds (``bench.fold.prefill``), built the way the fold agent builds its own: one
``read_committed`` consumer (a group of its own, no auto-commit) assigned every partition,
fetching ``FETCH_RECORDS`` at a time; one transactional producer per input partition
(``streams.agents.transactional.start_fencing``: the fold's producer settings and its 50 ms
linger, transactional ids ``ceiling-<run>-ceiling-<partition>``, unique per run). Per event, the
project's decode (``schemas.records.event_of_record``), then two records in the partition's
transaction: one of ``OUTPUT_BYTES`` to an output topic of the case's own (keyed by the task id)
and one of ``CHANGELOG_BYTES`` to a compacted changelog-like topic of its own (keyed by the task
id, on the input's partition). Every ``commit_interval`` seconds (the worker's default, 0.2 s),
each partition with an open transaction flushes its sends (``send_now``), adds its input offset
(``send_offsets_to_transaction``) and commits, all partitions concurrently, as the fold does.

What is left out is everything the fold adds on top: the state read and the pure fold, the
RocksDB table and its encoding, the effects' Avro encoding and the fold's bookkeeping (verdicts,
deadlines, metrics). So its rate is a realistic upper bound for the fold's design on this machine
(transactions per partition, a commit interval, one Python process): ``fold_events_per_s`` is
reported as a share of it. It writes a changelog record per event, where the fold writes one per
changed task per commit (a task's 3 events usually fall in one commit), and an output per event,
where the fold writes two per task (``task.ready``, ``task.completed``): more than the fold writes
(about three times its changelog bytes), so the bound errs low, if anything.

Records are written with aiokafka's batch API (``create_batch`` / ``send_batch``): each partition
keeps one open batch per topic, sent (closed, so it does not linger) when full (16 KB, the fold's
producers' batch size) and at each commit. It beat one ``send`` per record (``batched=False``,
what the fold does) on this machine: about 10,500 against 7,600 events/s in one trial on
30,000 events (a fresh broker, each variant twice, the second runs compared).

Timed like the fold, by the broker: the output topic stamps records with
``message.timestamp.type=LogAppendTime``, and the rate is the events over the span from the first
output record's append time to the last's (``bench.fold.output_span_s``). Start-up and the last
commit's delay are outside it. The span is read after the loop has finished, so the reader takes
no CPU from the loop (the timestamps are the broker's either way).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.structs import RecordMetadata

from bench.fold import FoldTopic, output_span_s
from bench.workload import PARTITIONS, unique
from schemas.records import Refusal, event_of_record
from streams.agents.transactional import (
    committed_reader,
    send_now,
    start_fencing,
    stop_quietly,
)
from streams.config import Settings
from streams.kafka_clients import KafkaConnection

FETCH_RECORDS = 500
"""Records taken per fetch: the fold's ``MAX_RECORDS`` (a commit can fall after any fetch)."""

LINGER_MS = 50
"""The fold's producers' linger (only the ``send`` variant lingers: batches are sent closed)."""

OUTPUT_BYTES = 100
"""Size of the output record's value (``task.ready`` and ``task.completed`` values are ~100 B)."""

CHANGELOG_BYTES = 800
"""Size of the changelog-like record's value (about a task's encoded state)."""

TIMEOUT_S = 1800.0
"""The loop, and then the reader, give up after this long."""


@dataclass
class _Lane:
    """One input partition: its transactional producer, where it stands, its open sends."""

    number: int
    producer: AIOKafkaProducer
    next_offset: int = 0
    in_transaction: bool = False
    deliveries: list[asyncio.Future[RecordMetadata]] = field(default_factory=list)
    batches: tuple[Any, Any] | None = None
    """The open batches (aiokafka ``BatchBuilder``s) of the output and the changelog topic."""


class _Ceiling:
    """The loop: fetch, decode, write two records per event, commit per partition."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        lanes: dict[int, _Lane],
        input_topic: str,
        output: str,
        changelog: str,
        group: str,
        batched: bool,
    ) -> None:
        self.consumer = consumer
        self.lanes = lanes
        self.input_topic = input_topic
        self.output = output
        self.changelog = changelog
        self.group = group
        self.batched = batched

    async def run(self, wanted: int, commit_interval_s: float) -> None:
        """Process ``wanted`` records, committing every ``commit_interval_s``, then commit."""
        done, last_commit = 0, time.monotonic()
        deadline = last_commit + TIMEOUT_S
        while done < wanted:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the ceiling loop processed {done} of {wanted} records")
            batches = await self.consumer.getmany(timeout_ms=100, max_records=FETCH_RECORDS)
            for tp, records in batches.items():
                lane = self.lanes[tp.partition]
                if not lane.in_transaction:
                    await lane.producer.begin_transaction()
                    lane.in_transaction = True
                if self.batched:
                    await self._send_batches(lane, records)
                else:
                    await self._send_each(lane, records)
                lane.next_offset = records[-1].offset + 1
                done += len(records)
            now = time.monotonic()
            if now - last_commit >= commit_interval_s:
                await self._commit_all()
                last_commit = now
        await self._commit_all()

    async def _send_each(self, lane: _Lane, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """One ``send`` per record, as the fold writes (the producer batches them)."""
        producer, partition = lane.producer, lane.number
        for record in records:
            key, output, state = _transform(record)
            lane.deliveries.append(
                await producer.send(self.output, output, key=key, partition=partition)
            )
            lane.deliveries.append(
                await producer.send(self.changelog, state, key=key, partition=partition)
            )

    async def _send_batches(self, lane: _Lane, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Append to the partition's open batches; a full one is sent and replaced."""
        producer = lane.producer
        if lane.batches is None:
            lane.batches = (producer.create_batch(), producer.create_batch())
        outputs, states = lane.batches
        for record in records:
            key, output, state = _transform(record)
            if outputs.append(key=key, value=output, timestamp=None) is None:
                await self._send_batch(lane, outputs, self.output)
                outputs = producer.create_batch()
                outputs.append(key=key, value=output, timestamp=None)
            if states.append(key=key, value=state, timestamp=None) is None:
                await self._send_batch(lane, states, self.changelog)
                states = producer.create_batch()
                states.append(key=key, value=state, timestamp=None)
        lane.batches = (outputs, states)

    async def _send_batch(self, lane: _Lane, batch: Any, topic: str) -> None:
        """Send ``batch`` (aiokafka's ``BatchBuilder``) unless empty, closed: it does not linger."""
        if batch.record_count():
            batch.close()
            sent = await lane.producer.send_batch(batch, topic, partition=lane.number)
            lane.deliveries.append(sent)

    async def _commit_all(self) -> None:
        """Commit every open transaction, all partitions at once."""
        lanes = [lane for lane in self.lanes.values() if lane.in_transaction]
        await asyncio.gather(*(self._commit(lane) for lane in lanes))

    async def _commit(self, lane: _Lane) -> None:
        """Flush the partition's sends, wait for every acknowledgement, add the offset, commit."""
        if lane.batches is not None:
            outputs, states = lane.batches
            lane.batches = None
            await self._send_batch(lane, outputs, self.output)
            await self._send_batch(lane, states, self.changelog)
        await send_now(lane.producer)
        for delivery in lane.deliveries:
            await delivery
        offsets = {TopicPartition(self.input_topic, lane.number): lane.next_offset}
        await lane.producer.send_offsets_to_transaction(offsets, self.group)
        await lane.producer.commit_transaction()
        lane.in_transaction = False
        lane.deliveries = []


def _transform(record: ConsumerRecord[bytes, bytes]) -> tuple[bytes, bytes, bytes]:
    """The record's key (the task id), output value and changelog-like value.

    Both values are the event's id (and kind) padded to size: their bytes cost nothing to make,
    so what is measured is the decode and the plumbing. A record the fold would refuse still
    gets both (keyed by its own key), so every event has its output.
    """
    event = event_of_record(record.key, record.value or b"")
    if isinstance(event, Refusal):
        key, head = record.key or b"", event.reason.encode()
    else:
        key = event.task_id.encode()
        head = f"{event.event_id} {type(event.payload).__name__}".encode()
    return key, head.ljust(OUTPUT_BYTES), head.ljust(CHANGELOG_BYTES)


async def _create_topics(bootstrap: str, output: str, changelog: str) -> None:
    """The output topic (stamped by the broker) and the compacted changelog-like one."""
    admin = KafkaConnection(bootstrap).admin()
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    output, PARTITIONS, 1, topic_configs={"message.timestamp.type": "LogAppendTime"}
                ),
                NewTopic(changelog, PARTITIONS, 1, topic_configs={"cleanup.policy": "compact"}),
            ]
        )
    finally:
        await admin.close()


async def ceiling_rate(
    bootstrap: str, topic: FoldTopic, commit_interval_s: float, batched: bool = True
) -> float:
    """Events/s of the bare exactly-once loop over ``topic`` (see the module's docstring).

    ``batched``: write with aiokafka's batch API (else one ``send`` per record).

    Raises:
        RuntimeError: the loop or the reader did not finish within ``TIMEOUT_S``.
    """
    name = unique("ceiling")
    output, changelog = f"{name}.output", f"{name}.changelog"
    await _create_topics(bootstrap, output, changelog)
    settings = Settings(bootstrap_servers=bootstrap, app_id=name)
    group = f"{name}-group"
    consumer = committed_reader(settings, group)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic.topics.events, p) for p in range(PARTITIONS)])
        producers = await start_fencing(
            settings, "ceiling", frozenset(range(PARTITIONS)), LINGER_MS, (output, changelog)
        )
        try:
            lanes = {p: _Lane(p, producer) for p, producer in producers.items()}
            loop = _Ceiling(consumer, lanes, topic.topics.events, output, changelog, group, batched)
            await loop.run(topic.events, commit_interval_s)
        finally:
            await asyncio.gather(*(stop_quietly(producer) for producer in producers.values()))
    finally:
        await consumer.stop()
    span_s = await output_span_s(bootstrap, output, output, topic.events, TIMEOUT_S)
    return topic.events / span_s
