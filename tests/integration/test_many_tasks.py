"""Many tasks at once, against a real broker and two real workers: listing (``GET /tasks``,
``TaskManager.list_tasks``, ``orchestrator tasks``) across both workers' partitions and paged
with ``after``; batch creation; ``retry_task`` / ``orchestrator retry`` of failed and cancelled
tasks; ``orchestrator cancel``; ``orchestrator submit --task-id`` of an existing task.

One orchestrator (fresh app id and topic prefix) with two workers serves the module: the tests
wait for conditions (a status, the partitions split between the workers), never for a time.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import pytest

from streams.client import TaskManager
from streams.errors import IllegalTransitionError, ValidationError
from streams.partitions import partition_of
from streams.process import WorkerProcess
from tests.integration.conftest import HANDLERS, PARTITIONS, REPO_ROOT, Cluster

T = TypeVar("T")
MANUAL = "manual_scrape"
"""A task type without a handler: it stays ready until a caller drives it."""


@dataclass
class Orchestrator:
    cluster: Cluster
    workers: list[WorkerProcess]

    def config(self, worker: int = 0) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.cluster.bootstrap_servers,
            "api_url": self.workers[worker].api_url,
            "partitions": PARTITIONS,
            "topic_prefix": self.cluster.topic_prefix,
            "read_timeout": 60.0,
        }


@pytest.fixture(scope="module")
def orchestrator(
    bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Orchestrator]:
    app_id = f"it-many-{uuid.uuid4().hex[:6]}"
    cluster = Cluster(
        bootstrap_servers, tmp_path_factory.mktemp("many"), app_id, topic_prefix=f"{app_id}."
    )
    try:
        workers = [cluster.start(name, handlers=HANDLERS) for name in ("w1", "w2")]
        yield Orchestrator(cluster, workers)
    finally:
        cluster.stop_all()


async def until(
    read: Callable[[], Awaitable[T]], wanted: Callable[[T], bool], timeout_s: float = 60.0
) -> T:
    """``read()`` again until ``wanted`` holds of it; fails with the last value at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await read()
        if wanted(value):
            return value
        assert time.monotonic() < deadline, f"still not as wanted after {timeout_s} s: {value}"
        await asyncio.sleep(0.1)


async def split_partitions(workers: list[WorkerProcess]) -> list[set[int]]:
    """Each worker's partitions once both are ready, each has some, and they split them all."""

    async def read() -> list[set[int]]:
        owned = []
        async with aiohttp.ClientSession() as http:
            for worker in workers:
                async with http.get(f"{worker.api_url}/ready") as response:
                    document = await response.json(content_type=None)
                    owned.append(set(document.get("partitions", [])))
        return owned

    def split(owned: list[set[int]]) -> bool:
        return (
            all(owned)
            and set.union(*owned) == set(range(PARTITIONS))
            and sum(map(len, owned)) == PARTITIONS
        )

    return await until(read, split, timeout_s=90.0)


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str


async def command(o: Orchestrator, *args: str) -> Run:
    """Run ``orchestrator ARGS`` as a user does, against the first worker."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "ORCHESTRATOR_BROKER": o.cluster.bootstrap_servers,
        "ORCHESTRATOR_TOPIC_PREFIX": o.cluster.topic_prefix,
        "ORCHESTRATOR_PARTITIONS": str(PARTITIONS),
        "ORCHESTRATOR_API_URL": o.workers[0].api_url,
        "ORCHESTRATOR_READ_TIMEOUT": "60",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streams",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return Run(process.returncode, stdout.decode(), stderr.decode())


async def test_a_listing_covers_both_workers_partitions_and_pages_each_task_once(
    orchestrator: Orchestrator,
) -> None:
    platform = f"list-{uuid.uuid4().hex[:6]}"
    owned = await split_partitions(orchestrator.workers)
    async with TaskManager(orchestrator.config(0)) as tm:
        created = await tm.create_tasks(
            [
                {
                    "task_type": MANUAL,
                    "platform": platform,
                    "target": f"u{i}",
                    "task_id": f"l-{i:02d}",
                }
                for i in range(23)
            ]
        )
        assert created == [f"l-{i:02d}" for i in range(23)]
        await tm.start_task("l-05")
        await tm.start_task("l-17")

        listed: list[str] = []
        pages = 0
        after = None
        while True:  # pages of 5, through the first worker
            page = await tm.list_tasks(platform=platform, limit=5, after=after)
            pages += 1
            listed += [task["task_id"] for task in page]
            assert all(task["platform"] == platform for task in page)
            if page.next_after is None:
                break
            assert len(page) == 5
            after = page.next_after
        assert listed == created, "each task exactly once, in id order"
        assert pages == 5

    served_by = [{t for t in created if partition_of(t.encode(), PARTITIONS) in p} for p in owned]
    assert all(served_by), f"the tasks must lie on both workers' partitions: {served_by}"

    async with TaskManager(orchestrator.config(1)) as tm:  # the other worker answers the same
        everything = [task["task_id"] async for task in tm.iter_tasks(platform=platform)]
        assert everything == created
        running = await tm.list_tasks(status="running", platform=platform)
        assert [(t["task_id"], t["status"], t["attempt"]) for t in running] == [
            ("l-05", "running", 1),
            ("l-17", "running", 1),
        ]
        assert running.next_after is None
        ready = await tm.list_tasks(["ready", "pending"], platform, MANUAL, limit=1000)
        assert len(ready) == 21
        assert len(await tm.list_tasks(platform=platform, task_type="other")) == 0
        with pytest.raises(ValidationError, match=r"unknown status 'done'.*failed, cancelled"):
            await tm.list_tasks(status="done")


async def test_the_http_listing_refuses_bad_parameters_with_400(
    orchestrator: Orchestrator,
) -> None:
    url = f"{orchestrator.workers[0].api_url}/tasks"
    async with aiohttp.ClientSession() as http:
        for params, detail in (
            ({"status": "done"}, "the statuses are pending, ready"),
            ({"limit": "0"}, "limit must be an integer from 1 to 1000"),
            ({"limit": "5000"}, "limit must be an integer from 1 to 1000"),
            ({"after": "a//b"}, "after"),
            ({"sort": "id"}, "unknown parameter 'sort'"),
        ):
            async with http.get(url, params=params) as response:
                document = await response.json()
                assert response.status == 400, (params, document)
                assert document["error"] == "bad_request"
                assert detail in document["detail"], (params, document)


async def test_a_retried_failed_task_runs_again_and_completes(
    orchestrator: Orchestrator,
) -> None:
    platform = f"retry-{uuid.uuid4().hex[:6]}"
    async with TaskManager(orchestrator.config(1)) as tm:
        task_id = await tm.create_task("fails_once", platform, "ada", max_retries=0)
        failed = await until(lambda: tm.get_task_status(task_id), lambda s: s["status"] == "failed")
        assert (failed["attempt"], failed["last_error"]) == (
            1,
            "RuntimeError: fails on its first attempt",
        )

        await tm.retry_task(task_id)

        done = await until(
            lambda: tm.get_task_status(task_id), lambda s: s["status"] == "completed"
        )
        assert done["attempt"] == 2
        assert done["policy"]["max_attempts"] == 2, "one attempt more than were spent"
        assert await tm.get_task_result(task_id) == {"attempt": 2}
        statuses = [entry[0] for entry in done["history"]]
        assert statuses[statuses.index("failed") :] == [
            "failed",
            "ready",
            "dispatched",
            "running",
            "completed",
        ]
        with pytest.raises(IllegalTransitionError, match="not allowed in status completed"):
            await tm.retry_task(task_id)

        running = await tm.create_task(MANUAL, platform, "bob")
        await tm.start_task(running)
        with pytest.raises(IllegalTransitionError, match="not allowed in status running"):
            await tm.retry_task(running)
        assert (await tm.get_task_status(running))["status"] == "running"


async def test_the_command_line_lists_cancels_and_retries_a_live_workload(
    orchestrator: Orchestrator,
) -> None:
    platform = f"cli-{uuid.uuid4().hex[:6]}"
    async with TaskManager(orchestrator.config(0)) as tm:
        gone = await tm.create_task("gone", platform, "deleted-account")  # fails at once
        waiting = await tm.create_task(MANUAL, platform, "ada")
        done = await tm.create_task("noop", platform, "bob")
        await until(lambda: tm.get_task_status(gone), lambda s: s["status"] == "failed")
        await until(lambda: tm.get_task_status(done), lambda s: s["status"] == "completed")

    listed = await command(orchestrator, "tasks", "--status", "failed", "--platform", platform)
    assert listed.status == 0, listed
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "PLATFORM", "TYPE", "ATTEMPT", "UPDATED"]
    assert [row.split()[:5] for row in rows] == [[gone, "failed", platform, "gone", "1/4"]]
    as_json = await command(orchestrator, "tasks", "--platform", platform, "--json")
    document = json.loads(as_json.stdout)
    assert {t["task_id"]: t["status"] for t in document["tasks"]} == {
        gone: "failed",
        waiting: "ready",
        done: "completed",
    }
    assert document["next_after"] is None
    bad = await command(orchestrator, "tasks", "--status", "finished")
    assert bad.status == 2 and "the statuses are pending, ready" in bad.stderr, bad

    cancelled = await command(orchestrator, "cancel", waiting)
    assert cancelled.status == 0, cancelled
    again = await command(orchestrator, "cancel", waiting)
    assert again.status == 1
    assert "TaskCancelled is not allowed in status cancelled" in again.stderr, again

    retried = await command(orchestrator, "retry", waiting)
    assert retried.status == 0, retried
    refused = await command(orchestrator, "retry", done)
    assert refused.status == 1
    assert "TaskRetryRequested is not allowed in status completed" in refused.stderr, refused
    async with TaskManager(orchestrator.config(1)) as tm:
        assert (await tm.get_task_status(waiting))["status"] == "ready"
        assert (await tm.get_task_status(done))["status"] == "completed"

    retried_gone = await command(orchestrator, "retry", gone)
    assert retried_gone.status == 0, retried_gone
    async with TaskManager(orchestrator.config(1)) as tm:
        # "gone" fails for good again, on a second attempt: the retry ran it
        again_failed = await until(
            lambda: tm.get_task_status(gone),
            lambda s: s["status"] == "failed" and s["attempt"] == 2,
        )
        assert again_failed["last_error"] == "NonRetryableError: account deleted"

    exists = await command(
        orchestrator, "submit", "gone", platform, "deleted-account", "--task-id", gone
    )
    assert exists.status != 0, exists
    assert exists.stdout == ""
    assert f"task {gone} already exists (status failed)" in exists.stderr
    assert f"orchestrator retry {gone}" in exists.stderr
