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
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, overload

import aiohttp
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas import encode_event
from schemas.records import encode_signal
from streams import api_tls, schedules
from streams.auth import authorization as auth_headers
from streams.config import Settings, load_settings, policy_keys_given, setting_value
from streams.config_log import ConfigFollower
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
    TaskRetryRequested,
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
from streams.domain.config_events import ConfigTable
from streams.domain.events import MAX_RATE_LIMITED
from streams.domain.periodic import definition_id
from streams.domain.periodic import name_problem as periodic_name_problem
from streams.domain.signals import PlatformPaused, SchedulerSignal
from streams.errors import (
    REJECTION_ERRORS,
    BatchWriteError,
    ConfigurationError,
    EventRejectedError,
    InfrastructureError,
    OrchestratorError,
    RequestTimeoutError,
    ResultExpiredError,
    ResultNotReadyError,
    TaskNotFoundError,
    UnauthorizedError,
    UnconfirmedWriteError,
    ValidationError,
)
from streams.listing import DEFAULT_LIMIT, TaskQuery, parse_query
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
        self._given = policy_keys_given(config)
        self._config = ConfigFollower(self.settings)
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
            await self.settings.kafka.check_login()  # a refused login: one clear error
            producer = self.settings.kafka.producer(
                enable_idempotence=True,
                acks="all",
                max_request_size=2_000_000,
                partitioner=partitioner,  # a task's group places it (streams.partitions)
            )
            try:
                await producer.start()
                await self._config.start()  # the settings in force (orchestrator.config)
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
            timeout=aiohttp.ClientTimeout(total=self._read_wait_s() + 5),
            headers=auth_headers(self.settings.api_token),
            connector=api_tls.connector(self.settings.api_cafile),  # https: trust api_cafile
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
            try:
                if http is not None:
                    await http.close()
            finally:
                await self._config.close()

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
        arguments = (
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
        defaults = await self._policy_defaults(platform, task_type)  # no wait: taken as fetched
        task_id, payload = self._new_task(*arguments, defaults=defaults)
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
            except aiohttp.ClientConnectorCertificateError as exc:
                raise api_tls.untrusted(url, exc) from exc
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
        defaults: Mapping[str, Any] | None = None,
    ) -> tuple[str, TaskCreated]:
        """The id and ``TaskCreated`` of a new task, validated (see :meth:`create_task`);
        ``defaults``: the policy defaults in force for its platform and type."""
        s = replace(self.settings, **defaults) if defaults else self.settings
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

    async def _policy_defaults(self, platform: str, task_type: str) -> dict[str, Any]:
        """The policy defaults ``orchestrator.config`` sets for a new task of ``task_type`` on
        ``platform``, except those this client sets itself (its config, ``ORCHESTRATOR_*``)."""
        return self._defaults_in(await self._config.refresh(), platform, task_type)

    def _defaults_in(self, table: ConfigTable, platform: str, task_type: str) -> dict[str, Any]:
        defaults: dict[str, Any] = {}
        if not isinstance(platform, str) or not isinstance(task_type, str):
            return defaults  # a bad name: _new_task refuses it
        for name, value in table.policy(platform, task_type).items():
            if name in self._given:
                continue
            try:
                defaults[name] = setting_value(name, platform, value)
            except ConfigurationError:
                continue  # not written by `orchestrator config set`: the client's own holds
        return defaults

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

    async def retry_task(self, task_id: str, confirm: bool = True) -> None:
        """Run a failed or cancelled task again, as a new attempt.

        The task becomes ready again (pending first if it has dependencies: it asks them
        anew, and runs once they have all completed) and its platform's scheduler dispatches
        it within the platform's limits. A task that had spent all its attempts gets one more
        (a failure of it is final); one that had attempts left keeps them.

        Raises:
            IllegalTransitionError: the task is neither failed nor cancelled (running,
                completed, ...).
            UnknownTaskError: there is no such task.
        """
        _check(id_problem("task_id", task_id))
        await self._write("retry_task", task_id, TaskRetryRequested(), confirm=confirm)

    async def create_tasks(
        self, specs: Iterable[Mapping[str, Any]], confirm: bool = True
    ) -> list[str]:
        """Submit many tasks at once; return their ids, in the order given.

        Each spec holds :meth:`create_task`'s arguments (``task_type``, ``platform``,
        ``target`` and optionally ``dependencies``, ``priority``, ``timeout``, ``task_id``,
        ``max_retries``, ``retry_delay``, ``max_rate_limited``). Every spec is validated before
        anything is sent; the events are then sent together (one flush), and with ``confirm``
        each one's verdict is awaited as :meth:`create_task` does. The whole call has one
        ``request_timeout``. Creating an id this client already created is idempotent, as with
        :meth:`create_task`.

        Raises:
            ValidationError: a bad spec (named by its index), two specs with one task id, or
                more than :data:`MAX_BATCH` specs; nothing was written.
            BatchWriteError: some tasks were refused (or their verdict not read); its
                ``errors`` names them, the others were created.
            RequestTimeoutError: the batch took longer than ``request_timeout``.
        """
        tasks = self._new_tasks(specs, await self._config.refresh())
        if not tasks:
            return []
        if self._producer is None:
            raise OrchestratorError("TaskManager is not started: use 'async with TaskManager(...)'")
        producer = self._producer
        topic = self.settings.topics.events
        now_ms = int(time.time() * _MS)
        waiting_for = f"Kafka at {self.settings.bootstrap_servers} did not acknowledge the events"
        async with _deadline(self.settings, "create_tasks", waiting_for):
            try:
                sent = [
                    await producer.send(
                        topic,
                        encode_event(
                            Event(
                                derived_event_id(task_id, "created"),
                                task_id,
                                now_ms,
                                self._source,
                                payload,
                            )
                        ),
                        key=task_id.encode("utf-8"),
                    )
                    for task_id, payload in tasks
                ]
                await producer.flush()
                written = await asyncio.gather(*sent)
            except KafkaError as exc:
                raise InfrastructureError(
                    f"cannot write to {topic}: {exc}", retriable=True
                ) from exc
            except BaseException:
                self._unacknowledged = True
                raise
            task_ids = [task_id for task_id, _ in tasks]
            for task_id, metadata in zip(task_ids, written, strict=True):
                self._last_write[task_id] = (metadata.partition, metadata.offset)
            if confirm:
                errors = await self._confirm_all("create_tasks", task_ids, written)
                if errors:
                    raise BatchWriteError("create_tasks", task_ids, errors)
        return task_ids

    def _new_tasks(
        self, specs: Iterable[Mapping[str, Any]], table: ConfigTable | None = None
    ) -> list[tuple[str, TaskCreated]]:
        """The id and ``TaskCreated`` of each spec of :meth:`create_tasks`, validated, with
        the policy defaults in force in ``table``."""
        if isinstance(specs, Mapping | str | bytes) or not isinstance(specs, Iterable):
            raise ValidationError("specs must be a list of mappings of create_task's arguments")
        tasks: list[tuple[str, TaskCreated]] = []
        seen: dict[str, int] = {}
        for index, spec in enumerate(specs):
            if len(tasks) >= MAX_BATCH:
                raise ValidationError(f"a batch holds at most {MAX_BATCH} tasks")
            if not isinstance(spec, Mapping):
                raise ValidationError(f"specs[{index}] must be a mapping, got {spec!r}")
            unknown = sorted(set(spec) - set(_SPEC_DEFAULTS) - _SPEC_REQUIRED)
            missing = sorted(_SPEC_REQUIRED - set(spec))
            if unknown or missing:
                problem = f"unknown keys {unknown}" if unknown else f"missing keys {missing}"
                raise ValidationError(f"specs[{index}]: {problem}")
            try:
                arguments = {**_SPEC_DEFAULTS, **spec}
                if table is not None:
                    arguments["defaults"] = self._defaults_in(
                        table, arguments["platform"], arguments["task_type"]
                    )
                task_id, payload = self._new_task(**arguments)
            except ValidationError as exc:
                raise ValidationError(f"specs[{index}]: {exc}") from exc
            if task_id in seen:
                raise ValidationError(
                    f"specs[{seen[task_id]}] and specs[{index}] have one task id, {task_id}"
                )
            seen[task_id] = index
            tasks.append((task_id, payload))
        return tasks

    async def _confirm_all(
        self, call: str, task_ids: list[str], written: list[Any]
    ) -> dict[str, OrchestratorError]:
        """Await every write's verdict (a few at a time); the errors, by task id."""
        errors: dict[str, OrchestratorError] = {}
        gate = asyncio.Semaphore(_CONFIRMING_AT_ONCE)

        async def confirm(task_id: str, partition: int, offset: int) -> None:
            async with gate:
                try:
                    await self._confirm(call, task_id, partition, offset)
                except (EventRejectedError, UnconfirmedWriteError) as exc:
                    errors[task_id] = exc

        await asyncio.gather(
            *(
                confirm(task_id, metadata.partition, metadata.offset)
                for task_id, metadata in zip(task_ids, written, strict=True)
            )
        )
        return {task_id: errors[task_id] for task_id in task_ids if task_id in errors}

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

    async def list_tasks(
        self,
        status: str | Iterable[str] | None = None,
        platform: str | None = None,
        task_type: str | None = None,
        limit: int = DEFAULT_LIMIT,
        after: str | None = None,
    ) -> TaskPage:
        """One page of the tasks of every worker, sorted by task id.

        Args:
            status: a status (``"failed"``), several (a list), or None for any.
            platform, task_type: only tasks with this value (None: any).
            limit: the most tasks in the page, 1 to 1000.
            after: start after this task id: the ``next_after`` of the previous page.

        Returns:
            a :class:`TaskPage`: a sequence of compact status dicts (``task_id``, ``status``,
            ``task_type``, ``platform``, ``target``, ``priority``, ``attempt``,
            ``max_attempts``, ``progress``, ``last_error``, ``created_at_ms``,
            ``updated_at_ms``, ``completed_at_ms``), and ``next_after``, the cursor of the
            next page (None after the last page). A page may hold fewer than ``limit`` tasks,
            even none, while ``next_after`` is set: each worker reads at most 10,000 tasks per
            request. :meth:`iter_tasks` walks every page.

        Raises:
            ValidationError: an unknown status (the message names the valid ones), a bad
                platform, task type, ``after`` or ``limit``; nothing was asked.
            RequestTimeoutError: no answer within ``request_timeout``.
        """
        query = task_query(status, platform, task_type, limit, after)
        document = await self._get("list_tasks", "/tasks", params=query.params())
        tasks = document.get("tasks")
        if not isinstance(tasks, list):
            raise InfrastructureError(f"the worker answered no task list: {document!r:.200}")
        next_after = document.get("next_after")
        return TaskPage(tuple(tasks), next_after if isinstance(next_after, str) else None)

    async def iter_tasks(
        self,
        status: str | Iterable[str] | None = None,
        platform: str | None = None,
        task_type: str | None = None,
        page_size: int = DEFAULT_LIMIT,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every task :meth:`list_tasks` lists, page after page (each page one request, with
        its own ``request_timeout``); a task is listed once, in task id order."""
        after: str | None = None
        while True:
            page = await self.list_tasks(status, platform, task_type, page_size, after)
            for task in page:
                yield task
            if page.next_after is None:
                return
            after = page.next_after

    async def _get(
        self,
        call: str,
        path: str,
        task_id: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        if self._http is None:
            raise OrchestratorError("TaskManager is not started: use 'async with TaskManager(...)'")
        params = dict(params or {})
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
        if status == 401:
            raise UnauthorizedError(url, bool(self.settings.api_token))
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
            except aiohttp.ClientConnectorCertificateError as exc:
                raise api_tls.untrusted(url, exc) from exc  # waiting cannot help
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


MAX_BATCH = 10_000
"""The most tasks one :meth:`TaskManager.create_tasks` call takes."""
_CONFIRMING_AT_ONCE = 16
"""Verdicts a batch awaits at once."""
_SPEC_REQUIRED = frozenset({"task_type", "platform", "target"})
_SPEC_DEFAULTS: dict[str, Any] = {
    "dependencies": (),
    "priority": 5,
    "timeout": None,
    "task_id": None,
    "max_retries": None,
    "retry_delay": None,
    "max_rate_limited": None,
}
"""The optional keys of a :meth:`TaskManager.create_tasks` spec, with their defaults."""


@dataclass(frozen=True)
class TaskPage(Sequence[dict[str, Any]]):
    """One page of :meth:`TaskManager.list_tasks`: the tasks, and where the next page starts.

    Attributes:
        tasks: compact status dicts, sorted by task id.
        next_after: pass it as ``after`` for the next page; None when no task is left. A page
            shorter than asked (even empty) may still have one: the workers read a bounded
            number of tasks per request, and a full page may be followed by an empty one.
    """

    tasks: tuple[dict[str, Any], ...]
    next_after: str | None

    def __len__(self) -> int:
        return len(self.tasks)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | Sequence[dict[str, Any]]:
        return self.tasks[index]


def task_query(
    status: str | Iterable[str] | None,
    platform: str | None,
    task_type: str | None,
    limit: int,
    after: str | None,
) -> TaskQuery:
    """The query of :meth:`TaskManager.list_tasks`, validated as the worker validates it."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise ValidationError(f"limit must be an integer from 1 to 1000, got {limit!r}")
    pairs = [("limit", str(limit))]
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        if not all(isinstance(s, str) for s in statuses):
            raise ValidationError(f"status must be a status name or a list of them: {status!r}")
        if any("," in s for s in statuses) or not statuses:
            raise ValidationError(f"status must name one or more statuses, got {status!r}")
        pairs.append(("status", ",".join(statuses)))
    for name, value in (("platform", platform), ("task_type", task_type), ("after", after)):
        if value is not None:
            if not isinstance(value, str) or not value:
                raise ValidationError(f"{name} must be a non-empty string, got {value!r}")
            pairs.append((name, value))
    return parse_query(pairs)


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
