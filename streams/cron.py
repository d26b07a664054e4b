"""Cron schedules of periodic definitions, with ``croniter``: the adapter the pure core lacks.

The core (``streams.domain.periodic``) computes ``every`` schedules itself and reads the times
of a cron schedule from its events; this module computes those times, for the client (the
first occurrence of a new definition) and for the timer (each occurrence and the next one).
Expressions are standard five-field cron (minute hour day-of-month month day-of-week) read in
UTC: no time zone, so no daylight-saving gaps or repeats.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import croniter

from streams.domain.periodic import MAX_CRON_CHARS, MAX_SKIPPED_COUNTED, Recurrence, every_of
from streams.domain.state import PeriodicSpec

log = logging.getLogger(__name__)

_SECOND_MS = 1_000


def cron_problem(expression: object) -> str | None:
    """What is wrong with a cron expression, or None."""
    if not isinstance(expression, str) or not expression.strip():
        return f"cron must be a non-empty string, got {expression!r:.80}"
    if len(expression) > MAX_CRON_CHARS:
        return f"cron expression over {MAX_CRON_CHARS} characters"
    if len(expression.split()) != 5:
        return (
            "cron must have five fields (minute hour day-of-month month day-of-week), "
            f"got {expression!r}"
        )
    if not croniter.is_valid(expression):
        return f"not a valid cron expression: {expression!r}"
    return None


@dataclass(frozen=True)
class Cron:
    """The occurrences of ``expression`` (UTC) at or after ``start_ms``, in whole seconds."""

    expression: str
    start_ms: int

    def first_at_or_after(self, at_ms: int) -> int:
        at_ms = max(at_ms, self.start_ms)
        ceiling_s = -(-at_ms // _SECOND_MS)
        # croniter answers strictly after its base: one second before the first candidate
        return self._next(ceiling_s - 1)

    def latest_at_or_before(self, at_ms: int) -> int | None:
        base = _utc(at_ms // _SECOND_MS + 1)
        latest = int(croniter(self.expression, base).get_prev(float)) * _SECOND_MS
        return latest if latest >= self.start_ms else None

    def count_between(self, first_ms: int, end_ms: int) -> int:
        count = 0
        at = self.first_at_or_after(first_ms)
        while at < end_ms and count < MAX_SKIPPED_COUNTED:
            count += 1
            at = self.first_at_or_after(at + 1)
        return count

    def _next(self, after_s: int) -> int:
        return int(croniter(self.expression, _utc(after_s)).get_next(float)) * _SECOND_MS


def recurrence_of(spec: PeriodicSpec) -> Recurrence | None:
    """The recurrence of a definition's schedule: ``every`` from the core, cron from here;
    None (logged) for a cron expression that does not parse (written by another producer)."""
    every = every_of(spec)
    if every is not None:
        return every
    problem = cron_problem(spec.cron)
    if problem is not None:
        log.warning("periodic definition with a bad schedule, not run: %s", problem)
        return None
    return Cron(spec.cron, spec.start_ms)


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
