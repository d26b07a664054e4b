"""Tasks of one group: each dependent is ready one hop after its dependency ends.

A workflow of three tasks ``wf-…/a`` ← ``wf-…/b`` ← ``wf-…/c`` (ids ``group/name``: one
partition). When ``a`` completes, the fold answers ``b`` and makes it ready in the same step:
``b``'s ``DependencyResolved`` (on ``task.events``) and ``b``'s ``task.ready`` record are written
in the transaction that folds ``a``'s ``TaskCompleted``, so both carry that record's partition
and offset in their provenance headers (``source.partition``, ``source.offset``), and both are
committed records (read ``read_committed``). The same holds for ``c`` when ``b`` completes.
"""

from __future__ import annotations

import time
import uuid

import pytest
from aiokafka.partitioner import murmur2

from schemas import decode_event, decode_ready, encode_event
from streams.client import TaskManager
from streams.domain import DependencyResolved, Event, Source, TaskCreated
from streams.errors import TaskNotFoundError
from tests.integration.conftest import PARTITIONS
from tests.integration.kafka_io import Follower, Record, partition_of, produce


def _source(record: Record) -> tuple[int, int]:
    headers = dict(record.headers)
    return int(headers["source.partition"]), int(headers["source.offset"])


async def test_a_group_of_three_is_ready_one_hop_after_each_dependency(
    client_config: dict[str, object], bootstrap_servers: str
) -> None:
    group = f"wf-{uuid.uuid4().hex[:8]}"
    a, b, c = f"{group}/a", f"{group}/b", f"{group}/c"
    home = partition_of(group, PARTITIONS)
    assert {partition_of(t, PARTITIONS) for t in (a, b, c)} == {home}

    async with (
        Follower(bootstrap_servers, "task.ready") as ready,
        Follower(bootstrap_servers, "task.events") as events,
        TaskManager(client_config) as tm,
    ):
        for task_id, dependencies in ((c, [b]), (b, [a]), (a, [])):
            await tm.create_task("step", "internal", task_id, dependencies, task_id=task_id)
        readies: dict[str, Record] = {}
        resolutions: dict[str, Record] = {}
        completions: dict[str, tuple[int, int]] = {}

        async def follow(until: str, resolved: bool) -> None:
            """Read both topics until ``until`` is ready (and its resolution read)."""
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (
                until in readies and (until in resolutions or not resolved)
            ):
                for record in await ready.next_batch():
                    readiness = decode_ready(record.value)
                    readies.setdefault(readiness.task_id, record)
                for record in await events.next_batch(timeout_ms=50):
                    event = decode_event(record.value)
                    if isinstance(event.payload, DependencyResolved):
                        resolutions.setdefault(event.task_id, record)
            assert until in readies, f"{until} never became ready: {sorted(readies)}"
            assert until in resolutions or not resolved, f"no DependencyResolved for {until}"

        await follow(a, resolved=False)
        for dependency, dependent in ((a, b), (b, c)):
            await tm.start_task(dependency)
            await tm.complete_task(dependency, {"done": dependency})
            completions[dependency] = tm._last_write[dependency]  # where the completion went
            await follow(dependent, resolved=True)
            resolved, readiness = resolutions[dependent], readies[dependent]
            assert resolved.partition == home  # task.ready is keyed by platform: anywhere
            # one hop: both written for the dependency's TaskCompleted record, in its fold step
            assert _source(resolved) == completions[dependency] == _source(readiness)
        await tm.start_task(c)
        await tm.complete_task(c, {"done": c})
        statuses = {t: (await tm.get_task_status(t))["status"] for t in (a, b, c)}
    assert statuses == dict.fromkeys((a, b, c), "completed")


async def test_a_grouped_task_written_where_another_partitioner_puts_it_is_dead_lettered(
    client_config: dict[str, object], bootstrap_servers: str
) -> None:
    # Kafka's default partitioner hashes the whole key: for most ids that is not the group's
    # partition, and the task's history would be split over two partitions
    task_id = f"wf-{uuid.uuid4().hex[:8]}/fetch"
    while (murmur2(task_id.encode()) & 0x7FFFFFFF) % PARTITIONS == partition_of(
        task_id, PARTITIONS
    ):
        task_id = f"wf-{uuid.uuid4().hex[:8]}/fetch"
    payload = TaskCreated("step", "internal", "x", 5, (), 60_000, 1, 0, 60_000, 60_000)
    event = Event(str(uuid.uuid4()), task_id, 1_700_000_000_000, Source.CLIENT, payload)
    async with Follower(bootstrap_servers, "task.events.dlq") as dlq:
        await produce(bootstrap_servers, "task.events", [(task_id.encode(), encode_event(event))])
        reasons: dict[str, str] = {}
        deadline = time.monotonic() + 30
        while task_id not in reasons and time.monotonic() < deadline:
            for record in await dlq.next_batch():
                headers = dict(record.headers)
                reasons[(record.key or b"").decode()] = headers["reason"].decode()
    assert reasons.get(task_id) == "wrong_partition", reasons
    async with TaskManager(client_config) as tm:
        with pytest.raises(TaskNotFoundError):
            await tm.get_task_status(task_id)
        await tm.create_task("step", "internal", "x", task_id=task_id)  # placed by its group
        assert (await tm.get_task_status(task_id))["status"] == "ready"
