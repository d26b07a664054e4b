"""The peer: the same fold written with quixstreams, the library a Python user would pick instead.

Per event, the same work as the orchestrator's fold agent: decode the Avro event with our codec,
read the task's state from quixstreams' RocksDB state store (changelog-backed), apply our pure
fold ``streams.domain.apply``, store the new state, and produce every effect, Avro-encoded, to
its topic (``task.ready``, ``task.completed``, follow-ups on ``task.events``, scheduler signals,
the DLQ), with quixstreams' exactly-once processing guarantee (Kafka transactions) and the
orchestrator's commit interval.

Run as its own process (quixstreams runs a blocking loop on confluent-kafka and installs its own
signal handlers; the orchestrator's side runs on asyncio): ``python -m bench.peer_quix
BOOTSTRAP INPUT_TOPIC OUTPUT_PREFIX STATE_DIR``. It runs until SIGTERM. Needs the ``bench`` extra.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NamedTuple

from quixstreams import Application, State
from quixstreams.models.serializers import SerializationContext, Serializer

from schemas.records import decode_event
from streams.domain import Effect, Rejected, apply, state_from_dict, state_to_dict
from streams.errors import SchemaError
from streams.outputs import effect_record
from streams.topics import TopicNames


class Output(NamedTuple):
    """One record to produce: where, with which key, and the encoded value."""

    topic: str
    key: bytes
    value: bytes


class _EncodedValue(Serializer):  # type: ignore[misc,unused-ignore]  # Any without the bench extra
    """The output topics' value serializer: the value is already Avro-encoded."""

    def __call__(self, value: Output, ctx: SerializationContext) -> bytes:
        return value.value


class PeerFold:
    """The fold as a stateful quixstreams function: event bytes in, encoded effects out."""

    def __init__(self, topics: TopicNames) -> None:
        self.topics = topics

    def __call__(
        self, value: bytes, key: bytes, timestamp: int, headers: Any, state: State[str, Any]
    ) -> list[Output]:
        try:
            event = decode_event(value)
        except SchemaError:
            return [Output(self.topics.dlq, key, value)]
        if key != event.task_id.encode("utf-8"):
            return [Output(self.topics.dlq, key, value)]
        stored = state.get("task")
        current = state_from_dict(stored) if stored is not None else None
        outcome = apply(current, event)
        if outcome.state is not None and outcome.state is not current:
            state.set("task", state_to_dict(outcome.state))
        return [self._output(effect, key, value, timestamp) for effect in outcome.effects]

    def _output(self, effect: Effect, key: bytes, value: bytes, timestamp: int) -> Output:
        if isinstance(effect, Rejected):
            return Output(self.topics.dlq, key, value)
        topic, out_key, out_value = effect_record(effect, self.topics, timestamp)
        if out_value is None:  # an expired result: the benchmark's workload has none
            raise TypeError("the peer writes no tombstones")
        return Output(topic, out_key, out_value)


def build(
    bootstrap: str, input_topic: str, outputs: TopicNames, state_dir: str, commit_interval_s: float
) -> Application:
    """The peer's application, ready to ``run()``."""
    app = Application(
        broker_address=bootstrap,
        consumer_group=outputs.prefix.rstrip(".") or "peer",
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        commit_interval=commit_interval_s,
        state_dir=state_dir,
        loglevel="WARNING",
    )
    source = app.topic(input_topic, key_deserializer="bytes", value_deserializer="bytes")
    targets = {
        name: app.topic(name, key_serializer="bytes", value_serializer=_EncodedValue())
        for name in (outputs.ready, outputs.completed, outputs.events, outputs.signals, outputs.dlq)
    }
    sdf = app.dataframe(source)
    sdf = sdf.apply(PeerFold(outputs), stateful=True, expand=True, metadata=True)
    sdf.to_topic(lambda value, key, timestamp, headers: targets[value.topic], key=lambda v: v.key)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer_quix", description=__doc__)
    parser.add_argument("bootstrap")
    parser.add_argument("input_topic")
    parser.add_argument("output_prefix")
    parser.add_argument("state_dir")
    parser.add_argument("--commit-interval", type=float, default=0.2)
    args = parser.parse_args(argv)
    app = build(
        args.bootstrap,
        args.input_topic,
        TopicNames(args.output_prefix),
        args.state_dir,
        args.commit_interval,
    )
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
