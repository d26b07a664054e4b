"""Handlers for ``tests/integration/test_limits_at_call.py``, run by real worker processes.

Each handler appends one JSON line to the file named by :data:`ENTRIES_FILE_ENV` as its very
first step, before any ``await`` (``"what": "start"``), and one when it leaves (``"end"``, also
after a cancellation, which first writes ``"cancelled"``). Several worker processes share the
file: it is opened with ``O_APPEND`` and each line is one ``os.write``, so lines never mix. The
workers inherit the variable from the test's environment (``streams.process.start_worker``
copies ``os.environ``).

``at_call`` reads what to do from its target, ``INDEX:SLEEP_MS:MODE``, so every run of a task
behaves the same wherever it runs:

- ``ok``: sleep ``SLEEP_MS`` and return;
- ``rl``: on the task's first call anywhere, answer "rate limited, retry after 0.5 s" (a marker
  file created with ``O_EXCL`` next to the entries file says the call was made, across
  processes); later calls behave as ``ok``;
- ``err``: fail attempt 1 with a retryable error; later attempts behave as ``ok``.

``at_call_hold`` sleeps as many seconds as its target says.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from streams import RateLimitedError, TaskContext, handler

ENTRIES_FILE_ENV = "LIMITS_AT_CALL_ENTRIES"
"""Names the file the handlers append their JSON lines to."""

RETRY_AFTER_S = 0.5


def _append(what: str, task: TaskContext, **extra: Any) -> None:
    path = os.environ.get(ENTRIES_FILE_ENV)
    if not path:
        return
    line = {
        "what": what,
        "t": time.time(),
        "pid": os.getpid(),
        "dispatch_id": task.dispatch_id,
        "task_id": task.task_id,
        "attempt": task.attempt,
        **extra,
    }
    data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _first_call(task: TaskContext) -> bool:
    """True only for the first call of this task in any process (a marker file says so)."""
    path = os.environ.get(ENTRIES_FILE_ENV)
    if not path:
        return False
    marks = f"{path}.marks"
    os.makedirs(marks, exist_ok=True)
    try:
        fd = os.open(os.path.join(marks, task.task_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return False
    os.close(fd)
    return True


@handler("at_call")
async def at_call(task: TaskContext) -> dict[str, Any]:
    _append("start", task)
    try:
        _, sleep_ms, mode = task.target.split(":")
        if mode == "rl" and _first_call(task):
            raise RateLimitedError(retry_after_s=RETRY_AFTER_S)
        if mode == "err" and task.attempt == 1:
            raise RuntimeError("transient failure on attempt 1")
        await asyncio.sleep(int(sleep_ms) / 1000)
        return {"attempt": task.attempt}
    except asyncio.CancelledError:
        _append("cancelled", task)
        raise
    finally:
        _append("end", task)


@handler("at_call_hold")
async def at_call_hold(task: TaskContext) -> dict[str, float]:
    _append("start", task)
    try:
        await asyncio.sleep(float(task.target))
        return {"slept": float(task.target)}
    except asyncio.CancelledError:
        _append("cancelled", task)
        raise
    finally:
        _append("end", task)
