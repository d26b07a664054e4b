"""``streams.state_codec``: the versioned bytes of the ``tasks`` table and its changelog."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain import Status, TaskPolicy, TaskState, Transition, bounds, state_to_json
from streams.domain.state import evolve, state_to_dict
from streams.state_codec import MSGPACK_V1, decode_state, encode_state
from tests.unit import taskflow as tf
from tests.unit.taskflow import T0
from tests.unit.test_bounds import _worst_state
from tests.unit.test_state_codec import EVERY_STATUS, STATES


def _completed_with_binary_result() -> TaskState:
    state = tf.play(
        tf.created(
            "g/t",
            timeout_ms=1_234,
            max_attempts=7,
            retry_delay_ms=99,
            result_ttl_ms=5,
            dependency_wait_ms=6,
        )
    )
    state = tf.play(tf.started("g/t", at=T0 + 1), state=state)
    return tf.play(tf.completed("g/t", bytes(range(256)), at=T0 + 2), state=state)


def _assert_same(back: TaskState, state: TaskState) -> None:
    """Equal, and of the same types where equality would not tell (enums, tuples, bytes)."""
    assert back == state
    assert state_to_dict(back) == state_to_dict(state)
    assert type(back.status) is Status
    assert all(type(t) is Transition and type(t.status) is Status for t in back.history)
    assert type(back.policy) is TaskPolicy
    assert type(back.history) is tuple
    for name in ("dependencies", "open_dependencies", "dependents", "waiting", "seen_event_ids"):
        assert type(getattr(back, name)) is tuple
    assert back.result is None or type(back.result) is bytes
    assert type(back.progress) is float


@pytest.mark.parametrize("status", EVERY_STATUS)
def test_a_state_in_every_status_survives_the_round_trip(status: Status) -> None:
    state = tf.state_in(status)
    assert state is not None
    data = encode_state(state)
    assert data[0] == MSGPACK_V1
    _assert_same(decode_state(data), state)


def test_binary_result_history_policy_and_none_fields_survive_the_round_trip() -> None:
    state = _completed_with_binary_result()
    assert state.deadline_ms is None and state.completed_at_ms is not None
    back = decode_state(encode_state(state))
    _assert_same(back, state)
    assert back.result == bytes(range(256))
    assert back.status is Status.COMPLETED
    assert back.policy == TaskPolicy(1_234, 7, 99, 5, 6)
    empty = tf.play(tf.completed("t", b""), state=tf.state_in(Status.RUNNING))
    assert decode_state(encode_state(empty)).result == b""


def test_a_decoded_state_evolves_like_any_other() -> None:
    back = decode_state(encode_state(_completed_with_binary_result()))
    changed = evolve(back, attempt=9)
    assert changed.attempt == 9 and changed.result == back.result
    assert tf.play(tf.registered("g/t", "d"), state=back).dependents == ("d",)


@settings(deadline=None, max_examples=300)
@given(state=STATES, progress=st.floats(allow_nan=False), text=st.text(max_size=20))
def test_any_state_survives_the_round_trip(state: TaskState, progress: float, text: str) -> None:
    state = evolve(state, progress=progress, held_detail=text)
    data = encode_state(state)
    assert data[0] == MSGPACK_V1
    _assert_same(decode_state(data), state)
    if math.isfinite(progress):  # the old JSON of the same state reads the same
        _assert_same(decode_state(state_to_json(state)), state)


@pytest.mark.parametrize("status", EVERY_STATUS)
def test_old_json_reads_as_the_same_state(status: Status) -> None:
    """A table or changelog written before the versioned format still restores."""
    state = tf.state_in(status)
    assert state is not None
    old = state_to_json(state)
    assert old.startswith(b"{")
    _assert_same(decode_state(old), state)
    binary = _completed_with_binary_result()
    _assert_same(decode_state(state_to_json(binary)), binary)


def test_old_json_as_stored_before_reads() -> None:
    """Bytes as an older worker wrote them, literally (fields it did not have default)."""
    old = (
        b'{"attempt":1,"completed_at_ms":1700000000002,"created_at_ms":1700000000000,'
        b'"dependencies":[],"dependents":["b"],"history":[["ready",1700000000000,"e1"],'
        b'["completed",1700000000002,"e3"]],"last_error":"","open_dependencies":[],'
        b'"platform":"p","policy":{"dependency_wait_ms":0,"max_attempts":3,"result_ttl_ms":60,'
        b'"retry_delay_ms":0,"timeout_ms":0},"priority":1,"progress":1.0,"result":"/wA=",'
        b'"result_content_type":"","seen_event_ids":["e1","e3"],"status":"completed",'
        b'"target":"x","task_id":"a","task_type":"t","updated_at_ms":1700000000002}'
    )
    state = decode_state(old)
    assert state == TaskState(
        task_id="a",
        status=Status.COMPLETED,
        task_type="t",
        platform="p",
        target="x",
        priority=1,
        dependents=("b",),
        policy=TaskPolicy(max_attempts=3, result_ttl_ms=60),
        attempt=1,
        progress=1.0,
        result=b"\xff\x00",
        created_at_ms=1_700_000_000_000,
        updated_at_ms=1_700_000_000_002,
        completed_at_ms=1_700_000_000_002,
        history=(
            Transition(Status.READY, 1_700_000_000_000, "e1"),
            Transition(Status.COMPLETED, 1_700_000_000_002, "e3"),
        ),
        seen_event_ids=("e1", "e3"),
    )
    _assert_same(decode_state(encode_state(state)), state)


def test_unknown_fields_are_ignored_and_missing_ones_default() -> None:
    """Workers one version apart read each other's states, as with the JSON form."""
    state = tf.state_in(Status.READY)
    assert state is not None
    fields = msgspec.msgpack.decode(encode_state(state)[1:])
    fields["a_field_from_the_future"] = {"x": [1, 2]}
    for name in ("held_reason", "held_detail", "held_until_ms", "waiting"):
        del fields[name]
    del fields["policy"]["max_rate_limited"]
    assert decode_state(bytes([MSGPACK_V1]) + msgspec.msgpack.encode(fields)) == state


@pytest.mark.parametrize("first", [0x00, 0x02, 0x7F, 0xFF, ord("[")])
def test_an_unknown_version_is_refused_naming_it(first: int) -> None:
    data = bytes([first]) + encode_state(TaskState("t", Status.READY))[1:]
    with pytest.raises(ValueError, match=f"unknown task state format version 0x{first:02x}"):
        decode_state(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes([MSGPACK_V1]),
        bytes([MSGPACK_V1]) + b"\xc1",
        bytes([MSGPACK_V1]) + msgspec.msgpack.encode({"task_id": "t"}),  # no status
        bytes([MSGPACK_V1]) + msgspec.msgpack.encode({"task_id": "t", "status": "nope"}),
        b"{",
        b'{"task_id":"t"}',
    ],
)
def test_bytes_that_are_no_state_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_state(data)


def test_a_state_msgpack_cannot_hold_is_stored_as_json() -> None:
    """Never from an Avro event, but storing must not fail where the JSON form did not."""
    for odd in (
        TaskState("t", Status.READY, target="lone \udc80 surrogate"),
        TaskState("t", Status.READY, created_at_ms=2**70),
    ):
        data = encode_state(odd)
        assert data == state_to_json(odd)
        assert decode_state(data) == odd


def test_the_largest_state_is_no_larger_than_its_json() -> None:
    """``bounds.MAX_STATE_BYTES`` is promised for the JSON form; the stored bytes are smaller,
    so the bound (and the changelog's record limit) holds for them too."""
    worst = _worst_state()
    stored = encode_state(worst)
    assert len(stored) <= len(state_to_json(worst)) <= bounds.MAX_STATE_BYTES
    assert decode_state(stored) == worst


def test_equal_states_encode_to_equal_bytes() -> None:
    events = [tf.created("t", "b", "a", eid="c"), tf.registered("t", "z", eid="r")]
    one, two = tf.play(*events), tf.play(*events)
    assert one is not two
    assert encode_state(one) == encode_state(two)
