"""``python -m bench.replay_speed``: how fast the offline replay folds ``task.events``.

Fills a fresh topic with ``--events`` events (created, started, completed per task), then runs
:func:`projections.replay.replay` over it with every projection, with ``status`` alone (in this
process, then spread over two worker processes as a long ``verify`` is), and prints the records
folded per second (the read from Kafka, decoding, the fold and the views; connection set-up
excluded) next to a plain read-and-decode of the same records with the replay's decoder, the
upper bound of one process. With ``--broker`` it uses that broker (on topics of its own);
otherwise it starts one of its own on a free port and stops it afterwards.

:func:`measure` is the API (``bench/__main__.py`` may call it with a broker it started).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from projections.log import Verdict
from projections.replay import replay
from projections.status import TaskStatusView
from schemas import encode_event
from schemas.records import event_of_record
from streams import localbroker
from streams.domain import Event, Source, TaskCompleted, TaskCreated, TaskStarted
from streams.kafka_clients import KafkaConnection
from streams.process import free_port
from streams.topics import TopicNames, ensure_topics

PARTITIONS = 8


def _events(count: int) -> list[Event]:
    at = int(time.time() * 1000)
    events: list[Event] = []
    for i in range(count // 3 + 1):
        tid = f"t{i}"
        created = TaskCreated("bench", "bench", tid, 5, (), 600_000, 1, 0, 600_000, 600_000)
        for payload in (created, TaskStarted(), TaskCompleted(b'{"ok":true}')):
            events.append(Event(str(uuid.uuid4()), tid, at, Source.CLIENT, payload))
            at += 1
    return events[:count]


async def _fill(bootstrap: str, topic: str, events: list[Event]) -> None:
    producer = KafkaConnection(bootstrap).producer(acks="all", linger_ms=20, max_batch_size=512_000)
    await producer.start()
    try:
        for event in events:
            await producer.send(topic, encode_event(event), key=event.task_id.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _read_and_decode(bootstrap: str, topic: str, wanted: int) -> float:
    consumer = KafkaConnection(bootstrap).consumer(
        topic,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    seen = 0
    gc.disable()  # as the replay does while it folds
    try:
        await consumer.getmany(timeout_ms=0)  # join the topic before the clock starts
        started = time.monotonic()
        while seen < wanted:
            batches = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for records in batches.values():
                for record in records:
                    event_of_record(record.key, record.value or b"")
                seen += len(records)
    finally:
        gc.enable()
        await consumer.stop()
    return time.monotonic() - started


async def measure(bootstrap: str, events: int = 100_000) -> dict[str, Any]:
    """Fill a fresh topic on ``bootstrap`` with ``events`` events; replay it; return the figures.

    Returns:
        ``replay_events_per_s`` (every projection fed), ``replay_status_only_events_per_s``
        (in this process), ``replay_status_only_2_processes_events_per_s`` (two worker
        processes, start-up and merge included), ``read_and_decode_events_per_s`` (no fold),
        the event count and the seconds of each.
    """
    topics = TopicNames(f"replay-bench-{uuid.uuid4().hex[:6]}.")
    await ensure_topics(bootstrap, PARTITIONS, topics)
    await _fill(bootstrap, topics.events, _events(events))
    full = await replay(bootstrap, topics.events)
    figures: dict[str, Any] = {
        "events": events,
        "replay_events_per_s": round(full.events_per_s),
        "replay_s": round(full.elapsed_s, 3),
        "tasks": len(full.log.states),
    }
    assert full.records == events, full.records
    assert full.log.counts[Verdict.APPLIED] == events, full.log.counts
    del full  # its views hold every step: not kept alive under the next runs
    for label, processes in (("", 1), ("_2_processes", 2)):
        status_only = await replay(
            bootstrap, topics.events, projections=[TaskStatusView()], processes=processes
        )
        assert status_only.records == events, status_only.records
        assert status_only.processes == processes, status_only.processes
        figures[f"replay_status_only{label}_events_per_s"] = round(status_only.events_per_s)
        figures[f"replay_status_only{label}_s"] = round(status_only.elapsed_s, 3)
        del status_only
    raw_s = await _read_and_decode(bootstrap, topics.events, events)
    figures["read_and_decode_events_per_s"] = round(events / raw_s)
    figures["read_and_decode_s"] = round(raw_s, 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.replay_speed", description=__doc__)
    parser.add_argument("--broker", help="use this broker (default: start one of our own)")
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    if args.broker:
        print(json.dumps(asyncio.run(measure(args.broker, args.events)), indent=2))
        return
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as root:
        info = localbroker.up(port=free_port(), data_dir=Path(root) / "kafka", timeout_s=120)
        try:
            print(json.dumps(asyncio.run(measure(info.bootstrap_servers, args.events)), indent=2))
        finally:
            localbroker.down(Path(root) / "kafka")


if __name__ == "__main__":
    main()
