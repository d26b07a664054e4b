"""The benchmark's handler: does nothing, so the orchestrator's own cost is what is measured."""

from __future__ import annotations

from streams import TaskContext, handler


@handler("bench_noop")
async def noop(task: TaskContext) -> None:
    return None
