"""Reading and writing topics with plain aiokafka in tests, as any other client would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from streams import task_store

Record = ConsumerRecord[bytes, bytes]


async def produce(bootstrap_servers: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Write ``(key, value)`` records and wait until the broker has them all."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def read_until(
    bootstrap_servers: str,
    topic: str,
    done: Callable[[list[Record]], bool],
    timeout_s: float = 60.0,
    keep: Callable[[Record], bool] = lambda _record: True,
) -> list[Record]:
    """Committed records of ``topic`` from the beginning, until ``done(kept)`` or the timeout.

    Returns what was read; the caller asserts on it (a timeout is not an error here).
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        group_id=None,
    )
    await consumer.start()
    kept: list[Record] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(kept) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                kept.extend(r for r in records if keep(r))
    finally:
        await consumer.stop()
    return kept


async def read_to_end(
    bootstrap_servers: str,
    topic: str,
    partitions: int,
    keep: Callable[[Record], bool] = lambda _record: True,
    settle_timeout_s: float = 90.0,
    committed: bool = True,
) -> list[Record]:
    """Every committed record of ``topic``, to its end: call once no writer is left.

    Waits until no transaction is open on any partition (the last stable offset equals the
    high watermark; an abandoned transaction is aborted by the broker after its timeout), then
    reads each partition up to that end. Unlike :func:`read_until` it never stops early, so it
    counts duplicates and missing records exactly. ``committed=False`` reads aborted records too
    (for diagnosis). Raises ``TimeoutError`` if a transaction is still open after
    ``settle_timeout_s``.
    """
    committed_reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
        group_id=None,
    )
    uncommitted = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    await committed_reader.start()
    await uncommitted.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        deadline = time.monotonic() + settle_timeout_s
        while True:
            stable = await committed_reader.end_offsets(tps)
            high = await uncommitted.end_offsets(tps)
            if stable == high:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: transactions still open: {stable} < {high}")
            await asyncio.sleep(0.5)
        reader = committed_reader if committed else uncommitted
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        kept: list[Record] = []
        remaining = {tp for tp in tps if stable[tp] > 0}
        while remaining:
            batches = await reader.getmany(*remaining, timeout_ms=500, max_records=10_000)
            for records in batches.values():
                kept.extend(r for r in records if keep(r))
            for tp in list(remaining):
                if await reader.position(tp) >= stable[tp]:
                    remaining.discard(tp)
    finally:
        await committed_reader.stop()
        await uncommitted.stop()
    return kept


class Follower:
    """Follows a topic's committed records from its current end, for records written later.

    ``async with Follower(...) as follower`` fixes the start positions before the test writes
    anything, so no record of the test can be missed.
    """

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap_servers,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            isolation_level="read_committed",
            group_id=None,
        )

    async def __aenter__(self) -> Follower:
        await self._consumer.start()
        for partition in self._consumer.assignment():
            await self._consumer.position(partition)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._consumer.stop()

    async def next_batch(self, timeout_ms: int = 200) -> list[Record]:
        """The records that arrived since the last call (possibly none)."""
        batches = await self._consumer.getmany(timeout_ms=timeout_ms)
        return [record for records in batches.values() for record in records]


def partition_of(key: str, partitions: int) -> int:
    """The partition the default (murmur2) partitioner gives the task id ``key``."""
    return task_store.partition_of(key.encode("utf-8"), partitions)
