"""Fixtures for tests against a real broker and real worker processes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.process import WorkerProcess, free_port, start_worker
from streams.topics import TopicNames

PARTITIONS = 4
REPO_ROOT = Path(__file__).resolve().parents[2]
RUN = uuid.uuid4().hex[:6]
"""Suffix of this session's platform names, so scheduler state never leaks between runs."""
HANDLERS = "tests.integration.handlers_for_tests"
SCHEDULER_PREFIX = f"sched-{RUN}."
AGEING_S = 0.5


def platform(name: str) -> str:
    """This session's name of a test platform."""
    return f"{name}-{RUN}"


SCHEDULER_CONFIG: dict[str, Any] = {
    f"{platform('rl')}_rate_limits": {
        "limits": [{"calls": 20, "period": 1}, {"calls": 50, "period": 5}]
    },
    f"{platform('cap')}_rate_limits": {"limits": [], "max_concurrent": 3},
    f"{platform('prio')}_rate_limits": {
        "limits": [{"calls": 1000, "period": 1}],
        "max_concurrent": 1,
    },
    f"{platform('ageing')}_rate_limits": {"limits": [{"calls": 10, "period": 1}]},
    f"{platform('busy')}_rate_limits": {"limits": [{"calls": 1, "period": 3600}]},
    f"{platform('aimd')}_rate_limits": {"limits": [{"calls": 40, "period": 1}]},
    f"{platform('capwin')}_rate_limits": {
        "limits": [{"calls": 2, "period": 3600}],
        "max_concurrent": 1,
    },
}


class Cluster:
    """Workers of one application id, sharing the session broker's topics."""

    def __init__(
        self, bootstrap_servers: str, root: Path, app_id: str, topic_prefix: str = ""
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.root = root
        self.app_id = app_id
        self.topic_prefix = topic_prefix
        self.topics = TopicNames(topic_prefix)
        self.orchestrator_id = f"{topic_prefix}{app_id}" if topic_prefix else app_id
        """What names the workers' groups, transactional ids and changelogs."""
        self.workers: list[WorkerProcess] = []

    def start(
        self,
        name: str,
        config: dict[str, Any] | None = None,
        *,
        wait: bool = True,
        **settings: str,
    ) -> WorkerProcess:
        """Start a worker with its own data dir and web port, and wait until it is ready.

        With ``wait=False`` it returns as soon as the process is launched.

        ``config`` goes to the worker as a JSON ``--config`` file (rate limits need one).
        """
        extra_args: tuple[str, ...] = ()
        if config is not None:
            (self.root / name).mkdir(parents=True, exist_ok=True)
            config_file = self.root / name / "config.json"
            config_file.write_text(json.dumps(config))
            extra_args = ("--config", str(config_file))
        worker = start_worker(
            self.bootstrap_servers,
            self.root / name,
            free_port(),
            {
                "app_id": self.app_id,
                "topic_prefix": self.topic_prefix,
                "partitions": str(PARTITIONS),
                "commit_interval": "0.1",
                **settings,
            },
            extra_args=extra_args,
            extra_env={"PYTHONPATH": str(REPO_ROOT)},
        )
        self.workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()


@pytest.fixture(scope="session")
def worker(
    bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One worker for the whole session, on the session broker."""
    cluster = Cluster(
        bootstrap_servers, tmp_path_factory.mktemp("workers"), f"it-{uuid.uuid4().hex[:8]}"
    )
    yield cluster.start("session-worker")
    cluster.stop_all()


@pytest.fixture
def cluster(bootstrap_servers: str, tmp_path: Path) -> Iterator[Cluster]:
    """Workers of a fresh application id and topic prefix: an orchestrator of their own."""
    app_id = f"it-{uuid.uuid4().hex[:8]}"
    workers = Cluster(bootstrap_servers, tmp_path, app_id, topic_prefix=f"{app_id}.")
    yield workers
    workers.stop_all()


@pytest.fixture(scope="session")
def scheduler_worker(
    bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A worker with the test handlers and every test platform's limits, for the whole session."""
    root = tmp_path_factory.mktemp("scheduler")
    cluster = Cluster(bootstrap_servers, root, f"it-sched-{RUN}", topic_prefix=SCHEDULER_PREFIX)
    settings = {"handlers": HANDLERS, "ageing": str(AGEING_S), "default_timeout": "30"}
    yield cluster.start("scheduler-worker", SCHEDULER_CONFIG, **settings)
    cluster.stop_all()


@pytest.fixture
def scheduler_config(bootstrap_servers: str, scheduler_worker: WorkerProcess) -> dict[str, Any]:
    """SmartScheduler/TaskManager config pointing at the scheduler worker."""
    return {
        "bootstrap_servers": bootstrap_servers,
        "api_url": scheduler_worker.api_url,
        "partitions": PARTITIONS,
        "read_timeout": 60.0,
        "topic_prefix": SCHEDULER_PREFIX,
        **SCHEDULER_CONFIG,
    }


@pytest.fixture
def client_config(bootstrap_servers: str, worker: WorkerProcess) -> dict[str, object]:
    """TaskManager config pointing at the session broker and worker."""
    return {
        "bootstrap_servers": bootstrap_servers,
        "api_url": worker.api_url,
        "partitions": PARTITIONS,
        # a worker started late in the session first catches up on the whole log
        "read_timeout": 60.0,
    }
