"""The worker's plain (non-transactional) producer, shared by the timer, ticks and executors.

Records written outside the processing of an event cannot join a transaction; they are events
with derived ids (or ticks) whose repetition is harmless. One idempotent producer serves them all,
started on first use.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from streams.kafka_clients import KafkaConnection
from streams.partitions import partitioner


class SharedProducer:
    """An idempotent ``acks=all`` producer, started once on first use."""

    def __init__(self, kafka: KafkaConnection) -> None:
        self._kafka = kafka
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> AIOKafkaProducer:
        """The started producer."""
        async with self._lock:
            if self._producer is None:
                producer = self._kafka.producer(
                    enable_idempotence=True,
                    acks="all",
                    max_request_size=2_000_000,
                    partitioner=partitioner,  # a task's group places it (streams.partitions)
                )
                await producer.start()
                self._producer = producer
            return self._producer

    async def send(
        self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        """Queue one record (delivery is awaited by Kafka's own batching, not here)."""
        producer = await self.get()
        await producer.send(topic, value, key=key, headers=headers or [])

    async def stop(self) -> None:
        """Flush and close."""
        async with self._lock:
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None
