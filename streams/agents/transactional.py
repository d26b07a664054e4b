"""What the fold and the scheduler share to process their partitions exactly once.

Both read their input partitions with a consumer of their own, write everything a record causes
through a transactional producer of the partition (outputs, changelog records, input offsets:
one transaction), and keep a committed-only RocksDB store per partition
(:class:`~streams.task_store.PartitionStore`) that a new owner restores from the changelog.
Opening a partition starts its producer first, which fences the previous owner and ends its
open transaction, so the changelog and the committed offsets read after it are final.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import IllegalOperation, KafkaError
from mode import Service

from streams.config import Settings
from streams.domain.bounds import LARGE_RECORD_MAX_BYTES, PRODUCER_MAX_REQUEST_BYTES
from streams.partitions import partitioner
from streams.task_store import PartitionStore

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSACTION_ERRORS = (KafkaError, IllegalOperation)
"""What a fenced or failed producer raises (aiokafka's IllegalOperation is no KafkaError)."""

REOPEN_BACKOFF_S = (0.0, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
"""Waits before reopening after 0, 1, 2, ... consecutive failures (the last one repeats)."""

LOG_AGAIN_AFTER_S = 60.0
"""A failure of the same cause is logged again (with its count) at most this often."""

FETCH_BYTES = LARGE_RECORD_MAX_BYTES + 65_536
"""Per-partition fetch size: above any record the project's topics take (aiokafka would skip
a record larger than this if a broker ever returned it cut)."""


BATCH_BYTES = 262_144
"""A producer batch holds up to this many bytes (aiokafka's default, 16 KiB, makes a fold that
writes hundreds of records per fetch wait for the sender every few dozen records). A batch is
either within this size or one record alone, so it stays within every topic's
``max.message.bytes`` (1 MiB at the least) whenever its records do."""


class Superseded(Exception):
    """The assignment changed (or the worker is stopping) while partitions were being opened."""


def reopen_backoff(failures: int) -> float:
    """How long to wait before reopening after ``failures`` consecutive failures."""
    return REOPEN_BACKOFF_S[min(failures, len(REOPEN_BACKOFF_S) - 1)]


def transactional_producer(
    settings: Settings, transactional_id: str, linger_ms: int
) -> AIOKafkaProducer:
    """A producer for one partition's transactions (not started)."""
    return settings.kafka.producer(
        transactional_id=transactional_id,
        linger_ms=linger_ms,
        # above every topic's limit: the broker refuses an oversize record, and the caller
        # can blame the record
        max_request_size=PRODUCER_MAX_REQUEST_BYTES,
        max_batch_size=BATCH_BYTES,
        partitioner=partitioner,  # a task's group places it (streams.partitions)
    )


async def start_fencing(
    settings: Settings,
    role: str,
    partitions: frozenset[int],
    linger_ms: int,
    outputs: tuple[str, ...] = (),
) -> dict[int, AIOKafkaProducer]:
    """Start the transactional producer (``{id}-{role}-{p}``) of each partition.

    Starting one fences the partition's previous owner and ends its open transaction, so the
    changelog and the committed offsets read afterwards are final. The producers learn the
    partitions of ``outputs`` now, so that their first transaction does not wait for it. If
    any fails to start, those started are stopped and the error raised.
    """
    producers = {
        p: transactional_producer(settings, f"{settings.orchestrator_id}-{role}-{p}", linger_ms)
        for p in sorted(partitions)
    }
    try:
        await asyncio.gather(*(producer.start() for producer in producers.values()))
        for producer in producers.values():
            for topic in outputs:
                await producer.partitions_for(topic)
    except BaseException:
        await asyncio.gather(*(stop_quietly(producer) for producer in producers.values()))
        raise
    return producers


def committed_reader(settings: Settings, group_id: str | None = None) -> AIOKafkaConsumer:
    """A ``read_committed`` consumer that commits nothing by itself (not started)."""
    return settings.kafka.consumer(
        group_id=group_id,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=FETCH_BYTES,
    )


async def restore_from_changelog(
    settings: Settings,
    changelog: str,
    stores: dict[int, PartitionStore],
    superseded: Callable[[], bool],
    wipe: Callable[[int], PartitionStore],
) -> int:
    """Bring each store up to its changelog partition's last stable offset.

    A changelog that ends before a store's checkpoint was replaced (deleted and created
    again): that store is wiped (``wipe`` gives the empty one, which replaces it in
    ``stores``) and restored from the changelog's start.

    Returns:
        How many changelog records were applied.

    Raises:
        Superseded: ``superseded()`` turned true meanwhile (a long restore is not finished for
            partitions that may no longer be this worker's).
    """
    restorer = committed_reader(settings)
    await restorer.start()
    restored = 0
    try:
        tps = {TopicPartition(changelog, p): p for p in stores}
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
                stores[partition] = wipe(partition)
                start = 0
            if start < ends[tp]:
                restorer.seek(tp, start)
                todo.add(tp)
        while todo:
            if superseded():
                raise Superseded
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
    return restored


def delivery(future: asyncio.Future[T]) -> asyncio.Future[T]:
    """A send's delivery, whose failure is the awaiter's to report (not asyncio's, unretrieved)."""
    future.add_done_callback(lambda f: None if f.cancelled() else f.exception())
    return future


async def send_now(producer: AIOKafkaProducer) -> None:
    """Send what lingers in ``producer`` now and wait for every delivery of its transaction.

    ``flush()`` would wait out each batch's linger; the commit does not, and neither should
    the wait for acknowledgements before it. aiokafka's accumulator has what the commit itself
    uses (``flush_for_commit``: close the open batches, wake the sender); without it, the
    public ``flush``.
    """
    accumulator = getattr(producer, "_message_accumulator", None)
    flush_now = getattr(accumulator, "flush_for_commit", None)
    await (flush_now() if flush_now is not None else producer.flush())


async def stop_quietly(producer: AIOKafkaProducer) -> None:
    """Stop a producer; an open transaction is left for the next owner's producer to end."""
    try:
        await asyncio.wait_for(producer.stop(), 10.0)
    except Exception:  # it is being dropped either way
        log.warning("a transactional producer did not stop cleanly", exc_info=True)


async def wait_for_event(event: asyncio.Event, timeout_s: float) -> None:
    """Wait until ``event`` is set, at most ``timeout_s``."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)


def cut(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters (an ellipsis marks the cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def records_behind(consumer: AIOKafkaConsumer, tp: TopicPartition, next_offset: int) -> int:
    """Records of ``tp`` not processed yet, when ``next_offset`` is the next one to process.

    Counted from the consumer's position when it is further: a partition whose last writes
    were transactions ends with their commit markers, which take offsets but are no records
    (and would otherwise look 1 or 2 behind forever).
    """
    behind = (consumer.highwater(tp) or 0) - next_offset
    if behind <= 0:
        return 0
    try:
        position: int = await asyncio.wait_for(consumer.position(tp), 1.0)
    except Exception:  # not positioned now (being reopened): count from what was processed
        return behind
    return max(0, behind - max(0, position - next_offset))


class FailureLog:
    """Logs a failure once per cause, then at most every LOG_AGAIN_AFTER_S with a count."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._logged: dict[str, tuple[float, int]] = {}

    def report(self, kind: str, exc: BaseException, message: str, limit: int = 1_000) -> None:
        """Log ``message`` and ``exc`` unless this cause was logged recently (then count it).

        A traceback is added only for ``kind == "loop"`` (a failure whose cause is unknown).
        """
        key = f"{kind}:{type(exc).__name__}"
        now = time.monotonic()
        last, count = self._logged.get(key, (-LOG_AGAIN_AFTER_S, 0))
        if now - last < LOG_AGAIN_AFTER_S:
            self._logged[key] = (last, count + 1)
            return
        self._logged[key] = (now, 0)
        again = f" ({count} more times since the last report)" if count else ""
        trace = exc if kind == "loop" else None
        self._log.warning(
            "%s%s: %s: %s", message, again, type(exc).__name__, cut(str(exc), limit), exc_info=trace
        )


COMMIT_TIMEOUT_S = 30.0
"""A commit that takes longer fails; the partition is reopened (its records processed again)."""

REVOKE_WAIT_S = 5.0
"""How long a revocation waits for the loop to commit and close its partitions."""


class AssignedPartitions(Service):
    """A service that processes the partitions faust assigns to this worker, in one loop.

    faust's rebalance callbacks only say what the assignment should be (:meth:`assign`,
    :meth:`revoke`); the loop (:meth:`run`, the subclass's) opens, processes, commits and
    closes, so none of it interleaves. A subclass says in :meth:`_busy` whether it has
    partitions open, and sets ``_open_version`` to the version it settled.
    """

    what = "loop"
    """What the subclass is, for log lines ("the fold", "the scheduler")."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wanted: frozenset[int] = frozenset()
        self._wanted_version = 0
        self._open_version = 0
        self._changed = asyncio.Event()
        self._settled = asyncio.Event()
        self._opening = False
        self._stopping = False
        self._assigned = False
        """Whether faust has assigned this worker its partitions at least once."""
        self._loop_task: asyncio.Future[None] | None = None

    async def run(self) -> None:
        """Process until the worker stops; on the way out, commit and close."""
        raise NotImplementedError

    def _busy(self) -> bool:
        """Whether partitions are open or being opened (a revocation then waits for them)."""
        raise NotImplementedError

    async def on_start(self) -> None:
        self._loop_task = asyncio.ensure_future(self._run_or_crash())

    async def _run_or_crash(self) -> None:
        try:
            await self.run()
        except Exception as exc:  # the worker must not go on without it
            log.exception("%s stopped", self.what)
            await self.crash(exc)

    async def on_stop(self) -> None:
        """Let the loop commit and close its partitions, then end."""
        self._stopping = True
        self._changed.set()
        if self._loop_task is not None:
            await asyncio.wait_for(self._loop_task, COMMIT_TIMEOUT_S + 10)

    def assign(self, partitions: frozenset[int]) -> None:
        """Process ``partitions`` from now on (and no others)."""
        self._assigned = True
        self._wanted = partitions
        self._wanted_version += 1
        self._settled.clear()
        self._changed.set()

    async def revoke(self) -> None:
        """Stop: commit what was processed and close every partition (bounded wait).

        Committing here spares the next owner processing those records again; it is not
        needed for correctness, since that owner fences this worker's producers before it reads.
        """
        busy = self._busy()
        self.assign(frozenset())
        if not busy:
            return  # nothing open, nothing being opened: nothing to commit
        try:
            await asyncio.wait_for(self._settled.wait(), REVOKE_WAIT_S)
        except TimeoutError:
            log.warning("%s did not close its partitions within %.0f s", self.what, REVOKE_WAIT_S)

    @property
    def ready(self) -> bool:
        """True when the open partitions are the assigned ones (nothing to restore)."""
        return self._open_version == self._wanted_version
