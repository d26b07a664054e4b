"""The client's side of delayed and periodic tasks: validating what a caller asks for and
turning it into events (``TaskCreated.not_before_ms``, ``PeriodicScheduled``), and listing the
periodic definitions the workers hold.

Times are ``datetime`` objects with a time zone; a naive one is refused rather than guessed
(local time or UTC?). Intervals are ``timedelta`` (or seconds); cron expressions are
five-field, read in UTC (``streams/cron.py``).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from streams.cron import Cron, cron_problem
from streams.domain import PeriodicScheduled, TaskCreated
from streams.domain.bounds import MAX_POLICY_MS
from streams.domain.periodic import MIN_EVERY_MS, name_problem
from streams.errors import UnauthorizedError, ValidationError

_MS = 1000


def instant_ms(name: str, value: object) -> int:
    """A timezone-aware ``datetime`` as Unix ms.

    Raises:
        ValidationError: not a datetime, or a naive one.
    """
    if not isinstance(value, datetime):
        raise ValidationError(f"{name} must be a timezone-aware datetime, got {value!r:.80}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(
            f"{name} must be timezone-aware (e.g. datetime.now(UTC) + timedelta(minutes=5)), "
            f"got the naive datetime {value.isoformat()}"
        )
    return math.floor(value.timestamp() * _MS)


def not_before_ms(value: object, now_ms: int) -> int:
    """``TaskCreated.not_before_ms`` for ``create_task(not_before=value)``: 0 for None or a
    time not after now (a time in the past means now).

    Raises:
        ValidationError: not a timezone-aware datetime, or more than 366 days ahead.
    """
    if value is None:
        return 0
    at_ms = instant_ms("not_before", value)
    if at_ms <= now_ms:
        return 0
    if at_ms - now_ms > MAX_POLICY_MS:
        raise ValidationError(f"not_before must be at most 366 days ahead, got {value}")
    return at_ms


def interval_ms(every: object) -> int:
    """``every`` (a ``timedelta`` or seconds) in ms, from 1 s to 366 days.

    Raises:
        ValidationError: another type, not finite, zero, negative, under 1 s or too long.
    """
    if isinstance(every, timedelta):
        seconds = every.total_seconds()
    elif isinstance(every, int | float) and not isinstance(every, bool):
        seconds = float(every)
    else:
        raise ValidationError(f"every must be a timedelta or seconds, got {every!r:.80}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValidationError(f"every must be a positive interval, got {seconds:g} s")
    milliseconds = round(seconds * _MS)
    if milliseconds < MIN_EVERY_MS:
        raise ValidationError(f"every must be at least {MIN_EVERY_MS // _MS} s, got {seconds:g} s")
    if milliseconds > MAX_POLICY_MS:
        raise ValidationError(f"every must be at most 366 days, got {seconds:g} s")
    return milliseconds


def periodic_scheduled(
    name: str,
    template: TaskCreated,
    every: object,
    cron: object,
    start_at: object,
    now_ms: int,
) -> PeriodicScheduled:
    """The ``PeriodicScheduled`` of ``schedule_periodic`` (see ``TaskManager``).

    ``start_at`` None: an ``every`` grid starts one interval from now (the first occurrence
    then), a cron schedule at its first match after now.

    Raises:
        ValidationError: a bad name, both or neither of ``every`` and ``cron``, a bad interval
            or cron expression, a naive ``start_at``.
    """
    problem = name_problem(name)
    if problem is not None:
        raise ValidationError(problem)
    if (every is None) == (cron is None):
        raise ValidationError("give exactly one of every (a timedelta) and cron (an expression)")
    every_ms = 0 if every is None else interval_ms(every)
    start_ms = None if start_at is None else instant_ms("start_at", start_at)
    expression, first_due_ms = "", 0
    if cron is not None:
        problem = cron_problem(cron)
        if problem is not None:
            raise ValidationError(problem)
        expression = str(cron)
        start_ms = now_ms if start_ms is None else start_ms
        first_due_ms = Cron(expression, start_ms).first_at_or_after(max(start_ms, now_ms))
    elif start_ms is None:
        start_ms = now_ms + every_ms
    if start_ms < 0:
        raise ValidationError("start_at must be after 1970")
    return PeriodicScheduled(
        task_type=template.task_type,
        platform=template.platform,
        target=template.target,
        priority=template.priority,
        timeout_ms=template.timeout_ms,
        max_attempts=template.max_attempts,
        retry_delay_ms=template.retry_delay_ms,
        result_ttl_ms=template.result_ttl_ms,
        dependency_wait_ms=template.dependency_wait_ms,
        max_rate_limited=template.max_rate_limited,
        every_ms=every_ms,
        cron=expression,
        start_ms=start_ms,
        first_due_ms=first_due_ms,
    )


async def list_definitions(
    http: aiohttp.ClientSession, api_url: str, topic: str
) -> list[dict[str, Any]]:
    """Every periodic definition (active and removed) the workers hold, sorted by name: the
    ``GET /periodic`` of each worker that owns partitions of ``topic``.

    Raises:
        aiohttp.ClientError, TimeoutError: a worker did not answer.
        ValueError: a worker answered with an error (rebalancing: ask again).
        UnauthorizedError: a worker refused the session's bearer token (or its lack).
    """
    base = api_url.rstrip("/")
    async with http.get(f"{base}/router/topics") as response:
        _refuse_unauthorised(response, http)
        routes = await response.json(content_type=None) if response.status == 200 else {}
    workers = sorted({h.rstrip("/") for h, topics in routes.items() if topics.get(topic)}) or [base]
    definitions: dict[str, dict[str, Any]] = {}
    for worker in workers:
        async with http.get(f"{worker}/periodic") as response:
            _refuse_unauthorised(response, http)
            document = await response.json(content_type=None)
            if response.status != 200:
                raise ValueError(f"{worker} answered {response.status}: {document}")
        for definition in document["definitions"]:
            definitions[definition["name"]] = definition
    return [definitions[name] for name in sorted(definitions)]


def _refuse_unauthorised(response: aiohttp.ClientResponse, http: aiohttp.ClientSession) -> None:
    if response.status == 401:
        raise UnauthorizedError(str(response.url), "Authorization" in http.headers)
