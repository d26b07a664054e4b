"""``state_to_dict`` / ``state_from_dict`` (and the JSON form of the ``tasks`` table)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain import (
    Status,
    TaskPolicy,
    TaskState,
    Transition,
    state_from_dict,
    state_from_json,
    state_to_dict,
    state_to_json,
)
from streams.domain.state import evolve
from tests.unit import taskflow as tf
from tests.unit.taskflow import T0

EVERY_STATUS = [s for s in Status]


def _json_native(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_native(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_native(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


@pytest.mark.parametrize("status", EVERY_STATUS)
def test_state_in_every_status_survives_the_round_trip(status: Status) -> None:
    state = tf.state_in(status)
    assert state is not None
    data = state_to_dict(state)
    assert _json_native(data)
    assert state_from_dict(data) == state
    assert state_from_dict(json.loads(json.dumps(data, sort_keys=True))) == state
    assert state_from_json(state_to_json(state)) == state


def test_binary_result_history_and_policy_survive_the_round_trip() -> None:
    running = tf.play(
        tf.created(
            "t",
            timeout_ms=1_234,
            max_attempts=7,
            retry_delay_ms=99,
            result_ttl_ms=5,
            dependency_wait_ms=6,
        )
    )
    running = tf.play(tf.started("t", at=T0 + 1), state=running)
    result = bytes(range(256))  # not UTF-8
    state = tf.play(tf.completed("t", result, at=T0 + 2), state=running)
    data = state_to_dict(state)
    assert isinstance(data["result"], str)
    assert data["policy"] == {
        "timeout_ms": 1_234,
        "max_attempts": 7,
        "retry_delay_ms": 99,
        "result_ttl_ms": 5,
        "dependency_wait_ms": 6,
        "max_rate_limited": 10,
    }
    assert data["history"] == [
        ["ready", T0, state.history[0].event_id],
        ["running", T0 + 1, state.history[1].event_id],
        ["completed", T0 + 2, state.history[2].event_id],
    ]
    back = state_from_json(state_to_json(state))
    assert back == state
    assert back.result == result
    assert back.policy == TaskPolicy(1_234, 7, 99, 5, 6)
    assert all(isinstance(t.status, Status) for t in back.history)
    assert isinstance(back.status, Status)


def test_empty_result_stays_empty_not_absent() -> None:
    state = tf.play(tf.completed("t", b""), state=tf.state_in(Status.RUNNING))
    back = state_from_dict(state_to_dict(state))
    assert back.result == b""
    assert back.result_expires_at_ms() == state.result_expires_at_ms()


def test_no_result_is_null() -> None:
    data = state_to_dict(TaskState("t", Status.PENDING))
    assert data["result"] is None
    assert state_from_dict(data).result is None


def test_json_is_canonical_for_equal_states() -> None:
    events = [tf.created("t", "b", "a", eid="c"), tf.registered("t", "z", eid="r")]
    one, two = tf.play(*events), tf.play(*events)
    assert one is not two
    assert state_to_json(one) == state_to_json(two)
    assert state_to_json(one) == json.dumps(
        state_to_dict(one), sort_keys=True, separators=(",", ":")
    ).encode("utf-8")


def test_unknown_keys_are_ignored_and_missing_ones_default() -> None:
    """Older and newer writers of the ``tasks`` table can read each other's states."""
    state = tf.state_in(Status.READY)
    assert state is not None
    data = state_to_dict(state)
    data["a_field_from_the_future"] = {"x": 1}
    for name in ("held_reason", "held_detail", "held_until_ms", "waiting"):
        del data[name]
    assert state_from_dict(data) == state


# -- any state ---------------------------------------------------------------------------------

IDS = st.text(alphabet="abcxyz-_/:é", min_size=1, max_size=6)
INTS = st.integers(-(2**63), 2**63 - 1)
OPTIONAL_INTS = st.none() | INTS
STATES = st.builds(
    TaskState,
    task_id=IDS,
    status=st.sampled_from(Status),
    task_type=st.text(max_size=5),
    platform=st.text(max_size=5),
    target=st.text(max_size=10),
    priority=INTS,
    dependencies=st.lists(IDS, max_size=3).map(tuple),
    open_dependencies=st.lists(IDS, max_size=3).map(tuple),
    dependents=st.lists(IDS, max_size=3).map(tuple),
    waiting=st.lists(IDS, max_size=3).map(tuple),
    policy=st.builds(TaskPolicy, INTS, INTS, INTS, INTS, INTS),
    attempt=INTS,
    progress=st.floats(0.0, 1.0),
    result=st.none() | st.binary(max_size=64),
    result_content_type=st.text(max_size=5),
    last_error=st.text(max_size=10),
    created_at_ms=INTS,
    updated_at_ms=INTS,
    completed_at_ms=OPTIONAL_INTS,
    awaited_until_ms=OPTIONAL_INTS,
    deadline_ms=OPTIONAL_INTS,
    retry_due_at_ms=OPTIONAL_INTS,
    held_reason=st.text(max_size=5),
    held_detail=st.text(max_size=5),
    held_until_ms=OPTIONAL_INTS,
    history=st.lists(st.builds(Transition, st.sampled_from(Status), INTS, IDS), max_size=4).map(
        tuple
    ),
    seen_event_ids=st.lists(IDS, max_size=5).map(tuple),
)


@settings(deadline=None, max_examples=200)
@given(state=STATES)
def test_any_state_survives_the_round_trip_through_json(state: TaskState) -> None:
    data = state_to_dict(state)
    assert _json_native(data)
    text = json.dumps(data, sort_keys=True)
    assert state_from_dict(json.loads(text)) == state
    assert state_from_json(state_to_json(state)) == state


def test_evolve_gives_what_dataclasses_replace_gives() -> None:
    state = TaskState(task_id="a", status=Status.READY, attempt=2, dependents=("b",))
    changed = evolve(state, status=Status.RUNNING, attempt=3)
    assert changed == dataclasses.replace(state, status=Status.RUNNING, attempt=3)
    assert state.status is Status.READY  # the original is untouched
    with pytest.raises(TypeError, match="no field nope"):
        evolve(state, nope=1)
