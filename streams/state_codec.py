"""The bytes of a task's state in the ``tasks`` table (RocksDB) and its changelog.

The fold encodes every changed state once per commit and decodes a stored one for nearly every
event it folds, so this codec is on the worker's hot path. The pure core's canonical JSON
(:func:`~streams.domain.state_to_json`) stays the form for humans, tests and replays; what is
stored is versioned:

- ``b"\\x01"`` followed by the state as MessagePack (msgspec, the dataclass as a map of its
  fields): the format written today;
- ``b"{"...``: the canonical JSON written before (version 0), still read, so a table or a
  changelog written by an older worker restores.

The first byte of a versioned record is a control character, which no JSON text starts with.
As with the JSON form, a map key this worker does not know is ignored and a missing one takes
its field's default, so workers whose ``TaskState`` differs by a field read each other's states.
A worker older than this module reads JSON only: it cannot restore a partition whose table a
newer one wrote, so a cluster is upgraded whole, not worker by worker, and not rolled back.

Measured on the development machine (``timeit``, Python 3.11, msgspec 0.22.0, a shared
2-core machine: ranges over runs), encode / decode in µs. A typical completed task (1.2 kB):
canonical JSON 17-19 / 32-57, this format 2-3 / 4-7. The largest state the bounds allow
(``tests/unit/test_bounds.py``, 1.43 MB as JSON, 1.19 MB here): 5,400-9,800 / 3,800-4,800
against 110-200 / 280-310. msgspec's JSON, the other candidate, was as fast on the typical
state, but 5-10x slower and 18% larger on the largest one (its strings need escaping, its
bytes base64).
"""

from __future__ import annotations

import msgspec

from streams.domain import TaskState, state_from_json, state_to_json

MSGPACK_V1 = 0x01
"""First byte of a state stored as MessagePack (the format :func:`encode_state` writes)."""

_JSON_V0 = ord("{")
"""First byte of a state stored as canonical JSON (``state_to_json``), before versions."""

_PREFIX = bytes([MSGPACK_V1])
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(TaskState)


def encode_state(state: TaskState) -> bytes:
    """``state`` as stored: the version byte, then its MessagePack.

    A state MessagePack cannot hold (a string with a lone surrogate, an int beyond 64 bits:
    none comes out of an Avro event) is stored as canonical JSON instead, which
    :func:`decode_state` reads as well: storing a state never fails where it did not before.
    """
    try:
        return _PREFIX + _ENCODER.encode(state)
    except (UnicodeEncodeError, OverflowError):
        return state_to_json(state)


def decode_state(data: bytes) -> TaskState:
    """The state stored as ``data``, by :func:`encode_state` or as older canonical JSON.

    Raises:
        ValueError: ``data`` is empty, has a version this worker does not know (the message
            names it), or is not a valid state of its version.
    """
    if not data:
        raise ValueError("no task state: the stored value is empty")
    version = data[0]
    if version == MSGPACK_V1:
        try:
            return _DECODER.decode(memoryview(data)[1:])
        except msgspec.DecodeError as exc:
            raise ValueError(f"not a valid task state (format version 1): {exc}") from exc
    if version == _JSON_V0:
        try:
            return state_from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a valid task state (JSON): {exc!r}") from exc
    raise ValueError(
        f"unknown task state format version 0x{version:02x} (this worker reads 0x01 and "
        "JSON); was it written by a newer worker?"
    )
