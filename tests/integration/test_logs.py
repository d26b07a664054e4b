"""The worker's logs against a real broker: ``--log-format json`` gives one JSON object per line
(faust's lines included), a failing handler gives one failure line with the task's id, a retry
one line each, an undecodable record a dead-letter line naming its key, and faust's false
"Stream has not started processing" errors never show.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from streams.client import TaskManager
from streams.logs import shown
from streams.process import WorkerProcess, free_port, start_worker
from tests.integration.conftest import HANDLERS, PARTITIONS, REPO_ROOT, RUN, Cluster, platform
from tests.integration.kafka_io import produce

TERMINAL = {"completed", "failed", "cancelled"}
IDLE_S = 10.0
FAUST_CHECK_S = "2"
"""faust's ``stream_processing_timeout`` in these workers (env ``STREAM_PROCESSING_TIMEOUT``):
its idle check fires after 2 s instead of 5 min, so the idle period would show its errors."""


def _start_with_flag(cluster: Cluster, name: str) -> WorkerProcess:
    """A worker of ``cluster`` started with ``--log-format json`` on its command line."""
    worker = start_worker(
        cluster.bootstrap_servers,
        cluster.root / name,
        free_port(),
        {
            "app_id": cluster.app_id,
            "topic_prefix": cluster.topic_prefix,
            "partitions": str(PARTITIONS),
            "commit_interval": "0.1",
            "timer_interval": "0.1",
            "handlers": HANDLERS,
        },
        extra_args=("--log-format", "json"),
        extra_env={"PYTHONPATH": str(REPO_ROOT)},
    )
    cluster.workers.append(worker)
    worker.wait_ready()
    return worker


def _lines(worker: WorkerProcess) -> list[dict[str, Any]]:
    """Every line of the worker's log, each parsed as JSON (fails on a line that is not)."""
    text = worker.log_file.read_text(encoding="utf-8")
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"{worker.log_file}:{number} is not JSON: {line[:300]!r}")
        assert isinstance(parsed, dict), line
        assert {"ts", "level", "logger", "message"} <= parsed.keys(), line
        lines.append(parsed)
    return lines


async def _poll(tm: TaskManager, task_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status = await tm.get_task_status(task_id)
        if status["status"] in TERMINAL or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.1)


async def _wait_for_line(
    worker: WorkerProcess, match: Callable[[dict[str, Any]], bool], timeout_s: float = 30
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(match(line) for line in _lines(worker)):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"no such line in {worker.log_file} within {timeout_s} s")


async def test_json_logs_name_each_failure_retry_and_dead_letter_and_no_false_errors(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAM_PROCESSING_TIMEOUT", FAUST_CHECK_S)  # the workers inherit it
    first = _start_with_flag(cluster, "first")
    where = platform("logs")
    config = {
        "bootstrap_servers": cluster.bootstrap_servers,
        "api_url": first.api_url,
        "partitions": PARTITIONS,
        "topic_prefix": cluster.topic_prefix,
        "read_timeout": 60.0,
    }
    async with TaskManager(config) as tm:
        gone = await tm.create_task("gone", where, "x", task_id=f"logs-{RUN}-gone")
        flaky = await tm.create_task(
            "flaky", where, "y", task_id=f"logs-{RUN}-flaky", max_retries=3, retry_delay=0.05
        )
        assert (await _poll(tm, gone))["status"] == "failed"
        assert (await _poll(tm, flaky))["status"] == "completed"
    key = f"logs-{RUN}-undecodable\n".encode() + b"\xff"
    await produce(cluster.bootstrap_servers, cluster.topics.events, [(key, b"\x00\xffnot avro")])
    await _wait_for_line(first, lambda line: line.get("task_id") == shown(key))

    # a second worker joins (settings from the environment this time): a rebalance, and a
    # restore on the newcomer, after which faust used to report idle partitions as stalled
    second = cluster.start("second", handlers=HANDLERS, log_format="json")
    await asyncio.sleep(IDLE_S)

    lines = _lines(first)
    every = lines + _lines(second)

    start = lines[0]
    assert start["logger"] == "streams.worker", start
    for part in (
        f"app_id={cluster.app_id}",
        f"topic_prefix='{cluster.topic_prefix}'",
        f"partitions={PARTITIONS}",
        f"http://127.0.0.1:{first.web_port}",
        "/ready, /health, /metrics",
        HANDLERS,
        cluster.bootstrap_servers,
    ):
        assert part in start["message"], start
    assert any(line["message"] == "[^Worker]: Ready" for line in lines), "faust's lines too"

    about_gone = [line for line in every if line.get("task_id") == gone]
    assert len(about_gone) == 1, about_gone
    (failure,) = about_gone
    assert failure["level"] == "WARNING"
    assert failure["message"].startswith(f"handler failed: task={gone} ")
    assert (failure["platform"], failure["attempt"]) == (where, 1)
    assert failure["reason"] == "NonRetryableError: account deleted"

    about_flaky = [line for line in every if line.get("task_id") == flaky]
    failures = [line for line in about_flaky if line["message"].startswith("handler failed")]
    retries = [line for line in about_flaky if line["message"].startswith("retry scheduled")]
    assert [line["attempt"] for line in failures] == [1, 2], about_flaky
    assert [line["attempt"] for line in retries] == [1, 2], about_flaky
    assert all(line["level"] == "INFO" and line["platform"] == where for line in retries)
    assert all(line["reason"].startswith("RuntimeError: transient failure") for line in retries)
    assert all(isinstance(line["retry_in_ms"], int) for line in retries)

    (dead,) = [line for line in every if line["message"].startswith("dead-lettered")]
    assert dead["task_id"] == f"logs-{RUN}-undecodable\\n\\xff"
    assert dead["level"] == "WARNING"
    assert dead["reason"] == "undecodable"
    assert dead["topic"] == cluster.topics.events
    assert isinstance(dead["partition"], int) and isinstance(dead["offset"], int)
    assert f"task={dead['task_id']}: undecodable: " in dead["message"]

    false_errors = [line for line in every if "has not started processing" in line["message"]]
    assert false_errors == []

    for worker in (second, first):  # stopping is logged in JSON too
        worker.stop()
        assert any(line["message"].endswith("Closing event loop") for line in _lines(worker))
