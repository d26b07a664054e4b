"""HTTP views of a worker: task status and results, served by the worker that owns the task.

A request for a task reaching any worker is forwarded by faust's topic router to the worker
that owns the task's partition of ``task.events`` (keys are raw UTF-8 bytes, as on the topic).
A client that has just written an event passes ``after=PARTITION:OFFSET``; the view waits until
the fold has processed that offset (at most ``wait`` seconds, default ``read_timeout``; a
``wait`` outside 0 to ``MAX_WAIT_S`` is refused with 400), so the answer reflects the client's
own write.

Routes:
    GET /tasks?status=&platform=&task_type=&limit=&after=
                                 tasks of every worker, sorted by id, one page (``limit``,
                                 default 100, at most 1000) after the ``after`` id; each a
                                 compact status (``streams.listing``); with ``local=1`` only
                                 this worker's partitions (what the asked worker asks the others)
    GET /tasks/{task_id}         the task's state (404 if no such task)
    GET /tasks/{task_id}/result  the result (409 not completed, 410 expired)
    GET /tasks/{task_id}/verdict?after=P:O
                                 whether the fold applied or refused the record at offset O of
                                 partition P (``applied``, ``refused`` with reason and detail,
                                 or ``unknown`` if folded before this worker opened it)
    GET /limits/{platform}       the platform's limit status (windows, pause, in flight, queue)
    GET /metrics                 Prometheus metrics of this worker
    GET /ready                   200 once the worker has its partitions assigned and open, else
                                 503 (starting, rebalancing, restoring)
    GET /health                  200 ``{"status": "healthy"}``, or 503 ``{"status": "unhealthy",
                                 "reasons": [...]}`` while a store refuses writes or the fold or
                                 the scheduler is stalled (see ``streams.health``)
    GET /state                   every task of the partitions this worker owns, in full, with
                                 the log offsets the table reflects (``orchestrator verify``
                                 compares it with a fold of the log up to those offsets)
    GET /periodic                the periodic definitions of the partitions this worker
                                 owns (``TaskManager.list_periodic`` asks every worker)
    GET /router/topics           faust's own: which worker owns which partitions

The dashboard's page and its own JSON views (``/dashboard``, ``/platforms``, ``/fold``,
``/dlq``, ``/tasks/{id}/timeline``) are in :mod:`streams.dashboard.views`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
import urllib.parse
from typing import Any

import aiohttp
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST

from streams import auth, listing
from streams import health as health_check
from streams.agents.fold import FoldService
from streams.agents.scheduler import SchedulerService
from streams.app import Runtime
from streams.domain import Status, TaskState, state_to_dict
from streams.domain.bounds import id_problem
from streams.domain.periodic import DEFINITION_PREFIX, name_of
from streams.domain.state import utc_iso, waiting_on
from streams.errors import ValidationError
from streams.state_codec import decode_state

_HIDDEN_FIELDS = ("seen_event_ids", "result", "waiting")


def register(runtime: Runtime, fold: FoldService, scheduler: SchedulerService) -> None:
    """Add the task views to ``runtime.app``: they read ``fold``'s table and positions, and
    ``scheduler``'s platforms."""
    app = runtime.app
    register_state_view(runtime, fold)
    register_list_view(runtime, fold)
    register_periodic_view(runtime, fold)
    register_limits_view(runtime, scheduler)
    register_metrics_view(runtime, fold)
    register_health_view(runtime, fold, scheduler)
    register_ready_view(runtime, fold)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def know_routed_topics(app: Any, assigned: Any, **kwargs: Any) -> None:
        # faust's router finds a key's partition with its producer's metadata, and nothing
        # sends with that producer (the fold and the scheduler have their own): fetch the
        # metadata of the topics it routes by, or every routed read answers 503
        producer = app.producer._ensure_producer()
        topics = runtime.settings.topics
        for topic in (topics.events, topics.ready):
            await producer.partitions_for(topic)

    @app.page("/tasks/{task_id}")
    @app.topic_route(topic=runtime.events_topic, match_info="task_id")
    async def task_status(self: View, request: Request, task_id: str) -> Response:
        state, error = await _read(runtime, fold, self, request, task_id)
        if state is None:
            return error
        document = status_document(state, _now_ms())
        if state.status is Status.READY and state.held_reason:
            # the state keeps why the scheduler first held the task; what holds it now is the
            # platform's scheduler's to say (a cap, then a window, then a pause...)
            held = await _platform_status(runtime, scheduler, state.platform)
            if held is not None:
                document["waiting_on"] = held_now(held)
                document["waiting_on_text"] = listing.waiting_words(document["waiting_on"])
        return self.json(document)

    @app.page("/tasks/{task_id}/verdict")
    @app.topic_route(topic=runtime.events_topic, match_info="task_id")
    async def task_verdict(self: View, request: Request, task_id: str) -> Response:
        if not request.query.get("after"):
            detail = "after=PARTITION:OFFSET of the record is required"
            return self.json({"error": "bad_request", "detail": detail}, status=400)
        written, error = await caught_up(runtime, fold, self, request, task_id)
        if error is not None:
            return error
        assert written is not None
        verdict, reason, detail = runtime.verdicts.verdict(*written)
        return self.json({"verdict": verdict, "reason": reason, "detail": detail})

    @app.page("/tasks/{task_id}/result")
    @app.topic_route(topic=runtime.events_topic, match_info="task_id")
    async def task_result(self: View, request: Request, task_id: str) -> Response:
        state, error = await _read(runtime, fold, self, request, task_id)
        if state is None:
            return error
        expires_at_ms = state.result_expires_at_ms() or 0
        if state.status is Status.COMPLETED and not state.result_available(_now_ms()):
            # past its result_ttl, whether the timer's TaskResultExpired has dropped it yet
            detail = f"the result of {task_id} expired at {expires_at_ms} ms"
            return self.json(
                {"error": "expired", "detail": detail, "expired_at_ms": expires_at_ms}, status=410
            )
        if state.status is not Status.COMPLETED or state.result is None:
            detail = f"task {task_id} is {state.status}, not completed"
            return self.json(
                {"error": "not_completed", "detail": detail, "status": str(state.status)},
                status=409,
            )
        return self.json(
            {
                "task_id": task_id,
                "content_type": state.result_content_type,
                "result_b64": base64.b64encode(state.result).decode("ascii"),
                "completed_at_ms": state.completed_at_ms,
                "expires_at_ms": expires_at_ms,
            }
        )


def register_health_view(runtime: Runtime, fold: FoldService, scheduler: SchedulerService) -> None:
    """Add ``GET /health``: whether this worker does its work, and if not, why."""
    app = runtime.app
    check = health_check.register(runtime, fold, scheduler)

    @app.page("/health")
    async def health(self: View, request: Request) -> Response:
        reasons = await check.refresh()
        lanes = [dataclasses.asdict(lane) for lane in check.lanes]
        document = {"stall_s": check.health.stall_s, "partitions": lanes}
        if reasons:
            return self.json({"status": "unhealthy", "reasons": reasons, **document}, status=503)
        return self.json({"status": "healthy", "reasons": [], **document})


def register_ready_view(runtime: Runtime, fold: FoldService) -> None:
    """Add ``GET /ready``: 200 once this worker has its partitions assigned and open.

    Until then (starting, rebalancing, restoring) it answers 503; clients retry such answers.
    """
    app = runtime.app

    @app.page("/ready")
    async def ready(self: View, request: Request) -> Response:
        if fold.serving and not app.rebalancing:
            partitions = sorted(fold.open_partitions())
            return self.json({"status": "ready", "partitions": partitions})
        detail = "the worker is starting, rebalancing or restoring its partitions"
        return self.json({"status": "not_ready", "detail": detail}, status=503)


def register_metrics_view(runtime: Runtime, fold: FoldService) -> None:
    """Add ``GET /metrics``: this worker's metrics in Prometheus' text format."""
    app = runtime.app

    @app.page("/metrics")
    async def metrics(self: View, request: Request) -> Response:
        lags = await fold.lags()
        runtime.metrics.lag.clear()  # a partition that moved away is no longer this worker's
        for partition, lag in lags.items():
            runtime.metrics.lag.labels(str(partition)).set(lag)
        return self.bytes(
            runtime.metrics.exposition(), content_type=CONTENT_TYPE_LATEST.split(";")[0]
        )


def register_limits_view(runtime: Runtime, scheduler: SchedulerService) -> None:
    """Add ``GET /limits/{platform}``, answered by the worker scheduling that platform."""
    app = runtime.app
    ready_topic = runtime.raw_topic(runtime.settings.topics.ready)

    @app.page("/limits/{platform}")
    @app.topic_route(topic=ready_topic, match_info="platform")
    async def platform_limits(self: View, request: Request, platform: str) -> Response:
        status = scheduler.platform_status(platform)
        if status is None:
            return not_ready(self)
        return self.json(status)


def register_state_view(runtime: Runtime, fold: FoldService) -> None:
    """Add ``GET /state``: the full states of the tasks in the partitions this worker folds.

    The answer is exact, for ``orchestrator verify``: it is taken between two records (under
    the fold's lock, so no record is half-applied and no commit is under way), and ``offsets``
    says, per partition folded here, the offset of the last record of ``task.events`` the table
    reflects (-1: none). A fold of the log up to those offsets must give exactly ``tasks``.
    While the worker rebalances or restores its table the answer is ``503 not_ready``: ask
    again.
    """
    app = runtime.app

    @app.page("/state")
    async def table_state(self: View, request: Request) -> Response:
        async with fold.lock:
            if not fold.ready:
                return not_ready(self)
            owned = sorted(fold.open_partitions())
            offsets = {str(p): offset for p, offset in sorted(fold.positions().items())}
            tasks = {
                key.decode("utf-8"): state_to_dict(decode_state(value))
                for key, value in runtime.tasks.items()
            }
        return self.json({"partitions": owned, "offsets": offsets, "tasks": tasks})


def register_list_view(runtime: Runtime, fold: FoldService) -> None:
    """Add ``GET /tasks``: a page of the tasks of every worker, filtered, sorted by task id.

    The worker asked answers for all: it asks each worker owning partitions of ``task.events``
    (faust's topic metadata; itself without HTTP) for its own page (``local=1``) and merges
    them. A partition no worker serves yet, a worker that does not answer, or one not ready
    makes the answer ``503`` (clients retry it); bad parameters answer ``400``.
    """
    app = runtime.app
    topic = runtime.settings.topics.events

    def local_part(query: listing.TaskQuery) -> dict[str, Any]:
        after = query.after.encode("utf-8") if query.after is not None else None
        states = (
            value if isinstance(value, TaskState) else decode_state(value)
            for _, value in runtime.tasks.items_after(after)
        )
        part = listing.select(states, query)
        return {
            "partitions": sorted(fold.open_partitions()),
            "tasks": part.tasks,
            "complete_to": part.complete_to,
        }

    @app.page("/tasks")
    async def list_tasks(self: View, request: Request) -> Response:
        try:
            query = listing.parse_query(request.query.items())
        except ValidationError as exc:
            return self.json({"error": "bad_request", "detail": str(exc)}, status=400)
        if not fold.serving or app.rebalancing:
            return not_ready(self)
        if query.local:
            return self.json(local_part(query))
        others = other_owners(app, topic)
        params = query.params(local=True)
        token = runtime.settings.api_token
        answers = await asyncio.gather(
            *(ask_worker(app, f"{url}/tasks", params, token) for url in others)
        )
        parts: list[listing.Part] = []
        served: set[int] = set()
        everyone = [("this worker", (200, local_part(query))), *zip(others, answers, strict=True)]
        for url, (status, answer) in everyone:
            if status != 200:
                detail = f"the worker at {url} answered {status}: {answer.get('detail')}"
                return self.json({"error": "not_ready", "detail": detail}, status=503)
            parts.append(listing.Part(answer["tasks"], answer["complete_to"]))
            served.update(answer["partitions"])
        unserved = sorted(set(range(runtime.settings.partitions)) - served)
        if unserved:
            detail = f"partitions {unserved} of {topic} are served by no worker yet; ask again"
            return self.json({"error": "not_ready", "detail": detail}, status=503)
        tasks, next_after = listing.merge(parts, query.limit)
        return self.json({"tasks": tasks, "next_after": next_after})


def other_owners(app: Any, topic: str) -> list[str]:
    """The HTTP APIs of the other workers owning partitions of ``topic``."""
    routes = app.router.external_topics_metadata()
    me = str(app.conf.canonical_url).rstrip("/")
    owners = {str(host).rstrip("/") for host, topics in routes.items() if topics.get(topic)}
    return sorted(owners - {me})


async def ask_worker(
    app: Any, url: str, params: dict[str, str], token: str = ""
) -> tuple[int, dict[str, Any]]:
    """GET ``url`` from another worker, with the API's ``token`` if there is one: its status
    and JSON document (503 if it is not reachable or does not answer JSON within
    :data:`ASK_TIMEOUT_S`)."""
    try:
        async with asyncio.timeout(ASK_TIMEOUT_S):
            headers = auth.authorization(token)
            async with app.http_client.get(url, params=params, headers=headers) as response:
                document = await response.json(content_type=None)
                return response.status, document if isinstance(document, dict) else {}
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return 503, {"detail": f"{type(exc).__name__}: {exc}"}


ASK_TIMEOUT_S = 10.0
"""How long a worker listing tasks waits for each other worker's page."""


def register_periodic_view(runtime: Runtime, fold: FoldService) -> None:
    """Add ``GET /periodic``: the periodic definitions (active and removed) in the partitions
    this worker folds, each as its status document with its ``name``. It walks the table's
    keys (only definitions are decoded): an operator's call, not one for a hot path."""
    app = runtime.app
    prefix = DEFINITION_PREFIX.encode("utf-8")

    @app.page("/periodic")
    async def periodic_definitions(self: View, request: Request) -> Response:
        if not fold.ready:
            return not_ready(self)
        now_ms = _now_ms()
        definitions = []
        for key, value in runtime.tasks.items():
            if key.startswith(prefix):
                document = status_document(decode_state(value), now_ms)
                document["name"] = name_of(key.decode("utf-8"))
                definitions.append(document)
        definitions.sort(key=lambda d: str(d["name"]))
        return self.json({"definitions": definitions})


def held_now(platform_status: dict[str, Any]) -> dict[str, Any]:
    """``waiting_on`` of a ready task that its platform's scheduler holds, from the platform's
    status now (``GET /limits/{platform}``)."""
    held = platform_status.get("held_by")
    if held is None:
        return {
            "reason": "scheduling",
            "detail": "its platform may dispatch now: it waits for its turn in the queue",
        }
    return {"reason": held["reason"], "detail": held["detail"], "until_ms": held["until_ms"]}


async def _platform_status(
    runtime: Runtime, scheduler: SchedulerService, platform: str
) -> dict[str, Any] | None:
    """The platform's limit status from the worker scheduling it (None: not known now)."""
    local = scheduler.platform_status(platform)
    if local is not None:
        return local
    app = runtime.app
    me = str(app.conf.canonical_url).rstrip("/")
    # faust's router forwards it to the worker that schedules the platform
    status, document = await ask_worker(
        app, f"{me}/limits/{urllib.parse.quote(platform, safe='')}", {}, runtime.settings.api_token
    )
    return document if status == 200 else None


def not_ready(view: View) -> Response:
    detail = "the worker is rebalancing or restoring its tables; ask again"
    return view.json({"error": "not_ready", "detail": detail}, status=503)


def status_document(state: TaskState, now_ms: int) -> dict[str, Any]:
    """The JSON document of a task's status at ``now_ms``."""
    document = state_to_dict(state)
    for name in _HIDDEN_FIELDS:
        document.pop(name, None)
    document["result_available"] = state.result_available(now_ms)
    expires_at_ms = state.result_expires_at_ms()
    document["result_expired"] = (
        state.status is Status.COMPLETED and expires_at_ms is not None and now_ms >= expires_at_ms
    )
    document["waiting_on"] = waiting_on(state)
    document["waiting_on_text"] = listing.waiting_words(document["waiting_on"])
    if state.not_before_ms is not None:
        document["not_before"] = utc_iso(state.not_before_ms)
    return document


MAX_WAIT_S = 120.0


def _wait_seconds(asked: str | None, default_s: float) -> float:
    """The ``wait`` query parameter: how long a read waits for the fold, a finite number of
    seconds from 0 to :data:`MAX_WAIT_S` (absent: ``default_s``, the worker's read_timeout).

    Raises:
        ValueError: anything else (NaN, inf, negative, above the cap, not a number); the
            message names the parameter, and the view answers 400 with it.
    """
    if asked is None:
        return default_s
    try:
        seconds = float(asked)
    except ValueError:
        seconds = -1.0
    if not 0.0 <= seconds <= MAX_WAIT_S:  # NaN compares false: refused too
        raise ValueError(
            f"wait must be a finite number of seconds from 0 to {MAX_WAIT_S:g}, got {asked!r}"
        )
    return seconds


async def caught_up(
    runtime: Runtime, fold: FoldService, view: View, request: Request, task_id: str
) -> tuple[tuple[int, int] | None, Response | None]:
    """Wait until the fold has the task's partition open and has folded ``after`` (if given).

    Returns ``after`` as (partition, offset) (None if not asked), or the error to answer.
    """
    problem = id_problem("task id", task_id)  # also keeps '..', '//' and the like out
    if problem is not None:
        return None, view.json({"error": "bad_request", "detail": problem}, status=400)
    try:
        wait_s = _wait_seconds(request.query.get("wait"), runtime.settings.read_timeout)
    except ValueError as exc:
        return None, view.json({"error": "bad_request", "detail": str(exc)}, status=400)
    key = task_id.encode("utf-8")
    # right after a rebalance the fold may still be restoring the task's partition
    if not await fold.wait_open(runtime.tasks.partition_of(key), wait_s):
        if runtime.tasks.failure is not None:  # not a rebalance: the disk refuses writes
            detail = f"the worker's task database refuses writes: {runtime.tasks.failure}"
            return None, view.json({"error": "store_failed", "detail": detail}, status=503)
        return None, not_ready(view)
    after = request.query.get("after")
    if not after:
        return None, None
    try:
        partition, offset = (int(part) for part in after.split(":", 1))
    except ValueError:
        return None, view.json(
            {"error": "bad_request", "detail": "after must be PARTITION:OFFSET"}, status=400
        )
    if not await runtime.processed.wait_for(partition, offset, wait_s):
        detail = f"the worker has not processed offset {offset} of partition {partition} yet"
        return None, view.json({"error": "not_caught_up", "detail": detail}, status=503)
    return (partition, offset), None


async def _read(
    runtime: Runtime, fold: FoldService, view: View, request: Request, task_id: str
) -> tuple[TaskState | None, Response]:
    _, error = await caught_up(runtime, fold, view, request, task_id)
    if error is not None:
        return None, error
    key = task_id.encode("utf-8")
    stored = runtime.tasks.get(key)
    state = decode_state(stored) if stored is not None else None
    if state is None or not state.status.is_created:
        return None, view.json({"error": "not_found", "detail": f"no task {task_id}"}, status=404)
    return state, view.json({})


def _now_ms() -> int:
    return int(time.time() * 1000)
