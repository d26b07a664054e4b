"""The replay case: the offline replay (``projections.replay``) over the fold case's topic."""

from __future__ import annotations

import importlib
import importlib.util
import time

from bench.fold import FoldTopic
from bench.workload import Result


async def replay_case(bootstrap: str, topic: FoldTopic) -> list[Result]:
    """``replay_events_per_s``: events/s of ``projections.replay.replay`` with its default
    projections, timed around the whole call (connection set-up included); nothing while that
    module does not exist."""
    if importlib.util.find_spec("projections.replay") is None:
        print("replay case skipped: projections/replay.py does not exist")
        return []
    module = importlib.import_module("projections.replay")
    started = time.monotonic()
    result = await module.replay(bootstrap, topic.topics.events)
    elapsed_s = time.monotonic() - started
    if result.records != topic.events:
        raise RuntimeError(f"replay read {result.records} of {topic.events} events")
    print(f"replay {result.records / elapsed_s:,.0f} events/s", flush=True)
    return [Result("replay_events_per_s", round(topic.events / elapsed_s), "events/s")]
