"""The golden log through a real worker: its live table is the replay of the log it folded.

Given a fresh orchestrator's ``task.events`` holding the golden log's records
(``tests/golden/log.bin.gz``: over 10,000 records of every kind and source, refused input
included, a 512 KiB result among them) as they are, keys and values, written before its first
worker started (so before the signing key existed: the log of an orchestrator upgraded to
signing), when the worker has folded them all, then ``verify`` (``projections.live``: the
workers' ``tasks`` table against a fresh fold of the log up to the offsets the table reflects)
finds no difference.

The records are placed as the project's producers place them (``streams.partitions``). The
worker is a whole worker: its fold applies the follow-ups an event causes for tasks of its own
partition in the same step (``apply_here``) and appends every follow-up again (the log already
holds them: the copies are duplicates, dropped by id, but a copy may land before or after the
original in the task's partition), and its timer times out every running attempt, makes every
retry due and gives up on every awaited id at once (the log's clock starts on 2025-01-01, so
every deadline has passed). The live table then differs from the golden final states, as it
should; what must hold is that the live fold and the replay agree on whatever the topic holds,
at the same offsets.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaProducer

from projections.live import read_live_table, verify
from streams.partitions import partition_of
from streams.signing import read_key
from streams.topics import ensure_topics
from tests.golden import golden
from tests.integration.conftest import PARTITIONS, Cluster

FOLD_TIMEOUT_S = 300.0
"""How long the worker may take to fold the golden log (about 20,000 records with its own)."""


async def write_placed(
    bootstrap_servers: str, topic: str, records: list[golden.Record]
) -> list[tuple[int, int]]:
    """Write ``records`` in order, each on the partition the project's producers give its key
    (``streams.partitions``: a ``group/name`` id on its group's; no key: partition 0); return
    each one's ``(partition, offset)``."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_request_size=3_000_000,
    )
    await producer.start()
    try:
        deliveries = [
            await producer.send(
                topic, value, key=key, partition=0 if key is None else partition_of(key, PARTITIONS)
            )
            for key, value in records
        ]
        metadata = await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metadata]


async def until_folded(
    api_url: str, topic: str, last: dict[int, int], timeout_s: float
) -> dict[int, int]:
    """Wait until the worker's table reflects at least offset ``last[p]`` of each partition;
    return the offsets it reflects (the last ones read, at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        table = await read_live_table(api_url, topic, PARTITIONS, timeout_s=60.0)
        if all(table.offsets.get(p, -1) >= offset for p, offset in last.items()):
            return table.offsets
        if time.monotonic() > deadline:
            return table.offsets
        await asyncio.sleep(1.0)


@pytest.mark.timeout(FOLD_TIMEOUT_S + 240)
async def test_a_worker_folding_the_golden_log_has_the_table_its_replay_gives(
    cluster: Cluster, bootstrap_servers: str
) -> None:
    records = golden.read_log()
    expected = golden.read_expected()
    assert golden.log_digest(records) == expected["log_sha256"]
    # the log's clock is of 2023: with the default task_retention (7 days) the worker's timer
    # would retire every finished task at once; verify would still agree (the retirements are
    # in the topic), but the check of the expected tasks below would find none
    # the log was written before signing existed: it is there before the first worker makes
    # the signing key, which is signed from its end (unsigned internal events below are
    # judged as they always were; streams.domain.signatures)
    topic = cluster.topics.events
    await ensure_topics(bootstrap_servers, PARTITIONS, cluster.topics)
    positions = await write_placed(bootstrap_servers, topic, records)
    last: dict[int, int] = {}
    for partition, offset in positions:
        last[partition] = max(last.get(partition, -1), offset)
    assert sorted(last) == list(range(PARTITIONS))
    worker = cluster.start("golden", task_retention=str(50 * 365 * 86_400))
    signing = await read_key(bootstrap_servers, cluster.topics.keys)
    assert signing is not None
    assert all(signing.signed_from[p] > offset for p, offset in last.items())

    folded = await until_folded(worker.api_url, topic, last, FOLD_TIMEOUT_S)
    assert all(folded.get(p, -1) >= offset for p, offset in last.items()), (
        f"the worker did not fold the golden log within {FOLD_TIMEOUT_S:g} s: "
        f"it is at {folded}, the log ends at {last}"
    )

    verification = await verify(bootstrap_servers, topic, worker.api_url, timeout_s=120.0)
    differences = verification.differences
    shown = "\n".join(d.describe() for d in differences[:20])
    assert not differences, f"{len(differences)} tasks differ between replay and table:\n{shown}"

    # what was compared: the whole golden log (and whatever the worker appended meanwhile)
    replayed = verification.replayed
    assert all(replayed.ranges[p].stop > offset for p, offset in last.items())
    assert replayed.records >= len(records)
    assert set(expected["final_states"]) <= set(verification.live.tasks)
    print(
        f"golden log: {len(records)} records written; verify compared {replayed.records} "
        f"records ({replayed.summary()['verdicts']}), {len(verification.live.tasks)} tasks; "
        f"live states equal to the golden final states: "
        f"{sum(verification.live.tasks.get(t) == s for t, s in expected['final_states'].items())}"
        f" of {len(expected['final_states'])}"
    )
