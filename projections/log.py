"""The log folded record by record: the one place where projections call the pure fold.

Each record of ``task.events`` becomes a :class:`Step`: the event it holds (if it decodes), the
task's state before and after it, and its :class:`Verdict` (applied, a duplicate, or rejected
with the reason the live fold agent gives the record when it sends it to the DLQ). The views
(:mod:`projections.status`, :mod:`projections.audit`, :mod:`projections.platforms`) observe
steps; none of them folds on its own, so a replay and the live worker run the same function,
:func:`streams.domain.apply`, on the same records.

The checks done here before :func:`~streams.domain.apply` are the fold agent's own: a record
that does not decode (``undecodable``, ``unknown_schema``), whose key is not its task id
(``key_mismatch``), or that is forged (``forged``: an internal event not signed by a worker, a
client's report on an attempt a worker runs; ``streams.domain.signatures``) is refused without
touching any state. Records are decoded with the
agent's own :func:`schemas.records.event_of_record`. No Kafka here: records come in as
:class:`LogRecord` values from :mod:`projections.replay` (or from a test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from schemas.records import Refusal, event_of_record
from streams.domain import (
    Applied,
    Event,
    Rejected,
    Status,
    TaskState,
    apply_here,
)
from streams.domain.placement import misplaced, on_partition
from streams.domain.signatures import FORGED, SigningKey, forgery


@dataclass(frozen=True, order=True)
class Position:
    """Where a record is in the log: partition and offset."""

    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}"


@dataclass(frozen=True)
class LogRecord:
    """One record of ``task.events`` as read from Kafka.

    Attributes:
        timestamp_ms: the record's Kafka timestamp (what ``--until`` is compared with).
        key: the record key (the task id as UTF-8 bytes), None if the record has none.
        value: the single-object encoded event, as written.
    """

    position: Position
    timestamp_ms: int
    key: bytes | None
    value: bytes
    signature: bytes | None = None
    """Its worker signature header (``streams.domain.signatures``), None if it has none."""


class Verdict(StrEnum):
    """What became of a record when it was folded."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    """An event whose id the task had already seen: it changes nothing (not an error)."""
    REJECTED = "rejected"
    """Refused, state unchanged: the live worker sent the record to the DLQ."""


@dataclass(frozen=True)
class Step:
    """One record folded.

    Attributes:
        task_id: the task the record is filed under: its key (the event's task id when the
            record has no key).
        event: the decoded event, None if the record did not decode.
        before, after: the task's state before and after the record (equal unless applied).
        reason: for a rejected record, the DLQ reason (``illegal_transition``, ``undecodable``,
            ...); empty otherwise.
        detail: the human-readable explanation of the rejection.
    """

    record: LogRecord
    task_id: str
    event: Event | None
    before: TaskState | None
    after: TaskState | None
    verdict: Verdict
    reason: str = ""
    detail: str = ""
    derived_here: bool = False
    """A follow-up ``record`` caused, applied with it because its task is on the same
    partition (:func:`streams.domain.apply_here`); its own record, later, is a duplicate."""

    @property
    def entered(self) -> tuple[Status, ...]:
        """The statuses the task entered because of this record, in order (often none)."""
        if self.verdict is not Verdict.APPLIED or self.after is None or self.event is None:
            return ()
        event_id = self.event.event_id
        return tuple(t.status for t in self.after.history if t.event_id == event_id)


class Projection(Protocol):
    """A read model fed with every step of a replay, in log order per partition."""

    name: str
    """The name the CLI's ``--projection`` and the JSON output use."""

    def observe(self, step: Step) -> None:
        """Take one folded record into account."""

    def to_json(self) -> dict[str, Any]:
        """The view as a JSON-ready document."""


@dataclass
class LogFold:
    """Folds records into task states with :func:`streams.domain.apply`, one :class:`Step` each.

    Attributes:
        states: the state of every task seen so far, by task id (the ``tasks`` table).
        counts: how many records got each verdict.
    """

    states: dict[str, TaskState] = field(default_factory=dict)
    counts: dict[Verdict, int] = field(default_factory=lambda: dict.fromkeys(Verdict, 0))
    partitions: int | None = None
    """The partitions of the log: records are checked for their placement and follow-ups for
    tasks of the same partition applied at once, as the live fold does. None (a log without
    partitions, in a test): neither."""
    signing: SigningKey | None = None
    """The workers' signing key (the keys topic's): records are checked for forgery as the
    live fold checks them (:func:`streams.domain.signatures.forgery`). None: no key was ever
    made, nothing is signed, nothing is refused as forged."""
    _here_of: dict[int, Callable[[str], bool]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def step(self, record: LogRecord) -> Step:
        """Fold ``record`` (see :meth:`fold`) and return its own step."""
        return self.fold(record)[0]

    def fold(self, record: LogRecord) -> list[Step]:
        """Fold ``record``: decode it, check its key and partition, apply it to its task's
        state, then the follow-ups it causes for tasks of its partition (``derived_here``).

        The first step is the record's own.
        """
        return self.fold_decoded(record, event_of_record(record.key, record.value))

    def fold_decoded(self, record: LogRecord, event: Event | Refusal) -> list[Step]:
        """:meth:`fold` for a record already decoded: ``event`` is what
        :func:`schemas.records.event_of_record` gives for it."""
        if isinstance(event, Refusal):
            key = record.key
            key_text = key.decode("utf-8", "replace") if key is not None else None
            task_id = key_text or (event.event.task_id if event.event is not None else "")
            return [self._refused(record, task_id, event.event, event.reason, event.detail)]
        partitions = self.partitions
        partition = record.position.partition
        if partitions is not None:
            wrong = misplaced(record.key, partition, partitions)
            if wrong is not None:
                return [self._refused(record, event.task_id, event, "wrong_partition", wrong)]
        if self.signing is not None:
            forged = forgery(
                event,
                record.key,
                record.value,
                record.signature,
                partition,
                record.position.offset,
                self.signing,
                self.states.get,
            )
            if forged is not None:
                return [self._refused(record, event.task_id, event, FORGED, forged)]
        here = self._here_of.get(partition)
        if here is None:
            here = self._here_of[partition] = self._here(partition)
        try:
            applied = apply_here(event, self.states.get, here)
        except Exception as exc:  # the agent parks such an event too: a bug, not a verdict
            detail = f"{type(exc).__name__}: {exc}"
            return [self._refused(record, event.task_id, event, "processing_error", detail)]
        steps = [self._applied(record, applied[0], False)]
        if len(applied) > 1:
            for derived in applied[1:]:
                if not derived.outcome.is_rejected:  # refused when its own record comes back
                    steps.append(self._applied(record, derived, True))
        return steps

    def _here(self, partition: int) -> Callable[[str], bool]:
        if self.partitions is None:
            return lambda task_id: False
        return on_partition(partition, self.partitions)

    def _applied(self, record: LogRecord, applied: Applied, derived_here: bool) -> Step:
        event, before, outcome = applied.event, applied.before, applied.outcome
        state = outcome.state
        for effect in outcome.effects:
            if isinstance(effect, Rejected):
                return self._refused(
                    record, event.task_id, event, str(effect.code), effect.reason, derived_here
                )
        counts = self.counts
        if state is before:
            counts[Verdict.DUPLICATE] += 1
            verdict = Verdict.DUPLICATE
        else:
            if state is not None:
                self.states[event.task_id] = state
            else:  # retired: gone from the table
                self.states.pop(event.task_id, None)
            counts[Verdict.APPLIED] += 1
            verdict = Verdict.APPLIED
        return Step(record, event.task_id, event, before, state, verdict, "", "", derived_here)

    def _refused(
        self,
        record: LogRecord,
        task_id: str,
        event: Event | None,
        reason: str,
        detail: str,
        derived_here: bool = False,
    ) -> Step:
        self.counts[Verdict.REJECTED] += 1
        state = self.states.get(task_id)
        return Step(
            record, task_id, event, state, state, Verdict.REJECTED, reason, detail, derived_here
        )


def feed(
    records: Iterable[LogRecord], projections: Iterable[Projection], log: LogFold | None = None
) -> LogFold:
    """Fold ``records`` in order and show every step to every projection; return the fold.

    Pass ``log`` to continue an earlier fold (a replay in several batches).
    """
    fold = log if log is not None else LogFold()
    views = tuple(projections)
    for record in records:
        for step in fold.fold(record):
            for view in views:
                view.observe(step)
    return fold
