"""The Faust application and what a worker's agents and views share (:class:`Runtime`).

``streams.worker.build`` (the composition root) creates the runtime and gives each agent and
view the typed parts it needs. Agents and views live in their own modules and stay thin: they
decode, call the pure core, and encode. This module imports none of them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import faust
from faust.types import TopicT

from streams import api_tls, auth, placement
from streams.config import Settings
from streams.domain.signatures import SigningKey
from streams.domain.timers import DeadlineIndex
from streams.metrics import Metrics
from streams.partitions import partitioner
from streams.producers import SharedProducer
from streams.state_codec import encode_state
from streams.task_store import TaskStore


class ProcessedOffsets:
    """The last offset the fold agent finished, per partition of ``task.events``.

    A client that wrote an event knows its partition and offset; a read that waits until the
    fold has processed that offset sees the write (read-your-writes).
    """

    def __init__(self) -> None:
        self._offsets: dict[int, int] = {}
        self._changed = asyncio.Condition()

    def get(self, partition: int) -> int:
        """The last processed offset of ``partition``, or -1."""
        return self._offsets.get(partition, -1)

    async def advance(self, partition: int, offset: int) -> None:
        """Record that ``offset`` of ``partition`` is processed."""
        self._offsets[partition] = offset
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, partition: int, offset: int, timeout_s: float) -> bool:
        """Wait until ``offset`` of ``partition`` is processed; False on timeout."""

        async def reached() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: self.get(partition) >= offset)

        try:
            await asyncio.wait_for(reached(), timeout_s)
        except TimeoutError:
            return False
        return True


class Verdicts:
    """What the fold decided about recent records of ``task.events``: which it refused, and why.

    A client that wrote an event asks for its verdict by partition and offset
    (``GET /tasks/{id}/verdict``). Kept per partition since this worker opened it, for the
    newest ``KEPT`` refusals; older offsets (or ones folded by a previous owner) are unknown.
    A verdict is the fold's as soon as it folded the record, before the commit: a transaction
    that then fails folds the record again, deterministically, to the same verdict (except a
    record whose output the broker refuses, dead-lettered on that retry).
    """

    KEPT = 10_000

    def __init__(self) -> None:
        self._refused: dict[int, dict[int, tuple[str, str]]] = {}
        self._known_from: dict[int, int] = {}

    def opened(self, partition: int, offset: int) -> None:
        """The fold opened ``partition`` at ``offset``: it decides everything from there."""
        self._known_from[partition] = offset
        self._refused[partition] = {}

    def refused(self, partition: int, offset: int, reason: str, detail: str) -> None:
        """The fold dead-lettered the record at ``offset``."""
        refused = self._refused.setdefault(partition, {})
        refused[offset] = (reason, detail)
        if len(refused) > self.KEPT:  # forget the oldest: offsets before it become unknown
            oldest = min(refused)
            del refused[oldest]
            self._known_from[partition] = max(self._known_from.get(partition, 0), oldest + 1)

    def verdict(self, partition: int, offset: int) -> tuple[str, str, str]:
        """("applied" | "refused" | "unknown", reason, detail) of a folded record."""
        known_from = self._known_from.get(partition)
        if known_from is None or offset < known_from:
            return "unknown", "", ""
        found = self._refused.get(partition, {}).get(offset)
        if found is not None:
            return "refused", *found
        return "applied", "", ""


@dataclass
class Runtime:
    """One worker's Faust app and what its agents and views share."""

    settings: Settings
    app: faust.App
    events_topic: TopicT
    tasks: TaskStore
    """The ``tasks`` table (written by the fold only)."""
    processed: ProcessedOffsets = field(default_factory=ProcessedOffsets)
    verdicts: Verdicts = field(default_factory=Verdicts)
    """The fold's recent verdicts (refused or applied), for clients that confirm writes."""
    deadlines: DeadlineIndex = field(default_factory=DeadlineIndex)
    """The next deadline of each task the fold has open (the timer's work list)."""
    metrics: Metrics = field(default_factory=Metrics)
    """The worker's Prometheus metrics."""
    producer: SharedProducer = field(init=False)
    """The plain producer for records written outside any event (timers, ticks, executors)."""
    signing: SigningKey | None = None
    """The workers' signing key (``streams.signing``): what the agents write to
    ``task.events`` is signed with it, and the fold refuses internal events not signed with
    it. None only in a worker built without Kafka (a test of its web app)."""

    def __post_init__(self) -> None:
        self.producer = SharedProducer(self.settings.kafka)

    def raw_topic(self, name: str) -> TopicT:
        """A topic of raw bytes keys and values (every codec is applied by hand)."""
        return _raw_topic(self.app, name, self.settings.partitions)


def _raw_topic(app: faust.App, name: str, partitions: int) -> TopicT:
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
        internal=False,
    )


def create_app(settings: Settings) -> faust.App:
    """The Faust app of a worker: RocksDB tables, exactly-once, web server on ``web_host``
    (HTTPS with ``web_certfile``)."""
    token_check = [auth.middleware(settings.api_token)] if settings.api_token else []
    web_options = {"middlewares": [*token_check, api_tls.refuse_untrusted_peers]}
    app = faust.App(
        settings.orchestrator_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        # the same login as every other client of the worker (streams.kafka_clients)
        broker_credentials=settings.kafka.faust_credentials(),
        store="rocksdb://",
        # the fold and the scheduler commit their own transactions; faust only keeps the
        # group, routes reads and serves HTTP
        processing_guarantee="at_least_once",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        datadir=settings.data_dir,
        autodiscover=False,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        # other workers route reads and fan-out views here (faust's assignment carries it)
        canonical_url=settings.canonical_url,
        web_application_options=web_options,
        # HTTPS with web_certfile and web_keyfile (None: plain HTTP)
        web_ssl_context=api_tls.server_context(settings.web_certfile, settings.web_keyfile),
        # app.http_client: faust's router forwarding a read to a task's owner (it keeps the
        # request's scheme, so https between TLS workers), and a worker asking the others;
        # both verify the other worker's certificate with api_cafile
        HttpClient=api_tls.http_client_factory(settings.api_cafile),
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        broker_commit_interval=settings.commit_interval,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=max(settings.session_timeout / 10, 0.5),
        consumer_auto_offset_reset="earliest",
        # the topic router finds a task's worker as the producers place it: by its group
        producer_partitioner=partitioner,
        # faust uses its own assignor (co-partitioned placement, and the owner of each
        # partition for its topic router) only for apps with changelog tables or standby
        # replicas, else Kafka's round robin; the worker has no faust table, and no standby
        # is ever created without one, so this only keeps faust's assignor
        table_standby_replicas=1,
        producer_max_request_size=2_000_000,
        # producers batch for up to 50 ms: far fewer produce requests per transaction, which
        # cost the broker more CPU than the records themselves (bench: about a fifth less CPU
        # per event, worker and broker); outputs only become visible at commits anyway
        producer_linger=0.05,
    )
    placement.install(app)
    return app


def create_runtime(settings: Settings) -> Runtime:
    """A worker's app and what its parts share (no agent or view yet)."""
    app = create_app(settings)
    return Runtime(
        settings=settings,
        app=app,
        events_topic=_raw_topic(app, settings.topics.events, settings.partitions),
        tasks=TaskStore(Path(settings.data_dir) / "tasks", settings.partitions, encode_state),
    )
