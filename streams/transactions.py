"""faust's exactly-once, made to hold for the scheduler agent; and faust's consumer, adapted.

The fold does its own transactions (``streams.agents.fold``, docs/exactly-once.md). The
scheduler agent still runs under faust's ``exactly_once``, corrected the same way in spirit:

- :func:`transactional_id_for` names the transaction of the partition an event was *read* from;
  the scheduler sends every effect of the event into it, wherever the record is going (faust
  would pick the transaction of the *destination* partition, which another worker may own).
- :class:`SourcePartitionTransactions` commits a partition's transaction only between two
  events (never half-way through one), after every table changelog write of the events so far
  has been delivered into it.

The consumer (:class:`_ConsumerThread`) asks the broker for a changelog's last stable offset
when recovering, and never fetches the topics faust subscribes to only so that its assignor
places their partitions (``task.events``, read by the fold's own consumer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import faust
from aiokafka.errors import IllegalOperation
from faust.tables.table import Table
from faust.transport.consumer import TransactionManager
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, AppT, EventT
from faust.types.tuples import FutureMessage

log = logging.getLogger(__name__)

STUCK_WRITE_S = 10.0
"""How long a commit waits for a changelog write before it reports the write as stuck."""


class ProcessingGate:
    """Held while one event is processed; a commit waits for it, so commits fall between events.

    Also collects the changelog writes made since the last commit, which the commit must see
    delivered into the open transactions before it ends them.
    """

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.pending_writes: list[FutureMessage] = []
        self.rebalancing = False

    async def drain(self, app: AppT) -> None:
        """Wait until every changelog write made so far was delivered.

        A write that is not delivered within :data:`STUCK_WRITE_S` is logged, with the state of
        every transactional producer, once per stall: a stall here holds the commit, and Kafka
        aborts a transaction left open for its timeout (60 s).
        """
        while self.pending_writes:
            writes, self.pending_writes = self.pending_writes, []
            delivered = asyncio.gather(*writes)
            try:
                await asyncio.wait_for(asyncio.shield(delivered), STUCK_WRITE_S)
            except TimeoutError:
                log.error(
                    "changelog writes not delivered after %.0f s: %s",
                    STUCK_WRITE_S,
                    describe_producers(app),
                )
                await delivered


def describe_producers(app: AppT) -> str:
    """The state of each transactional producer of ``app``, for diagnosing a stalled commit."""
    producers: dict[str, Any] = getattr(app.producer, "_transaction_producers", {})
    parts = []
    for transactional_id, producer in sorted(producers.items()):
        manager = producer._txn_manager
        accumulator = producer._message_accumulator
        parts.append(
            f"{transactional_id}: state={manager.state.name}"
            f" pending_partitions={sorted(map(str, manager._pending_txn_partitions))}"
            f" partitions={len(manager._txn_partitions)}"
            f" pending_offsets={len(manager._pending_txn_offsets)}"
            f" batches={sum(len(b) for b in accumulator._batches.values())}"
            f" muted={sorted(map(str, producer._sender._muted_partitions))}"
            f" in_flight={sorted(producer._sender._in_flight)}"
        )
    return "; ".join(parts) or "no transactional producers"


def gate_of(app: AppT) -> ProcessingGate:
    """The app's gate (one per app, created on first use)."""
    gate: ProcessingGate | None = getattr(app, "_orchestrator_gate", None)
    if gate is None:
        gate = ProcessingGate()
        app._orchestrator_gate = gate  # type: ignore[attr-defined]
    return gate


class TrackedTable(Table[Any, Any]):
    """A faust table whose changelog writes are tracked until the next commit.

    ``source_topic`` is the topic whose events write the table: its changelog writes belong to
    the transactions of that topic's partitions (see :class:`SourcePartitionTransactions`).
    """

    source_topic: str = ""

    def send_changelog(self, *args: Any, **kwargs: Any) -> FutureMessage:
        future = super().send_changelog(*args, **kwargs)
        gate_of(self.app).pending_writes.append(future)
        return future


class SourcePartitionTransactions(TransactionManager):
    """faust's transaction manager, committing only between events and after table writes.

    Changelog writes join the transaction of their table's *source* partition. faust would pick
    the transaction of the changelog topic's own topic group, which is not the source topic's
    when an app has several agents: the write then lands in a transaction that commits only
    when *that* group consumes something on the partition, possibly never, and its open
    transaction hides the changelog from ``read_committed`` readers such as table recovery.
    """

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Any:
        source = _changelog_sources(self.app).get(topic)
        if source is None or partition is None:
            return await super().send(topic, key, value, partition, timestamp, headers)
        group = self.app.assignor.group_for_topic(source)
        transaction = f"{self.app.conf.id}-{group}-{partition}"
        return await self.producer.send(
            topic, key, value, partition, timestamp, headers, transactional_id=transaction
        )

    async def commit(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        gate = gate_of(self.app)
        async with gate.lock:
            if gate.rebalancing:
                # the partitions may already belong to another worker, which restores their
                # state from the changelog and reads their committed offsets: a commit from here
                # now could land after it read them, and it would process the events again
                return False
            await gate.drain(self.app)
            try:
                return await super().commit(offsets, start_new_transaction=start_new_transaction)
            except IllegalOperation as exc:
                # faust's periodic commit can run after the stop-time commit ended the
                # transactions; nothing was sent since, so nothing is lost by skipping it
                log.info("commit skipped: %s", exc)
                return False


def _changelog_sources(app: AppT) -> dict[str, str]:
    """Changelog topic name -> source topic name, for every tracked table of ``app``."""
    sources: dict[str, str] | None = getattr(app, "_orchestrator_changelog_sources", None)
    if sources is None:
        sources = {
            table.changelog_topic.get_topic_name(): table.source_topic
            for table in app.tables.values()
            if isinstance(table, TrackedTable) and table.source_topic
        }
        app._orchestrator_changelog_sources = sources  # type: ignore[attr-defined]
    return sources


def transactional_id_for(app: AppT, event: EventT[Any] | None) -> str | None:
    """The transaction of the partition ``event`` was read from (None outside transactions)."""
    if event is None or not app.in_transaction:
        return None
    topic, partition = event.message.topic, event.message.partition
    group = app.assignor.group_for_topic(topic)
    return f"{app.conf.id}-{group}-{partition}"


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread, asking the broker for a partition's end (LSO) when recovering.

    Under transactions faust answers "highwater" from the last fetch response, which a
    partition just assigned has not had: it reads -1, so recovery believes a changelog is empty
    and restores nothing (or crashes with a ConsistencyError when RocksDB knows better). A
    ``read_committed`` consumer's ``end_offsets`` asks the broker for the last stable offset.
    """

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        consumer = self._ensure_consumer()
        ends: Mapping[TP, int] = await consumer.end_offsets(partitions)
        return ends

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: set[TP],
        timeout: float | None = None,  # noqa: ASYNC109 (faust's signature)
        max_records: int | None = None,
    ) -> Any:
        # topics faust subscribes to only to own their partitions (task.events: the fold reads
        # it with a consumer of its own) are never fetched
        unfetched = _unfetched_topics(self.consumer.app)
        if unfetched:
            held = [tp for tp in consumer.assignment() if tp.topic in unfetched]
            if held:
                consumer.pause(*held)
            active_partitions = {tp for tp in active_partitions if tp.topic not in unfetched}
        return await super()._fetch_records(consumer, active_partitions, timeout, max_records)

    def verify_event_path(self, now: float, tp: TP) -> None:
        if tp.topic not in _unfetched_topics(self.consumer.app):
            super().verify_event_path(now, tp)


def _unfetched_topics(app: AppT) -> set[str]:
    topics: set[str] = getattr(app, "_orchestrator_unfetched", set())
    return topics


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


def install(app: faust.App) -> None:
    """Make ``app`` use :class:`SourcePartitionTransactions` (and a consumer whose recovery
    sees the changelogs' real ends); call before the worker starts."""
    app.transport.TransactionManager = SourcePartitionTransactions  # type: ignore[misc]
    app.transport.Consumer = _Consumer  # type: ignore[misc]
    gate = gate_of(app)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def commit_then_freeze(app: Any, revoked: Any, **kwargs: Any) -> None:
        # faust waits for this before the rebalance goes on. Commit what was processed (as
        # Kafka Streams does on revocation): a transaction left open across the rebalance would
        # get the outputs of the same events twice, once now and once when they are processed
        # again after recovery rolls the table back to the changelog. Then no commit until the
        # new assignment is known.
        try:
            # commit() returns without committing if a periodic commit is under way; that one
            # may not hold the latest events, so commit again, unconditionally
            await app.consumer.commit()
            await app.consumer.force_commit()
        except Exception:
            log.exception("commit on revocation failed; the new owner processes those events again")
        async with gate.lock:
            gate.rebalancing = True

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def thaw_commits(app: Any, assigned: Any, **kwargs: Any) -> None:
        gate.rebalancing = False
