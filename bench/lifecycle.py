"""Whole-path cases: tasks through creation, scheduling, a handler and completion, and the latency
of a dependency signal at half of that load."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from bench.workload import (
    PARTITIONS,
    Result,
    count_until,
    created,
    event,
    produce_events,
    start,
    unique,
)
from schemas import decode_ready, encode_event
from streams.domain import TaskCompleted, TaskStarted
from streams.kafka_clients import KafkaConnection
from streams.partitions import partition_of, partitioner
from streams.topics import TopicNames

WARM_UP = 200
"""Tasks run through a fresh worker before the lifecycle case is timed."""


async def lifecycle(bootstrap: str, root: Path, tasks: int) -> list[Result]:
    """Tasks/s from creation to ``task.completed``: ready, dispatched, a no-op handler, completed.

    Timed from the first write of the ``TaskCreated`` events to the last committed completion,
    with the worker already running and warmed up: ``WARM_UP`` tasks are run through first (a
    worker answers ``/ready`` once its fold is open; its scheduler may open its partitions
    seconds later, and that start-up is not the steady rate); no rate limits. A worker whose
    agents crashed at start-up and stalled (seen once: the scheduler's table could not see its
    just-created changelog topic, ``PartitionsMismatch`` on every restart) is reported and
    replaced once.
    """
    for attempt in (1, 2):
        name = unique("life")
        topics = TopicNames(f"{name}.")
        worker = start(bootstrap, root, name, handlers=True)
        try:
            warm = (created(f"w{i}", task_type="bench_noop") for i in range(WARM_UP))
            await produce_events(bootstrap, topics.events, warm)
            await count_until(bootstrap, topics.completed, WARM_UP, timeout_s=120)
            started = time.monotonic()
            await produce_events(
                bootstrap,
                topics.events,
                (created(f"t{i}", task_type="bench_noop") for i in range(tasks)),
            )
            await count_until(
                bootstrap, topics.completed, WARM_UP + tasks, timeout_s=120 + tasks / 5
            )
            elapsed = time.monotonic() - started
            return [Result("lifecycle_tasks_per_s", round(tasks / elapsed, 1), "tasks/s")]
        except RuntimeError as exc:
            crashes = [
                line
                for line in worker.log_file.read_text(errors="replace").splitlines()
                if "Crashed reason=" in line
            ]
            print(f"lifecycle attempt {attempt} stalled ({exc}); {len(crashes)} agent crashes:")
            print("\n".join(line[:300] for line in crashes[:3]), flush=True)
        finally:
            worker.stop()
    raise RuntimeError("the lifecycle case stalled twice")


async def dependency_latency(
    bootstrap: str, root: Path, lifecycle_tasks_per_s: float, load: float, duration_s: float
) -> list[Result]:
    """Milliseconds from a task's ``TaskCompleted`` write to a ``read_committed`` reader of
    ``task.ready`` receiving its dependent, with dependents created at ``load`` (a fraction) of
    the measured ``lifecycle_tasks_per_s``.

    Every tick creates a pair (A, then B depending on A) and completes the A created half a
    second earlier (started, completed: a caller driving its own task), so the worker folds
    six events per pair (the two creations, start, completion, B's registration at A and A's
    answer to B) while the latencies are taken. Pairs alternate between two kinds, reported
    apart: cross-partition (``a{i}`` and ``b{i}`` on different partitions: A's answer to B is a
    second transaction, on B's partition) and grouped (``g{i}/a``, ``g{i}/b``: one partition,
    B made ready in the step that folds A's completion).
    """
    dependents_per_s = lifecycle_tasks_per_s * load
    name = unique("dep")
    topics = TopicNames(f"{name}.")
    worker = start(bootstrap, root, name)
    pairs = max(int(dependents_per_s * duration_s), 100)
    lag = max(int(dependents_per_s / 2), 1)
    completed_at: dict[str, float] = {}
    latencies: dict[str, list[float]] = {"cross": [], "group": []}
    try:
        consumer = KafkaConnection(bootstrap).consumer(
            topics.ready,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            group_id=None,
        )
        producer = KafkaConnection(bootstrap).producer(
            acks="all", linger_ms=0, partitioner=partitioner
        )
        await consumer.start()
        await producer.start()
        try:

            async def send(task_id: str, payload: object) -> None:
                value = encode_event(event(task_id, payload))  # type: ignore[arg-type]
                await producer.send(topics.events, value, key=task_id.encode())

            async def drive() -> None:
                begin = time.monotonic()
                for i in range(pairs + lag):
                    await asyncio.sleep(max(0.0, begin + i / dependents_per_s - time.monotonic()))
                    if i < pairs:
                        a, b = _pair(i)
                        await producer.send(topics.events, encode_event(created(a)), key=a.encode())
                        value = encode_event(created(b, (a,)))
                        await producer.send(topics.events, value, key=b.encode())
                    if i >= lag:
                        a, b = _pair(i - lag)
                        await send(a, TaskStarted())
                        completed_at[b] = time.time()
                        await send(a, TaskCompleted(b"{}"))

            driver = asyncio.create_task(drive())
            deadline = time.monotonic() + duration_s + 600
            while _count(latencies) < pairs and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=100)
                now = time.time()
                for records in batches.values():
                    for record in records:
                        task_id = decode_ready(record.value or b"").task_id
                        if task_id in completed_at:
                            kind = "group" if "/" in task_id else "cross"
                            latencies[kind].append((now - completed_at.pop(task_id)) * 1000)
            await driver
        finally:
            await producer.stop()
            await consumer.stop()
    finally:
        worker.stop()
    if _count(latencies) < pairs:
        raise RuntimeError(f"only {_count(latencies)} of {pairs} dependents became ready")
    results = [
        Result(
            "dependency_load_dependents_per_s",
            round(dependents_per_s, 1),
            "tasks/s",
            "lifecycle_tasks_per_s",
            round(dependents_per_s / lifecycle_tasks_per_s, 3),
        )
    ]
    kinds = (("cross", "dependency_latency_ms"), ("group", "dependency_latency_group_ms"))
    for kind, name in kinds:
        cuts = statistics.quantiles(latencies[kind], n=100, method="inclusive")
        results.append(Result(f"{name}_p50", round(cuts[49], 1), "ms"))
        results.append(Result(f"{name}_p99", round(cuts[98], 1), "ms"))
    return results


def _pair(i: int) -> tuple[str, str]:
    """Pair ``i``'s dependency and dependent: even pairs on two partitions, odd ones grouped."""
    if i % 2:
        return f"g{i}/a", f"g{i}/b"
    a, b = f"a{i}", f"b{i}"
    suffix = 0
    while partition_of(a.encode(), PARTITIONS) == partition_of(b.encode(), PARTITIONS):
        suffix += 1  # another name for the dependent until it is on another partition
        b = f"b{i}.{suffix}"
    return a, b


def _count(latencies: dict[str, list[float]]) -> int:
    return sum(len(values) for values in latencies.values())
