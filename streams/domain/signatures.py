"""Which records of ``task.events`` the fold accepts from whom: the decision, without I/O.

Any producer that can write to ``task.events`` could otherwise write the events only the
system decides (a ``DependencyResolved`` that makes a dependent ready early, a ``TaskCompleted``
that replaces the result of an attempt a worker runs). So the orchestrator's own workers sign
what they write: an HMAC-SHA256 of the record's key and value under a secret key, in the
record header :data:`SIGNATURE_HEADER`. The key lives in the keys topic
(``orchestrator.keys``, read by workers only: ``streams.signing``) with the offsets of
``task.events`` from which signing holds (``signed_from``): records below them were written
before signing existed and are judged as they always were, so an old log folds the same.

From those offsets on, :func:`forgery` refuses (reason :data:`FORGED`):

- an internal event (written by the fold, a scheduler, an executor or a timer: its ``source``
  is one of :data:`INTERNAL_SOURCES`, or its kind is one of :data:`INTERNAL_KINDS`, which only
  the system writes) without a valid signature;
- a client's report (``TaskStarted``, ``TaskProgress``, ``TaskCompleted``, ``TaskFailed``) on
  an attempt a worker runs: one its scheduler dispatched (:func:`is_worker_attempt`). A client
  reports only on attempts it started itself, from ``ready`` (``start_task``).

The live fold agent and the offline replay both call :func:`forgery`, on the same records with
the same key, so they drop the same records. It reads no clock and no randomness; the HMAC is
the standard library's.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from streams.domain.events import (
    DependencyRegistered,
    DependencyResolved,
    DependencyWaitExpired,
    Event,
    PeriodicCancelled,
    PeriodicOccurrenceDue,
    PeriodicScheduled,
    Source,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskDeferred,
    TaskDelayElapsed,
    TaskDispatched,
    TaskFailed,
    TaskProgress,
    TaskResultExpired,
    TaskRetired,
    TaskRetryDue,
    TaskRetryRequested,
    TaskRetryScheduled,
    TaskStarted,
    TaskTimedOut,
)
from streams.domain.state import Status, TaskState

SIGNATURE_HEADER = "orchestrator-signature"
"""The record header that carries a worker's signature (32 bytes, HMAC-SHA256)."""

FORGED = "forged"
"""The DLQ reason of a record refused by :func:`forgery`."""

SECRET_BYTES = 32
"""The size of a signing key's secret."""

INTERNAL_SOURCES = frozenset({Source.FOLD, Source.SCHEDULER, Source.EXECUTOR, Source.TIMER})
"""Sources only the orchestrator's workers write as: an event claiming one must be signed."""

INTERNAL_KINDS: frozenset[type] = frozenset(
    {
        TaskDispatched,  # a scheduler's go-ahead
        TaskDeferred,  # a scheduler's hold
        TaskTimedOut,  # the timers'
        TaskRetryDue,
        TaskResultExpired,
        TaskRetired,
        TaskDelayElapsed,
        DependencyWaitExpired,
        PeriodicOccurrenceDue,
        TaskRetryScheduled,  # the fold's follow-ups
        DependencyRegistered,
        DependencyResolved,
    }
)
"""Kinds only the system writes, whatever ``source`` they claim."""

ATTEMPT_REPORTS: frozenset[type] = frozenset({TaskStarted, TaskProgress, TaskCompleted, TaskFailed})
"""A client's reports on an attempt: refused on an attempt a worker runs (an executor writes
them too, signed, as ``source`` executor)."""

CLIENT_KINDS: frozenset[type] = ATTEMPT_REPORTS | frozenset(
    {TaskCreated, TaskCancelled, TaskRetryRequested, PeriodicScheduled, PeriodicCancelled}
)
"""Kinds a client writes (``source`` client, unsigned); every kind is this or internal. The
fold writes some of them too (an occurrence's ``TaskCreated``), as ``source`` fold, signed."""


@dataclass(frozen=True)
class SigningKey:
    """The workers' signing key and where in ``task.events`` it holds.

    Attributes:
        secret: the HMAC key (:data:`SECRET_BYTES` random bytes); never shown in a repr.
        signed_from: per partition of ``task.events``, the first offset whose internal events
            must be signed (the partition's end when the key was made); a partition absent
            from it (added later) is signed from its first record.
        created_at_ms: when the key was made (Unix ms), for operators.
    """

    secret: bytes = field(repr=False)
    signed_from: Mapping[int, int] = field(hash=False)
    created_at_ms: int = 0

    def holds_at(self, partition: int, offset: int) -> bool:
        """Whether the record at ``partition``:``offset`` is judged by :func:`forgery`."""
        return offset >= self.signed_from.get(partition, 0)

    def sign(self, key: bytes | None, value: bytes) -> bytes:
        """The signature of a record with ``key`` and ``value``."""
        return signature(self.secret, key, value)


def signature(secret: bytes, key: bytes | None, value: bytes) -> bytes:
    """HMAC-SHA256 under ``secret`` of a record's key and value.

    The key is length-prefixed (and a missing key told from an empty one), so no split of the
    same bytes into another key and value has the same signature: a signed event moved to
    another task (another key) no longer verifies.
    """
    prefix = b"\x00" if key is None else b"\x01" + len(key).to_bytes(4, "big") + key
    return hmac.new(secret, prefix + value, hashlib.sha256).digest()


def signature_of(headers: Iterable[tuple[str, bytes]] | None) -> bytes | None:
    """The worker signature among a record's headers (None: it has none)."""
    for name, value in headers or ():
        if name == SIGNATURE_HEADER:
            return bytes(value)
    return None


def signed_headers(
    signing: SigningKey | None, key: bytes | None, value: bytes
) -> list[tuple[str, bytes]]:
    """The headers a worker gives a record it writes to ``task.events``: its signature (none
    without a key)."""
    return [] if signing is None else [(SIGNATURE_HEADER, signing.sign(key, value))]


def is_signed(signing: SigningKey, key: bytes | None, value: bytes, found: bytes | None) -> bool:
    """Whether ``found`` (the record's signature header, None if absent) is the record's."""
    return found is not None and hmac.compare_digest(found, signing.sign(key, value))


def is_internal(event: Event) -> bool:
    """Whether only the orchestrator's workers may write ``event`` (its source or its kind)."""
    return event.source in INTERNAL_SOURCES or type(event.payload) in INTERNAL_KINDS


def is_worker_attempt(state: TaskState) -> bool:
    """Whether the task's current attempt is run by a worker: its scheduler dispatched it
    (``dispatched``, or ``running`` entered from ``dispatched``), so an executor reports on it.

    An attempt a client started itself goes from ``ready`` to ``running``.
    """
    if state.status is Status.DISPATCHED:
        return True
    history = state.history
    return (
        state.status is Status.RUNNING
        and len(history) >= 2
        and history[-1].status is Status.RUNNING
        and history[-2].status is Status.DISPATCHED
    )


def forgery(
    event: Event,
    key: bytes | None,
    value: bytes,
    found: bytes | None,
    partition: int,
    offset: int,
    signing: SigningKey | None,
    state_of: Callable[[str], TaskState | None],
) -> str | None:
    """Why the record holding ``event`` is refused as forged, or None if it is not.

    Args:
        event: the record's event, decoded (and its key checked) already.
        key, value: the record's bytes, as written.
        found: the record's :data:`SIGNATURE_HEADER`, None if it has none.
        partition, offset: where the record is in ``task.events``.
        signing: the workers' key; None if no key was ever made (no worker of a version that
            signs has run: nothing is signed, everything is judged as before).
        state_of: the task's state before the record (read only for a client's attempt report).

    Returns:
        None to fold the record; else the detail of its dead letter (reason :data:`FORGED`).
    """
    if signing is None or not signing.holds_at(partition, offset):
        return None
    if is_internal(event):
        if is_signed(signing, key, value, found):
            return None
        how = "an invalid signature" if found is not None else "no signature"
        return (
            f"{event.kind} from {event.source} with {how}: only the orchestrator's workers write it"
        )
    if type(event.payload) in ATTEMPT_REPORTS:
        state = state_of(event.task_id)
        if state is not None and is_worker_attempt(state):
            return (
                f"{event.kind} from {event.source} on attempt {state.attempt}, which a worker "
                "runs (dispatched by its scheduler): a client reports only on attempts it "
                "started itself"
            )
    return None
