"""No silent loss: every accepted event is applied or dead-lettered, whatever its size.

Real broker, real worker processes, records written by raw producers (any other producer of
``task.events``, not the client) or by the client. Each test has an orchestrator of its own
(topic prefix and app id): some change topic configs, and on a fold that can wedge, one wedged
partition must not decide the outcome of the next test.

What is checked:

- oversize or invalid input (a huge target, 20,000 dependencies, a 400 KB key) goes to the DLQ
  exactly once, the task's state is unchanged, and the client refuses the same input itself;
- a record the broker refuses (a topic's ``max.message.bytes``) fails only its own event: that
  event goes to the DLQ (``output_too_large`` / ``output_refused``), nothing of it is visible,
  and the partition folds the next records;
- 30,000 events on one task leave a bounded state;
- a property over generated mixes of valid and hostile records: every record of ``task.events``
  is either reflected in the table (its event id is among its task's ``seen_event_ids``) or in
  the DLQ exactly once, never both, never neither.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from schemas import decode_completed, decode_event, decode_ready, encode_event
from streams import task_store
from streams.client import TaskManager
from streams.domain import (
    DependencyRegistered,
    DependencyResolved,
    DependencyWaitExpired,
    Event,
    Payload,
    Source,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskDeferred,
    TaskDispatched,
    TaskFailed,
    TaskProgress,
    TaskRetryDue,
    TaskRetryScheduled,
    TaskStarted,
    TaskTimedOut,
    bounds,
)
from streams.domain.events import DependencyOutcome
from streams.errors import InfrastructureError, TaskNotFoundError, ValidationError
from streams.process import WorkerProcess
from streams.state_codec import decode_state
from tests.integration.conftest import PARTITIONS, Cluster
from tests.integration.kafka_io import (
    Record,
    committed_offsets,
    end_offsets,
    partition_of,
    read_range,
    read_to_end,
    read_until,
    send_all,
    set_topic_config,
    wait_committed,
    wait_refuses_larger_than,
)

HOUR_MS = 3_600_000
"""Every policy time of the tasks here: no timer fires during a test."""

DETAIL_MAX_BYTES = 1_200
"""The ``detail`` header is cut to about 1 KB (some room for a "cut" marker)."""

MAX_STATE_BYTES: int = getattr(bounds, "MAX_STATE_BYTES", 64 * 1024)
"""The largest stored state the bounds allow (64 KiB if ``bounds`` does not say)."""

SMALL_STATE_BYTES = 64 * 1024
"""A running task with a one-character target and no result stays far below this whatever
its number of events: 256 seen event ids take about 10 KB, 200 transitions about 14 KB."""

REFUSED_OUTPUT = {"output_too_large", "output_refused"}
"""DLQ reasons of an event whose output the broker refused."""

FOLD_WAIT_S = 60.0


def _run() -> str:
    return uuid.uuid4().hex[:8]


def _event(task_id: str, payload: Payload, event_id: str | None = None) -> Event:
    return Event(
        event_id or str(uuid.uuid4()), task_id, int(time.time() * 1000), Source.CLIENT, payload
    )


def _created(
    target: str = "c", dependencies: tuple[str, ...] = (), max_attempts: int = 2
) -> TaskCreated:
    return TaskCreated(
        "profile_scrape",
        "youtube",
        target,
        3,
        dependencies,
        HOUR_MS,
        max_attempts,
        HOUR_MS,
        HOUR_MS,
        HOUR_MS,
    )


def _headers(record: Record) -> dict[str, bytes]:
    return dict(record.headers or ())


def _reason(record: Record) -> str:
    return _headers(record).get("reason", b"").decode()


def _source(record: Record) -> tuple[str, int, int] | None:
    """The ``(topic, partition, offset)`` a record of the fold came from (None if unsaid)."""
    headers = _headers(record)
    try:
        return (
            headers["source.topic"].decode(),
            int(headers["source.partition"]),
            int(headers["source.offset"]),
        )
    except (KeyError, ValueError):
        return None


def _start(cluster: Cluster) -> WorkerProcess:
    return cluster.start("w")


def _client_config(cluster: Cluster, worker: WorkerProcess) -> dict[str, object]:
    return {
        "bootstrap_servers": cluster.bootstrap_servers,
        "api_url": worker.api_url,
        "partitions": PARTITIONS,
        "read_timeout": 30.0,
        "topic_prefix": cluster.topic_prefix,
    }


def _fold_group(cluster: Cluster) -> str:
    return f"{cluster.orchestrator_id}-fold"


def _changelog(cluster: Cluster) -> str:
    return f"{cluster.orchestrator_id}-tasks-changelog"


async def _folded_past(cluster: Cluster, partition: int, offset: int) -> bool:
    """Wait until the fold committed its position past ``offset`` of ``partition``."""
    committed = await wait_committed(
        cluster.bootstrap_servers,
        _fold_group(cluster),
        cluster.topics.events,
        PARTITIONS,
        {partition: offset + 1},
        FOLD_WAIT_S,
    )
    return committed[partition] > offset


async def _dead_letters_of(cluster: Cluster, partition: int, offset: int) -> list[Record]:
    """Every committed DLQ record whose provenance is ``task.events[partition]@offset``."""
    wanted = (cluster.topics.events, partition, offset)
    return await read_to_end(
        cluster.bootstrap_servers,
        cluster.topics.dlq,
        PARTITIONS,
        keep=lambda r: _source(r) == wanted,
    )


async def _http_get(
    worker: WorkerProcess, path: str, params: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
        http.get(f"{worker.api_url}{path}", params=params or {}) as response,
    ):
        return response.status, await response.json(content_type=None)


async def _status_after(worker: WorkerProcess, task_id: str, partition: int, offset: int) -> int:
    """The HTTP status of a read of ``task_id`` once the fold is past ``partition@offset``."""
    status, _ = await _http_get(
        worker, f"/tasks/{task_id}", {"after": f"{partition}:{offset}", "wait": "30"}
    )
    return status


async def _metric(worker: WorkerProcess, name: str) -> float:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{worker.api_url}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def _same_partition(task_id: str, stem: str) -> str:
    """A task id starting with ``stem`` in the same partition of ``task.events`` as ``task_id``."""
    wanted = partition_of(task_id, PARTITIONS)
    return next(tid for n in count() if partition_of(tid := f"{stem}-{n}", PARTITIONS) == wanted)


def _ids_on_every_partition(stem: str) -> list[str]:
    ids: list[str] = []
    while {partition_of(tid, PARTITIONS) for tid in ids} != set(range(PARTITIONS)):
        ids.append(f"{stem}-{len(ids)}")
    return ids


async def _dead_letter_keyed(cluster: Cluster, key: bytes) -> list[Record]:
    """Wait (up to FOLD_WAIT_S) for a DLQ record under ``key``; return those read."""
    return await read_until(
        cluster.bootstrap_servers,
        cluster.topics.dlq,
        done=lambda kept: bool(kept),
        timeout_s=FOLD_WAIT_S,
        keep=lambda r: r.key == key,
    )


async def _assert_provenance_is_the_record(cluster: Cluster, dead: Record) -> None:
    """The DLQ record's provenance headers point at a record of ``task.events`` it copies."""
    source = _source(dead)
    assert source is not None, f"no provenance headers: {_headers(dead)}"
    topic, partition, offset = source
    assert topic == cluster.topics.events
    [original] = await read_range(cluster.bootstrap_servers, topic, partition, offset, offset + 1)
    assert (original.key, original.value) == (dead.key, dead.value)


def _assert_short_detail(dead: Record) -> None:
    detail = _headers(dead).get("detail")
    assert detail, "a dead letter says why in its detail header"
    assert len(detail) <= DETAIL_MAX_BYTES, f"detail of {len(detail)} bytes"


# -- 1. oversize input from any producer


LIMIT_OF_TARGET = re.compile(r"16[,._ ]?384")


async def test_an_oversize_target_is_dead_lettered_and_the_client_refuses_it(
    cluster: Cluster, bootstrap_servers: str
) -> None:
    worker = _start(cluster)
    run = _run()
    task_id, refused_id = f"big-target-{run}", f"big-target-client-{run}"
    target = "\x01" * 200_000
    value = encode_event(_event(task_id, _created(target)))
    [(partition, offset)] = await send_all(
        bootstrap_servers, cluster.topics.events, [(task_id.encode(), value)]
    )

    assert await _folded_past(cluster, partition, offset), "the fold never got past the event"
    dead = await _dead_letters_of(cluster, partition, offset)
    assert [_reason(r) for r in dead] in (["too_large"], ["invalid_payload"]), (
        "exactly one dead letter for the event"
    )
    assert (dead[0].key, dead[0].value) == (task_id.encode(), value), "the original record"
    _assert_short_detail(dead[0])
    assert await _status_after(worker, task_id, partition, offset) == 404, "no such task"

    async with TaskManager(_client_config(cluster, worker)) as tm:
        with pytest.raises(ValidationError, match=LIMIT_OF_TARGET):
            await tm.create_task("profile_scrape", "youtube", target, task_id=refused_id)
        with pytest.raises(TaskNotFoundError):
            await tm.get_task_status(refused_id)


async def test_twenty_thousand_dependencies_are_dead_lettered_without_follow_ups(
    cluster: Cluster, bootstrap_servers: str
) -> None:
    worker = _start(cluster)
    run = _run()
    task_id = f"many-deps-{run}"
    dependencies = tuple(f"d{i}-{run}" for i in range(20_000))
    value = encode_event(_event(task_id, _created(dependencies=dependencies)))
    [(partition, offset)] = await send_all(
        bootstrap_servers, cluster.topics.events, [(task_id.encode(), value)]
    )

    assert await _folded_past(cluster, partition, offset), "the fold never got past the event"
    dead = await _dead_letters_of(cluster, partition, offset)
    assert [_reason(r) for r in dead] == ["too_large"], "exactly one dead letter for the event"
    assert dead[0].value == value
    _assert_short_detail(dead[0])
    assert await _status_after(worker, task_id, partition, offset) == 404, "no such task"

    cause = (cluster.topics.events, partition, offset)

    def caused_by_it(record: Record) -> bool:
        if _source(record) == cause:
            return True
        try:
            payload = decode_event(record.value or b"").payload
        except Exception:
            return False
        return isinstance(payload, DependencyRegistered) and payload.dependent_id == task_id

    follow_ups = await read_to_end(
        bootstrap_servers, cluster.topics.events, PARTITIONS, keep=caused_by_it
    )
    assert follow_ups == [], f"{len(follow_ups)} follow-ups of a refused creation"

    async with TaskManager(_client_config(cluster, worker)) as tm:
        with pytest.raises(ValidationError, match=r"\b500\b"):
            await tm.create_task("profile_scrape", "youtube", "c", dependencies=dependencies[:501])


# -- 3. outputs the broker refuses


async def test_a_completion_the_broker_refuses_is_dead_lettered_and_the_partition_goes_on(
    cluster: Cluster, bootstrap_servers: str
) -> None:
    worker = _start(cluster)
    completed_topic = cluster.topics.completed
    await set_topic_config(bootstrap_servers, completed_topic, {"max.message.bytes": "4096"})
    assert await wait_refuses_larger_than(bootstrap_servers, completed_topic, 8192)
    run = _run()
    big = f"big-result-{run}"
    small = _same_partition(big, f"small-result-{run}")
    result = b"r" * 20_000

    async with TaskManager(_client_config(cluster, worker)) as tm:
        for task_id in (big, small):
            await tm.create_task("profile_scrape", "youtube", "c", task_id=task_id)
            await tm.start_task(task_id)
        await tm.complete_task(big, result)

        dead = await _dead_letter_keyed(cluster, big.encode())
        assert dead, "the refused completion never reached the DLQ"
        assert _reason(dead[0]) in REFUSED_OUTPUT, _headers(dead[0])
        assert decode_event(dead[0].value or b"").payload == TaskCompleted(
            result, "application/octet-stream"
        )
        _assert_short_detail(dead[0])
        await _assert_provenance_is_the_record(cluster, dead[0])
        assert (await tm.get_task_status(big))["status"] == "running", "state unchanged"

        await tm.complete_task(small, {"small": True})
        assert (await tm.get_task_status(small))["status"] == "completed", "partition not wedged"

    completed = await read_until(
        bootstrap_servers,
        completed_topic,
        done=lambda kept: bool(kept),
        timeout_s=FOLD_WAIT_S,
        keep=lambda r: r.key == small.encode(),
    )
    assert [decode_completed(r.value or b"").task_id for r in completed] == [small]
    keys = {big.encode(), small.encode()}
    completed = await read_to_end(
        bootstrap_servers, completed_topic, PARTITIONS, keep=lambda r: r.key in keys
    )
    assert [r.key for r in completed] == [small.encode()], "nothing of the refused completion"
    states = await read_to_end(
        bootstrap_servers, _changelog(cluster), PARTITIONS, keep=lambda r: r.key == big.encode()
    )
    statuses = [str(decode_state(r.value or b"").status) for r in states]
    assert "completed" not in statuses and statuses[-1:] == ["running"], statuses
    dead = await read_to_end(
        bootstrap_servers, cluster.topics.dlq, PARTITIONS, keep=lambda r: r.key == big.encode()
    )
    assert len(dead) == 1, "dead-lettered exactly once"


async def test_a_state_the_changelog_refuses_is_dead_lettered_and_the_partition_goes_on(
    cluster: Cluster, bootstrap_servers: str
) -> None:
    worker = _start(cluster)
    changelog = _changelog(cluster)
    await set_topic_config(bootstrap_servers, changelog, {"max.message.bytes": "4096"})
    assert await wait_refuses_larger_than(bootstrap_servers, changelog, 8192)
    run = _run()
    big = f"big-state-{run}"
    small = _same_partition(big, f"small-state-{run}")

    async with TaskManager(_client_config(cluster, worker)) as tm:
        await tm.create_task("profile_scrape", "youtube", "t" * 10_000, task_id=big)
        dead = await _dead_letter_keyed(cluster, big.encode())
        assert dead, "the creation whose state was refused never reached the DLQ"
        assert _reason(dead[0]) in REFUSED_OUTPUT, _headers(dead[0])
        assert isinstance(decode_event(dead[0].value or b"").payload, TaskCreated)
        _assert_short_detail(dead[0])
        await _assert_provenance_is_the_record(cluster, dead[0])
        with pytest.raises(TaskNotFoundError):
            await tm.get_task_status(big)

        await tm.create_task("profile_scrape", "youtube", "c", task_id=small)
        assert (await tm.get_task_status(small))["status"] == "ready", "partition not wedged"

    ready = await read_to_end(
        bootstrap_servers,
        cluster.topics.ready,
        PARTITIONS,
        keep=lambda r: decode_ready(r.value or b"").task_id in (big, small),
    )
    assert [decode_ready(r.value or b"").task_id for r in ready] == [small]
    states = await read_to_end(
        bootstrap_servers, changelog, PARTITIONS, keep=lambda r: r.key == big.encode()
    )
    assert states == [], "no state of the refused creation"
    dead = await read_to_end(
        bootstrap_servers, cluster.topics.dlq, PARTITIONS, keep=lambda r: r.key == big.encode()
    )
    assert len(dead) == 1, "dead-lettered exactly once"


# -- 4. a key that used to wedge its partition


async def test_a_huge_key_is_dead_lettered_once_without_a_copy_in_its_detail(
    cluster: Cluster, bootstrap_servers: str
) -> None:
    worker = _start(cluster)
    run = _run()
    short = f"short-{run}"
    key = b"\x00" * 400_000
    value = encode_event(_event(short, _created()))
    [(partition, offset)] = await send_all(bootstrap_servers, cluster.topics.events, [(key, value)])
    assert partition == task_store.partition_of(key, PARTITIONS)

    # tasks created after it, on every partition (its own included), can be read
    ids = _ids_on_every_partition(f"after-key-{run}")
    statuses: dict[str, str] = {}
    async with TaskManager(_client_config(cluster, worker)) as tm:
        for task_id in ids:
            await tm.create_task("profile_scrape", "youtube", "c", task_id=task_id)
        for task_id in ids:
            try:
                statuses[task_id] = (await tm.get_task_status(task_id))["status"]
            except InfrastructureError as exc:
                statuses[task_id] = f"no answer: {exc}"
                break  # the others would wait as long
        with pytest.raises(TaskNotFoundError):
            await tm.get_task_status(short)
    assert statuses == dict.fromkeys(ids, "ready")

    assert await _folded_past(cluster, partition, offset)
    dead = await _dead_letters_of(cluster, partition, offset)
    assert [_reason(r) for r in dead] == ["key_mismatch"], "exactly one dead letter"
    assert (dead[0].key, dead[0].value) == (key, value), "the original record"
    _assert_short_detail(dead[0])
    detail = _headers(dead[0])["detail"]
    assert b"\x00" * 64 not in detail and b"\\x00" * 64 not in detail, "no copy of the key"
    reopens = await _metric(worker, "orchestrator_fold_reopens_total")
    assert reopens == 0, "the fold never had to reopen a partition"


# -- 5. many events on one task


async def _latest_state_record(cluster: Cluster, partition: int, key: bytes) -> Record | None:
    """The last committed changelog record of ``key`` (among the partition's last records)."""
    changelog = _changelog(cluster)
    end = (await end_offsets(cluster.bootstrap_servers, changelog, PARTITIONS))[partition]
    records = await read_range(cluster.bootstrap_servers, changelog, partition, end - 50, end)
    mine = [r for r in records if r.key == key]
    return mine[-1] if mine else None


async def test_thirty_thousand_events_on_one_task_leave_a_bounded_state(
    cluster: Cluster, bootstrap_servers: str
) -> None:
    _start(cluster)
    run = _run()
    task_id = f"chatty-{run}"
    key = task_id.encode()
    progress = [i // 3 / 10_000 for i in range(30_000)]  # non-decreasing, in [0, 1)
    events = [_event(task_id, _created()), _event(task_id, TaskStarted())]
    events += [_event(task_id, TaskProgress(p)) for p in progress]
    written = await send_all(
        bootstrap_servers, cluster.topics.events, [(key, encode_event(e)) for e in events]
    )
    partition, last = written[-1]

    deadline = time.monotonic() + 150
    while True:
        committed = await committed_offsets(
            bootstrap_servers, _fold_group(cluster), cluster.topics.events, PARTITIONS
        )
        state = await _latest_state_record(cluster, partition, key)
        if state is not None:  # stop at once when it outgrows the bound, not at the deadline
            size = len(state.value or b"")
            folded = committed[partition] - written[0][1]
            assert size < SMALL_STATE_BYTES, f"a state of {size} bytes after {folded} events"
        if committed[partition] > last or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert committed[partition] > last, (
        f"the fold is at {committed[partition]}, the events end at {last}"
    )

    record = await _latest_state_record(cluster, partition, key)
    assert record is not None
    size = len(record.value or b"")
    final = decode_state(record.value or b"")
    assert size < min(MAX_STATE_BYTES, SMALL_STATE_BYTES), f"a state of {size} bytes"
    assert len(final.seen_event_ids) <= 256
    assert events[-1].event_id in final.seen_event_ids, "the last event is applied"
    assert (str(final.status), final.progress) == ("running", progress[-1])
    dead = await read_to_end(
        bootstrap_servers, cluster.topics.dlq, PARTITIONS, keep=lambda r: r.key == key
    )
    assert dead == [], f"{len(dead)} events dead-lettered, e.g. {_headers(dead[0]) if dead else ''}"


# -- 6. the invariant, over generated mixes of valid and hostile records


@pytest.fixture(scope="module")
def hostile(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """An orchestrator of its own, with one worker, for the property test (all its examples)."""
    app_id = f"it-{uuid.uuid4().hex[:8]}"
    root: Path = tmp_path_factory.mktemp("no-silent-loss")
    cluster = Cluster(bootstrap_servers, root, app_id, topic_prefix=f"{app_id}.")
    cluster.start("w")
    yield cluster
    cluster.stop_all()


SLOTS = 3
"""Task ids per example."""

BIG_RESULT = bounds.MAX_RESULT_BYTES
_TARGETS = {
    "plain": "c",
    "largest": "t" * bounds.MAX_TARGET_BYTES,
    "one_byte_over": "t" * (bounds.MAX_TARGET_BYTES + 1),
    "huge": "t" * 400_000,
    "control": "\x01" * 200_000,
}
_RESULTS = {
    "none": 0,
    "small": 100,
    "largest": BIG_RESULT,
    "one_byte_over": BIG_RESULT + 1,
    "huge": 900_000,
}
_BAD_IDS = ("has/slash", "x" * (bounds.MAX_ID_CHARS + 1), "", "white space")

slot = st.integers(0, SLOTS - 1)
lifecycle = st.one_of(
    st.tuples(
        st.just("created"),
        slot,
        st.sampled_from(sorted(_TARGETS)),
        st.sampled_from(["none", "none", "none", "two", "over"]),
    ),
    st.tuples(st.just("started"), slot),
    st.tuples(
        st.just("progress"),
        slot,
        st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(allow_nan=True)),
    ),
    st.tuples(st.just("completed"), slot, st.sampled_from(sorted(_RESULTS))),
    st.tuples(st.just("failed"), slot, st.booleans(), st.sampled_from([10, 5_000])),
    st.tuples(st.just("cancelled"), slot),
)
hostile_records = st.one_of(
    st.tuples(st.just("duplicate"), st.integers(0, 50)),
    st.tuples(st.just("reused_id"), st.integers(0, 50)),
    st.tuples(st.just("garbage"), st.binary(max_size=64)),
    st.tuples(st.just("wrong_key"), slot, st.sampled_from(["other", "none", "huge", "empty"])),
    st.tuples(st.just("bad_id"), st.sampled_from(_BAD_IDS)),
    st.tuples(
        st.just("internal"),
        slot,
        st.sampled_from(
            [
                "registered",
                "resolved",
                "timed_out",
                "retry_due",
                "retry_scheduled",
                "wait_expired",
                "dispatched",
                "deferred",
            ]
        ),
    ),
)
creations = st.lists(
    st.tuples(st.just("created"), slot, st.just("plain"), st.just("none")), max_size=SLOTS
)
operations = st.tuples(
    creations,  # first, so that most examples have tasks to act on
    st.lists(st.one_of(lifecycle, lifecycle, hostile_records), min_size=1, max_size=14),
).map(lambda parts: parts[0] + parts[1])

_examples = count()


def _records_of(ops: list[tuple[Any, ...]], ids: list[str]) -> list[tuple[bytes | None, bytes]]:
    """The records ``ops`` stand for, on the tasks ``ids``."""
    records: list[tuple[bytes | None, bytes]] = []
    events: list[tuple[bytes | None, Event]] = []
    now = int(time.time() * 1000)

    def add_keyed(key: bytes | None, task_id: str, payload: Payload) -> None:
        event = _event(task_id, payload)
        records.append((key, encode_event(event)))
        events.append((key, event))

    def add(task_id: str, payload: Payload) -> None:
        add_keyed(task_id.encode(), task_id, payload)

    for op in ops:
        kind, *args = op
        if kind == "created":
            n, target, deps = args
            dependencies = {
                "none": (),
                "two": (f"{ids[n]}-dep-a", f"{ids[n]}-dep-b"),
                "over": tuple(f"{ids[n]}-dep-{i}" for i in range(bounds.MAX_DEPENDENCIES + 1)),
            }[deps]
            add(ids[n], _created(_TARGETS[target], dependencies))
        elif kind == "started":
            add(ids[args[0]], TaskStarted())
        elif kind == "progress":
            add(ids[args[0]], TaskProgress(args[1]))
        elif kind == "completed":
            add(ids[args[0]], TaskCompleted(b"r" * _RESULTS[args[1]]))
        elif kind == "failed":
            n, retryable, length = args
            add(ids[n], TaskFailed("e" * length, retryable))
        elif kind == "cancelled":
            add(ids[args[0]], TaskCancelled("by the property test"))
        elif kind == "duplicate":  # the same record again
            if records:
                records.append(records[args[0] % len(records)])
        elif kind == "reused_id":  # another event under an id already used
            if events:
                key, earlier = events[args[0] % len(events)]
                reused = _event(earlier.task_id, TaskCancelled("reused id"), earlier.event_id)
                records.append((key, encode_event(reused)))
        elif kind == "garbage":
            records.append((ids[0].encode(), b"\x00" + args[0]))
        elif kind == "wrong_key":
            n, how = args
            key = {
                "other": ids[(n + 1) % SLOTS].encode(),
                "none": None,
                "huge": b"\x00" * 400_000,
                "empty": b"",
            }[how]
            add_keyed(key, ids[n], TaskStarted())
        elif kind == "bad_id":
            add(args[0], _created())
        elif kind == "internal":
            n, what = args
            other = ids[(n + 1) % SLOTS]
            internal: dict[str, Payload] = {
                "registered": DependencyRegistered(other, (other,), HOUR_MS),
                "resolved": DependencyResolved(other, DependencyOutcome.COMPLETED),
                "timed_out": TaskTimedOut(1),
                "retry_due": TaskRetryDue(1),
                "retry_scheduled": TaskRetryScheduled(1, HOUR_MS, now + HOUR_MS),
                "wait_expired": DependencyWaitExpired(),
                "dispatched": TaskDispatched(),
                "deferred": TaskDeferred("paused", "by the property test", 0),
            }
            add(ids[n], internal[what])
    return records


async def _settle(
    cluster: Cluster, start: dict[int, int], written: list[tuple[int, int]]
) -> tuple[list[Record], dict[str, Any]]:
    """Wait until the fold committed past every record from ``start`` on; return them, and the
    table (``/state``) then. Fails if that does not happen within FOLD_WAIT_S."""
    bootstrap, events = cluster.bootstrap_servers, cluster.topics.events
    group = _fold_group(cluster)
    worker = cluster.workers[0]
    deadline = time.monotonic() + FOLD_WAIT_S
    last_written: dict[int, int] = {}
    for partition, offset in written:
        last_written[partition] = max(offset, last_written.get(partition, -1))
    while True:
        committed = await committed_offsets(bootstrap, group, events, PARTITIONS)
        if all(committed[p] > o for p, o in last_written.items()):
            stable = await end_offsets(bootstrap, events, PARTITIONS)
            high = await end_offsets(bootstrap, events, PARTITIONS, committed=False)
            if stable == high:  # no transaction open: every follow-up so far is readable
                records = [
                    r
                    for p in range(PARTITIONS)
                    for r in await read_range(bootstrap, events, p, start[p], stable[p])
                ]
                if all(committed[r.partition] > r.offset for r in records):
                    status, table = await _http_get(worker, "/state")
                    if status == 200:
                        return records, table
        if time.monotonic() > deadline:
            pytest.fail(
                f"the fold did not get past every record within {FOLD_WAIT_S:.0f} s: "
                f"committed {committed}, written up to {last_written}"
            )
        await asyncio.sleep(0.2)


def _describe(record: Record) -> str:
    try:
        event = decode_event(record.value or b"")
        what = f"{event.kind} of {event.task_id[:40]!r} id={event.event_id}"
    except Exception:
        what = "undecodable"
    key = record.key if record.key is None or len(record.key) < 50 else record.key[:20] + b"..."
    return f"{record.topic}[{record.partition}]@{record.offset} key={key!r} {what}"


def _audit(
    cluster: Cluster, records: list[Record], dead: list[Record], table: dict[str, Any]
) -> list[str]:
    """What breaks "each record is reflected in the table or dead-lettered exactly once"."""
    events = cluster.topics.events
    dead_letters = Counter(_source(r) for r in dead)
    reasons = {_source(r): _reason(r) for r in dead}
    seen = {
        task_id: set(state.get("seen_event_ids", ())) for task_id, state in table["tasks"].items()
    }
    identity: dict[tuple[int, int], tuple[str, str] | None] = {}
    for record in records:
        try:
            event = decode_event(record.value or b"")
            identity[record.partition, record.offset] = (event.task_id, event.event_id)
        except Exception:
            identity[record.partition, record.offset] = None
    # an event id some record of which was not dead-lettered (so one of them was applied)
    applied_somewhere = {
        ident
        for (p, o), ident in identity.items()
        if ident is not None and not dead_letters[events, p, o]
    }
    logged = {(events, r.partition, r.offset) for r in records}
    problems = [
        f"a dead letter of no record: {_headers(r)}" for r in dead if _source(r) not in logged
    ]
    for record in records:
        where = (events, record.partition, record.offset)
        ident = identity[record.partition, record.offset]
        reflected = ident is not None and ident[1] in seen.get(ident[0], set())
        copies = dead_letters[where]
        if copies > 1:
            problems.append(f"dead-lettered {copies} times: {_describe(record)}")
        elif copies == 0 and not reflected:
            problems.append(f"neither applied nor dead-lettered: {_describe(record)}")
        elif copies == 1 and reflected and ident not in applied_somewhere:
            problems.append(f"applied and dead-lettered ({reasons[where]}): {_describe(record)}")
    return problems


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ops=operations)
@example(  # a huge target, then the largest result: the largest state there can be
    ops=[
        ("created", 0, "huge", "none"),
        ("started", 0),
        ("completed", 0, "largest"),
        ("created", 1, "largest", "none"),
        ("started", 1),
        ("completed", 1, "largest"),
        ("created", 2, "plain", "none"),
    ]
)
@example(  # a key far larger than any detail, then a duplicate, then the task it names
    ops=[
        ("wrong_key", 0, "huge"),
        ("duplicate", 0),
        ("created", 0, "control", "over"),
        ("created", 0, "plain", "two"),
        ("duplicate", 3),
        ("progress", 0, math.nan),
    ]
)
async def test_every_record_is_applied_or_dead_lettered_exactly_once(
    hostile: Cluster, ops: list[tuple[Any, ...]]
) -> None:
    cluster = hostile
    bootstrap = cluster.bootstrap_servers
    stem = f"p{_run()}-{next(_examples)}"
    ids = [f"{stem}-{n}" for n in range(SLOTS)]
    records = _records_of(ops, ids)
    start = await end_offsets(bootstrap, cluster.topics.events, PARTITIONS, committed=False)
    dlq_start = await end_offsets(bootstrap, cluster.topics.dlq, PARTITIONS, committed=False)
    written = await send_all(bootstrap, cluster.topics.events, records)

    log, table = await _settle(cluster, start, written)
    dlq_end = await end_offsets(bootstrap, cluster.topics.dlq, PARTITIONS)
    dead = [
        r
        for p in range(PARTITIONS)
        for r in await read_range(bootstrap, cluster.topics.dlq, p, dlq_start[p], dlq_end[p])
    ]
    assert len(log) >= len(records)
    problems = _audit(cluster, log, dead, table)
    event(f"{len(log)} records, {len(dead)} dead-lettered")
    assert not problems, "\n".join(problems[:20])
