"""Exactly-once output, Kafka Streams style: every output of an event commits with its input.

faust's own ``exactly_once`` picks a send's transaction by the *destination* partition, so a
send to a partition this worker does not own fails, and sends to topics the app does not consume
go out with no transaction at all (see NOTES-faust-kafka.md). Here instead:

- :func:`transactional_id_for` names the transaction of the partition an event was *read* from;
  the fold agent sends every effect of the event (``task.ready``, ``task.completed``, dependency
  signals, DLQ records) into it, wherever the record is going.
- :class:`SourcePartitionTransactions` commits a partition's transaction only between two
  events (never half-way through one), after every table changelog write of the events so far
  has been delivered into it. A crash therefore loses or keeps an event's table write and all
  its outputs together; a replayed event is recognised by its id in the table and emits nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import faust
from aiokafka.errors import IllegalOperation
from faust.tables.table import Table
from faust.transport.consumer import TransactionManager
from faust.types import TP, AppT, EventT
from faust.types.tuples import FutureMessage

log = logging.getLogger(__name__)


class ProcessingGate:
    """Held while one event is processed; a commit waits for it, so commits fall between events.

    Also collects the changelog writes made since the last commit, which the commit must see
    delivered into the open transactions before it ends them.
    """

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.pending_writes: list[FutureMessage] = []

    async def drain(self) -> None:
        """Wait until every changelog write made so far was delivered."""
        while self.pending_writes:
            writes, self.pending_writes = self.pending_writes, []
            await asyncio.gather(*writes)


def gate_of(app: AppT) -> ProcessingGate:
    """The app's gate (one per app, created on first use)."""
    gate: ProcessingGate | None = getattr(app, "_orchestrator_gate", None)
    if gate is None:
        gate = ProcessingGate()
        app._orchestrator_gate = gate  # type: ignore[attr-defined]
    return gate


class TrackedTable(Table[Any, Any]):
    """A faust table whose changelog writes are tracked until the next commit."""

    def send_changelog(self, *args: Any, **kwargs: Any) -> FutureMessage:
        future = super().send_changelog(*args, **kwargs)
        gate_of(self.app).pending_writes.append(future)
        return future


class SourcePartitionTransactions(TransactionManager):
    """faust's transaction manager, committing only between events and after table writes."""

    async def commit(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        gate = gate_of(self.app)
        async with gate.lock:
            await gate.drain()
            try:
                return await super().commit(offsets, start_new_transaction=start_new_transaction)
            except IllegalOperation as exc:
                # faust's periodic commit can run after the stop-time commit ended the
                # transactions; nothing was sent since, so nothing is lost by skipping it
                log.info("commit skipped: %s", exc)
                return False


def transactional_id_for(app: AppT, event: EventT[Any] | None) -> str | None:
    """The transaction of the partition ``event`` was read from (None outside transactions)."""
    if event is None or not app.in_transaction:
        return None
    topic, partition = event.message.topic, event.message.partition
    group = app.assignor.group_for_topic(topic)
    return f"{app.conf.id}-{group}-{partition}"


def install(app: faust.App) -> None:
    """Make ``app`` use :class:`SourcePartitionTransactions`; call before the worker starts."""
    app.transport.TransactionManager = SourcePartitionTransactions  # type: ignore[misc]
