"""The Avro codec: round trips, the single-object header, and schema evolution both ways."""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

import pytest

from schemas import (
    SingleObjectCodec,
    decode_completed,
    decode_event,
    decode_ready,
    encode_completed,
    encode_event,
    encode_ready,
    load_schema,
    schema_fingerprint,
)
from schemas.codec import load_history
from schemas.records import event_to_record, record_to_event
from streams.domain import (
    CompletedTask,
    DependencyOutcome,
    DependencyRegistered,
    DependencyResolved,
    DependencyWaitExpired,
    Event,
    ReadyToSchedule,
    Source,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskDeferred,
    TaskDispatched,
    TaskFailed,
    TaskProgress,
    TaskRetryDue,
    TaskRetryRequested,
    TaskRetryScheduled,
    TaskStarted,
    TaskTimedOut,
)
from streams.errors import SchemaError, UnknownSchemaError

AT = 1_700_000_000_123

EVERY_PAYLOAD = [
    TaskCreated(
        "profile_scrape",
        "linkedin",
        "in/ada",
        1,
        ("a", "b"),
        60_000,
        4,
        5_000,
        86_400_000,
        3_600_000,
    ),
    TaskDispatched(),
    TaskStarted(),
    TaskProgress(0.25),
    TaskCompleted(b'{"followers": 3}', "application/json"),
    TaskFailed("HTTP 500", retryable=False),
    TaskCancelled("by user"),
    TaskTimedOut(2),
    TaskRetryScheduled(1, 5_400, AT + 5_400),
    TaskRetryDue(1),
    DependencyRegistered("dependent", ("dependent", "upstream"), 60_000),
    DependencyResolved("dependency", DependencyOutcome.MISSING),
    DependencyWaitExpired(),
    TaskDeferred("rate_limit", "5 calls per 1 s used", AT + 200),
    TaskFailed("HTTP 429", retryable=True, throttled_ms=30_000),
    TaskFailed("interrupted: worker stopping", retryable=True, interrupted=True),
    TaskCreated("profile_scrape", "linkedin", "in/ada", 1, (), 60_000, 4, 5_000, 0, 1, 250),
    TaskRetryRequested(),
]


@pytest.mark.parametrize("payload", EVERY_PAYLOAD, ids=lambda p: type(p).__name__)
def test_every_event_type_round_trips(payload: Any) -> None:
    event = Event("e-1", "t-1", AT, Source.FOLD, payload)
    assert decode_event(encode_event(event)) == event


def test_messages_carry_the_single_object_header_with_the_writer_fingerprint() -> None:
    data = encode_event(Event("e", "t", AT, Source.CLIENT, TaskStarted()))
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == schema_fingerprint(load_schema("task_event"))


def test_ready_and_completed_records_round_trip() -> None:
    ready = ReadyToSchedule("r-1", "t-1", "twitter", "scrape", 3, 2, AT)
    completed = CompletedTask(
        "t-1", "scrape", "twitter", "@ada", 2, AT - 5, AT, b"\x00\x01", "application/octet-stream"
    )
    assert decode_ready(encode_ready(ready)) == ready
    assert decode_completed(encode_completed(completed)) == completed


def _v2_schema() -> dict[str, Any]:
    """task_event.avsc plus a field with a default on TaskCreated, as a later version would add."""
    schema = copy.deepcopy(load_schema("task_event"))
    payload = next(f for f in schema["fields"] if f["name"] == "payload")
    created = next(branch for branch in payload["type"] if branch["name"] == "TaskCreated")
    created["fields"].append(
        {"name": "labels", "type": {"type": "array", "items": "string"}, "default": []}
    )
    return schema


def test_a_newer_reader_decodes_messages_of_the_older_writer() -> None:
    v1, v2 = load_schema("task_event"), _v2_schema()
    event = Event("e", "t", AT, Source.CLIENT, EVERY_PAYLOAD[0])
    old_message = SingleObjectCodec(v1).encode(event_to_record(event))

    decoded = SingleObjectCodec(v2, known_writers=[v1]).decode(old_message)

    assert decoded["payload"][1]["labels"] == []
    assert decoded["payload"][1]["target"] == "in/ada"


def test_an_older_reader_decodes_messages_of_a_newer_writer_that_it_knows() -> None:
    v1, v2 = load_schema("task_event"), _v2_schema()
    event = Event("e", "t", AT, Source.CLIENT, EVERY_PAYLOAD[0])
    record = event_to_record(event)
    record["payload"] = (record["payload"][0], {**record["payload"][1], "labels": ["vip"]})
    new_message = SingleObjectCodec(v2).encode(record)

    decoded = SingleObjectCodec(v1, known_writers=[v2]).decode(new_message)

    assert "labels" not in decoded["payload"][1]
    assert record_to_event(decoded) == event


def test_a_message_of_an_unknown_writer_schema_is_refused_as_unknown() -> None:
    new_message = SingleObjectCodec(_v2_schema()).encode(
        event_to_record(Event("e", "t", AT, Source.CLIENT, EVERY_PAYLOAD[0]))
    )
    with pytest.raises(UnknownSchemaError, match="unknown writer schema"):
        decode_event(new_message)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc3",
        b"plain text",
        b"\xc3\x01" + b"\x00" * 8,
        encode_event(Event("e", "t", AT, Source.CLIENT, TaskStarted()))[:-3],
    ],
    ids=["empty", "half-magic", "no-magic", "unknown-fingerprint", "truncated-body"],
)
def test_garbage_is_a_schema_error(data: bytes) -> None:
    with pytest.raises(SchemaError):
        decode_event(data)


def test_trailing_bytes_after_the_body_are_refused() -> None:
    data = encode_event(Event("e", "t", AT, Source.CLIENT, TaskStarted())) + b"\x00"
    with pytest.raises(SchemaError, match="trailing"):
        decode_event(data)


def test_an_unknown_dependency_outcome_is_a_schema_error() -> None:
    record = event_to_record(
        Event("e", "t", AT, Source.FOLD, DependencyResolved("d", DependencyOutcome.FAILED))
    )
    record["payload"] = (record["payload"][0], {"dependency_id": "d", "outcome": "exploded"})
    with pytest.raises(SchemaError, match="invalid DependencyResolved"):
        record_to_event(record)


# -- published history: messages written with an earlier schema stay readable -----------------


def _history(version: int) -> dict[str, Any]:
    """``schemas/history/task_event.v<version>.avsc``."""
    folder = resources.files("schemas").joinpath("history")
    text = folder.joinpath(f"task_event.v{version}.avsc").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def test_the_codec_knows_versions_1_and_2_and_neither_is_the_current_schema() -> None:
    history = [schema_fingerprint(s) for s in load_history("task_event")]
    assert history[:2] == [schema_fingerprint(_history(1)), schema_fingerprint(_history(2))]
    assert schema_fingerprint(load_schema("task_event")) not in history


def test_a_v2_task_created_decodes_with_the_default_rate_limited_bound() -> None:
    """v2 is the schema before ``max_rate_limited`` and ``interrupted`` were added."""
    event = Event("e", "t", AT, Source.CLIENT, EVERY_PAYLOAD[0])
    record = event_to_record(event)
    record["payload"][1].pop("max_rate_limited")
    v2_message = SingleObjectCodec(_history(2)).encode(record)
    assert v2_message[2:10] == schema_fingerprint(_history(2))

    decoded = decode_event(v2_message)

    assert isinstance(decoded.payload, TaskCreated)
    assert decoded.payload.max_rate_limited == 10
    assert decoded == event  # EVERY_PAYLOAD[0] has the default bound


def test_a_v2_task_failed_decodes_as_not_interrupted_and_keeps_its_throttling() -> None:
    event = Event("e", "t", AT, Source.EXECUTOR, TaskFailed("HTTP 429", True, 30_000))
    record = event_to_record(event)
    record["payload"][1].pop("interrupted")

    decoded = decode_event(SingleObjectCodec(_history(2)).encode(record))

    assert decoded == event
    assert isinstance(decoded.payload, TaskFailed) and decoded.payload.interrupted is False


NEW_IN_VERSION_4 = {
    "TaskResultExpired",
    "TaskRetired",
    "TaskRetryRequested",
    "TaskDelayElapsed",
    "PeriodicScheduled",
    "PeriodicCancelled",
    "PeriodicOccurrenceDue",
}
"""The event kinds version 4 of ``task_event`` added to version 3."""


def test_the_codec_knows_version_3_the_schema_before_version_4s_kinds() -> None:
    history = [schema_fingerprint(s) for s in load_history("task_event")]
    assert history == [schema_fingerprint(_history(v)) for v in (1, 2, 3)]
    branches = {b["name"] for b in _payload_branches(_history(3))}
    assert not branches & NEW_IN_VERSION_4
    current = {b["name"] for b in _payload_branches(load_schema("task_event"))}
    assert current == branches | NEW_IN_VERSION_4


def _payload_branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    payload = next(f for f in schema["fields"] if f["name"] == "payload")
    branches: list[dict[str, Any]] = payload["type"]
    return branches


def test_an_older_reader_refuses_a_retry_request_as_an_unknown_schema() -> None:
    """A v3 worker cannot read the new event kind: it dead-letters it (unknown schema), it
    does not crash; upgrade the workers before the clients that retry by hand."""
    message = encode_event(Event("e", "t", AT, Source.CLIENT, TaskRetryRequested()))
    with pytest.raises(UnknownSchemaError):
        SingleObjectCodec(_history(3)).decode(message)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_messages_of_every_published_version_decode(version: int) -> None:
    for payload in (EVERY_PAYLOAD[0], TaskFailed("HTTP 500", retryable=False), TaskStarted()):
        event = Event("e", "t", AT, Source.CLIENT, payload)
        message = SingleObjectCodec(_history(version)).encode(event_to_record(event))
        assert decode_event(message) == event
