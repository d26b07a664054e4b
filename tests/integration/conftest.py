"""Fixtures for tests against a real broker and real worker processes."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.process import WorkerProcess, start_worker

PARTITIONS = 4


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Cluster:
    """Workers of one application id, sharing the session broker's topics."""

    def __init__(self, bootstrap_servers: str, root: Path, app_id: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.root = root
        self.app_id = app_id
        self.workers: list[WorkerProcess] = []

    def start(self, name: str, **settings: str) -> WorkerProcess:
        """Start a worker with its own data dir and web port, and wait until it is ready."""
        worker = start_worker(
            self.bootstrap_servers,
            self.root / name,
            free_port(),
            {
                "app_id": self.app_id,
                "partitions": str(PARTITIONS),
                "commit_interval": "0.1",
                **settings,
            },
        )
        self.workers.append(worker)
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
    """Workers of a fresh application id (its own consumer group and tables)."""
    workers = Cluster(bootstrap_servers, tmp_path, f"it-{uuid.uuid4().hex[:8]}")
    yield workers
    workers.stop_all()


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
