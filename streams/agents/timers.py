"""The timer: writes the events that only the clock can cause, for the tasks this worker owns.

The fold tells the :class:`~streams.domain.timers.DeadlineIndex` each task's next deadline as
it stores the task, and rebuilds the index from the table when it opens its partitions after a
rebalance. Every tick it pops what is due, re-reads the task, asks the pure core for the due event
(:func:`~streams.domain.timers.due_event`) and writes it to ``task.events`` with a plain producer:
a timer runs outside any event, so it cannot take part in a transaction. The event's id is
derived from the deadline, so a repeated write is applied once by the fold.
"""

from __future__ import annotations

import logging
import time

from schemas import encode_event
from streams.agents.transactional import AssignedPartitions
from streams.app import Runtime
from streams.cron import recurrence_of
from streams.domain.signatures import signed_headers
from streams.domain.timers import due_event, next_deadline
from streams.state_codec import decode_state

log = logging.getLogger(__name__)

RETRY_AFTER_MS = 5_000
"""If the state has not moved this long after a timer event was written, write it again."""

UNRUNNABLE_RETRY_MS = 60_000
"""How long a task whose deadline passed but whose event cannot be computed waits to be
looked at again (it is logged each time)."""


def register(runtime: Runtime, fold: AssignedPartitions) -> None:
    """Add the timer to ``runtime.app``: it looks at the tasks of the partitions ``fold`` has
    open, once it has them open (the deadline index is rebuilt then)."""
    app = runtime.app
    timer = _Timer(runtime, fold)

    @app.timer(interval=runtime.settings.timer_interval, name="deadlines")  # type: ignore[untyped-decorator]
    async def deadlines() -> None:
        await timer.tick()


class _Timer:
    def __init__(self, runtime: Runtime, fold: AssignedPartitions) -> None:
        self._runtime = runtime
        self._fold = fold

    async def tick(self) -> None:
        if not self._fold.ready:
            return  # the index is rebuilt when the fold has opened its partitions
        now_ms = int(time.time() * 1000)
        for task_id in self._runtime.deadlines.pop_due(now_ms):
            try:
                await self._check(task_id, now_ms)
            except Exception:  # one task's trouble must not stop the others' deadlines
                log.exception("timer: cannot check %s; trying again later", task_id[:200])
                self._runtime.deadlines.track(task_id, now_ms + RETRY_AFTER_MS)

    async def _check(self, task_id: str, now_ms: int) -> None:
        key = task_id.encode("utf-8")
        if not self._runtime.tasks.is_open(self._runtime.tasks.partition_of(key)):
            return
        stored = self._runtime.tasks.get(key)
        if stored is None:
            return
        state = decode_state(stored)
        retention_ms = self._runtime.settings.task_retention_ms
        event = due_event(state, now_ms, retention_ms, recurrence_of)
        if event is None:
            deadline = next_deadline(state, retention_ms)
            if deadline is not None and deadline <= now_ms:
                # past its deadline and still nothing to write: a schedule this worker cannot
                # compute (a cron expression that does not parse); look again much later
                deadline = now_ms + UNRUNNABLE_RETRY_MS
            self._runtime.deadlines.track(task_id, deadline)
            return
        value = encode_event(event)
        # the fold takes a timer's event only signed (streams.domain.signatures)
        headers = signed_headers(self._runtime.signing, key, value)
        await self._runtime.producer.send(self._runtime.settings.topics.events, key, value, headers)
        self._runtime.deadlines.track(task_id, now_ms + RETRY_AFTER_MS)
