"""The memory case: a real worker whose ``tasks`` table holds a million tasks.

Folding a million lifecycles through a worker would take most of the run, so the table gets its
tasks the way a replacement worker gets them after a crash: from the table's changelog topic
(``{orchestrator_id}-tasks-changelog``, raw task-id keys, ``encode_state`` values, each in the
partition of its task's ``task.events`` partition). The changelog is pre-filled with the state
the fold reaches for each task after created, started and completed (what ``bench.fold``
feeds), then a fresh worker restores all of it into RocksDB, rebuilds its deadline index over
the whole table, and serves status reads of sampled tasks. The figure is that process's peak
resident set size (``VmHWM`` in ``/proc/<pid>/status``), which covers recovery, the full-table
scan and serving.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from aiokafka.admin import NewTopic

from bench.workload import PARTITIONS, Result, created, event, produce_records, start, unique
from streams.domain import TaskCompleted, TaskStarted, derived_event_id, fold
from streams.kafka_clients import KafkaConnection
from streams.process import WorkerProcess
from streams.state_codec import encode_state
from streams.topics import TopicNames, ensure_topics, tasks_changelog

SAMPLES = 20
"""Tasks whose status is read from the worker before the memory is taken."""


TEMPLATE_ID = "tXXXXXXX"
"""The id templated states are made with: as long as every :func:`numbered_id`."""


def numbered_id(i: int) -> str:
    """The id of task ``i`` (up to 10 million): ``t`` and 7 digits, the template's length."""
    return f"t{i:07d}"


def _event_ids(task_id: str) -> list[str]:
    return [derived_event_id("bench", task_id, kind) for kind in ("created", "started", "done")]


def completed_state(task_id: str, at_ms: int) -> bytes:
    """The table value of ``task_id`` after the fold of its created, started, completed."""
    created_id, started_id, completed_id = _event_ids(task_id)
    events = [
        created(task_id, event_id=created_id, at_ms=at_ms),
        event(task_id, TaskStarted(), started_id, at_ms),
        event(task_id, TaskCompleted(b"{}"), completed_id, at_ms),
    ]
    return encode_state(fold(events)[task_id])


class Changelog:
    """Table records of completed tasks ``t0``, ``t1``, ... as the fold would store them.

    A million folds would take minutes of CPU on these machines; the value is the same for
    every task but for its id and its three event ids, so it is made once and those are put
    in. The stored bytes carry string lengths (MessagePack), so every id has the template's
    length: task ids are ``t`` and 7 digits (:func:`numbered_id`), event ids are uuids.
    :meth:`check` compares a sample with real folds.
    """

    def __init__(self, at_ms: int) -> None:
        self.at_ms = at_ms
        self._template = completed_state(TEMPLATE_ID, at_ms)
        self._marks = [mark.encode() for mark in _event_ids(TEMPLATE_ID)]

    def record(self, i: int) -> tuple[bytes, bytes]:
        """Key and value of task :func:`numbered_id` ``(i)``."""
        key = numbered_id(i)
        value = self._template.replace(TEMPLATE_ID.encode(), key.encode())
        for mark, real in zip(self._marks, _event_ids(key), strict=True):
            value = value.replace(mark, real.encode())
        return key.encode(), value

    def records(self, count: int) -> Iterator[tuple[bytes, bytes]]:
        """Records of tasks ``t0`` ... ``t{count-1}``."""
        return (self.record(i) for i in range(count))

    def check(self, count: int, samples: int = 200) -> None:
        """Raise AssertionError unless sampled records equal the fold's own states."""
        for i in random.sample(range(count), min(count, samples)):
            if self.record(i)[1] != completed_state(numbered_id(i), self.at_ms):
                raise AssertionError(f"templated state of {numbered_id(i)} differs from the fold's")


async def memory_case(bootstrap: str, root: Path, tasks: int) -> list[Result]:
    """``worker_rss_mb_1m_tasks`` and ``worker_restore_tasks_per_s`` with ``tasks`` tasks."""
    name = unique("mem")
    await ensure_topics(bootstrap, PARTITIONS, TopicNames(f"{name}."))
    # the worker's orchestrator id is its topic prefix and app id (Settings.orchestrator_id)
    changelog = tasks_changelog(f"{name}.{name}")
    admin = KafkaConnection(bootstrap).admin()
    await admin.start()
    try:
        config = {"cleanup.policy": "compact"}
        await admin.create_topics([NewTopic(changelog, PARTITIONS, 1, topic_configs=config)])
    finally:
        await admin.close()
    records = Changelog(int(time.time() * 1000))
    records.check(tasks)
    began = time.monotonic()
    await produce_records(bootstrap, changelog, records.records(tasks))
    print(
        f"pre-filled {changelog} with {tasks:,} task states in {time.monotonic() - began:.0f} s",
        flush=True,
    )
    began = time.monotonic()
    worker = start(bootstrap, root, name, wait=False)
    try:
        await _serving(worker, tasks, timeout_s=900)
        restore_s = time.monotonic() - began
        peak_kb, now_kb = _memory_kb(worker.process.pid)
    finally:
        worker.stop()
    print(
        f"restored {tasks:,} tasks in {restore_s:.0f} s; peak RSS {peak_kb / 1024:,.0f} MiB, "
        f"RSS then {now_kb / 1024:,.0f} MiB",
        flush=True,
    )
    return [
        Result("worker_rss_mb_1m_tasks", round(peak_kb / 1024, 1), "MiB"),
        Result("worker_restore_tasks_per_s", round(tasks / restore_s), "tasks/s"),
    ]


async def _serving(worker: WorkerProcess, tasks: int, timeout_s: float) -> None:
    """Wait until the worker rebuilt its deadline index over the table and serves status reads
    of sampled tasks (each found, completed)."""
    deadline = time.monotonic() + timeout_s
    while b"deadline index rebuilt" not in worker.log_file.read_bytes():
        if worker.process.poll() is not None:
            raise RuntimeError(f"worker exited:\n{worker.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker not done restoring:\n{worker.log_tail()}")
        await asyncio.sleep(0.5)
    pending = {numbered_id(i) for i in random.sample(range(tasks), min(tasks, SAMPLES))}
    async with aiohttp.ClientSession() as http:
        while pending:
            for task_id in sorted(pending):
                async with http.get(f"{worker.api_url}/tasks/{task_id}") as response:
                    if response.status == 200 and (await response.json())["status"] == "completed":
                        pending.discard(task_id)
            if time.monotonic() > deadline:
                raise RuntimeError(f"status reads failed for {sorted(pending)}")
            await asyncio.sleep(0.2)


def _memory_kb(pid: int) -> tuple[int, int]:
    """Peak (VmHWM) and current (VmRSS) resident set size of ``pid``, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])
