"""Client deadlines against real failures: a broker killed under a started client, a worker
address where nothing listens, a worker that accepts and never answers. And the worker's side
of the same issue: ids travel URL-escaped, bad ids and bad ``?wait=`` answer 400.

The broker killed here is the test's own (the session broker serves the other tests).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl

from streams import localbroker
from streams.client import TaskManager
from streams.errors import InfrastructureError, RequestTimeoutError
from streams.process import WorkerProcess, free_port
from streams.topics import TopicNames, ensure_topics

pytestmark = pytest.mark.integration

REQUEST_TIMEOUT_S = 3.0
SLACK_S = 2.0
"""What a call may take past its deadline (dropping the connections it had)."""
BROKER_TIMEOUT_S = 120.0
TASK = {"task_type": "profile_scrape", "platform": "linkedin", "target": "in/ada"}


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[localbroker.BrokerInfo]:
    """A broker for this test alone, which the test kills; stopped (if still up) at the end."""
    data_dir = tmp_path / "kafka"
    info = localbroker.up(port=free_port(), data_dir=data_dir, timeout_s=BROKER_TIMEOUT_S)
    try:
        yield info
    finally:
        localbroker.down(data_dir)


def kill(broker: localbroker.BrokerInfo) -> None:
    """SIGKILL the broker's JVM (its process group, as ``localbroker`` starts it) and wait."""
    os.killpg(broker.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while localbroker.status(broker.data_dir) is not None:
        assert time.monotonic() < deadline, "the killed broker still runs"
        time.sleep(0.05)


@pytest.fixture
async def silent_worker() -> AsyncIterator[str]:
    """The URL of a server that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_calls_end_with_a_clear_error_within_request_timeout_when_kafka_or_a_worker_is_gone(
    own_broker: localbroker.BrokerInfo, silent_worker: str
) -> None:
    servers = own_broker.bootstrap_servers
    prefix = f"deadline-{uuid.uuid4().hex[:8]}."
    await ensure_topics(servers, 2, TopicNames(prefix))
    config: dict[str, Any] = {
        "bootstrap_servers": servers,
        "topic_prefix": prefix,
        "partitions": 2,
        "request_timeout": REQUEST_TIMEOUT_S,
    }
    # nothing listens at the refused client's worker address: it retries for read_timeout
    refused_config = {**config, "api_url": f"http://127.0.0.1:{free_port()}", "read_timeout": 1.0}
    refused = TaskManager(refused_config)
    silent = TaskManager({**config, "api_url": silent_worker})
    await refused.start()
    await silent.start()
    try:
        # the broker answers (no worker runs here to confirm the write: not asked)
        task_id = await refused.create_task(**TASK, confirm=False)

        # a worker address where nothing listens: retried for read_timeout, then a clear error
        began = time.monotonic()
        with pytest.raises(InfrastructureError, match=r"cannot read from the worker at .*tried"):
            await asyncio.wait_for(refused.get_task_status(task_id), 60)
        assert 0.5 <= time.monotonic() - began <= 1.0 + SLACK_S

        # a worker that never answers: the deadline
        began = time.monotonic()
        with pytest.raises(RequestTimeoutError) as read_timed_out:
            await asyncio.wait_for(silent.get_task_status(task_id), 60)
        elapsed = time.monotonic() - began
        assert REQUEST_TIMEOUT_S - 0.1 <= elapsed <= REQUEST_TIMEOUT_S + SLACK_S
        assert str(read_timed_out.value) == (
            f"get_task_status did not finish within {REQUEST_TIMEOUT_S} s (request_timeout): "
            f"the worker at {silent_worker}/tasks/{task_id} did not answer"
        )

        # the broker gone under a started client: the write's deadline
        kill(own_broker)
        began = time.monotonic()
        with pytest.raises(RequestTimeoutError) as write_timed_out:
            await asyncio.wait_for(refused.create_task(**TASK), 60)  # it blocked > 400 s
        elapsed = time.monotonic() - began
        assert elapsed <= REQUEST_TIMEOUT_S + SLACK_S
        assert str(write_timed_out.value) == (
            f"create_task did not finish within {REQUEST_TIMEOUT_S} s (request_timeout): "
            f"Kafka at {servers} did not acknowledge the event"
        )
        assert write_timed_out.value.retriable
    finally:
        # closing is bounded too: the client whose write timed out drops it at once, the
        # other one has nothing pending
        for client in (refused, silent):
            began = time.monotonic()
            await asyncio.wait_for(client.close(), 60)
            assert time.monotonic() - began <= REQUEST_TIMEOUT_S + SLACK_S


async def test_starting_against_a_dead_broker_fails_within_request_timeout(
    own_broker: localbroker.BrokerInfo,
) -> None:
    kill(own_broker)
    began = time.monotonic()
    with pytest.raises(InfrastructureError, match=rf"Kafka at {own_broker.bootstrap_servers}"):
        async with TaskManager(
            {"bootstrap_servers": own_broker.bootstrap_servers, "request_timeout": 3.0}
        ):
            pass
    assert time.monotonic() - began <= REQUEST_TIMEOUT_S + SLACK_S


async def test_ids_travel_escaped_and_the_worker_refuses_bad_ids_and_waits(
    client_config: dict[str, Any], worker: WorkerProcess
) -> None:
    task_id = f"it:{uuid.uuid4().hex[:8]}@a=b+c~d.e_f-g"
    async with TaskManager(client_config) as tm:
        await tm.create_task(**TASK, task_id=task_id)
        status = await tm.get_task_status(task_id)
    assert (status["task_id"], status["status"]) == (task_id, "ready")

    async with aiohttp.ClientSession() as http:
        for path, detail in [
            ("/tasks/..%2Fstate", "task id '../state' may only use"),
            ("/tasks/..%2Fstate/result", "task id '../state' may only use"),
            ("/tasks/a%2Fb%2Fc", "task id 'a/b/c' may only use"),
            (f"/tasks/{'x' * 201}", "task id has 201 characters"),
            ("/tasks/t1?wait=nan", "wait must be a finite number of seconds from 0 to 120"),
            ("/tasks/t1?wait=inf", "wait must be a finite number"),
            ("/tasks/t1?wait=-1", "wait must be a finite number"),
            ("/tasks/t1/result?wait=abc", "wait must be a finite number"),
        ]:
            url = yarl.URL(worker.api_url + path, encoded=True)
            async with http.get(url) as response:
                document = await response.json(content_type=None)
                assert (response.status, document["error"]) == (400, "bad_request"), path
                assert document["detail"].startswith(detail), (path, document)
