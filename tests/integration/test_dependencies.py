"""Dependencies across partitions, through a real broker and worker."""

from __future__ import annotations

import time
import uuid
from typing import Any

from schemas import decode_ready
from streams.client import TaskManager
from tests.integration.conftest import PARTITIONS
from tests.integration.kafka_io import Follower, partition_of


def _ids(*names: str) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    return {name: f"dag-{run}-{name}" for name in names}


async def _wait_for_statuses(
    tm: TaskManager, expected: dict[str, str], timeout_s: float = 30.0
) -> dict[str, dict[str, Any]]:
    """Poll until every task has its expected status; return the last documents read."""
    deadline = time.monotonic() + timeout_s
    while True:
        documents = {tid: await tm.get_task_status(tid) for tid in expected}
        if all(documents[tid]["status"] == status for tid, status in expected.items()):
            return documents
        if time.monotonic() > deadline:
            return documents


async def test_dag_with_fan_out_and_fan_in_becomes_ready_in_dependency_order(
    client_config: dict[str, object], bootstrap_servers: str
) -> None:
    ids = _ids("root", "a", "b", "c", "join", "tail")
    while len({partition_of(tid, PARTITIONS) for tid in ids.values()}) < 3:
        ids = _ids(*ids)  # draw another run prefix until the DAG spans three partitions
    deps = {
        "root": [],
        "a": ["root"],
        "b": ["root"],
        "c": ["root"],
        "join": ["a", "b", "c"],
        "tail": ["join"],
    }
    assert len({partition_of(tid, PARTITIONS) for tid in ids.values()}) >= 3
    names = {tid: name for name, tid in ids.items()}
    ready_order: list[str] = []
    async with Follower(bootstrap_servers, "task.ready") as ready, TaskManager(client_config) as tm:
        for name in reversed(list(deps)):  # dependents first: their dependencies do not exist yet
            await tm.create_task(
                "step",
                "internal",
                name,
                dependencies=[ids[d] for d in deps[name]],
                task_id=ids[name],
            )
        deadline = time.monotonic() + 60
        while len(ready_order) < len(ids) and time.monotonic() < deadline:
            for record in await ready.next_batch():
                task_id = decode_ready(record.value).task_id
                if task_id in names:
                    ready_order.append(names[task_id])
                    await tm.start_task(task_id)
                    await tm.complete_task(task_id, {"done": names[task_id]})
        statuses = await _wait_for_statuses(tm, dict.fromkeys(ids.values(), "completed"))

    assert sorted(ready_order) == sorted(ids), f"ready records: {ready_order}"
    for name, needed in deps.items():
        for dependency in needed:
            assert ready_order.index(dependency) < ready_order.index(name), ready_order
    assert {statuses[tid]["status"] for tid in ids.values()} == {"completed"}


async def test_failed_dependency_cancels_its_dependents_transitively(
    client_config: dict[str, object],
) -> None:
    ids = _ids("scrape", "analysis", "pipeline", "report", "unrelated")
    async with TaskManager(client_config) as tm:
        await tm.create_task("scrape", "twitter", "t", task_id=ids["scrape"])
        await tm.create_task(
            "analysis", "internal", "t", dependencies=[ids["scrape"]], task_id=ids["analysis"]
        )
        await tm.create_task(
            "pipeline", "internal", "t", dependencies=[ids["analysis"]], task_id=ids["pipeline"]
        )
        await tm.create_task(
            "report",
            "internal",
            "t",
            dependencies=[ids["pipeline"], ids["unrelated"]],
            task_id=ids["report"],
        )
        await tm.create_task("unrelated", "internal", "t", task_id=ids["unrelated"])
        await tm.start_task(ids["scrape"])
        await tm.fail_task(ids["scrape"], "profile is private", retryable=False)
        expected = {
            ids["scrape"]: "failed",
            ids["analysis"]: "cancelled",
            ids["pipeline"]: "cancelled",
            ids["report"]: "cancelled",
            ids["unrelated"]: "ready",
        }
        statuses = await _wait_for_statuses(tm, expected)

    assert {tid: doc["status"] for tid, doc in statuses.items()} == expected
    assert statuses[ids["scrape"]]["last_error"] == "profile is private"
    assert ids["scrape"] in statuses[ids["analysis"]]["last_error"]
    assert ids["analysis"] in statuses[ids["pipeline"]]["last_error"]
    assert ids["pipeline"] in statuses[ids["report"]]["last_error"]
