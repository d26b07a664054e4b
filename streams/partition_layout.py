"""Where a Kafka cluster keeps each partition: its leader, replicas and in-sync replicas.

``orchestrator kafka status`` prints it per topic, compactly (leaders counted per node, the
partitions that are under-replicated or offline), or one line per partition. Reading it is one
metadata request (aiokafka's admin ``describe_cluster`` and ``describe_topics``); the rendering
is pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from streams.kafka_clients import KafkaConnection, connection

HIDDEN_PREFIX = "__"
"""Topics that start with it are Kafka's own (offsets, transactions) or the broker health check."""


@dataclass(frozen=True)
class PartitionLayout:
    """One partition's placement.

    Attributes:
        topic: its topic.
        partition: its number.
        leader: the node that leads it (-1: none, the partition is offline).
        replicas: the nodes that hold a replica.
        isr: the replicas in sync with the leader.
    """

    topic: str
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]

    @property
    def is_under_replicated(self) -> bool:
        """Whether some replica is out of sync (a node down or catching up)."""
        return len(self.isr) < len(self.replicas)

    @property
    def is_offline(self) -> bool:
        """Whether no node leads it: nobody can read or write it."""
        return self.leader < 0


@dataclass(frozen=True)
class ClusterLayout:
    """The brokers a cluster lists (id to ``host:port``), its controller, and partitions."""

    brokers: dict[int, str]
    controller_id: int
    partitions: tuple[PartitionLayout, ...]


async def read_layout(
    kafka: KafkaConnection | str, topics: list[str] | None = None
) -> ClusterLayout:
    """The cluster's brokers and the placement of ``topics``' partitions (``None``: every topic
    but Kafka's own and the health check)."""
    admin = connection(kafka).admin(request_timeout_ms=10_000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    brokers = {int(b["node_id"]): f"{b['host']}:{b['port']}" for b in cluster["brokers"]}
    partitions = tuple(
        PartitionLayout(
            t["topic"],
            int(p["partition"]),
            int(p["leader"]),
            tuple(p["replicas"]),
            tuple(p["isr"]),
        )
        for t in described
        if not t.get("error_code")
        and (
            topics is not None or not (t.get("is_internal") or t["topic"].startswith(HIDDEN_PREFIX))
        )
        for p in t["partitions"]
    )
    ordered = tuple(sorted(partitions, key=lambda p: (p.topic, p.partition)))
    return ClusterLayout(brokers, int(cluster.get("controller_id", -1)), ordered)


def leaders_by_node(partitions: Iterable[PartitionLayout]) -> Counter[int]:
    """How many of ``partitions`` each node leads (offline partitions are not counted)."""
    return Counter(p.leader for p in partitions if not p.is_offline)


def summarize(partitions: list[PartitionLayout]) -> str:
    """One line for one topic's partitions, e.g. ``  task.events: 8 partitions, replicas 3,
    leaders 1:3 2:3 3:2, 1 under-replicated``."""
    if not partitions:
        return ""
    leaders = leaders_by_node(partitions)
    replication = sorted({len(p.replicas) for p in partitions})
    parts = [
        f"  {partitions[0].topic}: {len(partitions)} partitions",
        "replicas " + "/".join(map(str, replication)),
        "leaders " + " ".join(f"{node}:{count}" for node, count in sorted(leaders.items())),
    ]
    under = sum(p.is_under_replicated for p in partitions)
    offline = sum(p.is_offline for p in partitions)
    parts.append(f"{under} under-replicated" if under else "all in sync")
    if offline:
        parts.append(f"{offline} OFFLINE")
    return ", ".join(parts)


def partition_line(p: PartitionLayout) -> str:
    """``    task.events[3] leader 2 replicas 2,3,1 isr 2,3`` (plus a flag when degraded)."""
    flag = " OFFLINE" if p.is_offline else " under-replicated" if p.is_under_replicated else ""
    return (
        f"    {p.topic}[{p.partition}] leader {p.leader if not p.is_offline else '-'} "
        f"replicas {','.join(map(str, p.replicas))} isr {','.join(map(str, p.isr))}{flag}"
    )


def render(layout: ClusterLayout, every_partition: bool = False) -> list[str]:
    """Lines for ``kafka status``: one per topic, or with ``every_partition`` also one per
    partition."""
    by_topic: dict[str, list[PartitionLayout]] = {}
    for p in layout.partitions:
        by_topic.setdefault(p.topic, []).append(p)
    lines = []
    for topic_partitions in by_topic.values():
        lines.append(summarize(topic_partitions))
        if every_partition:
            lines += [partition_line(p) for p in topic_partitions]
    return lines
