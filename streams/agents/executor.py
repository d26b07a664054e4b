"""The executor: runs the registered handler of each task this worker dispatched.

The scheduler (``streams.agents.scheduler``) hands it each go-ahead once the transaction that
dispatched it has committed; a go-ahead is never read back from ``task.dispatch``, so a
dispatch calls its handler at most once, in the worker that decided it. Each run writes
``TaskStarted``, waits until the go-ahead's ``not_before``, and calls the handler only if it
is not past ``not_after``, checked with no ``await`` between the check and the handler's first
step (docs/rate-limits.md); a go-ahead past its slot is given back with a ``TaskFailed``
marked ``interrupted`` (retried at once, the attempt not spent), its dispatch still counted in
the windows. Then ``TaskProgress``, and ``TaskCompleted`` with the return value or
``TaskFailed`` with the exception. The ids of these events derive from the dispatch and the
step, so an event written twice is applied once.

The events go out with the worker's plain producer: a handler runs long after the go-ahead was
committed, outside any transaction. Each write waits for the broker's acknowledgement, so an
outcome the handler reported is durable before the handler's task ends. A handler still running
at the attempt's timeout is cancelled; the timer of the worker owning the task writes the
``TaskTimedOut``. Every failure, "rate limited" answer, timeout, missed slot, interruption and
cancellation is logged as one line with the task id, platform, attempt and error (logger
``streams.agents.executor``: WARNING for failures, timeouts, missed slots and interruptions,
INFO for "rate limited" answers and cancellations).

Stopping (SIGTERM): a service added to the app (:class:`Drain`) is stopped before the
scheduler, the fold, the faust consumer and the web server (faust stops an app's services in
the reverse order of their start). It stops the scheduler's dispatching, gives running
handlers ``shutdown_grace`` seconds to finish and record their outcome, then cancels the rest
and writes for each a ``TaskFailed`` marked ``interrupted``, acknowledged before the worker
goes on stopping: the fold retries such an attempt at once, without spending it and without
counting it as a "rate limited" answer.

Cancellation: :meth:`Executor.stop` cancels the handler of a task that ended elsewhere (a user
cancelled it, say), waits until it has stopped, and writes nothing for it. The scheduler calls
it when a task's slot is released (before the slot is freed), and the fold, through
``runtime.on_task_ended``, when it folds a terminal transition of a task whose handler runs
here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from mode import Service

from schemas import encode_event
from streams.agents.transactional import delivery
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
from streams.domain.signatures import signed_headers
from streams.handlers import Handler, RateLimitedError, TaskContext, handler_for

log = logging.getLogger(__name__)

INTERRUPTED_ERROR = "interrupted: worker stopping"
"""The error of the ``TaskFailed`` written for a handler cut short by a stopping worker."""

SLOT_MISSED_ERROR = "start slot missed"
"""The error of the ``TaskFailed`` that gives back a go-ahead that came past its start slot."""

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
    started: asyncio.Future[None] | None = None
    """The write of its ``TaskStarted`` (every later write of the attempt waits for it)."""


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
                extra=_about(dispatch),
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
                extra=_about(dispatch),
            )

    async def _run(self, handler: Handler, run: _Run) -> None:
        dispatch = run.dispatch
        steps = 0

        # TaskStarted goes out now, but the handler does not wait for its acknowledgement
        # (its start slot is short); every later write of the attempt waits for it first
        started = run.started = delivery(
            asyncio.ensure_future(self._write(dispatch, "started", TaskStarted()))
        )

        async def report_progress(fraction: float) -> None:
            nonlocal steps
            steps += 1
            await started
            await self._write(dispatch, f"progress-{steps}", TaskProgress(float(fraction)))

        context = TaskContext(
            dispatch.task_id,
            dispatch.task_type,
            dispatch.platform,
            dispatch.target,
            dispatch.attempt,
            report_progress,
            dispatch.dispatch_id,
        )
        early_s = dispatch.not_before_ms / 1000 - time.time()
        if early_s > 0:
            await asyncio.sleep(early_s)
        timeout_s = dispatch.timeout_ms / 1000 if dispatch.timeout_ms > 0 else None
        outcome: Payload
        step = "failed"
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                # no await between this check and the handler's first step
                late_ms = int(time.time() * 1000) - dispatch.not_after_ms
                if dispatch.not_after_ms and late_ms > 0:
                    raise _SlotMissed(late_ms)
                result = await handler.function(context)
        except TimeoutError as exc:
            if deadline.expired():
                error = f"timeout after {dispatch.timeout_ms} ms, handler cancelled"
                _log_outcome(logging.WARNING, "handler timed out", dispatch, error)
                return  # the owning worker's timer writes TaskTimedOut
            outcome = self._failure(handler, dispatch, exc)  # the handler's own TimeoutError
        except _SlotMissed as missed:
            error = f"{SLOT_MISSED_ERROR}: {missed.late_ms} ms after not_after, handler not called"
            _log_outcome(logging.WARNING, "go-ahead given back", dispatch, error)
            self._runtime.metrics.slots_missed.labels(dispatch.platform).inc()
            run.reporting = True
            await started
            await self._write(dispatch, "slot-missed", TaskFailed(error, True, interrupted=True))
            return
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
        await started
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

    async def warm_up(self) -> None:
        """Start the producer of the handlers' events and learn ``task.events``' partitions
        now, so the first go-ahead does not spend its start slot connecting."""
        producer = await self._runtime.producer.get()
        await producer.partitions_for(self._runtime.settings.topics.events)

    async def stop(self, task_id: str, reason: str, timeout_s: float) -> None:
        """Cancel ``task_id``'s handler if it runs here, and wait (at most ``timeout_s``) until
        it has stopped, so its slot is freed only then. Writes nothing for it."""
        run = self.running.get(task_id)
        if run is None or not self.cancel(task_id, reason):
            return
        done, _ = await asyncio.wait({run.task}, timeout=timeout_s)
        if not done:
            log.warning(
                "handler of task=%s did not stop within %g s of its cancellation",
                task_id,
                timeout_s,
                extra={"task_id": task_id, "platform": run.dispatch.platform},
            )

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
                self._in_background(self._write_interrupted(run.dispatch, run.started))
        if self._background:
            await asyncio.wait(set(self._background), timeout=LAST_WRITES_S)
        if runs:
            log.info(
                "worker stopping: %d handler(s) finished, %d interrupted",
                len(runs) - len(late),
                len(late),
            )

    async def _write_interrupted(
        self, dispatch: Dispatch, started: asyncio.Future[None] | None = None
    ) -> None:
        _log_outcome(logging.WARNING, "handler interrupted", dispatch, INTERRUPTED_ERROR)
        payload = TaskFailed(INTERRUPTED_ERROR, True, interrupted=True)
        try:
            if started is not None:  # after its TaskStarted, or the fold refuses that
                await asyncio.wait_for(asyncio.shield(started), LAST_WRITES_S)
            await asyncio.wait_for(self._write(dispatch, "interrupted", payload), LAST_WRITES_S)
        except Exception:  # the attempt now waits for its timeout, as after a crash
            log.exception(
                "could not record the interruption of task=%s",
                dispatch.task_id,
                extra=_about(dispatch),
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
        key, value = dispatch.task_id.encode("utf-8"), encode_event(event)
        producer = await self._runtime.producer.get()
        await producer.send_and_wait(
            self._runtime.settings.topics.events,
            value,
            key=key,
            # the fold takes an executor's report only signed (streams.domain.signatures)
            headers=signed_headers(self._runtime.signing, key, value),
        )


def _about(dispatch: Dispatch) -> dict[str, Any]:
    """The fields of a log line about the attempt ``dispatch`` runs (see ``streams.logs``)."""
    return {"task_id": dispatch.task_id, "platform": dispatch.platform, "attempt": dispatch.attempt}


def _log_outcome(level: int, what: str, dispatch: Dispatch, error: str) -> None:
    log.log(
        level,
        "%s: task=%s platform=%s attempt=%d error=%s",
        what,
        dispatch.task_id,
        dispatch.platform,
        dispatch.attempt,
        error,
        extra={**_about(dispatch), "reason": error},
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


class _SlotMissed(Exception):
    """The go-ahead came past its ``not_after``: the handler must not be called."""

    def __init__(self, late_ms: int) -> None:
        super().__init__(late_ms)
        self.late_ms = late_ms


class Drain(Service):
    """Stops the executor when the worker stops: before the scheduler, the fold, the consumer
    and the web server (register it after them: faust stops services in reverse order)."""

    def __init__(
        self,
        executor: Executor,
        stop_dispatching: Callable[[], None],
        grace_s: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._executor = executor
        self._stop_dispatching = stop_dispatching
        self._grace_s = grace_s

    async def on_start(self) -> None:
        try:
            await self._executor.warm_up()
        except Exception:  # the first write tries again
            log.warning("could not start the handlers' producer yet", exc_info=True)

    async def on_stop(self) -> None:
        self._stop_dispatching()
        await self._executor.drain(self._grace_s)
