"""The main job behind ``make run``: a local broker, a worker, and a small discovery workload.

It starts Kafka (unless one is already up), starts a worker, creates a profile scrape, an
analysis that depends on it and a pipeline that depends on the analysis, drives them through
their lives with ``TaskManager``, and prints every ``task.ready`` record as the worker publishes
it. Then it stops what it started.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from schemas import decode_ready
from streams import localbroker, topics
from streams.client import TaskManager
from streams.errors import OrchestratorError
from streams.process import start_worker

DEMO_DIR = Path(os.environ.get("ORCHESTRATOR_DEMO_DIR", ".cache/demo"))


def main() -> int:
    """Run the demo; return the exit status."""
    port = int(os.environ.get("ORCHESTRATOR_DEMO_PORT", "9092"))
    kafka_dir = DEMO_DIR / "kafka"
    started_kafka = localbroker.status(kafka_dir) is None
    t0 = time.monotonic()
    try:
        info = localbroker.up(port=port, data_dir=kafka_dir)
    except OrchestratorError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    print(f"Kafka {info.version} up at {info.bootstrap_servers} in {time.monotonic() - t0:.1f} s")
    worker = start_worker(
        info.bootstrap_servers, DEMO_DIR / f"worker-{uuid.uuid4().hex[:6]}", _free_port()
    )
    try:
        t1 = time.monotonic()
        worker.wait_ready()
        print(f"worker ready in {time.monotonic() - t1:.1f} s (HTTP API {worker.api_url})\n")
        asyncio.run(_workload(info.bootstrap_servers, worker.api_url))
    finally:
        worker.stop()
        if started_kafka:
            localbroker.down(kafka_dir)
            print("\nstopped the worker and Kafka")
        else:
            print("\nstopped the worker (Kafka was already running: left up)")
    return 0


async def _workload(bootstrap_servers: str, api_url: str) -> None:
    run = uuid.uuid4().hex[:6]
    ids = {name: f"demo-{run}-{name}" for name in ("scrape", "analysis", "pipeline")}
    names = {task_id: name for name, task_id in ids.items()}
    t0 = time.monotonic()
    listening = asyncio.Event()
    watcher = asyncio.create_task(_watch_ready(bootstrap_servers, names, t0, listening))
    await listening.wait()
    config = {"bootstrap_servers": bootstrap_servers, "api_url": api_url}
    async with TaskManager(config) as tm:
        await tm.create_task(
            "profile_scrape", "linkedin", "in/ada", task_id=ids["scrape"], priority=1
        )
        await tm.create_task(
            "content_analysis",
            "internal",
            "in/ada",
            dependencies=[ids["scrape"]],
            task_id=ids["analysis"],
        )
        await tm.create_task(
            "pipeline",
            "internal",
            "in/ada",
            dependencies=[ids["analysis"]],
            task_id=ids["pipeline"],
        )
        await _show(tm, ids, "after creation")
        for step in ("scrape", "analysis", "pipeline"):
            await tm.start_task(ids[step])
            await tm.update_task_progress(ids[step], 0.5)
            await tm.complete_task(ids[step], {"step": step, "items": len(step)})
            await _show(tm, ids, f"after {step} completed")
        print(f"\nresult of the scrape: {await tm.get_task_result(ids['scrape'])}")
    await asyncio.wait_for(watcher, timeout=30)


async def _show(tm: TaskManager, ids: dict[str, str], when: str) -> None:
    statuses = [
        f"{name}={(await tm.get_task_status(task_id))['status']}" for name, task_id in ids.items()
    ]
    print(f"  status {when:<26} {'  '.join(statuses)}")


async def _watch_ready(
    bootstrap_servers: str, names: dict[str, str], t0: float, listening: asyncio.Event
) -> None:
    consumer = AIOKafkaConsumer(
        topics.TASK_READY,
        bootstrap_servers=bootstrap_servers,
        isolation_level="read_committed",
        auto_offset_reset="latest",
        group_id=None,
    )
    await consumer.start()
    for partition in consumer.assignment():
        await consumer.position(partition)  # fixes "latest" before the first task is created
    listening.set()
    try:
        seen: set[str] = set()
        while len(seen) < len(names):
            async for record in consumer:
                ready = decode_ready(record.value or b"")
                if ready.task_id in names:
                    seen.add(ready.task_id)
                    print(
                        f"  task.ready  +{time.monotonic() - t0:5.2f} s  {names[ready.task_id]:<9}"
                        f" platform={ready.platform} attempt={ready.attempt}"
                    )
                if len(seen) == len(names):
                    break
    finally:
        await consumer.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


if __name__ == "__main__":
    sys.exit(main())
