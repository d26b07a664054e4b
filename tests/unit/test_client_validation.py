"""The client refuses bad input before it writes or connects, and every call has a deadline.

No broker here: the clients are never started (validation comes first), or get fake
producers and HTTP sessions that record what would be sent, or never answer.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from streams import web
from streams.client import MAX_READ_WAIT_S, SmartScheduler, TaskManager
from streams.domain import TaskCancelled, TaskCreated, TaskFailed
from streams.domain.bounds import (
    MAX_DEPENDENCIES,
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_REASON_CHARS,
    MAX_RESULT_BYTES,
    MAX_TARGET_BYTES,
)
from streams.domain.config_events import ConfigTable
from streams.errors import (
    InfrastructureError,
    OrchestratorError,
    RequestTimeoutError,
    ValidationError,
)

NOWHERE = {"bootstrap_servers": "127.0.0.1:1", "api_url": "http://127.0.0.1:1"}
"""Nothing listens there: a test that connected would fail, not pass."""

GOOD = {"task_type": "profile_scrape", "platform": "linkedin", "target": "in/ada"}


@dataclass
class _Metadata:
    partition: int = 0
    offset: int = 7


@dataclass
class FakeProducer:
    """Records the events the client sends; ``hang`` makes every send (and stop) never end."""

    hang: bool = False
    sent: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    stopped: bool = False
    client: Any = None

    def __post_init__(self) -> None:
        self.client = self

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> _Metadata:
        if self.hang:
            await asyncio.Event().wait()
        self.sent.append((topic, value, key))
        return _Metadata()

    async def stop(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        self.stopped = True

    async def close(self) -> None:  # producer.client.close(), when the client drops it
        self.stopped = True


class _Response:
    status = 200

    async def json(self, content_type: object = None) -> dict[str, Any]:
        return {"status": "completed", "content_type": "application/json", "result_b64": "MQ=="}


@dataclass
class FakeHttp:
    """Records the URLs and query parameters of reads; ``hang`` makes them never answer."""

    hang: bool = False
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    @asynccontextmanager
    async def get(self, url: str, params: dict[str, str]) -> AsyncIterator[_Response]:
        self.requests.append((url, params))
        if self.hang:
            await asyncio.Event().wait()
        yield _Response()

    async def close(self) -> None:
        pass


class NoRunTimeSettings:
    """``orchestrator.config`` with nothing set (the client's own settings hold)."""

    async def refresh(self) -> ConfigTable:
        return ConfigTable()

    async def close(self) -> None:
        pass


def manager(config: dict[str, Any] | None = None, hang: bool = False) -> TaskManager:
    """A TaskManager with fake connections (never connected to anything)."""
    tm = TaskManager({**NOWHERE, **(config or {})})
    tm._producer = FakeProducer(hang=hang)  # type: ignore[assignment]
    tm._http = FakeHttp(hang=hang)  # type: ignore[assignment]
    tm._config = NoRunTimeSettings()  # type: ignore[assignment]
    return tm


def sent(tm: TaskManager) -> list[tuple[str, bytes, bytes]]:
    producer = tm._producer
    assert isinstance(producer, FakeProducer)
    return producer.sent


# -- create_task ------------------------------------------------------------------------


async def test_a_valid_task_is_written_so_the_refusals_below_are_not_vacuous() -> None:
    tm = manager()
    task_id = await tm.create_task(**GOOD, task_id="scrape-1", timeout=0.001)
    assert task_id == "scrape-1"
    assert [key for _, _, key in sent(tm)] == [b"scrape-1"]


@pytest.mark.parametrize(
    ("seconds", "message"),
    [
        (math.nan, r"timeout must be a finite number of seconds, got nan"),
        (math.inf, r"timeout must be a finite number of seconds, got inf"),
        (-math.inf, r"timeout must be a finite number of seconds, got -inf"),
        (-1, r"timeout must be > 0 seconds, got -1"),
        (0, r"timeout must be > 0 seconds, got 0"),
        (0.0001, r"timeout must be at least 0\.001 s \(1 ms"),
        (1e9, r"timeout must be at most 31622400 s \(366 days\)"),
        (1e308, r"timeout must be at most 31622400 s"),
        (True, r"timeout must be a number of seconds, got True"),
        ("30", r"timeout must be a number of seconds, got '30'"),
    ],
)
async def test_a_bad_timeout_is_refused_naming_the_limit(seconds: Any, message: str) -> None:
    tm = manager()
    with pytest.raises(ValidationError, match=message):
        await tm.create_task(**GOOD, timeout=seconds)
    assert sent(tm) == []


@pytest.mark.parametrize(
    ("delay", "message"),
    [
        (math.nan, r"retry_delay must be a finite number of seconds, got nan"),
        (math.inf, r"retry_delay must be a finite number of seconds, got inf"),
        (-1, r"retry_delay must be >= 0 seconds, got -1"),
        (0.0004, r"retry_delay must be at least 0\.001 s \(1 ms"),
    ],
)
async def test_a_bad_retry_delay_is_refused(delay: float, message: str) -> None:
    tm = manager()
    with pytest.raises(ValidationError, match=message):
        await tm.create_task(**GOOD, retry_delay=delay)
    assert sent(tm) == []


async def test_zero_retry_delay_is_allowed_and_sent_as_zero() -> None:
    tm = manager()
    await tm.create_task(**GOOD, retry_delay=0)
    assert len(sent(tm)) == 1


@pytest.mark.parametrize(
    ("task_id", "message"),
    [
        ("../state", r"task_id '\.\./state' may only use A-Z a-z 0-9"),
        ("a/b/c", r"task_id 'a/b/c' may only use"),
        ("", r"task_id must be a non-empty string"),
        ("x" * (MAX_ID_CHARS + 1), r"task_id has 201 characters, more than the limit of 200"),
        ("a b", r"may only use"),
        ("a?b", r"may only use"),
        (42, r"task_id must be a non-empty string"),
    ],
)
async def test_a_bad_task_id_is_refused(task_id: Any, message: str) -> None:
    tm = manager()
    with pytest.raises(ValidationError, match=message):
        await tm.create_task(**GOOD, task_id=task_id)
    assert sent(tm) == []


async def test_the_longest_id_and_every_character_of_the_alphabet_are_allowed() -> None:
    tm = manager()
    await tm.create_task(**GOOD, task_id="x" * MAX_ID_CHARS)
    await tm.create_task(**GOOD, task_id="Az09._:@=+~-")
    assert len(sent(tm)) == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"target": "x" * (MAX_TARGET_BYTES + 1)}, r"target has 16385 bytes, more than the limit"),
        ({"target": "é" * (MAX_TARGET_BYTES // 2 + 1)}, r"target has 16386 bytes"),
        ({"target": "a\x00b"}, r"target contains control characters"),
        ({"target": ""}, r"target must be a non-empty string"),
        ({"task_type": "t" * (MAX_NAME_CHARS + 1)}, r"task_type has 65 characters, more than"),
        ({"task_type": "a/b"}, r"task_type 'a/b' may only use"),
        ({"platform": ""}, r"platform must be a non-empty string"),
        ({"platform": "linked in"}, r"platform 'linked in' may only use"),
    ],
)
async def test_bad_names_and_targets_are_refused(fields: dict[str, str], message: str) -> None:
    tm = manager()
    with pytest.raises(ValidationError, match=message):
        await tm.create_task(**{**GOOD, **fields})
    assert sent(tm) == []


@pytest.mark.parametrize(
    ("dependencies", "message"),
    [
        ([f"d{i}" for i in range(MAX_DEPENDENCIES + 1)], r"501 dependencies, more than the limit"),
        (["ok", "../state"], r"dependency id '\.\./state' may only use"),
        (["a//b"], r"dependency id 'a//b' may only use"),
        ([""], r"dependency id must be a non-empty string"),
        ("abc", r"dependencies must be a list of task ids, not a string"),
        (7, r"dependencies must be a list of task ids"),
    ],
)
async def test_bad_dependencies_are_refused(dependencies: Any, message: str) -> None:
    tm = manager()
    with pytest.raises(ValidationError, match=message):
        await tm.create_task(**GOOD, dependencies=dependencies)
    assert sent(tm) == []


async def test_the_most_dependencies_allowed_are_accepted() -> None:
    tm = manager()
    await tm.create_task(**GOOD, dependencies=[f"d{i}" for i in range(MAX_DEPENDENCIES)])
    assert len(sent(tm)) == 1


@pytest.mark.parametrize("priority", [True, False, 0, 11, 1.0, "1", -1])
async def test_priority_must_be_an_int_from_1_to_10(priority: Any) -> None:
    tm = manager()
    with pytest.raises(ValidationError, match=r"priority must be an integer from 1 to 10"):
        await tm.create_task(**GOOD, priority=priority)
    assert sent(tm) == []


@pytest.mark.parametrize("retries", [True, -1, 1000, 2.0])
async def test_max_retries_must_be_an_int_within_max_attempts(retries: Any) -> None:
    tm = manager()
    with pytest.raises(
        ValidationError, match=r"max_retries must be a non-negative integer, at most 999"
    ):
        await tm.create_task(**GOOD, max_retries=retries)


# -- the other calls ----------------------------------------------------------------------


@pytest.mark.parametrize("task_id", ["../state", "a/b/c", "", "x" * 201])
@pytest.mark.parametrize(
    "call",
    [
        "get_task_status",
        "get_task_result",
        "start_task",
        "complete_task",
        "fail_task",
        "cancel_task",
        "update_task_progress",
    ],
)
async def test_every_call_taking_an_id_refuses_a_bad_one(call: str, task_id: str) -> None:
    tm = manager()
    extra: tuple[Any, ...] = {"fail_task": ("boom",), "update_task_progress": (0.5,)}.get(call, ())
    with pytest.raises(ValidationError, match=r"task_id"):
        await getattr(tm, call)(task_id, *extra)
    assert sent(tm) == []
    http = tm._http
    assert isinstance(http, FakeHttp)
    assert http.requests == []


async def test_ids_are_refused_even_when_the_client_is_not_started() -> None:
    tm = TaskManager(NOWHERE)  # never started: validation comes first
    with pytest.raises(ValidationError, match=r"task_id '\.\./state'"):
        await tm.get_task_status("../state")
    with pytest.raises(ValidationError, match=r"timeout must be at least 0\.001 s"):
        await tm.create_task(**GOOD, timeout=0.0001)
    with pytest.raises(OrchestratorError, match="not started"):  # a valid call gets this far
        await tm.get_task_status("fine")


@pytest.mark.parametrize(
    ("progress", "message"),
    [
        (math.nan, r"progress must be a finite number in \[0, 1\], got nan"),
        (math.inf, r"progress must be a finite number in \[0, 1\], got inf"),
        (-0.1, r"progress must be in \[0, 1\], got -0\.1"),
        (1.5, r"progress must be in \[0, 1\], got 1\.5"),
        (True, r"progress must be a number"),
    ],
)
async def test_progress_must_be_finite_and_in_0_1(progress: Any, message: str) -> None:
    tm = manager()
    with pytest.raises(ValidationError, match=message):
        await tm.update_task_progress("t1", progress)
    assert sent(tm) == []


async def test_an_oversized_result_is_refused_naming_the_limit() -> None:
    tm = manager()
    with pytest.raises(ValidationError, match=r"exceeds the cap of 524288 bytes"):
        await tm.complete_task("t1", b"x" * (MAX_RESULT_BYTES + 1))
    with pytest.raises(ValidationError, match=r"exceeds the cap of 524288 bytes"):
        await tm.complete_task("t1", "x" * MAX_RESULT_BYTES)  # JSON adds the quotes
    with pytest.raises(ValidationError, match=r"not JSON-serialisable"):
        await tm.complete_task("t1", {"score": math.nan})
    assert sent(tm) == []
    await tm.complete_task("t1", b"x" * MAX_RESULT_BYTES)
    assert len(sent(tm)) == 1


async def test_long_reasons_are_cut_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    tm = manager()
    written: list[Any] = []

    async def record(call: str, task_id: str, payload: Any, *args: Any, **kwargs: Any) -> None:
        written.append(payload)

    monkeypatch.setattr(tm, "_write", record)
    await tm.fail_task("t1", "trace " * 10_000)
    await tm.cancel_task("t1", "why " * 10_000)
    failed, cancelled = written
    assert isinstance(failed, TaskFailed)
    assert isinstance(cancelled, TaskCancelled)
    assert len(failed.error) == len(cancelled.reason) == MAX_REASON_CHARS
    assert failed.error.endswith("[cut from 60000 characters]")


async def test_any_fail_reason_is_accepted_and_an_exception_names_its_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tm = manager()
    written: list[Any] = []

    async def record(call: str, task_id: str, payload: Any, *args: Any, **kwargs: Any) -> None:
        written.append(payload)

    monkeypatch.setattr(tm, "_write", record)
    await tm.fail_task("t1", "")
    await tm.fail_task("t1", TimeoutError())
    await tm.fail_task("t1", ValueError("bad page"))
    assert [p.error for p in written] == [
        "failed (no reason given)",
        "TimeoutError",
        "ValueError: bad page",
    ]
    with pytest.raises(ValidationError, match=r"reason must be a string or an exception"):
        await tm.fail_task("t1", 42)  # type: ignore[arg-type]


async def test_ids_travel_url_escaped() -> None:
    tm = manager()
    await tm.get_task_status("a:b@c=d+e~f")
    await tm.get_task_result("x.y")
    http = tm._http
    assert isinstance(http, FakeHttp)
    assert [url for url, _ in http.requests] == [
        "http://127.0.0.1:1/tasks/a%3Ab%40c%3Dd%2Be~f",
        "http://127.0.0.1:1/tasks/x.y/result",
    ]


async def test_a_read_after_a_write_waits_at_most_request_timeout_at_the_worker() -> None:
    tm = manager({"read_timeout": 60, "request_timeout": 5})
    await tm.create_task(**GOOD, task_id="t1")
    await tm.get_task_status("t1")
    tm2 = manager({"read_timeout": 200, "request_timeout": 500})
    await tm2.create_task(**GOOD, task_id="t1")
    await tm2.get_task_status("t1")
    http, http2 = tm._http, tm2._http
    assert isinstance(http, FakeHttp) and isinstance(http2, FakeHttp)
    assert http.requests[0][1] == {"after": "0:7", "wait": "5.0"}
    assert http2.requests[0][1]["wait"] == str(MAX_READ_WAIT_S)


def test_the_client_cap_on_wait_is_the_worker_s() -> None:
    assert MAX_READ_WAIT_S == web.MAX_WAIT_S


# -- SmartScheduler: checked before it connects -------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "message"),
    [
        (math.nan, r"seconds must be a finite number of seconds, got nan"),
        (math.inf, r"seconds must be a finite number of seconds, got inf"),
        (-1, r"seconds must be >= 0 seconds, got -1"),
        (0.0001, r"seconds must be at least 0\.001 s"),
        (True, r"seconds must be a number of seconds"),
    ],
)
async def test_pause_refuses_bad_seconds_without_connecting(seconds: Any, message: str) -> None:
    scheduler = SmartScheduler(NOWHERE)
    with pytest.raises(ValidationError, match=message):
        await scheduler.pause_platform("linkedin", seconds)
    assert not scheduler._started


async def test_scheduler_calls_refuse_bad_input_without_connecting() -> None:
    scheduler = SmartScheduler(NOWHERE)
    with pytest.raises(ValidationError, match=r"task_id '\.\./state'"):
        await scheduler.schedule_task(**GOOD, task_id="../state")
    with pytest.raises(ValidationError, match=r"priority must be an integer from 1 to 10"):
        await scheduler.schedule_task(**GOOD, priority=True)
    with pytest.raises(ValidationError, match=r"task_id 'a/b/c'"):
        await scheduler.get_task_status("a/b/c")
    with pytest.raises(ValidationError, match=r"platform 'a/b' may only use"):
        await scheduler.limit_status("a/b")
    with pytest.raises(ValidationError, match=r"platform 'a b'"):
        await scheduler.pause_platform("a b", 10)
    assert not scheduler._started


# -- deadlines ----------------------------------------------------------------------------


async def test_a_write_kafka_never_acknowledges_raises_request_timeout_error() -> None:
    tm = manager({"request_timeout": 0.3}, hang=True)
    began = time.monotonic()
    with pytest.raises(RequestTimeoutError) as caught:
        await tm.create_task(**GOOD)
    assert time.monotonic() - began < 0.3 + 1.0
    assert str(caught.value) == (
        "create_task did not finish within 0.3 s (request_timeout): "
        "Kafka at 127.0.0.1:1 did not acknowledge the event"
    )
    assert caught.value.retriable
    assert isinstance(caught.value, InfrastructureError)
    # closing does not wait for the write again: the producer is dropped at once
    began = time.monotonic()
    await tm.close()
    assert time.monotonic() - began < 0.3


async def test_a_read_the_worker_never_answers_raises_request_timeout_error() -> None:
    tm = manager({"request_timeout": 0.3}, hang=True)
    began = time.monotonic()
    with pytest.raises(RequestTimeoutError, match=r"^get_task_status did not finish within 0\.3 s"):
        await tm.get_task_status("t1")
    assert time.monotonic() - began < 1.3
    with pytest.raises(RequestTimeoutError, match=r"the worker at http://127\.0\.0\.1:1/tasks/t1"):
        await tm.get_task_result("t1")


async def test_close_is_bounded_too() -> None:
    tm = manager({"request_timeout": 0.3}, hang=True)
    began = time.monotonic()
    with pytest.raises(
        RequestTimeoutError, match=r"^close did not finish .* did not acknowledge the pending"
    ):
        await tm.close()
    assert time.monotonic() - began < 1.3 + 2.0
    assert tm._producer is None and tm._http is None


async def test_a_scheduler_call_has_one_deadline_named_after_it() -> None:
    scheduler = SmartScheduler({**NOWHERE, "request_timeout": 0.3})
    scheduler._tasks = manager({"request_timeout": 0.3}, hang=True)
    scheduler._started = True
    began = time.monotonic()
    with pytest.raises(RequestTimeoutError, match=r"^schedule_task did not finish within 0\.3 s"):
        await scheduler.schedule_task(**GOOD)
    with pytest.raises(RequestTimeoutError, match=r"^pause_platform did not finish"):
        await scheduler.pause_platform("linkedin", 5)
    assert time.monotonic() - began < 2 * 0.3 + 1.0


def test_request_timeout_errors_survive_pickling() -> None:
    import pickle

    error = RequestTimeoutError("start", 3.0, "Kafka at h:1 did not answer")
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.call, copy.retriable) == (str(error), "start", True)


def test_created_payload_carries_the_checked_policy() -> None:
    tm = manager({"default_timeout": 2.5})
    _, payload = tm._new_task(
        "t", "p", "x", (), 5, timeout=None, task_id="a", max_retries=None, retry_delay=None
    )
    assert isinstance(payload, TaskCreated)
    assert payload.timeout_ms == 2500


# -- the worker's side: ?wait= and ids ---------------------------------------------------


@pytest.mark.parametrize("asked", ["nan", "NaN", "inf", "-inf", "-1", "121", "abc", "", "1e999"])
def test_the_worker_refuses_a_bad_wait_naming_the_parameter(asked: str) -> None:
    with pytest.raises(ValueError, match=r"^wait must be a finite number of seconds from 0 to 120"):
        web._wait_seconds(asked, 10.0)


def test_the_worker_accepts_a_wait_within_bounds() -> None:
    assert web._wait_seconds(None, 10.0) == 10.0
    assert web._wait_seconds("0", 10.0) == 0.0
    assert web._wait_seconds("2.5", 10.0) == 2.5
    assert web._wait_seconds("120", 10.0) == 120.0


class _View:
    def json(self, document: dict[str, Any], status: int = 200) -> tuple[int, dict[str, Any]]:
        return status, document


@dataclass
class _Request:
    query: dict[str, str]


@dataclass
class _Settings:
    read_timeout: float = 10.0


@dataclass
class _Runtime:
    settings: _Settings = field(default_factory=_Settings)


@pytest.mark.parametrize("task_id", ["../state", "a/b/c", "", "x" * 201])
async def test_the_worker_answers_400_to_a_bad_id(task_id: str) -> None:
    runtime: Any = _Runtime()
    state, answer = await web._read(runtime, None, _View(), _Request({}), task_id)  # type: ignore[arg-type]
    assert state is None
    status, document = answer  # type: ignore[misc]
    assert status == 400
    assert document["error"] == "bad_request"
    assert "task id" in document["detail"]


@pytest.mark.parametrize("wait", ["nan", "inf", "-1"])
async def test_the_worker_answers_400_to_a_bad_wait(wait: str) -> None:
    request = _Request({"wait": wait})
    runtime: Any = _Runtime()
    state, answer = await web._read(runtime, None, _View(), request, "t1")  # type: ignore[arg-type]
    assert state is None
    status, document = answer  # type: ignore[misc]
    assert (status, document["error"]) == (400, "bad_request")
    assert document["detail"].startswith("wait must be")


# -- batches: create_tasks validates every spec before anything is sent ---------------------


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([GOOD, {**GOOD, "priority": 0}], r"specs\[1\]: priority must be an integer"),
        ([GOOD, {"task_type": "x", "platform": "y"}], r"specs\[1\]: missing keys \['target'\]"),
        ([{**GOOD, "colour": "red"}], r"specs\[0\]: unknown keys \['colour'\]"),
        ([{**GOOD, "task_id": "a"}, {**GOOD, "task_id": "a"}], r"specs\[0\] and specs\[1\]"),
        ([GOOD, "profile_scrape"], r"specs\[1\] must be a mapping"),
        (GOOD, "specs must be a list of mappings"),
    ],
)
async def test_a_bad_batch_is_refused_before_connecting(specs: Any, message: str) -> None:
    tm = TaskManager(NOWHERE)  # never started: a batch that got as far as sending would fail
    with pytest.raises(ValidationError, match=message):
        await tm.create_tasks(specs)


def test_a_batch_over_the_cap_is_refused() -> None:
    from streams.client import MAX_BATCH

    with pytest.raises(ValidationError, match=f"at most {MAX_BATCH} tasks"):
        TaskManager(NOWHERE)._new_tasks(GOOD for _ in range(MAX_BATCH + 1))


def test_a_valid_batch_gives_each_spec_its_created_event_in_order() -> None:
    tasks = TaskManager(NOWHERE)._new_tasks(
        [{**GOOD, "task_id": "b"}, {**GOOD, "task_id": "a", "dependencies": ["b"], "priority": 1}]
    )
    assert [task_id for task_id, _ in tasks] == ["b", "a"]
    assert tasks[1][1].dependencies == ("b",) and tasks[1][1].priority == 1


async def test_a_retry_of_a_bad_id_is_refused_before_connecting() -> None:
    with pytest.raises(ValidationError, match="task_id"):
        await TaskManager(NOWHERE).retry_task("a b")
