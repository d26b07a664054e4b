"""Conversions between the domain's types and the Avro records of each topic.

``encode_event`` / ``decode_event`` for ``task.events``, ``encode_ready`` / ``decode_ready`` for
``task.ready`` and ``encode_completed`` / ``decode_completed`` for ``task.completed``. Decoding
raises :class:`~streams.errors.SchemaError` for anything that is not a valid record, so the
caller can send the original bytes to the dead-letter topic.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from schemas.codec import SingleObjectCodec, load_history, load_schema
from streams.domain import (
    PAYLOAD_TYPES,
    CompletedTask,
    DependencyOutcome,
    Event,
    Payload,
    ReadyToSchedule,
    Source,
)
from streams.domain.config_events import ConfigChange
from streams.domain.signals import (
    SIGNAL_TYPES,
    Dispatch,
    RateChangeRecord,
    SchedulerSignal,
    SignalPayload,
)
from streams.errors import SchemaError, UnknownSchemaError

NAMESPACE = "discovery.orchestrator"
SCHEMA_VERSION = 1
_PAYLOADS_BY_NAME: dict[str, type[Payload]] = {
    f"{NAMESPACE}.{cls.__name__}": cls for cls in PAYLOAD_TYPES
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@cache
def event_codec() -> SingleObjectCodec:
    """The codec of ``task.events`` (schema ``task_event.avsc``)."""
    return SingleObjectCodec(load_schema("task_event"), load_history("task_event"))


@cache
def ready_codec() -> SingleObjectCodec:
    """The codec of ``task.ready`` (schema ``task_ready.avsc``)."""
    return SingleObjectCodec(load_schema("task_ready"), load_history("task_ready"))


@cache
def completed_codec() -> SingleObjectCodec:
    """The codec of ``task.completed`` (schema ``task_completed.avsc``)."""
    return SingleObjectCodec(load_schema("task_completed"), load_history("task_completed"))


def event_to_record(event: Event) -> dict[str, Any]:
    """The Avro record of ``event``."""
    payload = {name: _plain(value) for name, value in vars(event.payload).items()}
    return {
        "event_id": event.event_id,
        "task_id": event.task_id,
        "occurred_at": event.occurred_at_ms,
        "source": str(event.source),
        "schema_version": SCHEMA_VERSION,
        "payload": (f"{NAMESPACE}.{event.kind}", payload),
    }


def record_to_event(record: dict[str, Any]) -> Event:
    """The domain event of an Avro record (as decoded with record names).

    Raises:
        SchemaError: the payload type or a field value is unknown to this version.
    """
    name, fields = record["payload"]
    cls = _PAYLOADS_BY_NAME.get(name)
    if cls is None:
        raise UnknownSchemaError(f"unknown event type {name}")
    try:
        values = {name: fields[name] for name in _field_names(cls)}
        for key in ("dependencies", "waiting"):
            if key in values:
                values[key] = tuple(values[key])
        if "outcome" in values:
            values["outcome"] = DependencyOutcome(values["outcome"])
        payload = cls(**values)
        source = Source(record["source"])
    except (KeyError, ValueError) as exc:
        raise SchemaError(f"invalid {name.rsplit('.', 1)[-1]}: {exc}") from exc
    return Event(
        event_id=record["event_id"],
        task_id=record["task_id"],
        occurred_at_ms=_millis(record["occurred_at"]),
        source=source,
        payload=payload,
    )


def encode_event(event: Event) -> bytes:
    """``event`` as a ``task.events`` message value."""
    return event_codec().encode(event_to_record(event))


def decode_event(data: bytes) -> Event:
    """The event in a ``task.events`` message value.

    Raises:
        SchemaError: the bytes are not a valid event.
    """
    return record_to_event(event_codec().decode(data))


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a ``task.events`` record is refused before it reaches the fold.

    Attributes:
        reason: the DLQ reason (``unknown_schema``, ``undecodable`` or ``key_mismatch``).
        detail: a human-readable explanation.
        event: the decoded event, when the record decoded (a key mismatch).
    """

    reason: str
    detail: str
    event: Event | None = None


def event_of_record_exact(key: bytes | None, value: bytes) -> Event | Refusal:
    """The event a ``task.events`` record holds, or why the fold refuses the record: the
    definition (:func:`event_of_record` gives the same answer, faster).

    The one check shared by the fold agent (which dead-letters a refusal) and the offline
    replay (which marks it rejected), so the two cannot disagree on what reaches the fold.
    """
    try:
        event = decode_event(value)
    except UnknownSchemaError as exc:
        return Refusal("unknown_schema", str(exc))
    except SchemaError as exc:
        return Refusal("undecodable", str(exc))
    if key is None or key != event.task_id.encode("utf-8"):
        # the key itself is not repeated (it may be as large as the record): its size and start
        shown = "no key" if key is None else f"a key of {len(key)} bytes starting {key[:40]!r}"
        detail = f"{shown} is not the task id {event.task_id[:200]!r}"
        return Refusal("key_mismatch", detail, event)
    return event


def encode_ready(ready: ReadyToSchedule) -> bytes:
    """``ready`` as a ``task.ready`` message value."""
    record = _flat(ready)
    record["ready_at"] = record.pop("ready_at_ms")
    return ready_codec().encode(record)


def decode_ready(data: bytes) -> ReadyToSchedule:
    """The readiness in a ``task.ready`` message value."""
    record = ready_codec().decode(data)
    record["ready_at_ms"] = _millis(record.pop("ready_at"))
    return ReadyToSchedule(**record)


def encode_completed(completed: CompletedTask) -> bytes:
    """``completed`` as a ``task.completed`` message value."""
    record = _flat(completed)
    record["created_at"] = record.pop("created_at_ms")
    record["completed_at"] = record.pop("completed_at_ms")
    return completed_codec().encode(record)


def decode_completed(data: bytes) -> CompletedTask:
    """The finished task in a ``task.completed`` message value."""
    record = completed_codec().decode(data)
    record["created_at_ms"] = _millis(record.pop("created_at"))
    record["completed_at_ms"] = _millis(record.pop("completed_at"))
    return CompletedTask(**record)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """The field names of a payload class, looked up once."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _flat(record: Any) -> dict[str, Any]:
    """A flat dataclass's fields as a new dict (``dataclasses.asdict`` copies recursively, at
    several times the cost, what these records do not nest)."""
    return dict(vars(record))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, DependencyOutcome):
        return str(value)
    return value


def _millis(value: datetime | int) -> int:
    if isinstance(value, datetime):
        return (value - _EPOCH) // _MILLISECOND
    return int(value)


_MILLISECOND = datetime.resolution * 1000


@cache
def dispatch_codec() -> SingleObjectCodec:
    """The codec of ``task.dispatch`` (schema ``task_dispatch.avsc``)."""
    return SingleObjectCodec(load_schema("task_dispatch"), load_history("task_dispatch"))


@cache
def signal_codec() -> SingleObjectCodec:
    """The codec of ``scheduler.signals`` (schema ``scheduler_signal.avsc``)."""
    return SingleObjectCodec(load_schema("scheduler_signal"), load_history("scheduler_signal"))


@cache
def rate_change_codec() -> SingleObjectCodec:
    """The codec of ``scheduler.events`` (schema ``platform_event.avsc``)."""
    return SingleObjectCodec(load_schema("platform_event"), load_history("platform_event"))


_SIGNALS_BY_NAME: dict[str, type[SignalPayload]] = {
    f"{NAMESPACE}.{cls.__name__}": cls for cls in SIGNAL_TYPES
}


def encode_dispatch(dispatch: Dispatch) -> bytes:
    """``dispatch`` as a ``task.dispatch`` message value."""
    record = _flat(dispatch)
    for name in ("dispatched_at", "not_before", "not_after"):
        record[name] = record.pop(f"{name}_ms")
    return dispatch_codec().encode(record)


def decode_dispatch(data: bytes) -> Dispatch:
    """The go-ahead in a ``task.dispatch`` message value."""
    record = dispatch_codec().decode(data)
    for name in ("dispatched_at", "not_before", "not_after"):
        record[f"{name}_ms"] = _millis(record.pop(name))
    return Dispatch(**record)


def encode_signal(signal: SchedulerSignal) -> bytes:
    """``signal`` as a ``scheduler.signals`` message value."""
    payload = _flat(signal.payload)
    name = f"{NAMESPACE}.{type(signal.payload).__name__}"
    return signal_codec().encode(
        {"platform": signal.platform, "at": signal.at_ms, "payload": (name, payload)}
    )


def decode_signal(data: bytes) -> SchedulerSignal:
    """The signal in a ``scheduler.signals`` message value."""
    record = signal_codec().decode(data)
    name, fields = record["payload"]
    cls = _SIGNALS_BY_NAME.get(name)
    if cls is None:
        raise UnknownSchemaError(f"unknown signal type {name}")
    return SchedulerSignal(record["platform"], _millis(record["at"]), cls(**fields))


def encode_rate_change(change: RateChangeRecord) -> bytes:
    """``change`` as a ``scheduler.events`` message value."""
    record = _flat(change)
    record["at"] = record.pop("at_ms")
    return rate_change_codec().encode(record)


def decode_rate_change(data: bytes) -> RateChangeRecord:
    """The rate change in a ``scheduler.events`` message value."""
    record = rate_change_codec().decode(data)
    record["at_ms"] = _millis(record.pop("at"))
    return RateChangeRecord(**record)


@cache
def config_codec() -> SingleObjectCodec:
    """The codec of ``orchestrator.config`` (schema ``config_event.avsc``)."""
    return SingleObjectCodec(load_schema("config_event"), load_history("config_event"))


def encode_config(change: ConfigChange) -> bytes:
    """``change`` as an ``orchestrator.config`` message value."""
    value_json = None if change.value is None else json.dumps(change.value, sort_keys=True)
    return config_codec().encode(
        {
            "name": change.name,
            "platform": change.platform,
            "task_type": change.task_type,
            "value_json": value_json,
            "at": change.at_ms,
            "by": change.by,
        }
    )


def decode_config(data: bytes) -> ConfigChange:
    """The change in an ``orchestrator.config`` message value.

    Raises:
        SchemaError: not such a message, or a value that is not JSON.
    """
    record = config_codec().decode(data)
    raw = record["value_json"]
    try:
        value = None if raw is None else json.loads(raw)
    except ValueError as exc:
        raise SchemaError(f"the value of setting {record['name']} is not JSON: {exc}") from exc
    return ConfigChange(
        record["name"],
        record["platform"],
        record["task_type"],
        value,
        _millis(record["at"]),
        record["by"],
    )


# -- decoding --------------------------------------------------------------------------------
#
# ``event_of_record_exact`` is the definition; ``event_of_record`` gives the same answer, faster for
# records written with the current schema, which is nearly every record of a log. What it
# skips: fastavro's ``timestamp-millis`` conversion of ``occurred_at`` to a datetime (and back
# to milliseconds in ``schemas.records``), the enum constructors and the copy of the payload's
# fields. Anything unusual (another writer schema, a record that does not decode, a value out
# of the plain path's range, a key that is not the task id) is handed to ``event_of_record``
# itself, so refusals keep their reasons and details word for word. The fold agent and the
# replay both decode with ``event_of_record``.

_SAFE_MS = range(0, 253_402_300_800_000)
"""``occurred_at`` values the plain path takes: 1970 to 9999, where fastavro's datetime and
``schemas.records``' conversion back give the same milliseconds (outside: the exact path)."""


@dataclass(frozen=True)
class _Payload:
    """How to build one payload type from its decoded fields."""

    cls: type
    names: tuple[str, ...]
    direct: bool
    """The schema's fields are the dataclass's: the decoded dict is passed as it is."""
    sequences: tuple[str, ...]
    """Fields decoded as lists that the dataclass holds as tuples."""
    outcome: bool
    """Has ``outcome``, a :class:`DependencyOutcome`."""


@dataclass(frozen=True)
class _PlainDecoder:
    codec: SingleObjectCodec
    payloads: dict[str, _Payload]


_SOURCES = {str(source): source for source in Source}
_OUTCOMES = {str(outcome): outcome for outcome in DependencyOutcome}


def _plain_schema(schema: Any) -> Any:
    """``schema`` without logical types: the same bytes, read as plain Avro types."""
    if isinstance(schema, dict):
        return {k: _plain_schema(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_plain_schema(item) for item in schema]
    return schema


@cache
def _plain_decoder() -> _PlainDecoder | None:
    """The codec of the current ``task.events`` schema read without logical types, and how to
    build each payload; None if it would not read exactly the records ``event_codec`` reads
    with that schema (then every record takes the exact path)."""
    schema = load_schema("task_event")
    codec = SingleObjectCodec(_plain_schema(schema))
    if codec.fingerprint != event_codec().fingerprint:
        return None  # the fingerprint would then depend on logical types: keep to the exact path
    fields_of = {
        f"{NAMESPACE}.{branch['name']}": tuple(f["name"] for f in branch["fields"])
        for field_ in schema["fields"]
        if field_["name"] == "payload"
        for branch in field_["type"]
    }
    payloads = {}
    for cls in PAYLOAD_TYPES:
        name = f"{NAMESPACE}.{cls.__name__}"
        schema_names = fields_of.get(name)
        if schema_names is None:
            continue
        names = _field_names(cls)
        if not set(names) <= set(schema_names):
            continue  # a field the schema lacks: the exact path says why it is refused
        payloads[name] = _Payload(
            cls=cls,
            names=names,
            direct=set(names) == set(schema_names),
            sequences=tuple(n for n in names if n in ("dependencies", "waiting")),
            outcome="outcome" in names,
        )
    return _PlainDecoder(codec, payloads)


def event_of_record(key: bytes | None, value: bytes) -> Event | Refusal:
    """The event a ``task.events`` record holds, or why the fold refuses the record: what
    :func:`event_of_record_exact` gives, the same in every case, faster for the records written
    with the current schema."""
    plain = _plain_decoder()
    if plain is None:
        return event_of_record_exact(key, value)
    try:
        event = _event_of(plain.codec.decode(value), plain.payloads)
    except Exception:  # whatever it is, the exact path gives the answer (or raises it)
        event = None
    if event is None or key is None or key != event.task_id.encode("utf-8"):
        return event_of_record_exact(key, value)
    return event


def _event_of(record: dict[str, Any], payloads: dict[str, _Payload]) -> Event | None:
    """The event of a record decoded without logical types; None where ``record_to_event``
    might answer otherwise than the plain path (the caller then asks it)."""
    name, values = record["payload"]
    payload = payloads.get(name)
    occurred_at_ms = record["occurred_at"]
    source = _SOURCES.get(record["source"])
    if payload is None or source is None or occurred_at_ms not in _SAFE_MS:
        return None
    if not payload.direct:
        values = {n: values[n] for n in payload.names}
    for sequence in payload.sequences:
        values[sequence] = tuple(values[sequence])
    if payload.outcome:
        outcome = _OUTCOMES.get(values["outcome"])
        if outcome is None:
            return None
        values["outcome"] = outcome
    return Event(
        record["event_id"], record["task_id"], occurred_at_ms, source, payload.cls(**values)
    )
