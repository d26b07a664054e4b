"""A worker whose disk fills up: /health says so, the worker stops its partitions, says why in
one log line, and resumes by itself once writes succeed again, losing nothing.

Two variants: the worker's data dir on a 40 MB tmpfs filled with a file until ENOSPC (skipped
where mounting is not possible: it needs root), and the fault injection of
``streams.task_store.FAULT_DISK_FULL_ENV``, which makes every store write fail while a file
exists (everywhere, CI included).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from streams.client import SmartScheduler, TaskManager
from streams.errors import InfrastructureError
from streams.process import WorkerProcess, free_port, start_worker
from streams.task_store import FAULT_DISK_FULL_ENV
from tests.integration.conftest import HANDLERS, PARTITIONS, REPO_ROOT, Cluster, platform

TMPFS_SIZE = "40m"
STALL_S = 5.0
TASKS = 8
TASKS_DURING = 40
"""Tasks created during the outage: their states are more than a page of RocksDB's log file
can take, so the fold's store meets the full disk (the first few writes may fit)."""
SIGNALS = 20
"""Scheduler signals sent with each look at ``/health`` during the outage: each transaction of
them makes the scheduler write its platform's state, so its store meets the full disk too. They
are sent until it does: how many transactions a burst takes, and how many writes the store's
last free page holds, vary from run to run."""
T = TypeVar("T")


@dataclass
class Disk:
    """Where the worker keeps its data, and how to fill and free it."""

    data_dir: Path
    mount_point: Path | None
    """The tmpfs (None: the fault injection stands in for it)."""
    fault_file: Path
    env: dict[str, str] = field(default_factory=dict)

    def fill(self) -> None:
        """Make every further store write fail with ENOSPC."""
        if self.mount_point is None:
            self.fault_file.touch()
            return
        fd = os.open(self.mount_point / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            for chunk in (1 << 20, 4096, 512, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, bytes(chunk))
        finally:
            os.close(fd)
        probe = os.open(self.mount_point / "probe", os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError) as full:
                os.write(probe, bytes(4096))
            assert full.value.errno == errno.ENOSPC
        finally:
            os.close(probe)
            (self.mount_point / "probe").unlink()

    def free(self) -> None:
        """Let store writes succeed again."""
        if self.mount_point is None:
            self.fault_file.unlink()
        else:
            (self.mount_point / "filler").unlink()


@pytest.fixture(params=["tmpfs", "fault-injection"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Disk]:
    """The worker's disk: a small tmpfs, or the fault injection standing in for one."""
    fault_file = tmp_path / "disk-is-full"
    if request.param == "fault-injection":
        yield Disk(tmp_path / "worker", None, fault_file, {FAULT_DISK_FULL_ENV: str(fault_file)})
        return
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the fault-injection variant runs")
    try:
        yield Disk(mount_point / "worker", mount_point, fault_file)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


async def _health(worker: WorkerProcess) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{worker.api_url}/health") as response:
        return response.status, await response.json()


async def _healthy_gauge(worker: WorkerProcess) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{worker.api_url}/metrics") as response:
        text = await response.text()
    line = next(line for line in text.splitlines() if line.startswith("orchestrator_healthy "))
    return float(line.split()[1])


async def _until(
    what: str, probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout_s: float
) -> T:
    """Poll ``probe`` until ``done`` says so; fail naming ``what`` and the last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        last = await probe()
        if done(last):
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout_s:.0f} s; last: {last!r}")
        await asyncio.sleep(0.2)


async def _status(tm: TaskManager, task_id: str) -> str:
    try:
        return str((await tm.get_task_status(task_id))["status"])
    except InfrastructureError as exc:  # the worker reopens its partitions: ask again
        return f"unavailable: {exc}"


def _log_lines(worker: WorkerProcess, start: int, *phrases: str) -> list[str]:
    text = worker.log_file.read_text(encoding="utf-8", errors="replace")[start:]
    return [line for line in text.splitlines() if all(p in line for p in phrases)]


async def test_a_worker_whose_disk_fills_up_stops_says_why_and_resumes_by_itself(
    cluster: Cluster, bootstrap_servers: str, disk: Disk, tmp_path: Path
) -> None:
    worker = start_worker(
        bootstrap_servers,
        disk.data_dir,
        free_port(),
        {
            "app_id": cluster.app_id,
            "topic_prefix": cluster.topic_prefix,
            "partitions": str(PARTITIONS),
            "commit_interval": "0.1",
            "handlers": HANDLERS,
            "health_stall_s": str(STALL_S),
        },
        log_file=tmp_path / "worker.log",  # off the full disk
        extra_env={"PYTHONPATH": str(REPO_ROOT), **disk.env},
    )
    cluster.workers.append(worker)
    try:
        worker.wait_ready()
        name = platform("disk")
        config = {
            "bootstrap_servers": bootstrap_servers,
            "api_url": worker.api_url,
            "partitions": PARTITIONS,
            "topic_prefix": cluster.topic_prefix,
            "read_timeout": 10.0,
        }
        async with TaskManager(config) as tm, SmartScheduler(config) as scheduler:
            before = [await tm.create_task("noop", name, f"before-{i}") for i in range(TASKS)]
            for task_id in before:
                await _until(
                    f"{task_id} completed", lambda t=task_id: _status(tm, t), "completed".__eq__, 60
                )
            status, body = await _until(
                "healthy", lambda: _health(worker), lambda a: a[0] == 200, 30
            )
            assert body["status"] == "healthy" and body["reasons"] == []
            assert await _healthy_gauge(worker) == 1.0

            log_start = worker.log_file.stat().st_size
            disk.fill()
            during = [
                # no worker can confirm a write while its disk refuses writes: not asked
                await tm.create_task("noop", name, f"during-{i}", confirm=False)
                for i in range(TASKS_DURING)
            ]

            async def health_while_the_scheduler_has_work() -> tuple[int, dict[str, Any]]:
                for _ in range(SIGNALS):
                    await scheduler.resume_platform(name)
                return await _health(worker)

            # both stores refuse writes: /health says so, naming each store
            def both_stores_named(answer: tuple[int, dict[str, Any]]) -> bool:
                reasons = answer[1].get("reasons", [])
                return all(
                    any(r.startswith(f"store write failed ({store})") for r in reasons)
                    for store in ("tasks table", "scheduler store")
                )

            status, body = await _until(
                "503 naming both stores", health_while_the_scheduler_has_work, both_stores_named, 30
            )
            assert status == 503 and body["status"] == "unhealthy"
            assert all("No space left on device" in r for r in body["reasons"] if "store" in r)
            assert await _healthy_gauge(worker) == 0.0
            # the fold's partitions stay closed: after STALL_S that is a reason of its own
            status, body = await _until(
                "503 naming the fold's stalled partitions",
                lambda: _health(worker),
                lambda a: any(
                    r.startswith("fold has not opened partition") for r in a[1]["reasons"]
                ),
                STALL_S + 30,
            )
            # one line each says why (no traceback storm, no crash loop)
            scheduler_says = _log_lines(worker, log_start, "scheduler: its store refused")
            fold_says = _log_lines(worker, log_start, "the task database refused a write")
            assert len(scheduler_says) == 1, scheduler_says
            assert "No space left on device" in scheduler_says[0]
            assert len(fold_says) == 1, fold_says
            assert "No space left on device" in fold_says[0]
            assert _log_lines(worker, log_start, "Crashed reason=") == []

            disk.free()
            status, body = await _until(
                "healthy again", lambda: _health(worker), lambda a: a[0] == 200, 60
            )
            assert body["status"] == "healthy"
            assert await _healthy_gauge(worker) == 1.0
            # everything written during the outage is folded, scheduled and run, by the same process
            for task_id in during:
                await _until(
                    f"{task_id} completed", lambda t=task_id: _status(tm, t), "completed".__eq__, 60
                )
            for task_id in before:
                assert await _status(tm, task_id) == "completed"
        assert worker.process.poll() is None, "the worker restarted or died"
        assert len(_log_lines(worker, 0, "[^Worker]: Ready")) == 1
        assert len(_log_lines(worker, log_start, "scheduler: the store takes writes again")) == 1
        # a clean stop too, after the outage
        assert worker.stop() == 0, worker.log_tail()
    finally:
        worker.stop()  # before the tmpfs is unmounted
