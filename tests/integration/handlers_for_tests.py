"""Handlers that the scheduler tests run in real workers."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

from streams import NonRetryableError, RateLimitedError, TaskContext, handler

_throttle_answers: Counter[str] = Counter()

STARTS_FILE_ENV = "EXECUTOR_TEST_STARTS"
"""Names a file the lifecycle handlers append a line to on each start and cancellation
(``time what task_id attempt pid``); the worker inherits it from the test's environment."""


def _note(what: str, task: TaskContext) -> None:
    path = os.environ.get(STARTS_FILE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as file:
            file.write(f"{time.time():.3f} {what} {task.task_id} {task.attempt} {os.getpid()}\n")


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


@handler("always_throttled")
async def always_throttled(task: TaskContext) -> None:
    """Answers "rate limited, retry after 0.05 s" every time."""
    _note("started", task)
    raise RateLimitedError(retry_after_s=0.05)


@handler("sleepy")
async def sleepy(task: TaskContext) -> dict[str, float]:
    """Sleeps as many seconds as the target says; notes its start and its cancellation."""
    _note("started", task)
    try:
        await asyncio.sleep(float(task.target))
    except asyncio.CancelledError:
        _note("cancelled", task)
        raise
    _note("finished", task)
    return {"slept": float(task.target)}


@handler("fails_once")
async def fails_once(task: TaskContext) -> dict[str, int]:
    """Fails on attempt 1, succeeds on any later one (a retry by hand runs it again)."""
    if task.attempt == 1:
        raise RuntimeError("fails on its first attempt")
    return {"attempt": task.attempt}
