"""The executor's lifecycle against a real broker and real workers: bounded "rate limited"
answers, draining on SIGTERM (finish within the grace, or be interrupted and retried at once),
and a user's cancellation reaching the running handler.

The handlers (``tests/integration/handlers_for_tests.py``) note each start and cancellation in
a file named by ``EXECUTOR_TEST_STARTS``, which the workers inherit from the test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from schemas import decode_event
from streams.client import TaskManager
from streams.domain import Event, Source, TaskCancelled, TaskCompleted, TaskFailed, TaskStarted
from streams.process import WorkerProcess
from tests.integration.conftest import HANDLERS, PARTITIONS, Cluster, platform
from tests.integration.handlers_for_tests import STARTS_FILE_ENV
from tests.integration.kafka_io import Record, read_until

TERMINAL = {"completed", "failed", "cancelled"}


@dataclass(frozen=True)
class Note:
    """A line of the handlers' notes file."""

    at: float
    what: str
    task_id: str
    attempt: int
    pid: int


@pytest.fixture
def notes_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "handler-notes.log"
    monkeypatch.setenv(STARTS_FILE_ENV, str(path))
    return path


def _notes(path: Path, task_id: str, what: str | None = None) -> list[Note]:
    if not path.exists():
        return []
    notes = []
    for line in path.read_text(encoding="utf-8").splitlines():
        at, kind, tid, attempt, pid = line.split()
        if tid == task_id and (what is None or kind == what):
            notes.append(Note(float(at), kind, tid, int(attempt), int(pid)))
    return notes


async def _wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {what}")


async def _poll(
    tm: TaskManager, task_id: str, done: Callable[[dict[str, Any]], bool], timeout_s: float = 60
) -> dict[str, Any]:
    """The task's status once ``done(status)`` holds, or the last one read at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await tm.get_task_status(task_id)
        if done(status) or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.1)


def _client(cluster: Cluster, worker: WorkerProcess) -> dict[str, Any]:
    return {
        "bootstrap_servers": cluster.bootstrap_servers,
        "api_url": worker.api_url,
        "partitions": PARTITIONS,
        "topic_prefix": cluster.topic_prefix,
        "read_timeout": 60.0,
    }


def _start(cluster: Cluster, name: str, grace_s: float = 30) -> WorkerProcess:
    return cluster.start(name, handlers=HANDLERS, shutdown_grace=str(grace_s), timer_interval="0.1")


async def _records(
    cluster: Cluster, topic: str, task_id: str, done: Callable[[list[Record]], bool]
) -> list[Record]:
    return await read_until(
        cluster.bootstrap_servers,
        f"{cluster.topic_prefix}{topic}",
        done=done,
        keep=lambda r: r.key == task_id.encode(),
        timeout_s=30,
    )


async def _events(
    cluster: Cluster, task_id: str, done: Callable[[list[Event]], bool]
) -> list[Event]:
    records = await _records(
        cluster, "task.events", task_id, lambda kept: done([decode_event(r.value) for r in kept])
    )
    return [decode_event(r.value) for r in records]


def _of(events: list[Event], kind: type) -> list[Event]:
    return [e for e in events if isinstance(e.payload, kind)]


def _lines(worker: WorkerProcess, text: str) -> list[str]:
    log = worker.log_file.read_text(encoding="utf-8", errors="replace")
    return [line for line in log.splitlines() if text in line]


def _shared(workers: list[WorkerProcess]) -> list[set[int]] | None:
    """The partitions each worker folds, if they share all of them now (else None)."""
    owned = []
    for worker in workers:
        lines = _lines(worker, "fold: folding partitions")
        if not lines:
            return None
        owned.append(set(json.loads(lines[-1].split("partitions")[-1].strip())))
    if not all(owned) or set().union(*owned) != set(range(PARTITIONS)):
        return None
    if sum(len(o) for o in owned) != PARTITIONS:
        return None
    return owned


async def test_a_handler_always_answering_rate_limited_fails_the_task_after_max_rate_limited(
    cluster: Cluster, notes_file: Path
) -> None:
    worker = _start(cluster, "w")
    async with TaskManager(_client(cluster, worker)) as tm:
        task_id = await tm.create_task(
            "always_throttled", platform("throttled-bound"), "x", max_rate_limited=3
        )
        status = await _poll(tm, task_id, lambda s: s["status"] in TERMINAL)
        await asyncio.sleep(1.0)  # no further start may follow

    starts = _notes(notes_file, task_id, "started")
    answers = _lines(worker, f"handler rate limited: task={task_id} ")
    assert status["status"] == "failed", status
    assert status["last_error"] == (
        "rate limited 3 times in a row: rate limited, retry after 0.05 s"
    )
    assert status["rate_limited_in_row"] == 3
    assert status["policy"]["max_rate_limited"] == 3
    assert status["attempt"] == 1, "throttled attempts are not spent"
    assert len(starts) == 3, starts
    assert len(answers) == 3, answers
    assert all(f"platform={platform('throttled-bound')} attempt=1 error=" in a for a in answers)
    assert all("[INFO] handler rate limited" in a for a in answers), answers


async def test_sigterm_lets_a_running_handler_finish_within_the_grace(
    cluster: Cluster, notes_file: Path
) -> None:
    first = _start(cluster, "first", grace_s=10)
    async with TaskManager(_client(cluster, first)) as tm:
        task_id = await tm.create_task("sleepy", platform("drain"), "3", timeout=60)
    (started,) = await _wait_for(
        lambda: _notes(notes_file, task_id, "started"), 60, "the handler starts"
    )

    exit_code = first.stop()
    stopped_at = time.time()

    finished = _notes(notes_file, task_id, "finished")
    assert exit_code == 0, first.log_tail()
    assert finished and not _notes(notes_file, task_id, "cancelled")
    assert finished[0].at >= started.at + 3.0
    assert stopped_at >= finished[0].at, "the worker waited for the handler"
    assert _lines(first, "worker stopping: 1 handler(s) finished, 0 interrupted")
    # the outcome was in the log before the worker exited: read it without any worker
    events = await _events(cluster, task_id, lambda evs: bool(_of(evs, TaskCompleted)))
    assert len(_of(events, TaskStarted)) == 1
    assert len(_of(events, TaskCompleted)) == 1
    assert not _of(events, TaskFailed)

    second = _start(cluster, "second", grace_s=10)
    async with TaskManager(_client(cluster, second)) as tm:
        status = await _poll(tm, task_id, lambda s: s["status"] in TERMINAL)
    assert (status["status"], status["attempt"]) == ("completed", 1), status
    assert len(_notes(notes_file, task_id, "started")) == 1


async def test_sigterm_interrupts_a_long_handler_after_the_grace_and_another_worker_retries_it(
    cluster: Cluster, notes_file: Path
) -> None:
    workers = [_start(cluster, "a", grace_s=1), _start(cluster, "b", grace_s=1)]
    await _wait_for(lambda: _shared(workers), 60, "the two workers share the partitions")
    async with TaskManager(_client(cluster, workers[0])) as tm:
        task_id = await tm.create_task("sleepy", platform("interrupt"), "30", timeout=120)
    (first_start,) = await _wait_for(
        lambda: _notes(notes_file, task_id, "started"), 60, "the handler starts"
    )
    running = next(w for w in workers if w.process.pid == first_start.pid)
    other = next(w for w in workers if w is not running)
    async with TaskManager(_client(cluster, other)) as tm:
        sigterm_at = time.time()
        exit_code = running.stop()
        stop_s = time.time() - sigterm_at

        assert exit_code == 0, running.log_tail()
        assert stop_s < 20, f"the worker took {stop_s:.1f} s to stop with a grace of 1 s"
        assert _notes(notes_file, task_id, "cancelled"), "the handler was cancelled"
        assert _lines(running, f"handler interrupted: task={task_id} ")
        assert _lines(running, "worker stopping: 0 handler(s) finished, 1 interrupted")
        # the interruption is in the log, written before the worker exited
        events = await _events(cluster, task_id, lambda evs: bool(_of(evs, TaskFailed)))
        (interrupted,) = _of(events, TaskFailed)
        assert isinstance(interrupted.payload, TaskFailed)
        assert interrupted.payload.interrupted and interrupted.source is Source.EXECUTOR
        assert interrupted.payload.error == "interrupted: worker stopping"
        assert interrupted.occurred_at_ms / 1000 - sigterm_at < 1 + 5, "after the grace"
        # the status leaves running as soon as the other worker folds the interruption, and the
        # task is ready again at once (no retry delay), its attempt not spent
        ready = await _poll(tm, task_id, lambda s: "ready" in _after_retrying(s), timeout_s=30)
        ready_s = time.time() - sigterm_at
        print(f"{stop_s:.1f} s to stop; the task was ready again {ready_s:.1f} s after SIGTERM")
        assert _after_retrying(ready)[:2] == ["retrying", "ready"], ready["history"]
        assert ready_s < 15
        assert ready["rate_limited_in_row"] == 0

        # the other worker runs the task again: not after its 120 s timeout, nor after the 30 s
        # of the handler
        (second_start,) = await _wait_for(
            lambda: [
                n for n in _notes(notes_file, task_id, "started") if n.pid == other.process.pid
            ],
            30,
            "the other worker starts the handler again",
        )
        status = await _poll(tm, task_id, lambda s: s["status"] == "running")

    assert second_start.at - sigterm_at < 45
    assert second_start.attempt == 1, "the interrupted attempt was not spent"
    assert status["status"] == "running" and status["attempt"] == 1, status
    statuses = [entry[0] for entry in status["history"]]
    assert statuses[-4:] == ["retrying", "ready", "dispatched", "running"], statuses


def _after_retrying(status: dict[str, Any]) -> list[str]:
    """The statuses the task entered from its first ``retrying`` on."""
    statuses = [entry[0] for entry in status["history"]]
    return statuses[statuses.index("retrying") :] if "retrying" in statuses else []


async def test_cancelling_a_running_task_cancels_its_handler_within_a_second(
    cluster: Cluster, notes_file: Path
) -> None:
    worker = _start(cluster, "w")
    async with TaskManager(_client(cluster, worker)) as tm:
        task_id = await tm.create_task("sleepy", platform("cancel"), "60", timeout=120)
        await _wait_for(lambda: _notes(notes_file, task_id, "started"), 60, "the handler starts")
        await tm.cancel_task(task_id, "no longer wanted")
        (cancelled,) = await _wait_for(
            lambda: _notes(notes_file, task_id, "cancelled"), 10, "the handler is cancelled"
        )
        status = await _poll(tm, task_id, lambda s: s["status"] in TERMINAL)
        await asyncio.sleep(0.5)  # an executor's failure event, if any, would be written now

    events = await _events(cluster, task_id, lambda evs: bool(_of(evs, TaskCancelled)))
    (cancel,) = _of(events, TaskCancelled)
    assert status["status"] == "cancelled" and status["last_error"] == "no longer wanted"
    latency_s = cancelled.at - cancel.occurred_at_ms / 1000
    print(f"the cancellation reached the handler {latency_s * 1000:.0f} ms after TaskCancelled")
    assert latency_s < 1.0
    assert not _of(events, TaskFailed), "nothing is written for a cancelled handler"
    assert _lines(worker, f"handler cancelled: task={task_id} ")
