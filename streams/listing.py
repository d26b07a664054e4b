"""Listing tasks: the query of ``GET /tasks``, the compact item of each task, and pages merged.

Each worker answers for the partitions it folds (``local=1``); the worker a client asks merges
the answers of every worker owning partitions of ``task.events``. Every answer is sorted by
task id, holds at most ``limit`` tasks after the ``after`` cursor and says how far its scan got
(:class:`Part`), so the page is the first ``limit`` tasks of the union up to where the least
advanced worker stopped (:func:`merge`). Nothing here does I/O: the HTTP view
(``streams.web``) and the client (``streams.client``) share these definitions.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from streams.domain import Status, TaskState
from streams.domain.bounds import id_problem, name_problem
from streams.domain.state import utc_iso, waiting_on
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
    "waiting_on",
    "waiting_on_text",
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
        "waiting_on": (waits := waiting_on(state)),
        "waiting_on_text": waiting_words(waits),
    }


DEPENDENCIES_NAMED = 3
"""Open dependencies :func:`waiting_words` names; the others are counted."""


def waiting_words(waits: dict[str, Any] | None) -> str | None:
    """``waiting_on`` (``streams.domain.state.waiting_on``) as one sentence for people, with
    times in UTC (None: the task waits for nothing). Ids, errors and details are quoted as
    they are: whoever renders the sentence escapes it."""
    if waits is None:
        return None
    reason = str(waits.get("reason", ""))
    detail = waits.get("detail") or ""
    if reason == "not_before":
        return f"delayed: not before {_at(waits.get('not_before_ms'))}"
    if reason == "dependencies":
        open_ids = [str(d) for d in waits.get("dependencies", ())]
        named = ", ".join(open_ids[:DEPENDENCIES_NAMED])
        more = len(open_ids) - DEPENDENCIES_NAMED
        words = f"waiting for {len(open_ids)} dependenc{'y' if len(open_ids) == 1 else 'ies'}"
        words += f": {named}" if open_ids else ""
        words += f" and {more} more" if more > 0 else ""
        if waits.get("not_before_ms"):
            words += f", and not before {_at(waits.get('not_before_ms'))}"
        return words
    if reason == "periodic":
        return f"periodic: next occurrence at {_at(waits.get('next_due_ms'))}"
    if reason == "retry":
        error = waits.get("last_error")
        words = f"retry due at {_at(waits.get('due_at_ms'))}"
        return f"{words} after: {error}" if error else words
    until = waits.get("until_ms")
    until_words = f" until {_at(until)}" if until else ""
    held = {
        "rate_limit": "held by a rate limit",
        "concurrency": "held by the platform's concurrency cap",
        "overall_concurrency": "held by the worker's overall concurrency cap",
        "paused": "held: the platform is paused",
    }
    if reason in held:
        return f"{held[reason]}{f' ({detail})' if detail else ''}{until_words}"
    if reason == "scheduling":
        return "queued: waiting for its platform's scheduler or a caller"
    return f"{reason}{f': {detail}' if detail else ''}{until_words}"


def _at(at_ms: Any) -> str:
    return utc_iso(int(at_ms)) if isinstance(at_ms, int) else "an unknown time"


SCAN_BUDGET = 10_000
"""Tasks one worker's answer reads at most: the scan runs on the worker's event loop, so a
filter that matches few tasks of a large table is answered in bounded steps (a short page, with
a cursor to go on from), never by a scan that stalls the fold."""


@dataclass(frozen=True)
class Part:
    """One worker's answer: its matches, and how far its scan is complete.

    Attributes:
        tasks: the matching tasks, as :func:`list_item` documents, sorted by task id.
        complete_to: every task of the worker up to this id (included) was read; None: all of
            them were (its scan reached the end).
    """

    tasks: list[dict[str, Any]]
    complete_to: str | None


def select(states: Iterable[TaskState], query: TaskQuery, budget: int = SCAN_BUDGET) -> Part:
    """One worker's answer to ``query`` from ``states`` (sorted by task id, all after
    ``query.after``): the first ``query.limit`` matches, reading at most ``budget`` states."""
    tasks: list[dict[str, Any]] = []
    for read, state in enumerate(states, start=1):
        if query.matches(state):
            tasks.append(list_item(state))
            if len(tasks) >= query.limit:
                return Part(tasks, state.task_id)
        if read >= budget:
            return Part(tasks, state.task_id)
    return Part(tasks, None)


def merge(parts: Iterable[Part], limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """The page the workers' ``parts`` make, and the cursor of the next page.

    The page holds, sorted by task id, the first ``limit`` tasks up to the smallest
    ``complete_to`` (beyond it a worker may have matches it has not read yet). The cursor is
    the page's last id if the page is full, else that smallest ``complete_to``: a page may then
    be short, or empty, with more to come. None: no task is left. A task listed by two parts
    (two workers that both folded its partition, during a rebalance) is listed once.
    """
    parts = list(parts)
    bounds = [part.complete_to for part in parts if part.complete_to is not None]
    bound = min(bounds) if bounds else None
    page: list[dict[str, Any]] = []
    for item in heapq.merge(*(p.tasks for p in parts), key=lambda item: str(item["task_id"])):
        task_id = str(item["task_id"])
        if bound is not None and task_id > bound:
            break
        if page and page[-1]["task_id"] == task_id:
            continue
        page.append(item)
        if len(page) >= limit:
            return page, task_id
    return page, bound
