"""The terminal side of ``orchestrator replay``, ``audit`` and ``verify``: progress and printing.

Each ``*_command`` runs one command (in an event loop of its own) and returns its exit status;
``streams.cli`` parses the arguments and calls it. Progress and notes go to stderr, results to
stdout (or a file), so the output of ``--json`` and ``--out -`` can be piped.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from projections import replay as replaying
from projections.audit import AuditView, TimelineEntry
from projections.instants import Instant, iso_utc
from projections.live import verify
from projections.status import TaskStatusView, summary
from streams.domain.config_events import ANY, ConfigChange
from streams.errors import TaskNotFoundError, ValidationError
from streams.kafka_clients import KafkaConnection


class _ProgressBar:
    """A rich progress bar fed by :class:`projections.replay.Progress` updates (on stderr)."""

    def __init__(self, console: Console, label: str) -> None:
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} events/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            disable=not console.is_terminal,  # a log file gets the summary, not bar redraws
        )
        self._task: TaskID = self._bar.add_task(label, total=None, rate="-")

    def __enter__(self) -> _ProgressBar:
        self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.stop()

    def update(self, progress: replaying.Progress) -> None:
        rate = progress.records / progress.elapsed_s if progress.elapsed_s > 0 else 0.0
        self._bar.update(
            self._task,
            completed=progress.records,
            total=max(progress.total, progress.records),
            rate=f"{rate:,.0f}",
        )


def _note_instant(console: Console, until: Instant | None) -> None:
    if until is not None and until.assumed_utc:
        console.print(f"note: the time has no timezone, read as UTC: {until.iso}")


def replay_command(
    kafka: KafkaConnection | str,
    topic: str,
    until: Instant | None,
    names: Sequence[str],
    out: Path | None,
) -> int:
    """``orchestrator replay``: fold the log, show progress, print a summary, write the JSON."""
    err = Console(stderr=True)
    _note_instant(err, until)
    unknown = sorted(set(names) - replaying.PROJECTIONS.keys())
    if unknown:
        raise ValidationError(f"unknown projection {', '.join(unknown)}")
    chosen = list(dict.fromkeys(names)) or list(replaying.PROJECTIONS)
    views = [replaying.PROJECTIONS[name]() for name in chosen]
    with _ProgressBar(err, f"replaying {topic}") as bar:
        result = asyncio.run(
            replaying.replay(
                kafka, topic, until.ms if until else None, views, on_progress=bar.update
            )
        )
    document = result.to_json()
    if out is not None and str(out) == "-":
        json.dump(document, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        _print_summary(result.summary(), sys.stderr)
        return 0
    if out is not None:
        out.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _print_summary(result.summary(), sys.stdout)
    if out is not None:
        print(f"wrote {', '.join(chosen)} to {out}")
    return 0


def _print_summary(summary: dict[str, Any], stream: TextIO) -> None:
    verdicts = summary["verdicts"]
    statuses = ", ".join(f"{n} {status}" for status, n in summary["statuses"].items())
    rate = f"{summary['events_per_s']:,.0f} events/s"
    if summary.get("processes", 1) > 1:
        rate += f" in {summary['processes']} processes"
    lines = [
        f"replayed {summary['records']:,} records of {summary['topic']} in "
        f"{summary['elapsed_s']:.2f} s ({rate})"
        + (f", up to {summary['until']}" if summary["until"] else ""),
        f"  {verdicts['applied']:,} applied, {verdicts['duplicate']:,} duplicates, "
        f"{verdicts['rejected']:,} rejected",
        f"  {summary['tasks']:,} tasks" + (f": {statuses}" if statuses else ""),
        "  offsets read: "
        + ", ".join(f"{p}:[{r['start']},{r['stop']})" for p, r in summary["partitions"].items()),
    ]
    stream.write("\n".join(lines) + "\n")


def audit_command(
    kafka: KafkaConnection | str,
    topic: str,
    task_id: str,
    until: Instant | None,
    as_json: bool,
    settings_changes: Sequence[ConfigChange] = (),
) -> int:
    """``orchestrator audit TASK_ID``: the task's timeline, readable or as JSON, then the
    run-time settings changes (``orchestrator.config``) for its platform and type up to its last
    record: the limits and defaults in force while it lived."""
    err = Console(stderr=True)
    _note_instant(err, until)
    audit, status = AuditView([task_id]), TaskStatusView()
    asyncio.run(
        replaying.replay(kafka, topic, until.ms if until else None, [audit, status], keys=[task_id])
    )
    timeline = audit.timeline(task_id)
    if not timeline:
        up_to = f" up to {until.iso}" if until else ""
        raise TaskNotFoundError(f"no record of task {task_id} in {topic}{up_to}")
    entry = status.entry(task_id)
    state = summary(entry) if entry is not None else None
    last_ms = max(e.timestamp_ms for e in timeline)
    settings = (
        relevant_changes(settings_changes, state["platform"], state["task_type"], last_ms)
        if state is not None
        else []
    )
    if as_json:
        document = {
            "task_id": task_id,
            "until_ms": until.ms if until else None,
            "state": state,
            "timeline": [e.to_json() for e in timeline],
            "settings": [c.as_dict() for c in settings],
        }
        print(json.dumps(document, indent=2, sort_keys=True))
        return 0
    print(_headline(task_id, state, until))
    for line in timeline:
        print(_timeline_line(line))
    rejected = sum(1 for e in timeline if e.is_rejected)
    print(f"{len(timeline)} records, {rejected} rejected")
    if settings:
        print("settings changed at run time for its platform and type, up to its last record:")
        for change in settings:
            shown = "unset" if change.value is None else json.dumps(change.value)
            print(
                f"  {iso_utc(change.at_ms)}  {change.name} platform={change.platform} "
                f"task_type={change.task_type}  {shown}  by {change.by}"
            )
    return 0


def relevant_changes(
    changes: Sequence[ConfigChange], platform: str, task_type: str, until_ms: int
) -> list[ConfigChange]:
    """The changes of settings that hold for ``platform`` and ``task_type`` (or every one), made
    up to ``until_ms``, in time order."""
    return sorted(
        (
            c
            for c in changes
            if c.platform in (platform, ANY)
            and c.task_type in (task_type, ANY)
            and c.at_ms <= until_ms
        ),
        key=lambda c: c.at_ms,
    )


def _headline(task_id: str, state: dict[str, Any] | None, until: Instant | None) -> str:
    when = f"as of {until.iso}" if until else "now"
    if state is None:
        return f"task {task_id}: never created ({when})"
    return (
        f"task {task_id}: {state['task_type']} on {state['platform']}, target "
        f"{state['target']}; {when}: {state['status']}, attempt {state['attempt']}"
        + (f", last error: {state['last_error']}" if state["last_error"] else "")
    )


def _timeline_line(entry: TimelineEntry) -> str:
    when = iso_utc(entry.occurred_at_ms if entry.occurred_at_ms is not None else entry.timestamp_ms)
    if entry.is_rejected:
        outcome = f"REJECTED {entry.reason}: {entry.detail}"
    elif entry.verdict == "duplicate":
        outcome = "duplicate (ignored)"
    elif entry.entered:
        outcome = "-> " + " -> ".join(entry.entered)
    else:
        outcome = f"({entry.status_after})"
    details = f"  {entry.summary}" if entry.summary else ""
    return (
        f"  {when}  {entry.position!s:>9}  {entry.source or '-':<9}  {entry.kind:<20}  "
        f"{outcome}{details}"
    )


def verify_command(
    kafka: KafkaConnection | str,
    topic: str,
    api_url: str,
    timeout_s: float,
    as_json: bool,
    token: str = "",
    cafile: str = "",
) -> int:
    """``orchestrator verify``: 0 if the live table is the log's fold, 1 (and each difference)
    if not. The workers are asked with the HTTP API's bearer ``token``, if there is one, and
    an ``https://`` worker is trusted with the CA bundle ``cafile`` (``api_cafile``)."""
    checked = asyncio.run(verify(kafka, topic, api_url, timeout_s, token, cafile))
    differences = checked.differences
    offsets = ", ".join(f"{p}:{o}" for p, o in sorted(checked.live.offsets.items()))
    if as_json:
        document = {
            "workers": list(checked.live.workers),
            "offsets": {str(p): o for p, o in sorted(checked.live.offsets.items())},
            "tasks": len(checked.live.tasks),
            "records": checked.replayed.records,
            "differences": [d.to_json() for d in differences],
        }
        print(json.dumps(document, indent=2, sort_keys=True))
        return 1 if differences else 0
    for difference in differences:
        print(f"DIFFERENT {difference.describe()}")
    what = f"{len(differences)} tasks differ" if differences else "no difference"
    print(
        f"verify: {what}: {len(checked.live.tasks):,} live tasks from "
        f"{', '.join(checked.live.workers)} against a fold of {checked.replayed.records:,} "
        f"records up to offsets {offsets}"
    )
    return 1 if differences else 0
