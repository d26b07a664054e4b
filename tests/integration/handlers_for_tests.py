"""Handlers that the scheduler tests run in real workers."""

from __future__ import annotations

import asyncio
from collections import Counter

from streams import NonRetryableError, RateLimitedError, TaskContext, handler

_throttle_answers: Counter[str] = Counter()


@handler("noop")
async def noop(task: TaskContext) -> dict[str, str]:
    return {"target": task.target}


@handler("slow")
async def slow(task: TaskContext) -> dict[str, int]:
    await task.progress(0.5)
    await asyncio.sleep(0.2)
    return {"attempt": task.attempt}


@handler("flaky")
async def flaky(task: TaskContext) -> dict[str, int]:
    """Fails on attempts 1 and 2, succeeds on 3."""
    if task.attempt < 3:
        raise RuntimeError(f"transient failure on attempt {task.attempt}")
    return {"attempt": task.attempt}


@handler("hang")
async def hang(task: TaskContext) -> None:
    await asyncio.sleep(3600)


@handler("fatal", non_retryable=(LookupError,))
async def fatal(task: TaskContext) -> None:
    raise LookupError(f"profile {task.target} does not exist")


@handler("throttled")
async def throttled(task: TaskContext) -> dict[str, int]:
    """Answers "rate limited" as many times as the target says (``"429x3"``), then succeeds."""
    times = int(task.target.rsplit("x", 1)[-1]) if "x" in task.target else 1
    if _throttle_answers[task.task_id] < times:
        _throttle_answers[task.task_id] += 1
        raise RateLimitedError(retry_after_s=2.0)
    return {"answered_429": _throttle_answers[task.task_id]}


@handler("gone")
async def gone(task: TaskContext) -> None:
    raise NonRetryableError("account deleted")
