"""``python -m streams.demo`` (``make run``): Kafka, a worker, and a discovery workload.

60 influencer profiles on each of four platforms with different limits. For each profile: a
profile scrape and a content scrape on its platform, an analysis of the content, and a pipeline
task that needs both the profile and the analysis. The simulated scrapers take 50 to 300 ms, fail
now and then, and sometimes answer "rate limited". Live progress per platform, then a summary.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from schemas import decode_event
from streams import localbroker
from streams.client import SmartScheduler
from streams.demo.view import LiveView, percentiles
from streams.domain import Status
from streams.errors import OrchestratorError
from streams.kafka_clients import KafkaConnection
from streams.process import WorkerProcess, free_port, start_worker
from streams.topics import TopicNames

DEMO_DIR = Path(os.environ.get("ORCHESTRATOR_DEMO_DIR", ".cache/demo"))
PROFILES_PER_PLATFORM = int(os.environ.get("ORCHESTRATOR_DEMO_PROFILES", "60"))
LIMITS: dict[str, dict[str, Any]] = {
    "linkedin_rate_limits": {
        "limits": [{"calls": 5, "period": 1}, {"calls": 100, "period": 60}],
        "max_concurrent": 3,
    },
    "twitter_rate_limits": {"limits": [{"calls": 10, "period": 1}], "max_concurrent": 5},
    "instagram_rate_limits": {
        "limits": [{"calls": 4, "period": 1}, {"calls": 30, "period": 10}],
        "max_concurrent": 2,
    },
    "youtube_rate_limits": {"limits": [{"calls": 8, "period": 1}], "max_concurrent": 4},
    "internal_rate_limits": {"limits": [], "max_concurrent": 8},
}
PLATFORMS = ["linkedin", "twitter", "instagram", "youtube"]
console = Console()


def main() -> int:
    """Run the demo; return the exit status."""
    port = int(os.environ.get("ORCHESTRATOR_DEMO_PORT", "9092"))
    kafka_dir = DEMO_DIR / "kafka"
    started_kafka = localbroker.status(kafka_dir) is None
    t0 = time.monotonic()
    try:
        with console.status("starting Kafka (the first run fetches it with Maven)..."):
            info = localbroker.up(port=port, data_dir=kafka_dir)
    except OrchestratorError as exc:
        console.print(f"[red]demo: {exc}[/red]")
        return 1
    console.print(
        f"Kafka {info.version} up at {info.bootstrap_servers} in {time.monotonic() - t0:.1f} s"
    )
    run = uuid.uuid4().hex[:6]
    settings = _worker_settings(run)
    worker = _start_worker(info.bootstrap_servers, run, settings)
    try:
        with console.status("starting a worker..."):
            worker.wait_ready()
        console.print(f"worker ready, HTTP API and metrics at {worker.api_url} (/metrics)\n")
        asyncio.run(_workload(info.bootstrap_servers, worker, settings))
    finally:
        worker.stop()
        if os.environ.get("ORCHESTRATOR_DEMO_KEEP"):
            console.print(
                "\nstopped the worker; Kafka stays up "
                f"(stop it: orchestrator kafka down --data-dir {kafka_dir})"
            )
        elif started_kafka:
            localbroker.down(kafka_dir)
            console.print("\nstopped the worker and Kafka")
        else:
            console.print("\nstopped the worker (Kafka was already running: left up)")
    return 0


def _worker_settings(run: str) -> dict[str, Any]:
    return {
        "topic_prefix": f"demo-{run}.",
        "app_id": f"demo-{run}",
        "retry_delay": 0.5,
        "task_timeout": 10,
        **LIMITS,
    }


def _start_worker(bootstrap_servers: str, run: str, settings: dict[str, Any]) -> WorkerProcess:
    data_dir = (DEMO_DIR / f"worker-{run}").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "config.json"
    config.write_text(json.dumps(settings, indent=2))
    return start_worker(
        bootstrap_servers,
        data_dir,
        free_port(),
        {"handlers": "streams.demo.handlers", "partitions": "4"},
        extra_args=("--config", str(config)),
    )


async def _workload(
    bootstrap_servers: str, worker: WorkerProcess, settings: dict[str, Any]
) -> None:
    config = {"bootstrap_servers": bootstrap_servers, "api_url": worker.api_url, **settings}
    totals = {p: 2 * PROFILES_PER_PLATFORM for p in PLATFORMS} | {
        "internal": 8 * PROFILES_PER_PLATFORM
    }
    view = LiveView(topic_prefix=settings["topic_prefix"])
    started = time.monotonic()
    follower = asyncio.create_task(
        _follow(bootstrap_servers, TopicNames(settings["topic_prefix"]).events, view)
    )
    async with SmartScheduler(config) as scheduler:
        with console.status(f"submitting {sum(totals.values())} tasks..."):
            for platform in PLATFORMS:
                for i in range(PROFILES_PER_PLATFORM):
                    await _submit_profile(
                        scheduler, platform, f"{platform}/creator-{i:03d}", priority=1 + i % 5
                    )
        await _show_progress(
            view, totals, float(os.environ.get("ORCHESTRATOR_DEMO_TIMEOUT", "300"))
        )
        metrics = await _scrape_metrics(worker)
    follower.cancel()
    _summary(view, time.monotonic() - started, bootstrap_servers, worker, metrics)


async def _submit_profile(
    scheduler: SmartScheduler, platform: str, target: str, priority: int
) -> None:
    profile = await scheduler.schedule_task("profile_scrape", platform, target, priority=priority)
    content = await scheduler.schedule_task("content_scrape", platform, target, priority=priority)
    analysis = await scheduler.schedule_task(
        "content_analysis", "internal", target, dependencies=[content]
    )
    await scheduler.schedule_task("pipeline", "internal", target, dependencies=[profile, analysis])


async def _follow(bootstrap_servers: str, topic: str, view: LiveView) -> None:
    consumer = KafkaConnection(bootstrap_servers).consumer(
        topic,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=5_000)
            for records in batches.values():
                for record in records:
                    try:
                        view.apply(decode_event(record.value or b""))
                    except OrchestratorError:
                        continue
    finally:
        await consumer.stop()


async def _show_progress(view: LiveView, totals: dict[str, int], timeout_s: float) -> None:
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    deadline = time.monotonic() + timeout_s
    with Progress(*columns, console=console) as progress:
        bars = {p: progress.add_task(p, total=n) for p, n in totals.items()}
        while time.monotonic() < deadline:
            done = view.done_by_platform()
            for platform, bar in bars.items():
                progress.update(bar, completed=done.get(platform, 0))
            if all(done.get(p, 0) >= n for p, n in totals.items()):
                return
            await asyncio.sleep(0.25)
    stuck = [s for s in view.states.values() if s.status.is_created and not s.status.is_terminal]
    console.print(f"[yellow]{len(stuck)} tasks did not finish within {timeout_s:g} s:[/yellow]")
    for state in stuck[:10]:
        console.print(
            f"  {state.task_id} {state.platform} {state.task_type} {state.status} {state.attempt}"
        )


async def _scrape_metrics(worker: WorkerProcess) -> list[str]:
    wanted = (
        "orchestrator_tasks_completed_total",
        "orchestrator_rate_limit_hits_total",
        "orchestrator_rate_factor",
    )
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{worker.api_url}/metrics") as response,
        ):
            text = await response.text()
    except aiohttp.ClientError:
        return []
    return [
        line
        for line in text.splitlines()
        if line.startswith(wanted) and 'platform="linkedin"' in line
    ][:6]


def _summary(
    view: LiveView,
    elapsed_s: float,
    bootstrap_servers: str,
    worker: WorkerProcess,
    metrics: list[str],
) -> None:
    outcomes = view.outcomes()
    table = Table(title="Discovery run", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    total = sum(outcomes.values())
    table.add_row(
        "tasks",
        f"{total} in {elapsed_s:.1f} s "
        f"({outcomes.get('completed', 0) / elapsed_s:.1f} completed/s)",
    )
    table.add_row("outcome", ", ".join(f"{n} {status}" for status, n in sorted(outcomes.items())))
    table.add_row(
        "retries",
        f"{view.retries} after failures or timeouts, {view.throttled} 'rate limited' answers",
    )
    table.add_row(
        "held back",
        ", ".join(f"{n} by {reason}" for reason, n in sorted(view.deferrals.items())) or "none",
    )
    p50, p95, p99 = percentiles(view.durations_s())
    table.add_row(
        "duration", f"p50 {p50:.2f} s, p95 {p95:.2f} s, p99 {p99:.2f} s (first start to completion)"
    )
    w50, w95, w99 = percentiles(view.queue_waits_s())
    table.add_row(
        "queue wait", f"p50 {w50:.2f} s, p95 {w95:.2f} s, p99 {w99:.2f} s (ready to dispatched)"
    )
    table.add_row(
        "events", f"{view.events} on task.events, folded here with the same pure fold as the worker"
    )
    console.print()
    console.print(table)
    example = view.example(Status.FAILED) or view.example(Status.COMPLETED)
    env = f"ORCHESTRATOR_TOPIC_PREFIX={view.topic_prefix} ORCHESTRATOR_BROKER={bootstrap_servers}"
    console.print(
        "\nWhere to look next (ORCHESTRATOR_DEMO_KEEP=1 make run keeps Kafka up for these):"
    )
    if example:
        console.print(
            f"  {env} .venv/bin/orchestrator tail task.events --from-beginning | grep {example}"
        )
    console.print(f"  {env} .venv/bin/orchestrator tail task.events.dlq --from-beginning")
    console.print(f"  metrics were served at {worker.api_url}/metrics while the worker ran, e.g.:")
    for line in metrics:
        console.print(f"    {line}")


if __name__ == "__main__":
    sys.exit(main())
