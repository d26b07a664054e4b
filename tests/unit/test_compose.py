"""The Docker Compose file agrees with the pinned Kafka version; the local broker's pure helpers.

Nothing here starts Java or Maven.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import stat
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from streams import localbroker
from streams.errors import LocalBrokerError

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.kafka.yml"
THREE = "three-brokers"


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def env(service: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in service["environment"].items()}


def host_ports(service: dict[str, Any]) -> list[int]:
    return [int(str(mapping).split(":")[-2]) for mapping in service["ports"]]


def test_every_service_runs_the_pinned_kafka(services: dict[str, dict[str, Any]]) -> None:
    assert services
    for name, service in services.items():
        assert service["image"] == f"apache/kafka:{localbroker.KAFKA_VERSION}", name


def test_the_header_says_where_the_version_is_pinned() -> None:
    header = COMPOSE_FILE.read_text().split("\n\n", 1)[0]
    assert "streams/localbroker.py:KAFKA_VERSION" in header


def test_default_service_is_one_node_with_replication_1(
    services: dict[str, dict[str, Any]],
) -> None:
    defaults = {name: s for name, s in services.items() if not s.get("profiles")}
    assert list(defaults) == ["kafka"]
    kafka = env(defaults["kafka"])
    assert host_ports(defaults["kafka"]) == [9092]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://127.0.0.1:9092"
    assert kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert kafka["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert kafka["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert kafka["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"


def test_three_broker_profile_is_one_quorum_of_distinct_nodes(
    services: dict[str, dict[str, Any]],
) -> None:
    trio = {name: s for name, s in services.items() if THREE in s.get("profiles", [])}
    assert sorted(trio) == ["kafka-1", "kafka-2", "kafka-3"]
    assert all(s["profiles"] == [THREE] for s in trio.values())
    envs = {name: env(s) for name, s in trio.items()}
    node_ids = {name: e["KAFKA_NODE_ID"] for name, e in envs.items()}
    assert len(set(node_ids.values())) == 3
    assert sorted(port for s in trio.values() for port in host_ports(s)) == [19092, 29092, 39092]
    for key in ("KAFKA_CONTROLLER_QUORUM_VOTERS", "CLUSTER_ID"):
        assert len({e[key] for e in envs.values()}) == 1, key
    voters = next(iter(envs.values()))["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert sorted(voters) == sorted(f"{node_ids[name]}@{name}:9093" for name in trio)
    for name, e in envs.items():
        (port,) = host_ports(trio[name])
        assert f"EXTERNAL://127.0.0.1:{port}" in e["KAFKA_ADVERTISED_LISTENERS"].split(",")
        assert e["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert e["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert e["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert e["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert e["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert e["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert e["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


# --- streams.localbroker's pure helpers ---------------------------------------------------------


def test_server_properties_are_a_single_node_on_loopback(tmp_path: Path) -> None:
    text = localbroker.render_server_properties(19500, 19501, tmp_path / "log")
    props = dict(line.split("=", 1) for line in text.splitlines())

    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19500,CONTROLLER://127.0.0.1:19501"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19500"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19501"
    assert props["process.roles"] == "broker,controller"
    assert props["log.dirs"] == str(tmp_path / "log")
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["auto.create.topics.enable"] == "false"


def test_pom_asks_for_the_pinned_kafka() -> None:
    pom = localbroker.POM
    assert f"<artifactId>kafka_{localbroker.SCALA_VERSION}</artifactId>" in pom
    assert f"<version>{localbroker.KAFKA_VERSION}</version>" in pom
    assert "<artifactId>log4j-slf4j-impl</artifactId>" in pom


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime Environment', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('openjdk version "22-ea" 2024-03-19', 22),
        ('java version "1.8.0_392"\nJava(TM) SE Runtime Environment', 8),
        ('openjdk version "11.0.2" 2019-01-15', 11),
        ("bash: java: command not found", None),
    ],
)
def test_java_version_parsing(output: str, major: int | None) -> None:
    assert localbroker.parse_java_version(output) == major


def fake_java(tmp_path: Path, version_line: str) -> Path:
    """A ``$JAVA_HOME`` whose ``bin/java -version`` prints ``version_line`` to stderr."""
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    return java.parent.parent


def test_old_java_is_refused_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(fake_java(tmp_path, 'openjdk version "11.0.2"')))
    with pytest.raises(LocalBrokerError, match="needs Java 17") as raised:
        localbroker.find_java()
    assert "apt-get install openjdk-17-jre-headless maven" in str(raised.value)
    assert "docker compose -f docker-compose.kafka.yml up -d" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_java_17_from_java_home_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = fake_java(tmp_path, 'openjdk version "17.0.15" 2025-04-15')
    monkeypatch.setenv("JAVA_HOME", str(home))
    assert localbroker.find_java() == str(home / "bin" / "java")


def test_missing_java_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LocalBrokerError, match=r"Java is not installed.*apt-get install"):
        localbroker.find_java()


def test_cluster_ids_are_kraft_shaped() -> None:
    for _ in range(200):
        cluster_id = localbroker.new_cluster_id()
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_port_is_free_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not localbroker.port_is_free(port)
    assert localbroker.port_is_free(port)


def test_default_dirs_follow_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ORCHESTRATOR_KAFKA_DIR", str(tmp_path / "state"))
    assert localbroker.default_cache_dir() == tmp_path / "cache"
    assert localbroker.default_data_dir() == tmp_path / "state"
    monkeypatch.delenv("ORCHESTRATOR_CACHE_DIR")
    monkeypatch.delenv("ORCHESTRATOR_KAFKA_DIR")
    assert localbroker.default_cache_dir() == Path.home() / ".cache" / "discovery-orchestrator"
    assert localbroker.default_data_dir().parts[-2:] == ("discovery-orchestrator", "kafka")


# --- the "already fetched" marker, without Maven ------------------------------------------------

KAFKA_JAR = f"kafka_{localbroker.SCALA_VERSION}-{localbroker.KAFKA_VERSION}.jar"


def fake_fetch(home: Path) -> None:
    """What a successful Maven run leaves in ``home/libs``."""
    (home / "libs").mkdir(parents=True, exist_ok=True)
    for jar in (KAFKA_JAR, "kafka-clients-x.jar"):
        (home / "libs" / jar).write_bytes(b"PK")


def write_marker(home: Path, **changes: object) -> None:
    marker: dict[str, object] = {
        "version": localbroker.KAFKA_VERSION,
        "pom": localbroker.POM,
        "jars": [KAFKA_JAR, "kafka-clients-x.jar"],
    }
    (home / localbroker.MARKER).write_text(json.dumps({**marker, **changes}))


def no_maven(*_args: object) -> NoReturn:
    raise AssertionError("Maven must not run")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / f"kafka-{localbroker.KAFKA_VERSION}"


def test_a_marked_fetch_is_not_repeated(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_fetch(home)
    write_marker(home)
    monkeypatch.setattr(localbroker, "_run_maven", no_maven)
    monkeypatch.setattr(shutil, "which", lambda _name: None)

    assert localbroker.fetch_kafka(tmp_path) == home.resolve() / "libs"


@pytest.mark.parametrize(
    "changes",
    [{"version": "3.9.0"}, {"pom": "<project/>"}, {"jars": ["gone.jar"]}, {"jars": []}],
    ids=["other-version", "other-pom", "missing-jar", "no-jars"],
)
def test_a_stale_or_partial_marker_does_not_count(home: Path, changes: dict[str, object]) -> None:
    fake_fetch(home)
    write_marker(home, **changes)
    assert not localbroker.is_fetched(home)


def test_no_marker_means_not_fetched(home: Path) -> None:
    fake_fetch(home)
    assert not localbroker.is_fetched(home)
    (home / localbroker.MARKER).write_text("{not json")
    assert not localbroker.is_fetched(home)


def test_the_marker_is_written_after_maven_succeeded_only(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[Path] = []
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")

    def failing_maven(_mvn: str, where: Path) -> NoReturn:
        runs.append(where)
        raise LocalBrokerError("Maven could not fetch Kafka")

    monkeypatch.setattr(localbroker, "_run_maven", failing_maven)
    with pytest.raises(LocalBrokerError):
        localbroker.fetch_kafka(tmp_path)
    assert not (home / localbroker.MARKER).exists()

    def maven(_mvn: str, where: Path) -> None:
        runs.append(where)
        fake_fetch(where)

    monkeypatch.setattr(localbroker, "_run_maven", maven)
    assert localbroker.fetch_kafka(tmp_path) == home.resolve() / "libs"
    assert localbroker.fetch_kafka(tmp_path) == home.resolve() / "libs"
    assert runs == [home.resolve(), home.resolve()]  # the failed run, then exactly one more
    assert (home / "pom.xml").read_text() == localbroker.POM
    assert localbroker.is_fetched(home)


def test_fetch_without_maven_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(LocalBrokerError, match=r"Maven.*apt-get install"):
        localbroker.fetch_kafka(tmp_path)


def test_a_failed_maven_run_is_reported_with_its_log(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mvn = tmp_path / "bin" / "mvn"
    mvn.parent.mkdir()
    mvn.write_text("#!/bin/sh\necho '[ERROR] Could not resolve dependencies'\nexit 1\n")
    mvn.chmod(mvn.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(shutil, "which", lambda _name: str(mvn))

    with pytest.raises(LocalBrokerError, match="exit 1") as raised:
        localbroker.fetch_kafka(tmp_path)

    assert "[ERROR] Could not resolve dependencies" in str(raised.value)
    assert not localbroker.is_fetched(home)


# --- status and down without a broker -----------------------------------------------------------


def test_status_ignores_a_record_of_a_process_that_is_not_kafka(tmp_path: Path) -> None:
    record = {"pid": os.getpid(), "port": 1, "controller_port": 2, "version": "x", "log_file": "l"}
    (tmp_path / localbroker.RECORD).write_text(json.dumps(record))
    assert localbroker.status(tmp_path) is None
    assert localbroker.down(tmp_path) is False
    assert not (tmp_path / localbroker.RECORD).exists()


def test_status_ignores_a_broken_record(tmp_path: Path) -> None:
    assert localbroker.status(tmp_path) is None
    (tmp_path / localbroker.RECORD).write_text('{"pid": ')
    assert localbroker.status(tmp_path) is None


def test_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    log_file = tmp_path / "kafka.log"
    log_file.write_text("".join(f"line {n}\n" for n in range(100)))
    assert localbroker.tail(log_file, 3) == "line 97\nline 98\nline 99"
    assert localbroker.tail(tmp_path / "missing.log") == ""
