"""Settings that take effect: a worker's ``--config`` policy defaults reach the tasks clients
create, and a rate limit changed with ``orchestrator config set`` applies without a restart.

Both go through ``orchestrator.config`` (see ``streams.domain.config_events``): the test checks
what a user sees, a handler timed out after the configured 2 s, tasks held by a limit running
once the limit is raised, and the change listed by ``orchestrator config history``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from streams.client import SmartScheduler, TaskManager
from tests.integration.conftest import HANDLERS, PARTITIONS, REPO_ROOT, Cluster

WAIT_S = 60.0


def _client(cluster: Cluster, api_url: str) -> dict[str, Any]:
    return {
        "bootstrap_servers": cluster.bootstrap_servers,
        "api_url": api_url,
        "partitions": PARTITIONS,
        "topic_prefix": cluster.topic_prefix,
        "app_id": cluster.app_id,
        "read_timeout": 30.0,
    }


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "ORCHESTRATOR_BROKER": cluster.bootstrap_servers,
        "ORCHESTRATOR_TOPIC_PREFIX": cluster.topic_prefix,
        "ORCHESTRATOR_APP_ID": cluster.app_id,
        "ORCHESTRATOR_PARTITIONS": str(PARTITIONS),
    }
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _until(tm: TaskManager, task_id: str, done: Any) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        status = await tm.get_task_status(task_id)
        if done(status):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"{task_id} never got there; last status {status}")
        await asyncio.sleep(0.1)


async def test_a_workers_config_file_sets_the_timeout_of_tasks_clients_create(
    cluster: Cluster,
) -> None:
    """``task_timeout: 2`` and ``retry_attempts: 0`` in the worker's ``--config``: a client that
    sets neither creates a task that a 5 s handler overruns, and it fails timed out at 2 s."""
    worker = cluster.start(
        "w1", {"task_timeout": 2, "retry_attempts": 0}, handlers=HANDLERS, timer_interval="0.1"
    )
    async with TaskManager(_client(cluster, worker.api_url)) as tm:
        task_id = await tm.create_task("sleepy", "cfg-timeout", "5")
        created = await tm.get_task_status(task_id)
        assert created["policy"]["timeout_ms"] == 2_000
        assert created["policy"]["max_attempts"] == 1
        failed = await _until(tm, task_id, lambda s: s["status"] == "failed")
    assert failed["last_error"] == "timeout after 2000 ms"
    # a client's own setting holds over the run-time one
    async with TaskManager({**_client(cluster, worker.api_url), "default_timeout": 7}) as tm:
        own = await tm.create_task("noop", "cfg-timeout", "x")
        assert (await tm.get_task_status(own))["policy"]["timeout_ms"] == 7_000


async def test_a_rate_limit_set_at_run_time_applies_without_a_restart_and_is_listed(
    cluster: Cluster,
) -> None:
    platform = f"cfg-{uuid.uuid4().hex[:6]}"
    limits = {f"{platform}_rate_limits": {"limits": [{"calls": 1, "period": 3600}]}}
    worker = cluster.start("w1", limits, handlers=HANDLERS)
    async with TaskManager(_client(cluster, worker.api_url)) as tm:
        ids = [await tm.create_task("noop", platform, f"t{i}") for i in range(4)]
        statuses = [
            await _until(tm, t, lambda s: s["status"] in ("completed", "ready")) for t in ids
        ]
        # one call an hour: one task ran, the others are held by the limit
        assert sorted(s["status"] for s in statuses).count("completed") <= 1
        held = [s for s in statuses if s["status"] == "ready"]
        assert held, statuses
        raised = json.dumps({"limits": [{"calls": 100, "period": 1}]})
        done = _cli(cluster, "config", "set", "rate_limits", raised, "--platform", platform)
        assert done.returncode == 0, done.stderr
        done = [await _until(tm, t, lambda s: s["status"] == "completed") for t in ids]
    async with SmartScheduler(_client(cluster, worker.api_url)) as scheduler:
        status = await scheduler.limit_status(platform)
    assert worker.process.poll() is None  # the same worker: no restart
    assert [(w["calls"], w["period_s"]) for w in status["windows"]] == [(100, 1)]
    # the audit of the last task to run (one call an hour let one run before the change, so
    # it ran after) shows both limits of its platform
    last = max(done, key=lambda s: s["completed_at_ms"])
    audit = _cli(cluster, "audit", last["task_id"], "--json")
    assert audit.returncode == 0, audit.stderr
    shown = [s["value"]["limits"][0]["calls"] for s in json.loads(audit.stdout)["settings"]]
    assert shown == [1, 100]
    history = _cli(cluster, "config", "history", "--json")
    assert history.returncode == 0, history.stderr
    rows = [json.loads(line) for line in history.stdout.splitlines()]
    mine = [r for r in rows if r["platform"] == platform and r["name"] == "rate_limits"]
    assert [r["value"]["limits"][0]["calls"] for r in mine] == [1, 100]
    assert mine[0]["by"].startswith("worker ") and mine[1]["by"].startswith("cli ")
    in_force_now = _cli(cluster, "config", "show", "--json")
    assert in_force_now.returncode == 0, in_force_now.stderr
    in_force = [r for r in json.loads(in_force_now.stdout) if r["platform"] == platform]
    assert in_force == [
        {
            "name": "rate_limits",
            "platform": platform,
            "task_type": "*",
            "value": {"limits": [{"calls": 100, "period": 1}]},
        }
    ]


def test_config_set_refuses_a_bad_value_and_an_unknown_name(cluster: Cluster) -> None:
    cluster.start("w1")
    bad = _cli(cluster, "config", "set", "rate_limits", '{"limits": 5}', "--platform", "x")
    assert bad.returncode == 2 and "rate_limits" in bad.stderr
    unknown = _cli(cluster, "config", "set", "colour", "blue")
    assert unknown.returncode == 2 and "unknown setting 'colour'" in unknown.stderr
    scoped = _cli(cluster, "config", "set", "rate_limits", "[]")
    assert scoped.returncode == 2 and "one platform" in scoped.stderr
