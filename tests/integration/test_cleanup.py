"""Cleanup by the clock on a real worker: results expire, finished tasks leave the table.

A worker runs with a short ``task_retention``; tasks are created with a short ``result_ttl``.
What a user sees is checked where they see it: the result route answers "expired", the
compacted ``task.completed`` holds a tombstone for the task, the status answers 404 once the task
retired, the worker's table (``/state``) no longer holds it, and ``task.events`` still holds the
task's whole history, the timer's two events included.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from schemas import decode_event, encode_event
from streams.client import TaskManager
from streams.domain import (
    Event,
    Source,
    TaskCompleted,
    TaskCreated,
    TaskProgress,
    TaskStarted,
)
from streams.errors import ResultExpiredError, TaskNotFoundError
from streams.process import WorkerProcess
from tests.integration.conftest import PARTITIONS, Cluster
from tests.integration.kafka_io import read_until, send_all

RETENTION_S = 2.0
RESULT_TTL_S = 1.0
TASKS = 30
WAIT_S = 60.0


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_S:g} s: {what}")


async def _table(worker: WorkerProcess) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{worker.api_url}/state") as response:
                if response.status == 200:
                    tasks: dict[str, Any] = (await response.json())["tasks"]
                    return tasks


async def test_results_expire_and_finished_tasks_retire_from_the_table(
    cluster: Cluster,
) -> None:
    worker = cluster.start("w1", task_retention=str(RETENTION_S), timer_interval="0.1")
    config = {
        "bootstrap_servers": cluster.bootstrap_servers,
        "api_url": worker.api_url,
        "topic_prefix": cluster.topic_prefix,
        "app_id": cluster.app_id,
        "partitions": PARTITIONS,
        "result_ttl": RESULT_TTL_S,
    }
    run = uuid.uuid4().hex[:6]
    async with TaskManager(config) as tm:
        ids = [
            await tm.create_task("profile_scrape", "web", f"https://x/{i}", task_id=f"c{run}-{i}")
            for i in range(TASKS)
        ]
        for task_id in ids:
            await tm.start_task(task_id)
        completed, failed = ids[: TASKS // 2], ids[TASKS // 2 :]
        first = completed[0]
        await tm.complete_task(first, {"n": first})
        assert await tm.get_task_result(first) == {"n": first}  # within its ttl
        for task_id in completed[1:]:
            await tm.complete_task(task_id, {"n": task_id})
        for task_id in failed:
            await tm.fail_task(task_id, "boom", retryable=False)

        async def expired() -> bool:
            try:
                await tm.get_task_result(first)
            except ResultExpiredError:
                return True
            return False

        await _eventually(expired, "the result answered as expired")
        status = await tm.get_task_status(first)
        assert status["status"] == "completed"
        assert status["result_expired"] is True
        assert status["result_available"] is False

        async def all_retired() -> bool:
            table = await _table(worker)
            return not any(task_id in table for task_id in ids)

        await _eventually(all_retired, "every task gone from the worker's table")
        with pytest.raises(TaskNotFoundError):
            await tm.get_task_status(first)

    # the compacted task.completed: each completed task's record, then its tombstone
    wanted = {task_id.encode() for task_id in completed}

    def tombstoned(records: list[Any]) -> bool:
        return {r.key for r in records if r.value is None} >= wanted

    records = await read_until(
        cluster.bootstrap_servers,
        cluster.topics.completed,
        tombstoned,
        keep=lambda r: r.key in wanted,
    )
    for key in wanted:
        values = [r.value for r in records if r.key == key]
        assert values[0] is not None and values[-1] is None, f"{key!r}: {values}"

    # the history stays in the log: the timer's two events for the completed one, one for the
    # failed one
    mine = {first.encode(), failed[0].encode()}
    events = await read_until(
        cluster.bootstrap_servers,
        cluster.topics.events,
        lambda got: sum(decode_event(r.value).kind == "TaskRetired" for r in got) >= 2,
        keep=lambda r: r.key in mine,
    )
    kinds = {key: [decode_event(r.value).kind for r in events if r.key == key] for key in mine}
    assert kinds[first.encode()][0] == "TaskCreated"
    assert kinds[first.encode()][-2:] == ["TaskResultExpired", "TaskRetired"]
    assert kinds[failed[0].encode()][-1] == "TaskRetired"
    assert "TaskResultExpired" not in kinds[failed[0].encode()]


SOAK_TASKS = 5_000
SOAK_STATE_BYTES = 4 * 1024
"""A finished task of the soak (six events, a 20-byte result) is stored in about 1 KiB."""


async def test_a_soak_of_five_thousand_tasks_keeps_states_small_and_ends_with_an_empty_table(
    cluster: Cluster,
) -> None:
    """5,000 tasks, each created, started, three times in progress and completed, with a
    result that expires after a second: while they pass, no stored state outgrows a small
    bound; at the end each result has its tombstone and the table holds none of them."""
    worker = cluster.start("w1", task_retention=str(RETENTION_S), timer_interval="0.2")
    run = uuid.uuid4().hex[:6]
    ids = [f"soak{run}-{i:05d}" for i in range(SOAK_TASKS)]
    now = int(time.time() * 1000)

    def event(task_id: str, payload: Any, step: int) -> tuple[bytes, bytes]:
        created_at = now + step
        value = encode_event(Event(str(uuid.uuid4()), task_id, created_at, Source.CLIENT, payload))
        return task_id.encode(), value

    created = TaskCreated("soak", "web", "x", 5, (), 600_000, 1, 0, 1_000, 600_000)
    records = []
    for task_id in ids:
        records.append(event(task_id, created, 0))
        records.append(event(task_id, TaskStarted(), 1))
        records += [event(task_id, TaskProgress(p), 2) for p in (0.25, 0.5, 0.75)]
        records.append(event(task_id, TaskCompleted(b'{"profile": "found"}'), 3))
    await send_all(cluster.bootstrap_servers, cluster.topics.events, records)

    largest, seen = 0, 0
    deadline = time.monotonic() + 240
    while True:
        table = await _table(worker)
        mine = [state for task_id, state in table.items() if task_id.startswith(f"soak{run}")]
        largest = max([largest, *(len(json.dumps(state)) for state in mine)])
        assert largest < SOAK_STATE_BYTES, f"a state of {largest} bytes (as JSON)"
        seen = max(seen, len(mine))
        if seen and not mine:  # filled, then emptied: every task retired
            break
        if time.monotonic() > deadline:
            pytest.fail(f"{len(mine)} of the soak's tasks are still in the table")
        await asyncio.sleep(0.2)  # the next look at the table

    tombstoned: set[bytes] = set()

    def all_tombstoned(records: list[Any]) -> bool:
        tombstoned.update(r.key for r in records if r.value is None)
        return len(tombstoned) >= SOAK_TASKS

    await read_until(
        cluster.bootstrap_servers,
        cluster.topics.completed,
        lambda got: all_tombstoned(got),
        timeout_s=120,
        keep=lambda r: r.value is None and r.key.startswith(f"soak{run}".encode()),
    )
    assert tombstoned == {task_id.encode() for task_id in ids}
