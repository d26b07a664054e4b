"""Running a worker: create the topics, build the app, hand it to ``faust.Worker``."""

from __future__ import annotations

import asyncio
import logging

import faust

from streams.app import create_runtime
from streams.config import Settings
from streams.handlers import load_handler_modules
from streams.topics import ensure_topics

log = logging.getLogger(__name__)


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run a worker until SIGTERM or SIGINT. Blocks; exits the process when faust stops.

    Exactly-once processing holds only under ``faust.Worker`` (``app.start()`` alone runs
    at-least-once), which is why this is the one way the project starts an app.
    """
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(
            ensure_topics(
                settings.bootstrap_servers,
                settings.partitions,
                settings.topics,
                settings.replication_factor,
            )
        )
    finally:
        loop.close()
    load_handler_modules(m.strip() for m in settings.handlers.split(",") if m.strip())
    asyncio.set_event_loop(asyncio.new_event_loop())
    runtime = create_runtime(settings)
    worker = faust.Worker(runtime.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
