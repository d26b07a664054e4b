"""Running a worker: create the topics, build the app, hand it to ``faust.Worker``."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import faust

from streams.app import create_runtime
from streams.config import Settings
from streams.handlers import load_handler_modules
from streams.topics import ensure_topics

log = logging.getLogger(__name__)

CLEAN_STOP_MARKER = "clean-stop"
"""Written in the data dir when a worker stopped cleanly (its last commit went through)."""


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
                app_id=settings.app_id,
            )
        )
    finally:
        loop.close()
    load_handler_modules(m.strip() for m in settings.handlers.split(",") if m.strip())
    asyncio.set_event_loop(asyncio.new_event_loop())
    runtime = create_runtime(settings)
    marker = Path(settings.data_dir) / CLEAN_STOP_MARKER
    drop_state_after_unclean_stop(Path(runtime.app.conf.tabledir), marker)
    worker = faust.Worker(runtime.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exit_:
        if exit_.code in (0, None):
            marker.touch()
        raise


def drop_state_after_unclean_stop(table_dir: Path, marker: Path) -> None:
    """Delete faust's local table state (the scheduler's) unless the last run stopped cleanly.

    faust's RocksDB stores keep every write at once, committed or not; a worker killed between
    two commits leaves writes whose transaction Kafka aborted, and replaying the changelog from
    the last persisted offset would keep them. So after an unclean stop those tables are
    restored from their changelogs alone, as Kafka Streams does under exactly-once. The
    ``tasks`` table is not among them: it only ever holds committed state
    (``streams.task_store``).
    """
    if table_dir.exists() and not marker.exists():
        log.warning(
            "the last run did not stop cleanly: dropping %s, restoring from changelogs", table_dir
        )
        shutil.rmtree(table_dir)
    marker.unlink(missing_ok=True)
