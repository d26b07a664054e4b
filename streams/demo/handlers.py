"""Simulated scrapers and analysers for the demo: latency, random failures, "rate limited" answers.

Each call draws its own fate, so a retried or re-dispatched attempt can succeed where the last
one failed (an attempt answered "rate limited" keeps its number, so a seed per attempt would
repeat the same answer forever).
"""

from __future__ import annotations

import asyncio
import random

from streams import NonRetryableError, RateLimitedError, TaskContext, handler

FAILURE_RATE = 0.06
THROTTLE_RATE = 0.03
GONE_RATE = 0.01


_random = random.Random()


def _fate(task: TaskContext) -> random.Random:
    return _random


async def _work(task: TaskContext, low_s: float, high_s: float, rng: random.Random) -> None:
    total = rng.uniform(low_s, high_s)
    for fraction in (0.25, 0.5, 0.75):
        await asyncio.sleep(total / 4)
        await task.progress(fraction)
    await asyncio.sleep(total / 4)


async def _scrape(task: TaskContext, kind: str) -> dict[str, object]:
    rng = _fate(task)
    roll = rng.random()
    if roll < GONE_RATE:
        raise NonRetryableError(f"{task.target} no longer exists")
    if roll < GONE_RATE + THROTTLE_RATE:
        raise RateLimitedError(retry_after_s=2.0)
    await _work(task, 0.05, 0.3, rng)
    if rng.random() < FAILURE_RATE:
        raise ConnectionError(f"{task.platform} reset the connection")
    return {"kind": kind, "target": task.target, "items": rng.randint(1, 500)}


@handler("profile_scrape")
async def profile_scrape(task: TaskContext) -> dict[str, object]:
    """Fetch a profile."""
    return await _scrape(task, "profile")


@handler("content_scrape")
async def content_scrape(task: TaskContext) -> dict[str, object]:
    """Fetch a profile's recent content."""
    return await _scrape(task, "content")


@handler("content_analysis")
async def content_analysis(task: TaskContext) -> dict[str, object]:
    """Score the content of a profile."""
    rng = _fate(task)
    await _work(task, 0.1, 0.4, rng)
    if rng.random() < 0.02:
        raise ValueError("model returned no score")
    return {"target": task.target, "score": round(rng.random(), 3)}


@handler("pipeline")
async def pipeline(task: TaskContext) -> dict[str, object]:
    """Merge a profile and its analysis into the outreach database."""
    rng = _fate(task)
    await _work(task, 0.05, 0.15, rng)
    return {"target": task.target, "stored": True}
