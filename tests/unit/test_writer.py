"""The compiled Avro writer writes the bytes fastavro writes, for every schema the project has."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.writer import compile_writer

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
SCHEMAS = sorted(SCHEMA_DIR.rglob("*.avsc"))


def _values(schema: Any, namespace: str = "") -> st.SearchStrategy[Any]:
    """Values of ``schema`` (the subset of Avro the project's schemas use)."""
    if isinstance(schema, list):
        return st.one_of(*(_branch(branch, namespace) for branch in schema))
    if isinstance(schema, dict) and schema.get("type") == "record":
        space = schema.get("namespace", namespace)
        fields = {f["name"]: _values(f["type"], space) for f in schema["fields"]}
        optional = {
            f["name"]: _values(f["type"], space) for f in schema["fields"] if "default" in f
        }
        required = {name: v for name, v in fields.items() if name not in optional}
        return st.fixed_dictionaries(required, optional=optional)
    if isinstance(schema, dict) and schema.get("type") == "array":
        return st.lists(_values(schema["items"], namespace), max_size=4)
    kind = schema["type"] if isinstance(schema, dict) else schema
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "double": st.floats(allow_nan=False),
        "float": st.floats(width=32, allow_nan=False),
        "bytes": st.binary(max_size=40),
        "string": st.text(max_size=30),
    }[kind]


def _branch(branch: Any, namespace: str) -> st.SearchStrategy[Any]:
    if isinstance(branch, dict) and branch.get("type") == "record":
        name = f"{branch.get('namespace', namespace)}.{branch['name']}".lstrip(".")
        return _values(branch, namespace).map(lambda value: (name, value))
    return _values(branch, namespace)


def _fastavro(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, parse_schema(schema), record)
    return out.getvalue()


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_the_compiled_writer_writes_what_fastavro_writes(path: Path, data: st.DataObject) -> None:
    schema = json.loads(path.read_text())
    write = compile_writer(schema, b"\xc3\x01")
    assert write is not None, f"{path.name} uses a type the compiled writer does not cover"
    record = data.draw(_values(schema, schema.get("namespace", "")))
    assert write(record) == b"\xc3\x01" + _fastavro(schema, record)


@pytest.mark.parametrize(
    ("record", "error"),
    [
        ({"platform": "p", "payload": ("discovery.orchestrator.Tick", {})}, ValueError),
        ({"platform": 1, "at": 0, "payload": ("discovery.orchestrator.Tick", {})}, TypeError),
        ({"platform": "p", "at": "0", "payload": ("discovery.orchestrator.Tick", {})}, TypeError),
        (
            {"platform": "p", "at": 2**63, "payload": ("discovery.orchestrator.Tick", {})},
            OverflowError,
        ),
        (
            {"platform": "\ud800", "at": 0, "payload": ("discovery.orchestrator.Tick", {})},
            UnicodeEncodeError,
        ),
        ({"platform": "p", "at": 0, "payload": ("discovery.orchestrator.Nope", {})}, ValueError),
    ],
)
def test_a_record_that_does_not_fit_raises(record: dict[str, Any], error: type[Exception]) -> None:
    schema = json.loads((SCHEMA_DIR / "scheduler_signal.avsc").read_text())
    write = compile_writer(schema)
    assert write is not None
    with pytest.raises(error):
        write(record)


def test_a_schema_with_an_uncovered_type_is_left_to_fastavro() -> None:
    schema = {
        "type": "record",
        "name": "M",
        "fields": [{"name": "m", "type": {"type": "map", "values": "int"}}],
    }
    assert compile_writer(schema) is None
