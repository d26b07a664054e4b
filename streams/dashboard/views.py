"""The dashboard's HTTP views: its static files, and the JSON it needs beyond the task API.

Routes (every worker serves them; any worker answers for all, as for ``GET /tasks``):
    GET /dashboard               the page (``index.html``); its scripts and styles are
                                 ``GET /dashboard/{file}``, read from this package
    GET /platforms               every platform's limit status (``GET /limits/{platform}``),
                                 with the go-aheads its worker committed since it started
                                 (``dispatched``) and the time of the reading; ``local=1``:
                                 the platforms scheduled by this worker only
    GET /fold                    per worker: the partitions it folds, their positions and lag,
                                 its fold transactions by outcome and its DLQ records by reason
                                 (counted since it started), and the sums; ``local=1``: this
                                 worker only
    GET /dlq?limit=N             the newest N records of ``task.events.dlq`` (1 to 100,
                                 default 20): reason, detail, key, provenance
    GET /tasks/{id}/timeline     the task's audit timeline, read by the worker owning it from
                                 a bounded stretch of its partition (``projections.timeline``)

Every view answers JSON errors: 400 for bad parameters, 503 while a worker is not ready or
Kafka does not answer, 500 (logged with its traceback) for anything else. None of them can
stop the worker: the fold and the scheduler run on regardless.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiokafka.errors import KafkaError
from faust.web import Request, Response, View

from streams.agents.fold import FoldService
from streams.agents.scheduler import SchedulerService
from streams.app import Runtime
from streams.dashboard import reads
from streams.state_codec import decode_state
from streams.web import ask_worker, caught_up, not_ready, other_owners

log = logging.getLogger(__name__)

STATIC_FILES = {
    "index.html": "text/html",
    "dashboard.css": "text/css",
    "main.js": "text/javascript",
    "api.js": "text/javascript",
    "render.js": "text/javascript",
    "charts.js": "text/javascript",
}
"""The files served under ``/dashboard/``, with their content types (nothing else is)."""
SECURITY_HEADERS = {
    # the page loads nothing from elsewhere and runs no inline script: an id or an error
    # that slipped into the DOM as markup still could not run
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
DEFAULT_DEAD_LETTERS = 20

Handler = Callable[..., Awaitable[Response]]


def register(runtime: Runtime, fold: FoldService, scheduler: SchedulerService) -> None:
    """Add the dashboard's page and JSON views to ``runtime.app``."""
    register_static(runtime)
    register_platforms_view(runtime, fold, scheduler)
    register_fold_view(runtime, fold)
    register_dlq_view(runtime)
    register_timeline_view(runtime, fold)


def guarded(view: Handler) -> Handler:
    """``view``, answering 503 when Kafka fails it and 500 (logged) when anything else does,
    both as JSON: a dashboard's request never takes the worker down."""

    @functools.wraps(view)
    async def answer(self: View, request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            return await view(self, request, *args, **kwargs)
        except (KafkaError, TimeoutError, OSError) as exc:
            detail = f"Kafka did not answer: {type(exc).__name__}: {exc}"
            return self.json({"error": "unavailable", "detail": detail}, status=503)
        except Exception as exc:
            log.exception("dashboard view %s failed", request.url)
            detail = f"{type(exc).__name__}: {exc}"
            return self.json({"error": "internal", "detail": detail}, status=500)

    return answer


def register_static(runtime: Runtime) -> None:
    """Add ``GET /dashboard`` and ``GET /dashboard/{file}``: the page and its files."""
    app = runtime.app
    package = resources.files(__package__)
    files = {name: (package / name).read_bytes() for name in STATIC_FILES}

    def serve(view: View, name: str) -> Response:
        if name not in files:
            detail = f"no dashboard file {name!r}"
            return view.json({"error": "not_found", "detail": detail}, status=404)
        return view.bytes(
            files[name], content_type=STATIC_FILES[name], headers=dict(SECURITY_HEADERS)
        )

    @app.page("/dashboard")
    async def dashboard(self: View, request: Request) -> Response:
        return serve(self, "index.html")

    @app.page("/dashboard/{name}")
    async def dashboard_file(self: View, request: Request, name: str) -> Response:
        return serve(self, name or "index.html")


def register_platforms_view(
    runtime: Runtime, fold: FoldService, scheduler: SchedulerService
) -> None:
    """Add ``GET /platforms``: every platform's limit status, from the workers scheduling them."""
    app = runtime.app
    settings = runtime.settings

    def local_part() -> dict[str, Any]:
        platforms = []
        for platform in scheduler.platforms():
            status = scheduler.platform_status(platform)
            if status is not None:
                platforms.append({**status, "dispatched": scheduler.dispatched[platform]})
        return {
            "partitions": sorted(scheduler.open_partitions()),
            "platforms": platforms,
            "max_concurrent_tasks": settings.max_concurrent_tasks,
            "now_ms": _now_ms(),
        }

    @app.page("/platforms")
    @guarded
    async def platforms(self: View, request: Request) -> Response:
        if not fold.serving or app.rebalancing:
            return not_ready(self)
        if request.query.get("local") == "1":
            return self.json(local_part())
        parts, error = await _gather(runtime, self, settings.topics.ready, "/platforms", local_part)
        if error is not None:
            return error
        merged = sorted(
            (p for _, part in parts for p in part["platforms"]), key=lambda p: p["platform"]
        )
        served = {n for _, part in parts for n in part["partitions"]}
        return self.json(
            {
                "platforms": merged,
                "unserved": sorted(set(range(settings.partitions)) - served),
                "workers": {url: part["max_concurrent_tasks"] for url, part in parts},
                "now_ms": _now_ms(),
            }
        )


def register_fold_view(runtime: Runtime, fold: FoldService) -> None:
    """Add ``GET /fold``: each worker's partitions, lag, commits and DLQ counts, and the sums."""
    app = runtime.app
    settings = runtime.settings
    metrics = runtime.metrics

    async def local_part() -> dict[str, Any]:
        lags = await fold.lags()
        positions = fold.positions()
        return {
            "partitions": [
                {"partition": p, "position": positions.get(p, -1), "lag": lags.get(p)}
                for p in sorted(fold.open_partitions())
            ],
            "commits": metrics.totals(metrics.fold_commits, "outcome"),
            "reopens": metrics.totals(metrics.fold_reopens).get("", 0.0),
            "dlq": metrics.totals(metrics.dlq, "reason"),
        }

    @app.page("/fold")
    @guarded
    async def fold_status(self: View, request: Request) -> Response:
        if not fold.serving or app.rebalancing:
            return not_ready(self)
        if request.query.get("local") == "1":
            return self.json(await local_part())
        mine = await local_part()
        parts, error = await _gather(runtime, self, settings.topics.events, "/fold", lambda: mine)
        if error is not None:
            return error
        served = {p["partition"] for _, part in parts for p in part["partitions"]}
        return self.json(
            {
                "workers": [{"worker": url, **part} for url, part in parts],
                "commits": _sum(part["commits"] for _, part in parts),
                "dlq": _sum(part["dlq"] for _, part in parts),
                "unserved": sorted(set(range(settings.partitions)) - served),
            }
        )


def register_dlq_view(runtime: Runtime) -> None:
    """Add ``GET /dlq``: the newest records of the DLQ (a bounded read of its tail)."""
    app = runtime.app

    @app.page("/dlq")
    @guarded
    async def dead_letters(self: View, request: Request) -> Response:
        try:
            limit = dead_letters_limit(request.query.get("limit"))
        except ValueError as exc:
            return self.json({"error": "bad_request", "detail": str(exc)}, status=400)
        return self.json(await reads.latest_dead_letters(runtime.settings, limit))


def dead_letters_limit(asked: str | None) -> int:
    """The ``limit`` of ``GET /dlq``: an integer from 1 to ``reads.MAX_DEAD_LETTERS``.

    Raises:
        ValueError: anything else; the message names the parameter and the range.
    """
    if asked is None or asked == "":
        return DEFAULT_DEAD_LETTERS
    try:
        limit = int(asked)
    except ValueError:
        limit = 0
    if not 1 <= limit <= reads.MAX_DEAD_LETTERS:
        raise ValueError(
            f"limit must be an integer from 1 to {reads.MAX_DEAD_LETTERS}, got {asked!r}"
        )
    return limit


def register_timeline_view(runtime: Runtime, fold: FoldService) -> None:
    """Add ``GET /tasks/{task_id}/timeline``, answered by the worker owning the task."""
    app = runtime.app

    @app.page("/tasks/{task_id}/timeline")
    @app.topic_route(topic=runtime.events_topic, match_info="task_id")
    @guarded
    async def task_timeline(self: View, request: Request, task_id: str) -> Response:
        _, error = await caught_up(runtime, fold, self, request, task_id)
        if error is not None:
            return error
        key = task_id.encode("utf-8")
        stored = runtime.tasks.get(key)
        state = decode_state(stored) if stored is not None else None
        first_known_ms = None
        if state is not None:
            times = [t.at_ms for t in state.history]
            if state.created_at_ms:
                times.append(state.created_at_ms)
            first_known_ms = min(times) if times else None
        document = await reads.read_timeline(
            runtime.settings,
            task_id,
            runtime.tasks.partition_of(key),
            first_known_ms,
            signing=runtime.signing,
        )
        document["in_table"] = state is not None
        return self.json(document)


async def _gather(
    runtime: Runtime,
    view: View,
    topic: str,
    path: str,
    mine: Callable[[], dict[str, Any]],
) -> tuple[list[tuple[str, dict[str, Any]]], Response | None]:
    """This worker's part and every other owner's of ``topic`` (asked ``path?local=1``), or
    the 503 to answer when one of them does not answer."""
    app = runtime.app
    others = other_owners(app, topic)
    answers = await asyncio.gather(
        *(
            ask_worker(app, f"{url}{path}", {"local": "1"}, runtime.settings.api_token)
            for url in others
        )
    )
    me = str(app.conf.canonical_url).rstrip("/")
    parts = [(me, mine())]
    for url, (status, answer) in zip(others, answers, strict=True):
        if status != 200:
            detail = f"the worker at {url} answered {status}: {answer.get('detail')}"
            return [], view.json({"error": "not_ready", "detail": detail}, status=503)
        parts.append((url, answer))
    return parts, None


def _sum(counts: Any) -> dict[str, float]:
    total: dict[str, float] = {}
    for count in counts:
        for name, value in count.items():
            total[name] = total.get(name, 0.0) + value
    return dict(sorted(total.items()))


def _now_ms() -> int:
    return int(time.time() * 1000)
