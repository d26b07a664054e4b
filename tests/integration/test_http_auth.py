"""The HTTP API with a bearer token: real workers, a real broker, real HTTP (no mocks).

Two workers share a token: ``a`` on 127.0.0.1, ``b`` bound to 0.0.0.0 and advertising
127.0.0.1 (the non-loopback path, allowed only with a token). Every route the app registers is
probed (enumerated from the app :func:`streams.worker.build` makes, so a new route is covered
without touching this file).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from streams.auth import OPEN_ROUTES
from streams.client import TaskManager
from streams.config import load_settings
from streams.errors import UnauthorizedError
from streams.process import WorkerProcess, free_port, start_worker
from tests.integration.conftest import PARTITIONS, REPO_ROOT, Cluster
from tests.integration.kafka_io import partition_of

TOKEN = f"it-token-{secrets.token_urlsafe(24)}"
"""Distinctive, so finding it in a log is not a coincidence."""
BEARER = {"Authorization": f"Bearer {TOKEN}"}
ALWAYS_200 = {"/tasks", "/ready", "/router/topics", "/fold", "/platforms", "/dlq", "/periodic"}


class Pair:
    def __init__(self, cluster: Cluster, a: WorkerProcess, b: WorkerProcess) -> None:
        self.cluster, self.a, self.b = cluster, a, b

    async def split(self) -> dict[str, set[int]]:
        """Wait until each worker folds some partitions (the second one's join is done);
        return which worker folds which."""
        topic = self.cluster.topics.events
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                owners = await owned_by(http, self.a.api_url, topic)
                split = bool(owners.get(self.a.api_url) and owners.get(self.b.api_url))
                if split and await self.both_ready(http):
                    return owners
                assert time.monotonic() < deadline, owners
                await asyncio.sleep(0.2)  # polling a condition, with a deadline

    async def both_ready(self, http: aiohttp.ClientSession) -> bool:
        for worker in (self.a, self.b):
            async with http.get(f"{worker.api_url}/ready", headers=BEARER) as response:
                if response.status != 200:
                    return False
        return True

    def config(self, **extra: object) -> dict[str, object]:
        return {
            "bootstrap_servers": self.cluster.bootstrap_servers,
            "api_url": self.a.api_url,
            "partitions": PARTITIONS,
            "topic_prefix": self.cluster.topic_prefix,
            "read_timeout": 60.0,
            **extra,
        }


@pytest.fixture(scope="module")
def pair(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    app_id = f"it-auth-{uuid.uuid4().hex[:8]}"
    cluster = Cluster(bootstrap_servers, tmp_path_factory.mktemp("auth"), app_id, f"{app_id}.")
    a = cluster.start("a", api_token=TOKEN)
    port = free_port()
    b = start_worker(
        bootstrap_servers,
        cluster.root / "b",
        port,
        {
            "app_id": app_id,
            "topic_prefix": cluster.topic_prefix,
            "partitions": str(PARTITIONS),
            "commit_interval": "0.1",
            "web_host": "0.0.0.0",
            "advertised_url": f"http://127.0.0.1:{port}",
        },
        extra_env={"PYTHONPATH": str(REPO_ROOT), "ORCHESTRATOR_API_TOKEN": TOKEN},
    )
    cluster.workers.append(b)
    b.wait_ready()
    pair = Pair(cluster, a, b)
    asyncio.run(pair.split())
    yield pair
    cluster.stop_all()


def app_routes(tmp_path: Path) -> list[tuple[str, str]]:
    """Every (method, route) the worker's app serves, as :func:`streams.worker.build` makes it."""
    from streams.worker import build

    loop = asyncio.new_event_loop()  # faust's app wants a loop of its thread; build runs none
    asyncio.set_event_loop(loop)
    try:
        settings = load_settings(
            overrides={"data_dir": str(tmp_path), "partitions": PARTITIONS, "api_token": TOKEN},
            environ={},
        )
        web = build(settings).runtime.app.web
        web.init_server()
        routes = {(r.method, r.resource.canonical) for r in web.web_app.router.routes()}
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return sorted(routes)


def concrete(route: str) -> str:
    return re.sub(r"\{[^}]+\}", "auth-probe", route)


async def test_every_route_but_the_open_ones_requires_the_token(pair: Pair, tmp_path: Path) -> None:
    routes = await asyncio.to_thread(app_routes, tmp_path)  # its own thread: its own loop
    assert len(routes) > 20 and ("GET", "/tasks/{task_id}") in routes
    wrong = {"Authorization": f"Bearer {TOKEN}x"}
    right = {"Authorization": f"Bearer {TOKEN}"}
    answers: dict[tuple[str, str], tuple[int, int, int]] = {}
    bodies: dict[tuple[str, str], str] = {}
    async with aiohttp.ClientSession() as http:
        for method, route in routes:
            url = pair.a.api_url + concrete(route)
            statuses = []
            for headers in ({}, wrong, right):
                async with http.request(method, url, headers=headers) as response:
                    statuses.append(response.status)
                    if response.status == 401:
                        assert response.headers["WWW-Authenticate"].startswith("Bearer")
                        if method != "HEAD":
                            document = await response.json()
                            assert document["error"] == "unauthorized"
                            assert TOKEN not in document["detail"]
            answers[method, route] = (statuses[0], statuses[1], statuses[2])
    for (method, route), (anonymous, wrongly, rightly) in answers.items():
        if route in OPEN_ROUTES:
            assert anonymous != 401 and wrongly != 401, (method, route)
        else:
            assert (anonymous, wrongly) == (401, 401), (method, route)
        assert rightly != 401, (method, route)
        if route in ALWAYS_200:
            assert rightly == 200, (method, route, bodies[method, route])
    assert answers["GET", "/health"][0] == 200
    assert answers["GET", "/metrics"][0] == 200


async def test_the_client_sends_the_token_and_names_a_refusal(pair: Pair) -> None:
    async with TaskManager(pair.config(api_token=TOKEN)) as tm:
        task_id = await tm.create_task("scrape", "linkedin", "auth")
        assert (await tm.get_task_status(task_id))["status"] == "ready"
        assert task_id in [t["task_id"] for t in await tm.list_tasks()]
    for config in (pair.config(), pair.config(api_token=TOKEN + "x")):
        async with TaskManager(config) as tm:
            began = time.monotonic()
            with pytest.raises(UnauthorizedError, match=re.escape(pair.a.api_url)) as caught:
                await tm.get_task_status(task_id)
            assert time.monotonic() - began < 5  # refused at once, not retried
            assert TOKEN not in str(caught.value)


def run_cli(*args: str, token: str | None, pair: Pair) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        ORCHESTRATOR_TOPIC_PREFIX=pair.cluster.topic_prefix,
        ORCHESTRATOR_PARTITIONS=str(PARTITIONS),
    )
    if token is not None:
        env["ORCHESTRATOR_API_TOKEN"] = token
    command = [sys.executable, "-m", "streams", *args]
    command += ["--broker", pair.cluster.bootstrap_servers, "--api-url", pair.b.api_url]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


async def test_cli_reads_with_the_token_and_says_why_not_without(pair: Pair) -> None:
    async with TaskManager(pair.config(api_token=TOKEN)) as tm:
        task_id = await tm.create_task("scrape", "linkedin", "cli")
    done = await asyncio.to_thread(run_cli, "status", task_id, token=TOKEN, pair=pair)
    assert done.returncode == 0, done.stderr
    assert task_id in done.stdout
    listed = await asyncio.to_thread(run_cli, "tasks", token=TOKEN, pair=pair)
    assert listed.returncode == 0, listed.stderr
    assert task_id in listed.stdout
    for command in (("periodic", "list"), ("verify",)):  # ask every worker: /router, /state
        done = await asyncio.to_thread(run_cli, *command, token=TOKEN, pair=pair)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
    refused = await asyncio.to_thread(run_cli, "status", task_id, token=None, pair=pair)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orchestrator: error: "), refused.stderr
    assert pair.b.api_url in lines[0] and "requires a bearer token" in lines[0]


async def owned_by(http: aiohttp.ClientSession, asked: str, topic: str) -> dict[str, set[int]]:
    """Which worker (by its advertised URL) folds which partitions of ``topic``."""
    async with http.get(f"{asked}/router/topics", headers=BEARER) as response:
        assert response.status == 200
        routes = await response.json()
    return {url.rstrip("/"): set(topics.get(topic, [])) for url, topics in routes.items()}


async def test_two_workers_with_a_token_answer_for_each_others_tasks(pair: Pair) -> None:
    owners = await pair.split()
    on_b = owners[pair.b.api_url]
    run = uuid.uuid4().hex[:6]
    ids = [f"pair-{run}-{i}" for i in range(40)]
    theirs = [tid for tid in ids if partition_of(tid, PARTITIONS) in on_b][:3]
    mine = [tid for tid in ids if partition_of(tid, PARTITIONS) in owners[pair.a.api_url]][:3]
    assert theirs and mine
    async with TaskManager(pair.config(api_token=TOKEN)) as tm:
        for tid in theirs + mine:
            await tm.create_task("scrape", "linkedin", tid, task_id=tid)
    for asked in (pair.a, pair.b):  # each asked for the other's tasks too
        async with TaskManager(pair.config(api_token=TOKEN, api_url=asked.api_url)) as tm:
            for tid in theirs + mine:
                assert (await tm.get_task_status(tid))["task_id"] == tid
            listed = {t["task_id"] for t in await tm.list_tasks(limit=1000)}
            assert set(theirs + mine) <= listed


def test_a_worker_on_a_public_address_without_a_token_refuses_to_start(
    bootstrap_servers: str, tmp_path: Path
) -> None:
    worker = start_worker(
        bootstrap_servers,
        tmp_path / "open",
        free_port(),
        {"web_host": "0.0.0.0", "advertised_url": "http://127.0.0.1:1"},
        extra_env={"PYTHONPATH": str(REPO_ROOT), "ORCHESTRATOR_API_TOKEN": ""},
    )
    assert worker.process.wait(60) != 0
    lines = worker.log_file.read_text(encoding="utf-8").strip().splitlines()
    assert lines == [
        "orchestrator: error: web_host '0.0.0.0' is not a loopback address: set api_token"
        " (env ORCHESTRATOR_API_TOKEN) or api_token_file, or bind web_host to 127.0.0.1"
    ]


def test_no_log_shows_the_token(pair: Pair) -> None:
    # last in this module: after every test above has had its requests logged
    for worker in (pair.a, pair.b):
        log = worker.log_file.read_text(encoding="utf-8", errors="replace")
        assert "worker starting" in log and "bearer token required" in log
        assert TOKEN not in log, worker.log_file
