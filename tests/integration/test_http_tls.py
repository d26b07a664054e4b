"""The HTTP API over TLS: real workers serving HTTPS, a real broker, real TLS (no mocks).

A CA and a certificate for 127.0.0.1 and localhost are made here. Two workers serve HTTPS with
that certificate and a bearer token, and trust the CA (``api_cafile``) when they call each
other: faust's router forwards a read for a task to its owner, and a listing asks every owner.
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

from streams import api_tls
from streams.client import TaskManager
from streams.errors import UntrustedCertificateError
from streams.process import WorkerProcess
from tests.http_certificates import Authority, ServerFiles, make_authority, make_server
from tests.integration.conftest import PARTITIONS, REPO_ROOT, Cluster
from tests.integration.kafka_io import partition_of

TOKEN = f"it-tls-token-{secrets.token_urlsafe(24)}"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def url_of(worker: WorkerProcess) -> str:
    """The worker's HTTPS API (its canonical URL: ``https://{web_host}:{web_port}``)."""
    return f"https://127.0.0.1:{worker.web_port}"


class Pair:
    def __init__(
        self, cluster: Cluster, ca: Authority, server: ServerFiles, workers: list[WorkerProcess]
    ) -> None:
        self.cluster, self.ca, self.server = cluster, ca, server
        self.a, self.b = workers
        self.owners: dict[str, set[int]] = {}

    def session(self) -> aiohttp.ClientSession:
        """A session that trusts the test CA."""
        return aiohttp.ClientSession(connector=api_tls.connector(str(self.ca.cafile)))

    async def split(self) -> None:
        """Wait until each worker folds some partitions and both are ready; keep who folds
        which partitions in :attr:`owners`."""
        topic = self.cluster.topics.events
        deadline = time.monotonic() + 60
        async with self.session() as http:
            while True:
                async with http.get(f"{url_of(self.a)}/router/topics", headers=BEARER) as answer:
                    routes = await answer.json()
                self.owners = {u.rstrip("/"): set(t.get(topic, [])) for u, t in routes.items()}
                both = all(self.owners.get(url_of(w)) for w in (self.a, self.b))
                if both and await self.both_ready(http):
                    return
                assert time.monotonic() < deadline, self.owners
                await asyncio.sleep(0.2)  # polling a condition, with a deadline

    async def both_ready(self, http: aiohttp.ClientSession) -> bool:
        for worker in (self.a, self.b):
            async with http.get(f"{url_of(worker)}/ready", headers=BEARER) as response:
                if response.status != 200:
                    return False
        return True

    def config(self, **extra: object) -> dict[str, object]:
        return {
            "bootstrap_servers": self.cluster.bootstrap_servers,
            "api_url": url_of(self.a),
            "api_token": TOKEN,
            "api_cafile": str(self.ca.cafile),
            "partitions": PARTITIONS,
            "topic_prefix": self.cluster.topic_prefix,
            "read_timeout": 30.0,
            **extra,
        }


@pytest.fixture(scope="module")
def pair(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("tls")
    ca = make_authority(root / "pki")
    server = make_server(ca, root / "pki")
    app_id = f"it-tls-{uuid.uuid4().hex[:8]}"
    cluster = Cluster(bootstrap_servers, root, app_id, f"{app_id}.")
    settings = {
        "api_token": TOKEN,
        "web_certfile": str(server.certfile),
        "web_keyfile": str(server.keyfile),
        "api_cafile": str(ca.cafile),
    }
    try:
        workers = [cluster.start(name, wait=False, **settings) for name in ("a", "b")]
        for worker in workers:
            worker.wait_ready()
        pair = Pair(cluster, ca, server, workers)
        asyncio.run(pair.split())
        yield pair
    finally:
        cluster.stop_all()


async def test_clients_read_every_task_through_either_worker_over_https(pair: Pair) -> None:
    run = uuid.uuid4().hex[:6]
    ids = [f"tls-{run}-{i}" for i in range(40)]

    def owned_by(worker: WorkerProcess) -> list[str]:
        return [t for t in ids if partition_of(t, PARTITIONS) in pair.owners[url_of(worker)]][:2]

    mine, theirs = owned_by(pair.a), owned_by(pair.b)
    assert len(mine) == len(theirs) == 2
    async with TaskManager(pair.config()) as tm:
        for task_id in mine + theirs:
            await tm.create_task("scrape", "linkedin", task_id, task_id=task_id)
            # confirmed writes: each asks the owner for its verdict, through worker a
            await tm.start_task(task_id)
            await tm.complete_task(task_id, {"target": task_id})
    for asked in (pair.a, pair.b):  # each is asked for the other's tasks too (forwarded)
        async with TaskManager(pair.config(api_url=url_of(asked))) as tm:
            for task_id in mine + theirs:
                assert (await tm.get_task_status(task_id))["status"] == "completed"
                assert await tm.get_task_result(task_id) == {"target": task_id}
            listed = {t["task_id"] for t in await tm.list_tasks(limit=1000)}  # asks the other
            assert set(mine + theirs) <= listed


async def test_the_dashboards_reads_gather_both_workers_over_https(pair: Pair) -> None:
    async with (
        pair.session() as http,
        http.get(f"{url_of(pair.a)}/fold", headers=BEARER) as response,
    ):
        assert response.status == 200, await response.text()
        document = await response.json()
    assert {w["worker"] for w in document["workers"]} == {url_of(pair.a), url_of(pair.b)}
    assert document["unserved"] == []


async def test_a_client_without_the_ca_is_refused_with_one_clear_error(
    pair: Pair, tmp_path: Path
) -> None:
    stranger = make_authority(tmp_path, "another CA").cafile
    for config in (pair.config(api_cafile=""), pair.config(api_cafile=str(stranger))):
        async with TaskManager(config) as tm:
            began = time.monotonic()
            with pytest.raises(UntrustedCertificateError) as caught:
                await tm.get_task_status("tls-no-such-task")
            assert time.monotonic() - began < 5  # refused at once, not retried
        message = str(caught.value)
        assert message.startswith(f"certificate verify failed for the worker at {url_of(pair.a)}")
        assert "api_cafile" in message


async def test_plain_http_to_the_tls_port_is_not_served(pair: Pair) -> None:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{pair.a.web_port}/health") as response:
                pytest.fail(f"plain HTTP was answered {response.status}")


async def test_health_and_metrics_answer_over_https_without_a_token(pair: Pair) -> None:
    async with pair.session() as http:
        for worker in (pair.a, pair.b):
            async with http.get(f"{url_of(worker)}/health") as response:
                assert response.status == 200
                assert (await response.json())["status"] == "healthy"
            async with http.get(f"{url_of(worker)}/metrics") as response:
                assert response.status == 200
                assert "orchestrator_" in await response.text()
            async with http.get(f"{url_of(worker)}/tasks") as response:
                assert response.status == 401  # TLS does not replace the token


def run_cli(pair: Pair, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update(PYTHONPATH=str(REPO_ROOT), ORCHESTRATOR_API_TOKEN=TOKEN)
    command = [sys.executable, "-m", "streams", *args, "--config", str(config)]
    command += ["--broker", pair.cluster.bootstrap_servers]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def cli_config(pair: Pair, path: Path, cafile: Path | None) -> Path:
    lines = [
        f'api_url = "{url_of(pair.b)}"',
        f'topic_prefix = "{pair.cluster.topic_prefix}"',
        f"partitions = {PARTITIONS}",
    ]
    if cafile is not None:
        lines.append(f'api_cafile = "{cafile}"')
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_the_cli_reads_over_https_with_api_cafile_from_its_config(
    pair: Pair, tmp_path: Path
) -> None:
    task_id = f"tls-cli-{uuid.uuid4().hex[:6]}"
    async with TaskManager(pair.config()) as tm:
        await tm.create_task("scrape", "linkedin", "cli", task_id=task_id)
    config = cli_config(pair, tmp_path / "cli.toml", pair.ca.cafile)
    for command in (("status", task_id), ("tasks",)):
        done = await asyncio.to_thread(run_cli, pair, config, *command)
        assert done.returncode == 0, (command, done.stderr)
        assert task_id in done.stdout, command
    for command in (("periodic", "list"), ("verify",)):  # ask every worker: /router, /state
        done = await asyncio.to_thread(run_cli, pair, config, *command)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
    untrusting = cli_config(pair, tmp_path / "no-ca.toml", None)
    refused = await asyncio.to_thread(run_cli, pair, untrusting, "status", task_id)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert re.match(
        rf"orchestrator: error: certificate verify failed for the worker at {url_of(pair.b)}",
        lines[0],
    ), lines[0]


def test_no_log_shows_the_token_or_the_key(pair: Pair) -> None:
    # last in this module: after every test above has had its requests logged
    key = pair.server.keyfile.read_text()
    body = "".join(key.splitlines()[1:-1])
    for worker in (pair.a, pair.b):
        log = worker.log_file.read_text(encoding="utf-8", errors="replace")
        assert f"HTTP {url_of(worker)}" in log and "bearer token required" in log
        assert TOKEN not in log and body not in log, worker.log_file
