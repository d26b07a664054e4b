"""``TaskManager``: the async client API of the spec. Writes events; reads status over HTTP.

Writes go to ``task.events`` with an idempotent producer (``acks=all``), keyed by task id.
Reads go to any worker's HTTP API (``api_url``), which forwards them to the worker that owns the
task. Each write remembers its partition and offset; the next read of that task asks the worker
to wait until its fold has processed that offset, so a read reflects the client's own writes.
"""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Self

import aiohttp
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas import encode_event
from schemas.records import encode_signal
from streams.config import Settings, load_settings
from streams.domain import (
    MAX_RESULT_BYTES,
    Event,
    Payload,
    Source,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    derived_event_id,
)
from streams.domain.signals import PlatformPaused, SchedulerSignal
from streams.errors import (
    InfrastructureError,
    OrchestratorError,
    ResultExpiredError,
    ResultNotReadyError,
    TaskNotFoundError,
    ValidationError,
)

PRIORITY_RANGE = range(1, 11)
_MS = 1000


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

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect to Kafka. Called by ``async with``."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            max_request_size=2_000_000,
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise InfrastructureError(
                f"cannot reach Kafka at {self.settings.bootstrap_servers}: {exc}", retriable=True
            ) from exc
        self._producer = producer
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.read_timeout + 5)
        )

    async def close(self) -> None:
        """Flush pending writes and disconnect."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._http is not None:
            await self._http.close()
            self._http = None

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
    ) -> str:
        """Submit a task; return its id.

        Args:
            dependencies: ids of tasks that must complete first.
            priority: 1 (most urgent) to 10.
            timeout: seconds one attempt may run (default ``default_timeout``).
            task_id: a caller-chosen id (default: a new uuid).
            max_retries, retry_delay: override the configured retry policy for this task.

        Raises:
            ValidationError: bad arguments; nothing was written.
        """
        s = self.settings
        for name, value in (("task_type", task_type), ("platform", platform), ("target", target)):
            _require_text(name, value)
        if isinstance(dependencies, str):
            raise ValidationError("dependencies must be a list of task ids, not a string")
        for dependency in dependencies:
            _require_text("dependency id", dependency)
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or priority not in PRIORITY_RANGE
        ):
            raise ValidationError(f"priority must be an integer from 1 to 10, got {priority!r}")
        task_id = task_id if task_id is not None else str(uuid.uuid4())
        _require_text("task_id", task_id)
        if task_id in dependencies:
            raise ValidationError(f"task {task_id} cannot depend on itself")
        retries = s.max_retries if max_retries is None else max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValidationError(f"max_retries must be a non-negative integer, got {retries!r}")
        payload = TaskCreated(
            task_type=task_type,
            platform=platform,
            target=target,
            priority=priority,
            dependencies=tuple(dependencies),
            timeout_ms=_positive_ms("timeout", s.default_timeout if timeout is None else timeout),
            max_attempts=retries + 1,
            retry_delay_ms=_positive_ms(
                "retry_delay", s.retry_delay if retry_delay is None else retry_delay, zero_ok=True
            ),
            result_ttl_ms=_positive_ms("result_ttl", s.result_ttl, zero_ok=True),
            dependency_wait_ms=_positive_ms("dependency_wait", s.dependency_wait),
        )
        await self._write(task_id, payload, event_id=derived_event_id(task_id, "created"))
        return task_id

    async def start_task(self, task_id: str) -> None:
        """Record that an attempt of the task started (from ``ready`` or ``dispatched``)."""
        await self._write(task_id, TaskStarted())

    async def update_task_progress(self, task_id: str, progress: float) -> None:
        """Report progress of the running attempt, a fraction in [0, 1] that never decreases."""
        if (
            isinstance(progress, bool)
            or not isinstance(progress, int | float)
            or math.isnan(progress)
        ):
            raise ValidationError(f"progress must be a number in [0, 1], got {progress!r}")
        if not 0.0 <= progress <= 1.0:
            raise ValidationError(f"progress must be in [0, 1], got {progress}")
        await self._write(task_id, TaskProgress(float(progress)))

    async def complete_task(self, task_id: str, result: Any = None) -> None:
        """Record that the running attempt finished with ``result``.

        ``bytes`` are stored as they are; anything else is stored as JSON.

        Raises:
            ValidationError: the result is not JSON-serialisable or larger than the cap.
        """
        if isinstance(result, bytes | bytearray):
            body, content_type = bytes(result), "application/octet-stream"
        else:
            try:
                body = json.dumps(result, separators=(",", ":")).encode("utf-8")
            except (TypeError, ValueError) as exc:
                raise ValidationError(f"result is not JSON-serialisable: {exc}") from exc
            content_type = "application/json"
        if len(body) > MAX_RESULT_BYTES:
            raise ValidationError(
                f"result of {len(body)} bytes exceeds the cap of {MAX_RESULT_BYTES} bytes"
            )
        await self._write(task_id, TaskCompleted(body, content_type))

    async def fail_task(self, task_id: str, reason: str, retryable: bool = True) -> None:
        """Record that the running attempt failed; a retryable one is retried if attempts remain."""
        _require_text("reason", reason)
        await self._write(task_id, TaskFailed(reason, bool(retryable)))

    async def cancel_task(self, task_id: str, reason: str = "cancelled by user") -> None:
        """Cancel the task (and, in turn, the tasks that depend on it)."""
        _require_text("reason", reason)
        await self._write(task_id, TaskCancelled(reason))

    async def _write(self, task_id: str, payload: Payload, event_id: str | None = None) -> None:
        _require_text("task_id", task_id)
        if self._producer is None:
            raise OrchestratorError("TaskManager is not started: use 'async with TaskManager(...)'")
        event = Event(
            event_id=event_id or str(uuid.uuid4()),
            task_id=task_id,
            occurred_at_ms=int(time.time() * _MS),
            source=self._source,
            payload=payload,
        )
        try:
            metadata = await self._producer.send_and_wait(
                self.settings.topics.events, encode_event(event), key=task_id.encode("utf-8")
            )
        except KafkaError as exc:
            raise InfrastructureError(
                f"cannot write to {self.settings.topics.events}: {exc}", retriable=True
            ) from exc
        self._last_write[task_id] = (metadata.partition, metadata.offset)

    async def _signal(self, signal: SchedulerSignal) -> None:
        if self._producer is None:
            raise OrchestratorError("not started")
        key = signal.platform.encode("utf-8")
        try:
            await self._producer.send_and_wait(
                self.settings.topics.signals, encode_signal(signal), key=key
            )
        except KafkaError as exc:
            raise InfrastructureError(
                f"cannot write to {self.settings.topics.signals}: {exc}", retriable=True
            ) from exc

    # -- reads --------------------------------------------------------------------------

    async def get_task_status(self, task_id: str) -> dict[str, Any]:
        """The task's current state as a dict (``status``, ``attempt``, ``progress``, ...).

        Raises:
            TaskNotFoundError: no such task.
        """
        return await self._get(task_id, f"/tasks/{task_id}")

    async def get_task_result(self, task_id: str) -> Any:
        """The completed task's result: the JSON value, or ``bytes``.

        Raises:
            TaskNotFoundError: no such task.
            ResultNotReadyError: the task has not completed.
            ResultExpiredError: the result is older than ``result_ttl``.
        """
        document = await self._get(task_id, f"/tasks/{task_id}/result")
        body = base64.b64decode(document["result_b64"])
        if document["content_type"] == "application/json":
            return json.loads(body)
        return body

    async def _get(self, task_id: str, path: str) -> dict[str, Any]:
        _require_text("id", task_id)
        if self._http is None:
            raise OrchestratorError("TaskManager is not started: use 'async with TaskManager(...)'")
        params = {}
        if task_id in self._last_write:
            partition, offset = self._last_write[task_id]
            params["after"] = f"{partition}:{offset}"
            params["wait"] = str(self.settings.read_timeout)
        url = self.settings.api_url.rstrip("/") + path
        try:
            async with self._http.get(url, params=params) as response:
                document: dict[str, Any] = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise InfrastructureError(
                f"cannot read from the worker at {url}: {exc}", retriable=True
            ) from exc
        if status == 200:
            return document
        detail = document.get("detail", document)
        if status == 404:
            raise TaskNotFoundError(detail)
        if status == 409:
            raise ResultNotReadyError(detail)
        if status == 410:
            raise ResultExpiredError(detail)
        raise InfrastructureError(f"worker answered {status}: {detail}", retriable=status >= 500)


def _require_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{name} must be a non-empty string, got {value!r}")


def _positive_ms(name: str, seconds: float, zero_ok: bool = False) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or math.isnan(seconds):
        raise ValidationError(f"{name} must be a number of seconds, got {seconds!r}")
    if seconds < 0 or (seconds == 0 and not zero_ok):
        raise ValidationError(
            f"{name} must be {'>= 0' if zero_ok else '> 0'} seconds, got {seconds}"
        )
    return int(seconds * _MS)


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

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect."""
        if self._started:
            await self._tasks.close()
            self._started = False

    async def schedule_task(
        self,
        task_type: str,
        platform: str,
        target: str,
        priority: int = 5,
        dependencies: Sequence[str] = (),
        task_id: str | None = None,
    ) -> str:
        """Submit a task for its platform's scheduler; return its id (see ``create_task``)."""
        await self._ensure_started()
        return await self._tasks.create_task(
            task_type=task_type,
            platform=platform,
            target=target,
            priority=priority,
            dependencies=dependencies,
            task_id=task_id,
        )

    async def get_task_status(self, task_id: str) -> dict[str, Any]:
        """The task's status, with ``waiting_on`` saying why it is not running (if it is not)."""
        await self._ensure_started()
        return await self._tasks.get_task_status(task_id)

    async def limit_status(self, platform: str) -> dict[str, Any]:
        """The platform's limits now: per window the remaining calls and the next call time,
        the pause, the rate factor of adaptive throttling, in-flight and queued tasks."""
        _require_text("platform", platform)
        await self._ensure_started()
        return await self._tasks._get(platform, f"/limits/{platform}")

    async def limit_statuses(self) -> dict[str, dict[str, Any]]:
        """:meth:`limit_status` of every platform with a ``<platform>_rate_limits`` key."""
        return {p: await self.limit_status(p) for p in self.settings.limited_platforms}

    async def pause_platform(self, platform: str, seconds: float) -> None:
        """Hold every dispatch on ``platform`` for ``seconds`` (0 resumes at once)."""
        _require_text("platform", platform)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValidationError(f"seconds must be a non-negative number, got {seconds!r}")
        await self._ensure_started()
        now_ms = int(time.time() * _MS)
        until_ms = now_ms + int(seconds * _MS) if seconds else 0
        await self._tasks._signal(SchedulerSignal(platform, now_ms, PlatformPaused(until_ms)))

    async def resume_platform(self, platform: str) -> None:
        """End a pause of ``platform`` now."""
        await self.pause_platform(platform, 0)

    async def _ensure_started(self) -> None:
        if not self._started:
            await self._tasks.start()
            self._started = True
