"""The replay runner: reads ``task.events`` from Kafka and feeds the projections.

No Faust here: a plain aiokafka consumer with no group (nothing is committed, nothing is
rebalanced) is assigned every partition, reads each from its beginning in large batches
(``getmany`` with ``max_records``, megabyte fetches) up to a stop offset, and hands every record
to :class:`~projections.log.LogFold`, which decodes it and applies the pure fold. The consumer
reads ``read_committed``, as the live fold agent does, so both see the same records.

Stop offsets, per partition (the replay reads offsets ``[beginning, stop)``):

- by default, the partition's last stable offset when the replay starts;
- ``until_ms``: the first offset whose record timestamp is later than ``until_ms``
  (``offsets_for_times(until_ms + 1)``), so the replay gives the state as it was at that instant
  (records are stamped by their producer: a record stamped later than a newer one of the same
  partition counts where it stands in the log);
- ``stop_offsets``: given explicitly (``orchestrator verify`` stops where a worker's table is).

Partitions fold independently (a task's records are all in one partition), so a long replay
whose views need only each task's last applied record (:class:`TaskStatusView`, or no view:
``orchestrator verify``) is spread over worker processes, each with a consumer of its own
reading its share of the partitions; they send back their states, which the parent puts
together. Other views (``audit``, ``platforms``) observe every step, which would have to cross
from process to process at about half the cost of folding it: those replays fold here.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import pickle
import struct
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from projections.audit import AuditView
from projections.instants import iso_utc
from projections.log import (
    LogFold,
    LogRecord,
    Position,
    Projection,
    Step,
    Verdict,
)
from projections.platforms import PlatformStatsView
from projections.status import TaskStatusView
from schemas.records import event_of_record
from streams.domain import TaskState
from streams.domain.signatures import SigningKey, signature_of
from streams.errors import InfrastructureError
from streams.kafka_clients import KafkaConnection, connection
from streams.signing import read_key
from streams.topics import KEYS, TASK_EVENTS

BATCH_RECORDS = 50_000
"""Records per ``getmany``: large batches keep the consumer's per-call cost out of the way."""
FETCH_BYTES_PER_PARTITION = 16 * 1024 * 1024
FETCH_BYTES = 64 * 1024 * 1024
STALL_TIMEOUT_S = 60.0
"""A replay that reads nothing for this long while records remain fails instead of hanging."""
PARALLEL_MIN_RECORDS = 200_000
"""Fewer records than this fold in one process: starting worker processes (an interpreter,
the imports, a consumer each) and sending their states back costs about a second, which a
shorter replay does not win back on two cores."""

PROJECTIONS: dict[str, Callable[[], Projection]] = {
    TaskStatusView.name: TaskStatusView,
    AuditView.name: AuditView,
    PlatformStatsView.name: PlatformStatsView,
}
"""Every projection by name, with a factory for a fresh one."""


@dataclass(frozen=True)
class PartitionRange:
    """The offsets of one partition that a replay reads: ``[start, stop)``."""

    start: int
    stop: int


@dataclass(frozen=True)
class Progress:
    """How far a running replay is.

    Attributes:
        records: records read so far.
        total: records to read in all, as an offset span (transaction markers and aborted
            records count in it but are never read: the last update may fall short of it).
        elapsed_s: seconds since the replay started reading.
    """

    records: int
    total: int
    elapsed_s: float


@dataclass
class ReplayResult:
    """What a replay read and built.

    Attributes:
        ranges: the offsets read, per partition.
        records: records read (every one was folded, whatever its verdict).
        elapsed_s: seconds spent reading and folding (connection set-up excluded).
        log: the fold: every task's state and the count of each verdict.
        projections: the views fed, by name.
    """

    topic: str
    until_ms: int | None
    ranges: dict[int, PartitionRange]
    records: int
    elapsed_s: float
    log: LogFold
    projections: dict[str, Projection] = field(default_factory=dict)
    processes: int = 1
    """The processes that folded: 1, or the worker processes of a parallel replay."""

    @property
    def events_per_s(self) -> float:
        """Records folded per second."""
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary: what was read, how fast, the verdicts, the tasks per status."""
        statuses: dict[str, int] = {}
        for state in self.log.states.values():
            statuses[str(state.status)] = statuses.get(str(state.status), 0) + 1
        return {
            "topic": self.topic,
            "until_ms": self.until_ms,
            "until": iso_utc(self.until_ms) if self.until_ms is not None else None,
            "partitions": {
                str(p): {"start": r.start, "stop": r.stop} for p, r in sorted(self.ranges.items())
            },
            "records": self.records,
            "verdicts": {str(verdict): n for verdict, n in self.log.counts.items()},
            "tasks": len(self.log.states),
            "statuses": dict(sorted(statuses.items())),
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s, 1),
            "processes": self.processes,
        }

    def to_json(self) -> dict[str, Any]:
        """The summary and every projection's document, by name."""
        return {
            "summary": self.summary(),
            **{name: view.to_json() for name, view in self.projections.items()},
        }


async def replay(
    kafka: KafkaConnection | str,
    topic: str = TASK_EVENTS,
    until_ms: int | None = None,
    projections: Sequence[Projection] | None = None,
    *,
    stop_offsets: Mapping[int, int] | None = None,
    keys: Collection[str] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    batch_records: int = BATCH_RECORDS,
    processes: int | None = None,
    keys_topic: str | None = None,
) -> ReplayResult:
    """Fold ``topic`` from the beginning and feed ``projections``; return what was built.

    Args:
        kafka: how to reach Kafka (a bare ``host:port[,...]`` is PLAINTEXT).
        topic: the event log (``task.events``, with the orchestrator's topic prefix if any).
        until_ms: stop at this instant (Unix ms, inclusive): the state as it was then.
        projections: the views to feed (default: one of each, see :data:`PROJECTIONS`).
        stop_offsets: read each partition up to this offset (exclusive) instead; a partition
            absent from the mapping is not read. Combined with ``until_ms``, the earlier wins.
        keys: fold only the records keyed by these task ids (a task's state depends on its
            own records alone), e.g. for the audit of one task; the others are read, not decoded.
        on_progress: called after every batch.
        batch_records: the most records one ``getmany`` returns.
        processes: fold in up to this many worker processes, a share of the partitions each,
            when the views allow it (only :class:`TaskStatusView` views or none, no ``keys``);
            None: so with one process per CPU when there are ``PARALLEL_MIN_RECORDS`` records
            or more to read; 1: always in this process.
        keys_topic: the workers' keys topic (default: ``orchestrator.keys`` with the prefix
            of ``topic``): its signing key makes the replay refuse forged records as the live
            fold does (``streams.domain.signatures``); none in it, none refused.

    Returns:
        The result: ``log.states`` (every task's state), ``records``, ``events_per_s``, the
        projections by name.

    Raises:
        InfrastructureError: Kafka cannot be reached, the topic does not exist, or the replay
            stalled (read nothing for ``STALL_TIMEOUT_S`` with records left to read).
    """
    views = list(projections) if projections is not None else [f() for f in PROJECTIONS.values()]
    wanted = frozenset(k.encode("utf-8") for k in keys) if keys is not None else None
    consumer = _consumer(kafka)
    try:
        count = await partition_count(kafka, topic)
        signing = await read_key(kafka, keys_topic or keys_topic_of(topic))
        await consumer.start()
        ranges = await _ranges(consumer, topic, count, until_ms, stop_offsets)
        shares = _shares(ranges, _processes(processes, ranges, views, wanted))
        if len(shares) > 1:
            await consumer.stop()
            folded = await _fold_in_processes(
                kafka, topic, count, shares, views, on_progress, batch_records, signing
            )
        else:
            reader = _Reader(consumer, topic, ranges, views, wanted, on_progress, count, signing)
            await reader.run(batch_records)
            folded = _Folded(reader.log, reader.records, reader.elapsed_s)
    except KafkaError as exc:
        raise InfrastructureError(
            f"cannot replay {topic} from Kafka at {connection(kafka).describe()}: {exc}",
            retriable=True,
        ) from exc
    finally:
        await consumer.stop()
    return ReplayResult(
        topic=topic,
        until_ms=until_ms,
        ranges=ranges,
        records=folded.records,
        elapsed_s=folded.elapsed_s,
        log=folded.log,
        projections={view.name: view for view in views},
        processes=max(1, len(shares)),
    )


def keys_topic_of(events_topic: str) -> str:
    """The keys topic of the orchestrator whose log is ``events_topic`` (same prefix)."""
    prefix = events_topic.removesuffix(TASK_EVENTS) if events_topic.endswith(TASK_EVENTS) else ""
    return prefix + KEYS


def _consumer(kafka: KafkaConnection | str) -> AIOKafkaConsumer:
    """A consumer with no group, reading ``read_committed`` in large fetches."""
    return connection(kafka).consumer(
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION,
        fetch_max_bytes=FETCH_BYTES,
        fetch_max_wait_ms=100,
    )


async def partition_count(kafka: KafkaConnection | str, topic: str) -> int:
    """The number of partitions of ``topic``.

    Raises:
        InfrastructureError: the topic does not exist.
    """
    admin = connection(kafka).admin(request_timeout_ms=15_000)
    try:
        await admin.start()
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [d["partitions"] for d in described if not d.get("error_code")]
    if not partitions or not partitions[0]:
        raise InfrastructureError(
            f"topic {topic} does not exist (is the topic prefix right? a worker creates the "
            "topics when it first starts)"
        )
    return len(partitions[0])


async def _ranges(
    consumer: AIOKafkaConsumer,
    topic: str,
    count: int,
    until_ms: int | None,
    stop_offsets: Mapping[int, int] | None,
) -> dict[int, PartitionRange]:
    tps = [TopicPartition(topic, p) for p in range(count)]
    if stop_offsets is not None:
        tps = [tp for tp in tps if tp.partition in stop_offsets]
    starts = await consumer.beginning_offsets(tps)
    stops: dict[TopicPartition, int] = dict(await consumer.end_offsets(tps))
    if stop_offsets is not None:
        stops = {tp: stop_offsets[tp.partition] for tp in tps}
    if until_ms is not None:
        found = await consumer.offsets_for_times({tp: until_ms + 1 for tp in tps})
        for tp, hit in found.items():
            if hit is not None:
                stops[tp] = min(stops[tp], hit.offset)
    return {tp.partition: PartitionRange(starts[tp], max(starts[tp], stops[tp])) for tp in tps}


class _Reader:
    """Reads the ranges and folds every record; one per replay."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topic: str,
        ranges: dict[int, PartitionRange],
        views: list[Projection],
        wanted: frozenset[bytes] | None,
        on_progress: Callable[[Progress], None] | None,
        partitions: int,
        signing: SigningKey | None = None,
    ) -> None:
        self._consumer = consumer
        self._ranges = ranges
        self._tps = {p: TopicPartition(topic, p) for p in ranges}
        self._views = views
        self._wanted = wanted
        self._on_progress = on_progress
        self._total = sum(r.stop - r.start for r in ranges.values())
        self.log = LogFold(partitions=partitions, signing=signing)
        self.records = 0
        self.elapsed_s = 0.0

    async def run(self, batch_records: int) -> None:
        # The fold makes several objects per record (the event, the states, the steps) and
        # keeps most of them to the end: the fold's table and the views hold them. With the
        # collector on, each is scanned again at every collection of an older generation, and
        # the full ones come back each time the heap has grown by a quarter: about a third of
        # the replay's time, to find nothing, as these objects form no reference cycles (a
        # replay of 60,000 records leaves some 200 cyclic objects, the consumer's). So the
        # collector is off while the replay reads and folds. Turned back on (if it was on), it
        # would scan the replay's young objects at the next allocation; that one collection is
        # made here, counted in the replay's time (about 5% of it).
        collecting = gc.isenabled()
        gc.disable()
        try:
            await self._run(batch_records)
        finally:
            if collecting:
                gc.enable()
                started = time.monotonic()
                gc.collect(1)
                self.elapsed_s += time.monotonic() - started

    async def _run(self, batch_records: int) -> None:
        consumer = self._consumer
        consumer.assign(list(self._tps.values()))
        active = {p for p, r in self._ranges.items() if r.start < r.stop}
        for p, tp in self._tps.items():
            consumer.seek(tp, self._ranges[p].start)
            if p not in active:
                consumer.pause(tp)
        started = time.monotonic()
        last_read = started
        while active:
            batches = await consumer.getmany(timeout_ms=500, max_records=batch_records)
            for tp, records in batches.items():
                self._fold(tp.partition, records)
            for p in sorted(active):
                if await consumer.position(self._tps[p]) >= self._ranges[p].stop:
                    active.discard(p)
                    consumer.pause(self._tps[p])
            now = time.monotonic()
            self.elapsed_s = now - started
            if batches:
                last_read = now
                if self._on_progress is not None:
                    self._on_progress(Progress(self.records, self._total, self.elapsed_s))
            elif active and now - last_read > STALL_TIMEOUT_S:
                positions = {p: await consumer.position(self._tps[p]) for p in sorted(active)}
                where = ", ".join(
                    f"partition {p} at {at} of {self._ranges[p].stop}"
                    for p, at in positions.items()
                )
                raise InfrastructureError(
                    f"replay stalled: nothing read for {STALL_TIMEOUT_S:g} s ({where})",
                    retriable=True,
                )
        if self._on_progress is not None:
            self._on_progress(Progress(self.records, self._total, self.elapsed_s))

    def _fold(self, partition: int, records: list[Any]) -> None:
        stop = self._ranges[partition].stop
        fold = self.log.fold_decoded
        observers = [view.observe for view in self._views]
        wanted = self._wanted
        signed = self.log.signing is not None  # headers are looked at only if they can matter
        read = 0
        for r in records:
            offset = r.offset
            if offset >= stop:
                break
            read += 1
            key = r.key
            if wanted is not None and key not in wanted:
                continue
            value = r.value
            signature = signature_of(r.headers) if signed else None
            steps = fold(
                LogRecord(Position(partition, offset), r.timestamp, key, value, signature),
                event_of_record(key, value),
            )
            for step in steps:
                for observe in observers:
                    observe(step)
        self.records += read


@dataclass(frozen=True)
class _Folded:
    """What the fold of every range gave: the fold, the records read, the seconds it took."""

    log: LogFold
    records: int
    elapsed_s: float


# -- parallel replays ---------------------------------------------------------------------------
#
# A worker is ``python -c _WORKER_BOOT``: it reads its request (a pickle) on stdin, folds its
# partitions with a consumer of its own, and answers on stdout in frames: ``P`` (records read so
# far, after every batch), then ``R`` (its states, verdict counts, records read and the position
# of each task's last applied record) or ``E`` (an error). Not ``multiprocessing``: it would
# import the caller's ``__main__`` module again in every worker.

_FRAME = struct.Struct("!cQ")
_COUNT = struct.Struct("!Q")
_WORKER_BOOT = (
    "import pickle, sys; request = pickle.load(sys.stdin.buffer); sys.path[:] = request['path']; "
    "from projections.replay import _worker_main; _worker_main(request)"
)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _processes(
    asked: int | None,
    ranges: Mapping[int, PartitionRange],
    views: Sequence[Projection],
    wanted: frozenset[bytes] | None,
) -> int:
    """How many processes fold: 1 unless the views need only each task's last applied record
    (see :func:`_fold_in_processes`) and there are enough records (or ``asked`` says so)."""
    if asked is not None and asked <= 1:
        return 1
    if wanted is not None or not sys.executable:
        return 1
    if any(type(view) is not TaskStatusView for view in views):
        return 1
    if asked is None:
        if sum(r.stop - r.start for r in ranges.values()) < PARALLEL_MIN_RECORDS:
            return 1
        asked = _cpus()
    return asked


def _shares(
    ranges: Mapping[int, PartitionRange], processes: int
) -> list[dict[int, PartitionRange]]:
    """The partitions with records to read, dealt to at most ``processes`` workers, the largest
    first, each to the worker with the fewest records so far."""
    shares: list[dict[int, PartitionRange]] = [{} for _ in range(max(1, processes))]
    loads = [0] * len(shares)
    for partition, span in sorted(ranges.items(), key=lambda item: item[1].start - item[1].stop):
        if span.stop > span.start:
            least = loads.index(min(loads))
            shares[least][partition] = span
            loads[least] += span.stop - span.start
    return [share for share in shares if share]


class _LastApplied:
    """Where each task's last applied record is (what :class:`TaskStatusView` adds to a state)."""

    name = "last_applied"

    def __init__(self) -> None:
        self.positions: dict[str, tuple[int, int]] = {}

    def observe(self, step: Step) -> None:
        if step.verdict is Verdict.APPLIED and step.after is not None:
            position = step.record.position
            self.positions[step.task_id] = (position.partition, position.offset)

    def to_json(self) -> dict[str, Any]:
        return {"positions": {t: f"{p}:{o}" for t, (p, o) in self.positions.items()}}


async def _fold_in_processes(
    kafka: KafkaConnection | str,
    topic: str,
    partitions: int,
    shares: list[dict[int, PartitionRange]],
    views: Sequence[Projection],
    on_progress: Callable[[Progress], None] | None,
    batch_records: int,
    signing: SigningKey | None = None,
) -> _Folded:
    """Fold each share of the partitions in a worker process of its own; put the states
    together (they are disjoint: a task's records are all in its partition) and give each view,
    a :class:`TaskStatusView`, one step per task: its state and its last applied record's
    position, all such a view keeps of the steps of a task."""
    started = time.monotonic()
    total = sum(r.stop - r.start for share in shares for r in share.values())
    read = [0] * len(shares)

    def progress(worker: int, records: int) -> None:
        read[worker] = records
        if on_progress is not None:
            on_progress(Progress(sum(read), total, time.monotonic() - started))

    workers: list[asyncio.subprocess.Process] = []
    try:
        for _ in shares:
            workers.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    _WORKER_BOOT,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
            )
        requests = [
            {
                "path": list(sys.path),
                "kafka": connection(kafka),
                "topic": topic,
                "partitions": partitions,
                "ranges": {p: (r.start, r.stop) for p, r in share.items()},
                "batch_records": batch_records,
                "signing": signing,
            }
            for share in shares
        ]
        answers = await asyncio.gather(
            *(
                _ask(worker, request, functools.partial(progress, i))
                for i, (worker, request) in enumerate(zip(workers, requests, strict=True))
            )
        )
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
    collecting = gc.isenabled()
    gc.disable()  # unpickling makes as many objects as the fold did: see _Reader.run
    try:
        loaded = []
        for i in range(len(answers)):
            loaded.append(pickle.loads(answers[i]))
            answers[i] = b""  # each answer's bytes freed once read, not kept to the end
        log, records = _merge(loaded, partitions, views)
    finally:
        if collecting:
            gc.enable()
    return _Folded(log, records, time.monotonic() - started)


_Answer = tuple[dict[str, TaskState], dict[Verdict, int], int, dict[str, tuple[int, int]]]
"""A worker's answer: its states, verdict counts, records read and last applied positions."""


def _merge(
    answers: Sequence[_Answer], partitions: int, views: Sequence[Projection]
) -> tuple[LogFold, int]:
    """The workers' folds as one, and the records they read; each view (a
    :class:`TaskStatusView`) is shown one step per task, which stands for the task's last
    applied record: its state after it and its position."""
    log = LogFold(partitions=partitions)
    read = 0
    summaries: list[Step] = []
    for states, counts, records, positions in answers:
        read += records
        log.states.update(states)
        for verdict, n in counts.items():
            log.counts[verdict] += n
        for task_id, state in states.items():
            partition, offset = positions[task_id]
            record = LogRecord(Position(partition, offset), 0, None, b"")
            summaries.append(Step(record, task_id, None, None, state, Verdict.APPLIED))
    for view in views:
        for summary in summaries:
            view.observe(summary)
    return log, read


async def _ask(
    worker: asyncio.subprocess.Process, request: dict[str, Any], progress: Callable[[int], None]
) -> bytes:
    """Send ``request`` to ``worker``; relay its progress; return its answer (a pickle)."""
    assert worker.stdin is not None and worker.stdout is not None and worker.stderr is not None
    worker.stdin.write(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
    await worker.stdin.drain()
    worker.stdin.close()
    errors = asyncio.ensure_future(worker.stderr.read())
    try:
        while True:
            try:
                kind, size = _FRAME.unpack(await worker.stdout.readexactly(_FRAME.size))
                payload = await worker.stdout.readexactly(size)
            except asyncio.IncompleteReadError:
                status = await worker.wait()
                said = (await errors).decode("utf-8", "replace").strip().splitlines()[-5:]
                raise InfrastructureError(
                    f"a replay worker process exited with status {status}"
                    + (": " + " | ".join(said) if said else "")
                ) from None
            if kind == b"P":
                progress(_COUNT.unpack(payload)[0])
            elif kind == b"R":
                await worker.wait()
                return payload
            else:
                infrastructure, message, retriable = pickle.loads(payload)
                if infrastructure:
                    raise InfrastructureError(message, retriable=retriable)
                raise RuntimeError(f"a replay worker process failed: {message}")
    finally:
        errors.cancel()


def _worker_main(request: dict[str, Any]) -> None:
    """A worker process: fold the request's partitions, answer on stdout, exit."""
    gc.disable()  # a short-lived process: it collects nothing worth the scans (see _Reader.run)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever else prints goes to stderr, not into the frames
    sys.stdout = sys.stderr

    def send(kind: bytes, payload: bytes) -> None:
        out.write(_FRAME.pack(kind, len(payload)))
        out.write(payload)
        out.flush()

    try:
        answer = asyncio.run(_worker(request, send))
        send(b"R", pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as exc:  # the parent raises it as the replay's error
        if isinstance(exc, InfrastructureError):
            send(b"E", pickle.dumps((True, str(exc), exc.retriable)))
        else:
            send(b"E", pickle.dumps((False, f"{type(exc).__name__}: {exc}", False)))
    out.close()
    os._exit(0)  # not tearing down the fold's objects one by one: the parent has them now


async def _worker(request: dict[str, Any], send: Callable[[bytes, bytes], None]) -> tuple[Any, ...]:
    kafka, topic = request["kafka"], request["topic"]
    ranges = {p: PartitionRange(start, stop) for p, (start, stop) in request["ranges"].items()}
    last = _LastApplied()
    consumer = _consumer(kafka)
    try:
        await consumer.start()
        reader = _Reader(
            consumer,
            topic,
            ranges,
            [last],
            None,
            lambda progress: send(b"P", _COUNT.pack(progress.records)),
            request["partitions"],
            request["signing"],
        )
        await reader.run(request["batch_records"])
    except KafkaError as exc:
        raise InfrastructureError(
            f"cannot replay {topic} from Kafka at {connection(kafka).describe()}: {exc}",
            retriable=True,
        ) from exc
    finally:
        await consumer.stop()
    return reader.log.states, reader.log.counts, reader.records, last.positions
