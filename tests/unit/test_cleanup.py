"""Cleanup by the clock: a result expires after ``result_ttl``, a finished task retires from
the table after the worker's ``task_retention``; both are timer events in the log."""

from __future__ import annotations

from pathlib import Path

from streams.domain import (
    RejectionCode,
    ResultExpired,
    Source,
    Status,
    TaskResultExpired,
    TaskRetired,
    apply,
    fold,
)
from streams.domain.timers import due_event, next_deadline
from streams.outputs import effect_record
from streams.task_store import PartitionStore
from streams.topics import TopicNames
from tests.unit import taskflow as tf
from tests.unit.taskflow import T0

TTL_MS = 86_400_000
"""``result_ttl_ms`` of ``taskflow.created``."""
RETENTION_MS = 7 * 86_400_000


def _completed() -> tf.TaskState:
    state = tf.state_in(Status.COMPLETED)
    assert state is not None and state.result is not None and state.completed_at_ms is not None
    return state


def test_a_completed_result_is_due_to_expire_after_its_ttl_then_the_task_to_retire() -> None:
    state = _completed()
    expires_at = state.completed_at_ms + TTL_MS  # type: ignore[operator]
    assert next_deadline(state) == expires_at
    assert due_event(state, expires_at - 1) is None
    event = due_event(state, expires_at, RETENTION_MS)
    assert event is not None and event.source is Source.TIMER
    assert isinstance(event.payload, TaskResultExpired)
    outcome = apply(state, event)
    expired = outcome.state
    assert expired is not None
    assert (expired.status, expired.result) == (Status.COMPLETED, None)
    assert expired.result_content_type == ""
    assert not expired.result_available(expires_at)
    assert outcome.effects == (ResultExpired(state.task_id),)
    # then the retention counts from that last change
    assert next_deadline(expired) is None  # no retention: kept forever
    assert next_deadline(expired, RETENTION_MS) == expires_at + RETENTION_MS
    retire = due_event(expired, expires_at + RETENTION_MS, RETENTION_MS)
    assert retire is not None and retire.payload == TaskRetired(RETENTION_MS)
    assert apply(expired, retire).state is None
    assert fold([event, retire], {state.task_id: state}) == {}


def test_a_result_is_not_expired_before_its_time_nor_twice() -> None:
    state = _completed()
    early = tf.result_expired("t", at=state.completed_at_ms + TTL_MS - 1)  # type: ignore[operator]
    assert tf.refuse(state, early).code is RejectionCode.STALE
    expired = tf.play(tf.result_expired("t", at=T0 + 2 * TTL_MS), state=state)
    again = tf.result_expired("t", at=T0 + 3 * TTL_MS)  # another id: nothing left to expire
    assert tf.refuse(expired, again).code is RejectionCode.STALE


def test_a_task_retires_only_after_its_retention_and_only_once_finished() -> None:
    for status in (Status.FAILED, Status.CANCELLED, Status.MISSING):
        state = tf.state_in(status)
        assert state is not None
        due_at = state.updated_at_ms + RETENTION_MS
        assert next_deadline(state, RETENTION_MS) == due_at
        early = tf.retired("t", RETENTION_MS, at=due_at - 1)
        assert tf.refuse(state, early).code is RejectionCode.STALE
        assert apply(state, tf.retired("t", RETENTION_MS, at=due_at)).state is None
    for status in (Status.PENDING, Status.READY, Status.RUNNING, Status.RETRYING):
        state = tf.state_in(status)
        assert state is not None
        late = tf.retired("t", 0, at=T0 + 100 * RETENTION_MS)
        assert tf.refuse(state, late).code is RejectionCode.ILLEGAL_TRANSITION


def test_a_repeated_retirement_of_a_gone_task_changes_nothing() -> None:
    outcome = apply(None, tf.retired("t", RETENTION_MS, at=T0))
    assert (outcome.state, outcome.effects) == (None, ())


def test_an_expired_result_becomes_a_tombstone_on_task_completed() -> None:
    topics = TopicNames("x.")
    assert effect_record(ResultExpired("a/b"), topics, T0) == (topics.completed, b"a/b", None)


def test_a_deleted_object_reads_as_gone_and_commits_a_deletion(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0", encode=lambda value: value)
    store.put_object(b"t", b"state")
    assert store.encode_objects() == [(b"t", b"state")]
    store.commit(None)
    store.put_object(b"t", None)
    assert store.get(b"t") is None
    assert store.get_object(b"t", bytes) is None
    assert list(store.items()) == []
    assert store.encode_objects() == [(b"t", None)]  # the changelog's tombstone
    store.commit(1)
    assert store.get(b"t") is None
    assert store.checkpoint == 1
    store.close()
