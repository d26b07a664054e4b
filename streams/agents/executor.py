"""The executor agent: runs the registered handler of each dispatched task.

For every go-ahead on ``task.dispatch`` whose task type has a handler here, it starts the
handler as its own asyncio task (the stream does not wait for it) and writes what happens as
events: ``TaskStarted``, ``TaskProgress``, then ``TaskCompleted`` with the return value or
``TaskFailed`` with the exception. The ids of these events derive from the task, the attempt
and the step, so a go-ahead read twice (after a crash) yields events the fold applies once.

The events go out with a plain producer: a handler runs long after the go-ahead was committed,
outside any transaction. A handler still running at the attempt's timeout is cancelled; the
timer of the worker owning the task writes the ``TaskTimedOut``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from faust.types import StreamT

from schemas import encode_event
from schemas.records import decode_dispatch
from streams.app import Runtime
from streams.domain import (
    MAX_RESULT_BYTES,
    Event,
    Payload,
    Source,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    derived_event_id,
)
from streams.domain.signals import Dispatch
from streams.errors import SchemaError
from streams.handlers import Handler, RateLimitedError, TaskContext, handler_for

log = logging.getLogger(__name__)


class Executor:
    """Runs handlers and reports their outcome as events."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.running: dict[str, asyncio.Task[None]] = {}

    def start(self, dispatch: Dispatch) -> None:
        """Run the task's handler in the background (no-op without a handler here)."""
        handler = handler_for(dispatch.task_type)
        if handler is None or dispatch.task_id in self.running:
            return
        run = asyncio.ensure_future(self._run_safely(handler, dispatch))
        self.running[dispatch.task_id] = run
        run.add_done_callback(lambda _: self.running.pop(dispatch.task_id, None))

    async def _run_safely(self, handler: Handler, dispatch: Dispatch) -> None:
        try:
            await self._run(handler, dispatch)
        except Exception:  # writing the outcome failed: the attempt will time out and retry
            log.exception("executor failed on %s attempt %d", dispatch.task_id, dispatch.attempt)

    async def _run(self, handler: Handler, dispatch: Dispatch) -> None:
        steps = 0

        async def report_progress(fraction: float) -> None:
            nonlocal steps
            steps += 1
            await self._write(dispatch, f"progress-{steps}", TaskProgress(float(fraction)))

        context = TaskContext(
            dispatch.task_id,
            dispatch.task_type,
            dispatch.platform,
            dispatch.target,
            dispatch.attempt,
            report_progress,
        )
        await self._write(dispatch, "started", TaskStarted())
        timeout_s = dispatch.timeout_ms / 1000 if dispatch.timeout_ms > 0 else None
        try:
            result = await asyncio.wait_for(handler.function(context), timeout_s)
        except TimeoutError:
            log.warning(
                "handler of %s attempt %d cancelled at its timeout",
                dispatch.task_id,
                dispatch.attempt,
            )
            return  # the owning worker's timer writes TaskTimedOut
        except RateLimitedError as exc:
            throttled_ms = max(1, int(exc.retry_after_s * 1000))
            await self._write(dispatch, "failed", TaskFailed(str(exc), True, throttled_ms))
            return
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            await self._write(dispatch, "failed", TaskFailed(error, handler.is_retryable(exc)))
            return
        await self._write(dispatch, "finished", _completion(result))

    async def _write(self, dispatch: Dispatch, step: str, payload: Payload) -> None:
        event = Event(
            derived_event_id(dispatch.dispatch_id, step),
            dispatch.task_id,
            int(time.time() * 1000),
            Source.EXECUTOR,
            payload,
        )
        key = dispatch.task_id.encode("utf-8")
        await self._runtime.producer.send(
            self._runtime.settings.topics.events, key, encode_event(event)
        )


def _completion(result: Any) -> Payload:
    """``TaskCompleted`` for a handler's return value, or a non-retryable failure if unusable."""
    if isinstance(result, bytes | bytearray):
        body, content_type = bytes(result), "application/octet-stream"
    else:
        try:
            body = json.dumps(result, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            return TaskFailed(f"handler result is not JSON-serialisable: {exc}", retryable=False)
        content_type = "application/json"
    if len(body) > MAX_RESULT_BYTES:
        return TaskFailed(
            f"handler result of {len(body)} bytes exceeds {MAX_RESULT_BYTES}", retryable=False
        )
    return TaskCompleted(body, content_type)


def register(runtime: Runtime) -> Executor:
    """Add the executor agent to ``runtime.app``."""
    executor = Executor(runtime)
    topic = runtime.raw_topic(runtime.settings.topics.dispatch)

    @runtime.app.agent(topic, name="executor", concurrency=1)
    async def execute(stream: StreamT[Any]) -> None:
        async for value in stream:
            try:
                executor.start(decode_dispatch(value))
            except SchemaError as exc:
                log.warning("executor skipped an undecodable go-ahead: %s", exc)

    return executor
