"""/metrics of a real worker, scraped during a workload and checked against what happened."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from streams.client import TaskManager
from streams.process import WorkerProcess
from tests.integration.conftest import SCHEDULER_PREFIX, platform
from tests.integration.kafka_io import produce

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _scrape(worker: WorkerProcess) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(f"{worker.api_url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_what_the_workload_did(
    scheduler_config: dict[str, Any], scheduler_worker: WorkerProcess, bootstrap_servers: str
) -> None:
    name = platform("metrics")
    before = await _scrape(scheduler_worker)
    async with TaskManager(scheduler_config) as tm:
        ids = [await tm.create_task("noop", name, f"n{i}") for i in range(4)]
        ids.append(await tm.create_task("fatal", name, "gone", max_retries=2))
        ids.append(await tm.create_task("flaky", name, "f", max_retries=3, retry_delay=0.1))
        await produce(
            bootstrap_servers, f"{SCHEDULER_PREFIX}task.events", [(b"metrics-garbage", b"\x00junk")]
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            statuses = [(await tm.get_task_status(tid))["status"] for tid in ids]
            if all(s in ("completed", "failed") for s in statuses):
                break
            await asyncio.sleep(0.2)
    during = await _scrape(scheduler_worker)
    deadline = time.monotonic() + 10
    while (
        _value(during, "orchestrator_tasks_in_flight", platform=name)
        and time.monotonic() < deadline
    ):
        await asyncio.sleep(0.1)  # the last release reaches the scheduler after the fold
        during = await _scrape(scheduler_worker)

    def delta(metric: str, **labels: str) -> float:
        return _value(during, metric, **labels) - _value(before, metric, **labels)

    noop, fatal, flaky = ({"platform": name, "task_type": t} for t in ("noop", "fatal", "flaky"))
    assert delta("orchestrator_tasks_created_total", **noop) == 4
    assert delta("orchestrator_tasks_completed_total", **noop) == 4
    assert delta("orchestrator_tasks_failed_total", **fatal) == 1
    assert delta("orchestrator_tasks_started_total", **flaky) == 3
    assert delta("orchestrator_tasks_retried_total", **flaky) == 2
    assert delta("orchestrator_tasks_completed_total", **flaky) == 1
    assert delta("orchestrator_task_duration_seconds_count", **noop) == 4
    assert delta("orchestrator_task_queue_wait_seconds_count", platform=name) == 4 + 1 + 3
    assert delta("orchestrator_dlq_records_total", reason="undecodable") == 1
    assert _value(during, "orchestrator_tasks_in_flight", platform=name) == 0
    assert _value(during, "orchestrator_pending_tasks", platform=name) == 0
    assert _value(during, "orchestrator_rate_factor", platform=name) == 1.0
    assert any(key[0] == "orchestrator_fold_consumer_lag" for key in during)
    assert delta("orchestrator_fold_transactions_total", outcome="committed") > 0
    assert delta("orchestrator_fold_transactions_total", outcome="failed") == 0
    assert delta("orchestrator_fold_reopens_total") == 0
    assert all(
        dict(labels).keys()
        <= {"platform", "task_type", "reason", "window", "partition", "le", "outcome"}
        for name, labels in during
        if name.startswith("orchestrator_")
    )
    assert _value(during, "process_resident_memory_bytes") > 0


async def test_a_caught_up_worker_reports_no_lag(
    scheduler_config: dict[str, Any], scheduler_worker: WorkerProcess
) -> None:
    # the fold's writes are transactions: each partition ends with commit markers, which take
    # offsets but are no records, and must not count as records to fold
    async with TaskManager(scheduler_config) as tm:
        ids = [await tm.create_task("noop", platform("lag"), f"l{i}") for i in range(8)]
        for tid in ids:
            await tm.get_task_status(tid)
    deadline = time.monotonic() + 20
    while True:
        samples = await _scrape(scheduler_worker)
        lags = {k: v for k, v in samples.items() if k[0] == "orchestrator_fold_consumer_lag"}
        if (lags and not any(lags.values())) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert lags
    assert not any(lags.values()), lags


async def test_a_held_task_counts_once_per_reason_and_says_what_holds_it_now(
    scheduler_config: dict[str, Any], scheduler_worker: WorkerProcess
) -> None:
    """One running at a time and two calls an hour: A runs while B and C wait for the cap;
    B runs while C waits for the cap; then the window is full and C waits for it. C's status
    names the window although its only deferral named the cap, and the hits count each
    queued task once per reason, whatever the number of scheduler passes: B and C for the cap,
    C and a later D for the window."""
    name = platform("capwin")
    before = await _scrape(scheduler_worker)
    async with TaskManager(scheduler_config) as tm:
        # A runs 3 s: B and C are created, and wait for the cap, meanwhile
        first = await tm.create_task("sleepy", name, "3")
        second = await tm.create_task("sleepy", name, "0.2")
        third = await tm.create_task("sleepy", name, "0.2")
        deadline = time.monotonic() + 60
        status = await tm.get_task_status(third)
        while status["waiting_on"]["reason"] != "rate_limit" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            status = await tm.get_task_status(third)
        assert status["status"] == "ready"
        assert status["held_reason"] == "concurrency"  # why it was first held
        assert status["waiting_on"]["reason"] == "rate_limit", status["waiting_on"]
        assert "2 calls per 3600 s" in status["waiting_on"]["detail"]
        assert [(await tm.get_task_status(t))["status"] for t in (first, second)] == [
            "completed",
            "completed",
        ]
        fourth = await tm.create_task("sleepy", name, "0.2")  # one more scheduler pass
        held = await tm.get_task_status(fourth)
        while not held["held_reason"] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            held = await tm.get_task_status(fourth)
        assert held["held_reason"] == "rate_limit"
    during = await _scrape(scheduler_worker)

    def hits(reason: str) -> float:
        labels = {"platform": name, "reason": reason}
        key = "orchestrator_rate_limit_hits_total"
        return _value(during, key, **labels) - _value(before, key, **labels)

    assert (hits("concurrency"), hits("rate_limit")) == (2, 2)
