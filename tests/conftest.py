"""Fixtures for every test: the session's local Kafka broker, for integration tests only.

Tests under ``tests/integration/`` are marked ``integration`` automatically; only they may use
``kafka_broker`` (or ``bootstrap_servers``), so ``pytest -m "not integration"`` never starts Java.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams import localbroker
from streams.process import free_port

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"
BROKER_TIMEOUT_S = 120.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests under ``tests/integration/``; refuse unmarked tests that need the broker."""
    for item in items:
        if INTEGRATION_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)
    misplaced = [
        item.nodeid
        for item in items
        if "kafka_broker" in getattr(item, "fixturenames", ())
        and item.get_closest_marker("integration") is None
    ]
    if misplaced:
        raise pytest.UsageError(
            "these tests use the Kafka broker but are not marked integration: "
            + ", ".join(misplaced)
        )


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localbroker.BrokerInfo]:
    """A real Kafka broker for the session, on a free port, stopped (and checked gone) at the end.

    The jars come from the shared cache (``$ORCHESTRATOR_CACHE_DIR`` or ``~/.cache/...``), so
    Maven runs at most once per machine and Kafka version.
    """
    data_dir = tmp_path_factory.mktemp("kafka")
    info = localbroker.up(port=free_port(), data_dir=data_dir, timeout_s=BROKER_TIMEOUT_S)
    try:
        yield info
    finally:
        localbroker.down(data_dir)


@pytest.fixture(scope="session")
def bootstrap_servers(kafka_broker: localbroker.BrokerInfo) -> str:
    """``host:port`` of the session broker."""
    return kafka_broker.bootstrap_servers
