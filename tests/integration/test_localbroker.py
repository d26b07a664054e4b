"""The local broker manager against real Kafka JVMs: the session's, and some of its own."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import NoReturn

import pytest

from streams import localbroker
from streams.errors import LocalBrokerError
from streams.process import free_port

pytestmark = pytest.mark.integration


def kafka_pids(data_dir: Path) -> list[int]:
    """Pids of live JVMs running ``kafka.Kafka`` with this data dir's ``server.properties``."""
    props = str(data_dir / "server.properties")
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # exited while we looked
        if "kafka.Kafka" in argv and props in argv:
            pids.append(int(cmdline.parent.name))
    return pids


def fail(*_args: object, **_kwargs: object) -> NoReturn:
    raise AssertionError("must not be called")


def cluster_id(data_dir: Path) -> str:
    meta = (data_dir / "log" / "meta.properties").read_text().splitlines()
    return next(line.split("=", 1)[1] for line in meta if line.startswith("cluster.id="))


def test_status_reports_the_session_broker(kafka_broker: localbroker.BrokerInfo) -> None:
    info = localbroker.status(kafka_broker.data_dir)

    assert info == kafka_broker
    assert info.version == localbroker.KAFKA_VERSION
    assert info.bootstrap_servers == f"127.0.0.1:{info.port}"
    assert kafka_pids(info.data_dir) == [info.pid]
    assert "Kafka Server started" in info.log_file.read_text()
    assert not localbroker.port_is_free(info.port)
    assert not localbroker.port_is_free(info.controller_port)


def test_up_again_returns_the_running_broker(
    kafka_broker: localbroker.BrokerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # starting anything would need Java and the jars first: make both impossible
    monkeypatch.setattr(localbroker, "find_java", fail)
    monkeypatch.setattr(localbroker, "fetch_kafka", fail)

    again = localbroker.up(port=kafka_broker.port, data_dir=kafka_broker.data_dir)

    assert again == kafka_broker
    assert kafka_pids(kafka_broker.data_dir) == [kafka_broker.pid]


def test_second_fetch_does_not_run_maven(
    kafka_broker: localbroker.BrokerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = localbroker.default_cache_dir().resolve() / f"kafka-{localbroker.KAFKA_VERSION}"
    assert localbroker.is_fetched(home)
    monkeypatch.setattr(localbroker, "_run_maven", fail)
    monkeypatch.setattr(shutil, "which", lambda _name: None)  # as if no mvn at all

    libs = localbroker.fetch_kafka()

    assert libs == home / "libs"
    kafka_jar = f"kafka_{localbroker.SCALA_VERSION}-{localbroker.KAFKA_VERSION}.jar"
    assert (libs / kafka_jar).is_file()


def test_down_stops_a_broker_and_a_restart_keeps_its_cluster(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    port = free_port()
    try:
        info = localbroker.up(port=port, data_dir=data_dir, timeout_s=120)
        assert localbroker.status(data_dir) == info
        first_cluster = cluster_id(data_dir)

        assert localbroker.down(data_dir) is True

        assert not Path(f"/proc/{info.pid}").exists()
        assert kafka_pids(data_dir) == []
        assert localbroker.status(data_dir) is None
        assert not (data_dir / localbroker.RECORD).exists()
        assert localbroker.port_is_free(port)
        assert localbroker.down(data_dir) is False

        restarted = localbroker.up(port=port, data_dir=data_dir, timeout_s=120)
        assert restarted.pid != info.pid
        assert cluster_id(data_dir) == first_cluster  # formatted once, not again
        assert localbroker.down(data_dir) is True
        assert not Path(f"/proc/{restarted.pid}").exists()
    finally:
        localbroker.down(data_dir)
    assert kafka_pids(data_dir) == []


def test_up_on_a_taken_port_names_the_port(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]

        with pytest.raises(LocalBrokerError, match=f"port {port}.*--port") as raised:
            localbroker.up(port=port, data_dir=data_dir)

    assert "\n" not in str(raised.value)
    assert localbroker.status(data_dir) is None
    assert kafka_pids(data_dir) == []


def test_a_broker_that_dies_at_startup_is_reported_with_its_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    (data_dir / "log").mkdir(parents=True)
    # a log dir "formatted" for another node: up does not format it again, and Kafka refuses it
    meta = "version=1\nnode.id=2\ncluster.id=eV6pkFFKSKKOumpekFOfaw\n"
    meta += "directory.id=7ttw-1XhSXutI2FCm3HJ0g\n"
    (data_dir / "log" / "meta.properties").write_text(meta)

    with pytest.raises(LocalBrokerError, match="exited before it served") as raised:
        localbroker.up(port=free_port(), data_dir=data_dir)

    assert "Stored node id 2 doesn't match" in str(raised.value)  # from the log's tail
    assert localbroker.status(data_dir) is None
    assert not (data_dir / localbroker.RECORD).exists()
    assert kafka_pids(data_dir) == []


def test_a_broker_not_serving_in_time_is_killed(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"

    with pytest.raises(LocalBrokerError, match="did not complete a produce/consume round trip"):
        localbroker.up(port=free_port(), data_dir=data_dir, timeout_s=0.2)

    assert localbroker.status(data_dir) is None
    assert kafka_pids(data_dir) == []
