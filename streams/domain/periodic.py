"""Periodic definitions: "create a task of type T on platform P every interval (or on a cron)".

A definition is itself a log entity, keyed ``periodic:<name>`` on ``task.events`` and folded on
that key's partition like a task: ``PeriodicScheduled`` defines or changes it,
``PeriodicCancelled`` removes it, and its state (status ``periodic``) holds the schedule and the
next occurrence. The timer of the worker owning that partition writes
``PeriodicOccurrenceDue`` when the next occurrence has come; the fold answers it with the
occurrence's ``TaskCreated``, for the task ``<name>@<occurrence in UTC ISO-8601>``, inside the
transaction of the event that caused it. Every id involved is derived from the definition and
the occurrence time, so a timer that writes the same occurrence twice (after a crash, or two
workers across a rebalance) creates one task.

Missed occurrences (no worker owned the partition when they came): only the latest one is
created when a worker looks again, and the ones before it are counted as ``skipped``. A
backlog of scrapes after an outage is rarely wanted, and one task says "it ran late" plainly.

This module is pure: an ``every`` schedule is arithmetic on milliseconds (:class:`Every`), in
UTC with no time zone and hence no daylight-saving jumps. Cron needs a cron parser, which the
core does not import: ``streams/cron.py`` implements :class:`Recurrence` with ``croniter`` and
the writers of ``PeriodicScheduled`` and ``PeriodicOccurrenceDue`` put the times it computes
into the events, so the fold (and every replay) only reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from streams.domain.state import PeriodicSpec, utc_iso

DEFINITION_PREFIX = "periodic:"
"""A definition's key on ``task.events``: this prefix and its name."""

MAX_NAME_CHARS = 100
"""Longest definition name: ``<name>@<ISO time>`` (up to 25 more) stays a valid task id."""

_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:=+~-]{{0,{MAX_NAME_CHARS - 1}}}")

MIN_EVERY_MS = 1_000
"""Shortest interval: each occurrence is a task with its own events, so sub-second periods are
refused rather than allowed to flood the log."""

MAX_CRON_CHARS = 200
"""Longest cron expression accepted."""

MAX_SKIPPED_COUNTED = 100_000
"""Missed occurrences are counted up to this many (a cron counted one by one stops here)."""


class Recurrence(Protocol):
    """When a schedule's occurrences are (Unix ms)."""

    def first_at_or_after(self, at_ms: int) -> int:
        """The first occurrence at or after ``at_ms``."""
        ...

    def latest_at_or_before(self, at_ms: int) -> int | None:
        """The last occurrence at or before ``at_ms``, None if there is none."""
        ...

    def count_between(self, first_ms: int, end_ms: int) -> int:
        """Occurrences in ``[first_ms, end_ms)``, at most :data:`MAX_SKIPPED_COUNTED`."""
        ...


@dataclass(frozen=True)
class Every:
    """Occurrences at ``start_ms + k * every_ms`` for every k >= 0."""

    start_ms: int
    every_ms: int

    def first_at_or_after(self, at_ms: int) -> int:
        if at_ms <= self.start_ms:
            return self.start_ms
        steps = -(-(at_ms - self.start_ms) // self.every_ms)  # ceiling division
        return self.start_ms + steps * self.every_ms

    def latest_at_or_before(self, at_ms: int) -> int | None:
        if at_ms < self.start_ms:
            return None
        return self.start_ms + (at_ms - self.start_ms) // self.every_ms * self.every_ms

    def count_between(self, first_ms: int, end_ms: int) -> int:
        if end_ms <= first_ms:
            return 0
        begin = self.first_at_or_after(first_ms)
        count = 0 if begin >= end_ms else -(-(end_ms - begin) // self.every_ms)
        return min(count, MAX_SKIPPED_COUNTED)

    def is_occurrence(self, at_ms: int) -> bool:
        """Whether ``at_ms`` is on the grid."""
        return at_ms >= self.start_ms and (at_ms - self.start_ms) % self.every_ms == 0


def every_of(spec: PeriodicSpec) -> Every | None:
    """The recurrence of an ``every`` schedule; None for a cron one (see ``streams/cron.py``)."""
    return Every(spec.start_ms, spec.every_ms) if spec.every_ms > 0 else None


def definition_id(name: str) -> str:
    """The key (task id) of the definition called ``name``."""
    return f"{DEFINITION_PREFIX}{name}"


def is_definition_id(task_id: str) -> bool:
    """Whether ``task_id`` is the key of a periodic definition."""
    return task_id.startswith(DEFINITION_PREFIX)


def name_of(definition: str) -> str:
    """The name of the definition keyed ``definition``."""
    return definition.removeprefix(DEFINITION_PREFIX)


def occurrence_id(name: str, occurrence_ms: int) -> str:
    """The task id of the occurrence at ``occurrence_ms``: ``<name>@2026-01-01T00:05:00Z``."""
    return f"{name}@{utc_iso(occurrence_ms)}"


def name_problem(name: object) -> str | None:
    """What is wrong with a definition name, or None."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return (
            f"a periodic name must have 1 to {MAX_NAME_CHARS} characters of "
            f"A-Z a-z 0-9 . _ : = + ~ -, starting with a letter or digit; got {name!r:.120}"
        )
    return None


def schedule_problem(every_ms: int, cron: str) -> str | None:
    """What is wrong with a schedule's shape (one of ``every_ms``, ``cron``), or None.

    Whether a cron expression parses is the adapter's to say; here only its size."""
    if (every_ms > 0) == bool(cron):
        return "a periodic definition has exactly one of every (an interval) and cron"
    if cron and len(cron) > MAX_CRON_CHARS:
        return f"cron expression over {MAX_CRON_CHARS} characters"
    if every_ms and every_ms < MIN_EVERY_MS:
        return f"every must be at least {MIN_EVERY_MS / 1000:g} s, got {every_ms / 1000:g} s"
    return None


@dataclass(frozen=True)
class DueOccurrence:
    """The occurrence a timer writes at some instant: it, the one after, and those skipped."""

    occurrence_ms: int
    next_due_ms: int
    skipped: int


def due_occurrence(spec: PeriodicSpec, now_ms: int, recurrence: Recurrence) -> DueOccurrence | None:
    """The occurrence to create at ``now_ms``: the latest one due (the missed-occurrence policy),
    or None if none is due yet."""
    if spec.next_due_ms is None or now_ms < spec.next_due_ms:
        return None
    latest = recurrence.latest_at_or_before(now_ms)
    if latest is None or latest < spec.next_due_ms:
        latest = spec.next_due_ms
    following = recurrence.first_at_or_after(latest + 1)
    skipped = recurrence.count_between(spec.next_due_ms, latest)
    return DueOccurrence(latest, following, skipped)
