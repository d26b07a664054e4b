"""examples/task_completed_consumer.py receives each completed task exactly once.

The example runs as a subprocess, as a downstream service would: two runs in one consumer
group, with tasks completed before, between and after them. Offsets committed after processing
mean the second run starts where the first stopped: no task is missed, none is seen twice.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections import Counter
from typing import Any

from streams.client import TaskManager
from tests.integration.conftest import PARTITIONS, REPO_ROOT, Cluster

EXAMPLE = REPO_ROOT / "examples" / "task_completed_consumer.py"


async def run_example(cluster: Cluster, group: str, max_records: int) -> list[dict[str, Any]]:
    """Run the example until it has processed ``max_records`` records; its JSON lines."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        "--broker",
        cluster.bootstrap_servers,
        "--topic",
        cluster.topics.completed,
        "--group",
        group,
        "--max-records",
        str(max_records),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()
    assert not stderr.strip(), stderr.decode()
    return [json.loads(line) for line in stdout.decode().splitlines()]


async def complete(tm: TaskManager, targets: list[str]) -> list[str]:
    ids = []
    for target in targets:
        task_id = await tm.create_task("profile_scrape", "linkedin", target)
        await tm.start_task(task_id)
        await tm.complete_task(task_id, {"target": target})
        ids.append(task_id)
    return ids


async def test_the_example_consumer_receives_each_completed_task_exactly_once(
    cluster: Cluster,
) -> None:
    worker = cluster.start("w1")
    config = {
        "bootstrap_servers": cluster.bootstrap_servers,
        "api_url": worker.api_url,
        "partitions": PARTITIONS,
        "topic_prefix": cluster.topic_prefix,
    }
    group = f"example-{uuid.uuid4().hex[:6]}"
    async with TaskManager(config) as tm:
        before = await complete(tm, [f"before-{i}" for i in range(6)])
        first = await run_example(cluster, group, max_records=6)
        after = await complete(tm, [f"after-{i}" for i in range(4)])
        unfinished = await tm.create_task("profile_scrape", "linkedin", "never completed")
        await tm.start_task(unfinished)
        second = await run_example(cluster, group, max_records=4)

    seen = Counter(line["task_id"] for line in first + second)
    assert sorted(seen) == sorted(before + after)
    assert set(seen.values()) == {1}, "no task twice"
    assert {line["task_id"] for line in first} == set(before)
    by_id = {line["task_id"]: line for line in first + second}
    assert by_id[after[0]]["result"] == {"target": "after-0"}
    assert by_id[after[0]]["attempts"] == 1 and by_id[after[0]]["platform"] == "linkedin"
