"""The golden log: the fold answers every record of a recorded log as it did when it was recorded.

``tests/golden/log.bin.gz`` is a ``task.events`` log of a simulated workload (over 10,000
records: every kind of event from every source, dependency chains, cycles, missing
dependencies, duplicates, refused input); ``tests/golden/expected.json.gz`` is what the fold
answered to each record when the log was generated: a SHA-256 of the verdict, the resulting
state (``state_to_dict``) and the effects, per record, and every task's final state in full.

Given the golden log, when it is decoded as the replay decodes it (``event_of_record``) and
folded with ``streams.domain.apply``, then every record gets the recorded answer (a failure
names the first record that does not, with its kind and task id) and the tasks end in the
recorded states; ``streams.domain.fold`` and the replay's ``LogFold`` agree, and so does the
replay of the log placed on partitions (the follow-ups for tasks of the same partition applied
at once, ``apply_here``, as the live fold does). A change of the fold's behaviour that is
intended needs the files regenerated (``python -m tests.golden.generate``, see its docstring);
any other change of behaviour is a defect.
"""

from __future__ import annotations

from typing import Any

import pytest

from projections.log import LogFold, LogRecord, Position, feed
from projections.verify import Difference, compare
from streams.domain import PAYLOAD_TYPES, Source, fold, state_to_dict
from tests.golden import golden

SHOWN = 20
"""Differences shown in a failure message, at most."""


@pytest.fixture(scope="module")
def records() -> list[golden.Record]:
    return golden.read_log()


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    return golden.read_expected()


@pytest.fixture(scope="module")
def replayed(records: list[golden.Record]) -> golden.Replayed:
    return golden.replay(records)


def _shown(differences: list[Difference]) -> str:
    lines = [d.describe() for d in differences[:SHOWN]]
    if len(differences) > SHOWN:
        lines.append(f"... and {len(differences) - SHOWN} more")
    return "\n".join(lines)


def test_the_log_is_the_one_the_answers_were_recorded_from(
    records: list[golden.Record], expected: dict[str, Any]
) -> None:
    assert len(records) == expected["records"] >= golden.MIN_RECORDS
    assert golden.log_digest(records) == expected["log_sha256"], (
        "log.bin.gz is not the log expected.json.gz was recorded from: regenerate both"
    )
    assert len(expected["digests"]) == len(records)


def test_every_record_gets_the_recorded_answer(
    replayed: golden.Replayed, expected: dict[str, Any]
) -> None:
    recorded = expected["digests"]
    assert len(replayed.steps) == len(recorded)
    differing = [
        step for step, digest in zip(replayed.steps, recorded, strict=True) if step.digest != digest
    ]
    if differing:
        first = differing[0]
        before = "None"
        if first.before is not None:
            before = golden.canonical_json(state_to_dict(first.before))
        pytest.fail(
            f"{len(differing)} of {len(recorded)} records get another answer than recorded; "
            f"the first is {first.describe()}\n"
            f"its task's state before it: {before[:2_000]}\n"
            f"its answer now: {first.canonical[:4_000]}",
            pytrace=False,
        )


def test_the_tasks_end_in_the_recorded_states(
    replayed: golden.Replayed, expected: dict[str, Any]
) -> None:
    differences = compare(expected["final_states"], replayed.final_states())
    assert not differences, "the final states differ (log = recorded):\n" + _shown(differences)


def test_the_offline_fold_gives_the_recorded_final_states(
    replayed: golden.Replayed, expected: dict[str, Any]
) -> None:
    events = replayed.events()
    assert len(events) > golden.MIN_RECORDS * 0.9
    states = {task_id: state_to_dict(state) for task_id, state in fold(events).items()}
    differences = compare(expected["final_states"], states)
    assert not differences, "fold() differs (log = recorded):\n" + _shown(differences)


def test_the_replay_gives_the_recorded_states_and_verdicts(
    records: list[golden.Record], expected: dict[str, Any]
) -> None:
    """What ``orchestrator replay`` and ``verify`` run: ``projections.log.LogFold``."""
    log = feed(
        (LogRecord(Position(0, i), 0, key, value) for i, (key, value) in enumerate(records)),
        [],
        LogFold(),
    )
    states = {task_id: state_to_dict(state) for task_id, state in log.states.items()}
    differences = compare(expected["final_states"], states)
    assert not differences, "the replay differs (log = recorded):\n" + _shown(differences)
    counts = {str(verdict): n for verdict, n in log.counts.items()}
    assert counts == expected["coverage"]["verdicts"]


def test_the_replay_of_the_log_placed_on_partitions_gives_the_recorded_states(
    records: list[golden.Record], expected: dict[str, Any]
) -> None:
    """What the live fold and a replay of a topic do: each record on its task's partition, the
    follow-ups for tasks of the same partition applied at once (``apply_here``)."""
    recorded = expected["placed"]
    log = golden.replay_placed(records, recorded["partitions"])
    digests = golden.state_digests(log.states)
    differing = sorted(
        task_id
        for task_id in digests.keys() | recorded["state_sha256"].keys()
        if digests.get(task_id) != recorded["state_sha256"].get(task_id)
    )
    if differing:
        first = differing[0]
        state = log.states.get(first)
        now = "none" if state is None else golden.canonical_json(state_to_dict(state))
        pytest.fail(
            f"{len(differing)} tasks end otherwise than recorded when the log is placed on "
            f"{recorded['partitions']} partitions: {', '.join(differing[:SHOWN])}\n"
            f"the state of {first!r} now: {now[:4_000]}",
            pytrace=False,
        )
    assert {str(v): n for v, n in log.counts.items()} == recorded["verdicts"]


def test_the_log_covers_every_kind_of_event_from_every_source(
    replayed: golden.Replayed,
) -> None:
    found = golden.coverage(replayed)
    kinds = [cls.__name__ for cls in PAYLOAD_TYPES]
    for verdict in ("applied", "duplicate", "rejected"):
        counts = found[f"kinds {verdict}"]
        missing = [kind for kind in kinds if counts.get(kind, 0) < 1]
        assert not missing, f"no {verdict} event of kind {', '.join(missing)}"
    missing_sources = [str(s) for s in Source if found["sources"].get(str(s), 0) < 1]
    assert not missing_sources, f"no event from {', '.join(missing_sources)}"
    # and the variants, refusals, effects, statuses and endings golden.missing_coverage lists
    missing_otherwise = golden.missing_coverage(found)
    assert missing_otherwise == []
