"""The project's topics: names, configs, and their creation up front with the admin client.

Every topic, the changelogs of the ``tasks`` table and of the schedulers included, is created
here with explicit partition counts (all equal, so that a task's events, its table entry and its
changelog live in partitions with the same number) and configs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streams.domain.bounds import EVENT_RECORD_MAX_BYTES, LARGE_RECORD_MAX_BYTES
from streams.errors import InfrastructureError
from streams.kafka_clients import KafkaConnection, connection

log = logging.getLogger(__name__)

TASK_EVENTS = "task.events"
TASK_READY = "task.ready"
TASK_DISPATCH = "task.dispatch"
TASK_COMPLETED = "task.completed"
TASK_EVENTS_DLQ = "task.events.dlq"
SCHEDULER_SIGNALS = "scheduler.signals"
SCHEDULER_EVENTS = "scheduler.events"
CONFIG = "orchestrator.config"
KEYS = "orchestrator.keys"

DLQ_RETENTION_MS = 14 * 24 * 60 * 60 * 1000
DLQ_MAX_MESSAGE_BYTES = LARGE_RECORD_MAX_BYTES
"""Twice ``task.events``' limit: a refused record of any size ``task.events`` accepted still
fits into the DLQ with its reason and provenance headers (at the same limit it would not, and
its transaction would fail on every try)."""


@dataclass(frozen=True)
class TopicNames:
    """The names of one orchestrator's topics: the base names behind an optional prefix.

    Two orchestrators (or two test runs) with different ``topic_prefix`` settings share a
    Kafka cluster without seeing each other's records.
    """

    prefix: str = ""

    @property
    def events(self) -> str:
        """``task.events``: the log."""
        return self.prefix + TASK_EVENTS

    @property
    def ready(self) -> str:
        """``task.ready``: tasks whose dependencies are met, keyed by platform."""
        return self.prefix + TASK_READY

    @property
    def dispatch(self) -> str:
        """``task.dispatch``: go-aheads for executors."""
        return self.prefix + TASK_DISPATCH

    @property
    def completed(self) -> str:
        """``task.completed``: finished tasks and their results."""
        return self.prefix + TASK_COMPLETED

    @property
    def dlq(self) -> str:
        """``task.events.dlq``: refused input."""
        return self.prefix + TASK_EVENTS_DLQ

    @property
    def signals(self) -> str:
        """``scheduler.signals``: released slots, ticks, pauses, keyed by platform."""
        return self.prefix + SCHEDULER_SIGNALS

    @property
    def scheduler_events(self) -> str:
        """``scheduler.events``: adaptive throttling changes."""
        return self.prefix + SCHEDULER_EVENTS

    @property
    def config(self) -> str:
        """``orchestrator.config``: settings changed at run time (rate limits, default
        policies), keyed by ``platform/task_type/name``."""
        return self.prefix + CONFIG

    @property
    def keys(self) -> str:
        """``orchestrator.keys``: the workers' signing key (``streams.signing``); one
        partition, compacted, readable by the workers' principal only (ACLs)."""
        return self.prefix + KEYS


@dataclass(frozen=True)
class TopicSpec:
    """A topic the project owns: its name and the configs it is created with."""

    name: str
    config: dict[str, str]
    partitions: int | None = None
    """Its partition count if not the orchestrator's (``partitions``)."""


COMPACTED_SEGMENTS = {"segment.ms": str(60 * 60 * 1000), "segment.bytes": str(64 * 1024 * 1024)}
"""Segments of the compacted topics roll hourly or at 64 MiB: Kafka compacts only closed
segments, and with its 1 GiB default a changelog's superseded states and tombstones (expired
results, retired tasks) stayed on disk for good."""

TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        TASK_EVENTS,
        {
            "retention.ms": "-1",
            "retention.bytes": "-1",
            "max.message.bytes": str(EVENT_RECORD_MAX_BYTES),
        },
    ),
    TopicSpec(TASK_READY, {"retention.ms": str(7 * 24 * 60 * 60 * 1000)}),
    TopicSpec(TASK_DISPATCH, {"retention.ms": str(7 * 24 * 60 * 60 * 1000)}),
    TopicSpec(
        TASK_COMPLETED,
        {
            "cleanup.policy": "compact",
            "max.message.bytes": str(EVENT_RECORD_MAX_BYTES),
            **COMPACTED_SEGMENTS,
        },
    ),
    TopicSpec(
        TASK_EVENTS_DLQ,
        {"retention.ms": str(DLQ_RETENTION_MS), "max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)},
    ),
    TopicSpec(SCHEDULER_SIGNALS, {"retention.ms": str(24 * 60 * 60 * 1000)}),
    TopicSpec(SCHEDULER_EVENTS, {"retention.ms": str(30 * 24 * 60 * 60 * 1000)}),
    # the latest value of each setting forever; every change for 30 days at least (the audit)
    TopicSpec(
        CONFIG,
        {
            "cleanup.policy": "compact",
            "min.compaction.lag.ms": str(30 * 24 * 60 * 60 * 1000),
            **COMPACTED_SEGMENTS,
        },
    ),
    # the signing key: its first record is the key, kept forever (keys never repeat)
    TopicSpec(KEYS, {"cleanup.policy": "compact"}, partitions=1),
)


def tasks_changelog(app_id: str) -> str:
    """The ``tasks`` table's changelog topic of the orchestrator ``app_id``."""
    return f"{app_id}-tasks-changelog"


def scheduler_changelog(app_id: str) -> str:
    """The changelog of the schedulers' state (queues, windows, in-flight sets) of ``app_id``."""
    return f"{app_id}-scheduler-changelog"


def min_insync_replicas(replication: int) -> int:
    """The ``min.insync.replicas`` of a topic with ``replication`` replicas: 2 when it has two
    or more (an acknowledged write survives one broker's loss; with 3, one broker may be down
    and writes go on), else 1."""
    return min(2, replication)


async def ensure_topics(
    kafka: KafkaConnection | str,
    partitions: int,
    names: TopicNames | None = None,
    replication: int = 1,
    app_id: str | None = None,
) -> list[str]:
    """Create the project's topics that do not exist yet; return the names created.

    With ``app_id``, also the changelogs of the ``tasks`` table and of the schedulers
    (compacted: the latest value of each key), which the fold and the scheduler write and
    restore from themselves.

    Each topic is created with ``replication`` replicas and ``min.insync.replicas``
    :func:`min_insync_replicas` (2 from replication 2 up), so that a write acknowledged by all
    in-sync replicas (``acks=all``, as every producer of the project asks) is on two brokers.

    Existing topics are left as they are, but a partition count different from ``partitions``
    is an error: tables would no longer be co-partitioned with their source topic.

    Raises:
        InfrastructureError: the broker cannot be reached, or a topic has the wrong partitions.
    """
    prefix = (names or TopicNames()).prefix
    specs = [TopicSpec(prefix + spec.name, spec.config, spec.partitions) for spec in TOPICS]
    if app_id is not None:
        # a task's state may be larger than the event that made it (bounds.MAX_STATE_BYTES)
        changelog_config = {
            "cleanup.policy": "compact",
            "max.message.bytes": str(LARGE_RECORD_MAX_BYTES),
            **COMPACTED_SEGMENTS,
        }
        specs.append(TopicSpec(tasks_changelog(app_id), changelog_config))
        specs.append(TopicSpec(scheduler_changelog(app_id), changelog_config))
    admin = connection(kafka).admin(request_timeout_ms=15_000)
    try:
        await admin.start()
        existing = await _partition_counts(admin, [spec.name for spec in specs])
        created: list[str] = []
        for spec in specs:
            if spec.name in existing:
                if spec.partitions is None and existing[spec.name] != partitions:
                    raise InfrastructureError(
                        f"topic {spec.name} has {existing[spec.name]} partitions, the settings say "
                        f"{partitions}: set 'partitions' to {existing[spec.name]}"
                    )
                continue
            config = {**spec.config, "min.insync.replicas": str(min_insync_replicas(replication))}
            count = spec.partitions or partitions
            topic = NewTopic(spec.name, count, replication, topic_configs=config)
            try:
                await admin.create_topics([topic])
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
        if created:
            log.info("created topics %s with %d partitions", ", ".join(created), partitions)
        return created
    except KafkaError as exc:
        raise InfrastructureError(
            f"cannot reach Kafka at {connection(kafka).describe()}: {exc}", retriable=True
        ) from exc
    finally:
        await admin.close()


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    present = set(await admin.list_topics()) & set(names)
    if not present:
        return {}
    described = await admin.describe_topics(sorted(present))
    return {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}
