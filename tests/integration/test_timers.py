"""Events caused by the clock: timeouts, due retries, dependencies that never appear."""

from __future__ import annotations

import time
import uuid
from typing import Any

from streams.client import TaskManager


async def _poll(
    tm: TaskManager, task_id: str, done: Any, timeout_s: float = 30.0
) -> dict[str, Any]:
    """The task's status once ``done(status)`` holds, or the last one read at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await tm.get_task_status(task_id)
        if done(status) or time.monotonic() > deadline:
            return status


async def test_a_dependency_that_is_never_created_cancels_the_dependent_after_the_wait_bound(
    client_config: dict[str, object],
) -> None:
    ghost = f"ghost-{uuid.uuid4()}"
    async with TaskManager({**client_config, "dependency_wait": 1.0}) as tm:
        started = time.monotonic()
        dependent = await tm.create_task("analysis", "internal", "x", dependencies=[ghost])
        assert (await tm.get_task_status(dependent))["status"] == "pending"
        status = await _poll(tm, dependent, lambda s: s["status"] != "pending")
        waited = time.monotonic() - started

    assert status["status"] == "cancelled"
    assert status["last_error"] == f"dependency {ghost} missing"
    assert waited >= 1.0


async def test_a_running_attempt_past_its_timeout_is_timed_out_retried_then_failed(
    client_config: dict[str, object],
) -> None:
    async with TaskManager(client_config) as tm:
        task_id = await tm.create_task(
            "profile_scrape", "instagram", "x", timeout=1.0, max_retries=1, retry_delay=0.2
        )
        await tm.start_task(task_id)
        retried = await _poll(tm, task_id, lambda s: s["status"] == "ready" and s["attempt"] == 1)
        await tm.start_task(task_id)
        failed = await _poll(
            tm, task_id, lambda s: s["status"] in ("failed", "completed", "cancelled")
        )

    assert retried["status"] == "ready"
    assert retried["last_error"] == "timeout after 1000 ms"
    assert [t[0] for t in retried["history"]] == ["ready", "running", "retrying", "ready"]
    assert failed["status"] == "failed"
    assert failed["attempt"] == 2
    assert [t[0] for t in failed["history"]][-2:] == ["running", "failed"]
