"""The pure projections: the log fold, the status, audit and platform views, instants, compare.

Logs are built as the broker would hold them (encoded events, keyed by task id, with offsets),
so the same bytes a replay reads from Kafka go through the same code here.
"""

from __future__ import annotations

import ast
import random
from dataclasses import replace
from pathlib import Path

import pytest

from projections.audit import AuditView
from projections.instants import iso_utc, parse_instant
from projections.log import LogFold, LogRecord, Position, Verdict, feed
from projections.platforms import PlatformStatsView, distribution
from projections.status import TaskStatusView
from projections.verify import Mismatch, compare
from schemas import encode_event
from streams.domain import Event, Status, fold, state_to_dict
from streams.errors import ValidationError
from tests.unit import taskflow as tf
from tests.unit.taskflow import T0


def log_of(*events: Event | tuple[bytes | None, bytes], partition: int = 0) -> list[LogRecord]:
    """Records at offsets 0, 1, ...: an event keyed by its task id, or a raw (key, value)."""
    records = []
    for offset, item in enumerate(events):
        if isinstance(item, Event):
            key: bytes | None = item.task_id.encode()
            value = encode_event(item)
            timestamp = item.occurred_at_ms
        else:
            key, value = item
            timestamp = T0
        records.append(LogRecord(Position(partition, offset), timestamp, key, value))
    return records


def folded_log(seed: int) -> tf.Cluster:
    """The events a cluster delivered for a small dependency graph driven to completion."""

    def executor(cluster: tf.Cluster, ev: Event, outcome: object) -> None:
        state = cluster.states.get(ev.task_id)
        if state is not None and ev.kind != "TaskStarted" and state.status is Status.READY:
            cluster.submit(tf.started(ev.task_id, at=ev.occurred_at_ms + 10))
        elif state is not None and ev.kind == "TaskStarted":
            cluster.submit(tf.completed(ev.task_id, at=ev.occurred_at_ms + 20))

    cluster = tf.Cluster(driver=executor)
    cluster.submit(tf.created("a"), tf.created("b", "a"), tf.created("c", "a", "b"))
    cluster.submit(tf.created("d", "ghost"), tf.created("e", "c"))
    rng = random.Random(seed)
    cluster.run(choose=rng.choice)
    return cluster


# -- the log fold -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_the_log_fold_gives_the_states_of_the_core_fold(seed: int) -> None:
    cluster = folded_log(seed)
    log = feed(log_of(*cluster.delivered), [])
    assert log.states == fold(cluster.delivered) == cluster.states
    assert log.states["e"].status is Status.COMPLETED
    assert log.counts[Verdict.REJECTED] == len(cluster.rejected)
    assert sum(log.counts.values()) == len(cluster.delivered)


def test_undecodable_unknown_key_mismatched_and_illegal_records_are_rejected_with_reasons() -> None:
    created = tf.created("t")
    illegal = tf.progress("t", 0.5)  # the task is ready, not running
    other = tf.created("u")
    log = LogFold()
    steps = [
        log.step(record)
        for record in log_of(
            created,
            (b"t", b"\x00garbage"),
            illegal,
            (b"t", encode_event(other)),  # an event about u, keyed t
            (b"t", b"\xc3\x01" + b"\x00" * 8 + b"x"),  # single-object, unknown fingerprint
        )
    ]

    assert [(s.verdict, s.reason) for s in steps] == [
        (Verdict.APPLIED, ""),
        (Verdict.REJECTED, "undecodable"),
        (Verdict.REJECTED, "illegal_transition"),
        (Verdict.REJECTED, "key_mismatch"),
        (Verdict.REJECTED, "unknown_schema"),
    ]
    assert steps[2].detail == "TaskProgress is not allowed in status ready"
    assert all(s.task_id == "t" for s in steps)
    assert all(s.before == s.after == steps[0].after for s in steps[1:])
    assert set(log.states) == {"t"}, "a mismatched record creates nothing"
    assert log.counts == {Verdict.APPLIED: 1, Verdict.DUPLICATE: 0, Verdict.REJECTED: 4}


def test_a_repeated_event_is_a_duplicate_and_changes_nothing() -> None:
    created = tf.created("t")
    log = LogFold()
    first, again = (log.step(r) for r in log_of(created, created))
    assert first.verdict is Verdict.APPLIED and first.entered == (Status.READY,)
    assert again.verdict is Verdict.DUPLICATE
    assert again.after is first.after and again.entered == ()


# -- the views ---------------------------------------------------------------------------------


def test_the_status_view_holds_each_task_state_and_the_record_it_came_from() -> None:
    records = log_of(
        tf.created("a"), tf.created("b"), tf.started("a"), tf.cancelled("b"), tf.progress("b", 1)
    )
    view = TaskStatusView()
    log = feed(records, [view])

    assert view.states() == log.states
    assert view.counts() == {"cancelled": 1, "running": 1}
    entry = view.entry("b")
    assert entry is not None and entry.position == Position(0, 3), "the rejected record is not it"
    document = view.to_json()
    assert document["tasks"]["a"]["status"] == "running"
    assert document["tasks"]["a"]["position"] == "0:2"
    assert document["tasks"]["b"]["history"][-1][0] == "cancelled"


def test_an_audit_timeline_lists_a_tasks_records_in_log_order_with_rejections_marked() -> None:
    events = [
        tf.created("t", at=T0),
        tf.created("x", at=T0 + 1),
        tf.started("t", at=T0 + 2),
        tf.progress("t", 0.5, at=T0 + 3),
        tf.progress("t", 0.2, at=T0 + 4),  # decreasing: refused
        tf.failed("t", "boom", at=T0 + 5),
    ]
    records = log_of(*events[:5], (b"t", b"junk"), events[5])
    audit = AuditView(task_ids=["t"])
    feed(records, [audit])

    timeline = audit.timeline("t")
    assert audit.task_ids() == ["t"], "only the task asked for"
    assert [e.position.offset for e in timeline] == [0, 2, 3, 4, 5, 6]
    assert [e.kind for e in timeline] == [
        "TaskCreated",
        "TaskStarted",
        "TaskProgress",
        "TaskProgress",
        "(undecodable)",
        "TaskFailed",
    ]
    assert [e.is_rejected for e in timeline] == [False, False, False, True, True, False]
    assert timeline[3].reason == "progress_out_of_range"
    assert "below 0.5" in timeline[3].detail
    assert timeline[4].reason == "undecodable" and timeline[4].summary == "4 bytes"
    assert timeline[0].entered == ("ready",) and timeline[0].status_before is None
    assert timeline[1].status_before == "ready" and timeline[1].status_after == "running"
    assert timeline[5].entered == ("retrying",)
    assert timeline[5].summary == "error='boom' retryable=True throttled_ms=0 interrupted=False"
    assert timeline[5].occurred_at_ms == T0 + 5 and timeline[5].source == "executor"
    assert audit.to_json()["timelines"]["t"][3]["verdict"] == "rejected"


def test_platform_statistics_count_outcomes_durations_attempts_and_time_held_back() -> None:
    # "r": held back by the rate limit, dispatched, failed once, retried, completed
    retry = [
        tf.created("r", at=T0),
        tf.deferred("r", "rate_limit", at=T0 + 200),
        tf.dispatched("r", at=T0 + 1_000),
        tf.started("r", at=T0 + 1_500),
        tf.failed("r", at=T0 + 3_000),
    ]
    later = [
        tf.retry_scheduled("r", 1, 2_000, at=T0 + 3_000),
        tf.retry_due("r", 1, at=T0 + 5_000),
        tf.dispatched("r", at=T0 + 5_400),
        tf.started("r", at=T0 + 5_500),
        tf.completed("r", at=T0 + 6_000),
    ]
    # "h": answered "rate limited" once (throttled), then failed for good
    throttled = [
        tf.created("h", at=T0),
        tf.started("h", at=T0 + 100),
        tf.failed("h", "429", throttled_ms=30_000, at=T0 + 200),
        tf.retry_scheduled("h", 0, 30_000, at=T0 + 200),
        tf.retry_due("h", 0, at=T0 + 30_200),
        tf.started("h", at=T0 + 30_300),
        tf.failed("h", "gone", retryable=False, at=T0 + 30_400),
    ]
    # "o": timed out, then cancelled while it waited for its retry
    timed_out = [
        tf.created("o", at=T0, timeout_ms=1_000),
        tf.started("o", at=T0 + 10),
        tf.timed_out("o", 1, at=T0 + 1_010),
        tf.cancelled("o", at=T0 + 1_100),
    ]
    stats = PlatformStatsView()
    feed(log_of(*retry, *later, *throttled, *timed_out, tf.started("o")), [stats])
    tally = stats.tally("linkedin")
    document = stats.to_json()["platforms"]["linkedin"]

    assert tally.tasks == 3
    assert document["outcomes"] == {"completed": 1, "failed": 1, "cancelled": 1}
    assert document["statuses"] == {"cancelled": 1, "completed": 1, "failed": 1}
    assert tally.total_ms == [6_000]
    assert sorted(tally.queue_ms) == sorted([1_000, 400, 100, 100, 10])
    assert sorted(tally.run_ms) == sorted([1_500, 500, 100, 100, 1_000])
    assert tally.attempts == [2, 1], "a throttled attempt does not count"
    assert (tally.retries, tally.timeouts) == (2, 1)
    assert (tally.throttled, tally.throttled_ms) == (1, 30_000)
    assert document["held"] == {"rate_limit": {"count": 1, "total_ms": 800}}
    assert document["rejected"] == {"illegal_transition": 1}


def test_distribution_uses_nearest_rank_percentiles() -> None:
    values = list(range(1, 21))
    assert distribution(values) == {
        "count": 20,
        "total_ms": 210,
        "mean_ms": 10.5,
        "p50_ms": 10,
        "p95_ms": 19,
        "max_ms": 20,
    }
    assert distribution([]) == {"count": 0}


# -- instants ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms", "assumed_utc"),
    [
        ("1764082800000", 1_764_082_800_000, False),
        ("2025-11-25T15:00:00Z", 1_764_082_800_000, False),
        ("2025-11-25T16:00:00+01:00", 1_764_082_800_000, False),
        ("2025-11-25T15:00:00.250", 1_764_082_800_250, True),
        ("2025-11-25 15:00", 1_764_082_800_000, True),
        ("2025-11-25", 1_764_028_800_000, True),
    ],
)
def test_instants_are_iso_8601_or_epoch_milliseconds(text: str, ms: int, assumed_utc: bool) -> None:
    instant = parse_instant(text)
    assert (instant.ms, instant.assumed_utc) == (ms, assumed_utc)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("yesterday", "not a time"),
        ("1764082800", "looks like epoch seconds"),
        ("2025-13-01", "not a time"),
        ("", "not a time"),
    ],
)
def test_anything_else_is_refused_with_the_accepted_forms(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_instant(text)


def test_iso_utc_prints_milliseconds() -> None:
    assert iso_utc(1_764_082_800_250) == "2025-11-25T15:00:00.250Z"


# -- compare -----------------------------------------------------------------------------------


def test_compare_reports_each_task_that_differs_and_how() -> None:
    states = fold(folded_log(0).delivered)
    replayed = {tid: state_to_dict(s) for tid, s in states.items()}
    assert compare(replayed, dict(replayed)) == []

    live = dict(replayed)
    live["b"] = state_to_dict(replace(states["b"], status=Status.FAILED, attempt=7))
    del live["c"]
    live["zombie"] = state_to_dict(replace(states["a"], task_id="zombie"))
    differences = compare(replayed, live)

    assert [(d.task_id, d.mismatch) for d in differences] == [
        ("b", Mismatch.DIFFERENT),
        ("c", Mismatch.MISSING_LIVE),
        ("zombie", Mismatch.MISSING_REPLAYED),
    ]
    assert [f.name for f in differences[0].fields] == ["attempt", "status"]
    assert (
        differences[0].describe()
        == 'b: attempt: log 1 != live 7; status: log "completed" != live "failed"'
    )


# -- import direction --------------------------------------------------------------------------

PURE = ("log", "status", "audit", "platforms", "instants", "verify")
IO_LIBRARIES = ("faust", "aiokafka", "aiohttp", "rich", "rocksdict", "time", "asyncio")


@pytest.mark.parametrize("module", PURE)
def test_the_view_modules_do_no_io(module: str) -> None:
    path = Path(__file__).resolve().parents[2] / "projections" / f"{module}.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
            if node.module.startswith("streams"):
                pure = node.module in ("streams.domain", "streams.errors")
                assert pure or node.module.startswith("streams.domain."), node.module
    assert not imported & set(IO_LIBRARIES)
