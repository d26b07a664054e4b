"""A worker as a new user meets it: used right after it starts, asked whether it is ready."""

from __future__ import annotations

import aiohttp
import pytest

from streams.client import TaskManager
from streams.errors import TaskNotFoundError
from tests.integration.conftest import PARTITIONS, Cluster


async def test_a_client_reads_its_task_right_after_the_worker_started(cluster: Cluster) -> None:
    # the client is used while the worker is still starting: its HTTP server not listening yet,
    # then its partitions not assigned (faust's router answers 503), then not open; every read
    # must ride that out (within read_timeout) instead of failing
    worker = cluster.start("w1", wait=False)
    config = {
        "bootstrap_servers": cluster.bootstrap_servers,
        "api_url": worker.api_url,
        "partitions": PARTITIONS,
        "topic_prefix": cluster.topic_prefix,
        "read_timeout": 60.0,
        "request_timeout": 90.0,
    }
    async with TaskManager(config) as tm:
        with pytest.raises(TaskNotFoundError):  # not "503 Service unavailable"
            await tm.get_task_status("never-created")
        task_id = await tm.create_task("scrape", "linkedin", "first")
        status = await tm.get_task_status(task_id)
        assert status["status"] == "ready"
        await tm.start_task(task_id)
        await tm.fail_task(task_id, "", retryable=False)
        status = await tm.get_task_status(task_id)
    assert status["status"] == "failed"
    assert status["last_error"] == "failed (no reason given)"
    async with aiohttp.ClientSession() as http, http.get(f"{worker.api_url}/ready") as response:
        assert response.status == 200
        document = await response.json()
    assert document["status"] == "ready"
    assert sorted(document["partitions"]) == list(range(PARTITIONS))
    log = worker.log_file.read_text(encoding="utf-8", errors="replace")[worker.log_offset :]
    assert log.count("worker ready: folding partitions") == 1
