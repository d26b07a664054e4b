"""The executor agent: runs the registered handler of each dispatched task.

For every go-ahead on ``task.dispatch`` whose task type has a handler here, it starts the
handler as its own asyncio task (the stream does not wait for it) and writes what happens as
events: ``TaskStarted``, ``TaskProgress``, then ``TaskCompleted`` with the return value or
``TaskFailed`` with the exception. The ids of these events derive from the task, the attempt
and the step, so a go-ahead read twice (after a crash) yields events the fold applies once.

The events go out with the worker's plain producer: a handler runs long after the go-ahead was
committed, outside any transaction. Each write waits for the broker's acknowledgement, so an
outcome the handler reported is durable before the handler's task ends. A handler still running
at the attempt's timeout is cancelled; the timer of the worker owning the task writes the
``TaskTimedOut``. Every failure, "rate limited" answer, timeout, interruption and cancellation
is logged as one line with the task id, platform, attempt and error (logger
``streams.agents.executor``: WARNING for failures, timeouts and interruptions, INFO for "rate
limited" answers and cancellations).

Stopping (SIGTERM): a service added to the app (:class:`_Drain`) is stopped before the fold,
the faust consumer and the web server (faust stops an app's services in the reverse order of
their start, and stops its consumer's fetching before any of them). It takes no new go-aheads,
gives running handlers ``shutdown_grace`` seconds to finish and record their outcome, then
cancels the rest and writes for each a ``TaskFailed`` marked ``interrupted``, acknowledged
before the worker goes on stopping: the fold retries such an attempt at once, without spending
it and without counting it as a "rate limited" answer.

Cancellation: :meth:`Executor.cancel` cancels the handler of a task that ended elsewhere (a
user cancelled it, say) and writes nothing for it. The fold calls it, through
``runtime.on_task_ended``, when it folds a terminal transition: faust's assignor gives a worker
the same partitions of every co-partitioned topic it subscribes to (same partition count, same
subscribers), so the worker folding partition p of ``task.events`` also reads partition p of
``task.dispatch`` (both keyed by task id) and runs the handlers of the tasks it folds. A
go-ahead read on a partition whose ``task.events`` partition is not assigned here is logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from faust.types import StreamT
from mode import Service

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

INTERRUPTED_ERROR = "interrupted: worker stopping"
"""The error of the ``TaskFailed`` written for a handler cut short by a stopping worker."""

LAST_WRITES_S = 10.0
"""While stopping: how long an outcome being written, a handler reacting to its cancellation,
and the interrupted outcomes are each waited for (on top of ``shutdown_grace``)."""


@dataclass
class _Run:
    """One handler running here."""

    dispatch: Dispatch
    task: asyncio.Future[None] = field(init=False)
    reporting: bool = False
    """The handler has ended: its outcome is being written (cancelling it now loses nothing)."""
    cancelled_because: str | None = None
    """Set by :meth:`Executor.cancel`: the task ended elsewhere, nothing is written."""


class Executor:
    """Runs handlers and reports their outcome as events."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.running: dict[str, _Run] = {}
        """The handlers running here, by task id."""
        self._stopping = False
        self._background: set[asyncio.Future[None]] = set()

    # -- starting

    def start(self, dispatch: Dispatch) -> None:
        """Run the task's handler in the background (no-op without a handler here).

        While the worker stops, a go-ahead is not run but given back at once (an interrupted
        outcome), so the task does not wait for its timeout.
        """
        handler = handler_for(dispatch.task_type)
        if handler is None or dispatch.task_id in self.running:
            return
        if self._stopping:
            log.info(
                "go-ahead given back, the worker is stopping: task=%s platform=%s attempt=%d",
                dispatch.task_id,
                dispatch.platform,
                dispatch.attempt,
                extra={
                    "task_id": dispatch.task_id,
                    "platform": dispatch.platform,
                    "attempt": dispatch.attempt,
                },
            )
            self._in_background(self._write_interrupted(dispatch))
            return
        run = _Run(dispatch)
        run.task = asyncio.ensure_future(self._run_safely(handler, run))
        self.running[dispatch.task_id] = run
        run.task.add_done_callback(lambda _: self._forget(run))

    def _forget(self, run: _Run) -> None:
        if self.running.get(run.dispatch.task_id) is run:
            del self.running[run.dispatch.task_id]

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        future = asyncio.ensure_future(work)
        self._background.add(future)
        future.add_done_callback(self._background.discard)

    # -- running

    async def _run_safely(self, handler: Handler, run: _Run) -> None:
        dispatch = run.dispatch
        try:
            await self._run(handler, run)
        except asyncio.CancelledError:
            if run.cancelled_because is not None:
                _log_outcome(logging.INFO, "handler cancelled", dispatch, run.cancelled_because)
            raise  # a stopping worker's drain writes the interrupted outcome itself
        except Exception:  # writing the outcome failed: the attempt will time out and retry
            log.exception(
                "executor failed on task=%s platform=%s attempt=%d",
                dispatch.task_id,
                dispatch.platform,
                dispatch.attempt,
                extra={
                    "task_id": dispatch.task_id,
                    "platform": dispatch.platform,
                    "attempt": dispatch.attempt,
                },
            )

    async def _run(self, handler: Handler, run: _Run) -> None:
        dispatch = run.dispatch
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
        outcome: Payload
        step = "failed"
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                result = await handler.function(context)
        except TimeoutError as exc:
            if deadline.expired():
                error = f"timeout after {dispatch.timeout_ms} ms, handler cancelled"
                _log_outcome(logging.WARNING, "handler timed out", dispatch, error)
                return  # the owning worker's timer writes TaskTimedOut
            outcome = self._failure(handler, dispatch, exc)  # the handler's own TimeoutError
        except RateLimitedError as exc:
            throttled_ms = max(1, int(exc.retry_after_s * 1000))
            _log_outcome(logging.INFO, "handler rate limited", dispatch, str(exc))
            outcome = TaskFailed(str(exc), True, throttled_ms)
        except Exception as exc:
            outcome = self._failure(handler, dispatch, exc)
        else:
            outcome = _completion(result)
            if isinstance(outcome, TaskFailed):
                _log_outcome(logging.WARNING, "handler failed", dispatch, outcome.error)
            else:
                step = "finished"
        run.reporting = True
        await self._write(dispatch, step, outcome)

    @staticmethod
    def _failure(handler: Handler, dispatch: Dispatch, exc: Exception) -> TaskFailed:
        error = f"{type(exc).__name__}: {exc}"
        _log_outcome(logging.WARNING, "handler failed", dispatch, error)
        return TaskFailed(error, handler.is_retryable(exc))

    # -- cancelling and stopping

    def cancel(self, task_id: str, reason: str) -> bool:
        """Cancel the handler running here for ``task_id``: the task ended elsewhere.

        Nothing is written for it (the task already has its outcome). Returns False if no
        handler of the task runs here, or if it already ended and is writing its outcome.
        """
        run = self.running.get(task_id)
        if run is None or run.task.done() or run.reporting:
            return False
        run.cancelled_because = reason
        run.task.cancel()
        return True

    def on_task_ended(self, task_id: str, reason: str = "") -> None:
        """The fold folded a terminal transition of ``task_id``: stop its handler if it runs."""
        self.cancel(task_id, f"the task ended ({reason})" if reason else "the task ended")

    async def drain(self, grace_s: float) -> None:
        """Stop taking go-aheads; give running handlers ``grace_s`` to finish; interrupt the rest.

        Returns once every outcome (the handlers' own and the interrupted ones) was
        acknowledged by the broker, or could not be within :data:`LAST_WRITES_S`.
        """
        self._stopping = True
        runs = list(self.running.values())
        if runs:
            log.info(
                "worker stopping: waiting up to %g s for %d running handler(s)", grace_s, len(runs)
            )
            await asyncio.wait({run.task for run in runs}, timeout=grace_s)
        writing = {run.task for run in runs if run.reporting and not run.task.done()}
        if writing:  # the handler ended: let its outcome reach the broker
            await asyncio.wait(writing, timeout=LAST_WRITES_S)
        late = [run for run in runs if not run.task.done()]
        for run in late:
            run.task.cancel()
        if late:
            await asyncio.wait({run.task for run in late}, timeout=LAST_WRITES_S)
        for run in late:
            if run.cancelled_because is None:
                self._in_background(self._write_interrupted(run.dispatch))
        if self._background:
            await asyncio.wait(set(self._background), timeout=LAST_WRITES_S)
        if runs:
            log.info(
                "worker stopping: %d handler(s) finished, %d interrupted",
                len(runs) - len(late),
                len(late),
            )

    async def _write_interrupted(self, dispatch: Dispatch) -> None:
        _log_outcome(logging.WARNING, "handler interrupted", dispatch, INTERRUPTED_ERROR)
        payload = TaskFailed(INTERRUPTED_ERROR, True, interrupted=True)
        try:
            await asyncio.wait_for(self._write(dispatch, "interrupted", payload), LAST_WRITES_S)
        except Exception:  # the attempt now waits for its timeout, as after a crash
            log.exception(
                "could not record the interruption of task=%s",
                dispatch.task_id,
                extra={
                    "task_id": dispatch.task_id,
                    "platform": dispatch.platform,
                    "attempt": dispatch.attempt,
                },
            )

    # -- writing

    async def _write(self, dispatch: Dispatch, step: str, payload: Payload) -> None:
        """Write one event about the dispatched attempt and wait until the broker has it."""
        event = Event(
            derived_event_id(dispatch.dispatch_id, step),
            dispatch.task_id,
            int(time.time() * 1000),
            Source.EXECUTOR,
            payload,
        )
        producer = await self._runtime.producer.get()
        await producer.send_and_wait(
            self._runtime.settings.topics.events,
            encode_event(event),
            key=dispatch.task_id.encode("utf-8"),
        )


def _log_outcome(level: int, what: str, dispatch: Dispatch, error: str) -> None:
    log.log(
        level,
        "%s: task=%s platform=%s attempt=%d error=%s",
        what,
        dispatch.task_id,
        dispatch.platform,
        dispatch.attempt,
        error,
        extra={
            "task_id": dispatch.task_id,
            "platform": dispatch.platform,
            "attempt": dispatch.attempt,
            "reason": error,
        },
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


class _Drain(Service):
    """Stops the executor when the worker stops: before the fold, the consumer and the web."""

    def __init__(self, executor: Executor, grace_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._executor = executor
        self._grace_s = grace_s

    async def on_stop(self) -> None:
        await self._executor.drain(self._grace_s)


def register(runtime: Runtime) -> Executor:
    """Add the executor agent to ``runtime.app``, and its drain to the app's stop."""
    executor = Executor(runtime)
    topic = runtime.raw_topic(runtime.settings.topics.dispatch)
    events = runtime.settings.topics.events
    # the fold calls this when it folds a terminal transition (see the module's docstring);
    # set by name: Runtime does not declare the field (yet)
    runtime.on_task_ended = executor.on_task_ended

    @runtime.app.agent(topic, name="executor", concurrency=1)
    async def execute(stream: StreamT[Any]) -> None:
        async for event in stream.events():
            try:
                dispatch = decode_dispatch(event.value)
            except SchemaError as exc:
                log.warning(
                    "executor skipped an undecodable go-ahead: %s",
                    exc,
                    extra={
                        "topic": event.message.topic,
                        "partition": event.message.partition,
                        "offset": event.message.offset,
                        "reason": str(exc),
                    },
                )
                continue
            partition = event.message.partition
            if handler_for(dispatch.task_type) is not None and not any(
                tp.topic == events and tp.partition == partition
                for tp in runtime.app.consumer.assignment()
            ):
                log.warning(
                    "go-ahead for task=%s read on %s[%d], whose %s partition is not assigned"
                    " here: cancelling the task will not reach its handler",
                    dispatch.task_id,
                    event.message.topic,
                    partition,
                    events,
                    extra={
                        "task_id": dispatch.task_id,
                        "platform": dispatch.platform,
                        "attempt": dispatch.attempt,
                        "topic": event.message.topic,
                        "partition": partition,
                    },
                )
            executor.start(dispatch)

    runtime.app.service(_Drain(executor, runtime.settings.shutdown_grace))  # type: ignore[arg-type]
    return executor
