"""replay, audit and verify, run as the ``orchestrator`` command against a real broker and worker.

Each test has an orchestrator of its own (the ``cluster`` fixture: fresh app id and topic
prefix). The commands run as subprocesses, as a user runs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from projections.log import Verdict
from projections.replay import replay
from streams.client import TaskManager
from streams.domain import Status
from streams.errors import EventRejectedError, IllegalTransitionError
from streams.state_codec import encode_state
from tests.integration.conftest import PARTITIONS, REPO_ROOT, Cluster
from tests.integration.kafka_io import partition_of, produce

TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class Run:
    """What an ``orchestrator`` command printed and returned."""

    status: int
    stdout: str
    stderr: str


async def orchestrator(cluster: Cluster, *args: str, api_url: str | None = None) -> Run:
    """Run ``orchestrator ARGS`` for ``cluster`` (its broker, topic prefix, a worker's API)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "ORCHESTRATOR_BROKER": cluster.bootstrap_servers,
        "ORCHESTRATOR_TOPIC_PREFIX": cluster.topic_prefix,
        "ORCHESTRATOR_PARTITIONS": str(PARTITIONS),
    }
    if api_url is not None:
        env["ORCHESTRATOR_API_URL"] = api_url
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


def client_config(cluster: Cluster, api_url: str) -> dict[str, Any]:
    return {
        "bootstrap_servers": cluster.bootstrap_servers,
        "api_url": api_url,
        "partitions": PARTITIONS,
        "topic_prefix": cluster.topic_prefix,
        "read_timeout": 60.0,
    }


async def until_status(
    tm: TaskManager, task_id: str, wanted: Any, timeout_s: float = 30.0
) -> dict[str, Any]:
    """The task's status once ``wanted(status)`` holds (the last one read at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await tm.get_task_status(task_id)
        if wanted(status) or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.1)


async def mixed_workload(tm: TaskManager, cluster: Cluster, run: str) -> dict[str, str]:
    """Dependencies, a retry, a timeout, a cancellation and dead-lettered input; returns the ids
    by role once every task has settled."""
    ids = {}
    ids["dependency"] = await tm.create_task("profile_scrape", "linkedin", f"{run}-a")
    ids["dependent"] = await tm.create_task(
        "content_analysis", "internal", f"{run}-b", dependencies=[ids["dependency"]]
    )
    ids["retried"] = await tm.create_task(
        "profile_scrape", "twitter", f"{run}-r", max_retries=2, retry_delay=0.1
    )
    ids["timed_out"] = await tm.create_task(
        "profile_scrape", "instagram", f"{run}-t", timeout=1.0, max_retries=1, retry_delay=0.1
    )
    ids["cancelled"] = await tm.create_task("profile_scrape", "youtube", f"{run}-c")
    ids["cancelled_dependent"] = await tm.create_task(
        "content_analysis", "internal", f"{run}-d", dependencies=[ids["cancelled"]]
    )
    for role in ("dependency", "retried", "timed_out"):
        await tm.start_task(ids[role])
    await tm.update_task_progress(ids["dependency"], 0.5)
    await tm.complete_task(ids["dependency"], {"followers": 1234})
    await tm.fail_task(ids["retried"], "HTTP 503")
    await tm.cancel_task(ids["cancelled"])
    # dead-lettered: progress for a cancelled task (the confirmed write raises), and bytes that
    # are no event at all
    with pytest.raises(IllegalTransitionError, match="not allowed in status cancelled"):
        await tm.update_task_progress(ids["cancelled"], 0.5)
    await produce(cluster.bootstrap_servers, cluster.topics.events, [(b"junk", b"\x00junk")])

    await until_status(tm, ids["dependent"], lambda s: s["status"] == "ready")
    await tm.start_task(ids["dependent"])
    await tm.complete_task(ids["dependent"], {"score": 0.9})
    retry = await until_status(tm, ids["retried"], lambda s: s["status"] == "ready")
    assert retry["attempt"] == 1 and retry["last_error"] == "HTTP 503"
    await tm.start_task(ids["retried"])
    await tm.complete_task(ids["retried"], {"ok": True})
    timed = await until_status(tm, ids["timed_out"], lambda s: s["status"] == "ready")
    assert timed["last_error"] == "timeout after 1000 ms"
    await tm.start_task(ids["timed_out"])
    await tm.fail_task(ids["timed_out"], "gone", retryable=False)
    for role in ("dependent", "retried", "timed_out", "cancelled_dependent"):
        settled = await until_status(tm, ids[role], lambda s: s["status"] in TERMINAL)
        assert settled["status"] in TERMINAL, (role, settled)
    return ids


async def test_verify_finds_no_difference_after_a_workload_then_exactly_a_tampered_task(
    cluster: Cluster, bootstrap_servers: str
) -> None:
    first = cluster.start("w1")
    async with TaskManager(client_config(cluster, first.api_url)) as tm:
        ids = await mixed_workload(tm, cluster, uuid.uuid4().hex[:6])

    clean = await orchestrator(cluster, "verify", "--timeout", "60", api_url=first.api_url)
    assert clean.status == 0, clean
    assert "verify: no difference" in clean.stdout
    assert "DIFFERENT" not in clean.stdout

    # behind the fold's back: a stopped worker, a forged state in the table's changelog
    victim = ids["retried"]
    logged = await replay(bootstrap_servers, cluster.topics.events)
    statuses = {role: logged.log.states[tid].status for role, tid in ids.items()}
    assert statuses == {
        "dependency": Status.COMPLETED,
        "dependent": Status.COMPLETED,
        "retried": Status.COMPLETED,
        "timed_out": Status.FAILED,
        "cancelled": Status.CANCELLED,
        "cancelled_dependent": Status.CANCELLED,
    }
    assert logged.log.counts[Verdict.REJECTED] == 2, "the workload's two dead letters"
    forged = replace(logged.log.states[victim], status=Status.FAILED, last_error="forged")
    first.stop()
    changelog = f"{cluster.orchestrator_id}-tasks-changelog"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            changelog,
            encode_state(forged),
            key=victim.encode(),
            partition=partition_of(victim, PARTITIONS),
        )
    finally:
        await producer.stop()
    second = cluster.start("w2")  # a fresh data dir: the table is restored from the changelog

    tampered = await orchestrator(cluster, "verify", "--timeout", "90", api_url=second.api_url)
    assert tampered.status == 1, tampered
    lines = [line for line in tampered.stdout.splitlines() if line.startswith("DIFFERENT")]
    assert len(lines) == 1, tampered.stdout
    assert lines[0].startswith(f"DIFFERENT {victim}: ")
    assert 'last_error: log "HTTP 503" != live "forged"' in lines[0]
    assert 'status: log "completed" != live "failed"' in lines[0]
    assert "verify: 1 tasks differ" in tampered.stdout

    as_json = await orchestrator(cluster, "verify", "--json", api_url=second.api_url)
    document = json.loads(as_json.stdout)
    assert as_json.status == 1
    assert [d["task_id"] for d in document["differences"]] == [victim]
    assert sorted(document["offsets"]) == [str(p) for p in range(PARTITIONS)]


async def test_replay_until_gives_the_states_as_they_were_at_that_instant(
    cluster: Cluster, tmp_path: Path
) -> None:
    worker = cluster.start("w1")
    run = uuid.uuid4().hex[:6]
    async with TaskManager(client_config(cluster, worker.api_url)) as tm:
        early = await tm.create_task("profile_scrape", "linkedin", f"{run}-early")
        late = await tm.create_task("profile_scrape", "linkedin", f"{run}-late")
        await tm.start_task(early)
        await tm.start_task(late)
        await tm.complete_task(early, {"n": 1})
        instant_ms = int(time.time() * 1000)
        while int(time.time() * 1000) <= instant_ms:  # every later record is stamped after it
            await asyncio.sleep(0.001)
        await tm.complete_task(late, {"n": 2})
        assert (await tm.get_task_status(late))["status"] == "completed"

    iso = (
        datetime.fromtimestamp(instant_ms / 1000, tz=UTC)
        .astimezone()
        .isoformat(timespec="milliseconds")
    )
    for until in (str(instant_ms), iso):
        out = tmp_path / f"until-{len(until)}.json"
        result = await orchestrator(
            cluster, "replay", "--until", until, "--projection", "status", "--out", str(out)
        )
        assert result.status == 0, result
        document = json.loads(out.read_text())
        tasks = document["status"]["tasks"]
        assert tasks[early]["status"] == "completed", until
        assert tasks[late]["status"] == "running", until
        assert tasks[late]["completed_at_ms"] is None
        assert document["summary"]["until_ms"] == instant_ms
        assert set(document) == {"summary", "status"}
        assert "replayed" in result.stdout and "events/s" in result.stdout

    now = await orchestrator(cluster, "replay", "--out", "-")
    assert now.status == 0, now
    document = json.loads(now.stdout)
    assert document["status"]["tasks"][late]["status"] == "completed"
    assert document["platforms"]["platforms"]["linkedin"]["outcomes"]["completed"] == 2
    assert document["audit"]["timelines"][late][-1]["kind"] == "TaskCompleted"

    wrong = await orchestrator(cluster, "replay", "--until", "last tuesday")
    assert wrong.status != 0
    assert wrong.stderr.strip().startswith("orchestrator: error: 'last tuesday' is not a time")
    assert len(wrong.stderr.strip().splitlines()) == 1


async def test_audit_lists_a_tasks_records_in_log_order_with_the_rejected_ones_marked(
    cluster: Cluster,
) -> None:
    worker = cluster.start("w1")
    async with TaskManager(client_config(cluster, worker.api_url)) as tm:
        task = await tm.create_task("profile_scrape", "twitter", "ada")
        await tm.start_task(task)
        await tm.update_task_progress(task, 0.6)
        with pytest.raises(EventRejectedError, match="progress_out_of_range"):
            await tm.update_task_progress(task, 0.2)  # refused: progress never goes down
        await produce(cluster.bootstrap_servers, cluster.topics.events, [(task.encode(), b"\x01")])
        await tm.complete_task(task, {"followers": 7})
        with pytest.raises(IllegalTransitionError):
            await tm.start_task(task)  # refused: it is completed
        await tm.create_task("profile_scrape", "twitter", "someone else")

    readable = await orchestrator(cluster, "audit", task)
    as_json = await orchestrator(cluster, "audit", task, "--json")

    assert as_json.status == 0, as_json
    document = json.loads(as_json.stdout)
    timeline = document["timeline"]
    assert [(e["kind"], e["verdict"], e["reason"]) for e in timeline] == [
        ("TaskCreated", "applied", ""),
        ("TaskStarted", "applied", ""),
        ("TaskProgress", "applied", ""),
        ("TaskProgress", "rejected", "progress_out_of_range"),
        ("(undecodable)", "rejected", "undecodable"),
        ("TaskCompleted", "applied", ""),
        ("TaskStarted", "rejected", "illegal_transition"),
    ]
    offsets = [int(e["position"].split(":")[1]) for e in timeline]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert {e["position"].split(":")[0] for e in timeline} == {str(partition_of(task, 4))}
    assert [e["entered"] for e in timeline if e["entered"]] == [
        ["ready"],
        ["running"],
        ["completed"],
    ]
    assert document["state"]["status"] == "completed"

    assert readable.status == 0, readable
    lines = readable.stdout.splitlines()
    assert lines[0].startswith(f"task {task}: profile_scrape on twitter")
    body = lines[1:-1]
    assert len(body) == 7
    assert ["REJECTED" in line for line in body] == [e["verdict"] == "rejected" for e in timeline]
    assert "REJECTED progress_out_of_range: progress 0.2 is below 0.6" in body[3]
    assert lines[-1] == "7 records, 3 rejected"

    missing = await orchestrator(cluster, "audit", "no-such-task")
    assert missing.status == 1
    assert missing.stderr.startswith("orchestrator: error: no record of task no-such-task")
