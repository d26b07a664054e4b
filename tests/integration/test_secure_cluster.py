"""A secure broker (SASL_SSL, SCRAM-SHA-512, ACLs), started by ``orchestrator kafka up
--secure`` for this module alone: its own data dir and ports, never the session broker.

The worker logs in as ``worker``, the client as ``producer``, a reader as ``consumer``, each
with the config file ``kafka up --secure`` wrote, under the ACL set of :mod:`streams.acls`
(the one ``orchestrator acl print`` prints). No password of the run appears in any output.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAuthorizationFailedError

from schemas.records import encode_event
from streams import localbroker
from streams.acls import DEFAULT_CONSUMER_GROUP, KEYS_TOPIC
from streams.client import TaskManager
from streams.domain.events import (
    DependencyOutcome,
    DependencyResolved,
    Event,
    Source,
    TaskCompleted,
)
from streams.errors import KafkaLoginError
from streams.kafka_clients import KafkaConnection
from streams.local_security import ADMIN, LocalSecurity
from streams.process import WorkerProcess, free_port, start_worker
from streams.topics import TopicNames
from tests.integration.conftest import HANDLERS, REPO_ROOT

PARTITIONS = 2
TOPICS = TopicNames()
WRONG_PASSWORD = f"wrong-{uuid.uuid4().hex}"
DEADLINE_S = 45.0


@dataclass
class Secure:
    """The secure broker, its worker, and every output the module saw (for the last test)."""

    broker: localbroker.BrokerInfo
    security: LocalSecurity
    worker: WorkerProcess
    outputs: list[str] = field(default_factory=list)

    def config(self, principal: str) -> dict[str, Any]:
        """The client settings of ``principal``, from its generated config file."""
        document: dict[str, Any] = json.loads(self.security.config_file(principal).read_text())
        return {
            **document,
            "api_url": self.worker.api_url,
            "partitions": PARTITIONS,
            "read_timeout": 30.0,
        }

    def connection(self, principal: str) -> KafkaConnection:
        return self.security.connection(principal, self.broker.bootstrap_servers)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith("ORCHESTRATOR_") or k.endswith("_DIR")}
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    data_dir = tmp_path_factory.mktemp("secure-kafka")
    up = _cli("kafka", "up", "--secure", "--port", str(free_port()), "--data-dir", str(data_dir))
    try:
        assert up.returncode == 0, up.stderr
        broker = localbroker.status(data_dir)
        assert broker is not None and broker.secure
        security = LocalSecurity.of(data_dir)
        for name in ("admin", "worker", "producer", "consumer"):
            assert str(security.config_file(name)) in up.stdout, up.stdout
        worker = start_worker(
            broker.bootstrap_servers,
            data_dir.parent / f"{data_dir.name}-worker",
            free_port(),
            {
                "partitions": str(PARTITIONS),
                "commit_interval": "0.1",
                "handlers": HANDLERS,
                "shutdown_grace": "1",
            },
            extra_args=("--config", str(security.config_file("worker"))),
            extra_env={"PYTHONPATH": str(REPO_ROOT)},
        )
        try:
            worker.wait_ready()
            yield Secure(broker, security, worker, [up.stdout, up.stderr])
        finally:
            worker.stop()
    finally:
        localbroker.down(data_dir)


async def _wait_status(tm: TaskManager, task_id: str, wanted: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        status = await tm.get_task_status(task_id)
        if status["status"] in wanted or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.1)


async def test_tasks_complete_with_the_worker_producer_and_consumer_principals(
    secure: Secure,
) -> None:
    run = uuid.uuid4().hex[:6]
    async with TaskManager(secure.config("producer")) as tm:
        first = await tm.create_task("noop", "web", "a", task_id=f"ok-{run}-1")
        second = await tm.create_task("noop", "web", "b", dependencies=[first])
        statuses = [await _wait_status(tm, t, {"completed"}) for t in (first, second)]
    assert [s["status"] for s in statuses] == ["completed", "completed"]

    consumer = secure.connection("consumer").consumer(
        TOPICS.completed,
        group_id=DEFAULT_CONSUMER_GROUP,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    seen: set[str] = set()
    await consumer.start()
    try:
        deadline = time.monotonic() + DEADLINE_S
        while {first, second} - seen and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                seen.update((r.key or b"").decode() for r in records)
        await consumer.commit()  # its own group: allowed
    finally:
        await consumer.stop()
    assert {first, second} <= seen


async def test_the_consumer_cannot_write_task_events(secure: Secure) -> None:
    producer = secure.connection("consumer").producer(acks="all")
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await asyncio.wait_for(
                producer.send_and_wait(TOPICS.events, b"x", key=b"forged-by-consumer"), 30
            )
    finally:
        await producer.stop()


@pytest.mark.parametrize(
    ("principal", "topic"),
    [
        ("producer", TOPICS.prefix + KEYS_TOPIC),
        ("consumer", TOPICS.prefix + KEYS_TOPIC),
        ("producer", TOPICS.completed),
        ("consumer", TOPICS.events),
    ],
)
async def test_clients_cannot_see_what_is_not_theirs(
    secure: Secure, principal: str, topic: str
) -> None:
    """A topic a principal may not even describe (the broker answers so whether it exists or
    not: ``orchestrator.keys`` may not exist yet) can be neither read nor written."""
    client = secure.connection(principal).producer()
    await client.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await asyncio.wait_for(client.partitions_for(topic), 30)
    finally:
        await client.stop()


async def test_nothing_answers_without_a_login(secure: Secure) -> None:
    for port in (secure.broker.port, secure.broker.controller_port):
        admin = KafkaConnection(f"127.0.0.1:{port}").admin(request_timeout_ms=5000)
        with pytest.raises((KafkaConnectionError, KafkaError)):
            await asyncio.wait_for(admin.start(), 30)
        await admin.close()


async def test_forged_internal_events_are_refused_or_dead_lettered(secure: Secure) -> None:
    """A ``producer`` may write ``task.events``, so the broker takes a forged event; the fold
    must then dead-letter it (an internal event without the worker's signature): the victims
    are unaffected."""
    run = uuid.uuid4().hex[:6]
    blocker, waiting, running = f"hang-{run}", f"victim-dep-{run}", f"victim-run-{run}"
    async with TaskManager(secure.config("producer")) as tm:
        await tm.create_task("hang", "web", "x", task_id=blocker, timeout=120)
        await tm.create_task("noop", "web", "y", task_id=waiting, dependencies=[blocker])
        await tm.create_task("hang", "web", "z", task_id=running, timeout=120)
        for task_id in (blocker, running):
            assert (await _wait_status(tm, task_id, {"running"}))["status"] == "running"
        before = {t: await tm.get_task_status(t) for t in (waiting, running)}

        now_ms = int(time.time() * 1000)
        forged = {
            waiting: Event(
                f"forged-{run}-1",
                waiting,
                now_ms,
                Source.FOLD,
                DependencyResolved(blocker, DependencyOutcome.COMPLETED),
            ),
            running: Event(
                f"forged-{run}-2", running, now_ms, Source.EXECUTOR, TaskCompleted(b'"forged"')
            ),
        }
        dead = await _forge(secure, forged)
        after = {t: await tm.get_task_status(t) for t in (waiting, running)}
    moved = {t: (before[t]["status"], after[t]["status"]) for t in forged}
    assert after[waiting]["status"] == before[waiting]["status"], f"the dependent moved: {moved}"
    assert after[running]["status"] == "running", f"the forged completion was taken: {moved}"
    assert set(dead) == set(forged), f"neither refused nor dead-lettered: {set(forged) - set(dead)}"
    assert all(outcome in ("refused", "forged") for outcome in dead.values()), dead


async def _forge(secure: Secure, events: dict[str, Event]) -> dict[str, str]:
    """Write ``events`` as the producer; return task id → ``refused`` (by the broker) or the
    reason of its dead letter, for those decided within the deadline."""
    outcome: dict[str, str] = {}
    dlq = secure.connection(ADMIN).consumer(
        TOPICS.dlq, group_id=None, auto_offset_reset="latest", isolation_level="read_committed"
    )
    await dlq.start()
    try:
        for tp in dlq.assignment():
            await dlq.position(tp)  # fixed before the writes: none of them can be missed
        producer = secure.connection("producer").producer(acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for task_id, event in events.items():
                try:
                    await producer.send_and_wait(
                        TOPICS.events, encode_event(event), key=task_id.encode()
                    )
                except KafkaError:
                    outcome[task_id] = "refused"
        finally:
            await producer.stop()
        deadline = time.monotonic() + DEADLINE_S
        while set(events) - set(outcome) and time.monotonic() < deadline:
            for records in (await dlq.getmany(timeout_ms=200)).values():
                for record in records:
                    key = (record.key or b"").decode()
                    if key in events:
                        outcome[key] = dict(record.headers)["reason"].decode()
    finally:
        await dlq.stop()
    return outcome


async def test_a_wrong_password_is_one_clear_error(secure: Secure) -> None:
    config = {**secure.config("producer"), "sasl_password": WRONG_PASSWORD}
    del config["sasl_password_file"]
    tm = TaskManager(config)
    with pytest.raises(KafkaLoginError) as refused:
        await tm.start()
    await tm.close()
    message = str(refused.value)
    assert "\n" not in message
    assert "User:producer" in message and "SCRAM-SHA-512" in message
    assert WRONG_PASSWORD not in message
    secure.outputs.append(message)


def test_the_cli_with_a_wrong_password_exits_with_one_error_line(
    secure: Secure, tmp_path: Path
) -> None:
    password_file = tmp_path / "wrong.password"
    password_file.write_text(WRONG_PASSWORD + "\n")
    config = {**secure.config("producer"), "sasl_password_file": str(password_file)}
    config_file = tmp_path / "producer.json"
    config_file.write_text(json.dumps(config))
    done = _cli("tasks", "--config", str(config_file))
    secure.outputs += [done.stdout, done.stderr]
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("orchestrator: error: "), done.stderr
    assert "User:producer" in lines[0] and "SCRAM-SHA-512" in lines[0]


async def test_no_password_appears_in_any_output(secure: Secure) -> None:
    """Runs last: every output of the module, the logs and the metrics, searched for every
    password of the run."""
    status = _cli("kafka", "status", "--data-dir", str(secure.broker.data_dir))
    listing = _cli(
        "tasks",
        "--config",
        str(secure.security.config_file("producer")),
        "--api-url",
        secure.worker.api_url,
    )
    assert status.returncode == 0 and listing.returncode == 0, status.stderr + listing.stderr
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{secure.worker.api_url}/metrics") as response,
    ):
        metrics = await response.text()
    outputs = {
        "worker log": secure.worker.log_file.read_text(errors="replace"),
        "broker log": secure.broker.log_file.read_text(errors="replace"),
        "kafka status": status.stdout + status.stderr,
        "orchestrator tasks": listing.stdout + listing.stderr,
        "GET /metrics": metrics,
        **{f"output {n}": text for n, text in enumerate(secure.outputs)},
    }
    passwords = [*secure.security.passwords(), WRONG_PASSWORD]
    leaks = [name for name, text in outputs.items() for p in passwords if p in text]
    assert not leaks, f"a password appears in: {leaks}"
    assert "SASL_SSL" in status.stdout
