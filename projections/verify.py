"""The comparison behind ``orchestrator verify``: a fresh fold of the log against a live table.

Both sides are JSON documents of :func:`streams.domain.state_to_dict`, keyed by task id. The
live fold and the replay run the same pure function on the same records, so any difference is
a defect (or a table changed behind the fold's back) and is reported field by field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Mismatch(StrEnum):
    """How a task differs."""

    MISSING_LIVE = "missing_live"
    """The fold of the log has the task; the live table does not."""
    MISSING_REPLAYED = "missing_replayed"
    """The live table has a task that no record of the log produced."""
    DIFFERENT = "different"
    """Both have the task, with different fields."""


@dataclass(frozen=True)
class FieldDifference:
    """One field of a task whose two values differ (None: the side lacks the field)."""

    name: str
    replayed: Any
    live: Any


@dataclass(frozen=True)
class Difference:
    """A task whose live state is not the fold of the log."""

    task_id: str
    mismatch: Mismatch
    fields: tuple[FieldDifference, ...] = ()

    def describe(self) -> str:
        """One line: the task, how it differs, and each differing field's two values."""
        if self.mismatch is Mismatch.MISSING_LIVE:
            return f"{self.task_id}: in the log's fold, not in the live table"
        if self.mismatch is Mismatch.MISSING_REPLAYED:
            return f"{self.task_id}: in the live table, not in the log's fold"
        changes = "; ".join(
            f"{f.name}: log {_brief(f.replayed)} != live {_brief(f.live)}" for f in self.fields
        )
        return f"{self.task_id}: {changes}"

    def to_json(self) -> dict[str, Any]:
        """The difference as a JSON-ready dict."""
        return {
            "task_id": self.task_id,
            "mismatch": str(self.mismatch),
            "fields": [
                {"name": f.name, "replayed": f.replayed, "live": f.live} for f in self.fields
            ],
        }


def compare(
    replayed: Mapping[str, Mapping[str, Any]], live: Mapping[str, Mapping[str, Any]]
) -> list[Difference]:
    """Every task whose state differs between ``replayed`` and ``live``, sorted by task id."""
    differences = []
    for task_id in sorted(replayed.keys() | live.keys()):
        ours, theirs = replayed.get(task_id), live.get(task_id)
        if theirs is None:
            differences.append(Difference(task_id, Mismatch.MISSING_LIVE))
        elif ours is None:
            differences.append(Difference(task_id, Mismatch.MISSING_REPLAYED))
        elif ours != theirs:
            fields = tuple(
                FieldDifference(name, ours.get(name), theirs.get(name))
                for name in sorted(ours.keys() | theirs.keys())
                if ours.get(name) != theirs.get(name)
            )
            differences.append(Difference(task_id, Mismatch.DIFFERENT, fields))
    return differences


def _brief(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."
