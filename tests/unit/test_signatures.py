"""The forgery decision (``streams.domain.signatures``), shared by the fold and the replay.

Given the workers' signing key (signed from some offsets) and a record of ``task.events``, when
:func:`forgery` judges it, then: an internal event is accepted only with the record's own
signature under that key (below the signed-from offsets, as before signing); a client's report
on an attempt a worker runs is refused; anything else a client writes is accepted. The replay's
:class:`~projections.log.LogFold` gives the same verdicts.
"""

from __future__ import annotations

from dataclasses import fields

import pytest

from projections.log import LogFold, LogRecord, Position, Verdict
from schemas import encode_event
from streams.domain import PAYLOAD_TYPES, DependencyOutcome, Event, Source, Status, TaskState
from streams.domain.signatures import (
    ATTEMPT_REPORTS,
    CLIENT_KINDS,
    FORGED,
    INTERNAL_KINDS,
    SIGNATURE_HEADER,
    SigningKey,
    forgery,
    is_worker_attempt,
    signature_of,
    signed_headers,
)
from streams.signing import key_of_record, key_record
from tests.unit.taskflow import (
    T0,
    cancelled,
    completed,
    created,
    dispatched,
    event,
    failed,
    play,
    progress,
    resolved,
    started,
    timed_out,
)

KEY = SigningKey(b"k" * 32, {0: 10, 1: 0}, T0)
OTHER_KEY = SigningKey(b"o" * 32, {0: 10, 1: 0}, T0)
ABOVE = 10
"""An offset of partition 0 from which internal events must be signed."""
BELOW = 9


def _judge(
    ev: Event,
    *,
    signed_with: SigningKey | None = None,
    offset: int = ABOVE,
    partition: int = 0,
    state: TaskState | None = None,
    key: bytes | None = None,
    signing: SigningKey | None = KEY,
) -> str | None:
    record_key = ev.task_id.encode() if key is None else key
    value = encode_event(ev)
    signature = signed_with.sign(record_key, value) if signed_with is not None else None
    return forgery(
        ev, record_key, value, signature, partition, offset, signing, lambda _task_id: state
    )


def _as(source: Source, ev: Event) -> Event:
    return Event(ev.event_id, ev.task_id, ev.occurred_at_ms, source, ev.payload)


def _client(ev: Event) -> Event:
    return _as(Source.CLIENT, ev)


def _dispatched_state() -> TaskState:
    return play(created("t"), dispatched("t"))


def _worker_running_state() -> TaskState:
    return play(created("t"), dispatched("t"), started("t"))


def _client_running_state() -> TaskState:
    return play(created("t"), _client(started("t")))


# -- every kind is classified


def test_every_kind_is_either_internal_or_a_clients() -> None:
    assert set(PAYLOAD_TYPES) == INTERNAL_KINDS | CLIENT_KINDS
    assert not INTERNAL_KINDS & CLIENT_KINDS


# -- internal events


@pytest.mark.parametrize(
    "ev",
    [
        _as(Source.FOLD, resolved("t", "dep")),
        _as(Source.TIMER, timed_out("t", 1, at=T0)),
        _as(Source.SCHEDULER, dispatched("t")),
        completed("t"),
        _as(Source.FOLD, created("t")),  # a periodic occurrence's task
    ],
    ids=lambda ev: f"{ev.kind}-{ev.source}",
)
def test_an_internal_event_signed_with_the_key_is_accepted(ev: Event) -> None:
    assert _judge(ev, signed_with=KEY) is None


@pytest.mark.parametrize(
    "ev",
    [
        _as(Source.FOLD, resolved("t", "dep")),
        _as(Source.TIMER, timed_out("t", 1, at=T0)),
        completed("t"),
        _as(Source.FOLD, created("t")),
    ],
    ids=lambda ev: f"{ev.kind}-{ev.source}",
)
def test_an_unsigned_internal_event_is_forged(ev: Event) -> None:
    detail = _judge(ev)
    assert detail is not None and "no signature" in detail


@pytest.mark.parametrize("kind", sorted(INTERNAL_KINDS, key=lambda k: k.__name__), ids=str)
def test_an_internal_kind_claimed_by_a_client_is_forged_unless_signed(kind: type) -> None:
    ev = event("t", _sample(kind))
    assert ev.source is Source.CLIENT
    assert _judge(ev) is not None
    assert _judge(ev, signed_with=KEY) is None


def _sample(kind: type) -> object:
    """A payload of ``kind`` with any field values (the decision looks at no field)."""
    samples = {"str": "x", "tuple[str, ...]": (), "DependencyOutcome": DependencyOutcome.COMPLETED}
    return kind(**{f.name: samples.get(str(f.type), 1) for f in fields(kind)})


def test_a_signature_under_another_key_is_forged() -> None:
    detail = _judge(_as(Source.FOLD, resolved("t", "dep")), signed_with=OTHER_KEY)
    assert detail is not None and "invalid signature" in detail


def test_a_signed_event_moved_to_another_task_is_forged() -> None:
    original = _as(Source.FOLD, resolved("victim", "dep"))
    value = encode_event(original)
    signature = KEY.sign(b"victim", value)
    moved = _as(Source.FOLD, resolved("other", "dep", eid=original.event_id))
    moved_value = encode_event(moved)
    # the signature of the original, on the moved event (its key and its value)
    assert forgery(moved, b"other", moved_value, signature, 0, ABOVE, KEY, lambda _: None)
    # ... or on the original's value under the other key
    assert forgery(original, b"other", value, signature, 0, ABOVE, KEY, lambda _: None)
    assert forgery(original, b"victim", value, signature, 0, ABOVE, KEY, lambda _: None) is None


def test_a_missing_key_and_an_empty_key_sign_differently() -> None:
    assert KEY.sign(None, b"v") != KEY.sign(b"", b"v")
    assert KEY.sign(b"ab", b"c") != KEY.sign(b"a", b"bc")


# -- the offsets signing holds from


def test_an_unsigned_internal_event_below_the_signed_from_offset_is_accepted() -> None:
    ev = _as(Source.FOLD, resolved("t", "dep"))
    assert _judge(ev, offset=BELOW) is None
    assert _judge(ev, offset=ABOVE) is not None


def test_a_partition_the_key_does_not_know_is_signed_from_its_first_record() -> None:
    assert _judge(_as(Source.TIMER, timed_out("t", 1, at=T0)), partition=7, offset=0) is not None


def test_without_a_key_nothing_is_forged() -> None:
    assert _judge(_as(Source.FOLD, resolved("t", "dep")), signing=None) is None
    assert _judge(_client(completed("t")), state=_dispatched_state(), signing=None) is None


# -- a client's reports on attempts


@pytest.mark.parametrize(
    "ev",
    [_client(e) for e in (started("t"), progress("t", 0.5), completed("t"), failed("t", "no"))],
    ids=lambda ev: ev.kind,
)
def test_a_client_report_on_an_attempt_a_worker_runs_is_forged(ev: Event) -> None:
    running = _worker_running_state()
    if ev.kind == "TaskStarted":
        running = _dispatched_state()  # a dispatched attempt is the worker's to start
    detail = _judge(ev, state=running)
    assert detail is not None and "a worker runs" in detail


@pytest.mark.parametrize(
    "ev",
    [_client(e) for e in (progress("t", 0.5), completed("t"), failed("t", "no"))],
    ids=lambda ev: ev.kind,
)
def test_a_client_report_on_an_attempt_it_started_is_accepted(ev: Event) -> None:
    assert _judge(ev, state=_client_running_state()) is None


def test_a_client_starts_a_ready_task_itself() -> None:
    assert _judge(_client(started("t")), state=play(created("t"))) is None


def test_the_executors_signed_report_on_its_attempt_is_accepted() -> None:
    ev = completed("t")
    assert ev.source is Source.EXECUTOR
    assert _judge(ev, state=_worker_running_state(), signed_with=KEY) is None


def test_a_client_report_below_the_signed_from_offset_is_judged_as_before() -> None:
    assert _judge(_client(completed("t")), state=_worker_running_state(), offset=BELOW) is None


def test_a_clients_other_events_are_accepted_without_a_signature() -> None:
    assert _judge(created("t")) is None
    assert _judge(cancelled("t"), state=_worker_running_state()) is None


def test_the_state_is_read_only_for_a_clients_attempt_report() -> None:
    asked: list[str] = []

    def state_of(task_id: str) -> TaskState | None:
        asked.append(task_id)
        return None

    for ev in (created("t"), _as(Source.FOLD, resolved("t", "d")), cancelled("t")):
        forgery(ev, b"t", encode_event(ev), None, 0, ABOVE, KEY, state_of)
    assert asked == []
    forgery(_client(completed("t")), b"t", b"", None, 0, ABOVE, KEY, state_of)
    assert asked == ["t"]
    assert {started("t").kind, completed("t").kind} <= {k.__name__ for k in ATTEMPT_REPORTS}


def test_which_attempts_are_a_workers() -> None:
    assert is_worker_attempt(_dispatched_state())
    assert is_worker_attempt(_worker_running_state())
    assert not is_worker_attempt(_client_running_state())
    assert not is_worker_attempt(play(created("t")))
    assert _worker_running_state().status is Status.RUNNING


# -- headers, the key record


def test_the_signature_header_is_found_among_others() -> None:
    headers = [("source.topic", b"x"), *signed_headers(KEY, b"t", b"v")]
    assert signature_of(headers) == KEY.sign(b"t", b"v")
    assert signature_of([("worker", b"w")]) is None
    assert signature_of(None) is None
    assert signed_headers(None, b"t", b"v") == []
    assert headers[-1][0] == SIGNATURE_HEADER


def test_the_key_record_round_trips_and_the_secret_is_never_shown() -> None:
    key, value = key_record(KEY)
    assert key_of_record(value) == KEY
    assert key.startswith(b"signing-key/") and key != key_record(OTHER_KEY)[0]
    assert "kkkk" not in repr(KEY) and "secret" not in repr(KEY)


# -- the replay decides the same


def _record(ev: Event, offset: int, signing: SigningKey | None = None) -> LogRecord:
    key, value = ev.task_id.encode(), encode_event(ev)
    signature = signing.sign(key, value) if signing is not None else None
    return LogRecord(Position(0, offset), T0, key, value, signature)


def test_the_replay_refuses_a_forged_record_and_keeps_the_state() -> None:
    log = LogFold(signing=KEY)
    log.fold(_record(created("w", "dep"), ABOVE))
    forged = log.step(_record(_as(Source.FOLD, resolved("w", "dep")), ABOVE + 1))
    assert (forged.verdict, forged.reason) == (Verdict.REJECTED, FORGED)
    assert log.states["w"].status is Status.PENDING
    signed = log.step(_record(_as(Source.FOLD, resolved("w", "dep")), ABOVE + 2, KEY))
    assert signed.verdict is Verdict.APPLIED
    assert log.states["w"].status is Status.READY


def test_the_replay_without_a_key_folds_as_before() -> None:
    log = LogFold()
    log.fold(_record(created("w", "dep"), ABOVE))
    assert log.step(_record(_as(Source.FOLD, resolved("w", "dep")), ABOVE + 1)).verdict is (
        Verdict.APPLIED
    )
