"""The local three-node cluster's pure parts: ports, each node's properties, the record that
``status`` and ``down`` read, and the partition layout ``kafka status`` prints. No Java here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from streams import localbroker
from streams.errors import LocalBrokerError
from streams.partition_layout import PartitionLayout, leaders_by_node, partition_line, summarize
from streams.topics import min_insync_replicas

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.kafka.yml"


def props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_three_nodes_take_six_consecutive_ports() -> None:
    assert localbroker.node_ports(9092, 3) == [(9092, 9095), (9093, 9096), (9094, 9097)]


@pytest.mark.parametrize("node_id", [1, 2, 3])
def test_each_node_is_a_voter_with_its_own_ports_and_log_dir(tmp_path: Path, node_id: int) -> None:
    ports = localbroker.node_ports(19500, 3)
    log_dir = localbroker.node_dir(tmp_path, node_id) / "log"
    node = props(localbroker.render_node_properties(node_id, ports, log_dir))

    port, controller_port = ports[node_id - 1]
    assert node["node.id"] == str(node_id)
    assert node["process.roles"] == "broker,controller"
    assert node["controller.quorum.voters"] == (
        "1@127.0.0.1:19503,2@127.0.0.1:19504,3@127.0.0.1:19505"
    )
    assert "controller.quorum.bootstrap.servers" not in node  # a static quorum
    assert node["listeners"] == (
        f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}"
    )
    assert node["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{port}"
    assert node["log.dirs"] == str(tmp_path / f"node-{node_id}" / "log")
    assert node["default.replication.factor"] == "3"
    assert node["min.insync.replicas"] == "2"
    assert node["offsets.topic.replication.factor"] == "3"
    assert node["transaction.state.log.replication.factor"] == "3"
    assert node["transaction.state.log.min.isr"] == "2"
    assert node["auto.create.topics.enable"] == "false"


def test_the_compose_profile_has_the_local_clusters_settings() -> None:
    # the same Kafka settings as `kafka up --brokers 3`; only listeners and ports differ
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    local = props(localbroker.render_node_properties(1, localbroker.node_ports(9092, 3), Path()))
    for name in ("kafka-1", "kafka-2", "kafka-3"):
        compose = services[name]["environment"]
        for key in (
            "process.roles",
            "default.replication.factor",
            "min.insync.replicas",
            "offsets.topic.replication.factor",
            "transaction.state.log.replication.factor",
            "transaction.state.log.min.isr",
            "share.coordinator.state.topic.replication.factor",
            "share.coordinator.state.topic.min.isr",
            "auto.create.topics.enable",
            "group.initial.rebalance.delay.ms",
            "num.partitions",
        ):
            env_key = "KAFKA_" + key.upper().replace(".", "_")
            assert str(compose[env_key]) == local[key], (name, key)


def test_only_one_or_three_brokers(tmp_path: Path) -> None:
    with pytest.raises(LocalBrokerError, match="--brokers must be 1 or 3, not 2"):
        localbroker.up(data_dir=tmp_path, brokers=2)


def record(tmp_path: Path, pids: list[int]) -> None:
    nodes = [
        {
            "node_id": i,
            "pid": pid,
            "port": 19500 + i,
            "controller_port": 19600 + i,
            "log_file": str(tmp_path / f"node-{i}" / "kafka.log"),
        }
        for i, pid in enumerate(pids, start=1)
    ]
    data = {"version": localbroker.KAFKA_VERSION, "cluster_id": "x", "nodes": nodes}
    (tmp_path / localbroker.RECORD).write_text(json.dumps(data))


def test_a_cluster_record_whose_nodes_do_not_run_kafka_is_not_running(tmp_path: Path) -> None:
    record(tmp_path, [os.getpid(), os.getpid(), os.getpid()])  # alive, but not Kafka
    assert localbroker.status(tmp_path) is None
    assert localbroker.down(tmp_path) is False
    assert not (tmp_path / localbroker.RECORD).exists()


def test_start_node_needs_a_running_cluster(tmp_path: Path) -> None:
    with pytest.raises(LocalBrokerError, match="no cluster runs in"):
        localbroker.start_node(2, tmp_path)


def test_min_insync_replicas_follows_replication() -> None:
    assert [min_insync_replicas(r) for r in (1, 2, 3, 5)] == [1, 2, 2, 2]


LAYOUT = [
    PartitionLayout("task.events", 0, 1, (1, 2, 3), (1, 2, 3)),
    PartitionLayout("task.events", 1, 2, (2, 3, 1), (2, 3)),
    PartitionLayout("task.events", 2, 1, (1, 3, 2), (1, 3)),
    PartitionLayout("task.events", 3, -1, (3, 1, 2), ()),
]


def test_a_topic_is_summed_up_in_one_line() -> None:
    assert leaders_by_node(LAYOUT) == {1: 2, 2: 1}
    assert summarize(LAYOUT) == (
        "  task.events: 4 partitions, replicas 3, leaders 1:2 2:1, 3 under-replicated, 1 OFFLINE"
    )
    assert summarize(LAYOUT[:1]) == (
        "  task.events: 1 partitions, replicas 3, leaders 1:1, all in sync"
    )


def test_a_partition_line_flags_what_is_degraded() -> None:
    assert partition_line(LAYOUT[0]) == "    task.events[0] leader 1 replicas 1,2,3 isr 1,2,3"
    assert partition_line(LAYOUT[1]).endswith("isr 2,3 under-replicated")
    assert partition_line(LAYOUT[3]) == "    task.events[3] leader - replicas 3,1,2 isr  OFFLINE"
