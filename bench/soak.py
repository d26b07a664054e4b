"""The soak: tasks at a steady rate through a worker whose results expire and whose finished
tasks retire, and what the worker holds at the start and at the end.

A worker with a no-op handler, ``task_retention`` of a few seconds and tasks whose
``result_ttl`` is two seconds takes ``tasks`` tasks at ``rate`` per second (created, ready,
dispatched, run, completed, their results expired, retired). Its resident memory (VmRSS),
open file descriptors and ``data_dir`` size (its RocksDB tables; the worker's log file, which
the bench puts there, is left out) are read once the warm-up has passed through the
whole cycle (the start) and once every task of the run has retired (the end), with samples in
between. Flat figures are what the cleanup promises: nothing in the worker grows with the
number of tasks it has seen.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaProducer

from bench.workload import Result, count_until, event, start, unique
from schemas import encode_event
from streams.domain import TaskCreated
from streams.kafka_clients import KafkaConnection
from streams.partitions import partitioner
from streams.process import WorkerProcess
from streams.topics import TopicNames

RETENTION_S = 5.0
RESULT_TTL_MS = 2_000
WARM_UP = 1_000
SAMPLES = 5


def _created(task_id: str) -> bytes:
    payload = TaskCreated(
        "bench_noop", "bench", task_id, 5, (), 600_000, 1, 0, RESULT_TTL_MS, 600_000
    )
    return encode_event(event(task_id, payload))


async def soak(bootstrap: str, root: Path, tasks: int, rate: float) -> list[Result]:
    """``soak_*`` rows: RSS, open files and ``data_dir`` size at the start and the end."""
    name = unique("soak")
    topics = TopicNames(f"{name}.")
    settings = {"task_retention": str(RETENTION_S), "timer_interval": "0.2"}
    worker = start(bootstrap, root, name, handlers=True, settings=settings)
    data_dir = root / name
    try:
        producer = KafkaConnection(bootstrap).producer(acks="all", partitioner=partitioner)
        await producer.start()
        try:
            await _feed(producer, topics.events, "w", WARM_UP, rate)
            await count_until(bootstrap, topics.completed, WARM_UP, timeout_s=300)
            await _table_empties(worker, timeout_s=120)
            first = _sample(worker, data_dir)
            print(f"soak start: {first}", flush=True)
            began = time.monotonic()
            samples = [first]
            chunk = max(1, tasks // SAMPLES)
            for offset in range(0, tasks, chunk):
                await _feed(
                    producer, topics.events, f"t{offset}-", min(chunk, tasks - offset), rate
                )
                samples.append(_sample(worker, data_dir))
                print(f"soak after {offset + chunk:,} tasks: {samples[-1]}", flush=True)
            # every completion's record, then its tombstone (the result expired), is on
            # task.completed: 2 records a task
            await count_until(
                bootstrap, topics.completed, 2 * (WARM_UP + tasks), timeout_s=300 + tasks / 50
            )
            await _table_empties(worker, timeout_s=300)
            elapsed = time.monotonic() - began
            last = _sample(worker, data_dir)
            samples.append(last)
            print(f"soak end ({elapsed:.0f} s): {last}", flush=True)
        finally:
            await producer.stop()
    finally:
        worker.stop()
    return [
        Result("soak_tasks", tasks, "tasks"),
        Result("soak_rss_mb_start", first["rss_mb"], "MiB"),
        Result("soak_rss_mb_end", last["rss_mb"], "MiB"),
        Result("soak_open_fds_start", first["open_fds"], "fds"),
        Result("soak_open_fds_end", last["open_fds"], "fds"),
        Result("soak_data_dir_mb_start", first["data_dir_mb"], "MiB"),
        Result("soak_data_dir_mb_end", last["data_dir_mb"], "MiB"),
        Result("soak_data_dir_mb_max", max(s["data_dir_mb"] for s in samples), "MiB"),
    ]


async def _feed(
    producer: AIOKafkaProducer, topic: str, prefix: str, count: int, rate: float
) -> None:
    """``count`` new tasks at ``rate`` per second (in ticks of a tenth of a second)."""
    began = time.monotonic()
    per_tick = max(1, round(rate / 10))
    pending = []
    for i in range(count):
        task_id = f"{prefix}{i:07d}"
        pending.append(await producer.send(topic, _created(task_id), key=task_id.encode()))
        if (i + 1) % per_tick == 0:
            for sent in pending:
                await sent
            pending = []
            ahead = began + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)  # the steady rate: the pace is the measurement
    for sent in pending:
        await sent


async def _table_empties(worker: WorkerProcess, timeout_s: float) -> None:
    """Wait until the worker's table holds no task (every one retired)."""
    deadline = time.monotonic() + timeout_s
    held = -1
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(f"{worker.api_url}/state") as response:
                if response.status == 200:
                    held = len((await response.json())["tasks"])
                    if held == 0:
                        return
            await asyncio.sleep(0.5)
    raise RuntimeError(f"the table still holds {held} tasks after {timeout_s:g} s")


def _sample(worker: WorkerProcess, data_dir: Path) -> dict[str, float]:
    pid = worker.process.pid
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    size = 0
    for folder, _, files in os.walk(data_dir):
        for file in files:
            path = Path(folder) / file
            if path.name != worker.log_file.name and path.exists():  # state, not the log
                size += path.stat().st_size
    return {
        "rss_mb": round(rss_kb / 1024, 1),
        "open_fds": len(os.listdir(f"/proc/{pid}/fd")),
        "data_dir_mb": round(size / 2**20, 1),
    }
