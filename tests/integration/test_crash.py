"""Exactly once across crashes: two workers, killed with SIGKILL mid-workload, or frozen.

The test drives 5,000 tasks through created → ready → started → completed (it plays the
executor: for every ``task.ready`` record it writes ``TaskStarted`` and ``TaskCompleted``). One
in five tasks depends on an earlier one, so dependency signals cross partitions and workers.
Afterwards ``task.ready`` and ``task.completed`` (read committed) must hold exactly one record
per task: none missing, none twice. The counts are printed (run with ``-s``), with where each
copy of a duplicate came from, and the whole history of any missing task.
``CRASH_TEST_ROUNDS=N`` kills each worker N times instead of once.

A second test freezes a worker (SIGSTOP) until its partitions have moved, then wakes it: a
zombie with open transactions, which must be fenced.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from schemas import decode_completed, decode_event, decode_ready, encode_event
from streams.domain import (
    Event,
    Source,
    TaskCompleted,
    TaskCreated,
    TaskStarted,
)
from streams.process import WorkerProcess
from streams.state_codec import decode_state
from tests.integration.conftest import PARTITIONS, Cluster
from tests.integration.kafka_io import Follower, read_to_end

TASKS = 5_000
WORKERS = ("w1", "w2")
ROUNDS = int(os.environ.get("CRASH_TEST_ROUNDS", "1"))
"""Kill rounds: each kills both workers, one after the other (``CRASH_TEST_ROUNDS`` for more)."""
KILLS = [(WORKERS[i % 2], (i + 1) * TASKS // (2 * ROUNDS + 1)) for i in range(2 * ROUNDS)]
"""(worker, completed tasks seen before it is killed), in order."""
DEADLINE_S = 240.0 + 120.0 * (ROUNDS - 1)


def _event(task_id: str, payload: object) -> Event:
    return Event(str(uuid.uuid4()), task_id, int(time.time() * 1000), Source.CLIENT, payload)  # type: ignore[arg-type]


Disruption = Callable[[int, dict[str, WorkerProcess]], bool]
"""Called after every poll with the number of tasks seen completed; may kill, freeze, restart.
Returns True while it still has something to do (the workload waits for it)."""


@pytest.mark.crash
@pytest.mark.timeout(DEADLINE_S + 120)
async def test_two_workers_one_killed_mid_workload_lose_and_duplicate_nothing(
    cluster: Cluster, bootstrap_servers: str
) -> None:
    killed: list[str] = []

    def kill_and_restart(completed: int, workers: dict[str, WorkerProcess]) -> bool:
        while len(killed) < len(KILLS) and completed >= KILLS[len(killed)][1]:
            name = KILLS[len(killed)][0]
            workers[name].kill()
            print(f"killed {name} at {int(time.time() * 1000)} (epoch ms)")
            killed.append(name)
            cluster.workers.remove(workers[name])
            workers[name] = cluster.start(name)  # same data dir: RocksDB + changelog
        return len(killed) < len(KILLS)

    report = await _run_workload(cluster, bootstrap_servers, kill_and_restart)
    assert killed == [name for name, _ in KILLS]
    _assert_exactly_once(report)


TAKEN_OVER = f"fold: folding partitions {list(range(PARTITIONS))}".encode()
"""What w2 logs when it folds every partition, w1's included."""


@pytest.mark.crash
@pytest.mark.timeout(DEADLINE_S + 120)
async def test_a_frozen_worker_whose_partitions_moved_cannot_commit_when_it_wakes(
    cluster: Cluster, bootstrap_servers: str
) -> None:
    # SIGSTOP mid-workload; once w2 folds all the partitions (after the session timeout), SIGCONT:
    # w1 wakes with open transactions and fetched records, a zombie. w2's producers fenced its
    # producers, so nothing w1 folded before or after its sleep commits unless w1 owns the
    # partition again and restored it; the workload goes on while w1 rejoins.
    frozen_log_offset: list[int] = []
    thawed_at_completed: list[int] = []

    def freeze_then_thaw(completed: int, workers: dict[str, WorkerProcess]) -> bool:
        w1, w2 = workers["w1"], workers["w2"]
        if not frozen_log_offset and completed >= TASKS // 4:
            w1.process.send_signal(signal.SIGSTOP)
            frozen_log_offset.append(w2.log_file.stat().st_size)
            print(f"froze w1 at {int(time.time() * 1000)} (epoch ms), {completed} completed")
        elif frozen_log_offset and not thawed_at_completed:
            with w2.log_file.open("rb") as log:
                log.seek(frozen_log_offset[0])
                if TAKEN_OVER in log.read():
                    w1.process.send_signal(signal.SIGCONT)
                    thawed_at_completed.append(completed)
                    print(
                        f"thawed w1 at {int(time.time() * 1000)} (epoch ms), {completed} completed"
                    )
        return not thawed_at_completed

    report = await _run_workload(cluster, bootstrap_servers, freeze_then_thaw)
    assert thawed_at_completed, "w2 never took over w1's partitions"
    assert thawed_at_completed[0] < TASKS, "the workload ended before w1 woke"
    _assert_exactly_once(report)


async def _run_workload(
    cluster: Cluster, bootstrap_servers: str, disrupt: Disruption
) -> dict[str, int]:
    """Drive TASKS tasks to completion on two workers while ``disrupt`` acts; count outputs.

    Plays the executor: for every ``task.ready`` record it writes ``TaskStarted`` and
    ``TaskCompleted``. Then stops the workers and reads ``task.ready`` and ``task.completed``
    (read committed) to their ends, prints the counts and, for any duplicate or missing task,
    where its records came from.
    """
    workers = {name: cluster.start(name) for name in WORKERS}
    run = uuid.uuid4().hex[:8]
    ids = [f"crash-{run}-{i:05d}" for i in range(TASKS)]
    rng = random.Random(7)
    dependencies = {
        tid: (ids[rng.randrange(i)],) if i and i % 5 == 0 else () for i, tid in enumerate(ids)
    }
    mine = set(ids)

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    completed_seen: set[str] = set()
    ready_seen: Counter[str] = Counter()
    try:
        async with (
            Follower(bootstrap_servers, cluster.topics.ready) as ready,
            Follower(bootstrap_servers, cluster.topics.completed) as done,
        ):
            for tid in ids:
                created = TaskCreated(
                    "scrape", "linkedin", tid, 5, dependencies[tid], 600_000, 1, 0, 600_000, 600_000
                )
                await producer.send(
                    cluster.topics.events, encode_event(_event(tid, created)), key=tid.encode()
                )
            await producer.flush()
            deadline = time.monotonic() + DEADLINE_S
            busy = True
            while (len(completed_seen) < TASKS or busy) and time.monotonic() < deadline:
                for record in await ready.next_batch(100):
                    tid = decode_ready(record.value or b"").task_id
                    if tid not in mine:
                        continue
                    ready_seen[tid] += 1
                    if ready_seen[tid] == 1:
                        key = tid.encode()
                        await producer.send(
                            cluster.topics.events, encode_event(_event(tid, TaskStarted())), key=key
                        )
                        result = TaskCompleted(json.dumps({"task": tid}).encode())
                        await producer.send(
                            cluster.topics.events, encode_event(_event(tid, result)), key=key
                        )
                for record in await done.next_batch(10):
                    tid = decode_completed(record.value or b"").task_id
                    if tid in mine:
                        completed_seen.add(tid)
                busy = disrupt(len(completed_seen), workers)
    finally:
        await producer.stop()

    # every writer gone (stopped cleanly, so no transaction is left open): read to the end
    cluster.stop_all()
    ready_records = await read_to_end(
        bootstrap_servers,
        cluster.topics.ready,
        PARTITIONS,
        keep=lambda r: decode_ready(r.value or b"").task_id in mine,
    )
    completed_records = await read_to_end(
        bootstrap_servers,
        cluster.topics.completed,
        PARTITIONS,
        keep=lambda r: decode_completed(r.value or b"").task_id in mine,
    )
    ready_counts = Counter(decode_ready(r.value or b"").task_id for r in ready_records)
    completed_counts = Counter(decode_completed(r.value or b"").task_id for r in completed_records)
    report = {
        "tasks": TASKS,
        "ready_records": len(ready_records),
        "ready_missing": len(mine - ready_counts.keys()),
        "ready_duplicated": sum(1 for c in ready_counts.values() if c > 1),
        "completed_records": len(completed_records),
        "completed_missing": len(mine - completed_counts.keys()),
        "completed_duplicated": sum(1 for c in completed_counts.values() if c > 1),
    }
    print(f"crash test: {json.dumps(report)}")
    for name, records, counts in (
        ("ready", ready_records, ready_counts),
        ("completed", completed_records, completed_counts),
    ):
        decode = decode_ready if name == "ready" else decode_completed
        twice = sorted(tid for tid, count in counts.items() if count > 1)[:5]
        for record in records:
            if decode(record.value or b"").task_id in twice:
                print(f"  {name} twice: {_provenance(record)}")
    missing = sorted((mine - ready_counts.keys()) | (mine - completed_counts.keys()))
    if missing:
        await _print_histories(bootstrap_servers, cluster, missing[:4])
    return report


def _assert_exactly_once(report: dict[str, int]) -> None:
    assert report["ready_missing"] == 0, report
    assert report["completed_missing"] == 0, report
    assert report["ready_duplicated"] == 0, report
    assert report["completed_duplicated"] == 0, report
    assert report["ready_records"] == TASKS and report["completed_records"] == TASKS, report


def _provenance(record: Any) -> str:
    """Where an output record sits and which event of which worker wrote it (for diagnosis)."""
    headers = {key: value.decode() for key, value in record.headers or ()}
    return (
        f"{record.topic}[{record.partition}]@{record.offset} t={record.timestamp} "
        f"from {headers.get('source.topic')}[{headers.get('source.partition')}]"
        f"@{headers.get('source.offset')} by {headers.get('worker')}"
    )


async def _print_histories(bootstrap_servers: str, cluster: Cluster, task_ids: list[str]) -> None:
    """Every record of ``task_ids`` on ``task.events`` and the DLQ, in log order (diagnosis)."""
    wanted = {tid.encode() for tid in task_ids}
    for topic in (cluster.topics.events, cluster.topics.dlq):
        records = await read_to_end(
            bootstrap_servers, topic, PARTITIONS, keep=lambda r: r.key in wanted
        )
        for record in records:
            headers = {key: value.decode() for key, value in record.headers or ()}
            try:
                event = decode_event(record.value or b"")
                what = f"{type(event.payload).__name__} {event.source} id={event.event_id[:8]}"
            except Exception as exc:
                what = f"undecodable: {exc}"
            print(
                f"  history {record.key!r} {_provenance(record)}: {what} "
                f"{headers.get('reason', '')} {headers.get('detail', '')}"
            )
    changelog = f"{cluster.orchestrator_id}-tasks-changelog"
    for committed in (True, False):
        records = await read_to_end(
            bootstrap_servers,
            changelog,
            PARTITIONS,
            keep=lambda r: r.key in wanted,
            committed=committed,
        )
        for record in records:
            state = decode_state(record.value or b"")
            print(
                f"  table {'committed' if committed else 'any'} {record.key!r} "
                f"{record.topic}[{record.partition}]@{record.offset} t={record.timestamp} "
                f"status={state.status} events={len(state.seen_event_ids)}"
            )
