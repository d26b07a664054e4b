"""One task's timeline read from a bounded stretch of its partition (the dashboard's view).

``orchestrator audit`` folds a task's records from the start of the log, which is exact and
unbounded. A worker answering ``GET /tasks/{id}/timeline`` cannot afford that on its event
loop, so it reads a bounded stretch of the task's partition of ``task.events`` (see
:func:`plan_scan`): from a little before the task was first heard of (its state says when) up
to the end of the partition at the time of the request, at most ``max_records`` records. The
records keyed by the task are folded with the projections' own code (:class:`LogFold`,
:class:`AuditView`), so the entries are those ``orchestrator audit`` gives, and the answer says
which records were read and whether anything may be missing.

Nothing here does I/O: :mod:`streams.dashboard.reads` reads the records from Kafka.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from projections.audit import AuditView, TimelineEntry
from projections.log import LogFold, LogRecord
from streams.domain.signatures import SigningKey

CLOCK_MARGIN_MS = 60_000
"""How far before the task's first known time the scan starts: records are stamped by their
producers, whose clocks may differ from the one that stamped the task's first event."""
MAX_SCAN_RECORDS = 50_000
"""Records of the partition one timeline reads at most (every record is fetched; only the
task's own are decoded and folded)."""
MAX_ENTRIES = 500
"""Entries one answer holds at most: the first and the last halves, the middle counted."""


@dataclass(frozen=True)
class ScanPlan:
    """Which offsets of the partition a timeline reads: ``[start, stop)``.

    Attributes:
        start, stop: the offsets read (``stop`` is the end of the partition when asked, or
            ``start + max_records``).
        beginning, end: the partition's first offset and its end when asked.
        from_beginning: True if the scan starts at the partition's first record (no earlier
            record of the task can exist).
    """

    start: int
    stop: int
    beginning: int
    end: int

    @property
    def from_beginning(self) -> bool:
        """True if no record before ``start`` exists."""
        return self.start <= self.beginning

    @property
    def to_end(self) -> bool:
        """True if the scan reaches the end of the partition as it was when asked."""
        return self.stop >= self.end

    def to_json(self) -> dict[str, Any]:
        """The plan, and what it leaves out, as a JSON-ready dict."""
        return {
            "from_offset": self.start,
            "to_offset": self.stop,
            "partition_beginning": self.beginning,
            "partition_end": self.end,
            "from_beginning": self.from_beginning,
            "to_end": self.to_end,
        }


def plan_scan(
    beginning: int, end: int, found: int | None, max_records: int = MAX_SCAN_RECORDS
) -> ScanPlan:
    """The offsets to read for a timeline.

    Args:
        beginning, end: the partition's first offset and its end (the next offset to write).
        found: the first offset stamped at or after the task's first known time less
            :data:`CLOCK_MARGIN_MS` (Kafka's ``offsets_for_times``); None when the task is
            not in the table (never created, or retired) or no record is that recent: then the
            last ``max_records`` records are read.
        max_records: the most records read.
    """
    if max_records < 1:
        raise ValueError(f"max_records must be at least 1, got {max_records}")
    # without a time to start from, the newest records are the likeliest to matter
    start = max(beginning, end - max_records) if found is None else min(max(beginning, found), end)
    return ScanPlan(start, min(end, start + max_records), beginning, end)


def fold_timeline(
    records: Iterable[LogRecord],
    task_id: str,
    partitions: int | None,
    signing: SigningKey | None = None,
) -> list[TimelineEntry]:
    """The task's timeline from ``records`` (those keyed by the task, in log order), folded as
    ``orchestrator audit`` folds them: with the workers' ``signing`` key, a forged record is
    shown refused, as the fold refused it."""
    view = AuditView([task_id])
    log = LogFold(partitions=partitions, signing=signing)
    for record in records:
        for step in log.fold(record):
            view.observe(step)
    return view.timeline(task_id)


def clip(entries: list[TimelineEntry], max_entries: int = MAX_ENTRIES) -> dict[str, Any]:
    """``entries`` as JSON, at most ``max_entries`` of them: the first half and the last half,
    with ``omitted`` counting those left out between them, after the ``omitted_after`` first
    ones (None: nothing left out)."""
    if len(entries) <= max_entries:
        kept, omitted, after = entries, 0, None
    else:
        after = max_entries // 2
        kept = entries[:after] + entries[len(entries) - (max_entries - after) :]
        omitted = len(entries) - max_entries
    return {
        "entries": [entry.to_json() for entry in kept],
        "omitted": omitted,
        "omitted_after": after,
    }
