"""Avro single-object encoding with fastavro: the one place that knows the wire format.

A message is ``0xC3 0x01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of the writer
schema's canonical form + the Avro body. A reader looks the fingerprint up among the writer
schemas it knows and resolves that writer schema against its own reader schema, so a field
added with a default never breaks an older reader or the replay of older history.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas.writer import compile_writer
from streams.errors import SchemaError, UnknownSchemaError

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8

Schema = dict[str, Any]


def load_schema(name: str) -> Schema:
    """The schema ``schemas/<name>.avsc`` shipped with the package, as a dict."""
    text = resources.files("schemas").joinpath(f"{name}.avsc").read_text(encoding="utf-8")
    return cast(Schema, json.loads(text))


def load_history(name: str) -> list[Schema]:
    """Earlier published versions of ``name`` (``schemas/history/<name>.v*.avsc``), oldest first.

    Messages written with them stay readable: every codec knows its schema's history.
    """
    folder = resources.files("schemas").joinpath("history")
    files = sorted(
        (
            f
            for f in folder.iterdir()
            if f.name.startswith(f"{name}.v") and f.name.endswith(".avsc")
        ),
        key=lambda f: int(f.name[len(name) + 2 : -len(".avsc")]),
    )
    return [cast(Schema, json.loads(f.read_text(encoding="utf-8"))) for f in files]


def schema_fingerprint(schema: Schema) -> bytes:
    """The 8-byte little-endian CRC-64-AVRO fingerprint of ``schema``'s canonical form."""
    canonical = to_parsing_canonical_form(parse_schema(schema, _write_hint=False))
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))[::-1]


class SingleObjectCodec:
    """Encodes with one schema; decodes anything written with a known writer schema.

    Args:
        schema: the reader and writer schema of this codec.
        known_writers: other schemas (older or newer versions) whose messages it must decode.
    """

    def __init__(self, schema: Schema, known_writers: Iterable[Schema] = ()) -> None:
        self._name = str(schema.get("name", "record"))
        self._schema = parse_schema(schema)
        self._fingerprint = schema_fingerprint(schema)
        self._header = MAGIC + self._fingerprint
        self._compiled = compile_writer(schema, self._header)
        self._writers: dict[bytes, Any] = {self._fingerprint: self._schema}
        for writer in known_writers:
            self._writers[schema_fingerprint(writer)] = parse_schema(writer)

    @property
    def fingerprint(self) -> bytes:
        """The fingerprint this codec writes (little-endian, as on the wire)."""
        return self._fingerprint

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """``record`` as a single-object encoded message.

        Raises:
            SchemaError: the record does not fit the schema.
        """
        if self._compiled is not None:
            try:
                return self._compiled(record)
            except Exception:
                pass
        buffer = io.BytesIO()
        buffer.write(self._header)
        try:
            schemaless_writer(buffer, self._schema, dict(record))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise SchemaError(f"record does not fit schema {self._name}: {exc}") from exc
        return buffer.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        """The record in ``data``, resolved to this codec's schema.

        Raises:
            SchemaError: not single-object encoded, an unknown writer schema, or a bad body.
        """
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise SchemaError("not an Avro single-object message (bad magic bytes)")
        writer = self._writers.get(data[2:HEADER_SIZE])
        if writer is None:
            raise UnknownSchemaError(
                f"unknown writer schema fingerprint {data[2:HEADER_SIZE].hex()}"
            )
        body = io.BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            record = schemaless_reader(
                body,
                writer,
                None if writer is self._schema else self._schema,
                return_record_name=True,
            )
        except Exception as exc:  # fastavro raises many types on corrupt input
            raise SchemaError(f"undecodable Avro body: {type(exc).__name__}: {exc}") from exc
        if body.tell() != len(data):
            raise SchemaError(f"{len(data) - body.tell()} trailing bytes after the Avro body")
        return cast(dict[str, Any], record)
