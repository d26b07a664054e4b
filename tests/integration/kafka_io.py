"""Reading and writing topics with plain aiokafka in tests, as any other client would."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

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
    """The partition the default (murmur2) partitioner gives ``key``, as Kafka clients do."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions
