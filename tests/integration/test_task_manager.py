"""TaskManager against a real broker and workers: validation, read-your-writes, results, routing."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from streams.client import TaskManager
from streams.domain import MAX_RESULT_BYTES
from streams.errors import (
    ResultExpiredError,
    ResultNotReadyError,
    TaskNotFoundError,
    ValidationError,
)
from tests.integration.conftest import PARTITIONS, Cluster
from tests.integration.kafka_io import partition_of


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"priority": 0}, "priority must be an integer from 1 to 10"),
        ({"priority": "high"}, "priority must be an integer"),
        ({"platform": ""}, "platform must be a non-empty string"),
        ({"timeout": -1}, "timeout must be > 0 seconds"),
        ({"dependencies": "abc"}, "dependencies must be a list"),
        ({"max_retries": -2}, "max_retries must be a non-negative integer"),
        ({"self_dependent": True}, "cannot depend on itself"),
    ],
)
async def test_invalid_calls_raise_before_anything_is_written(
    client_config: dict[str, object], arguments: dict[str, Any], message: str
) -> None:
    task_id = f"invalid-{uuid.uuid4()}"
    call: dict[str, Any] = {
        "task_type": "scrape",
        "platform": "linkedin",
        "target": "x",
        "task_id": task_id,
    }
    if arguments.pop("self_dependent", False):
        arguments["dependencies"] = [task_id]
    async with TaskManager(client_config) as tm:
        with pytest.raises(ValidationError, match=message):
            await tm.create_task(**{**call, **arguments})
        with pytest.raises(TaskNotFoundError):
            await tm.get_task_status(task_id)


async def test_progress_and_result_are_validated_before_writing(
    client_config: dict[str, object],
) -> None:
    async with TaskManager(client_config) as tm:
        task_id = await tm.create_task("scrape", "linkedin", "x")
        await tm.start_task(task_id)
        with pytest.raises(ValidationError, match=r"progress must be in \[0, 1\]"):
            await tm.update_task_progress(task_id, 1.2)
        with pytest.raises(ValidationError, match="exceeds the cap"):
            await tm.complete_task(task_id, b"x" * (MAX_RESULT_BYTES + 1))
        with pytest.raises(ValidationError, match="not JSON-serialisable"):
            await tm.complete_task(task_id, {"when": object()})
        assert (await tm.get_task_status(task_id))["status"] == "running"


async def test_every_read_reflects_the_clients_own_write_just_before(
    client_config: dict[str, object],
) -> None:
    async with TaskManager(client_config) as tm:
        task_id = await tm.create_task("scrape", "linkedin", "x")
        seen = [(await tm.get_task_status(task_id))["status"]]
        await tm.start_task(task_id)
        seen.append((await tm.get_task_status(task_id))["status"])
        for progress in (0.1, 0.5, 0.9):
            await tm.update_task_progress(task_id, progress)
            seen.append((await tm.get_task_status(task_id))["progress"])
        await tm.complete_task(task_id, {"followers": 42})
        seen.append((await tm.get_task_status(task_id))["status"])
        result = await tm.get_task_result(task_id)

    assert seen == ["ready", "running", 0.1, 0.5, 0.9, "completed"]
    assert result == {"followers": 42}


async def test_results_are_refused_before_completion_and_reported_expired_after_the_ttl(
    client_config: dict[str, object],
) -> None:
    async with TaskManager({**client_config, "result_ttl": 1.0}) as tm:
        task_id = await tm.create_task("scrape", "linkedin", "x")
        with pytest.raises(ResultNotReadyError, match="not completed"):
            await tm.get_task_result(task_id)
        await tm.start_task(task_id)
        await tm.complete_task(task_id, b"\x00raw bytes")
        completed_at = time.monotonic()
        assert await tm.get_task_result(task_id) == b"\x00raw bytes"
        # waiting out the TTL is the behaviour under test, not a guess at a race
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - completed_at)) + 0.05)
        with pytest.raises(ResultExpiredError, match="expired"):
            await tm.get_task_result(task_id)
        assert (await tm.get_task_status(task_id))["status"] == "completed"


async def test_any_worker_answers_for_tasks_owned_by_another(
    cluster: Cluster, bootstrap_servers: str
) -> None:
    first = cluster.start("w1")
    cluster.start("w2")
    run = uuid.uuid4().hex[:8]
    # at least 12 tasks, and enough that every partition has one (ids are random per run)
    ids: list[str] = []
    while len(ids) < 12 or {partition_of(tid, PARTITIONS) for tid in ids} != set(range(PARTITIONS)):
        ids.append(f"route-{run}-{len(ids)}")
    config = {
        "bootstrap_servers": bootstrap_servers,
        "api_url": first.api_url,
        "read_timeout": 60.0,
        "topic_prefix": cluster.topic_prefix,
    }
    async with TaskManager(config) as writer:
        for tid in ids:
            await writer.create_task("scrape", "linkedin", tid, task_id=tid)
            await writer.start_task(tid)
        statuses = {tid: (await writer.get_task_status(tid))["status"] for tid in ids}

    assert statuses == dict.fromkeys(ids, "running")
