"""The replay's fast paths give what the plain ones give.

``schemas.records.event_of_record`` (the decoder the fold and the replay use) against
``schemas.records.event_of_record_exact`` (the definition) on every kind of record; the replay's
reading loop against ``projections.log.feed``; the collector off while it folds; the pieces of
a parallel replay that run without Kafka (the share of partitions per worker, the merge of
their answers into the views, the worker protocol).
"""

from __future__ import annotations

import asyncio
import gc
import json
import pickle
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition

from projections import replay as replaying
from projections.audit import AuditView
from projections.log import LogFold, LogRecord, Position, Step, Verdict, feed
from projections.platforms import PlatformStatsView
from projections.status import TaskStatusView
from schemas import encode_event, event_codec
from schemas.codec import SingleObjectCodec, load_history
from schemas.records import event_of_record, event_of_record_exact, event_to_record
from streams.domain import DependencyOutcome, Event
from streams.domain.placement import partition_of
from streams.errors import InfrastructureError
from streams.process import free_port
from tests.unit import taskflow as tf
from tests.unit.taskflow import T0
from tests.unit.test_projections import folded_log

PARTITIONS = 2


def every_kind(task_id: str = "wf/a") -> list[Event]:
    """One event of every payload type, about ``task_id``."""
    return [
        tf.created(task_id, "wf/b", "wf/c"),
        tf.dispatched(task_id),
        tf.started(task_id),
        tf.progress(task_id, 0.5),
        tf.completed(task_id),
        tf.failed(task_id, "HTTP 503", throttled_ms=2_000),
        tf.cancelled(task_id),
        tf.timed_out(task_id, 2, at=T0),
        tf.retry_scheduled(task_id, 2, 1_000),
        tf.retry_due(task_id, 2, at=T0),
        tf.registered(task_id, "wf/z", ["wf/y", "wf/z"]),
        tf.resolved(task_id, "wf/b", DependencyOutcome.FAILED),
        tf.wait_expired(task_id, at=T0),
        tf.deferred(task_id),
    ]


def encoded(event: Event, **changes: Any) -> bytes:
    """``event`` encoded with the current schema, the Avro record's fields changed first."""
    record = event_to_record(event)
    record.update(changes)
    return event_codec().encode(record)


def same(a: object, b: object) -> bool:
    """Equal, or equal in every field (a NaN is not equal to itself)."""
    return a == b or repr(a) == repr(b)


def test_every_payload_type_decodes_as_event_of_record_decodes_it() -> None:
    for event in every_kind():
        key, value = event.task_id.encode(), encode_event(event)
        got = event_of_record(key, value)
        assert got == event_of_record_exact(key, value) == event
        assert type(got) is Event and type(got.payload) is type(event.payload)
    nan = tf.progress("t", float("nan"))
    assert same(
        event_of_record(b"t", encode_event(nan)), event_of_record_exact(b"t", encode_event(nan))
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"t", b"\x00garbage"),  # not single-object encoded
        (b"t", b"\xc3\x01" + b"\x00" * 8 + b"x"),  # an unknown writer schema
        (b"t", encode_event(tf.created("t")) + b"\x00"),  # trailing bytes
        (b"t", encode_event(tf.created("t"))[:-3]),  # cut short
        (b"u", encode_event(tf.created("t"))),  # keyed by another task
        (None, encode_event(tf.created("t"))),  # no key
        (b"t", encoded(tf.created("t"), source="martian")),  # no such source
        (b"t", encoded(tf.created("t"), occurred_at=-5)),  # before 1970: the exact path
        (b"t", encoded(tf.created("t"), occurred_at=2**62)),  # past year 9999: refused there
        (
            b"t",
            encoded(
                tf.resolved("t", "d"),
                payload=(
                    "discovery.orchestrator.DependencyResolved",
                    {"dependency_id": "d", "outcome": "meh"},
                ),
            ),
        ),
    ],
)
def test_unusual_records_get_the_answer_of_event_of_record(key: bytes | None, value: bytes) -> None:
    try:
        expected: object = event_of_record_exact(key, value)
    except Exception as exc:  # then the fast path must raise the same
        with pytest.raises(type(exc)):
            event_of_record(key, value)
        return
    assert same(event_of_record(key, value), expected)


def test_records_of_an_older_writer_schema_decode_as_event_of_record_decodes_them() -> None:
    (v1, *_) = load_history("task_event")
    old = SingleObjectCodec(v1)
    for event in every_kind():
        if event.kind == "TaskDeferred":
            continue  # not in version 1
        record = event_to_record(event)
        name, fields = record["payload"]
        known = next(b for b in v1["fields"][-1]["type"] if name.endswith("." + b["name"]))
        record["payload"] = (name, {f["name"]: fields[f["name"]] for f in known["fields"]})
        key, value = event.task_id.encode(), old.encode(record)
        assert value[2:10] != event_codec().fingerprint
        assert same(event_of_record(key, value), event_of_record_exact(key, value))


# -- the reading loop -------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    """What aiokafka hands out for a record (the fields the replay reads)."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes


def placed_log(seed: int = 0) -> dict[int, list[Fetched]]:
    """A dependency graph driven to completion, plus junk, on its tasks' partitions."""
    cluster = folded_log(seed)
    rng = random.Random(seed)
    items: list[tuple[bytes | None, bytes]] = [
        (e.task_id.encode(), encode_event(e)) for e in cluster.delivered
    ]
    items.insert(rng.randrange(len(items)), (b"c", b"junk"))
    items.insert(rng.randrange(len(items)), (b"c", encode_event(tf.created("e"))))
    log: dict[int, list[Fetched]] = {p: [] for p in range(PARTITIONS)}
    for key, value in items:
        partition = partition_of(key, PARTITIONS) if key is not None else 0
        log[partition].append(Fetched(len(log[partition]), T0, key, value))
    return log


class Recorder:
    """A view that keeps every step it is shown."""

    name = "recorder"

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.collecting: set[bool] = set()

    def observe(self, step: Step) -> None:
        self.steps.append(step)
        self.collecting.add(gc.isenabled())

    def to_json(self) -> dict[str, Any]:
        return {"steps": len(self.steps)}


class FakeConsumer:
    """Hands out each partition's records in batches of ``size``, as ``getmany`` does."""

    def __init__(self, log: dict[int, list[Fetched]], size: int = 3) -> None:
        self._log = log
        self._size = size
        self._at: dict[int, int] = {}
        self._paused: set[int] = set()

    def assign(self, tps: list[Any]) -> None:
        self._at = {tp.partition: 0 for tp in tps}

    def seek(self, tp: Any, offset: int) -> None:
        self._at[tp.partition] = offset

    def pause(self, tp: Any) -> None:
        self._paused.add(tp.partition)

    async def position(self, tp: Any) -> int:
        return self._at[tp.partition]

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Fetched]]:
        batches = {}
        for partition, at in self._at.items():
            records = self._log[partition][at : at + self._size]
            if records and partition not in self._paused:
                batches[TopicPartition("t", partition)] = records
                self._at[partition] = at + len(records)
        return batches


def read(
    log: dict[int, list[Fetched]],
    views: list[Any],
    stops: dict[int, int] | None = None,
    wanted: frozenset[bytes] | None = None,
) -> replaying._Reader:
    ranges = {
        p: replaying.PartitionRange(0, (stops or {}).get(p, len(records)))
        for p, records in log.items()
    }
    reader = replaying._Reader(
        FakeConsumer(log),
        "t",
        ranges,
        views,
        wanted,
        None,
        PARTITIONS,
    )
    asyncio.run(reader.run(10))
    return reader


def records_of(
    log: dict[int, list[Fetched]], stops: dict[int, int] | None = None
) -> Iterator[LogRecord]:
    for partition, records in log.items():
        for r in records[: (stops or {}).get(partition, len(records))]:
            yield LogRecord(Position(partition, r.offset), r.timestamp, r.key, r.value)


@pytest.mark.parametrize("seed", range(3))
def test_the_reader_folds_as_feed_does_with_the_collector_off(seed: int) -> None:
    log = placed_log(seed)
    recorder, expected = Recorder(), Recorder()
    assert gc.isenabled()
    reader = read(log, [recorder])
    assert gc.isenabled(), "back on after the replay"
    assert recorder.collecting == {False}, "off while folding"
    fed = feed(
        sorted(records_of(log), key=lambda r: r.position),
        [expected],
        LogFold(partitions=PARTITIONS),
    )

    assert reader.records == sum(len(records) for records in log.values())
    assert reader.log.states == fed.states
    assert reader.log.counts == fed.counts
    assert fed.counts[Verdict.REJECTED] >= 2, "the junk is there"
    ordered = sorted(recorder.steps, key=lambda s: s.record.position)
    assert repr(ordered) == repr(sorted(expected.steps, key=lambda s: s.record.position))


def test_the_reader_stops_at_the_stop_offsets_and_folds_only_the_keys_wanted() -> None:
    log = placed_log()
    stops = {p: len(records) // 2 for p, records in log.items()}
    reader = read(log, [], stops=stops)
    fed = feed(records_of(log, stops), [], LogFold(partitions=PARTITIONS))
    assert reader.records == sum(stops.values())
    assert reader.log.states == fed.states

    recorder = Recorder()
    reader = read(log, [recorder], wanted=frozenset({b"c"}))
    assert reader.records == sum(len(records) for records in log.values()), "read, not folded"
    assert {s.task_id for s in recorder.steps if not s.derived_here} == {"c"}


def test_the_collector_is_back_on_when_the_fold_fails() -> None:
    class Failing(Recorder):
        def observe(self, step: Step) -> None:
            raise RuntimeError("a bug in a view")

    with pytest.raises(RuntimeError):
        read(placed_log(), [Failing()])
    assert gc.isenabled()
    gc.disable()
    try:
        read(placed_log(), [Recorder()])
        assert not gc.isenabled(), "left off when it was off"
    finally:
        gc.enable()


# -- parallel replays -------------------------------------------------------------------------


def test_partitions_are_dealt_to_workers_by_their_records() -> None:
    span = replaying.PartitionRange
    ranges = {0: span(0, 100), 1: span(0, 10), 2: span(5, 5), 3: span(0, 60), 4: span(0, 50)}
    shares = replaying._shares(ranges, 2)
    assert shares == [{0: span(0, 100), 1: span(0, 10)}, {3: span(0, 60), 4: span(0, 50)}]
    assert replaying._shares(ranges, 8) == [
        {0: span(0, 100)},
        {3: span(0, 60)},
        {4: span(0, 50)},
        {1: span(0, 10)},
    ]
    assert replaying._shares({2: span(5, 5)}, 2) == []


def test_only_long_replays_with_views_of_last_states_alone_fold_in_processes() -> None:
    span = replaying.PartitionRange
    long = {p: span(0, replaying.PARALLEL_MIN_RECORDS) for p in range(4)}
    short = {p: span(0, 10) for p in range(4)}
    status = [TaskStatusView()]
    assert replaying._processes(None, long, status, None) == replaying._cpus()
    assert replaying._processes(None, long, [], None) == replaying._cpus()
    assert replaying._processes(None, short, status, None) == 1
    assert replaying._processes(3, short, status, None) == 3, "asked for"
    assert replaying._processes(1, long, status, None) == 1
    assert replaying._processes(None, long, [*status, AuditView()], None) == 1
    assert replaying._processes(None, long, [PlatformStatsView()], None) == 1
    assert replaying._processes(4, long, status, frozenset({b"t"})) == 1


@pytest.mark.parametrize("seed", range(3))
def test_merged_worker_answers_give_the_states_and_status_view_of_one_fold(seed: int) -> None:
    log = placed_log(seed)
    whole, status = LogFold(partitions=PARTITIONS), TaskStatusView()
    feed(sorted(records_of(log), key=lambda r: r.position), [status], whole)
    answers = []
    for partition, records in log.items():
        last, fold = replaying._LastApplied(), LogFold(partitions=PARTITIONS)
        feed(records_of({partition: records}), [last], fold)
        answers.append((fold.states, fold.counts, len(records), last.positions))
    answers = [pickle.loads(pickle.dumps(answer)) for answer in answers]
    merged_view = TaskStatusView()
    merged, read_in_all = replaying._merge(answers, PARTITIONS, [merged_view])

    assert read_in_all == sum(len(records) for records in log.values())
    assert merged.states == whole.states
    assert merged.counts == whole.counts
    assert json.dumps(merged_view.to_json(), sort_keys=True) == json.dumps(
        status.to_json(), sort_keys=True
    )


def _worker_answering(*frames: tuple[bytes, bytes], status: int = 0) -> str:
    """Code for ``python -c`` that reads a request, writes ``frames``, says something on stderr
    and exits with ``status``."""
    writes = "; ".join(
        f"out.write(struct.pack('!cQ', {kind!r}, {len(payload)}) + {payload!r})"
        for kind, payload in frames
    )
    return (
        "import pickle, struct, sys; pickle.load(sys.stdin.buffer); out = sys.stdout.buffer; "
        f"{writes}; out.flush(); print('a last word', file=sys.stderr); sys.exit({status})"
    )


async def _ask(code: str) -> tuple[bytes, list[int]]:
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    progress: list[int] = []
    try:
        answer = await replaying._ask(worker, {"anything": 1}, progress.append)
    finally:
        await worker.wait()
    return answer, progress


def test_a_worker_answers_in_frames_and_its_failures_become_infrastructure_errors() -> None:
    count = replaying._COUNT.pack
    answer, progress = asyncio.run(
        _ask(_worker_answering((b"P", count(10)), (b"P", count(25)), (b"R", b"the states")))
    )
    assert (answer, progress) == (b"the states", [10, 25])

    stalled = pickle.dumps((True, "replay stalled: nothing read for 60 s", True))
    with pytest.raises(InfrastructureError, match="replay stalled") as raised:
        asyncio.run(_ask(_worker_answering((b"P", count(10)), (b"E", stalled))))
    assert raised.value.retriable

    bug = pickle.dumps((False, "KeyError: 'x'", False))
    with pytest.raises(RuntimeError, match="a replay worker process failed: KeyError"):
        asyncio.run(_ask(_worker_answering((b"E", bug))))

    with pytest.raises(InfrastructureError, match="exited with status 3: a last word"):
        asyncio.run(_ask(_worker_answering((b"P", count(10)), status=3)))


def test_a_real_worker_process_starts_and_reports_a_broker_it_cannot_reach() -> None:
    shares = [{0: replaying.PartitionRange(0, 10)}, {1: replaying.PartitionRange(0, 10)}]
    with pytest.raises(InfrastructureError, match="cannot replay t from Kafka") as raised:
        asyncio.run(
            replaying._fold_in_processes(
                f"127.0.0.1:{free_port()}", "t", 2, shares, [TaskStatusView()], None, 10
            )
        )
    assert raised.value.retriable
