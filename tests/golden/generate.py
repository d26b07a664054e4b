"""Generate the golden log and record the fold's answer to it: ``python -m tests.golden.generate``.

Writes ``tests/golden/log.bin.gz`` (the records of a ``task.events`` topic, in order) and
``tests/golden/expected.json.gz`` (what the CURRENT fold answers to each record, and the final
states). Run it only when a change of the fold's behaviour is intended: the golden tests exist
to notice every other change. ``--check`` regenerates in memory and says whether the committed
files are what this script and the current fold give (exit 1 if not), writing nothing.

The log is a simulated workload, seeded and on a fixed clock (no wall clock, no hash order):
clients create tasks (with and without dependencies, chains created out of order, diamonds,
cycles, self-dependencies, dependencies on ids created later or never, tasks of groups with
ids ``group/name``), a scheduler dispatches and defers them, executors and callers start them,
report progress, complete them or fail them (retryable, not retryable, "rate limited",
interrupted), users cancel them, and timers time attempts out, make retries due and give up on
missing dependencies when their deadlines pass (``streams.domain.timers``, as the worker's
timer does). Every event is applied with ``streams.domain.apply`` as it is written, and every
``FollowUp`` the fold asks for is appended to the log a few steps later, as the live fold
agent appends it. Tasks interleave.

Mixed in, as any producer could write them: duplicates (the same record again, the same event
id with another payload, a timer writing twice, a duplicate delivered after its id left the
task's memory), illegal transitions, stale timer events, out-of-bounds values (NaN progress, a
result over the limit, too many dependencies, oversize texts, bad policies), bad ids (within
what the Avro schema carries), records that are no event (junk, a wrong fingerprint, a body cut
short or followed by bytes, a key that is not the task id, no key, an unknown source or
outcome), events written with the older writer schemas, a task with more than
``bounds.MAX_DEPENDENTS`` dependents and registrations past ``bounds.MAX_WAITING``.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
import sys
import uuid
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from schemas.codec import MAGIC, SingleObjectCodec, load_history
from schemas.records import event_codec, event_of_record, event_to_record
from streams.domain import (
    MAX_RESULT_BYTES,
    PAYLOAD_TYPES,
    DependencyOutcome,
    DependencyRegistered,
    DependencyResolved,
    DependencyWaitExpired,
    Event,
    FollowUp,
    Outcome,
    Payload,
    PeriodicCancelled,
    PeriodicOccurrenceDue,
    PeriodicScheduled,
    Source,
    Status,
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
    TaskState,
    TaskTimedOut,
    apply,
    bounds,
)
from streams.domain.timers import DeadlineIndex, due_event, next_deadline
from tests.golden import golden

SEED = 20_250_101
T0 = 1_735_689_600_000
"""2025-01-01T00:00:00Z: the clock of the simulation starts here, whenever it runs."""
TARGET_RECORDS = 14_000
"""The simulation runs until the log has this many records (then drains the follow-ups)."""
CATALOGUE_SPAN = (20, 8_000)
"""The steps over which the one-off cases are spread."""
HUB_DEPENDENTS = bounds.MAX_DEPENDENTS + 1
TIMER_RETRY_AFTER_MS = 5_000
"""As the worker's timer: it writes a due event again if the task has not moved meanwhile."""

PLATFORMS = ("linkedin", "twitter", "instagram", "youtube", "internal")
TASK_TYPES = ("profile_scrape", "post_scrape", "content_analysis", "pipeline")
TIMEOUTS_MS = (3_000, 10_000, 30_000, 120_000, 3_600_000)
DEFER_REASONS = ("rate_limit", "concurrency", "overall_concurrency", "paused")
ERRORS = (
    "HTTP 503",
    "HTTP 500 Internal Server Error",
    "connection reset by peer",
    "TimeoutError",
    "",
    "ValueError: unexpected page layout",
    "Traceback (most recent call last):\n  File \"scrape.py\", line 12, in run\nKeyError: 'n'",
)
SOURCES_OF_WORK = (Source.EXECUTOR, Source.EXECUTOR, Source.EXECUTOR, Source.CLIENT)
"""Who starts, reports, completes or fails an attempt: mostly executors, sometimes a caller."""
UNKNOWN = "never-created"


class Sim:
    """The simulated workload: the log written so far and the states the fold gave it."""

    def __init__(self, seed: int = SEED, target_records: int = TARGET_RECORDS) -> None:
        self.rng = random.Random(seed)
        self.target_records = target_records
        self.now = T0
        self.step = 0
        self.records: list[golden.Record] = []
        self.states: dict[str, TaskState] = {}
        self.driven: dict[Status, dict[str, None]] = {status: {} for status in Status}
        """Tasks the random drivers act on, by status (dicts: ordered, unlike sets)."""
        self.idle: dict[str, None] = {}
        """Tasks nobody drives (no handler for them, or a scenario drives them)."""
        self.created: list[str] = []
        self.by_kind: dict[str, list[int]] = {cls.__name__: [] for cls in PAYLOAD_TYPES}
        """Indices of the records that decoded, by kind (for duplicates)."""
        self.applied_by_kind: dict[str, list[int]] = {cls.__name__: [] for cls in PAYLOAD_TYPES}
        """Indices of the records the fold applied, by kind (their copies are duplicates)."""
        self.deadlines = DeadlineIndex()
        self.follow_ups: list[tuple[int, int, Event]] = []
        self.scheduled: list[tuple[int, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.ids = itertools.count(1)
        history = load_history("task_event")
        self.old_writers = (SingleObjectCodec(history[0]), SingleObjectCodec(history[1]))

    # -- writing ------------------------------------------------------------------------------

    def eid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self.ids):05d}"

    def event(
        self,
        task_id: str,
        payload: Payload,
        source: Source,
        *,
        at: int | None = None,
        event_id: str | None = None,
    ) -> Event:
        return Event(
            event_id if event_id is not None else self.eid(),
            task_id,
            self.now if at is None else at,
            source,
            payload,
        )

    def write(
        self,
        event: Event,
        *,
        key: bytes | str | None = "task",
        codec: SingleObjectCodec | None = None,
    ) -> Outcome | None:
        """Append ``event`` (keyed by its task id unless told) and apply it."""
        value = (codec or event_codec()).encode(event_to_record(event))
        record_key = event.task_id.encode("utf-8") if key == "task" else key
        assert not isinstance(record_key, str)
        return self.append(record_key, value)

    def append(self, key: bytes | None, value: bytes) -> Outcome | None:
        """Append a record and fold it as the replay does; route its follow-ups."""
        index = len(self.records)
        self.records.append((key, value))
        got = event_of_record(key, value)
        if not isinstance(got, Event):
            return None
        self.by_kind[got.kind].append(index)
        before = self.states.get(got.task_id)
        outcome = apply(before, got)
        if outcome.state is not None and outcome.state is not before:
            self._store(outcome.state)
            if not outcome.is_rejected:
                self.applied_by_kind[got.kind].append(index)
        elif outcome.state is None and before is not None:  # retired: gone from the table
            self._forget(before)
            self.applied_by_kind[got.kind].append(index)
        for effect in outcome.effects:
            if isinstance(effect, FollowUp):
                # appended later, as the live fold appends it after its transaction
                due = self.step + self.rng.choice((0, 0, 1, 1, 2, 3, 5, 8, 13, 30))
                heapq.heappush(self.follow_ups, (due, next(self.seq), effect.event))
        return outcome

    def _store(self, state: TaskState) -> None:
        old = self.states.get(state.task_id)
        self.states[state.task_id] = state
        if old is not None:
            self.driven[old.status].pop(state.task_id, None)
        if state.task_id not in self.idle:
            self.driven[state.status][state.task_id] = None
        self.deadlines.track(state.task_id, next_deadline(state))

    def _forget(self, state: TaskState) -> None:
        del self.states[state.task_id]
        self.driven[state.status].pop(state.task_id, None)
        self.idle.pop(state.task_id, None)
        self.deadlines.track(state.task_id, None)

    def later(self, steps: int, action: Callable[[], None]) -> None:
        heapq.heappush(self.scheduled, (self.step + steps, next(self.seq), action))

    def resend(self, index: int) -> None:
        """The record at ``index`` once more (a producer retry, a replayed batch)."""
        self.append(*self.records[index])

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> list[golden.Record]:
        for case, times in CATALOGUE:
            for _ in range(times):
                self.later(self.rng.randint(*CATALOGUE_SPAN), self._bind(case))
        self.later(600, self.hub)
        self.later(1_500, self.chatty)
        self.later(2_500, self.flaky)
        while len(self.records) < self.target_records:
            self.step += 1
            self.now += self.rng.randint(0, 150)
            self.deliver_follow_ups()
            self.fire_timers()
            self.run_scheduled()
            self.act()
        self.finale()
        # what was still planned happens; then every follow-up asked for is in the log
        while self.scheduled:
            self.step = max(self.step + 1, self.scheduled[0][0])
            self.now += 100
            self.run_scheduled()
            self.deliver_follow_ups()
        while self.follow_ups:
            self.step = max(self.step + 1, self.follow_ups[0][0])
            self.deliver_follow_ups()
        return self.records

    def _bind(self, case: Callable[[Sim], None]) -> Callable[[], None]:
        return lambda: case(self)

    def deliver_follow_ups(self) -> None:
        while self.follow_ups and self.follow_ups[0][0] <= self.step:
            _, _, event = heapq.heappop(self.follow_ups)
            self.write(event)

    def run_scheduled(self) -> None:
        while self.scheduled and self.scheduled[0][0] <= self.step:
            _, _, action = heapq.heappop(self.scheduled)
            action()

    def fire_timers(self) -> None:
        for task_id in self.deadlines.pop_due(self.now):
            state = self.states[task_id]
            event = due_event(state, self.now)
            if event is None:
                self.deadlines.track(task_id, next_deadline(state))
                continue
            if self.rng.random() < 0.15:  # the timer's worker is busy: it looks later
                self.deadlines.track(task_id, self.now + self.rng.randint(100, 4_000))
                continue
            self.deadlines.track(task_id, self.now + TIMER_RETRY_AFTER_MS)
            self.write(event)
            if self.rng.random() < 0.04:  # two timers across a rebalance: the same id twice
                self.write(event)

    def act(self) -> None:
        r = self.rng.random()
        if r < 0.15 or len(self.created) < 10:
            self.create_some()
        elif r < 0.88:
            self.drive()
        else:
            self.fault()

    # -- clients creating tasks ---------------------------------------------------------------

    def created_payload(self, dependencies: tuple[str, ...] = (), **changes: Any) -> TaskCreated:
        rng = self.rng
        payload = TaskCreated(
            task_type=rng.choice(TASK_TYPES),
            platform=rng.choice(PLATFORMS),
            target=f"https://example.com/{rng.choice(('in', 'u', 'p'))}/{rng.randint(1, 10**6)}",
            priority=rng.randint(1, 10),
            dependencies=dependencies,
            timeout_ms=rng.choice(TIMEOUTS_MS),
            max_attempts=rng.choice((1, 2, 3, 3, 5)),
            retry_delay_ms=rng.choice((0, 100, 500, 1_000, 2_000)),
            result_ttl_ms=rng.choice((0, 60_000, 86_400_000)),
            dependency_wait_ms=3_600_000,
            max_rate_limited=rng.choice((1, 2, 3, 10)),
        )
        return replace(payload, **changes)

    def create(
        self,
        task_id: str,
        dependencies: tuple[str, ...] = (),
        *,
        idle: bool | None = None,
        old_client: bool | None = None,
        **changes: Any,
    ) -> Outcome | None:
        """A client creates ``task_id`` (an old client, with an older schema, now and then)."""
        if idle is None:
            idle = self.rng.random() < 0.05  # a task type without a handler: nobody runs it
        if idle and task_id not in self.states:
            self.idle[task_id] = None
        payload = self.created_payload(dependencies, **changes)
        if old_client is None:
            old_client = "max_rate_limited" not in changes and self.rng.random() < 0.03
        codec = self.rng.choice(self.old_writers) if old_client else None
        self.created.append(task_id)
        return self.write(self.event(task_id, payload, Source.CLIENT), codec=codec)

    def some_created(self, count: int) -> tuple[str, ...]:
        recent = self.created[-300:]
        return tuple(self.rng.choice(recent) for _ in range(count)) if recent else ()

    def create_some(self) -> None:
        rng, r = self.rng, self.rng.random()
        if r < 0.40 or not self.created:
            self.create(self.new_id("t"))
        elif r < 0.45:  # a task of a group: ``group/name`` (the group places it)
            team = f"team-{rng.randint(1, 12)}"
            self.create(f"{team}/{self.new_id('t')}", self.some_created(rng.randint(0, 2)))
        elif r < 0.72:
            self.create(self.new_id("t"), self.some_created(rng.randint(1, 3)))
        elif r < 0.77:  # a chain, created out of order: registrations come before creations
            ids = [self.new_id("chain") for _ in range(rng.randint(2, 5))]
            for i in rng.sample(range(len(ids)), len(ids)):
                deps = (ids[i - 1],) if i else ()
                self.later(rng.randint(0, 40), partial(self._create, ids[i], deps))
        elif r < 0.81:  # on an id created later (an awaited placeholder first)
            future = self.new_id("later")
            self.create(self.new_id("t"), (future, *self.some_created(rng.randint(0, 1))))
            self.later(rng.randint(1, 400), lambda: self._create(future, ()))
        elif r < 0.85:  # on an id never created: declared missing when the wait is over
            ghost = self.new_id("ghost")
            wait = rng.choice((1_000, 5_000, 20_000, 3_600_000))
            self.create(self.new_id("t"), (ghost,), dependency_wait_ms=wait)
            if rng.random() < 0.3:  # someone else waits for it too, or comes too late
                other = self.new_id("t")
                self.later(rng.randint(1, 300), lambda: self._create(other, (ghost,)))
            if rng.random() < 0.15:  # it is created after all, in time or not
                self.later(rng.randint(1, 300), lambda: self._create(ghost, ()))
        elif r < 0.89:  # a cycle, possible with caller-chosen ids
            ids = [self.new_id("cycle") for _ in range(rng.randint(2, 4))]
            for i, task_id in enumerate(ids):
                deps = (ids[(i + 1) % len(ids)],)
                self.later(rng.randint(0, 20), partial(self._create, task_id, deps))
        elif r < 0.90:
            task_id = self.new_id("self")
            self.create(task_id, (task_id, *self.some_created(rng.randint(0, 1))))
        elif r < 0.94:  # a diamond (in a group, now and then), a dependency listed twice
            group = f"grp-{next(self.ids):05d}/" if rng.random() < 0.5 else ""
            top, left, right, join = (
                group + self.new_id(p) for p in ("top", "left", "right", "join")
            )
            self.create(top)
            self.create(left, (top, top))
            self.create(right, (top,))
            self.later(rng.randint(0, 10), lambda: self._create(join, (left, right)))
        elif r < 0.97:  # the same creation again: the same event id, or a new one
            index = rng.choice(self.by_kind["TaskCreated"])
            if rng.random() < 0.5:
                self.resend(index)
            else:
                got = event_of_record(*self.records[index])
                if isinstance(got, Event):
                    self.write(replace(got, event_id=self.eid(), occurred_at_ms=self.now))
        else:  # an old client: every policy field it knows, the rest by default
            self.create(self.new_id("t"), old_client=True)

    def _create(self, task_id: str, dependencies: tuple[str, ...]) -> None:
        self.create(task_id, dependencies)

    # -- schedulers, executors, callers driving tasks ---------------------------------------

    def drive(self) -> None:
        rng = self.rng
        weights = (
            (Status.READY, 3.0),
            (Status.DISPATCHED, 2.0),
            (Status.RUNNING, 5.0),
            (Status.PENDING, 0.15),
            (Status.RETRYING, 0.15),
        )
        candidates = [(s, w) for s, w in weights if self.driven[s]]
        if not candidates:
            return
        status = rng.choices([s for s, _ in candidates], [w for _, w in candidates])[0]
        task_id = rng.choice(list(self.driven[status]))
        self.act_on(task_id, status)

    def act_on(self, task_id: str, status: Status) -> None:
        r = self.rng.random()
        if status is Status.READY:
            if r < 0.55:
                self.write(self.event(task_id, TaskDispatched(), Source.SCHEDULER))
            elif r < 0.70:
                self.write(self.event(task_id, TaskStarted(), Source.CLIENT))
            elif r < 0.85:
                self.write(self.event(task_id, self.deferral(), Source.SCHEDULER))
            elif r < 0.88:
                self.cancel(task_id)
        elif status is Status.DISPATCHED:
            if r < 0.75:
                self.write(self.event(task_id, TaskStarted(), Source.EXECUTOR))
            elif r < 0.80:  # its worker stopped before the handler started
                self.write(self.event(task_id, self.failure("interrupted"), Source.EXECUTOR))
            elif r < 0.84:
                self.write(self.event(task_id, self.failure(), Source.EXECUTOR))
            elif r < 0.87:
                self.cancel(task_id)
            elif r < 0.90:  # the scheduler explains a hold of a task that moved on meanwhile
                self.write(self.event(task_id, self.deferral(), Source.SCHEDULER))
        elif status is Status.RUNNING:
            self.work(task_id, r)
        elif status in (Status.PENDING, Status.RETRYING) and r < 0.4:
            self.cancel(task_id)

    def work(self, task_id: str, r: float) -> None:
        source = self.rng.choice(SOURCES_OF_WORK)
        state = self.states[task_id]
        payload: Payload
        if r < 0.35:
            step = self.rng.choice((0.0, 0.05, 0.1, 0.25, 0.5))
            payload = TaskProgress(min(1.0, round(state.progress + step, 6)))
        elif r < 0.62:
            result, content_type = self.result(task_id)
            payload = TaskCompleted(result, content_type)
        elif r < 0.72:
            payload = self.failure()
        elif r < 0.77:
            payload = self.failure("fatal")
        elif r < 0.86:
            payload = self.failure("throttled")
        elif r < 0.90:
            payload = self.failure("interrupted")
        elif r < 0.92:
            self.cancel(task_id)
            return
        else:
            return  # still working: its timeout may come first
        self.write(self.event(task_id, payload, source))

    def cancel(self, task_id: str) -> None:
        reason = self.rng.choice(("cancelled by user", "", "duplicate request", "x" * 2_100))
        self.write(self.event(task_id, TaskCancelled(reason), Source.CLIENT))

    def failure(self, kind: str = "retryable") -> TaskFailed:
        error = self.rng.choice(ERRORS)
        if self.rng.random() < 0.01:
            error = "Traceback (most recent call last):\n" + "  in frame\n" * 300  # cut at 2,000
        if kind == "fatal":
            return TaskFailed(error, retryable=False)
        if kind == "throttled":
            return TaskFailed("HTTP 429", throttled_ms=self.rng.randint(100, 5_000))
        if kind == "interrupted":
            return TaskFailed("worker stopped (SIGTERM)", interrupted=True)
        return TaskFailed(error)

    def deferral(self) -> TaskDeferred:
        reason = self.rng.choice(DEFER_REASONS)
        until = 0 if reason.endswith("concurrency") else self.now + self.rng.randint(1, 60_000)
        return TaskDeferred(reason, f"{reason}: 5 calls per 1 s used", until)

    def result(self, task_id: str) -> tuple[bytes, str]:
        r = self.rng.random()
        if r < 0.7:
            body = {"task": task_id, "followers": self.rng.randint(0, 10**6)}
            return json.dumps(body).encode(), "application/json"
        if r < 0.8:
            return b"", "application/json"
        if r < 0.9:
            return f"<html><p>{task_id}</p></html>".encode(), "text/html; charset=utf-8"
        return self.rng.randbytes(self.rng.randint(1, 48)), "application/octet-stream"

    # -- faults: what any producer could write ------------------------------------------------

    def fault(self) -> None:
        r = self.rng.random()
        if r < 0.30:
            self.out_of_turn()
        elif r < 0.55:  # a record written again (one the fold applied, or any)
            written = self.applied_by_kind if self.rng.random() < 0.6 else self.by_kind
            kind = self.rng.choice([k for k, indices in written.items() if indices])
            self.resend(self.rng.choice(written[kind]))
        elif r < 0.65:  # an event id used again, for another payload
            self.reused_event_id()
        elif r < 0.75:
            self.for_unknown_task()
        elif r < 0.85:
            self.stale_timer()
        elif r < 0.92:  # the scheduler dispatches a task a caller started or cancelled meanwhile
            task_id = self.rng.choice(self.created)
            self.write(self.event(task_id, TaskDispatched(), Source.SCHEDULER))
        else:  # progress going down
            running = list(self.driven[Status.RUNNING])
            if running:
                task_id = self.rng.choice(running)
                value = max(0.0, self.states[task_id].progress - 0.3)
                self.write(self.event(task_id, TaskProgress(value), Source.EXECUTOR))

    def out_of_turn(self) -> None:
        """Any kind of event for any created task, whatever its status (often refused)."""
        task_id = self.rng.choice(self.created)
        state = self.states.get(task_id)
        attempt = state.attempt if state is not None else 1
        payload = self.rng.choice(
            (
                TaskStarted(),
                TaskProgress(0.5),
                TaskCompleted(b'{"late": true}'),
                self.failure(),
                TaskCancelled("too late"),
                TaskRetryScheduled(attempt, 1_000, self.now + 1_000),
                TaskRetryDue(attempt),
                TaskTimedOut(attempt),
                DependencyResolved(UNKNOWN, DependencyOutcome.COMPLETED),
                DependencyWaitExpired(),
                self.deferral(),
            )
        )
        source = {
            TaskRetryScheduled: Source.FOLD,
            DependencyResolved: Source.FOLD,
            TaskRetryDue: Source.TIMER,
            TaskTimedOut: Source.TIMER,
            DependencyWaitExpired: Source.TIMER,
            TaskDeferred: Source.SCHEDULER,
        }.get(type(payload), self.rng.choice(SOURCES_OF_WORK))
        self.write(self.event(task_id, payload, source))

    def reused_event_id(self) -> None:
        indices = self.by_kind[self.rng.choice(("TaskStarted", "TaskProgress", "TaskDispatched"))]
        if not indices:
            return
        got = event_of_record(*self.records[self.rng.choice(indices)])
        if isinstance(got, Event):
            payload = TaskCompleted(b'{"same": "id"}')
            self.write(replace(got, payload=payload, occurred_at_ms=self.now))

    def for_unknown_task(self) -> None:
        task_id = self.new_id("unknown")
        payload = self.rng.choice(
            (
                TaskDispatched(),
                TaskStarted(),
                TaskProgress(0.1),
                TaskCompleted(b"{}"),
                self.failure(),
                TaskCancelled("no such task"),
                TaskTimedOut(1),
                TaskRetryScheduled(1, 10, self.now + 10),
                TaskRetryDue(1),
                DependencyResolved("t-00001", DependencyOutcome.COMPLETED),
                DependencyWaitExpired(),
                self.deferral(),
            )
        )
        self.write(self.event(task_id, payload, Source.CLIENT))

    def stale_timer(self) -> None:
        """A timer event for the wrong attempt, or before its time."""
        for status in (Status.RUNNING, Status.RETRYING, Status.AWAITED):
            ids = [t for t, s in self.states.items() if s.status is status][:50]
            if not ids or self.rng.random() < 0.4:
                continue
            state = self.states[self.rng.choice(ids)]
            attempt = state.attempt + self.rng.choice((0, 1, -1))
            early = self.now - 1
            payload: Payload
            if status is Status.RUNNING:
                payload = TaskTimedOut(attempt)
            elif status is Status.RETRYING:
                payload = TaskRetryDue(attempt)
            else:
                payload = DependencyWaitExpired()
            self.write(self.event(state.task_id, payload, Source.TIMER, at=early))
            return

    # -- scenarios ----------------------------------------------------------------------------

    def finale(self) -> None:
        """Tasks left in every status a task can be in while the log ends."""
        ready, dispatched, running, retrying = (self.new_id("end") for _ in range(4))
        for task_id in (ready, dispatched, running, retrying):
            self.create(task_id, idle=True, max_attempts=3, timeout_ms=3_600_000)
        self.write(self.event(dispatched, TaskDispatched(), Source.SCHEDULER))
        self.write(self.event(running, TaskStarted(), Source.CLIENT))
        self.write(self.event(retrying, TaskStarted(), Source.EXECUTOR))
        self.write(self.event(retrying, TaskFailed("HTTP 503"), Source.EXECUTOR))
        self.create(self.new_id("end"), (self.new_id("end-awaited"),), idle=True)

    def hub(self) -> None:
        """One task with more dependents than a task may have: the last to register is refused
        (and cancelled); one registering after the hub ended is answered and not recorded."""
        hub = "hub"
        self.create(hub, idle=True, timeout_ms=3_600_000)
        fans = [f"fan-{i:04d}" for i in range(HUB_DEPENDENTS)]
        for i, fan in enumerate(fans):
            idle = self.rng.random() < 0.9
            self.later(1 + i // 5, partial(self._fan, fan, idle))
        done = 1 + HUB_DEPENDENTS // 5 + 40  # every registration has arrived by then
        run: tuple[tuple[Payload, Source], ...] = (
            (TaskDispatched(), Source.SCHEDULER),
            (TaskStarted(), Source.EXECUTOR),
            (TaskCompleted(b"{}"), Source.EXECUTOR),
        )
        for i, (payload, source) in enumerate(run):
            self.later(done + i, partial(self._send, hub, payload, source))
        self.later(done + 60, lambda: self._fan("fan-late", False))

    def _fan(self, task_id: str, idle: bool) -> None:
        self.create(task_id, ("hub",), idle=idle)

    def chatty(self) -> None:
        """A task with more events than its state remembers ids of: a duplicate of an early
        record, delivered after ``bounds.SEEN_EVENT_IDS_KEPT`` later ones, is applied again."""
        task_id = "chatty"
        self.create(task_id, idle=True, timeout_ms=3_600_000)
        self.write(self.event(task_id, TaskStarted(), Source.CLIENT))
        started = len(self.records) - 1
        count = bounds.SEEN_EVENT_IDS_KEPT + 30
        for i in range(count):
            value = round((i + 1) / (count + 1), 6)
            payload = TaskProgress(value)
            self.later(i + 1, partial(self._send, task_id, payload, Source.EXECUTOR))
        self.later(count + 2, lambda: self.resend(started))
        self.later(count + 3, lambda: self.resend(started + 2))

    def _send(self, task_id: str, payload: Payload, source: Source) -> None:
        self.write(self.event(task_id, payload, source))

    def flaky(self) -> None:
        """A task interrupted over and over: more transitions than its state keeps."""
        task_id = "flaky"
        self.create(task_id, idle=True, timeout_ms=3_600_000, max_attempts=2)
        self.later(1, lambda: self._flaky_turn(task_id, bounds.HISTORY_KEPT // 4 + 10))

    def _flaky_turn(self, task_id: str, cycles: int) -> None:
        state = self.states[task_id]
        if state.status is Status.READY:
            self.write(self.event(task_id, TaskDispatched(), Source.SCHEDULER))
        elif state.status is Status.DISPATCHED:
            self.write(self.event(task_id, TaskStarted(), Source.EXECUTOR))
        elif state.status is Status.RUNNING:
            self.write(self.event(task_id, self.failure("interrupted"), Source.EXECUTOR))
            cycles -= 1
        if cycles > 0:
            self.later(1, lambda: self._flaky_turn(task_id, cycles))


# -- the one-off cases ----------------------------------------------------------------------


def _bad_created(sim: Sim, task_id: str | None = None, **changes: Any) -> None:
    payload = sim.created_payload(**changes)
    sim.write(sim.event(task_id or sim.new_id("bad"), payload, Source.CLIENT))


def _running(sim: Sim) -> str | None:
    running = list(sim.driven[Status.RUNNING])
    return sim.rng.choice(running) if running else None


def _on_running(
    sim: Sim, payload: Payload, source: Source = Source.EXECUTOR, tries: int = 50
) -> None:
    """``payload`` for a running task; if none runs now, a little later."""
    task_id = _running(sim)
    if task_id is not None:
        sim.write(sim.event(task_id, payload, source))
    elif tries > 0:
        sim.later(5, lambda: _on_running(sim, payload, source, tries - 1))


def _nan_progress(sim: Sim) -> None:
    _on_running(sim, TaskProgress(float("nan")))


def _inf_progress(sim: Sim) -> None:
    _on_running(sim, TaskProgress(float("inf")))


def _negative_progress(sim: Sim) -> None:
    _on_running(sim, TaskProgress(-0.25))


def _progress_over_one(sim: Sim) -> None:
    _on_running(sim, TaskProgress(1.5))


def _result_too_large(sim: Sim) -> None:
    _on_running(sim, TaskCompleted(b"r" * (MAX_RESULT_BYTES + 1)))


def _result_at_the_limit(sim: Sim) -> None:
    _on_running(sim, TaskCompleted(b"R" * MAX_RESULT_BYTES, "application/octet-stream"))


def _content_type_too_long(sim: Sim) -> None:
    _on_running(sim, TaskCompleted(b"{}", "application/" + "x" * bounds.MAX_CONTENT_TYPE_CHARS))


def _throttled_over_a_year(sim: Sim) -> None:
    _on_running(sim, TaskFailed("HTTP 429", throttled_ms=bounds.MAX_POLICY_MS + 1))


def _negative_throttle(sim: Sim) -> None:
    _on_running(sim, TaskFailed("HTTP 429", throttled_ms=-5))


def _retry_delay_over_a_year(sim: Sim) -> None:
    retrying = [t for t, s in sim.states.items() if s.status is Status.RETRYING]
    if retrying:
        state = sim.states[sim.rng.choice(retrying)]
        delay = bounds.MAX_POLICY_MS + 1
        payload = TaskRetryScheduled(state.attempt, delay, sim.now + delay)
        sim.write(sim.event(state.task_id, payload, Source.FOLD))


def _long_detail(sim: Sim) -> None:
    ready = list(sim.driven[Status.READY])
    if ready:
        payload = TaskDeferred("rate_limit", "d" * (bounds.MAX_REASON_CHARS + 500), 0)
        sim.write(sim.event(sim.rng.choice(ready), payload, Source.SCHEDULER))


def _target_too_large(sim: Sim) -> None:
    _bad_created(sim, target="t" * (bounds.MAX_TARGET_BYTES + 1))


def _target_at_the_limit(sim: Sim) -> None:
    _bad_created(sim, target="é" * (bounds.MAX_TARGET_BYTES // 2))


def _target_with_control(sim: Sim) -> None:
    _bad_created(sim, target="line\x00break")


def _target_empty(sim: Sim) -> None:
    _bad_created(sim, target="")


def _type_too_long(sim: Sim) -> None:
    _bad_created(sim, task_type="s" * (bounds.MAX_NAME_CHARS + 1))


def _type_bad_chars(sim: Sim) -> None:
    _bad_created(sim, task_type="profile scrape")


def _platform_empty(sim: Sim) -> None:
    _bad_created(sim, platform="")


def _too_many_dependencies(sim: Sim) -> None:
    deps = tuple(f"d{i}" for i in range(bounds.MAX_DEPENDENCIES + 1))
    _bad_created(sim, dependencies=deps)


def _bad_dependency_id(sim: Sim) -> None:
    _bad_created(sim, dependencies=("t-00001", "no spaces allowed"))


def _empty_dependency_id(sim: Sim) -> None:
    _bad_created(sim, dependencies=("",))


def _bad_policies(sim: Sim) -> None:
    policies: tuple[dict[str, Any], ...] = (
        {"priority": 0},
        {"priority": 11},
        {"priority": -3},
        {"max_attempts": 0},
        {"max_attempts": bounds.MAX_ATTEMPTS + 1},
        {"timeout_ms": 0},
        {"timeout_ms": bounds.MAX_POLICY_MS + 1},
        {"retry_delay_ms": -1},
        {"result_ttl_ms": -1},
        {"dependency_wait_ms": 0},
        {"max_rate_limited": 0},
        {"max_rate_limited": 1_001},
    )
    for changes in policies:
        _bad_created(sim, **changes)


def _policies_at_the_limits(sim: Sim) -> None:
    year = bounds.MAX_POLICY_MS
    sim.create(
        sim.new_id("limits"),
        idle=True,
        priority=bounds.MAX_PRIORITY,
        max_attempts=bounds.MAX_ATTEMPTS,
        timeout_ms=year,
        retry_delay_ms=year,
        result_ttl_ms=year,
        dependency_wait_ms=year,
        max_rate_limited=1_000,
    )


BAD_IDS = (
    "",
    "has space",
    "/slash",
    "_leading",
    "x" * (bounds.MAX_ID_CHARS + 1),
    "tâche",
    "a/b/c",
    "group/",
    "group/_name",
)


def _bad_task_ids(sim: Sim) -> None:
    task_id = sim.rng.choice(BAD_IDS)
    payload = sim.rng.choice(
        (
            sim.created_payload(),
            TaskStarted(),
            TaskCancelled("x"),
            DependencyRegistered("t-00001", ("t-00001",), 1_000),
        )
    )
    sim.write(sim.event(task_id, payload, Source.CLIENT))


def _valid_unusual_ids(sim: Sim) -> None:
    for task_id in ("user:ada@example.com", "a.b_c~d=e+f-g", "9" + "z" * 199, "g:1/n.2~x"):
        sim.create(task_id)


def _bad_event_ids(sim: Sim) -> None:
    task_id = sim.rng.choice(sim.created)
    for event_id in ("", "e" * (bounds.MAX_EVENT_ID_CHARS + 1)):
        sim.write(sim.event(task_id, TaskStarted(), Source.EXECUTOR, event_id=event_id))


def _registration_faults(sim: Sim) -> None:
    task_id = sim.rng.choice(sim.created)
    for payload in (
        DependencyRegistered(task_id, (task_id,), 1_000),  # its own dependent
        DependencyRegistered("bad id", ("bad id",), 1_000),
        DependencyRegistered("t-00002", ("t-00002", "bad/id/x"), 1_000),
        DependencyRegistered("t-00002", ("t-00002",), bounds.MAX_POLICY_MS + 1),
    ):
        sim.write(sim.event(task_id, payload, Source.FOLD))


def _too_many_waiting(sim: Sim) -> None:
    """Registrations with a waiting set past ``MAX_WAITING``: refused as too large, or
    answered ``refused`` by a pending (or awaited) task."""
    waiting = tuple(f"w{i:04d}" for i in range(bounds.MAX_WAITING + 1))
    waiting_pending = [t for t, s in sim.states.items() if s.status is Status.PENDING][:20]
    target = sim.rng.choice(waiting_pending) if waiting_pending else sim.new_id("awaited")
    sim.write(sim.event(target, DependencyRegistered("phantom", waiting, 60_000), Source.FOLD))
    too_many = (*waiting, "w9999")
    sim.write(sim.event(target, DependencyRegistered("phantom", too_many, 60_000), Source.FOLD))


def _resolved_faults(sim: Sim) -> None:
    task_id = sim.rng.choice(sim.created)
    for payload in (
        DependencyResolved("not-a-dependency", DependencyOutcome.COMPLETED),
        DependencyResolved("bad id", DependencyOutcome.FAILED),
    ):
        sim.write(sim.event(task_id, payload, Source.FOLD))


def _late_answers(sim: Sim) -> None:
    """A dependency's answer again, after the dependent moved on (changes nothing)."""
    with_deps = [t for t, s in sim.states.items() if s.dependencies and s.status.is_created][-50:]
    if with_deps:
        state = sim.states[sim.rng.choice(with_deps)]
        outcome = sim.rng.choice(list(DependencyOutcome))
        payload = DependencyResolved(state.dependencies[0], outcome)
        sim.write(sim.event(state.task_id, payload, Source.FOLD))


def _retirement(sim: Sim) -> None:
    """A finished task retires once its retention has passed (the same record again changes
    nothing); one retired before that, and a running one, are refused."""
    done = [t for t, s in sim.states.items() if s.status.is_terminal][-50:]
    if done:
        state = sim.states[sim.rng.choice(done)]
        retention = sim.now - state.updated_at_ms
        sim.write(sim.event(state.task_id, TaskRetired(retention + 1), Source.TIMER))
        retire = sim.event(state.task_id, TaskRetired(retention), Source.TIMER)
        sim.write(retire)
        sim.write(retire)
    running = [t for t, s in sim.states.items() if s.status is Status.RUNNING][:50]
    if running:
        sim.write(sim.event(sim.rng.choice(running), TaskRetired(0), Source.TIMER))


def _early_result_expiry(sim: Sim) -> None:
    """A result expired before its ``result_ttl`` has passed: refused (stale)."""
    kept = [
        t
        for t, s in sim.states.items()
        if s.result is not None and (s.result_expires_at_ms() or 0) > sim.now
    ][:50]
    if kept:
        sim.write(sim.event(sim.rng.choice(kept), TaskResultExpired(), Source.TIMER))


def _retry_by_hand(sim: Sim) -> None:
    """A user runs a failed task again (the same record twice: the second is a duplicate); a
    retry of a running task is refused."""
    failed = [t for t, s in sim.states.items() if s.status is Status.FAILED and s.periodic is None][
        -50:
    ]
    if failed:
        retry = sim.event(sim.rng.choice(failed), TaskRetryRequested(), Source.CLIENT)
        sim.write(retry)
        sim.write(retry)
    running = [t for t, s in sim.states.items() if s.status is Status.RUNNING][:50]
    if running:
        sim.write(sim.event(sim.rng.choice(running), TaskRetryRequested(), Source.CLIENT))


def _delayed(sim: Sim) -> None:
    """A task not ready before a time (the timer makes it ready then); a timer event for it
    before that time is refused, and the timer's event written twice is applied once."""
    task_id = sim.new_id("delayed")
    not_before = sim.now + sim.rng.randint(200, 3_000)
    sim.create(task_id, not_before_ms=not_before)
    sim.write(sim.event(task_id, TaskDelayElapsed(not_before), Source.TIMER))  # early: stale
    sim.later(sim.rng.randint(40, 80), partial(_delay_elapses, sim, task_id))


def _delay_elapses(sim: Sim, task_id: str) -> None:
    state = sim.states.get(task_id)
    if state is None:
        return
    event = due_event(state, sim.now)
    if event is not None and isinstance(event.payload, TaskDelayElapsed):
        sim.write(event)
        sim.write(event)


def _periodic(sim: Sim) -> None:
    """A periodic definition every minute: defined twice (the same record), fired by the timer
    (its tasks created by the fold), removed later (twice); defining one under a task's id,
    removing one never made and an occurrence of it before its time are refused."""
    name = sim.new_id("feed")
    key = f"periodic:{name}"
    defined = sim.event(key, _schedule(sim, 60_000), Source.CLIENT)
    sim.write(defined)
    sim.write(defined)
    sim.write(sim.event(sim.rng.choice(sim.created), _schedule(sim, 60_000), Source.CLIENT))
    sim.write(sim.event(f"periodic:never-{name}", PeriodicCancelled("gone"), Source.CLIENT))
    early = PeriodicOccurrenceDue(sim.now + 60_000, sim.now + 120_000)
    sim.write(sim.event(key, early, Source.TIMER))
    if sim.rng.random() < 0.5:  # the others stay defined to the end
        removed = sim.event(key, PeriodicCancelled("removed by user"), Source.CLIENT)
        sim.later(sim.rng.randint(300, 900), lambda: (sim.write(removed), sim.write(removed)))


def _schedule(sim: Sim, every_ms: int) -> PeriodicScheduled:
    return PeriodicScheduled(
        task_type=sim.rng.choice(TASK_TYPES),
        platform=sim.rng.choice(PLATFORMS),
        target="feed",
        priority=5,
        timeout_ms=60_000,
        max_attempts=2,
        retry_delay_ms=500,
        result_ttl_ms=60_000,
        dependency_wait_ms=3_600_000,
        max_rate_limited=10,
        every_ms=every_ms,
        cron="",
        start_ms=sim.now,
        first_due_ms=0,
    )


def _junk(sim: Sim) -> None:
    sim.append(sim.rng.choice(sim.created).encode(), b"\x00junk")


def _empty_value(sim: Sim) -> None:
    sim.append(b"t-00001", b"")


def _valid_value(sim: Sim, task_id: str) -> bytes:
    return event_codec().encode(event_to_record(sim.event(task_id, TaskStarted(), Source.CLIENT)))


def _bad_magic(sim: Sim) -> None:
    value = _valid_value(sim, "t-00003")
    sim.append(b"t-00003", b"\xc3\x02" + value[2:])


def _unknown_fingerprint(sim: Sim) -> None:
    value = _valid_value(sim, "t-00003")
    sim.append(b"t-00003", MAGIC + b"\x00" * 8 + value[10:])


def _cut_short(sim: Sim) -> None:
    value = _valid_value(sim, "t-00004")
    sim.append(b"t-00004", value[:-5])


def _trailing_bytes(sim: Sim) -> None:
    value = _valid_value(sim, "t-00004")
    sim.append(b"t-00004", value + b"\x00\x01")


def _key_mismatch(sim: Sim) -> None:
    task_id = sim.rng.choice(sim.created)
    event = sim.event(task_id, TaskCancelled("wrong key"), Source.CLIENT)
    sim.write(event, key=b"someone-else")
    sim.write(event, key=None)


def _unknown_source(sim: Sim) -> None:
    record = event_to_record(sim.event("t-00005", TaskStarted(), Source.CLIENT))
    record["source"] = "robot"
    sim.append(b"t-00005", event_codec().encode(record))


def _unknown_outcome(sim: Sim) -> None:
    payload = DependencyResolved("t-00001", DependencyOutcome.COMPLETED)
    record = event_to_record(sim.event("t-00006", payload, Source.FOLD))
    record["payload"][1]["outcome"] = "exploded"
    sim.append(b"t-00006", event_codec().encode(record))


def _old_writer_failure(sim: Sim) -> None:
    task_id = _running(sim)
    if task_id is not None:
        event = sim.event(task_id, TaskFailed("HTTP 502"), Source.EXECUTOR)
        sim.write(event, codec=sim.rng.choice(sim.old_writers))


def _created_by_event_of_another_kind(sim: Sim) -> None:
    """A creation of a task that was declared missing, and one of a task that exists."""
    missing = [t for t, s in sim.states.items() if s.status is Status.MISSING]
    if missing:
        sim.create(sim.rng.choice(missing))
    sim.create(sim.rng.choice(sim.created))


CATALOGUE: tuple[tuple[Callable[[Sim], None], int], ...] = (
    (_nan_progress, 3),
    (_inf_progress, 1),
    (_negative_progress, 1),
    (_progress_over_one, 1),
    (_result_too_large, 1),
    (_result_at_the_limit, 1),
    (_content_type_too_long, 1),
    (_throttled_over_a_year, 1),
    (_negative_throttle, 1),
    (_retry_delay_over_a_year, 2),
    (_long_detail, 1),
    (_target_too_large, 1),
    (_target_at_the_limit, 1),
    (_target_with_control, 1),
    (_target_empty, 1),
    (_type_too_long, 1),
    (_type_bad_chars, 1),
    (_platform_empty, 1),
    (_too_many_dependencies, 1),
    (_bad_dependency_id, 1),
    (_empty_dependency_id, 1),
    (_bad_policies, 1),
    (_policies_at_the_limits, 1),
    (_bad_task_ids, 12),
    (_valid_unusual_ids, 1),
    (_bad_event_ids, 2),
    (_registration_faults, 2),
    (_too_many_waiting, 1),
    (_resolved_faults, 2),
    (_late_answers, 10),
    (_junk, 2),
    (_empty_value, 1),
    (_bad_magic, 1),
    (_unknown_fingerprint, 1),
    (_cut_short, 1),
    (_trailing_bytes, 1),
    (_key_mismatch, 2),
    (_unknown_source, 1),
    (_unknown_outcome, 1),
    (_old_writer_failure, 3),
    (_created_by_event_of_another_kind, 3),
    (_retirement, 4),
    (_early_result_expiry, 2),
    (_retry_by_hand, 4),
    (_delayed, 4),
    (_periodic, 3),
)


# -- the expected answer --------------------------------------------------------------------


def expected_document(records: list[golden.Record]) -> dict[str, Any]:
    """What the current fold answers to ``records``: per-record digests, final states, the
    final states (as digests) of the log placed on partitions, and (for people) how much of
    each kind, source and verdict the log holds."""
    replayed = golden.replay(records)
    placed = golden.replay_placed(records)
    return {
        "format": golden.FORMAT,
        "generated_by": "python -m tests.golden.generate",
        "seed": SEED,
        "start_ms": T0,
        "records": len(records),
        "log_sha256": golden.log_digest(records),
        "coverage": golden.coverage(replayed),
        "digests": replayed.digests,
        "final_states": replayed.final_states(),
        "placed": {
            "partitions": golden.PARTITIONS,
            "verdicts": {str(verdict): n for verdict, n in placed.counts.items()},
            "state_sha256": golden.state_digests(placed.states),
        },
    }


def build() -> tuple[bytes, bytes]:
    """The contents (before gzip) of the log file and of the expected file."""
    records = Sim().run()
    expected = expected_document(records)
    missing = golden.missing_coverage(expected["coverage"])
    if missing:
        raise SystemExit("the simulated log misses: " + "; ".join(missing))
    expected_text = json.dumps(expected, sort_keys=True, indent=0) + "\n"
    return golden.log_bytes(records), expected_text.encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.golden.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    log_data, expected_data = build()
    if args.check:
        same = (
            golden.read_gzip(golden.LOG_PATH) == log_data
            and golden.read_gzip(golden.EXPECTED_PATH) == expected_data
        )
        print("the golden files are up to date" if same else "the golden files differ")
        return 0 if same else 1
    golden.write_gzip(golden.LOG_PATH, log_data)
    golden.write_gzip(golden.EXPECTED_PATH, expected_data)
    document = json.loads(expected_data)
    for path in (golden.LOG_PATH, golden.EXPECTED_PATH):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    print(json.dumps(document["coverage"], indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
