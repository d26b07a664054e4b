"""``TaskManager``: the async client API of the spec. Writes events; reads status over HTTP.

Writes go to ``task.events`` with an idempotent producer (``acks=all``), keyed by task id.
Reads go to any worker's HTTP API (``api_url``), which forwards them to the worker that owns the
task. Each write remembers its partition and offset; the next read of that task asks the worker
to wait until its fold has processed that offset, so a read reflects the client's own writes.

Every public call has a deadline, ``request_timeout`` (default 30 s), connecting and closing
included: a call that passes it raises :class:`~streams.errors.RequestTimeoutError` naming the
call and what it waited for. A read asks the worker to wait at most ``min(read_timeout,
request_timeout, 120 s)`` for its fold; with ``read_timeout >= request_timeout`` a worker that
is slow to catch up makes the read raise ``RequestTimeoutError`` rather than the worker's
``not_caught_up`` answer. Input is validated (with :mod:`streams.domain.bounds`) before anything
is sent, and task ids travel URL-escaped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

import aiohttp
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas import encode_event
from schemas.records import encode_signal
from streams import schedules
from streams.config import Settings, load_settings
from streams.domain import (
    Event,
    Payload,
    PeriodicCancelled,
    PeriodicScheduled,
    Source,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    derived_event_id,
)
from streams.domain.bounds import (
    MAX_ATTEMPTS,
    MAX_POLICY_MS,
    MAX_PRIORITY,
    MAX_RESULT_BYTES,
    cut_reason,
    dependencies_problem,
    finite_problem,
    id_problem,
    name_problem,
    result_problem,
    target_problem,
)
from streams.domain.events import MAX_RATE_LIMITED
from streams.domain.periodic import definition_id
from streams.domain.periodic import name_problem as periodic_name_problem
from streams.domain.signals import PlatformPaused, SchedulerSignal
from streams.errors import (
    REJECTION_ERRORS,
    EventRejectedError,
    InfrastructureError,
    OrchestratorError,
    RequestTimeoutError,
    ResultExpiredError,
    ResultNotReadyError,
    TaskNotFoundError,
    UnconfirmedWriteError,
    ValidationError,
)
from streams.partitions import partitioner

PRIORITY_RANGE = range(1, MAX_PRIORITY + 1)
_MS = 1000
MAX_READ_WAIT_S = 120.0
"""The longest ``?wait=`` a worker accepts (``streams.web.MAX_WAIT_S``)."""
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0
"""Backoff of a read retried because the worker is starting, rebalancing or restoring."""
_ABANDON_S = 2.0
"""How long dropping a producer whose broker does not answer may take (after the deadline)."""


class TaskManager:
    """Create tasks, report their progress, and read their status and results.

    Args:
        config: the spec's keys (``default_timeout``, ``max_retries``, ``retry_delay``,
            ``result_ttl``) plus ``bootstrap_servers``, ``api_url`` and the other keys of
            :class:`~streams.config.Settings`; ``ORCHESTRATOR_*`` variables fill what is absent.

    Use it as an async context manager::

        async with TaskManager({"bootstrap_servers": "127.0.0.1:9092"}) as tm:
            tid = await tm.create_task(task_type="profile_scrape", platform="linkedin", target="u1")
    """

    def __init__(
        self, config: Mapping[str, Any] | None = None, *, source: Source = Source.CLIENT
    ) -> None:
        self.settings: Settings = load_settings(overrides=config or {})
        self._source = source
        self._producer: AIOKafkaProducer | None = None
        self._http: aiohttp.ClientSession | None = None
        self._last_write: dict[str, tuple[int, int]] = {}
        self._unacknowledged = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await _close_after(self.close, exc)

    async def start(self) -> None:
        """Connect to Kafka, within ``request_timeout``. Called by ``async with``.

        Raises:
            InfrastructureError: Kafka cannot be reached.
            RequestTimeoutError: Kafka did not answer within ``request_timeout``.
        """
        if self._producer is not None:
            return
        servers = self.settings.bootstrap_servers
        async with _deadline(self.settings, "start", f"Kafka at {servers} did not answer"):
            producer = AIOKafkaProducer(
                bootstrap_servers=servers,
                enable_idempotence=True,
                acks="all",
                max_request_size=2_000_000,
                partitioner=partitioner,  # a task's group places it (streams.partitions)
            )
            try:
                await producer.start()
            except KafkaError as exc:
                await _abandon(producer)
                raise InfrastructureError(
                    f"cannot reach Kafka at {servers}: {exc}", retriable=True
                ) from exc
            except BaseException:  # the deadline, or the caller, cancelled the call
                await _abandon(producer)
                raise
        self._producer = producer
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._read_wait_s() + 5)
        )

    async def close(self) -> None:
        """Flush pending writes and disconnect, within ``request_timeout``.

        A write whose call was cancelled or timed out is not waited for again: the producer
        is then dropped at once, and that write may or may not have reached Kafka.

        Raises:
            RequestTimeoutError: Kafka did not acknowledge the pending writes in time (the
                client is closed all the same).
        """
        producer, self._producer = self._producer, None
        http, self._http = self._http, None
        try:
            if producer is not None:
                await self._stop_producer(producer)
        finally:
            if http is not None:
                await http.close()

    async def _stop_producer(self, producer: AIOKafkaProducer) -> None:
        if self._unacknowledged:
            self._unacknowledged = False
            await _abandon(producer)
            return
        servers = self.settings.bootstrap_servers
        waiting_for = f"Kafka at {servers} did not acknowledge the pending writes"
        try:
            async with _deadline(self.settings, "close", waiting_for):
                await producer.stop()
        except BaseException:
            await _abandon(producer)
            raise

    def _read_wait_s(self) -> float:
        """How long a read asks the worker to wait for its fold (see the module's docstring)."""
        s = self.settings
        return min(s.read_timeout, s.request_timeout, MAX_READ_WAIT_S)

    # -- writes -------------------------------------------------------------------------

    async def create_task(
        self,
        task_type: str,
        platform: str,
        target: str,
        dependencies: Sequence[str] = (),
        priority: int = 5,
        timeout: float | None = None,  # noqa: ASYNC109 - the spec's name: the task's timeout
        task_id: str | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        max_rate_limited: int | None = None,
        confirm: bool = True,
        not_before: datetime | None = None,
    ) -> str:
        """Submit a task; return its id.

        Args:
            task_type, platform: names of at most 64 characters (``streams.domain.bounds``).
            target: at most 16 KiB of UTF-8, no control characters but tab and newline.
            dependencies: ids of tasks that must complete first (at most 500).
            priority: 1 (most urgent) to 10.
            timeout: seconds one attempt may run (default ``default_timeout``): at least
                0.001 (1 ms), at most 366 days.
            task_id: a caller-chosen id (default: a new uuid), at most 200 characters of
                ``A-Z a-z 0-9 . _ : @ = + ~ -``, starting with a letter or digit.
            max_retries, retry_delay: override the configured retry policy for this task.
            max_rate_limited: "rate limited" answers in a row after which the task fails,
                1 to 1000 (default: the ``max_rate_limited`` setting, 10).
            not_before: a timezone-aware ``datetime`` (Celery's ``eta``): the task is not
                ready, so not dispatched, before it (``pending``, ``waiting_on`` saying "not
                before ..."; with dependencies, it waits for both). A time in the past means
                now; at most 366 days ahead.

        Raises:
            ValidationError: bad arguments (a naive ``not_before`` too); nothing was written.
            RequestTimeoutError: Kafka did not acknowledge the event within ``request_timeout``.
        """
        task_id, payload = self._new_task(
            task_type,
            platform,
            target,
            dependencies,
            priority,
            timeout,
            task_id,
            max_retries,
            retry_delay,
            max_rate_limited,
        )
        delay_ms = schedules.not_before_ms(not_before, int(time.time() * _MS))
        if delay_ms:
            payload = dataclasses.replace(payload, not_before_ms=delay_ms)
        event_id = derived_event_id(task_id, "created")
        await self._write("create_task", task_id, payload, event_id, confirm=confirm)
        return task_id

    # -- periodic definitions ---------------------------------------------------------------

    async def schedule_periodic(
        self,
        name: str,
        *,
        task_type: str,
        platform: str,
        target: str,
        every: timedelta | float | None = None,
        cron: str | None = None,
        start_at: datetime | None = None,
        priority: int = 5,
        timeout: float | None = None,  # noqa: ASYNC109 - the task's timeout, as in create_task
        max_retries: int | None = None,
        retry_delay: float | None = None,
        confirm: bool = True,
    ) -> str:
        """Define (or change) the periodic definition ``name``; return its key,
        ``periodic:<name>``.

        Each occurrence creates, exactly once, the task ``<name>@<occurrence in UTC
        ISO-8601>`` (e.g. ``scan@2026-01-01T00:05:00Z``) of ``task_type`` on ``platform``
        with ``target``, and the policy this client resolves now. Occurrences missed while no
        worker held the definition's partition are not made up: only the latest is created.

        Args:
            name: 1 to 100 characters of ``A-Z a-z 0-9 . _ : = + ~ -``.
            every: the interval (``timedelta`` or seconds, 1 s to 366 days); occurrences at
                ``start_at + k * every``.
            cron: instead of ``every``, a five-field cron expression read in UTC.
            start_at: a timezone-aware ``datetime``: no occurrence before it (default: one
                interval from now for ``every``, now for ``cron``).
            task_type, platform, target, priority, timeout, max_retries, retry_delay: as in
                :meth:`create_task`, for every occurrence.

        Raises:
            ValidationError: bad arguments (both or neither of ``every`` and ``cron``, an
                interval under 1 s, a bad cron expression, a naive ``start_at``, a target
                over 16 KiB, ...); nothing was written.
            DuplicateTaskError: ``periodic:<name>`` is the id of an ordinary task.
        """
        key, payload = self._new_periodic(
            name,
            task_type=task_type,
            platform=platform,
            target=target,
            every=every,
            cron=cron,
            start_at=start_at,
            priority=priority,
            timeout=timeout,
            max_retries=max_retries,
            retry_delay=retry_delay,
        )
        await self._write("schedule_periodic", key, payload, confirm=confirm)
        return key

    def _new_periodic(
        self,
        name: str,
        *,
        task_type: str,
        platform: str,
        target: str,
        every: object = None,
        cron: object = None,
        start_at: object = None,
        priority: int = 5,
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
    ) -> tuple[str, PeriodicScheduled]:
        """The key and ``PeriodicScheduled`` of a definition, validated (see
        :meth:`schedule_periodic`); nothing is written."""
        _, template = self._new_task(
            task_type, platform, target, (), priority, timeout, None, max_retries, retry_delay
        )
        now_ms = int(time.time() * _MS)
        payload = schedules.periodic_scheduled(name, template, every, cron, start_at, now_ms)
        return definition_id(name), payload

    async def cancel_periodic(
        self, name: str, reason: str = "removed by user", confirm: bool = True
    ) -> None:
        """Remove the periodic definition ``name``: no occurrence after this (the tasks it
        created are left as they are; cancel them with :meth:`cancel_task`).

        Raises:
            ValidationError: a bad name.
            UnknownTaskError: there is no such definition.
            IllegalTransitionError: it was removed already.
        """
        problem = periodic_name_problem(name)
        if problem is not None:
            raise ValidationError(problem)
        _require_text("reason", reason)
        payload = PeriodicCancelled(cut_reason(reason))
        await self._write("cancel_periodic", definition_id(name), payload, confirm=confirm)

    async def get_periodic(self, name: str) -> dict[str, Any]:
        """The status document of the definition ``name`` (``status`` ``periodic`` while
        active, ``cancelled`` once removed; ``periodic`` holds the schedule, the next
        occurrence, the occurrences created and skipped).

        Raises:
            TaskNotFoundError: no such definition.
        """
        problem = periodic_name_problem(name)
        if problem is not None:
            raise ValidationError(problem)
        return await self.get_task_status(definition_id(name))

    async def list_periodic(self) -> list[dict[str, Any]]:
        """Every periodic definition, active and removed, sorted by name (each worker is asked
        for those of its partitions: a worker rebalancing makes this raise; ask again).

        Raises:
            InfrastructureError: a worker did not answer, or answered with an error.
        """
        if self._http is None:
            raise OrchestratorError("TaskManager is not started: use 'async with TaskManager(...)'")
        url = self.settings.api_url
        async with _deadline(
            self.settings, "list_periodic", f"the workers at {url} did not answer"
        ):
            try:
                return await schedules.list_definitions(
                    self._http, url, self.settings.topics.events
                )
            except (aiohttp.ClientError, ValueError) as exc:
                raise InfrastructureError(f"list_periodic: {exc}", retriable=True) from exc

    def _new_task(
        self,
        task_type: str,
        platform: str,
        target: str,
        dependencies: Sequence[str],
        priority: int,
        timeout: float | None,
        task_id: str | None,
        max_retries: int | None,
        retry_delay: float | None,
        max_rate_limited: int | None = None,
    ) -> tuple[str, TaskCreated]:
        """The id and ``TaskCreated`` of a new task, validated (see :meth:`create_task`)."""
        s = self.settings
        _check(name_problem("task_type", task_type))
        _check(name_problem("platform", platform))
        _check(target_problem(target))
        dependency_ids = _id_list(dependencies)
        _check(dependencies_problem(dependency_ids))
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or priority not in PRIORITY_RANGE
        ):
            raise ValidationError(
                f"priority must be an integer from 1 to {MAX_PRIORITY}, got {priority!r}"
            )
        task_id = task_id if task_id is not None else str(uuid.uuid4())
        _check(id_problem("task_id", task_id))
        if task_id in dependency_ids:
            raise ValidationError(f"task {task_id} cannot depend on itself")
        retries = s.max_retries if max_retries is None else max_retries
        if (
            isinstance(retries, bool)
            or not isinstance(retries, int)
            or not 0 <= retries < MAX_ATTEMPTS
        ):
            raise ValidationError(
                f"max_retries must be a non-negative integer, at most {MAX_ATTEMPTS - 1},"
                f" got {retries!r}"
            )
        rate_limited = s.max_rate_limited if max_rate_limited is None else max_rate_limited
        if (
            isinstance(rate_limited, bool)
            or not isinstance(rate_limited, int)
            or not 1 <= rate_limited <= MAX_RATE_LIMITED
        ):
            raise ValidationError(
                f"max_rate_limited must be an integer from 1 to {MAX_RATE_LIMITED},"
                f" got {rate_limited!r}"
            )
        payload = TaskCreated(
            task_type=task_type,
            platform=platform,
            target=target,
            priority=priority,
            dependencies=tuple(dependency_ids),
            timeout_ms=_policy_ms("timeout", s.default_timeout if timeout is None else timeout),
            max_attempts=retries + 1,
            retry_delay_ms=_policy_ms(
                "retry_delay", s.retry_delay if retry_delay is None else retry_delay, zero_ok=True
            ),
            result_ttl_ms=_policy_ms("result_ttl", s.result_ttl, zero_ok=True),
            dependency_wait_ms=_policy_ms("dependency_wait", s.dependency_wait),
            max_rate_limited=rate_limited,
        )
        return task_id, payload

    async def start_task(self, task_id: str, confirm: bool = True) -> None:
        """Record that an attempt of the task started (from ``ready`` or ``dispatched``).

        Raises:
            IllegalTransitionError: the task is in no status to start (failed, running, ...).
            UnknownTaskError: there is no such task.
        """
        _check(id_problem("task_id", task_id))
        await self._write("start_task", task_id, TaskStarted(), confirm=confirm)

    async def update_task_progress(
        self, task_id: str, progress: float, confirm: bool = True
    ) -> None:
        """Report progress of the running attempt, a fraction in [0, 1] that never decreases."""
        _check(id_problem("task_id", task_id))
        if isinstance(progress, bool) or not isinstance(progress, int | float):
            raise ValidationError(f"progress must be a number in [0, 1], got {progress!r}")
        if finite_problem("progress", progress) is not None:
            raise ValidationError(f"progress must be a finite number in [0, 1], got {progress}")
        if not 0.0 <= progress <= 1.0:
            raise ValidationError(f"progress must be in [0, 1], got {progress}")
        payload = TaskProgress(float(progress))
        await self._write("update_task_progress", task_id, payload, confirm=confirm)

    async def complete_task(self, task_id: str, result: Any = None, confirm: bool = True) -> None:
        """Record that the running attempt finished with ``result``.

        ``bytes`` are stored as they are; anything else is stored as JSON.

        Raises:
            ValidationError: the result is not JSON-serialisable or larger than
                ``MAX_RESULT_BYTES`` (512 KiB).
        """
        _check(id_problem("task_id", task_id))
        if isinstance(result, bytes | bytearray):
            body, content_type = bytes(result), "application/octet-stream"
        else:
            try:
                body = json.dumps(result, separators=(",", ":"), allow_nan=False).encode("utf-8")
            except (TypeError, ValueError) as exc:
                raise ValidationError(f"result is not JSON-serialisable: {exc}") from exc
            content_type = "application/json"
        if result_problem(len(body)) is not None:
            raise ValidationError(
                f"result of {len(body)} bytes exceeds the cap of {MAX_RESULT_BYTES} bytes"
                " (MAX_RESULT_BYTES)"
            )
        payload = TaskCompleted(body, content_type)
        await self._write("complete_task", task_id, payload, confirm=confirm)

    async def fail_task(
        self,
        task_id: str,
        reason: str | BaseException = "",
        retryable: bool = True,
        confirm: bool = True,
    ) -> None:
        """Record that the running attempt failed; a retryable one is retried if attempts remain.

        ``reason`` is any text, empty included, or the exception itself: its type is recorded
        with its message (``str(TimeoutError())`` is empty, so the spec's
        ``fail_task(id, str(e))`` says little; ``fail_task(id, e)`` says ``TimeoutError``). A
        reason longer than ``MAX_REASON_CHARS`` (2,000) is cut, not refused.
        """
        _check(id_problem("task_id", task_id))
        error = _reason_text(reason)
        payload = TaskFailed(cut_reason(error), bool(retryable))
        await self._write("fail_task", task_id, payload, confirm=confirm)

    async def cancel_task(
        self, task_id: str, reason: str = "cancelled by user", confirm: bool = True
    ) -> None:
        """Cancel the task (and, in turn, the tasks that depend on it).

        A reason longer than ``MAX_REASON_CHARS`` (2,000) is cut, not refused.
        """
        _check(id_problem("task_id", task_id))
        _require_text("reason", reason)
        payload = TaskCancelled(cut_reason(reason))
        await self._write("cancel_task", task_id, payload, confirm=confirm)

    async def _write(
        self,
        call: str,
        task_id: str,
        payload: Payload,
        event_id: str | None = None,
        confirm: bool = False,
    ) -> None:
        """Write the event; with ``confirm``, wait for the fold's verdict and raise a refusal.

        Raises:
            EventRejectedError: (a subclass by reason) the fold refused the event.
        """
        _check(id_problem("task_id", task_id))
        if self._producer is None:
            raise OrchestratorError("TaskManager is not started: use 'async with TaskManager(...)'")
        event = Event(
            event_id=event_id or str(uuid.uuid4()),
            task_id=task_id,
            occurred_at_ms=int(time.time() * _MS),
            source=self._source,
            payload=payload,
        )
        servers = self.settings.bootstrap_servers
        waiting_for = f"Kafka at {servers} did not acknowledge the event"
        async with _deadline(self.settings, call, waiting_for):
            try:
                metadata = await self._producer.send_and_wait(
                    self.settings.topics.events, encode_event(event), key=task_id.encode("utf-8")
                )
            except KafkaError as exc:
                raise InfrastructureError(
                    f"cannot write to {self.settings.topics.events}: {exc}", retriable=True
                ) from exc
            except BaseException:  # cancelled (the deadline): the event may still be written
                self._unacknowledged = True
                raise
            self._last_write[task_id] = (metadata.partition, metadata.offset)
            if confirm:
                await self._confirm(call, task_id, metadata.partition, metadata.offset)

    async def _confirm(self, call: str, task_id: str, partition: int, offset: int) -> None:
        """Raise the fold's refusal of the record at ``partition``:``offset``, if it refused it.

        An ``unknown`` verdict (the record was folded before the answering worker opened the
        partition: a rebalance in between) confirms nothing and raises nothing.
        """
        path = f"/tasks/{urllib.parse.quote(task_id, safe='')}/verdict"
        try:
            answer = await self._get(call, path, task_id)
        except RequestTimeoutError:
            raise
        except InfrastructureError as exc:
            raise UnconfirmedWriteError(
                f"{call}: the event was written ({self.settings.topics.events} partition "
                f"{partition}, offset {offset}) but its verdict could not be read: {exc}"
            ) from exc
        if answer.get("verdict") == "refused":
            reason, detail = str(answer.get("reason", "")), str(answer.get("detail", ""))
            raise REJECTION_ERRORS.get(reason, EventRejectedError)(call, reason, detail)

    async def _signal(self, call: str, signal: SchedulerSignal) -> None:
        if self._producer is None:
            raise OrchestratorError("not started")
        key = signal.platform.encode("utf-8")
        servers = self.settings.bootstrap_servers
        waiting_for = f"Kafka at {servers} did not acknowledge the signal"
        async with _deadline(self.settings, call, waiting_for):
            try:
                await self._producer.send_and_wait(
                    self.settings.topics.signals, encode_signal(signal), key=key
                )
            except KafkaError as exc:
                raise InfrastructureError(
                    f"cannot write to {self.settings.topics.signals}: {exc}", retriable=True
                ) from exc
            except BaseException:
                self._unacknowledged = True
                raise

    # -- reads --------------------------------------------------------------------------

    async def get_task_status(self, task_id: str) -> dict[str, Any]:
        """The task's current state as a dict (``status``, ``attempt``, ``progress``, ...).

        Raises:
            ValidationError: ``task_id`` is not a valid id.
            TaskNotFoundError: no such task.
            RequestTimeoutError: no answer within ``request_timeout``.
        """
        _check(id_problem("task_id", task_id))
        return await self._get("get_task_status", f"/tasks/{_segment(task_id)}", task_id)

    async def get_task_result(self, task_id: str) -> Any:
        """The completed task's result: the JSON value, or ``bytes``.

        Raises:
            ValidationError: ``task_id`` is not a valid id.
            TaskNotFoundError: no such task.
            ResultNotReadyError: the task has not completed.
            ResultExpiredError: the result is older than ``result_ttl``.
            RequestTimeoutError: no answer within ``request_timeout``.
        """
        _check(id_problem("task_id", task_id))
        path = f"/tasks/{_segment(task_id)}/result"
        document = await self._get("get_task_result", path, task_id)
        body = base64.b64decode(document["result_b64"])
        if document["content_type"] == "application/json":
            return json.loads(body)
        return body

    async def _get(self, call: str, path: str, task_id: str | None = None) -> dict[str, Any]:
        if self._http is None:
            raise OrchestratorError("TaskManager is not started: use 'async with TaskManager(...)'")
        params = {}
        url = self.settings.api_url.rstrip("/") + path
        waiting_for = f"the worker at {url} did not answer"
        if task_id is not None and task_id in self._last_write:
            partition, offset = self._last_write[task_id]
            wait_s = self._read_wait_s()
            params["after"] = f"{partition}:{offset}"
            params["wait"] = str(wait_s)
            waiting_for += (
                f" (it waits up to {wait_s:g} s for its fold to process this client's"
                " last write to the task)"
            )
        async with _deadline(self.settings, call, waiting_for):
            status, document = await self._get_retrying(url, params)
        if status == 200 and isinstance(document, dict):
            return document
        detail = document.get("detail", document) if isinstance(document, dict) else document
        if status == 404:
            raise TaskNotFoundError(detail)
        if status == 409:
            raise ResultNotReadyError(detail)
        if status == 410:
            raise ResultExpiredError(detail)
        if status == 400:
            raise ValidationError(f"the worker refused the request: {detail}")
        raise InfrastructureError(f"worker answered {status}: {detail}", retriable=status >= 500)

    async def _get_retrying(self, url: str, params: dict[str, str]) -> tuple[int, Any]:
        """GET ``url``, retrying what may pass (a worker starting, a rebalance, a restore).

        Connection errors and 503 answers are retried with backoff for up to ``read_timeout``
        seconds; after that the last one is raised (connection) or returned (503).
        """
        assert self._http is not None
        began = time.monotonic()
        backoff_s = RETRY_FIRST_S
        while True:
            try:
                async with self._http.get(url, params=params) as response:
                    document: Any = await response.json(content_type=None)
                    status = response.status
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                problem: Exception | None = exc
            else:
                problem = None
                if status != 503:
                    return status, document
            waited_s = time.monotonic() - began
            if waited_s + backoff_s > self.settings.read_timeout:
                if problem is not None:
                    raise InfrastructureError(
                        f"cannot read from the worker at {url} (tried for {waited_s:.1f} s, "
                        f"read_timeout {self.settings.read_timeout:g} s): {problem}",
                        retriable=True,
                    ) from problem
                return status, document
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, RETRY_MAX_S)


@dataclass
class _Call:
    name: str
    waiting_for: str


_CALL: ContextVar[_Call | None] = ContextVar("orchestrator_client_call", default=None)
"""The public client call under way in this task (its deadline covers the calls it makes)."""


@contextlib.asynccontextmanager
async def _deadline(settings: Settings, call: str, waiting_for: str) -> AsyncIterator[None]:
    """Bound the body by ``request_timeout``; the deadline passing raises
    :class:`RequestTimeoutError` naming ``call`` and ``waiting_for``.

    Inside another call's deadline (``SmartScheduler`` calling ``TaskManager``), the outer
    deadline is the one that counts, and ``waiting_for`` says what the outer call waits for.
    """
    outer = _CALL.get()
    if outer is not None:
        outer.waiting_for = waiting_for
        yield
        return
    current = _Call(call, waiting_for)
    token = _CALL.set(current)
    try:
        async with asyncio.timeout(settings.request_timeout) as timeout:
            yield
    except TimeoutError as exc:
        if not timeout.expired():
            raise
        raise RequestTimeoutError(call, settings.request_timeout, current.waiting_for) from exc
    finally:
        _CALL.reset(token)


async def _abandon(producer: AIOKafkaProducer) -> None:
    """Stop ``producer`` without waiting for its pending writes (its broker does not answer).

    ``AIOKafkaProducer.stop`` waits for every pending write with no deadline; this cancels the
    producer's sender and closes its connections instead, within :data:`_ABANDON_S`.
    """
    producer._closed = True  # what stop() sets first: no "unclosed producer" warning
    sender = getattr(producer, "_sender", None)
    with contextlib.suppress(Exception):
        async with asyncio.timeout(_ABANDON_S):
            if sender is not None:
                await sender.close()
            await producer.client.close()


def _check(problem: str | None) -> None:
    if problem is not None:
        raise ValidationError(problem)


def _segment(value: str) -> str:
    """``value`` escaped as one URL path segment."""
    return urllib.parse.quote(value, safe="")


def _id_list(values: object) -> list[Any]:
    if isinstance(values, str | bytes):
        raise ValidationError("dependencies must be a list of task ids, not a string")
    if not isinstance(values, Iterable):
        raise ValidationError(f"dependencies must be a list of task ids, got {values!r}")
    return list(values)


async def _close_after(close: Callable[[], Awaitable[None]], exc: BaseException | None) -> None:
    """Close at the end of an ``async with``; a failure to close is raised only if nothing else
    ended the block (else the error that ended it is the one to report)."""
    try:
        await close()
    except InfrastructureError:
        if exc is None:
            raise


def _reason_text(reason: object) -> str:
    """The error text of a failure: an exception as ``Type: message``, empty as said so."""
    if isinstance(reason, BaseException):
        message = str(reason)
        return f"{type(reason).__name__}: {message}" if message else type(reason).__name__
    if not isinstance(reason, str):
        raise ValidationError(f"reason must be a string or an exception, got {reason!r}")
    return reason or "failed (no reason given)"


def _require_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{name} must be a non-empty string, got {value!r}")


def _policy_ms(name: str, seconds: object, zero_ok: bool = False) -> int:
    """``seconds`` in milliseconds: finite, > 0 (or 0 if ``zero_ok``), at least 1 ms unless 0,
    at most :data:`~streams.domain.bounds.MAX_POLICY_MS`."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValidationError(f"{name} must be a number of seconds, got {seconds!r}")
    if finite_problem(name, seconds) is not None:
        raise ValidationError(f"{name} must be a finite number of seconds, got {seconds}")
    if seconds < 0 or (seconds == 0 and not zero_ok):
        raise ValidationError(
            f"{name} must be {'>= 0' if zero_ok else '> 0'} seconds, got {seconds}"
        )
    if seconds > MAX_POLICY_MS / _MS:
        raise ValidationError(
            f"{name} must be at most {MAX_POLICY_MS // _MS} s (366 days), got {seconds:g} s"
        )
    milliseconds = int(seconds * _MS)
    if seconds > 0 and milliseconds < 1:
        raise ValidationError(
            f"{name} must be at least 0.001 s (1 ms, the smallest unit of a task's policy), "
            f"got {seconds:g} s"
        )
    return milliseconds


class SmartScheduler:
    """Schedule tasks on rate-limited platforms, and see each platform's limit status.

    Args:
        config: the spec's keys (``max_concurrent_tasks``, ``task_timeout``, ``retry_attempts``,
            ``retry_delay``, ``<platform>_rate_limits``) plus those of :class:`TaskManager`.
            The limits themselves are enforced by the workers, from *their* configuration.

    ``SmartScheduler(config).schedule_task(...)`` works without ``async with`` (the connection
    opens on first use); call :meth:`close` when done, or use ``async with``.
    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self._tasks = TaskManager(config)
        self._started = False

    @property
    def settings(self) -> Settings:
        """The client's settings."""
        return self._tasks.settings

    async def __aenter__(self) -> Self:
        await self._ensure_started()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await _close_after(self.close, exc)

    async def close(self) -> None:
        """Disconnect (within ``request_timeout``, see :meth:`TaskManager.close`)."""
        if self._started:
            self._started = False
            await self._tasks.close()

    async def schedule_task(
        self,
        task_type: str,
        platform: str,
        target: str,
        priority: int = 5,
        dependencies: Sequence[str] = (),
        task_id: str | None = None,
    ) -> str:
        """Submit a task for its platform's scheduler; return its id (see ``create_task``).

        Raises:
            ValidationError: bad arguments (checked before connecting); nothing was written.
            RequestTimeoutError: connecting and writing took longer than ``request_timeout``.
        """
        task_id, payload = self._tasks._new_task(
            task_type, platform, target, dependencies, priority, None, task_id, None, None
        )
        async with self._deadline("schedule_task"):
            await self._ensure_started()
            await self._tasks._write(
                "schedule_task", task_id, payload, event_id=derived_event_id(task_id, "created")
            )
        return task_id

    async def get_task_status(self, task_id: str) -> dict[str, Any]:
        """The task's status, with ``waiting_on`` saying why it is not running (if it is not)."""
        _check(id_problem("task_id", task_id))
        async with self._deadline("get_task_status"):
            await self._ensure_started()
            return await self._tasks.get_task_status(task_id)

    async def limit_status(self, platform: str) -> dict[str, Any]:
        """The platform's limits now: per window the remaining calls and the next call time,
        the pause, the rate factor of adaptive throttling, in-flight and queued tasks."""
        _check(name_problem("platform", platform))
        async with self._deadline("limit_status"):
            await self._ensure_started()
            return await self._tasks._get("limit_status", f"/limits/{_segment(platform)}")

    async def limit_statuses(self) -> dict[str, dict[str, Any]]:
        """:meth:`limit_status` of every platform with a ``<platform>_rate_limits`` key (one
        ``request_timeout`` for them all)."""
        async with self._deadline("limit_statuses"):
            return {p: await self.limit_status(p) for p in self.settings.limited_platforms}

    async def pause_platform(self, platform: str, seconds: float) -> None:
        """Hold every dispatch on ``platform`` for ``seconds`` (0 resumes at once).

        Raises:
            ValidationError: ``seconds`` is not a finite number from 0 (resume) or 0.001 to
                366 days, or ``platform`` is not a valid name (checked before connecting).
        """
        _check(name_problem("platform", platform))
        pause_ms = _policy_ms("seconds", seconds, zero_ok=True)
        async with self._deadline("pause_platform"):
            await self._ensure_started()
            now_ms = int(time.time() * _MS)
            until_ms = now_ms + pause_ms if pause_ms else 0
            signal = SchedulerSignal(platform, now_ms, PlatformPaused(until_ms))
            await self._tasks._signal("pause_platform", signal)

    async def resume_platform(self, platform: str) -> None:
        """End a pause of ``platform`` now."""
        await self.pause_platform(platform, 0)

    def _deadline(self, call: str) -> contextlib.AbstractAsyncContextManager[None]:
        bs = self.settings.bootstrap_servers
        return _deadline(self.settings, call, f"Kafka at {bs} did not answer")

    async def _ensure_started(self) -> None:
        if not self._started:
            await self._tasks.start()
            self._started = True
