"""Reading and writing topics with plain aiokafka in tests, as any other client would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from streams import partitions as partitions_module
from streams.domain.signatures import SIGNATURE_HEADER
from streams.signing import read_key

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


async def produce_as_worker(
    bootstrap_servers: str, keys_topic: str, topic: str, records: list[tuple[bytes, bytes]]
) -> None:
    """Write ``(key, value)`` records signed as a worker signs them: the test plays the
    orchestrator itself (an operator, whose principal may read the keys topic), not a client.

    Raises:
        AssertionError: no worker has made the signing key yet.
    """
    signing = await read_key(bootstrap_servers, keys_topic)
    assert signing is not None, f"no signing key in {keys_topic}: start a worker first"
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for key, value in records:
            headers = [(SIGNATURE_HEADER, signing.sign(key, value))]
            await producer.send(topic, value, key=key, headers=headers)
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
    """The partition of task ``key`` (its group's, see ``streams.partitions``)."""
    return partitions_module.partition_of(key.encode("utf-8"), partitions)


# -- offsets, single records and topic configs (tests/integration/test_no_silent_loss.py)


async def send_all(
    bootstrap_servers: str,
    topic: str,
    records: list[tuple[bytes | None, bytes]],
    max_request_size: int = 3_000_000,
) -> list[tuple[int, int]]:
    """Write ``(key, value)`` records in order; return each one's ``(partition, offset)``.

    ``max_request_size`` is above every topic's limit, so that only the broker judges sizes.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_request_size=max_request_size,
    )
    await producer.start()
    try:
        deliveries = [await producer.send(topic, value, key=key) for key, value in records]
        metadata = await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metadata]


async def committed_offsets(
    bootstrap_servers: str, group: str, topic: str, partitions: int
) -> dict[int, int]:
    """The offsets ``group`` committed on ``topic`` (-1 where it committed none)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)  # no group membership: only an offset fetch
        offsets = {}
        for tp in tps:
            committed = await consumer.committed(tp)
            offsets[tp.partition] = -1 if committed is None else committed
        return offsets
    finally:
        await consumer.stop()


async def wait_committed(
    bootstrap_servers: str,
    group: str,
    topic: str,
    partitions: int,
    targets: dict[int, int],
    timeout_s: float = 60.0,
) -> dict[int, int]:
    """Wait until ``group``'s committed offset on each partition is at least ``targets[p]``.

    Returns the committed offsets last read; the caller asserts on them.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        offsets = await committed_offsets(bootstrap_servers, group, topic, partitions)
        reached = all(offsets[p] >= target for p, target in targets.items())
        if reached or time.monotonic() > deadline:
            return offsets
        await asyncio.sleep(0.2)


async def end_offsets(
    bootstrap_servers: str, topic: str, partitions: int, committed: bool = True
) -> dict[int, int]:
    """Per partition, the last stable offset (``committed``) or the high watermark."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed" if committed else "read_uncommitted",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: ends[tp] for tp in tps}
    finally:
        await consumer.stop()


async def read_range(
    bootstrap_servers: str, topic: str, partition: int, start: int, end: int
) -> list[Record]:
    """The committed records of one partition with ``start <= offset < end`` (``end`` <= LSO)."""
    if end <= max(start, 0):
        return []  # (and aiokafka fails to stop a consumer stopped right after its start)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
    )
    await consumer.start()
    kept: list[Record] = []
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, max(start, 0))
        while await consumer.position(tp) < end:
            batches = await consumer.getmany(tp, timeout_ms=500)
            kept.extend(r for r in batches.get(tp, []) if start <= r.offset < end)
    finally:
        await consumer.stop()
    return kept


async def topic_config(bootstrap_servers: str, topic: str) -> dict[str, str]:
    """The configs set on ``topic`` itself (not the broker's defaults)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    dynamic_topic_config = 1  # config_source of a topic-level setting
    return {
        name: value
        for response in responses
        for resource in response.resources
        for name, value, _read_only, source, *_ in resource[4]
        if source == dynamic_topic_config
    }


async def set_topic_config(bootstrap_servers: str, topic: str, changes: dict[str, str]) -> None:
    """Change some configs of ``topic``, keeping its others (AlterConfigs replaces them all)."""
    config = {**await topic_config(bootstrap_servers, topic), **changes}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        responses = await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs=config)]
        )
    finally:
        await admin.close()
    errors = [r for response in responses for r in response.resources if r[0] != 0]
    assert not errors, f"altering {topic}: {errors}"


async def wait_refuses_larger_than(
    bootstrap_servers: str, topic: str, size: int, timeout_s: float = 30.0
) -> bool:
    """Wait until the broker refuses a record of ``size`` bytes on ``topic`` as too large.

    The probe has no key, so a compacted topic refuses it in any case and nothing is written;
    only the error says whether the size limit is in force.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, max_request_size=size + 65_536)
    await producer.start()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                await producer.send_and_wait(topic, b"\x00" * size, key=None, partition=0)
            except MessageSizeTooLargeError:
                return True
            except KafkaError:
                pass  # refused for its missing key: the size limit is not in force yet
            await asyncio.sleep(0.2)
        return False
    finally:
        await producer.stop()
