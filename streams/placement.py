"""faust's consumer, made to place partitions without fetching them.

The fold and the scheduler read their partitions with consumers of their own and commit their
own transactions (``streams.agents.transactional``, docs/exactly-once.md). faust still keeps
the worker's consumer group: its agents subscribe to ``task.events``, ``task.ready`` and
``scheduler.signals`` so that its assignor places their partitions (co-partitioned, one owner
each) and its topic router sends HTTP reads to the owner. Its consumer must never fetch those
topics: :class:`_ConsumerThread` pauses them and leaves them out of every fetch, and does not
report them as idle. This is the one place the project reaches into faust's consumer (two
overridden methods of ``faust.transport.drivers.aiokafka.AIOKafkaConsumerThread``).
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, AppT


def place_only(app: AppT, *topics: str) -> None:
    """Let faust's consumer own ``topics``' partitions without ever fetching them."""
    held: set[str] = getattr(app, "_orchestrator_unfetched", set())
    app._orchestrator_unfetched = held | set(topics)  # type: ignore[attr-defined]


def _placed_only(app: AppT) -> set[str]:
    topics: set[str] = getattr(app, "_orchestrator_unfetched", set())
    return topics


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread, never fetching the topics it only places."""

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: set[TP],
        timeout: float | None = None,  # noqa: ASYNC109 (faust's signature)
        max_records: int | None = None,
    ) -> Any:
        placed = _placed_only(self.consumer.app)
        if placed:
            held = [tp for tp in consumer.assignment() if tp.topic in placed]
            if held:
                consumer.pause(*held)
            active_partitions = {tp for tp in active_partitions if tp.topic not in placed}
        return await super()._fetch_records(consumer, active_partitions, timeout, max_records)

    def verify_event_path(self, now: float, tp: TP) -> None:
        if tp.topic not in _placed_only(self.consumer.app):
            super().verify_event_path(now, tp)


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


def install(app: faust.App) -> None:
    """Make ``app`` use the consumer that places without fetching; call before it starts."""
    app.transport.Consumer = _Consumer  # type: ignore[misc]
