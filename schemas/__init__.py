"""The published Avro schemas (``*.avsc``) and the codec; the one package that imports fastavro."""

from schemas.codec import SingleObjectCodec, load_schema, schema_fingerprint
from schemas.records import (
    completed_codec,
    decode_completed,
    decode_event,
    decode_ready,
    encode_completed,
    encode_event,
    encode_ready,
    event_codec,
    ready_codec,
)

__all__ = [
    "SingleObjectCodec",
    "completed_codec",
    "decode_completed",
    "decode_event",
    "decode_ready",
    "encode_completed",
    "encode_event",
    "encode_ready",
    "event_codec",
    "load_schema",
    "ready_codec",
    "schema_fingerprint",
]
