"""Reading and writing the golden files, and the one replay both the generator and the tests run.

The log (``log.bin.gz``) is what ``task.events`` holds, record by record in log order: the
key and the value, each as it would be on the topic (the value an Avro single-object encoded
event as ``schemas.records.encode_event`` writes it, or bytes that are no event at all: a topic
holds those too). The framing: the line ``golden-log/1``, then per record the key's length as a
4-byte signed big-endian integer (-1: no key), the key, the value's length (4 bytes, unsigned)
and the value. Gzip'd with no timestamp, so the same records always give the same file.

:func:`replay` folds the records as the offline replay does (``projections.log.LogFold``):
``schemas.records.event_of_record`` first (a record that does not decode, or whose key is not
its task id, is refused and touches no state), then ``streams.domain.apply``. For each record
it gives a canonical JSON form of the answer (the verdict, the resulting state as
``state_to_dict`` gives it, and the effects as plain dicts) and its SHA-256:
``expected.json.gz`` holds those digests as recorded from the fold when the log was generated,
and the final states in full. :func:`replay_placed` folds the records placed on partitions, as
the live fold and the replay of a topic do (``LogFold`` with ``apply_here``); the expected file
holds a digest of each task's final state from it.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import gzip
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from projections.log import LogFold, LogRecord, Position, Verdict
from schemas.records import Refusal, event_codec, event_of_record
from streams.domain import (
    PAYLOAD_TYPES,
    DependencyOutcome,
    DependencyResolved,
    Effect,
    Event,
    Outcome,
    Rejected,
    RejectionCode,
    Source,
    Status,
    TaskCreated,
    TaskDeferred,
    TaskDispatched,
    TaskFailed,
    TaskState,
    apply,
    state_to_dict,
)
from streams.domain.placement import partition_of

HERE = Path(__file__).resolve().parent
LOG_PATH = HERE / "log.bin.gz"
EXPECTED_PATH = HERE / "expected.json.gz"
FORMAT = "golden-log/1"
LOG_MAGIC = b"golden-log/1\n"

Record = tuple[bytes | None, bytes]
"""A record of ``task.events``: its key (None: no key) and its value."""
EFFECT_TYPES: tuple[type, ...] = get_args(Effect)


# -- files ------------------------------------------------------------------------------------


def write_gzip(path: Path, data: bytes) -> None:
    """``data`` gzip'd into ``path``, byte for byte the same for the same data (no mtime)."""
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as out,
    ):
        out.write(data)


def read_gzip(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def log_bytes(records: Iterable[Record]) -> bytes:
    """The log file's content (before gzip): the framed records."""
    parts = [LOG_MAGIC]
    for key, value in records:
        if key is None:
            parts.append((-1).to_bytes(4, "big", signed=True))
        else:
            parts += [len(key).to_bytes(4, "big", signed=True), key]
        parts += [len(value).to_bytes(4, "big"), value]
    return b"".join(parts)


def read_log(path: Path = LOG_PATH) -> list[Record]:
    """The records of the golden log, in order."""
    data = read_gzip(path)
    if not data.startswith(LOG_MAGIC):
        raise ValueError(f"{path} does not start with {LOG_MAGIC!r}")
    records: list[Record] = []
    at = len(LOG_MAGIC)
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "big", signed=True)
        at += 4
        key = None if size < 0 else data[at : at + size]
        at += max(size, 0)
        size = int.from_bytes(data[at : at + 4], "big")
        at += 4
        records.append((key, data[at : at + size]))
        at += size
    if at != len(data):
        raise ValueError(f"{path} ends inside a record")
    return records


def read_expected(path: Path = EXPECTED_PATH) -> dict[str, Any]:
    """The recorded answer of the fold (see ``tests.golden.generate.expected_document``)."""
    document: dict[str, Any] = json.loads(read_gzip(path))
    if document.get("format") != FORMAT:
        raise ValueError(f"{path}: format {document.get('format')!r}, expected {FORMAT!r}")
    return document


def log_digest(records: Iterable[Record]) -> str:
    """SHA-256 of the records (each key and value length-prefixed): which log it is."""
    digest = hashlib.sha256()
    for key, value in records:
        if key is None:
            digest.update(b"\xff" * 8)
        else:
            digest.update(len(key).to_bytes(8, "big") + key)
        digest.update(len(value).to_bytes(8, "big") + value)
    return digest.hexdigest()


# -- the replay -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One record replayed.

    Attributes:
        record: the record (key, value).
        event: the decoded event (None if the record did not decode).
        refusal: why ``event_of_record`` refused the record (None if it reached the fold).
        before: the task's state before the record.
        outcome: what ``apply`` returned (None if it did not reach the fold).
        canonical: the canonical JSON of the answer; ``digest`` is its SHA-256.
    """

    index: int
    record: Record
    event: Event | None
    refusal: Refusal | None
    before: TaskState | None
    outcome: Outcome | None
    verdict: Verdict
    code: str
    """The ``Rejected`` code or the refusal reason (empty unless rejected)."""
    canonical: str
    digest: str

    def describe(self) -> str:
        """The record, readably: index, kind, task id, event id, source, verdict, payload."""
        if self.event is None:
            assert self.refusal is not None
            return f"record #{self.index} (undecoded: {self.refusal.reason}: {self.refusal.detail})"
        ev = self.event
        verdict = f"{self.verdict} {self.code}".strip()
        payload = repr(ev.payload)
        payload = payload if len(payload) <= 300 else payload[:300] + "..."
        return (
            f"record #{self.index}: {ev.kind} of task {ev.task_id!r} "
            f"(event {ev.event_id!r}, source {ev.source}, at {ev.occurred_at_ms}; "
            f"now {verdict}): {payload}"
        )


@dataclass
class Replayed:
    """The replay of a whole log: every step, and the states at its end."""

    steps: list[Step] = field(default_factory=list)
    states: dict[str, TaskState] = field(default_factory=dict)

    @property
    def digests(self) -> list[str]:
        return [step.digest for step in self.steps]

    def events(self) -> list[Event]:
        """The events that reached the fold, in order (what ``streams.domain.fold`` folds)."""
        return [s.event for s in self.steps if s.event is not None and s.refusal is None]

    def final_states(self) -> dict[str, dict[str, Any]]:
        return {task_id: state_to_dict(self.states[task_id]) for task_id in sorted(self.states)}


def replay(records: Sequence[Record]) -> Replayed:
    """Fold ``records`` in order, one record at a time with ``apply`` (as a replay of a log
    without partitions does: no ``apply_here``)."""
    result = Replayed()
    states = result.states
    for index, record in enumerate(records):
        got = event_of_record(*record)
        if isinstance(got, Refusal):
            answer: dict[str, Any] = {
                "verdict": str(Verdict.REJECTED),
                "refused": got.reason,
                "detail": _stable_detail(got.detail),
            }
            before = states.get(got.event.task_id) if got.event is not None else None
            refused = (got.event, got, before, None)
            result.steps.append(_step(index, record, refused, Verdict.REJECTED, got.reason, answer))
            continue
        before = states.get(got.task_id)
        outcome = apply(before, got)
        rejection = next((e for e in outcome.effects if isinstance(e, Rejected)), None)
        if rejection is not None:
            verdict, code = Verdict.REJECTED, str(rejection.code)
        elif outcome.state is before:
            verdict, code = Verdict.DUPLICATE, ""
        else:
            verdict, code = Verdict.APPLIED, ""
        if outcome.state is not None:
            states[got.task_id] = outcome.state
        answer = {
            "verdict": str(verdict),
            "state": None if outcome.state is None else state_to_dict(outcome.state),
            "effects": [plain(effect) for effect in outcome.effects],
        }
        applied = (got, None, before, outcome)
        result.steps.append(_step(index, record, applied, verdict, code, answer))
    return result


PARTITIONS = 4
"""The partitions of the topic the golden log is placed on (as the integration tests' topics)."""


def replay_placed(records: Sequence[Record], partitions: int = PARTITIONS) -> LogFold:
    """Fold ``records`` as the replay folds a topic of ``partitions`` partitions, each record on
    its key's partition (``streams.domain.placement``; no key: partition 0): the records of a
    partition in log order, the follow-ups for tasks of the same partition applied in the step
    that causes them (``streams.domain.apply_here``), as the live fold does."""
    log = LogFold(partitions=partitions)
    offsets = [0] * partitions
    for key, value in records:
        partition = 0 if key is None else partition_of(key, partitions)
        log.fold(LogRecord(Position(partition, offsets[partition]), 0, key, value))
        offsets[partition] += 1
    return log


def state_digests(states: dict[str, TaskState]) -> dict[str, str]:
    """Per task, the SHA-256 of its state's canonical JSON."""
    return {
        task_id: hashlib.sha256(canonical_json(state_to_dict(states[task_id])).encode()).hexdigest()
        for task_id in sorted(states)
    }


def _step(
    index: int,
    record: Record,
    what: tuple[Event | None, Refusal | None, TaskState | None, Outcome | None],
    verdict: Verdict,
    code: str,
    answer: dict[str, Any],
) -> Step:
    canonical = canonical_json(answer)
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return Step(index, record, *what, verdict, code, canonical, digest)


def canonical_json(value: Any) -> str:
    """One text for one value: keys sorted, no spaces, ASCII only, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def plain(value: Any) -> Any:
    """A stable JSON-ready form of an effect (or any value inside one).

    A dataclass becomes ``{"type": its class name, field: value, ...}``; bytes become base64,
    enums their value, tuples lists.
    """
    if isinstance(value, TaskState):
        return state_to_dict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"type": type(value).__name__, **fields}
    if isinstance(value, bytes):
        return _b64(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def _stable_detail(detail: str) -> str:
    """The refusal's detail, without what a library's exception message says (it may change
    with the library's version; the reason and the project's own words stay)."""
    prefix = "undecodable Avro body"
    return prefix if detail.startswith(prefix) else detail


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- coverage ---------------------------------------------------------------------------------

MIN_RECORDS = 10_000

ENDINGS = {
    "dependency cycle": re.compile(r"dependency cycle through "),
    "self-dependency": re.compile(r"task depends on itself$"),
    "dependency missing": re.compile(r"dependency \S+ missing$"),
    "dependency failed": re.compile(r"dependency \S+ failed$"),
    "dependency cancelled": re.compile(r"dependency \S+ cancelled$"),
    "registration refused": re.compile(r"dependency \S+ refused the registration"),
    "rate limited in a row": re.compile(r"rate limited \d+ times in a row"),
    "timed out": re.compile(r"timeout after \d+ ms$"),
}
"""How a task can end, by its ``last_error``."""

VARIANTS = (
    "TaskCreated with dependencies",
    "TaskCreated without dependencies",
    "TaskCreated of an awaited id",
    "TaskCreated of a missing id",
    "TaskCreated of a grouped id",
    "TaskFailed retryable",
    "TaskFailed not retryable",
    "TaskFailed throttled",
    "TaskFailed interrupted",
    "TaskFailed while dispatched",
    "TaskDispatched that lost a race",
    "TaskDeferred of a ready task",
    "TaskDeferred of a task that moved on",
    "duplicate applied again after its id was forgotten",
    "written with an older schema",
)


def coverage(replayed: Replayed) -> dict[str, dict[str, int]]:
    """What the log holds, counted: kinds by verdict, sources, refusal reasons, variants of
    the payloads, effects, and the tasks' statuses and endings at the end."""
    kinds = {cls.__name__: dict.fromkeys(map(str, Verdict), 0) for cls in PAYLOAD_TYPES}
    counts: dict[str, Counter[str]] = {
        name: Counter() for name in ("sources", "rejections", "variants", "effects", "writers")
    }
    current = event_codec().fingerprint
    applied: set[tuple[str, str]] = set()
    forgotten = 0
    for step in replayed.steps:
        if step.code:
            counts["rejections"][step.code] += 1
        event = step.event
        if event is None:
            continue
        kinds[event.kind][str(step.verdict)] += 1
        counts["sources"][str(event.source)] += 1
        if step.outcome is None:
            continue
        writer = "current" if step.record[1][2:10] == current else "older"
        counts["writers"][writer] += 1
        for effect in step.outcome.effects:
            counts["effects"][type(effect).__name__] += 1
        ids = (event.task_id, event.event_id)
        if ids in applied and step.verdict is not Verdict.DUPLICATE:
            forgotten += 1  # applied before, and no longer known to the task as such
        if step.verdict is Verdict.APPLIED:
            applied.add(ids)
            for variant in _variants(step):
                counts["variants"][variant] += 1
    counts["variants"]["duplicate applied again after its id was forgotten"] = forgotten
    counts["variants"]["written with an older schema"] = counts["writers"]["older"]
    statuses = Counter(str(s.status) for s in replayed.states.values())
    endings: Counter[str] = Counter()
    for state in replayed.states.values():
        if state.status.is_terminal:
            endings.update(n for n, how in ENDINGS.items() if how.match(state.last_error))
    verdicts = Counter(str(step.verdict) for step in replayed.steps)
    return {
        "records": {"all": len(replayed.steps)},
        "verdicts": {str(v): verdicts[str(v)] for v in Verdict},
        "kinds": {k: sum(v.values()) for k, v in kinds.items()},
        **{f"kinds {v}": {k: n[v] for k, n in kinds.items()} for v in map(str, Verdict)},
        **{name: dict(sorted(counter.items())) for name, counter in counts.items()},
        "final statuses": dict(sorted(statuses.items())),
        "endings": dict(sorted(endings.items())),
    }


def _variants(step: Step) -> list[str]:
    assert step.event is not None and step.outcome is not None
    p, before = step.event.payload, step.before
    found = []
    if isinstance(p, TaskCreated):
        found.append(f"TaskCreated {'with' if p.dependencies else 'without'} dependencies")
        if "/" in step.event.task_id:
            found.append("TaskCreated of a grouped id")
        if before is not None:  # a placeholder
            article = "an" if before.status is Status.AWAITED else "a"
            found.append(f"TaskCreated of {article} {before.status} id")
    elif isinstance(p, TaskFailed):
        if p.interrupted:
            found.append("TaskFailed interrupted")
        elif p.throttled_ms > 0:
            found.append("TaskFailed throttled")
        else:
            found.append(f"TaskFailed {'retryable' if p.retryable else 'not retryable'}")
        if before is not None and before.status is Status.DISPATCHED:
            found.append("TaskFailed while dispatched")
    elif isinstance(p, TaskDispatched) and before is not None and before.status is not Status.READY:
        found.append("TaskDispatched that lost a race")
    elif isinstance(p, TaskDeferred) and before is not None:
        ready = before.status is Status.READY
        found.append(f"TaskDeferred of {'a ready task' if ready else 'a task that moved on'}")
    elif isinstance(p, DependencyResolved):
        found.append(f"DependencyResolved {p.outcome}")
    return found


ADDED_AFTER_RECORDING = frozenset(
    {"TaskDelayElapsed", "PeriodicScheduled", "PeriodicCancelled", "PeriodicOccurrenceDue"}
)
"""Payload types and statuses (by name) added after the log was recorded, which it therefore
cannot hold; their own unit tests cover them (``tests/unit/test_fold_schedule.py``). The log is
not regenerated for an addition that changes no recorded answer: its answers are what the fold
gave then. Regenerate it (and empty this) when a change of behaviour needs it anyway."""
ADDED_STATUSES_AFTER_RECORDING = frozenset({"periodic"})

RECORDED_PAYLOAD_TYPES = tuple(
    cls for cls in PAYLOAD_TYPES if cls.__name__ not in ADDED_AFTER_RECORDING
)


def missing_coverage(found: dict[str, dict[str, int]]) -> list[str]:
    """What the log should hold and does not (empty: it covers everything)."""
    wanted: list[tuple[str, str, str]] = []
    for cls in RECORDED_PAYLOAD_TYPES:
        wanted += [(f"kinds {v}", cls.__name__, f"{cls.__name__} {v}") for v in map(str, Verdict)]
    wanted += [("sources", str(s), f"an event from source {s}") for s in Source]
    wanted += [("rejections", str(c), f"a refusal {c}") for c in RejectionCode]
    wanted += [
        ("rejections", r, f"a record refused {r}")
        for r in ("undecodable", "unknown_schema", "key_mismatch")
    ]
    wanted += [("variants", v, v) for v in VARIANTS]
    wanted += [
        ("variants", f"DependencyResolved {o}", f"an applied DependencyResolved {o}")
        for o in DependencyOutcome
    ]
    wanted += [("effects", cls.__name__, f"a {cls.__name__} effect") for cls in EFFECT_TYPES]
    wanted += [
        ("final statuses", str(s), f"a task {s} at the end")
        for s in Status
        if str(s) not in ADDED_STATUSES_AFTER_RECORDING
    ]
    wanted += [("endings", name, f"a task ended by {name}") for name in ENDINGS]
    missing = [text for group, key, text in wanted if found.get(group, {}).get(key, 0) < 1]
    if found["records"]["all"] < MIN_RECORDS:
        missing.append(f"{MIN_RECORDS} records (it has {found['records']['all']})")
    return missing
