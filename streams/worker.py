"""Running a worker: create the topics, build its parts, hand the app to ``faust.Worker``.

:func:`build` is the composition root: the one place that creates each agent, service and view
of a worker and gives it the typed parts it needs (no part looks another up).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from streams import auth, logs, web
from streams.agents import executor, fold, scheduler, timers
from streams.agents.executor import Executor
from streams.agents.fold import FoldService
from streams.agents.scheduler import SchedulerService
from streams.app import Runtime, create_runtime
from streams.config import Settings
from streams.config_log import read_table, worker_changes, write_changes
from streams.dashboard import views as dashboard
from streams.domain.signatures import SigningKey
from streams.handlers import load_handler_modules, registered_task_types
from streams.ownership import check_own_groups
from streams.signing import ensure_key
from streams.topics import ensure_topics

log = logging.getLogger(__name__)


def run_worker(settings: Settings, loglevel: str = "info", config_file: Path | None = None) -> None:
    """Run a worker until SIGTERM or SIGINT. Blocks; exits the process when faust stops.

    ``faust.Worker`` runs the app's services (the fold, the scheduler, the executor's drain),
    its consumer group and its web server, and stops them in order on SIGTERM.

    Logs go out in ``settings.log_format`` (``streams.logs``) from the first line on.

    Raises:
        ConfigurationError: before anything starts, if the HTTP settings would expose the
            worker (``streams.auth.check_can_serve``): a non-loopback ``web_host`` without
            ``api_token``, or a wildcard one without ``advertised_url``.

    The run-time settings ``config_file`` holds (rate limits, task policy defaults) are written
    to ``orchestrator.config`` where they differ from those in force, before the worker starts:
    every worker's scheduler, and every client, then takes them from there.
    """
    auth.check_can_serve(settings)
    logs.configure(settings.log_format)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(settings.kafka.check_login())  # a refused login: one clear line
        loop.run_until_complete(
            ensure_topics(
                settings.kafka,
                settings.partitions,
                settings.topics,
                settings.replication_factor,
                app_id=settings.orchestrator_id,
            )
        )
        loop.run_until_complete(check_own_groups(settings))
        # the first worker makes the signing key; every worker reads it (streams.signing)
        signing = loop.run_until_complete(
            ensure_key(settings.kafka, settings.topics.keys, settings.topics.events)
        )
        if config_file is not None:
            loop.run_until_complete(publish_file_settings(settings, config_file))
    finally:
        loop.close()
    modules = [m.strip() for m in settings.handlers.split(",") if m.strip()]
    load_handler_modules(modules)
    asyncio.set_event_loop(asyncio.new_event_loop())
    runtime = build(settings, signing).runtime
    worker = Worker(runtime.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.settings = settings
    worker.start_line = start_line(settings, modules)
    worker.execute_from_commandline()


async def publish_file_settings(settings: Settings, config_file: Path) -> None:
    """Write the run-time settings of ``config_file`` that differ from those in force."""
    changes = worker_changes(config_file, await read_table(settings))
    await write_changes(settings, changes)
    for change in changes:
        log.info(
            "setting %s for platform %s, task type %s: %s (from %s)",
            change.name,
            change.platform,
            change.task_type,
            json.dumps(change.value),
            config_file,
        )


@dataclass(frozen=True)
class Parts:
    """What one worker runs."""

    runtime: Runtime
    fold: FoldService
    scheduler: SchedulerService
    executor: Executor


def build(settings: Settings, signing: SigningKey | None = None) -> Parts:
    """Create a worker's app with its fold, timer, scheduler, executor and views; what they
    write to ``task.events`` is signed with ``signing`` (None: a worker that never folds,
    built for a test of its web app)."""
    runtime = create_runtime(settings)
    runtime.signing = signing
    runner = Executor(runtime)
    # the fold tells the executor, after a commit, which tasks ended: their handlers stop
    folding = fold.register(runtime, runner.on_task_ended)
    timers.register(runtime, folding)
    scheduling = scheduler.register(runtime, runner)
    # registered last, stopped first: no more dispatches, then the running handlers' grace
    drain = executor.Drain(runner, scheduling.stop_dispatching, settings.shutdown_grace)
    runtime.app.service(drain)  # type: ignore[arg-type]
    web.register(runtime, folding, scheduling)
    dashboard.register(runtime, folding, scheduling)
    return Parts(runtime, folding, scheduling, runner)


class Worker(faust.Worker):
    """faust's worker, with the project's log format and start-up line (named ``Worker``:
    faust labels its lines with the class name, and ``[^Worker]: Ready`` says a worker is up)."""

    settings: Settings = Settings()
    start_line: tuple[str, dict[str, Any]] = ("worker starting", {})

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        # faust has just replaced the root logger's handlers with its own
        super().on_setup_root_logger(logger, level)
        logs.configure(self.settings.log_format, logger)

    async def on_execute(self) -> None:
        await super().on_execute()
        message, fields = self.start_line
        log.info(message, fields)


def start_line(settings: Settings, handler_modules: list[str]) -> tuple[str, dict[str, Any]]:
    """The worker's first line: what it serves (its Kafka, application id, topics, handlers)
    and where (its HTTP API); as a format and its arguments, for ``log.info``."""
    scheme = "https" if settings.serves_https else "http"
    http = f"{scheme}://{settings.web_host}:{settings.web_port}"
    if settings.advertised_url:
        http += f" (advertised as {settings.advertised_url})"
    # whether a token is required, never the token
    http += ", bearer token required" if settings.api_token else ", no token"
    fields = {
        "brokers": settings.kafka.describe(),
        "app_id": settings.app_id,
        "prefix": settings.topic_prefix,
        "events": settings.topics.events,
        "partitions": settings.partitions,
        "replicas": settings.replication_factor,
        "http": http,
        "modules": ",".join(handler_modules) or "none",
        "types": ",".join(sorted(registered_task_types())) or "none",
        "data_dir": settings.data_dir,
    }
    message = (
        "worker starting: brokers=%(brokers)s app_id=%(app_id)s topic_prefix='%(prefix)s' "
        "(%(events)s, ...) partitions=%(partitions)d replication_factor=%(replicas)d; "
        "HTTP %(http)s (GET /ready, /health, /metrics, /dashboard); handler modules=%(modules)s "
        "(task types: %(types)s); data_dir=%(data_dir)s"
    )
    return message, fields
