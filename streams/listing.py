"""Listing tasks: the query of ``GET /tasks``, the compact item of each task, and pages merged.

Each worker answers for the partitions it folds (``local=1``); the worker a client asks merges
the answers of every worker owning partitions of ``task.events``. Every answer is sorted by
task id and holds at most ``limit`` tasks after the ``after`` cursor, so the merge is the first
``limit`` of the sorted union. Nothing here does I/O: the HTTP view (``streams.web``) and the
client (``streams.client``) share these definitions.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from streams.domain import Status, TaskState
from streams.domain.bounds import id_problem, name_problem
from streams.errors import ValidationError

DEFAULT_LIMIT = 100
MAX_LIMIT = 1_000
LISTED_STATUSES: tuple[Status, ...] = tuple(s for s in Status if s.is_created)
"""Statuses a listing may ask for (``awaited`` and ``missing`` mark ids that were never
created: they are not tasks, and never listed)."""
PARAMETERS = ("status", "platform", "task_type", "limit", "after", "local")
ITEM_FIELDS = (
    "task_id",
    "status",
    "task_type",
    "platform",
    "target",
    "priority",
    "attempt",
    "max_attempts",
    "progress",
    "last_error",
    "created_at_ms",
    "updated_at_ms",
    "completed_at_ms",
)
"""The fields of a listed task: a subset of ``GET /tasks/{id}`` (``max_attempts`` is its
``policy.max_attempts``)."""


@dataclass(frozen=True)
class TaskQuery:
    """Which tasks to list, and which page.

    Attributes:
        statuses: the statuses wanted (empty: any).
        platform, task_type: the value wanted (None: any).
        limit: the most tasks in the page, 1 to :data:`MAX_LIMIT`.
        after: the page starts after this task id (the last one of the previous page).
        local: only the tasks of the partitions the answering worker folds (what the worker
            asked by a client asks the others).
    """

    statuses: frozenset[Status] = frozenset()
    platform: str | None = None
    task_type: str | None = None
    limit: int = DEFAULT_LIMIT
    after: str | None = None
    local: bool = False

    def matches(self, state: TaskState) -> bool:
        """Whether ``state`` is a task this query lists (regardless of the page)."""
        return (
            state.status.is_created
            and (not self.statuses or state.status in self.statuses)
            and (self.platform is None or state.platform == self.platform)
            and (self.task_type is None or state.task_type == self.task_type)
        )

    def params(self, *, local: bool | None = None) -> dict[str, str]:
        """The query as URL parameters (``parse_query`` of them gives it back)."""
        params = {"limit": str(self.limit)}
        if self.statuses:
            params["status"] = ",".join(sorted(self.statuses))
        for name, value in (
            ("platform", self.platform),
            ("task_type", self.task_type),
            ("after", self.after),
        ):
            if value is not None:
                params[name] = value
        if self.local if local is None else local:
            params["local"] = "1"
        return params


def parse_query(pairs: Iterable[tuple[str, str]]) -> TaskQuery:
    """The query of ``GET /tasks`` from its URL parameters, as (name, value) pairs.

    ``status`` takes one status or several separated by commas; an empty value means "any".

    Raises:
        ValidationError: an unknown or repeated parameter, an unknown status (the message names
            the valid ones), an invalid platform, task type or ``after`` id, or a ``limit``
            that is not an integer from 1 to :data:`MAX_LIMIT`.
    """
    given: dict[str, str] = {}
    for name, value in pairs:
        if name not in PARAMETERS:
            raise ValidationError(
                f"unknown parameter {name!r}; the parameters are {', '.join(PARAMETERS)}"
            )
        if name in given:
            raise ValidationError(
                f"{name} is given twice; give it once (several statuses: status=failed,cancelled)"
            )
        given[name] = value
    return TaskQuery(
        statuses=_statuses(given.get("status", "")),
        platform=_name("platform", given.get("platform")),
        task_type=_name("task_type", given.get("task_type")),
        limit=_limit(given.get("limit")),
        after=_after(given.get("after")),
        local=_flag("local", given.get("local")),
    )


def _statuses(text: str) -> frozenset[Status]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    valid = {str(s): s for s in LISTED_STATUSES}
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise ValidationError(
            f"unknown status {', '.join(map(repr, unknown))}; the statuses are {', '.join(valid)}"
        )
    return frozenset(valid[name] for name in names)


def _name(parameter: str, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    problem = name_problem(parameter, value)
    if problem is not None:
        raise ValidationError(problem)
    return value


def _limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {value!r}")
    return limit


def _after(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    problem = id_problem("after", value)
    if problem is not None:
        raise ValidationError(f"{problem} (after is the last task id of the previous page)")
    return value


def _flag(parameter: str, value: str | None) -> bool:
    if value is None or value in ("", "0"):
        return False
    if value == "1":
        return True
    raise ValidationError(f"{parameter} must be 1 or 0, got {value!r}")


def list_item(state: TaskState) -> dict[str, Any]:
    """The compact document of a listed task (the fields :data:`ITEM_FIELDS` names)."""
    return {
        "task_id": state.task_id,
        "status": str(state.status),
        "task_type": state.task_type,
        "platform": state.platform,
        "target": state.target,
        "priority": state.priority,
        "attempt": state.attempt,
        "max_attempts": state.policy.max_attempts,
        "progress": state.progress,
        "last_error": state.last_error,
        "created_at_ms": state.created_at_ms,
        "updated_at_ms": state.updated_at_ms,
        "completed_at_ms": state.completed_at_ms,
    }


def select(states: Iterable[TaskState], query: TaskQuery) -> list[dict[str, Any]]:
    """The page of ``states`` (sorted by task id, all after ``query.after``) that ``query``
    lists: the first ``query.limit`` that match, as :func:`list_item` documents."""
    page = []
    for state in states:
        if query.matches(state):
            page.append(list_item(state))
            if len(page) >= query.limit:
                break
    return page


def merge(pages: Iterable[list[dict[str, Any]]], limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` items of ``pages`` (each sorted by task id), sorted by task id; a
    task listed by two pages (two workers that both folded its partition) is listed once."""
    merged: list[dict[str, Any]] = []
    for item in heapq.merge(*pages, key=lambda item: str(item["task_id"])):
        if merged and merged[-1]["task_id"] == item["task_id"]:
            continue
        merged.append(item)
        if len(merged) >= limit:
            break
    return merged


def next_after(page: list[dict[str, Any]], limit: int) -> str | None:
    """The cursor of the next page: the last task id of a full page (None: this was the last).

    A full page may be followed by an empty one (exactly ``limit`` tasks were left)."""
    return str(page[-1]["task_id"]) if len(page) >= limit else None
