"""Bad input goes to task.events.dlq with its reason, and the worker keeps going."""

from __future__ import annotations

import time
import uuid

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from schemas import SingleObjectCodec, decode_ready, encode_event, load_schema
from schemas.records import event_to_record
from streams.client import TaskManager
from streams.domain import Event, Source, TaskCreated, TaskProgress, TaskStarted
from streams.process import WorkerProcess
from tests.integration.kafka_io import Follower, produce


def _event(task_id: str, payload: object, at_ms: int = 1_700_000_000_000) -> Event:
    return Event(str(uuid.uuid4()), task_id, at_ms, Source.CLIENT, payload)  # type: ignore[arg-type]


def _created(task_id: str) -> Event:
    return _event(
        task_id, TaskCreated("profile_scrape", "youtube", "c", 3, (), 60_000, 1, 0, 60_000, 60_000)
    )


def _newer_schema_with_an_unknown_event_type() -> SingleObjectCodec:
    schema = load_schema("task_event")
    payload = next(f for f in schema["fields"] if f["name"] == "payload")
    payload["type"].append(
        {"type": "record", "name": "TaskTeleported", "fields": [{"name": "to", "type": "string"}]}
    )
    return SingleObjectCodec(schema)


async def test_bad_events_are_dead_lettered_and_later_events_still_processed(
    client_config: dict[str, object], bootstrap_servers: str
) -> None:
    run = uuid.uuid4().hex[:8]
    garbage, unknown, illegal, progress, after = (f"dlq-{run}-{n}" for n in range(5))
    newer = _newer_schema_with_an_unknown_event_type()
    unknown_record = event_to_record(_created(unknown)) | {
        "payload": ("discovery.orchestrator.TaskTeleported", {"to": "mars"})
    }
    bad = {
        garbage: b"\x00\xffnot avro at all",
        unknown: newer.encode(unknown_record),
        illegal: encode_event(
            _event(illegal, TaskProgress(0.5))
        ),  # progress for a task that is only ready
        progress: encode_event(_event(progress, TaskProgress(1.5))),  # out of range, task running
    }
    expected_reasons = {
        garbage: "undecodable",
        unknown: "unknown_schema",
        illegal: "illegal_transition",
        progress: "progress_out_of_range",
    }
    setup = [
        (illegal.encode(), encode_event(_created(illegal))),
        (progress.encode(), encode_event(_created(progress))),
        (progress.encode(), encode_event(_event(progress, TaskStarted()))),
    ]

    async with (
        Follower(bootstrap_servers, "task.events.dlq") as dlq,
        Follower(bootstrap_servers, "task.ready") as ready,
    ):
        await produce(bootstrap_servers, "task.events", setup)
        await produce(bootstrap_servers, "task.events", [(k.encode(), v) for k, v in bad.items()])
        await produce(
            bootstrap_servers, "task.events", [(after.encode(), encode_event(_created(after)))]
        )
        dead: dict[str, tuple[bytes, dict[str, bytes]]] = {}
        ready_ids: set[str] = set()
        deadline = time.monotonic() + 60
        while (len(dead) < len(bad) or after not in ready_ids) and time.monotonic() < deadline:
            for record in await dlq.next_batch():
                key = (record.key or b"").decode()
                if key in bad:
                    dead[key] = (record.value or b"", dict(record.headers))
            for record in await ready.next_batch():
                ready_ids.add(decode_ready(record.value or b"").task_id)

    assert {
        key: headers["reason"].decode() for key, (_, headers) in dead.items()
    } == expected_reasons
    assert {key: value for key, (value, _) in dead.items()} == bad, "the original bytes are kept"
    assert all(headers["detail"] for _, headers in dead.values())
    assert after in ready_ids, "the event after the bad ones was processed"
    async with TaskManager(client_config) as tm:
        assert (await tm.get_task_status(progress))["progress"] == 0.0
        assert (await tm.get_task_status(illegal))["status"] == "ready"


async def test_a_refused_record_as_large_as_the_broker_allows_is_dead_lettered_whole(
    bootstrap_servers: str, worker: WorkerProcess
) -> None:
    # its DLQ copy carries reason and provenance headers on top: with the broker's default
    # record size on the DLQ it could not be written, and the fold would retry it forever
    run = uuid.uuid4().hex[:8]
    big, after = f"dlq-big-{run}", f"dlq-after-big-{run}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, max_request_size=2_000_000)
    await producer.start()
    try:
        async with (
            Follower(bootstrap_servers, "task.events.dlq") as dlq,
            Follower(bootstrap_servers, "task.ready") as ready,
        ):
            size = 1_048_588 - 80  # the broker's default message.max.bytes, less batch overhead
            while True:  # the largest garbage value task.events accepts
                value = b"\x00" + b"x" * size
                try:
                    await (await producer.send("task.events", value, key=big.encode()))
                    break
                except MessageSizeTooLargeError:
                    size -= 16
            created = encode_event(_created(after))
            await producer.send_and_wait("task.events", created, key=after.encode())
            dead: bytes | None = None
            ready_ids: set[str] = set()
            deadline = time.monotonic() + 60
            while (dead is None or after not in ready_ids) and time.monotonic() < deadline:
                for record in await dlq.next_batch():
                    if record.key == big.encode():
                        dead = record.value
                for record in await ready.next_batch():
                    ready_ids.add(decode_ready(record.value or b"").task_id)
    finally:
        await producer.stop()
    assert dead == value, "the whole record is in the DLQ"
    assert after in ready_ids, "the event after it was processed"
