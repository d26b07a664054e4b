"""The workers' signing key: read from, and made once in, the keys topic (``orchestrator.keys``).

The pure decision (which records need a signature, whether one holds) is
``streams.domain.signatures``; this module is its I/O. The keys topic has one partition and is
compacted; the **first** record in it is the key, so workers that start at the same time and
each write one agree on the first. Records are keyed by the key's fingerprint (never the same
twice), so compaction never removes the first record. A record's value is JSON::

    {"format": 1, "algorithm": "HMAC-SHA256", "secret": "<base64 of 32 bytes>",
     "signed_from": {"0": 1234, "1": 987, ...}, "created_at_ms": 1795548818966}

``signed_from`` holds the end offsets of ``task.events`` (per partition) when the key was made:
internal events below them were written before signing and are judged as before.

Only the workers' principal should read or write this topic (Kafka ACLs): a client that can
read the secret can sign what it writes. Without ACLs on the cluster, any client can read it,
as it can write the changelogs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from streams.domain.signatures import SECRET_BYTES, SigningKey
from streams.errors import InfrastructureError
from streams.kafka_clients import KafkaConnection, connection

log = logging.getLogger(__name__)

FORMAT = 1
"""The version of the key record's JSON."""

READ_TIMEOUT_S = 30.0
"""How long reading the keys topic may take before it is an error."""


def key_record(signing: SigningKey) -> tuple[bytes, bytes]:
    """The record (key, value) that holds ``signing`` in the keys topic."""
    value = {
        "format": FORMAT,
        "algorithm": "HMAC-SHA256",
        "secret": base64.b64encode(signing.secret).decode("ascii"),
        "signed_from": {str(p): o for p, o in sorted(signing.signed_from.items())},
        "created_at_ms": signing.created_at_ms,
    }
    fingerprint = hashlib.sha256(signing.secret).hexdigest()[:16]
    return f"signing-key/{fingerprint}".encode(), json.dumps(value, sort_keys=True).encode()


def key_of_record(value: bytes) -> SigningKey:
    """The signing key a keys-topic record holds.

    Raises:
        InfrastructureError: the record is not a key of a format this worker reads.
    """
    try:
        data: dict[str, Any] = json.loads(value)
        if data.get("format") != FORMAT or data.get("algorithm") != "HMAC-SHA256":
            raise ValueError(f"format {data.get('format')!r}, algorithm {data.get('algorithm')!r}")
        secret = base64.b64decode(data["secret"], validate=True)
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"a secret of {len(secret)} bytes")
        signed_from = {int(p): int(o) for p, o in data["signed_from"].items()}
        return SigningKey(secret, signed_from, int(data.get("created_at_ms", 0)))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InfrastructureError(
            f"the first record of the keys topic is not a signing key this worker reads: {exc}"
        ) from exc


async def read_key(kafka: KafkaConnection | str, topic: str) -> SigningKey | None:
    """The signing key in ``topic`` (its first record), None if it holds none (or is absent).

    Raises:
        InfrastructureError: Kafka refused the read (no ACL for this principal, say) or did not
            answer within ``READ_TIMEOUT_S``; or the first record is not a key.
    """
    consumer = connection(kafka).consumer(group_id=None, enable_auto_commit=False)
    try:
        await consumer.start()
        if topic not in await consumer.topics():
            return None
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        start = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if end <= start:
            return None
        consumer.seek(tp, start)
        deadline = time.monotonic() + READ_TIMEOUT_S
        while time.monotonic() < deadline:
            batches = await consumer.getmany(tp, timeout_ms=500, max_records=1)
            for record in batches.get(tp, []):
                return key_of_record(record.value or b"")
        raise InfrastructureError(f"the keys topic {topic} has a record that could not be read")
    except KafkaError as exc:
        raise InfrastructureError(
            f"cannot read the signing key from {topic} ({exc}): a worker (and a replay) needs "
            "read access to it",
            retriable=True,
        ) from exc
    finally:
        await consumer.stop()


async def ensure_key(kafka: KafkaConnection | str, topic: str, events: str) -> SigningKey:
    """The workers' signing key, made (and written to ``topic``) if there is none yet.

    A new key is signed from the end offsets of ``events`` now; it is written with
    ``acks=all`` and read back: the topic's first record is the key, whoever wrote it.

    Raises:
        InfrastructureError: Kafka refused the read or the write.
    """
    found = await read_key(kafka, topic)
    if found is not None:
        return found
    producer = connection(kafka).producer(acks="all", enable_idempotence=True)
    try:
        await producer.start()
        partitions = sorted(await producer.partitions_for(events))
        made = SigningKey(
            secrets.token_bytes(SECRET_BYTES),
            await _end_offsets(kafka, events, partitions),
            int(time.time() * 1000),
        )
        key, value = key_record(made)
        await producer.send_and_wait(topic, value, key=key, partition=0)
    except KafkaError as exc:
        raise InfrastructureError(
            f"cannot write the signing key to {topic}: {exc}", retriable=True
        ) from exc
    finally:
        await producer.stop()
    found = await read_key(kafka, topic)
    if found is None:
        raise InfrastructureError(f"the signing key written to {topic} could not be read back")
    if found.secret == made.secret:
        log.info("made the signing key of %s: internal events are signed from %s", events, made)
    return found


async def _end_offsets(
    kafka: KafkaConnection | str, topic: str, partitions: list[int]
) -> dict[int, int]:
    """Each partition's high watermark: every record written so far is below it."""
    consumer = connection(kafka).consumer(group_id=None, enable_auto_commit=False)
    try:
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}
    except KafkaError as exc:
        raise InfrastructureError(f"cannot read the end of {topic}: {exc}", retriable=True) from exc
    finally:
        await consumer.stop()
