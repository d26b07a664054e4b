"""Three brokers, one killed: the whole task path on a local three-node cluster while the broker
that leads most partitions of ``task.events`` is killed with SIGKILL and later restarted, and
then the worker is killed with SIGKILL and restarted.

Shared by ``tests/integration/test_three_brokers.py`` (5,000 tasks, with assertions) and the
bench case ``three_brokers`` (``python -m bench --only three_brokers``, 50,000 by default).

The run: a cluster from :func:`streams.localbroker.up` (``brokers=3``) in a directory of its
own, on six free ports; one worker (``replication_factor`` 3, the no-op handler of
``bench.handlers``); tasks created with the client's ``create_tasks`` in batches, never more than
``ahead`` tasks ahead of the completions, so creation goes on through both kills (a batch that
fails while a broker is down is sent again: its event ids are derived from the task ids, so the
fold ignores a second copy). A ``read_committed`` reader of ``task.completed`` notes when each
task first completes. Stages, by completed tasks: at ``tasks // 5`` the broker is killed; once
``tasks // 10`` more have completed without it, it is restarted (:func:`localbroker.start_node`);
at ``3 * tasks // 5`` the worker is killed and restarted on the same data dir.

After the last completion: ``orchestrator verify`` against the worker (the live table against a
fold of the log), then the worker stops and ``task.ready``, ``task.completed``, ``task.events``
and the DLQ are read to their ends, read committed, and counted.

The pauses reported are the longest gap between two consecutive first completions seen by the
reader, within the broker's outage (from its kill to the end of its restart) and after the
worker's kill (its restart and recovery); ``longest_gap_s`` is over the whole run.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bench.workload import PARTITIONS, Result
from schemas import decode_completed, decode_ready
from streams import localbroker
from streams.client import TaskManager
from streams.errors import InfrastructureError
from streams.kafka_clients import KafkaConnection
from streams.partition_layout import leaders_by_node, read_layout
from streams.process import WorkerProcess, free_port, start_worker
from streams.topics import TopicNames, scheduler_changelog, tasks_changelog

ROOT = Path(__file__).resolve().parents[1]
TASK_TYPE = "bench_noop"
BATCH = 250
"""Tasks per ``create_tasks`` call."""
AHEAD = 1_500
"""Tasks created but not yet seen completed, at most: creation spans the whole run."""


@dataclass
class Timeline:
    """What happened when (``time.monotonic()``), and when each task first completed."""

    tasks: int
    completions: list[float] = field(default_factory=list)
    broker_killed: float = 0.0
    broker_restarted: float = 0.0
    worker_killed: float = 0.0
    worker_restarted: float = 0.0
    killed_node: int = 0
    completed_at_broker_kill: int = 0
    retried_batches: int = 0
    progressed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the reader saw new completions."""

    def longest_gap(self, start: float = 0.0, end: float = float("inf")) -> float:
        """The longest time between consecutive completions around ``[start, end]``."""
        times = self.completions
        gaps = [b - a for a, b in itertools.pairwise(times) if b >= start and a <= end]
        return max(gaps, default=0.0)


def free_port_block(size: int, attempts: int = 100) -> int:
    """A port ``p`` such that ``p`` to ``p + size - 1`` are all free on 127.0.0.1 now."""
    for _ in range(attempts):
        base = free_port()
        if base + size <= 65535 and all(localbroker.port_is_free(base + i) for i in range(1, size)):
            return base
    raise InfrastructureError(f"found no {size} consecutive free ports")


async def run(root: Path, tasks: int, partitions: int, deadline_s: float) -> dict[str, Any]:
    """Run the scenario in ``root``; return its figures (see the module's docstring)."""
    data_dir = root / "kafka3"
    base = free_port_block(6)
    started = time.monotonic()
    info = await asyncio.to_thread(
        localbroker.up, port=base, data_dir=data_dir, timeout_s=120.0, brokers=3
    )
    print(f"three brokers up in {time.monotonic() - started:.1f} s at {info.bootstrap_servers}")
    try:
        return await _with_cluster(root, info, tasks, partitions, deadline_s)
    finally:
        await asyncio.to_thread(localbroker.down, data_dir)


async def _with_cluster(
    root: Path, info: localbroker.BrokerInfo, tasks: int, partitions: int, deadline_s: float
) -> dict[str, Any]:
    bootstrap = info.bootstrap_servers
    name = f"three-{uuid.uuid4().hex[:6]}"
    topics = TopicNames(f"{name}.")
    settings = {
        "app_id": name,
        "topic_prefix": topics.prefix,
        "partitions": str(partitions),
        "replication_factor": "3",
        "handlers": "bench.handlers",
        "commit_interval": "0.1",
        # start_lead keeps its default: the scheduler lengthens its lead to what its commits
        # take on three replicas (streams.domain.scheduling.StartLead). The start slot does
        # not adapt (it widens the rate-limit windows): with the default 0.05 s, on two cores
        # shared by three brokers, the executor's loop started handlers 10 to 15 ms after
        # their slot and gave 7,356 go-aheads back over 5,000 tasks (all completed exactly
        # once, at 66 tasks/s). No rate limits here, so a wide slot costs nothing; it also
        # spans the commits stalled while a broker is down
        "start_slot": "30",
    }
    worker = await asyncio.to_thread(_start_worker, bootstrap, root / name, settings, "worker.log")
    report: dict[str, Any] = {"tasks": tasks, "partitions": partitions}
    try:
        report.update(await _replication(bootstrap, topics, name))
        timeline = Timeline(tasks)
        ids = [f"{name}-{i:06d}" for i in range(tasks)]
        worker = await _workload(info, root / name, settings, worker, ids, timeline, deadline_s)
        report["killed_node"] = timeline.killed_node
        report["retried_batches"] = timeline.retried_batches
        report["pause_broker_down_s"] = round(
            timeline.longest_gap(timeline.broker_killed, timeline.broker_restarted), 2
        )
        report["pause_worker_killed_s"] = round(
            timeline.longest_gap(timeline.worker_killed, timeline.worker_restarted + 60), 2
        )
        report["longest_gap_s"] = round(timeline.longest_gap(), 2)
        report["workload_s"] = round(timeline.completions[-1] - timeline.completions[0], 1)
        report["tasks_per_s"] = round(len(ids) / max(report["workload_s"], 0.001), 1)
        report["isr_full_after_restart_s"] = await _isr_full(bootstrap, topics, timeline)
        report.update(await _verify(bootstrap, topics, partitions, worker.api_url))
    finally:
        worker.stop()
    report["go_aheads_given_back"] = sum(
        log.read_text(errors="replace").count("go-ahead given back")
        for log in (root / name).glob("worker*.log")
    )
    report.update(await _count(bootstrap, topics, partitions, set(ids)))
    return report


def _start_worker(
    bootstrap: str, data_dir: Path, settings: dict[str, str], log_name: str
) -> WorkerProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    worker = start_worker(
        bootstrap,
        data_dir,
        free_port(),
        settings,
        log_file=data_dir / log_name,  # a log of its own: a restart's readiness is its own
        extra_env={"PYTHONPATH": str(ROOT)},
    )
    worker.wait_ready(timeout_s=180)
    return worker


async def _replication(bootstrap: str, topics: TopicNames, app_id: str) -> dict[str, Any]:
    """The replicas and ``min.insync.replicas`` of the project's topics, as the cluster has
    them: the fewest and the most over every topic and changelog."""
    names = [
        topics.events,
        topics.ready,
        topics.dispatch,
        topics.completed,
        topics.dlq,
        topics.signals,
        topics.scheduler_events,
        topics.config,
        topics.keys,
        tasks_changelog(topics.prefix + app_id),
        scheduler_changelog(topics.prefix + app_id),
    ]
    layout = await read_layout(bootstrap, names)
    replicas = {len(p.replicas) for p in layout.partitions}
    admin = KafkaConnection(bootstrap).admin()
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in names]
        )
    finally:
        await admin.close()
    min_isr = {
        int(value)
        for response in responses
        for resource in response.resources
        for config_name, value, *_ in resource[4]
        if config_name == "min.insync.replicas"
    }
    return {
        "topics": len({p.topic for p in layout.partitions}),
        "replicas_min": min(replicas),
        "replicas_max": max(replicas),
        "min_insync_min": min(min_isr),
        "min_insync_max": max(min_isr),
    }


async def _workload(
    info: localbroker.BrokerInfo,
    data_dir: Path,
    settings: dict[str, str],
    worker: WorkerProcess,
    ids: list[str],
    timeline: Timeline,
    deadline_s: float,
) -> WorkerProcess:
    """Create ``ids`` while killing and restarting the leading broker, then the worker; return
    once every task was seen completed (the worker running then)."""
    bootstrap = info.bootstrap_servers
    topics = TopicNames(settings["topic_prefix"])
    wanted = set(ids)
    completed: set[str] = set()
    reader = KafkaConnection(bootstrap).consumer(
        topics.completed,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    config = {
        "bootstrap_servers": bootstrap,
        "api_url": worker.api_url,
        "partitions": int(settings["partitions"]),
        "topic_prefix": topics.prefix,
        "request_timeout": 30.0,
        # an attempt cut short by the worker's SIGKILL is retried after its timeout: 30 s, not
        # the default 300 s, which would stall the workload's end that long
        "default_timeout": ATTEMPT_TIMEOUT_S,
    }
    tasks = len(ids)
    deadline = time.monotonic() + deadline_s
    await reader.start()
    try:
        async with TaskManager(config) as tm:
            creating = asyncio.create_task(_create(tm, ids, completed, timeline))
            try:
                while len(completed) < tasks:
                    if time.monotonic() > deadline:
                        raise InfrastructureError(
                            f"only {len(completed)} of {tasks} tasks completed in {deadline_s:g} s"
                        )
                    if creating.done() and creating.exception() is not None:
                        creating.result()  # raises it
                    batches = await reader.getmany(timeout_ms=100, max_records=5_000)
                    now = time.monotonic()
                    for records in batches.values():
                        for record in records:
                            tid = decode_completed(record.value or b"").task_id
                            if tid in wanted and tid not in completed:
                                completed.add(tid)
                                timeline.completions.append(now)
                                timeline.progressed.set()
                    worker = await _disrupt(info, data_dir, settings, worker, completed, timeline)
                await creating
            finally:
                creating.cancel()
    finally:
        await reader.stop()
    return worker


async def _create(tm: TaskManager, ids: list[str], completed: set[str], timeline: Timeline) -> None:
    for start in range(0, len(ids), BATCH):
        while start - len(completed) > AHEAD:
            timeline.progressed.clear()
            await timeline.progressed.wait()  # the reader adds completions meanwhile
        specs = [
            {"task_type": TASK_TYPE, "platform": "three", "target": tid, "task_id": tid}
            for tid in ids[start : start + BATCH]
        ]
        for attempt in range(1, 6):
            try:
                await tm.create_tasks(specs, confirm=False)
                break
            except InfrastructureError as exc:  # a broker gone mid-batch: the same ids again
                timeline.retried_batches += 1
                print(f"create_tasks of {len(specs)} tasks failed (try {attempt}): {exc}")
                if attempt == 5:
                    raise


async def _disrupt(
    info: localbroker.BrokerInfo,
    data_dir: Path,
    settings: dict[str, str],
    worker: WorkerProcess,
    completed: set[str],
    timeline: Timeline,
) -> WorkerProcess:
    """Take the next step of the scenario that the completions reached (at most one)."""
    tasks, done = timeline.tasks, len(completed)
    if not timeline.broker_killed and done >= tasks // 5:
        layout = await read_layout(
            info.bootstrap_servers, [settings["topic_prefix"] + "task.events"]
        )
        node_id, led = leaders_by_node(layout.partitions).most_common(1)[0]
        pid = next(node.pid for node in info.nodes if node.node_id == node_id)
        os.kill(pid, signal.SIGKILL)
        timeline.broker_killed, timeline.killed_node = time.monotonic(), node_id
        timeline.completed_at_broker_kill = done
        print(
            f"killed broker {node_id} (pid {pid}, leader of {led} partitions) at {done} completed"
        )
    elif (
        timeline.broker_killed
        and not timeline.broker_restarted
        and done >= timeline.completed_at_broker_kill + tasks // 10
    ):
        started = time.monotonic()
        await asyncio.to_thread(
            localbroker.start_node, timeline.killed_node, info.data_dir, None, 120.0
        )
        timeline.broker_restarted = time.monotonic()
        took, down = started - timeline.broker_killed, timeline.broker_restarted - started
        print(
            f"restarted broker {timeline.killed_node} at {done} completed, {took:.1f} s after "
            f"its kill (back in {down:.1f} s)"
        )
    elif timeline.broker_restarted and not timeline.worker_killed and done >= 3 * tasks // 5:
        worker.kill()
        timeline.worker_killed = time.monotonic()
        print(f"killed the worker at {done} completed")
        worker = await asyncio.to_thread(
            _start_worker, info.bootstrap_servers, data_dir, settings, "worker-restarted.log"
        )
        timeline.worker_restarted = time.monotonic()
        print(f"restarted the worker in {timeline.worker_restarted - timeline.worker_killed:.1f} s")
    return worker


async def _isr_full(bootstrap: str, topics: TopicNames, timeline: Timeline) -> float:
    """Seconds from the broker's restart until every partition of ``task.events`` has all its
    replicas in sync again (waited for, up to a minute more)."""
    deadline = time.monotonic() + 60.0
    while True:
        layout = await read_layout(bootstrap, [topics.events])
        if not any(p.is_under_replicated for p in layout.partitions):
            return round(time.monotonic() - timeline.broker_restarted, 1)
        if time.monotonic() > deadline:
            raise InfrastructureError(f"{topics.events} still under-replicated: {layout}")
        await asyncio.sleep(0.5)


async def _verify(
    bootstrap: str, topics: TopicNames, partitions: int, api_url: str
) -> dict[str, Any]:
    """``orchestrator verify`` run as a user runs it: its exit code and summary line."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ORCHESTRATOR_BROKER": bootstrap,
        "ORCHESTRATOR_TOPIC_PREFIX": topics.prefix,
        "ORCHESTRATOR_PARTITIONS": str(partitions),
        "ORCHESTRATOR_API_URL": api_url,
    }
    command = [sys.executable, "-m", "streams", "verify", "--timeout", "90"]
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=180
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    return {"verify_exit": done.returncode, "verify": lines[-1] if lines else ""}


async def _count(
    bootstrap: str, topics: TopicNames, partitions: int, wanted: set[str]
) -> dict[str, Any]:
    """Records per topic (read committed, to the end) and, for the outputs, tasks missing or
    there more than once."""
    counts: dict[str, Any] = {
        "events_records": len(await _read_all(bootstrap, topics.events, partitions, _no_id)),
        "dlq_records": len(await _read_all(bootstrap, topics.dlq, partitions, _no_id)),
    }
    for name, topic, decode in (
        ("ready", topics.ready, _ready_id),
        ("completed", topics.completed, _completed_id),
    ):
        keys = await _read_all(bootstrap, topic, partitions, decode)
        # a task.ready record is one readiness (task id, ready id): a task is readied again
        # by a retry (an attempt cut short by the worker's kill times out) or a go-ahead given
        # back, each under a new ready id; the same readiness twice would be a duplicate
        per_record = Counter(key for key in keys if key.partition(SEP)[0] in wanted)
        per_task = Counter(key.partition(SEP)[0] for key in per_record.elements())
        counts[f"{name}_records"] = len(keys)
        counts[f"{name}_missing"] = len(wanted - per_task.keys())
        counts[f"{name}_duplicated"] = sum(1 for n in per_record.values() if n > 1)
        counts[f"{name}_tasks_again"] = sum(1 for n in per_task.values() if n > 1)
    return counts


SEP = "\x00"
ATTEMPT_TIMEOUT_S = 30.0


def _no_id(_value: bytes) -> str:
    return ""


def _ready_id(value: bytes) -> str:
    ready = decode_ready(value)
    return f"{ready.task_id}{SEP}{ready.ready_id}"


def _completed_id(value: bytes) -> str:
    return decode_completed(value).task_id


async def _read_all(
    bootstrap: str, topic: str, partitions: int, task_id: Callable[[bytes], str]
) -> list[str]:
    """``task_id`` of every committed record of ``topic``, read to its end: call once no writer
    is left. Waits (up to a minute) until no transaction is open on it first."""
    kafka = KafkaConnection(bootstrap)
    consumer = kafka.consumer(
        isolation_level="read_committed", enable_auto_commit=False, group_id=None
    )
    peek = kafka.consumer(enable_auto_commit=False, group_id=None)
    await consumer.start()
    await peek.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        deadline = time.monotonic() + 60.0
        while (ends := await consumer.end_offsets(tps)) != await peek.end_offsets(tps):
            if time.monotonic() > deadline:
                raise InfrastructureError(f"{topic}: transactions still open after 60 s")
            await asyncio.sleep(0.5)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        tids: list[str] = []
        left = {tp for tp in tps if ends[tp] > 0}
        while left:
            batches = await consumer.getmany(*left, timeout_ms=500, max_records=10_000)
            for records in batches.values():
                tids += [task_id(r.value or b"") for r in records]
            for tp in list(left):
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
    finally:
        await consumer.stop()
        await peek.stop()
    return tids


RESULTS_FILE = ROOT / "bench" / "results" / "three_brokers.json"


async def bench_case(root: Path, tasks: int) -> list[Result]:
    """The bench case: the scenario with ``tasks`` tasks on 8 partitions; its whole report goes
    to ``bench/results/three_brokers.json``, its main figures to the table."""
    deadline_s = 120.0 + tasks / 20
    report = await run(root, tasks, PARTITIONS, deadline_s)
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=2) + "\n")
    print(f"three brokers: {json.dumps(report)}", flush=True)
    rows = [
        Result("three_brokers_tasks_per_s", report["tasks_per_s"], "tasks/s"),
        Result("three_brokers_pause_broker_down_s", report["pause_broker_down_s"], "s"),
        Result("three_brokers_pause_worker_killed_s", report["pause_worker_killed_s"], "s"),
        Result("three_brokers_isr_full_after_restart_s", report["isr_full_after_restart_s"], "s"),
    ]
    for name in ("ready", "completed"):
        rows.append(Result(f"three_brokers_{name}_records", report[f"{name}_records"], "records"))
        for what in ("missing", "duplicated"):
            rows.append(Result(f"three_brokers_{name}_{what}", report[f"{name}_{what}"], "tasks"))
    rows.append(Result("three_brokers_verify_differences", report["verify_exit"], "exit code"))
    return rows
