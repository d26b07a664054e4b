"""The dashboard's pure parts: waiting_on in words, the timeline's bounds, the DLQ's rows and
limit, and its static files (served from a fixed list, no markup built from data)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from projections.timeline import MAX_ENTRIES, ScanPlan, clip, fold_timeline, plan_scan
from streams.dashboard import reads
from streams.dashboard.views import STATIC_FILES, dead_letters_limit
from streams.listing import waiting_words
from tests.unit import taskflow as tf
from tests.unit.taskflow import T0
from tests.unit.test_projections import log_of

DASHBOARD = Path(__file__).resolve().parents[2] / "streams" / "dashboard"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


# -- waiting_on in words


@pytest.mark.parametrize(
    ("waits", "words"),
    [
        (None, None),
        (
            {"reason": "not_before", "not_before_ms": 1_795_000_000_000, "detail": "x"},
            "delayed: not before 2026-11-18T11:06:40Z",
        ),
        ({"reason": "dependencies", "dependencies": ["a"]}, "waiting for 1 dependency: a"),
        (
            {"reason": "dependencies", "dependencies": ["a", "b", "c", "d", "e"]},
            "waiting for 5 dependencies: a, b, c and 2 more",
        ),
        (
            {"reason": "dependencies", "dependencies": ["a", "b"], "not_before_ms": 0},
            "waiting for 2 dependencies: a, b",
        ),
        (
            {"reason": "dependencies", "dependencies": ["a"], "not_before_ms": 1000},
            "waiting for 1 dependency: a, and not before 1970-01-01T00:00:01Z",
        ),
        (
            {"reason": "retry", "due_at_ms": 2000, "last_error": "boom <b>"},
            "retry due at 1970-01-01T00:00:02Z after: boom <b>",
        ),
        (
            {"reason": "retry", "due_at_ms": None, "last_error": None},
            "retry due at an unknown time",
        ),
        (
            {"reason": "rate_limit", "detail": "5 calls per 1 s used", "until_ms": 1500},
            "held by a rate limit (5 calls per 1 s used) until 1970-01-01T00:00:01.500Z",
        ),
        (
            {"reason": "concurrency", "detail": "3 of 3 running", "until_ms": None},
            "held by the platform's concurrency cap (3 of 3 running)",
        ),
        (
            {"reason": "paused", "detail": "", "until_ms": 60_000},
            "held: the platform is paused until 1970-01-01T00:01:00Z",
        ),
        (
            {"reason": "scheduling", "detail": "waiting for its platform's scheduler"},
            "queued: waiting for its platform's scheduler or a caller",
        ),
        (
            {"reason": "periodic", "next_due_ms": 0, "detail": "x"},
            "periodic: next occurrence at 1970-01-01T00:00:00Z",
        ),
        ({"reason": "something_new", "detail": "why"}, "something_new: why"),
    ],
)
def test_waiting_on_reads_as_a_sentence(waits: dict[str, Any] | None, words: str | None) -> None:
    assert waiting_words(waits) == words


def test_every_status_document_says_what_it_waits_for_in_words() -> None:
    from streams.domain import Status
    from streams.web import status_document

    held = tf.state_in(Status.PENDING, "b")
    assert held is not None
    document = status_document(held, T0)
    assert document["waiting_on_text"] == waiting_words(document["waiting_on"])
    assert document["waiting_on_text"] is not None
    running = tf.state_in(Status.RUNNING, "r")
    assert running is not None
    assert status_document(running, T0)["waiting_on_text"] is None


# -- the timeline's bounds


def test_a_scan_starts_where_the_task_was_first_heard_of_and_reads_to_the_end() -> None:
    plan = plan_scan(beginning=0, end=1_000, found=900, max_records=500)
    assert (plan.start, plan.stop) == (900, 1_000)
    assert plan.to_end and not plan.from_beginning


def test_a_scan_stops_at_its_budget_and_says_it_did_not_reach_the_end() -> None:
    plan = plan_scan(beginning=0, end=100_000, found=10, max_records=500)
    assert (plan.start, plan.stop) == (10, 510)
    assert not plan.to_end
    assert plan.to_json()["to_offset"] == 510


def test_a_scan_never_starts_before_the_partition_or_after_its_end() -> None:
    assert plan_scan(beginning=50, end=80, found=0).from_beginning
    assert plan_scan(beginning=50, end=80, found=0).start == 50
    past = plan_scan(beginning=50, end=80, found=90)
    assert (past.start, past.stop) == (80, 80) and past.to_end


def test_a_task_not_in_the_table_is_looked_for_in_the_newest_records() -> None:
    plan = plan_scan(beginning=0, end=10_000, found=None, max_records=1_000)
    assert (plan.start, plan.stop) == (9_000, 10_000)
    small = plan_scan(beginning=0, end=300, found=None, max_records=1_000)
    assert small == ScanPlan(0, 300, 0, 300) and small.from_beginning and small.to_end


def test_a_scan_reads_at_least_one_record() -> None:
    with pytest.raises(ValueError, match="max_records must be at least 1"):
        plan_scan(0, 10, 0, max_records=0)


def test_the_timeline_is_the_audit_of_the_task_s_records_in_log_order() -> None:
    records = log_of(
        tf.created("t", at=T0),
        tf.started("t", at=T0 + 10),
        tf.completed("t", at=T0 + 20),
        tf.started("t", at=T0 + 30),  # refused: completed already
    )
    entries = fold_timeline(records, "t", partitions=None)
    kinds = [e.kind for e in entries]
    assert kinds == ["TaskCreated", "TaskStarted", "TaskCompleted", "TaskStarted"]
    assert [e.verdict for e in entries][-1] == "rejected"
    assert entries[-1].reason == "illegal_transition"
    assert entries[0].status_before is None and entries[0].entered == ("ready",)


def test_a_long_timeline_keeps_its_first_and_last_entries_and_counts_the_rest() -> None:
    events = [tf.created("t", at=T0), tf.started("t", at=T0 + 1)]
    events += [tf.progress("t", i / 1000, at=T0 + 2 + i) for i in range(1, 30)]
    entries = fold_timeline(log_of(*events), "t", partitions=None)
    document = clip(entries, max_entries=10)
    kept = document["entries"]
    assert len(kept) == 10 and document["omitted"] == len(entries) - 10
    assert document["omitted_after"] == 5
    assert [e["position"] for e in kept[:5]] == [str(e.position) for e in entries[:5]]
    assert [e["position"] for e in kept[5:]] == [str(e.position) for e in entries[-5:]]
    assert clip(entries[:3]) == {
        "entries": [e.to_json() for e in entries[:3]],
        "omitted": 0,
        "omitted_after": None,
    }
    assert MAX_ENTRIES >= 100


# -- the DLQ


@pytest.mark.parametrize(("asked", "limit"), [(None, 20), ("", 20), ("1", 1), ("100", 100)])
def test_the_dlq_limit_takes_1_to_100(asked: str | None, limit: int) -> None:
    assert dead_letters_limit(asked) == limit


@pytest.mark.parametrize("asked", ["0", "101", "-1", "ten", "1.5"])
def test_another_dlq_limit_is_refused_naming_the_range(asked: str) -> None:
    with pytest.raises(ValueError, match="limit must be an integer from 1 to 100"):
        dead_letters_limit(asked)


@dataclass
class _Record:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    partition: int = 2
    offset: int = 7
    timestamp: int = T0


def test_a_dead_letter_shows_its_reason_detail_and_provenance_and_cuts_long_details() -> None:
    headers = [
        ("reason", b"illegal_transition"),
        ("detail", ("x" * 1000).encode()),
        ("source.topic", b"task.events"),
        ("source.partition", b"1"),
        ("source.offset", b"42"),
    ]
    row = reads.dead_letter(_Record(b"t-\xff", b"12345", headers))
    assert row["key"] == "t-\ufffd" and row["reason"] == "illegal_transition"
    assert row["detail"] == "x" * reads.DETAIL_CHARS + "…"
    assert row["source"] == "task.events[1]@42" and row["value_bytes"] == 5
    bare = reads.dead_letter(_Record(None, None))
    assert bare["key"] is None and bare["reason"] == "" and bare["source"] is None


# -- the static files


def _scripts() -> Iterator[Path]:
    yield from sorted(DASHBOARD.glob("*.js"))


def test_every_file_of_the_page_is_served_and_nothing_else_is_there() -> None:
    on_disk = {p.name for p in DASHBOARD.iterdir() if p.suffix in (".html", ".css", ".js")}
    assert on_disk == set(STATIC_FILES)
    index = (DASHBOARD / "index.html").read_text()
    linked = set(re.findall(r'(?:src|href)="/dashboard/([^"]+)"', index))
    imported = {
        name
        for script in _scripts()
        for name in re.findall(r'from "\./([^"]+)"', script.read_text())
    }
    assert linked | imported <= set(STATIC_FILES)
    assert "http://" not in index and "https://" not in index  # nothing from elsewhere


def test_the_package_data_holds_every_file_of_the_page() -> None:
    patterns = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]["streams"]
    for name in STATIC_FILES:
        assert any(fnmatch(f"dashboard/{name}", p) for p in patterns), name


@pytest.mark.parametrize("script", list(_scripts()), ids=lambda p: p.name)
def test_no_script_builds_markup_from_data(script: Path) -> None:
    source = script.read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in source, f"{script.name} uses {sink}"
