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
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
    KafkaError,
    MessageSizeTooLargeError,
    PolicyViolationError,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnsupportedForMessageFormatError,
)
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import RecordMetadata

from schemas.records import Refusal, event_of_record
from streams import placement
from streams.agents.transactional import (
    COMMIT_TIMEOUT_S,
    TRANSACTION_ERRORS,
    AssignedPartitions,
    FailureLog,
    Superseded,
    committed_reader,
    cut,
    delivery,
    records_behind,
    reopen_backoff,
    restore_from_changelog,
    send_now,
    start_fencing,
    stop_quietly,
    wait_for_event,
)
from streams.app import Runtime
from streams.domain import Effect, FollowUp, Rejected, TaskState, apply_here
from streams.domain.signatures import FORGED, forgery, signature_of, signed_headers
from streams.domain.timers import next_deadline
from streams.logs import log_retries, shown
from streams.outputs import effect_record
from streams.partitions import misplaced, on_partition, partitioner
from streams.state_codec import decode_state
from streams.task_store import PartitionStore
from streams.topics import tasks_changelog

log = logging.getLogger(__name__)

TaskEnded = Callable[[str, str], None]
"""Told (task id, reason) after the commit of a task's terminal transition."""

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}".encode()
"""The ``worker`` header of every output: which process wrote it."""


class _StoreFailed(Exception):
    """The task database could not be opened or written while partitions were being opened."""


MAX_RECORDS = 500
"""Records taken per fetch (a commit can fall after any fetch)."""

EARLY_COMMIT_SHARE = 0.25
"""A transaction with a follow-up for another partition commits once this share of
``commit_interval`` has passed since the partition's last commit, not the whole interval: the
second hop of a dependency across partitions waits for this commit."""

ATTEMPTS_PER_RECORD = 3
"""Failures on one record (its own fault, folded alone) before it is dead-lettered."""

DLQ_DETAIL_MAX_CHARS = 1_000
"""The ``detail`` header of a DLQ record is cut to this: the copy must always fit the DLQ."""

_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
_REFUSED = (
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
    PolicyViolationError,
    UnsupportedForMessageFormatError,
)
"""Errors the broker (or the producer) gives for one record: that record's fault, not Kafka's."""


def record_fault(exc: BaseException) -> str | None:
    """The DLQ reason if ``exc`` refuses a record for what it holds (None: not the record's fault).

    ``output_too_large``: an output (a state, a result, a DLQ copy) is over its topic's
    ``max.message.bytes``; ``output_refused``: the broker refused the record for another reason.
    """
    if isinstance(exc, _TOO_LARGE):
        return "output_too_large"
    if isinstance(exc, _REFUSED):
        return "output_refused"
    return None


@dataclass
class _Suspects:
    """Offsets of a partition below ``until`` were in a transaction that a record made fail.

    They are folded one per transaction, so a failure names its record; a record found at
    fault is dead-lettered (in a transaction of its own) instead of being folded again.
    """

    until: int
    attempts: dict[int, int]
    dead: dict[int, tuple[str, str, bool]]
    """Offset → (reason, detail, whether the copy keeps the record's key and value) of the
    records to dead-letter."""


def fold_group(app_id: str) -> str:
    """The consumer group whose committed offsets say where the fold resumes."""
    return f"{app_id}-fold"


def register(runtime: Runtime, on_task_ended: TaskEnded | None = None) -> FoldService:
    """Add the fold to ``runtime.app``: its service, and the hooks that follow the assignment.

    ``on_task_ended`` is told (task id, reason) after the commit of a task's terminal
    transition (the executor stops the task's handler if it runs here).
    """
    app = runtime.app
    service = FoldService(runtime, on_task_ended)
    events = runtime.settings.topics.events
    placement.place_only(app, events)

    # faust must subscribe to task.events for its assignor and topic router to place the
    # partitions and route task reads; its consumer never fetches them (streams.placement)
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


class _Outbox:
    """The records of a partition's open transaction, appended to one batch per topic partition
    and handed to the producer a batch at a time (:meth:`flush`, and whenever a batch is full).

    One ``producer.send`` per record costs a future, a partitioner call and an accumulator
    round of its own; a batch costs them once. Each batch's delivery is remembered with the
    offset of the first record whose output it holds: a refused batch blames the records from
    there on (the fold then folds them one per transaction and finds the culprit).
    """

    def __init__(self, producer: AIOKafkaProducer, sent: Callable[[int, Any], None]) -> None:
        self._producer = producer
        self._sent = sent
        self._open: dict[tuple[str, int], tuple[BatchBuilder, int]] = {}
        self._partitions: dict[str, list[int]] = {}
        self.last: dict[tuple[str, int], tuple[asyncio.Future[RecordMetadata], int]] = {}
        """Per topic partition, the delivery of the last batch sent and its record count."""

    def _partition(self, topic: str, key: bytes | None) -> int:
        """Where the producer's own partitioner would put ``key`` on ``topic``."""
        partitions = self._partitions.get(topic)
        if partitions is None:
            found = self._producer.client.cluster.partitions_for_topic(topic)
            if not found:
                raise KafkaError(f"no metadata for topic {topic}")
            partitions = self._partitions[topic] = sorted(found)
        return partitioner(key, partitions, partitions)

    async def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        offset: int,
        partition: int | None = None,
    ) -> None:
        """Append a record caused by the record at ``offset`` (placed by its key, or on
        ``partition``)."""
        tp = (topic, self._partition(topic, key) if partition is None else partition)
        batch = self._open.get(tp)
        if batch is None:
            batch = self._open[tp] = (self._producer.create_batch(), offset)
        if batch[0].append(timestamp=None, key=key, value=value, headers=headers) is None:
            await self._send(tp, batch)  # full: a batch always takes its first record
            batch = self._open[tp] = (self._producer.create_batch(), offset)
            batch[0].append(timestamp=None, key=key, value=value, headers=headers)

    async def flush(self) -> None:
        """Hand every open batch to the producer."""
        batches, self._open = self._open, {}
        for tp, batch in batches.items():
            await self._send(tp, batch)

    def discard(self) -> None:
        """Forget the open batches (the transaction is given up)."""
        self._open = {}
        self.last = {}

    async def _send(self, tp: tuple[str, int], batch: tuple[BatchBuilder, int]) -> None:
        builder, first_offset = batch
        future = await self._producer.send_batch(builder, tp[0], partition=tp[1])
        self._sent(first_offset, future)
        self.last[tp] = (future, builder.record_count())


@dataclass
class _Partition:
    """One open partition of ``task.events``: its producer, its table, where it stands."""

    number: int
    producer: AIOKafkaProducer
    store: PartitionStore
    next_offset: int
    """The offset of the next record to fold: everything before it is folded."""
    in_transaction: bool = False
    deliveries: list[tuple[int, asyncio.Future[RecordMetadata]]] | None = None
    """Each send of the open transaction, with the offset of the record that caused it."""
    ended: list[tuple[str, str]] | None = None
    """Tasks that reached a terminal status in the open transaction (id, reason)."""
    changed_by: dict[bytes, int] = field(default_factory=dict)
    """The tasks whose state changed in the open transaction, and the offset of the last
    record that changed each (blamed if its changelog record is refused)."""
    blamed: int | None = None
    broken: bool = False
    """Its transaction failed part-way: it must not commit; the partition is reopened."""
    outbox: _Outbox = field(init=False)
    last_commit: float = 0.0
    """When its last commit started (``time.monotonic``)."""
    held: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    touched: dict[str, TaskState | None] = field(default_factory=dict)
    """The tasks the batch being folded changed, each with its newest state: their deadlines
    are tracked once the batch is folded."""
    """Records fetched while its commit was under way, folded once it is done."""
    urgent: bool = False
    """Its transaction holds a follow-up for a task of another partition: that partition folds
    it only once this commit is done, so it commits early (see ``EARLY_COMMIT_SHARE``)."""

    def commit_due(self, now: float, interval: float) -> float:
        """Seconds until its transaction should commit (0 or less: now)."""
        wait = interval * EARLY_COMMIT_SHARE if self.urgent else interval
        return self.last_commit + wait - now

    def __post_init__(self) -> None:
        self.outbox = _Outbox(self.producer, self.sent)

    def break_off(self) -> None:
        """Give up the open transaction: nothing of it may commit, its writes are forgotten."""
        self.broken = True
        self.store.discard()
        self.outbox.discard()
        self.ended = None
        self.changed_by = {}

    async def write_changelog(self, changelog: str) -> None:
        """Send each changed state once, as it stands now, to the partition's changelog.

        A send refused at once (a state over the topic's limit) leaves in ``blamed`` the offset
        of the last record that changed that state.
        """
        await self.outbox.flush()
        for key, value in self.store.encode_objects():
            self.blamed = self.changed_by[key]
            await self.outbox.add(changelog, key, value, [], self.blamed, self.number)
        self.changed_by = {}
        await self.outbox.flush()

    def sent(self, offset: int, sent: asyncio.Future[RecordMetadata]) -> None:
        """Remember a send of the record at ``offset``: the commit waits for its acknowledgement."""
        if self.deliveries is None:
            self.deliveries = []
        self.deliveries.append((offset, delivery(sent)))


class FoldService(AssignedPartitions):
    """Folds the partitions of ``task.events`` faust assigns to this worker.

    One loop does everything (opening partitions, fetching, folding, committing), so none of
    it interleaves; faust's rebalance callbacks only say what the assignment should be.
    ``lock`` is held while records are folded or committed: a reader holding it sees the
    table between two records, with :meth:`positions` saying which.
    """

    what = "the fold"

    def __init__(
        self, runtime: Runtime, on_task_ended: TaskEnded | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.runtime = runtime
        self.on_task_ended = on_task_ended
        settings = runtime.settings
        self.group = fold_group(settings.orchestrator_id)
        self.changelog = tasks_changelog(settings.orchestrator_id)
        self.lock = asyncio.Lock()
        self._partitions: dict[int, _Partition] = {}
        self._opened = asyncio.Condition()
        self._indexed: frozenset[int] = frozenset()
        """The partitions whose tasks the deadline index was last built from."""
        self._commits: dict[int, asyncio.Task[bool]] = {}
        """The commits under way, by partition (see :meth:`_start_due_commits`)."""
        self._consumer: AIOKafkaConsumer | None = None
        self._suspects: dict[int, _Suspects] = {}
        self._folding: tuple[int, int] | None = None
        """The partition and offset being folded (to blame a failure on its record)."""
        self._failures = 0
        """Consecutive failures (reopens wait longer after each); a commit resets it."""
        self._store_broken = False
        self._failure_log = FailureLog(log)
        self._announced = False

    def _busy(self) -> bool:
        return bool(self._partitions) or self._opening

    # -- what readers see

    @property
    def serving(self) -> bool:
        """True once the worker got its partitions and has them open (``GET /ready``)."""
        return self._assigned and self.ready and not self._stopping

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

    async def lags(self) -> dict[int, int]:
        """Per open partition, the records of ``task.events`` not folded yet."""
        consumer = self._consumer
        if consumer is None:
            return {}
        events = self.runtime.settings.topics.events
        lags = {}
        for partition, part in list(self._partitions.items()):
            tp = TopicPartition(events, partition)
            lags[partition] = await records_behind(consumer, tp, part.next_offset)
        return lags

    # -- the loop

    async def run(self) -> None:
        """Fold until the worker stops; on the way out, commit and close."""
        settings = self.runtime.settings
        consumer = self._consumer = committed_reader(settings, self.group)
        await consumer.start()
        try:
            while not self._stopping:
                try:
                    await self._step(consumer)
                except Exception as exc:
                    # not a bad record (those go to the DLQ) but a failure of the fold itself:
                    # give up every open transaction and start the partitions again; if it
                    # happened on a record, that record is suspect (dead-lettered after
                    # ATTEMPTS_PER_RECORD failures folded alone)
                    self._log_failure("loop", exc, "the fold failed; reopening its partitions")
                    if self._folding is not None:
                        partition, offset = self._folding
                        self._folding = None
                        self._blame(partition, offset, offset + 1, exc, surely=False)
                    await self._wait_for_commits()
                    self._committed()
                    for part in self._partitions.values():
                        part.break_off()
                    self._reopen(set(self._partitions))
        finally:
            await self._close_all(commit=True)
            self.runtime.tasks.close()
            await consumer.stop()

    async def _step(self, consumer: AIOKafkaConsumer) -> None:
        if not self.ready:
            await self._settle(consumer)
        elif not self._partitions:
            self._changed.clear()
            await wait_for_event(self._changed, 1.0)
        else:
            await self._fold_batch(consumer)

    async def _fold_batch(self, consumer: AIOKafkaConsumer) -> None:
        batches = await consumer.getmany(timeout_ms=self._fetch_wait_ms(), max_records=MAX_RECORDS)
        failed = self._committed()
        async with self.lock:
            fetched = {tp.partition: records for tp, records in batches.items()}
            for number, part in self._partitions.items():
                records = fetched.get(number, [])
                if part.broken:  # its commit failed: reopened below, its records fetched again
                    continue
                if number in self._commits:  # committing: its records wait for the commit
                    part.held.extend(records)
                    continue
                if part.held:
                    records, part.held = [*part.held, *records], []
                if not records:
                    continue
                before = part.next_offset
                try:
                    for record in records:
                        await self._fold(part, record)
                        if part.broken:
                            break
                except TRANSACTION_ERRORS as exc:
                    # raised by a send of this very record (a size check, say) or by the
                    # producer as a whole (fenced): record_fault tells which
                    self._failed(part, exc, record.offset, surely=True)
                if not part.broken:
                    try:
                        await part.outbox.flush()  # the batch's outputs, sent as it folds on
                    except TRANSACTION_ERRORS as exc:
                        self._failed(part, exc, before, surely=False)
                self._track_deadlines(part)
                if part.next_offset > before:  # once per batch: readers wake up once
                    await self.runtime.processed.advance(part.number, part.next_offset - 1)
                self._folding = None
                if part.broken:
                    failed.add(part.number)
            self.runtime.metrics.flush_fold()
            self._start_due_commits()
        if failed:
            await self._wait_for_commits()
            self._reopen(failed)

    def _track_deadlines(self, part: _Partition) -> None:
        """Tell the deadline index the next deadline of each task the batch changed, as its
        state stands after the batch (a task changed three times is looked at once)."""
        track = self.runtime.deadlines.track
        retention_ms = self.runtime.settings.task_retention_ms
        for task_id, state in part.touched.items():
            track(task_id, None if state is None else next_deadline(state, retention_ms))
        part.touched = {}

    def _fetch_wait_ms(self) -> int:
        """How long a fetch may wait for records: until the next commit falls due (a due
        commit must not wait out a fetch's full wait), and briefly while records are held."""
        if any(part.held for part in self._partitions.values()):
            return 5
        interval = self.runtime.settings.commit_interval
        now = time.monotonic()
        due = [
            part.commit_due(now, interval)
            for number, part in self._partitions.items()
            if part.in_transaction and number not in self._commits
        ]
        return max(0, min(100, int(min(due, default=0.1) * 1000)))

    def _start_due_commits(self) -> None:
        """Start the commit of every partition whose transaction is ``commit_interval`` old.

        A commit runs beside the loop: the other partitions fold on while it waits for the
        broker (acknowledgements, offsets, the transaction's end), and the records fetched for
        its own partition wait in ``held`` until it is done. Partitions are opened with their
        commit times spread over the interval, so a few at a time are committing.
        """
        interval = self.runtime.settings.commit_interval
        now = time.monotonic()
        for number, part in self._partitions.items():
            due = part.in_transaction and part.commit_due(now, interval) <= 0
            if due and not part.broken and number not in self._commits:
                part.last_commit = now
                part.urgent = False
                self._commits[number] = asyncio.create_task(self._commit(part))

    def _committed(self) -> set[int]:
        """Take the commits that ended; return the partitions whose commit failed."""
        failed = set()
        for number, commit in list(self._commits.items()):
            if commit.done():
                del self._commits[number]
                if commit.cancelled() or commit.exception() is not None or not commit.result():
                    failed.add(number)
        return failed

    async def _wait_for_commits(self) -> None:
        """Let the commits under way end (their outcome is taken by :meth:`_committed`)."""
        if self._commits:
            await asyncio.wait(list(self._commits.values()))

    async def _fold(self, part: _Partition, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.offset < part.next_offset:
            return  # already folded (a fetch from before the last seek)
        suspects = self._suspects.get(part.number)
        alone = suspects is not None and record.offset < suspects.until
        if alone and part.in_transaction and not await self._commit(part):
            return  # the records before it failed: the partition is reopened
        if not part.in_transaction:
            await part.producer.begin_transaction()
            part.in_transaction = True
        self._folding = (part.number, record.offset)
        dead = suspects.dead.get(record.offset) if suspects is not None else None
        if dead is not None:
            await _Folding(self, part, record).give_up(*dead)
        else:
            await _Folding(self, part, record).run()
        part.next_offset = record.offset + 1
        if alone:
            await self._commit(part)

    # -- commits

    async def _commit_all(self) -> set[int]:
        """Commit every open transaction; return the partitions whose commit failed."""
        await self._wait_for_commits()
        failed = self._committed()
        parts = [p for p in self._partitions.values() if p.in_transaction and not p.broken]
        outcomes = await asyncio.gather(*(self._commit(part) for part in parts))
        return failed | {part.number for part, ok in zip(parts, outcomes, strict=True) if not ok}

    async def _commit(self, part: _Partition) -> bool:
        """Commit the partition's transaction once every record of it was acknowledged.

        A record the broker refused fails the transaction (nothing of it becomes visible);
        the partition is then reopened and its records folded again, the culprit alone.
        """
        events = TopicPartition(self.runtime.settings.topics.events, part.number)
        suspects = self._suspects.get(part.number)
        try:
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                try:
                    await part.write_changelog(self.changelog)
                except TRANSACTION_ERRORS as exc:  # refused at once (too large, say)
                    self._failed(part, exc, part.blamed, surely=True)
                    self.runtime.metrics.fold_commits.labels("failed").inc()
                    return False
                if part.deliveries:
                    await send_now(part.producer)
                for offset, delivery in part.deliveries or ():
                    try:
                        await delivery
                    except TRANSACTION_ERRORS as exc:
                        self._failed(part, exc, offset, surely=False)
                        self.runtime.metrics.fold_commits.labels("failed").inc()
                        return False
                await part.producer.send_offsets_to_transaction(
                    {events: part.next_offset}, self.group
                )
                await part.producer.commit_transaction()
                # the last changelog batch holds the transaction's last changelog record
                checkpoint = None
                last_changelog = part.outbox.last.get((self.changelog, part.number))
                if last_changelog is not None:
                    last_batch, records = last_changelog
                    checkpoint = (await last_batch).offset + records
        except (*TRANSACTION_ERRORS, TimeoutError) as exc:
            self._failed(part, exc, None, surely=False)
            self.runtime.metrics.fold_commits.labels("failed").inc()
            return False
        self.runtime.metrics.fold_commits.labels("committed").inc()
        part.in_transaction = False
        part.deliveries = None
        part.outbox.last = {}
        ended, part.ended = part.ended or [], None
        self._failures = 0
        if suspects is not None and part.next_offset >= suspects.until:
            del self._suspects[part.number]  # every suspect record is past
        if self.on_task_ended is not None:
            for task_id, reason in ended:  # committed: a handler still running here may stop
                self.on_task_ended(task_id, reason)
        try:
            part.store.commit(checkpoint)
        except Exception as exc:  # RocksDB: a full disk, say; the changelog has the states
            self._store_failed(exc)
            part.break_off()
            return False
        self.runtime.tasks.failure = None
        return True

    # -- failures

    def _failed(
        self, part: _Partition, exc: BaseException, offset: int | None, surely: bool
    ) -> None:
        """The partition's transaction failed (``offset``: on a send of that record)."""
        part.break_off()
        cause = f"commit of partition {part.number} failed; its events are folded again"
        self._log_failure(f"commit:{part.number}", exc, cause)
        if offset is not None and record_fault(exc) is not None:
            self._blame(part.number, offset, max(part.next_offset, offset + 1), exc, surely)

    def _blame(
        self, partition: int, offset: int, until: int, exc: BaseException, surely: bool
    ) -> None:
        """A failure may have come from the record at ``offset``.

        It surely did if ``surely`` or if the record was folded alone (in a transaction of its
        own). Records up to ``until`` are folded alone from now on. A record surely at fault is
        dead-lettered: at once if the broker refused its output for its size or content (that
        cannot change), after ATTEMPTS_PER_RECORD failures otherwise.
        """
        suspects = self._suspects.get(partition)
        alone = suspects is not None and offset < suspects.until
        if suspects is None:
            suspects = self._suspects[partition] = _Suspects(until, {}, {})
        suspects.until = max(suspects.until, until)
        if not (surely or alone):
            return
        detail = f"{type(exc).__name__}: {exc}"
        fault = record_fault(exc)
        attempts = suspects.attempts[offset] = suspects.attempts.get(offset, 0) + 1
        if offset in suspects.dead:  # even its DLQ copy failed: keep only what is known
            why = f"its dead-letter copy failed: {detail}"
            suspects.dead[offset] = ("unprocessable", why, False)
        elif fault is not None:
            suspects.dead[offset] = (fault, detail, True)
        elif attempts >= ATTEMPTS_PER_RECORD:
            suspects.dead[offset] = ("unprocessable", f"failed {attempts} times: {detail}", True)

    def _store_failed(self, exc: BaseException) -> None:
        """A write to the task database failed: close it; reopen (and retry) after a wait."""
        self.runtime.tasks.failure = f"{type(exc).__name__}: {exc}"
        self._store_broken = True
        self._log_failure(
            "store", exc, "the task database refused a write; its partitions stop until it works"
        )

    def _log_failure(self, kind: str, exc: BaseException, message: str) -> None:
        """Log a failure once per cause (and then at most every LOG_AGAIN_AFTER_S, counted)."""
        self._failure_log.report(kind, exc, message, DLQ_DETAIL_MAX_CHARS)

    # -- opening and closing partitions

    async def _settle(self, consumer: AIOKafkaConsumer) -> None:
        """Close every partition, then open the wanted ones (restored and positioned)."""
        version, wanted = self._wanted_version, self._wanted
        await self._close_all(commit=True)
        consumer.assign([])
        if not wanted:
            # nothing open: the timer may pop a due deadline now and find no partition for it,
            # so the index is rebuilt whatever partitions come next (the same ones included)
            self._indexed = frozenset()
        if self._failures and wanted:
            # after failures, wait (longer each time) so a lasting cause is not a reopen storm
            self._changed.clear()
            await wait_for_event(self._changed, reopen_backoff(self._failures))
            if self._stopping or version != self._wanted_version:
                return  # stopping, or the assignment changed meanwhile: settle that instead
        if self._store_broken:
            self._store_broken = False
            self.runtime.tasks.reopen()  # RocksDB writes again only once reopened
        if wanted:
            self._opening = True
            try:
                await self._open(consumer, wanted, version)
            except Superseded:
                log.info("fold: the assignment changed while opening %s", sorted(wanted))
                await self._close_all(commit=False)
                return
            except KafkaError as exc:
                self._log_failure("open", exc, f"opening partitions {sorted(wanted)} failed")
                await self._close_all(commit=False)
                self._failures += 1
                return
            except _StoreFailed as failed:
                self._store_failed(failed.__cause__ or failed)
                await self._close_all(commit=False)
                self._failures += 1
                return
            finally:
                self._opening = False
        self._open_version = version
        async with self._opened:
            self._opened.notify_all()
        if self.ready:
            self._settled.set()
            log.info("fold: folding partitions %s", sorted(wanted))
            if self.serving and not self._announced:
                self._announced = True
                settings = self.runtime.settings
                log.info(
                    "worker ready: folding partitions %s of %s; HTTP API at http://%s:%d "
                    "(GET /ready answers 200)",
                    sorted(wanted),
                    settings.topics.events,
                    settings.web_host,
                    settings.web_port,
                )

    def _reopen(self, partitions: set[int]) -> None:
        """Reopen failed partitions: a new producer fences the old one; restore; seek."""
        log.info("reopening partitions %s", sorted(partitions))
        self.runtime.metrics.fold_reopens.inc()
        self._failures += 1
        self._wanted_version += 1  # the loop settles again, with the same partitions

    async def _open(self, consumer: AIOKafkaConsumer, wanted: frozenset[int], version: int) -> None:
        settings = self.runtime.settings
        tasks = self.runtime.tasks
        # a record over a topic's limit is refused by the broker, and the fold blames the
        # record (see record_fault)
        topics = settings.topics
        outputs = (topics.events, topics.ready, topics.completed, topics.signals, topics.dlq)
        producers = await start_fencing(settings, "fold", wanted, 50, (*outputs, self.changelog))
        try:
            try:
                databases = {p: tasks.database(p) for p in wanted}
                stores, restored = await self._restore(databases, version)
            except (Superseded, KafkaError):
                raise
            except Exception as exc:  # RocksDB could not open or write: a disk problem
                raise _StoreFailed(str(exc)) from exc
            tasks.failure = None
            tps = [TopicPartition(settings.topics.events, p) for p in sorted(wanted)]
            consumer.assign(tps)
            now = time.monotonic()
            for index, tp in enumerate(tps):
                committed = await consumer.committed(tp)
                start = committed if committed is not None else 0
                if committed is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, committed)
                number = tp.partition
                part = _Partition(number, producers[number], stores[number], start)
                # commit times spread over the interval: a few partitions commit at a time
                part.last_commit = now - settings.commit_interval * index / len(tps)
                self._partitions[tp.partition] = part
                tasks.open[tp.partition] = part.store
                self.runtime.verdicts.opened(tp.partition, start)
                await self.runtime.processed.advance(tp.partition, start - 1)
        except BaseException:
            for partition, producer in producers.items():
                if partition not in self._partitions:
                    await stop_quietly(producer)
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
            Superseded: the assignment changed meanwhile (a long restore is not finished for
                partitions that may no longer be this worker's).
        """
        began = time.monotonic()
        restored = await restore_from_changelog(
            self.runtime.settings,
            self.changelog,
            stores,
            lambda: self._wanted_version != version or self._stopping,
            self.runtime.tasks.wipe,
        )
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
        await asyncio.gather(*(stop_quietly(part.producer) for part in parts))

    def _rebuild_deadlines(self) -> None:
        index = self.runtime.deadlines
        index.clear()
        retention_ms = self.runtime.settings.task_retention_ms
        for key, value in self.runtime.tasks.items():
            index.track(key.decode("utf-8"), next_deadline(decode_state(value), retention_ms))
        log.info("deadline index rebuilt: %d tasks", len(index))


_Output = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]
"""A record to write: topic, key, value (None: a tombstone), headers."""


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
        self._signing = service.runtime.signing
        self._part = part
        self._record = record
        self._partitions = service.runtime.settings.partitions
        self._here = on_partition(part.number, self._partitions)
        """Whether a task (by id) is folded on this record's partition."""
        # where each output came from: an audit can trace any record back to its event
        self._provenance = [
            ("source.topic", record.topic.encode()),
            ("source.partition", str(record.partition).encode()),
            ("source.offset", str(record.offset).encode()),
            ("worker", WORKER_ID),
        ]

    async def give_up(self, reason: str, detail: str, keep_bytes: bool) -> None:
        """Dead-letter the record instead of folding it (it made its transaction fail).

        Without ``keep_bytes`` the copy holds no key and no value, only the reason and where
        the record is (``task.events`` keeps it forever).
        """
        output = self._dead_letter(reason, detail)
        if not keep_bytes:
            topic, _, _, headers = output
            output = (topic, None, b"", headers)
        await self._write([output])

    async def run(self) -> None:
        record = self._record
        task_event = event_of_record(record.key, record.value or b"")
        if isinstance(task_event, Refusal):
            await self._write([self._dead_letter(task_event.reason, task_event.detail)])
            return
        part = self._part
        wrong = misplaced(record.key, record.partition, self._partitions)
        if wrong is not None:
            await self._write([self._dead_letter("wrong_partition", wrong)])
            return
        if self._signing is not None:
            forged = forgery(
                task_event,
                record.key,
                record.value or b"",
                signature_of(record.headers),
                record.partition,
                record.offset,
                self._signing,
                self._state_of,
            )
            if forged is not None:
                await self._write([self._dead_letter(FORGED, forged)])
                return
        store = part.store
        try:
            # the event, then the follow-ups it causes for tasks of this partition (a
            # dependency's answer to a dependent of its group, say): one step, one transaction
            steps = apply_here(task_event, self._state_of, self._here)
            outputs = [
                self._output(effect)
                for index, step in enumerate(steps)
                for effect in step.outcome.effects
                # a follow-up refused here is refused again, and dead-lettered, when its own
                # record comes back: the record folded now is not at fault
                if index == 0 or type(effect) is not Rejected
            ]
        except Exception as exc:  # a bug must not stop the fold: park the event, keep going
            log.exception("fold failed on %s[%d]@%d", record.topic, record.partition, record.offset)
            await self._write(
                [self._dead_letter("processing_error", f"{type(exc).__name__}: {exc}")]
            )
            return
        if not part.urgent:
            part.urgent = any(
                type(effect) is FollowUp and not self._here(effect.event.task_id)
                for step in steps
                for effect in step.outcome.effects
            )
        for step in steps:
            state, new_state = step.before, step.outcome.state
            if new_state is state:
                continue
            event = step.event
            key = event.task_id.encode()
            # encoded and written to the changelog once per commit, however often it changes
            # (None: the task retired, a tombstone)
            store.put_object(key, new_state)
            part.changed_by[key] = record.offset
            part.touched[event.task_id] = new_state  # its deadline, tracked once per batch
            if new_state is None:
                continue
            self._runtime.metrics.observe_fold(state, event, new_state)
            if new_state.status.is_terminal and not (state and state.status.is_terminal):
                ended = part.ended = part.ended or []
                ended.append((event.task_id, f"{new_state.status}: {new_state.last_error}"))
            if new_state.status == "retrying":  # one line per retry scheduled (they are rare)
                log_retries(log, state, new_state, step.outcome.effects)
        await self._write(outputs)

    def _state_of(self, task_id: str) -> TaskState | None:
        state: TaskState | None = self._part.store.get_object(task_id.encode(), decode_state)
        return state

    def _output(self, effect: Effect) -> _Output:
        if isinstance(effect, Rejected):
            return self._dead_letter(str(effect.code), effect.reason)
        topic, key, value = effect_record(effect, self._topics, self._record.timestamp)
        return topic, key, value, []

    def _dead_letter(self, reason: str, detail: str) -> _Output:
        self._runtime.metrics.dlq.labels(reason).inc()
        record = self._record
        # the copy must fit the DLQ whatever the record held
        detail = cut(detail, DLQ_DETAIL_MAX_CHARS)
        task_id = shown(record.key)  # the key, whatever it holds: cut, escaped
        log.warning(
            "dead-lettered %s[%d]@%d task=%s: %s: %s",
            record.topic,
            record.partition,
            record.offset,
            task_id,
            reason,
            detail,
            extra={
                "task_id": task_id,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "reason": reason,
                "detail": detail,
            },
        )
        headers = [("reason", reason.encode()), ("detail", detail.encode())]
        return (self._topics.dlq, record.key, record.value or b"", headers)

    async def _write(self, outputs: list[_Output]) -> None:
        # the commit waits for each delivery: a refused record fails the transaction
        for topic, key, value, headers in outputs:
            if topic == self._topics.events and value is not None:
                # a follow-up: the fold signs what it writes to the log (domain.signatures)
                headers = [*headers, *signed_headers(self._signing, key, value)]
            if topic == self._topics.dlq:  # the record's verdict, for a client that asks
                found = dict(headers)
                self._runtime.verdicts.refused(
                    self._record.partition,
                    self._record.offset,
                    found.get("reason", b"").decode(),
                    found.get("detail", b"").decode(errors="replace"),
                )
            await self._part.outbox.add(
                topic, key, value, [*headers, *self._provenance], self._record.offset
            )
