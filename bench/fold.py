"""The fold case and its yardstick: a real worker folding a pre-filled ``task.events``, and a plain
aiokafka consumer decoding the same topic.

The fold's rate is taken from the outputs' record timestamps (the broker's append times): from
the first ``task.ready`` record (written for the first event) to the last ``task.completed``
record (written for the last event). Start-up, table recovery and the last commit's delay are
outside that span; every event's decode, fold, table write, effects and transactions are
inside it. The quixstreams peer is timed the same way on topics of its own.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.workload import (
    ROOT,
    Result,
    create_topics,
    lifecycle_events,
    produce_events,
    start,
    unique,
)
from schemas import decode_event
from streams.kafka_clients import KafkaConnection
from streams.topics import TopicNames


@dataclass(frozen=True)
class FoldTopic:
    """A pre-filled ``task.events``: ``tasks`` tasks, 3 events each."""

    name: str
    topics: TopicNames
    tasks: int

    @property
    def events(self) -> int:
        """Records on the topic."""
        return 3 * self.tasks


async def prefill(bootstrap: str, tasks: int) -> FoldTopic:
    """Create a case's topics and write ``tasks`` created/started/completed lifecycles."""
    name = unique("fold")
    topics = TopicNames(f"{name}.")
    await create_topics(bootstrap, topics)
    await produce_events(bootstrap, topics.events, lifecycle_events(tasks))
    return FoldTopic(name, topics, tasks)


async def output_span_s(
    bootstrap: str, first_topic: str, last_topic: str, wanted: int, timeout_s: float
) -> float:
    """Seconds between the first record on ``first_topic`` and the ``wanted``-th on ``last_topic``.

    Both read committed; timestamps are the broker's append times (see ``create_topics``).

    Raises:
        RuntimeError: ``wanted`` records did not arrive within ``timeout_s``.
    """
    consumer = KafkaConnection(bootstrap).consumer(
        first_topic,
        last_topic,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=4_000_000,
    )
    await consumer.start()
    first_ms: int | None = None
    last_ms, seen = 0, 0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < wanted:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {seen} of {wanted} records on {last_topic} after {timeout_s:g} s"
                )
            batches = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for tp, records in batches.items():
                stamps = [r.timestamp for r in records]
                if tp.topic == first_topic and stamps:
                    first_ms = min(stamps) if first_ms is None else min(first_ms, *stamps)
                if tp.topic == last_topic and stamps:
                    seen += len(stamps)
                    last_ms = max(last_ms, *stamps)
    finally:
        await consumer.stop()
    if first_ms is None:
        raise RuntimeError(f"nothing on {first_topic}")
    return (last_ms - first_ms) / 1000


async def fold_rate(
    bootstrap: str, root: Path, topic: FoldTopic, profile: Path | None = None
) -> float:
    """Events/s of a worker folding ``topic`` (optionally under py-spy, written to ``profile``)."""
    reader = asyncio.create_task(
        output_span_s(
            bootstrap, topic.topics.ready, topic.topics.completed, topic.tasks, timeout_s=1800
        )
    )
    worker = start(bootstrap, root, topic.name, wait=False)
    spy = None
    try:
        if profile is not None:
            spy = _profile(worker.process.pid, profile)
        span_s = await reader
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        worker.stop()
    return topic.events / span_s


def _profile(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` until interrupted; collapsed stacks (flamegraph input) in ``out``."""
    spy = Path(sys.executable).with_name("py-spy")
    command = [str(spy), "record", "--pid", str(pid), "--rate", "200", "--format", "raw"]
    return subprocess.Popen(
        [*command, "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def peer_rate(
    bootstrap: str, root: Path, topic: FoldTopic, commit_interval_s: float
) -> float | None:
    """Events/s of the quixstreams peer folding ``topic`` (None without the ``bench`` extra).

    Timed like the fold: from its first ``task.ready`` record to its last ``task.completed``.
    """
    if importlib.util.find_spec("quixstreams") is None:
        print("peer case skipped: quixstreams is not installed (pip install -e '.[bench]')")
        return None
    name = unique("peer")
    outputs = TopicNames(f"{name}.")
    await create_topics(bootstrap, outputs)
    (root / name).mkdir(parents=True)
    log = root / name / "peer.log"
    reader = asyncio.create_task(
        output_span_s(bootstrap, outputs.ready, outputs.completed, topic.tasks, timeout_s=1800)
    )
    command = [sys.executable, "-W", "ignore", "-m", "bench.peer_quix", bootstrap]
    command += [topic.topics.events, outputs.prefix, str(root / name / "state")]
    command += ["--commit-interval", str(commit_interval_s)]
    peer = _spawn(command, log)
    try:
        while not reader.done():
            await asyncio.wait([reader], timeout=1)
            if peer.poll() is not None and not reader.done():
                reader.cancel()
                tail = log.read_text(errors="replace").splitlines()[-20:]
                raise RuntimeError(f"peer exited with {peer.returncode}:\n" + "\n".join(tail))
        span_s = reader.result()
    finally:
        peer.terminate()
        try:
            peer.wait(60)
        except subprocess.TimeoutExpired:
            peer.kill()
            peer.wait()
    return topic.events / span_s


def _spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=log.parent,
        )


async def raw_rate(bootstrap: str, topic: FoldTopic) -> float:
    """Events/s of a plain aiokafka consumer reading and decoding ``topic`` (read committed)."""
    consumer = KafkaConnection(bootstrap).consumer(
        topic.topics.events,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=4_000_000,
    )
    await consumer.start()
    started, seen = time.monotonic(), 0
    try:
        while seen < topic.events:
            batches = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for records in batches.values():
                for record in records:
                    decode_event(record.value or b"")
                seen += len(records)
    finally:
        await consumer.stop()
    return topic.events / (time.monotonic() - started)


def results(fold: float, raw: float, peer: float | None, ceiling: float) -> list[Result]:
    """The fold's rows. A row's ``ratio`` is its value divided by the value of ``ratio_to``: the
    fold's share of the EOS ceiling's rate (``bench.ceiling``), the ceiling's share of the raw
    consumer's, and the peer's rate as a multiple of the fold's."""
    rows = [
        Result(
            "fold_events_per_s",
            round(fold),
            "events/s",
            "eos_ceiling_events_per_s",
            round(fold / ceiling, 3),
        ),
        Result(
            "eos_ceiling_events_per_s",
            round(ceiling),
            "events/s",
            "raw_consume_events_per_s",
            round(ceiling / raw, 3),
        ),
        Result("raw_consume_events_per_s", round(raw), "events/s"),
    ]
    if peer is not None:
        rows.append(
            Result(
                "peer_fold_events_per_s",
                round(peer),
                "events/s",
                "fold_events_per_s",
                round(peer / fold, 3),
            )
        )
    return rows
