"""``python -m bench``: the orchestrator measured on a local broker, side by side in one run.

Cases (each on topics of its own, through real worker processes):

- ``fold_events_per_s``: a worker folds a pre-filled ``task.events`` (created, started,
  completed per task): decode, fold, table write, effects, transactions.
- ``raw_consume_events_per_s``: a plain aiokafka consumer decoding the same topic with fastavro:
  the upper bound; the fold's ratio to it.
- ``lifecycle_tasks_per_s``: tasks through the whole path (created, ready, dispatched, a no-op
  handler, completed) with no rate limits.
- ``dependency_latency_ms_p50`` / ``_p99``: from a task's ``TaskCompleted`` event to a reader of
  ``task.ready`` (read committed) receiving its dependent.

Machines here are shared and noisy: compare ratios within one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas import decode_event, decode_ready, encode_event
from streams import localbroker
from streams.domain import Event, Source, TaskCompleted, TaskCreated, TaskStarted
from streams.process import WorkerProcess, free_port, start_worker
from streams.topics import TopicNames, ensure_topics

PARTITIONS = 8
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Result:
    """One figure of the run, as written to the JSON file."""

    name: str
    value: float
    unit: str
    ratio_to: str | None = None
    ratio: float | None = None


def _created(task_id: str, dependencies: tuple[str, ...] = (), task_type: str = "bench") -> Event:
    payload = TaskCreated(
        task_type, "bench", task_id, 5, dependencies, 600_000, 1, 0, 600_000, 600_000
    )
    return Event(str(uuid.uuid4()), task_id, int(time.time() * 1000), Source.CLIENT, payload)


def _event(task_id: str, payload: object) -> Event:
    return Event(str(uuid.uuid4()), task_id, int(time.time() * 1000), Source.CLIENT, payload)  # type: ignore[arg-type]


async def _produce(bootstrap: str, topic: str, events: list[Event]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=256_000
    )
    await producer.start()
    try:
        for event in events:
            await producer.send(topic, encode_event(event), key=event.task_id.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _count_until(bootstrap: str, topic: str, wanted: int, timeout_s: float) -> float:
    """Seconds until ``wanted`` committed records are on ``topic`` (from its beginning)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    started, seen = time.monotonic(), 0
    try:
        while seen < wanted and time.monotonic() - started < timeout_s:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            seen += sum(len(records) for records in batches.values())
    finally:
        await consumer.stop()
    if seen < wanted:
        raise RuntimeError(f"only {seen} of {wanted} records on {topic} after {timeout_s:g} s")
    return time.monotonic() - started


def _worker(bootstrap: str, root: Path, name: str, handlers: bool = False) -> WorkerProcess:
    settings = {"app_id": name, "topic_prefix": f"{name}.", "partitions": str(PARTITIONS)}
    if handlers:
        settings["handlers"] = "bench.handlers"
    worker = start_worker(
        bootstrap,
        root / name,
        free_port(),
        settings,
        extra_env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    worker.wait_ready(timeout_s=120)
    return worker


async def fold_and_raw(bootstrap: str, root: Path, tasks: int) -> list[Result]:
    name = f"fold-{uuid.uuid4().hex[:6]}"
    topics = TopicNames(f"{name}.")
    await ensure_topics(bootstrap, PARTITIONS, topics)
    events: list[Event] = []
    for i in range(tasks):
        tid = f"t{i}"
        events += [_created(tid), _event(tid, TaskStarted()), _event(tid, TaskCompleted(b"{}"))]
    await _produce(bootstrap, topics.events, events)
    started = time.monotonic()
    worker = _worker(bootstrap, root, name)
    try:
        await _count_until(bootstrap, topics.completed, tasks, timeout_s=1800)
        fold_s = time.monotonic() - started
    finally:
        worker.stop()
    raw_s = await _raw_consume(bootstrap, topics.events, len(events))
    fold_rate, raw_rate = len(events) / fold_s, len(events) / raw_s
    return [
        Result(
            "fold_events_per_s",
            round(fold_rate),
            "events/s",
            "raw_consume_events_per_s",
            round(fold_rate / raw_rate, 3),
        ),
        Result("raw_consume_events_per_s", round(raw_rate), "events/s"),
    ]


async def _raw_consume(bootstrap: str, topic: str, wanted: int) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=4_000_000,
    )
    await consumer.start()
    started, seen = time.monotonic(), 0
    try:
        while seen < wanted:
            batches = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for records in batches.values():
                for record in records:
                    decode_event(record.value or b"")
                seen += len(records)
    finally:
        await consumer.stop()
    return time.monotonic() - started


async def lifecycle(bootstrap: str, root: Path, tasks: int) -> list[Result]:
    name = f"life-{uuid.uuid4().hex[:6]}"
    topics = TopicNames(f"{name}.")
    worker = _worker(bootstrap, root, name, handlers=True)
    try:
        started = time.monotonic()
        await _produce(
            bootstrap,
            topics.events,
            [_created(f"t{i}", task_type="bench_noop") for i in range(tasks)],
        )
        await _count_until(bootstrap, topics.completed, tasks, timeout_s=1800)
        elapsed = time.monotonic() - started
    finally:
        worker.stop()
    return [Result("lifecycle_tasks_per_s", round(tasks / elapsed, 1), "tasks/s")]


async def dependency_latency(
    bootstrap: str, root: Path, pairs: int, rate_per_s: float
) -> list[Result]:
    name = f"dep-{uuid.uuid4().hex[:6]}"
    topics = TopicNames(f"{name}.")
    worker = _worker(bootstrap, root, name)
    latencies: list[float] = []
    try:
        events = []
        for i in range(pairs):
            events += [_created(f"a{i}"), _created(f"b{i}", (f"a{i}",))]
        await _produce(bootstrap, topics.events, events)
        consumer = AIOKafkaConsumer(
            topics.ready,
            bootstrap_servers=bootstrap,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            group_id=None,
        )
        await consumer.start()
        completed_at: dict[str, float] = {}
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        await producer.start()
        try:

            async def complete_all() -> None:
                for i in range(pairs):
                    tid = f"a{i}"
                    await producer.send(
                        topics.events, encode_event(_event(tid, TaskStarted())), key=tid.encode()
                    )
                    completed_at[f"b{i}"] = time.time()
                    await producer.send(
                        topics.events,
                        encode_event(_event(tid, TaskCompleted(b"{}"))),
                        key=tid.encode(),
                    )
                    await asyncio.sleep(1 / rate_per_s)

            driver = asyncio.create_task(complete_all())
            deadline = time.monotonic() + 600
            while len(latencies) < pairs and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=100)
                now = time.time()
                for records in batches.values():
                    for record in records:
                        tid = decode_ready(record.value or b"").task_id
                        if tid in completed_at:
                            latencies.append((now - completed_at[tid]) * 1000)
            await driver
        finally:
            await producer.stop()
            await consumer.stop()
    finally:
        worker.stop()
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return [
        Result("dependency_latency_ms_p50", round(cuts[49], 1), "ms"),
        Result("dependency_latency_ms_p99", round(cuts[98], 1), "ms"),
    ]


async def run(bootstrap: str, root: Path, args: argparse.Namespace) -> list[Result]:
    results = await fold_and_raw(bootstrap, root, args.events // 3)
    results += await lifecycle(bootstrap, root, args.tasks)
    results += await dependency_latency(bootstrap, root, args.pairs, args.rate)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events", type=int, default=60_000, help="events for the fold case (3 per task)"
    )
    parser.add_argument("--tasks", type=int, default=2_000, help="tasks for the lifecycle case")
    parser.add_argument(
        "--pairs", type=int, default=300, help="dependency pairs for the latency case"
    )
    parser.add_argument(
        "--rate", type=float, default=50.0, help="completions per second in the latency case"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-") as tmp:
        root = Path(tmp)
        broker = localbroker.up(port=free_port(), data_dir=root / "kafka")
        try:
            results = asyncio.run(run(broker.bootstrap_servers, root, args))
        finally:
            localbroker.down(root / "kafka")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    width = max(len(r.name) for r in results)
    print(f"{'case':<{width}}  {'value':>12}  unit       ratio")
    for r in results:
        ratio = f"{r.ratio:.3f} of {r.ratio_to}" if r.ratio is not None else ""
        print(f"{r.name:<{width}}  {r.value:>12,}  {r.unit:<9}  {ratio}")
    print(f"\nwritten to {RESULTS / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
