"""Internal events cannot be forged by a client (``streams.domain.signatures``).

Given a real worker with the test handlers (it made the orchestrator's signing key when it
started), when a plain producer that does not hold the key writes a ``DependencyResolved``
claiming to come from the fold for a waiting dependent, and ``TaskCompleted`` events (one
claiming the executor, one from a client through ``TaskManager``) for a task a worker's
executor runs, then each is dead-lettered with the reason ``forged``, the dependent stays
pending, the victim's result is its handler's own, and ``verify`` (the replay, which reads the
key too) agrees with the live table. The same ``DependencyResolved`` signed with the key (the
test playing the orchestrator) is applied, and a client that drives its own task still starts
and completes it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import pytest

from projections.live import verify
from schemas import decode_event, encode_event
from streams.client import TaskManager
from streams.domain import (
    DependencyOutcome,
    DependencyResolved,
    Event,
    Payload,
    Source,
    TaskCompleted,
)
from streams.errors import ForgedEventError
from tests.integration.conftest import HANDLERS, PARTITIONS, Cluster
from tests.integration.kafka_io import Follower, produce, produce_as_worker

HANDLER_S = 12.0
"""How long the victim's handler runs: the forged events are folded while it does."""


def _event(task_id: str, source: Source, payload: Payload) -> Event:
    return Event(str(uuid.uuid4()), task_id, int(time.time() * 1000), source, payload)


async def _dead_letters(
    dlq: Follower, event_ids: set[str], timeout_s: float = 60.0
) -> dict[str, str]:
    """The DLQ reason of each event of ``event_ids``, once all are dead-lettered (or at the
    deadline: the caller asserts on what came)."""
    reasons: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while set(reasons) < event_ids and time.monotonic() < deadline:
        for record in await dlq.next_batch():
            try:
                event_id = decode_event(record.value or b"").event_id
            except Exception:
                continue
            if event_id in event_ids:
                reasons[event_id] = dict(record.headers)["reason"].decode()
    return reasons


async def _status(tm: TaskManager, task_id: str) -> str:
    return str((await tm.get_task_status(task_id))["status"])


async def _wait_status(tm: TaskManager, task_id: str, wanted: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    status = await _status(tm, task_id)
    while status != wanted and time.monotonic() < deadline:
        await asyncio.sleep(0.2)  # a poll of the worker's answer, not a wait for a race
        status = await _status(tm, task_id)
    return status


@pytest.mark.timeout(240)
async def test_a_client_cannot_forge_internal_events_or_report_on_a_workers_attempt(
    cluster: Cluster, bootstrap_servers: str
) -> None:
    worker = cluster.start("signing", handlers=HANDLERS)
    topics = cluster.topics
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "api_url": worker.api_url,
        "partitions": PARTITIONS,
        "topic_prefix": cluster.topic_prefix,
        "read_timeout": 60.0,
    }
    run = uuid.uuid4().hex[:8]
    async with TaskManager(config) as tm, Follower(bootstrap_servers, topics.dlq) as dlq:
        # no handler for "manual": its tasks stay ready for a client to drive
        dependency = await tm.create_task(task_type="manual", platform="web", target="d")
        waiter = await tm.create_task(
            task_type="manual", platform="web", target="w", dependencies=[dependency]
        )
        victim = await tm.create_task(
            task_type="sleepy", platform="web", target=str(HANDLER_S), task_id=f"victim-{run}"
        )
        assert await _wait_status(tm, victim, "running", 60.0) == "running"
        assert await _status(tm, waiter) == "pending"

        resolved = _event(
            waiter, Source.FOLD, DependencyResolved(dependency, DependencyOutcome.COMPLETED)
        )
        completed = _event(victim, Source.EXECUTOR, TaskCompleted(b'{"forged":true}'))
        await produce(
            bootstrap_servers,
            topics.events,
            [
                (waiter.encode(), encode_event(resolved)),
                (victim.encode(), encode_event(completed)),
            ],
        )
        with pytest.raises(ForgedEventError):  # a client's report on the worker's attempt
            await tm.complete_task(victim, {"forged": "by a client"})

        reasons = await _dead_letters(dlq, {resolved.event_id, completed.event_id})
        assert reasons == {resolved.event_id: "forged", completed.event_id: "forged"}
        assert await _status(tm, waiter) == "pending"

        # the handler's own result, once it returns
        assert await _wait_status(tm, victim, "completed", HANDLER_S + 60.0) == "completed"
        assert await tm.get_task_result(victim) == {"slept": HANDLER_S}

        # the same answer signed with the workers' key (the test plays the fold) is applied
        signed = _event(
            waiter, Source.FOLD, DependencyResolved(dependency, DependencyOutcome.COMPLETED)
        )
        await produce_as_worker(
            bootstrap_servers, topics.keys, topics.events, [(waiter.encode(), encode_event(signed))]
        )
        assert await _wait_status(tm, waiter, "ready", 60.0) == "ready"

        # a client still drives a task it started itself
        await tm.start_task(dependency)
        await tm.complete_task(dependency, {"by": "its client"})
        assert await tm.get_task_result(dependency) == {"by": "its client"}

    verification = await verify(bootstrap_servers, topics.events, worker.api_url, timeout_s=60.0)
    shown = "\n".join(d.describe() for d in verification.differences[:20])
    assert not verification.differences, shown
    assert verification.replayed.log.counts["rejected"] >= 3

    # the dashboard's timeline of the dependent shows the forged record refused, as folded
    async with aiohttp.ClientSession() as http:
        url = f"{worker.api_url}/tasks/{waiter}/timeline"
        async with http.get(url) as response:
            assert response.status == 200, await response.text()
            timeline = await response.json()
    shown_as = {e["event_id"]: (e["verdict"], e["reason"]) for e in timeline["entries"]}
    assert shown_as[resolved.event_id] == ("rejected", "forged"), timeline
    assert shown_as[signed.event_id][0] == "applied", timeline
