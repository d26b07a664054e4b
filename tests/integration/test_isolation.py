"""Two orchestrators on one cluster that differ only by ``topic_prefix`` do not collide."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from streams.client import TaskManager
from streams.errors import TaskNotFoundError
from tests.integration.conftest import PARTITIONS, Cluster


async def test_two_orchestrators_with_one_app_id_and_two_prefixes_run_side_by_side(
    bootstrap_servers: str, tmp_path: Path
) -> None:
    app_id = f"it-iso-{uuid.uuid4().hex[:6]}"  # the same app_id for both, as a user would keep
    clusters = [
        Cluster(bootstrap_servers, tmp_path / name, app_id, topic_prefix=f"{name}-{app_id}.")
        for name in ("a", "b")
    ]
    try:
        workers = [cluster.start("w") for cluster in clusters]
        tasks: list[str] = []
        for cluster, worker in zip(clusters, workers, strict=True):
            config = {
                "bootstrap_servers": bootstrap_servers,
                "api_url": worker.api_url,
                "partitions": PARTITIONS,
                "topic_prefix": cluster.topic_prefix,
                "read_timeout": 30.0,
            }
            async with TaskManager(config) as tm:
                task_id = await tm.create_task("scrape", "linkedin", cluster.topic_prefix)
                await tm.start_task(task_id)
                await tm.complete_task(task_id, {"by": cluster.topic_prefix})
                assert (await tm.get_task_result(task_id)) == {"by": cluster.topic_prefix}
                for other in tasks:  # the first orchestrator's task is unknown here
                    with pytest.raises(TaskNotFoundError):
                        await tm.get_task_status(other)
                tasks.append(task_id)
        first = clusters[0]
        config = {
            "bootstrap_servers": bootstrap_servers,
            "api_url": workers[0].api_url,
            "partitions": PARTITIONS,
            "topic_prefix": first.topic_prefix,
        }
        async with TaskManager(config) as tm:  # the first one still works, nothing fenced it
            assert (await tm.get_task_status(tasks[0]))["status"] == "completed"
            with pytest.raises(TaskNotFoundError):
                await tm.get_task_status(tasks[1])
        assert all(worker.process.poll() is None for worker in workers)
        log = workers[0].log_file.read_text(encoding="utf-8", errors="replace")
        assert "ProducerFenced" not in log
    finally:
        for cluster in clusters:
            cluster.stop_all()


async def test_a_worker_whose_settings_name_another_orchestrators_groups_refuses_to_start(
    bootstrap_servers: str, tmp_path: Path
) -> None:
    """Prefix ``a-X.`` with app id ``b``, and no prefix with app id ``a-X.b``, give one
    orchestrator id: the second worker would resume from the first one's offsets in topics it
    does not read. It refuses to start, in one line that says why."""
    run = uuid.uuid4().hex[:6]
    first = Cluster(bootstrap_servers, tmp_path / "first", "b", topic_prefix=f"a-{run}.")
    second = Cluster(bootstrap_servers, tmp_path / "second", f"a-{run}.b", topic_prefix="")
    assert first.orchestrator_id == second.orchestrator_id
    try:
        worker = first.start("w")
        config = {
            "bootstrap_servers": bootstrap_servers,
            "api_url": worker.api_url,
            "partitions": PARTITIONS,
            "topic_prefix": first.topic_prefix,
            "app_id": "b",
        }
        async with TaskManager(config) as tm:  # confirmed: the fold committed its offsets
            await tm.create_task("scrape", "linkedin", "x")
        refused = second.start("w", wait=False)
        assert refused.process.wait(timeout=120) != 0
        last = refused.log_tail().strip().splitlines()[-1]
        assert last.startswith("orchestrator: error: consumer group ")
        assert f"belongs to another orchestrator (it reads a-{run}.task.events" in last
        assert worker.process.poll() is None  # the first one goes on
    finally:
        first.stop_all()
        second.stop_all()
