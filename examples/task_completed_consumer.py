"""A downstream service reading ``task.completed``: plain aiokafka, fastavro and the .avsc file.

It imports nothing from the orchestrator, as a service in another repository would not: the
published schema ``schemas/task_completed.avsc`` and the wire format are the whole contract.

Wire format (Avro single-object encoding): ``0xC3 0x01``, then the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer's schema, then the Avro body. A record written with a
schema this reader does not know (a newer version) is reported and skipped here; a real
service would fetch that schema and resolve it against its own.

Delivery: the consumer reads ``read_committed`` (records of aborted transactions are never
seen) and commits its group's offsets only after a batch is processed, so a crash replays the
batch rather than losing it. Processing must therefore be idempotent per task id (an upsert by
``task_id``), which together gives each completed task exactly once in the service's store.

Run (against the local broker):

    python examples/task_completed_consumer.py --broker 127.0.0.1:9092 --group outreach-db

It prints one JSON line per completed task. ``--max-records N`` stops after N records.

Against a secured cluster (the consumer principal of ``orchestrator acl print`` may read
``task.completed`` and nothing else):

    KAFKA_SASL_PASSWORD=... python examples/task_completed_consumer.py --broker HOST:9093 \
        --security-protocol SASL_SSL --sasl-mechanism SCRAM-SHA-512 --sasl-username consumer \
        --ssl-cafile ca.pem

The password is read from ``KAFKA_SASL_PASSWORD`` or ``--sasl-password-file``, never from the
command line (where ``ps`` shows it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.helpers import create_ssl_context
from fastavro import parse_schema, schemaless_reader
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "task_completed.avsc"
MAGIC = b"\xc3\x01"


class Decoder:
    """Decodes ``task.completed`` values written with the schema in ``schema_file``."""

    def __init__(self, schema_file: Path) -> None:
        self.schema = parse_schema(json.loads(schema_file.read_text(encoding="utf-8")))
        canonical = to_parsing_canonical_form(self.schema)
        self.fingerprint = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))[::-1]

    def decode(self, value: bytes) -> dict[str, Any]:
        """The record in ``value``.

        Raises:
            ValueError: not single-object encoded, or written with another schema.
        """
        if value[:2] != MAGIC:
            raise ValueError("not an Avro single-object message")
        if value[2:10] != self.fingerprint:
            raise ValueError(f"written with an unknown schema (fingerprint {value[2:10].hex()})")
        record = schemaless_reader(io.BytesIO(value[10:]), self.schema, None)
        if not isinstance(record, dict):
            raise ValueError("not a record")
        return record


def handle(record: dict[str, Any]) -> None:
    """The service's work for one finished task; here, print it as a JSON line."""
    result: Any = record["result"]
    if record["content_type"] == "application/json":
        result = json.loads(result)
    else:
        result = f"<{len(result)} bytes of {record['content_type']}>"
    line = {
        "task_id": record["task_id"],
        "task_type": record["task_type"],
        "platform": record["platform"],
        "target": record["target"],
        "attempts": record["attempts"],
        "completed_at": record["completed_at"].isoformat(),
        "result": result,
    }
    print(json.dumps(line), flush=True)


def security_options(args: argparse.Namespace) -> dict[str, Any]:
    """aiokafka's security keyword arguments from the command line (none for PLAINTEXT)."""
    options: dict[str, Any] = {"security_protocol": args.security_protocol}
    if args.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(cafile=args.ssl_cafile)
    if args.security_protocol.startswith("SASL_"):
        if args.sasl_password_file:
            password = Path(args.sasl_password_file).read_text(encoding="utf-8").rstrip("\r\n")
        else:
            password = os.environ.get("KAFKA_SASL_PASSWORD", "")
        options.update(
            sasl_mechanism=args.sasl_mechanism,
            sasl_plain_username=args.sasl_username,
            sasl_plain_password=password,
        )
    return options


async def consume(
    broker: str,
    topic: str,
    group: str,
    max_records: int | None,
    security: dict[str, Any] | None = None,
) -> int:
    """Process ``topic`` as ``group`` until interrupted or ``max_records`` records; return them."""
    decoder = Decoder(SCHEMA_FILE)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker,
        **(security or {}),
        group_id=group,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    processed = 0
    try:
        while max_records is None or processed < max_records:
            limit = None if max_records is None else max_records - processed
            batches = await consumer.getmany(timeout_ms=1000, max_records=limit)
            for records in batches.values():
                for message in records:
                    if message.value is None:  # a tombstone: the task's result expired
                        processed += 1
                        continue
                    try:
                        handle(decoder.decode(message.value or b""))
                    except ValueError as exc:
                        where = f"{message.partition}:{message.offset}"
                        print(f"skipped {where}: {exc}", file=sys.stderr)
                    processed += 1
            if batches:
                # after the batch is processed: a crash before this line replays it, never loses it
                await consumer.commit()
    finally:
        await consumer.stop()
    return processed


def main() -> None:
    parser = argparse.ArgumentParser(description="Print every task completed by the orchestrator.")
    parser.add_argument("--broker", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument("--topic", default="task.completed", help="with the topic prefix, if any")
    parser.add_argument("--group", default="task-completed-example", help="consumer group")
    parser.add_argument("--max-records", type=int, default=None, help="stop after N records")
    parser.add_argument(
        "--security-protocol",
        default="PLAINTEXT",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    parser.add_argument(
        "--sasl-mechanism",
        default="SCRAM-SHA-512",
        choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
    )
    parser.add_argument("--sasl-username", default="")
    parser.add_argument("--sasl-password-file", default="", help="else $KAFKA_SASL_PASSWORD")
    parser.add_argument("--ssl-cafile", default=None, help="PEM CA file (else the system's)")
    args = parser.parse_args()
    security = security_options(args)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop quietly
        asyncio.run(consume(args.broker, args.topic, args.group, args.max_records, security))


if __name__ == "__main__":
    main()
