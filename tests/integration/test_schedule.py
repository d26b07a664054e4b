"""Delayed and periodic tasks with a real broker and real workers.

Given a task created with ``not_before`` 3 s ahead, when a worker with its handler runs, then
the handler starts no earlier than that time (its start is noted by the handler itself) and
does start after it. Given a definition every 2 s, when its worker is killed and started again,
then every occurrence on the grid is either created exactly once or counted as skipped (the
latest-missed policy), and no occurrence's task is created twice in the log.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas import decode_event
from streams.client import TaskManager
from streams.domain import PeriodicOccurrenceDue, TaskCreated
from streams.domain.periodic import occurrence_id
from streams.process import WorkerProcess
from tests.integration.conftest import HANDLERS, PARTITIONS, Cluster, platform
from tests.integration.handlers_for_tests import STARTS_FILE_ENV
from tests.integration.kafka_io import read_to_end

EVERY_S = 2


@pytest.fixture
def notes_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "handler-notes.log"
    monkeypatch.setenv(STARTS_FILE_ENV, str(path))
    return path


def _starts(path: Path, task_id: str) -> list[float]:
    """When the handler started ``task_id`` (Unix seconds, noted by the handler itself)."""
    if not path.exists():
        return []
    lines = (line.split() for line in path.read_text(encoding="utf-8").splitlines())
    return [float(at) for at, what, tid, *_ in lines if tid == task_id and what == "started"]


async def _wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {what}")


async def _poll(
    read: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float, what: str
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}; last: {value}")
        await asyncio.sleep(0.1)


def _client(cluster: Cluster, worker: WorkerProcess) -> dict[str, Any]:
    return {
        "bootstrap_servers": cluster.bootstrap_servers,
        "api_url": worker.api_url,
        "partitions": PARTITIONS,
        "topic_prefix": cluster.topic_prefix,
        "read_timeout": 60.0,
    }


def _start(cluster: Cluster, name: str) -> WorkerProcess:
    return cluster.start(name, handlers=HANDLERS, timer_interval="0.1")


async def test_a_task_with_not_before_starts_only_after_it(
    cluster: Cluster, notes_file: Path
) -> None:
    worker = _start(cluster, "delay")
    async with TaskManager(_client(cluster, worker)) as tm:
        not_before = datetime.now(UTC) + timedelta(seconds=3)
        task_id = await tm.create_task(
            "sleepy", platform("delayed"), "0", timeout=30, not_before=not_before
        )
        held = await tm.get_task_status(task_id)
        started = await _wait_for(lambda: _starts(notes_file, task_id), 30, "the handler started")
        done = await _poll(
            lambda: tm.get_task_status(task_id),
            lambda s: s["status"] == "completed",
            30,
            "the task completed",
        )

    assert held["status"] == "pending"
    assert held["waiting_on"]["reason"] == "not_before"
    assert held["not_before"] == not_before.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    assert len(started) == 1
    assert started[0] >= not_before.timestamp(), (
        f"the handler started {not_before.timestamp() - started[0]:.3f} s before not_before"
    )
    statuses = [t[0] for t in done["history"]]
    assert statuses[:2] == ["pending", "ready"]
    assert statuses[-1] == "completed"


async def test_a_periodic_task_fires_once_per_occurrence_across_a_worker_restart(
    cluster: Cluster,
) -> None:
    """Kill the worker after 3 occurrences, keep it down past at least 2 more, start it again;
    wait for 3 occurrences after the restart. Then every grid point from the first occurrence
    to the last is created exactly once or skipped (only the latest missed one is created),
    and the log holds one ``TaskCreated`` per created occurrence."""
    name = f"every2-{cluster.app_id}"
    worker = _start(cluster, "periodic")
    config = _client(cluster, worker)
    start = datetime.fromtimestamp(math.ceil(time.time()) + EVERY_S, UTC)
    async with TaskManager(config) as tm:
        await tm.schedule_periodic(
            name,
            task_type="feed_scan",  # no handler: its tasks wait, ready, to be counted
            platform=platform("periodic"),
            target="feed/1",
            every=timedelta(seconds=EVERY_S),
            start_at=start,
        )
        before = await _poll(
            lambda: tm.get_periodic(name),
            lambda d: d["periodic"]["occurrences"] >= 3,
            30,
            "3 occurrences before the restart",
        )
    worker.kill()
    down_at = time.time()
    await asyncio.sleep(max(0.0, down_at + 2 * EVERY_S + 0.5 - time.time()))  # the downtime

    worker = _start(cluster, "periodic")  # the same data dir: a restart
    async with TaskManager(_client(cluster, worker)) as tm:
        after = await _poll(
            lambda: tm.get_periodic(name),
            lambda d: d["periodic"]["occurrences"] >= before["periodic"]["occurrences"] + 3,
            60,
            "3 occurrences after the restart",
        )
        await tm.cancel_periodic(name)
        removed = await tm.get_periodic(name)
        listed = await tm.list_periodic()
        occurrences = await _occurrence_records(cluster, name)
        created = [task_id for task_id, kind in occurrences if kind == "created"]
        statuses = [await tm.get_task_status(task_id) for task_id in sorted(set(created))]

    spec = removed["periodic"]
    assert removed["status"] == "cancelled"
    assert [d["name"] for d in listed if d["name"] == name] == [name]
    # no occurrence created twice: one TaskCreated per task id in the committed log
    assert [tid for tid, n in Counter(created).items() if n > 1] == []
    assert len(created) == spec["occurrences"] >= after["periodic"]["occurrences"]
    # every created occurrence is on the grid, and each one's task exists once, created once
    start_ms = int(start.timestamp() * 1000)
    times = sorted(_occurrence_ms(task_id, name) for task_id in created)
    dues = {task_id for task_id, kind in occurrences if kind == "due"}
    assert dues == set(created), "each created occurrence was due, and nothing else created"
    assert all((t - start_ms) % (EVERY_S * 1000) == 0 for t in times)
    assert all([h[0] for h in s["history"]][:1] == ["ready"] for s in statuses)
    # the policy: grid points from the first to the last are created or skipped, never both
    grid_points = (times[-1] - times[0]) // (EVERY_S * 1000) + 1
    assert spec["occurrences"] + spec["skipped"] == grid_points
    assert spec["skipped"] >= 2, "the worker was down past at least two occurrences"
    gaps = [b - a for a, b in itertools.pairwise(times) if b - a != EVERY_S * 1000]
    assert len(gaps) == 1, f"one gap, the downtime: {gaps}"
    assert spec["last_occurrence_ms"] == times[-1]


async def _occurrence_records(cluster: Cluster, name: str) -> list[tuple[str, str]]:
    """(task id, "created") for each committed ``TaskCreated`` of an occurrence of ``name``,
    and (occurrence task id, "due") for each ``PeriodicOccurrenceDue`` a timer wrote."""
    prefix = f"{name}@".encode()
    definition = f"periodic:{name}".encode()
    records = await read_to_end(
        cluster.bootstrap_servers,
        f"{cluster.topic_prefix}task.events",
        PARTITIONS,
        keep=lambda r: r.key is not None and (r.key.startswith(prefix) or r.key == definition),
    )
    found = []
    for record in records:
        event = decode_event(record.value)
        if isinstance(event.payload, TaskCreated):
            found.append((event.task_id, "created"))
        elif isinstance(event.payload, PeriodicOccurrenceDue):
            found.append((occurrence_id(name, event.payload.occurrence_ms), "due"))
    return found


def _occurrence_ms(task_id: str, name: str) -> int:
    text = task_id.removeprefix(f"{name}@")
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
