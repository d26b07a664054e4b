"""The fold: ``task.events`` → the ``tasks`` table, and the effects of each event, exactly once.

For each record: decode it, apply the pure fold to the task's state, store the new state, and
write the effects (``task.ready``, ``task.completed``, follow-up events on ``task.events``,
refused input on ``task.events.dlq``). Nothing here decides anything about a task.

Exactly once is done the way Kafka Streams does it, by this module alone (see
docs/exactly-once.md). faust keeps the consumer group and says which partitions of
``task.events`` this worker owns (its topic router sends each task's reads here); the fold
reads those partitions with a consumer of its own, and each partition has a transactional
producer of its own (``{app_id}-fold-{partition}``). Everything one record causes (its
outputs, its state's changelog record, and the partition's input offset) is written in that
producer's transaction, so it is committed or aborted as one. When a worker gets a partition it
starts the partition's producer first, which fences the previous owner and ends its open
transaction; only then does it read the changelog (to its last stable offset) and the committed
input offset, so it starts exactly where the committed state ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalOperation, KafkaError
from aiokafka.structs import RecordMetadata
from mode import Service

from schemas.records import Refusal, event_of_record
from streams.app import Runtime
from streams.domain import Effect, Rejected, apply, state_from_json, state_to_json
from streams.domain.timers import next_deadline
from streams.outputs import effect_record
from streams.task_store import PartitionStore
from streams.topics import tasks_changelog

log = logging.getLogger(__name__)

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}".encode()
"""The ``worker`` header of every output: which process wrote it."""

COMMIT_TIMEOUT_S = 30.0
"""A commit that takes longer fails; the partition is reopened (its events are folded again)."""

REVOKE_WAIT_S = 5.0
"""How long a revocation waits for the fold to commit and close its partitions."""


_TRANSACTION_ERRORS = (KafkaError, IllegalOperation)
"""What a fenced or failed producer raises (aiokafka's IllegalOperation is no KafkaError)."""


class _Superseded(Exception):
    """The assignment changed (or the worker is stopping) while partitions were being opened."""


MAX_RECORDS = 500
"""Records taken per fetch (a commit can fall after any fetch)."""


def fold_group(app_id: str) -> str:
    """The consumer group whose committed offsets say where the fold resumes."""
    return f"{app_id}-fold"


def register(runtime: Runtime) -> FoldService:
    """Add the fold to ``runtime.app``: its service, and the hooks that follow the assignment."""
    app = runtime.app
    service = FoldService(runtime)
    runtime.fold = service
    events = runtime.settings.topics.events
    app._orchestrator_unfetched = {events}  # type: ignore[attr-defined]

    # faust must subscribe to task.events for its assignor and topic router to place the
    # partitions and route task reads; its consumer never fetches them (streams.transactions)
    @app.agent(runtime.events_topic, name="fold", concurrency=1)
    async def owns_task_events(stream: Any) -> None:
        async for event in stream.events():
            log.error("faust delivered %s[%d] to the fold", events, event.message.partition)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def close_partitions(app: Any, revoked: Any, **kwargs: Any) -> None:
        await service.revoke()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def open_partitions(app: Any, assigned: Any, **kwargs: Any) -> None:
        service.assign(frozenset(tp.partition for tp in assigned if tp.topic == events))

    app.service(service)  # type: ignore[arg-type]
    return service


@dataclass
class _Partition:
    """One open partition of ``task.events``: its producer, its table, where it stands."""

    number: int
    producer: AIOKafkaProducer
    store: PartitionStore
    next_offset: int
    """The offset of the next record to fold: everything before it is folded."""
    in_transaction: bool = False
    last_changelog_write: asyncio.Future[RecordMetadata] | None = None
    broken: bool = False
    """Its transaction failed part-way: it must not commit; the partition is reopened."""

    def break_off(self) -> None:
        """Give up the open transaction: nothing of it may commit, its writes are forgotten."""
        self.broken = True
        self.store.discard()


class FoldService(Service):
    """Folds the partitions of ``task.events`` faust assigns to this worker.

    One loop does everything (opening partitions, fetching, folding, committing), so none of
    it interleaves; faust's rebalance callbacks only say what the assignment should be.
    ``lock`` is held while records are folded or committed: a reader holding it sees the
    table between two records, with :meth:`positions` saying which.
    """

    def __init__(self, runtime: Runtime, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runtime = runtime
        settings = runtime.settings
        self.group = fold_group(settings.app_id)
        self.changelog = tasks_changelog(settings.app_id)
        self.lock = asyncio.Lock()
        self._partitions: dict[int, _Partition] = {}
        self._wanted: frozenset[int] = frozenset()
        self._wanted_version = 0
        self._open_version = 0
        self._changed = asyncio.Event()
        self._settled = asyncio.Event()
        self._opened = asyncio.Condition()
        self._opening = False
        self._indexed: frozenset[int] = frozenset()
        """The partitions whose tasks the deadline index was last built from."""
        self._stopping = False
        self._last_commit = 0.0
        self._loop_task: asyncio.Future[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def on_start(self) -> None:
        self._loop_task = asyncio.ensure_future(self._run_or_crash())

    async def _run_or_crash(self) -> None:
        try:
            await self.run()
        except Exception as exc:  # the worker must not go on without its fold
            log.exception("the fold stopped")
            await self.crash(exc)

    async def on_stop(self) -> None:
        """Let the loop commit and close its partitions, then end."""
        self._stopping = True
        self._changed.set()
        if self._loop_task is not None:
            await asyncio.wait_for(self._loop_task, COMMIT_TIMEOUT_S + 10)

    # -- what faust's rebalance callbacks call

    def assign(self, partitions: frozenset[int]) -> None:
        """Fold ``partitions`` from now on (and no others)."""
        self._wanted = partitions
        self._wanted_version += 1
        self._settled.clear()
        self._changed.set()

    async def revoke(self) -> None:
        """Stop folding: commit what was folded and close every partition (bounded wait).

        Committing here spares the next owner folding those records again; it is not needed
        for correctness, since that owner fences this worker's producers before it reads.
        """
        busy = bool(self._partitions) or self._opening
        self.assign(frozenset())
        if not busy:
            return  # nothing open, nothing being opened: nothing to commit
        try:
            await asyncio.wait_for(self._settled.wait(), REVOKE_WAIT_S)
        except TimeoutError:
            log.warning("the fold did not close its partitions within %.0f s", REVOKE_WAIT_S)

    # -- what readers see

    @property
    def ready(self) -> bool:
        """True when the open partitions are the assigned ones (nothing to restore)."""
        return self._open_version == self._wanted_version

    def open_partitions(self) -> frozenset[int]:
        """The partitions folded here now (owned, restored and positioned)."""
        return frozenset(self._partitions)

    async def wait_open(self, partition: int, timeout_s: float) -> bool:
        """Wait until ``partition`` is folded here (False if not within ``timeout_s``)."""

        async def opened() -> None:
            async with self._opened:
                await self._opened.wait_for(lambda: partition in self._partitions)

        try:
            await asyncio.wait_for(opened(), timeout_s)
        except TimeoutError:
            return False
        return True

    def positions(self) -> dict[int, int]:
        """Per open partition, the offset of the last record the table reflects (-1: none)."""
        return {p: part.next_offset - 1 for p, part in self._partitions.items()}

    def lags(self) -> dict[int, int]:
        """Per open partition, the records of ``task.events`` not folded yet."""
        consumer = self._consumer
        if consumer is None:
            return {}
        events = self.runtime.settings.topics.events
        lags = {}
        for partition, part in self._partitions.items():
            highwater = consumer.highwater(TopicPartition(events, partition))
            lags[partition] = max(0, (highwater or 0) - part.next_offset)
        return lags

    # -- the loop

    async def run(self) -> None:
        """Fold until the worker stops; on the way out, commit and close."""
        settings = self.runtime.settings
        consumer = self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=self.group,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=1 << 20,
        )
        await consumer.start()
        try:
            while not self._stopping:
                try:
                    await self._step(consumer)
                except Exception:
                    # not a bad record (those go to the DLQ) but a failure of the fold itself:
                    # give up every open transaction and start the partitions again
                    log.exception("the fold failed; reopening its partitions")
                    for part in self._partitions.values():
                        part.break_off()
                    self.runtime.metrics.fold_reopens.inc()
                    self._wanted_version += 1
                    await asyncio.sleep(1.0)
        finally:
            await self._close_all(commit=True)
            self.runtime.tasks.close()
            await consumer.stop()

    async def _step(self, consumer: AIOKafkaConsumer) -> None:
        if not self.ready:
            await self._settle(consumer)
        elif not self._partitions:
            self._changed.clear()
            await _wait(self._changed, 1.0)
        else:
            await self._fold_batch(consumer)

    async def _fold_batch(self, consumer: AIOKafkaConsumer) -> None:
        batches = await consumer.getmany(timeout_ms=100, max_records=MAX_RECORDS)
        failed: set[int] = set()
        async with self.lock:
            for tp, records in batches.items():
                part = self._partitions.get(tp.partition)
                if part is None:
                    continue
                try:
                    for record in records:
                        await self._fold(part, record)
                except _TRANSACTION_ERRORS:
                    log.exception("the fold of partition %d failed; reopening it", part.number)
                    part.break_off()
                    failed.add(part.number)
            now = time.monotonic()
            if failed or now - self._last_commit >= self.runtime.settings.commit_interval:
                failed |= await self._commit_all()
                self._last_commit = now
        if failed:
            await self._reopen(failed)

    async def _fold(self, part: _Partition, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.offset < part.next_offset:
            return  # already folded (a fetch from before the last seek)
        if not part.in_transaction:
            await part.producer.begin_transaction()
            part.in_transaction = True
        await _Folding(self, part, record).run()
        part.next_offset = record.offset + 1
        await self.runtime.processed.advance(part.number, record.offset)

    # -- commits

    async def _commit_all(self) -> set[int]:
        """Commit every open transaction; return the partitions whose commit failed."""
        parts = [p for p in self._partitions.values() if p.in_transaction and not p.broken]
        outcomes = await asyncio.gather(*(self._commit(part) for part in parts))
        return {part.number for part, ok in zip(parts, outcomes, strict=True) if not ok}

    async def _commit(self, part: _Partition) -> bool:
        events = TopicPartition(self.runtime.settings.topics.events, part.number)
        try:
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                await part.producer.send_offsets_to_transaction(
                    {events: part.next_offset}, self.group
                )
                await part.producer.commit_transaction()
                checkpoint = None
                if part.last_changelog_write is not None:
                    checkpoint = (await part.last_changelog_write).offset + 1
        except (*_TRANSACTION_ERRORS, TimeoutError):
            log.exception("commit of partition %d failed; its events are folded again", part.number)
            part.break_off()
            self.runtime.metrics.fold_commits.labels("failed").inc()
            return False
        self.runtime.metrics.fold_commits.labels("committed").inc()
        part.store.commit(checkpoint)
        part.in_transaction = False
        part.last_changelog_write = None
        return True

    # -- opening and closing partitions

    async def _settle(self, consumer: AIOKafkaConsumer) -> None:
        """Close every partition, then open the wanted ones (restored and positioned)."""
        version, wanted = self._wanted_version, self._wanted
        await self._close_all(commit=True)
        consumer.assign([])
        if wanted:
            self._opening = True
            try:
                await self._open(consumer, wanted, version)
            except _Superseded:
                log.info("fold: the assignment changed while opening %s", sorted(wanted))
                await self._close_all(commit=False)
                return
            except KafkaError:
                log.exception("opening partitions %s failed; trying again", sorted(wanted))
                await self._close_all(commit=False)
                await asyncio.sleep(1.0)
                return
            finally:
                self._opening = False
        self._open_version = version
        async with self._opened:
            self._opened.notify_all()
        if self.ready:
            self._settled.set()
            log.info("fold: folding partitions %s", sorted(wanted))

    async def _reopen(self, partitions: set[int]) -> None:
        """Reopen failed partitions: a new producer fences the old one; restore; seek."""
        log.warning("reopening partitions %s", sorted(partitions))
        self.runtime.metrics.fold_reopens.inc()
        self._wanted_version += 1  # the loop settles again, with the same partitions

    async def _open(self, consumer: AIOKafkaConsumer, wanted: frozenset[int], version: int) -> None:
        settings = self.runtime.settings
        tasks = self.runtime.tasks
        producers: dict[int, AIOKafkaProducer] = {}
        try:
            for partition in sorted(wanted):
                producers[partition] = AIOKafkaProducer(
                    bootstrap_servers=settings.bootstrap_servers,
                    transactional_id=f"{settings.app_id}-fold-{partition}",
                    linger_ms=50,
                    max_request_size=2_000_000,
                )
            # starting a producer fences the partition's previous owner and ends its open
            # transaction, so the changelog and the committed offset read below are final
            await asyncio.gather(*(producer.start() for producer in producers.values()))
            stores, restored = await self._restore({p: tasks.database(p) for p in wanted}, version)
            tps = [TopicPartition(settings.topics.events, p) for p in sorted(wanted)]
            consumer.assign(tps)
            for tp in tps:
                committed = await consumer.committed(tp)
                start = committed if committed is not None else 0
                if committed is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, committed)
                number = tp.partition
                part = _Partition(number, producers[number], stores[number], start)
                self._partitions[tp.partition] = part
                tasks.open[tp.partition] = part.store
                await self.runtime.processed.advance(tp.partition, start - 1)
        except BaseException:
            for partition, producer in producers.items():
                if partition not in self._partitions:
                    await _stop_quietly(producer)
            raise
        if wanted != self._indexed or restored:
            # the table changed under the index (new partitions, or others' writes restored);
            # otherwise the fold's own tracking kept it current, and a full scan is not needed
            self._rebuild_deadlines()
            self._indexed = wanted

    async def _restore(
        self, stores: dict[int, PartitionStore], version: int
    ) -> tuple[dict[int, PartitionStore], int]:
        """Bring each store up to its changelog's last stable offset.

        Returns:
            The stores, and how many changelog records were applied.

        Raises:
            _Superseded: the assignment changed meanwhile (a long restore is not finished for
                partitions that may no longer be this worker's).
        """
        settings = self.runtime.settings
        restorer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await restorer.start()
        began, restored = time.monotonic(), 0
        try:
            tps = {TopicPartition(self.changelog, p): p for p in stores}
            restorer.assign(list(tps))
            ends = await restorer.end_offsets(list(tps))
            todo = set()
            for tp, partition in tps.items():
                start = stores[partition].checkpoint
                if start > ends[tp]:
                    log.warning(
                        "%s[%d] ends at %d before the local checkpoint %d: "
                        "the topic was replaced; restoring from its start",
                        tp.topic,
                        tp.partition,
                        ends[tp],
                        start,
                    )
                    stores[partition] = self.runtime.tasks.wipe(partition)
                    start = 0
                if start < ends[tp]:
                    restorer.seek(tp, start)
                    todo.add(tp)
            while todo:
                if self._wanted_version != version or self._stopping:
                    raise _Superseded
                batches = await restorer.getmany(*todo, timeout_ms=500)
                for tp, records in batches.items():
                    entries = [(r.key, r.value) for r in records if r.key is not None]
                    stores[tps[tp]].restore(entries, records[-1].offset + 1)
                    restored += len(entries)
                for tp in list(todo):
                    if await restorer.position(tp) >= ends[tp]:
                        stores[tps[tp]].restore([], ends[tp])
                        todo.discard(tp)
        finally:
            await restorer.stop()
        if restored:
            log.info(
                "fold: restored %d task states of partitions %s in %.1f s",
                restored,
                sorted(stores),
                time.monotonic() - began,
            )
        return stores, restored

    async def _close_all(self, commit: bool) -> None:
        """Close every open partition, committing its transaction first if ``commit``."""
        if not self._partitions:
            return
        async with self.lock:
            if commit:
                await self._commit_all()
            parts, self._partitions = list(self._partitions.values()), {}
            self.runtime.tasks.open.clear()
            for part in parts:
                part.store.discard()
        await asyncio.gather(*(_stop_quietly(part.producer) for part in parts))

    def _rebuild_deadlines(self) -> None:
        index = self.runtime.deadlines
        index.clear()
        for key, value in self.runtime.tasks.items():
            index.track(key.decode("utf-8"), next_deadline(state_from_json(value)))
        log.info("deadline index rebuilt: %d tasks", len(index))


def _delivery(future: asyncio.Future[RecordMetadata]) -> asyncio.Future[RecordMetadata]:
    """A send's delivery, whose failure is the commit's to report (not asyncio's, unretrieved)."""
    future.add_done_callback(lambda f: None if f.cancelled() else f.exception())
    return future


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    """Stop a producer; an open transaction is left for the next owner's producer to end."""
    try:
        await asyncio.wait_for(producer.stop(), 10.0)
    except Exception:  # it is being dropped either way
        log.warning("a fold producer did not stop cleanly", exc_info=True)


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)


_Output = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]
"""A record to write: topic, key, value, headers."""


class _Folding:
    """The fold of one record, and its outputs, inside its partition's transaction.

    Everything is decided and encoded before the first send: a bug (an exception) then parks
    the record in the DLQ with nothing else written, and a Kafka error fails the partition's
    transaction as a whole.
    """

    def __init__(
        self, service: FoldService, part: _Partition, record: ConsumerRecord[bytes, bytes]
    ) -> None:
        self._runtime = service.runtime
        self._changelog = service.changelog
        self._topics = service.runtime.settings.topics
        self._part = part
        self._record = record
        # where each output came from: an audit can trace any record back to its event
        self._provenance = [
            ("source.topic", record.topic.encode()),
            ("source.partition", str(record.partition).encode()),
            ("source.offset", str(record.offset).encode()),
            ("worker", WORKER_ID),
        ]

    async def run(self) -> None:
        record = self._record
        key = record.key or b""
        task_event = event_of_record(record.key, record.value or b"")
        if isinstance(task_event, Refusal):
            await self._write([self._dead_letter(task_event.reason, task_event.detail)])
            return
        try:
            stored = self._part.store.get(key)
            state = state_from_json(stored) if stored is not None else None
            outcome = apply(state, task_event)
            new_state = outcome.state if outcome.state is not state else None
            value = state_to_json(new_state) if new_state is not None else None
            outputs = [self._output(effect) for effect in outcome.effects]
        except Exception as exc:  # a bug must not stop the fold: park the event, keep going
            log.exception("fold failed on %s[%d]@%d", record.topic, record.partition, record.offset)
            await self._write(
                [self._dead_letter("processing_error", f"{type(exc).__name__}: {exc}")]
            )
            return
        if new_state is not None and value is not None:
            self._runtime.metrics.observe_fold(state, task_event, new_state)
            self._part.store.put(key, value)
            self._part.last_changelog_write = _delivery(
                await self._part.producer.send(
                    self._changelog, value, key=key, partition=self._part.number
                )
            )
            self._runtime.deadlines.track(task_event.task_id, next_deadline(new_state))
        await self._write(outputs)

    def _output(self, effect: Effect) -> _Output:
        if isinstance(effect, Rejected):
            return self._dead_letter(str(effect.code), effect.reason)
        topic, key, value = effect_record(effect, self._topics, self._record.timestamp)
        return topic, key, value, []

    def _dead_letter(self, reason: str, detail: str) -> _Output:
        self._runtime.metrics.dlq.labels(reason).inc()
        record = self._record
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s",
            record.topic,
            record.partition,
            record.offset,
            reason,
            detail,
        )
        headers = [("reason", reason.encode()), ("detail", detail.encode())]
        return (self._topics.dlq, record.key, record.value or b"", headers)

    async def _write(self, outputs: list[_Output]) -> None:
        # a record that cannot be delivered fails the transaction, and so the commit
        for topic, key, value, headers in outputs:
            _delivery(
                await self._part.producer.send(
                    topic, value, key=key, headers=[*headers, *self._provenance]
                )
            )
