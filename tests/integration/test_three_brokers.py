"""A local three-node cluster loses its busiest broker, then the worker, mid-workload: no task is
lost or doubled.

The scenario is ``bench/three_brokers.py``'s (its docstring says each step), with 5,000 tasks:
a three-node KRaft cluster of its own (``localbroker.up(brokers=3)``, six free ports, a tmp data
dir; the session broker is not used), one real worker with ``replication_factor`` 3 and a no-op
handler, tasks created in batches through the client. The broker that leads most partitions of
``task.events`` is killed with SIGKILL at a fifth of the completions and restarted later with
``localbroker.start_node``; the worker is killed with SIGKILL at three fifths and restarted.

Checked: every project topic and changelog has 3 replicas and ``min.insync.replicas`` 2; every
task completed; for a ``read_committed`` reader ``task.completed`` holds each task exactly once
and ``task.ready`` each readiness exactly once (a task is readied again only by a retry of an
attempt the worker's kill cut short, or by a go-ahead given back, each under a new ready id:
counted, and without them every task is there once); ``orchestrator verify`` finds no
difference. ``start_lead`` keeps its default (it adapts to the commits' time); ``start_slot``
is 30 s (see the scenario's settings). The counts and the
pauses are printed (``-s``) and in every assertion's message.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bench import three_brokers

TASKS = 5_000
PARTITIONS = 4
DEADLINE_S = 150.0
"""For the workload itself, from the first batch to the last completion."""


@pytest.mark.timeout(360)
async def test_a_killed_broker_and_a_killed_worker_lose_and_double_nothing(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    report = await three_brokers.run(tmp_path, TASKS, PARTITIONS, DEADLINE_S)
    report["wall_s"] = round(time.monotonic() - started, 1)
    print(f"three brokers: {json.dumps(report)}")

    assert (report["replicas_min"], report["replicas_max"]) == (3, 3), report
    assert (report["min_insync_min"], report["min_insync_max"]) == (2, 2), report
    assert report["topics"] == 11, report  # the project's 9 topics and the 2 changelogs
    assert report["killed_node"] in (1, 2, 3), report
    for name in ("ready", "completed"):
        assert report[f"{name}_missing"] == 0, report
        assert report[f"{name}_duplicated"] == 0, report
    assert report["completed_records"] == TASKS, report
    assert report["completed_tasks_again"] == 0, report
    assert report["dlq_records"] == 0, report
    assert report["verify_exit"] == 0, report
    assert "verify: no difference" in report["verify"], report
