"""The run-time settings on ``orchestrator.config``: written, read to the end, followed.

The rules (scopes, what holds) are the pure core's (:mod:`streams.domain.config_events`);
this module moves the records. The topic is written with a plain idempotent producer (a
change is one record, acknowledged by every in-sync replica before the call returns) and read
by the CLI (``config show``/``history``), by a worker at start (to write what its ``--config``
changes), by each client (:class:`ConfigFollower`: a new task's default policy), and by the
schedulers, which fold a platform's ``rate_limits`` in their own transactions
(``streams.agents.scheduler``).
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from schemas.records import decode_config, encode_config
from streams.config import Settings, file_settings
from streams.domain.config_events import ANY, ConfigChange, ConfigTable
from streams.errors import InfrastructureError, SchemaError
from streams.partitions import partitioner

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 30.0
"""How long reading the topic to its end may take before it is an error."""
TOPIC_WAIT_S = 10.0
"""How long a topic created a moment ago may take to show in the brokers' metadata."""


def changed_by_cli() -> str:
    """The ``by`` of a change written from the command line: ``cli user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli {user}@{socket.gethostname()}"


async def write_changes(settings: Settings, changes: Iterable[ConfigChange]) -> int:
    """Write ``changes`` and wait until each is acknowledged; return how many were written.

    Raises:
        InfrastructureError: Kafka refused or could not be reached.
    """
    producer = settings.kafka.producer(
        enable_idempotence=True,
        acks="all",
        partitioner=partitioner,  # by platform, as the schedulers' partitions
    )
    written = 0
    try:
        await producer.start()
        for change in changes:
            sent = await producer.send(
                settings.topics.config, encode_config(change), key=change.key.encode()
            )
            await sent
            written += 1
    except KafkaError as exc:
        raise InfrastructureError(
            f"cannot write settings to {settings.topics.config}: {exc}", retriable=True
        ) from exc
    finally:
        await producer.stop()
    return written


async def read_changes(settings: Settings) -> list[ConfigChange]:
    """Every change the topic holds, partition after partition, each in log order (a
    setting's changes share a partition); none if the topic does not exist (no worker of this
    version started yet). Records that do not decode are skipped.

    Raises:
        InfrastructureError: Kafka could not be reached, or the end was not reached in time.
    """
    consumer = _consumer(settings)
    try:
        await consumer.start()
        tps = await _assign_all(consumer, settings.topics.config, missing_ok=True)
        changes = await _read_to_end(consumer, tps, time.monotonic() + READ_TIMEOUT_S)
    except KafkaError as exc:
        raise InfrastructureError(
            f"cannot read {settings.topics.config}: {exc}", retriable=True
        ) from exc
    finally:
        await consumer.stop()
    return changes


async def read_table(settings: Settings) -> ConfigTable:
    """The settings in force now."""
    table = ConfigTable()
    for change in await read_changes(settings):
        table.apply(change)
    return table


def worker_changes(path: Path, table: ConfigTable) -> list[ConfigChange]:
    """What a worker started with the ``--config`` file ``path`` writes: each run-time setting
    the file holds whose value is not the one in force (the last worker started wins)."""
    by = f"worker {socket.gethostname()}:{os.getpid()} --config {path}"
    now_ms = int(time.time() * 1000)
    return [
        ConfigChange(name, platform, ANY, value, now_ms, by)
        for name, platform, value in file_settings(path)
        if table.get(name, platform, ANY) != value
    ]


class ConfigFollower:
    """The settings in force, for a client: read to the end when the client starts, then kept
    current by a consumer that fetches in the background (each use takes what has arrived,
    without waiting)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumer: AIOKafkaConsumer | None = None
        self.table = ConfigTable()

    async def start(self) -> None:
        """Read the topic to its end (the caller bounds the wait). A topic that does not exist
        yet (no worker ever started) sets nothing, and is not followed.

        Raises:
            KafkaError: Kafka could not be reached.
        """
        if self._consumer is not None:
            return
        consumer = _consumer(self._settings)
        try:
            await consumer.start()
            tps = await _assign_all(consumer, self._settings.topics.config, missing_ok=True)
            if not tps:
                await consumer.stop()
                return
            deadline = time.monotonic() + READ_TIMEOUT_S
            for change in await _read_to_end(consumer, tps, deadline):
                self.table.apply(change)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer

    async def refresh(self) -> ConfigTable:
        """The table, with every change fetched in the background so far (no wait)."""
        if self._consumer is not None:
            batches = await self._consumer.getmany(timeout_ms=0)
            for records in batches.values():
                for change in _decoded(records):
                    self.table.apply(change)
        return self.table

    async def close(self) -> None:
        """Stop following. Never raises: with the broker gone, aiokafka's ``stop`` can end in
        the cancellation of its own fetch task, which is no failure of the caller's."""
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        stopping = asyncio.ensure_future(consumer.stop())
        await asyncio.wait([stopping])  # the caller's own cancellation still propagates
        if not stopping.cancelled() and stopping.exception() is not None:
            log.debug("the settings follower stopped with %r", stopping.exception())


def _consumer(settings: Settings) -> AIOKafkaConsumer:
    return settings.kafka.consumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def _assign_all(
    consumer: AIOKafkaConsumer, topic: str, missing_ok: bool = False
) -> list[TopicPartition]:
    """Assign every partition of ``topic``, from the beginning; none if the topic does not
    exist and ``missing_ok``."""
    deadline = time.monotonic() + (0 if missing_ok else TOPIC_WAIT_S)
    while True:
        # the metadata of this one topic (a consumer without subscriptions tracks none);
        # a topic created a moment ago reaches the brokers' metadata a moment later
        await consumer._client.add_topic(topic)
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            break
        if missing_ok:
            return []
        if time.monotonic() > deadline:
            raise InfrastructureError(
                f"topic {topic} does not exist: start a worker once (it creates the topics)"
            )
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return tps


async def _read_to_end(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], deadline: float
) -> list[ConfigChange]:
    ends = await consumer.end_offsets(tps)
    changes: list[ConfigChange] = []
    by_partition: dict[int, list[ConfigChange]] = {tp.partition: [] for tp in tps}
    while not await _at_ends(consumer, ends):
        if time.monotonic() > deadline:
            raise InfrastructureError(f"{tps[0].topic} was not read to its end in time")
        batches = await consumer.getmany(*tps, timeout_ms=200)
        for tp, records in batches.items():
            by_partition[tp.partition].extend(_decoded(records))
    for partition in sorted(by_partition):
        changes.extend(by_partition[partition])
    return changes


async def _at_ends(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


def _decoded(records: Iterable[object]) -> list[ConfigChange]:
    found = []
    for record in records:
        value = getattr(record, "value", None)
        if value is None:
            continue  # compaction's tombstone: there are none, but a user may write one
        try:
            found.append(decode_config(value))
        except SchemaError:
            continue  # not a setting: ignored by everyone alike
    return found
