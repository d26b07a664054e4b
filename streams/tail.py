"""``orchestrator tail TOPIC``: print a topic's records decoded, readable or as JSON lines."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from schemas.records import (
    decode_completed,
    decode_dispatch,
    decode_event,
    decode_rate_change,
    decode_ready,
    decode_signal,
)
from streams.config import Settings
from streams.errors import ConfigurationError, SchemaError


def _decoders(settings: Settings) -> dict[str, Callable[[bytes], Any]]:
    names = settings.topics
    return {
        names.events: decode_event,
        names.ready: decode_ready,
        names.dispatch: decode_dispatch,
        names.completed: decode_completed,
        names.signals: decode_signal,
        names.scheduler_events: decode_rate_change,
        names.dlq: lambda data: data,
    }


async def tail(
    settings: Settings, topic: str, from_beginning: bool, limit: int | None, as_json: bool
) -> int:
    """Print records of ``topic`` until interrupted or ``limit`` records; return the exit status."""
    decoders = _decoders(settings)
    if topic not in decoders:
        raise ConfigurationError(f"unknown topic {topic!r}: one of {', '.join(sorted(decoders))}")
    decode = decoders[topic]
    consumer = settings.kafka.consumer(
        topic,
        auto_offset_reset="earliest" if from_beginning else "latest",
        isolation_level="read_committed",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    printed = 0
    try:
        async for record in consumer:
            try:
                value: Any = decode(record.value or b"")
            except SchemaError as exc:
                value = {"undecodable": str(exc)}
            headers = {k: v.decode("utf-8", "replace") for k, v in record.headers}
            line = _line(
                record.partition,
                record.offset,
                record.timestamp,
                record.key,
                value,
                headers,
                as_json,
            )
            print(line, flush=True)
            printed += 1
            if limit is not None and printed >= limit:
                break
    finally:
        await consumer.stop()
    return 0


def _line(
    partition: int,
    offset: int,
    timestamp_ms: int,
    key: bytes | None,
    value: Any,
    headers: dict[str, str],
    as_json: bool,
) -> str:
    body = _plain(value)
    if as_json:
        document = {
            "partition": partition,
            "offset": offset,
            "timestamp_ms": timestamp_ms,
            "key": (key or b"").decode("utf-8", "replace"),
            "value": body,
        }
        if headers:
            document["headers"] = headers
        return json.dumps(document, sort_keys=True)
    when = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC).strftime("%H:%M:%S.%f")[:-3]
    kind = type(value).__name__ if dataclasses.is_dataclass(value) else "bytes"
    if isinstance(value, bytes):
        summary = f"{len(value)} bytes"
    elif isinstance(body, dict) and "payload" in body:
        summary = f"{body.get('kind')} {json.dumps(body['payload'], sort_keys=True)}"
    else:
        summary = json.dumps(body, sort_keys=True)
    extra = f" {headers}" if headers else ""
    text_key = (key or b"").decode("utf-8", "replace")
    return f"{when} {partition}:{offset} {text_key} {kind} {summary}{extra}"


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if "payload" in fields:
            fields["kind"] = type(value.payload).__name__  # type: ignore[attr-defined]
        return fields
    if isinstance(value, bytes):
        try:
            return json.loads(value)
        except ValueError:
            return base64.b64encode(value).decode("ascii")
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value
