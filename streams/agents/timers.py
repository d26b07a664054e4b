"""The timer: writes the events that only the clock can cause, for the tasks this worker owns.

The fold tells the :class:`DeadlineIndex` each task's next deadline as it stores the task, and
rebuilds the index from the table when it opens its partitions after a rebalance. Every tick
it pops what is due, re-reads the task, asks the pure core for the due event
(:func:`~streams.domain.timers.due_event`) and writes it to ``task.events`` with a plain producer:
a timer runs outside any event, so it cannot take part in a transaction. The event's id is
derived from the deadline, so a repeated write is applied once by the fold.
"""

from __future__ import annotations

import heapq
import time

from schemas import encode_event
from streams.app import Runtime
from streams.domain import state_from_json
from streams.domain.timers import due_event, next_deadline

RETRY_AFTER_MS = 5_000
"""If the state has not moved this long after a timer event was written, write it again."""


class DeadlineIndex:
    """Tasks by their next deadline: one entry per task, whatever the number of its events.

    A heap of (deadline, task) with the latest deadline of each task beside it; an entry that
    is no longer a task's latest is skipped when popped, and the heap is rebuilt when such
    stale entries outnumber the live ones.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._latest: dict[str, int] = {}

    def track(self, task_id: str, deadline_ms: int | None) -> None:
        """Look at ``task_id`` again at ``deadline_ms`` (None: never)."""
        if deadline_ms is None:
            self._latest.pop(task_id, None)
            return
        if self._latest.get(task_id) == deadline_ms:
            return
        self._latest[task_id] = deadline_ms
        heapq.heappush(self._heap, (deadline_ms, task_id))
        if len(self._heap) > 2 * len(self._latest) + 1_000:
            self._heap = [(deadline, task) for task, deadline in self._latest.items()]
            heapq.heapify(self._heap)

    def pop_due(self, now_ms: int) -> list[str]:
        """The tasks whose deadline is at or before ``now_ms``, each once."""
        due: dict[str, None] = {}
        while self._heap and self._heap[0][0] <= now_ms:
            deadline, task_id = heapq.heappop(self._heap)
            if self._latest.get(task_id) == deadline:
                del self._latest[task_id]
                due[task_id] = None
        return list(due)

    def clear(self) -> None:
        """Forget everything (before a rebuild)."""
        self._heap.clear()
        self._latest.clear()

    def __len__(self) -> int:
        return len(self._latest)


def register(runtime: Runtime) -> None:
    """Add the timer to ``runtime.app``."""
    app = runtime.app
    timer = _Timer(runtime)

    @app.timer(interval=runtime.settings.timer_interval, name="deadlines")  # type: ignore[untyped-decorator]
    async def deadlines() -> None:
        await timer.tick()


class _Timer:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def tick(self) -> None:
        fold = self._runtime.fold
        if fold is None or not fold.ready:
            return  # the index is rebuilt when the fold has opened its partitions
        now_ms = int(time.time() * 1000)
        for task_id in self._runtime.deadlines.pop_due(now_ms):
            await self._check(task_id, now_ms)

    async def _check(self, task_id: str, now_ms: int) -> None:
        key = task_id.encode("utf-8")
        if not self._runtime.tasks.is_open(self._runtime.tasks.partition_of(key)):
            return
        stored = self._runtime.tasks.get(key)
        if stored is None:
            return
        state = state_from_json(stored)
        event = due_event(state, now_ms)
        if event is None:
            self._runtime.deadlines.track(task_id, next_deadline(state))
            return
        await self._runtime.producer.send(
            self._runtime.settings.topics.events, key, encode_event(event)
        )
        self._runtime.deadlines.track(task_id, now_ms + RETRY_AFTER_MS)
