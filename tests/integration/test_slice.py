"""The first vertical slice: a created event written with aiokafka comes back on task.ready."""

from __future__ import annotations

import uuid

from schemas import decode_ready, encode_event
from streams.domain import Event, Source, TaskCreated
from streams.process import WorkerProcess
from tests.integration.kafka_io import produce, read_until


async def test_created_task_without_dependencies_is_published_ready(
    bootstrap_servers: str, worker: WorkerProcess
) -> None:
    task_id = f"slice-{uuid.uuid4()}"
    created = Event(
        event_id=str(uuid.uuid4()),
        task_id=task_id,
        occurred_at_ms=1_700_000_000_000,
        source=Source.CLIENT,
        payload=TaskCreated(
            "profile_scrape", "linkedin", "user-1", 2, (), 60_000, 3, 1_000, 60_000, 60_000
        ),
    )

    await produce(bootstrap_servers, "task.events", [(task_id.encode(), encode_event(created))])
    mine = await read_until(
        bootstrap_servers,
        "task.ready",
        done=lambda kept: len(kept) >= 1,
        keep=lambda record: decode_ready(record.value).task_id == task_id,
    )

    assert len(mine) == 1
    ready = decode_ready(mine[0].value)
    assert mine[0].key == b"linkedin"
    assert (ready.platform, ready.task_type, ready.priority, ready.attempt) == (
        "linkedin",
        "profile_scrape",
        2,
        1,
    )
    assert ready.ready_at_ms == created.occurred_at_ms
