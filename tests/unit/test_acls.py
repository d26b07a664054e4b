"""The least-privilege ACL set (streams.acls): who may do what, and ``orchestrator acl print``."""

from __future__ import annotations

import shlex

import pytest

from streams.acls import (
    KEYS_TOPIC,
    Acl,
    Operation,
    PatternType,
    Principals,
    ResourceType,
    Scope,
    acl_set,
    allows,
    changelogs,
    kafka_acls_commands,
)
from streams.cli import main
from streams.topics import TOPICS

SCOPE = Scope(topic_prefix="acme.", orchestrator_id="acme.orch", consumer_group="results-db")
ACLS = acl_set(SCOPE)
P = Principals()
TOPIC, GROUP, TXN = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID
R, W, C, D = Operation.READ, Operation.WRITE, Operation.CREATE, Operation.DESCRIBE
EVERY_TOPIC = [f"acme.{spec.name}" for spec in TOPICS]
KEYS = f"acme.{KEYS_TOPIC}"


def may(principal: str, op: Operation, name: str, resource: ResourceType = TOPIC) -> bool:
    return allows(ACLS, principal, resource, name, op)


def test_the_worker_writes_and_creates_every_topic_of_its_orchestrator() -> None:
    for name in [*EVERY_TOPIC, KEYS, *changelogs(SCOPE)]:
        assert may(P.worker, W, name) and may(P.worker, C, name), name


def test_the_worker_reads_its_inputs_and_never_its_write_only_outputs() -> None:
    read = {"acme.task.events", "acme.task.ready", "acme.scheduler.signals"}
    read |= {"acme.orchestrator.config", "acme.task.events.dlq", KEYS, *changelogs(SCOPE)}
    for name in read:
        assert may(P.worker, R, name), name
    for name in ("acme.task.completed", "acme.task.dispatch", "acme.scheduler.events"):
        assert not may(P.worker, R, name), name


def test_the_worker_uses_its_own_groups_and_transactional_ids_only() -> None:
    for group in ("acme.orch", "acme.orch-fold", "acme.orch-scheduler"):
        assert may(P.worker, R, group, GROUP), group
    assert may(P.worker, W, "acme.orch-fold-3", TXN)
    assert not may(P.worker, R, "other.orch-fold", GROUP)
    assert not may(P.worker, W, "other.orch-fold-3", TXN)
    assert not may(P.worker, R, "other.task.events")


def test_the_producer_only_writes_task_events_and_reads_the_settings() -> None:
    assert may(P.producer, W, "acme.task.events")
    assert may(P.producer, R, "acme.orchestrator.config")
    granted = {(a.resource_name, a.operation) for a in ACLS if a.principal == P.producer}
    assert granted == {
        ("acme.task.events", W),
        ("acme.task.events", D),
        ("acme.orchestrator.config", R),
        ("acme.orchestrator.config", D),
    }


def test_the_consumer_only_reads_task_completed_with_its_own_group() -> None:
    granted = {
        (a.resource_type, a.resource_name, a.operation) for a in ACLS if a.principal == P.consumer
    }
    assert granted == {
        (TOPIC, "acme.task.completed", R),
        (TOPIC, "acme.task.completed", D),
        (GROUP, "results-db", R),
        (GROUP, "results-db", D),
    }
    assert all(a.pattern_type == PatternType.LITERAL for a in ACLS if a.principal == P.consumer)


@pytest.mark.parametrize("op", [R, W, D, C])
def test_the_signing_key_topic_is_the_workers_alone(op: Operation) -> None:
    holders = {a.principal for a in ACLS if allows([a], a.principal, TOPIC, KEYS, op)}
    assert holders == {P.worker}
    for principal in (P.producer, P.consumer):
        assert not may(principal, op, KEYS)


def test_no_client_touches_internal_topics_or_the_workers_groups() -> None:
    internal = ["acme.task.ready", "acme.task.dispatch", "acme.task.events.dlq", *changelogs(SCOPE)]
    for principal in (P.producer, P.consumer):
        for name in internal:
            assert not any(may(principal, op, name) for op in (R, W, D)), (principal, name)
        assert not may(principal, R, "acme.orch-fold", GROUP)
        assert not may(principal, W, "acme.orch-fold-0", TXN)


def test_the_set_has_no_wildcards_and_no_cluster_rights() -> None:
    assert all(a.resource_name not in ("", "*") for a in ACLS)
    assert all(a.resource_type != ResourceType.CLUSTER for a in ACLS)
    assert sorted(set(ACLS)) == ACLS


def test_without_a_topic_prefix_every_topic_is_named_literally() -> None:
    acls = acl_set(Scope())
    prefixed = {a.resource_name for a in acls if a.pattern_type == PatternType.PREFIXED}
    assert prefixed == {"discovery-orchestrator"}
    assert allows(acls, P.worker, TOPIC, "orchestrator.keys", R)


def test_principals_of_ones_own_are_used() -> None:
    acls = acl_set(SCOPE, Principals("User:svc-w", "User:svc-p", "User:svc-c"))
    assert {a.principal for a in acls} == {"User:svc-w", "User:svc-p", "User:svc-c"}


def test_the_commands_grant_exactly_the_set() -> None:
    commands = kafka_acls_commands(ACLS, "b1:9096", "admin.properties")
    granted: set[Acl] = set()
    for command in commands:
        words = shlex.split(command)
        assert words[:4] == ["kafka-acls.sh", "--bootstrap-server", "b1:9096", "--command-config"]
        granted |= _parse(words)
    assert granted == set(ACLS)


def _parse(words: list[str]) -> set[Acl]:
    options: dict[str, list[str]] = {}
    for option, value in zip(words, [*words[1:], ""], strict=True):
        if option.startswith("--") and not value.startswith("--"):
            options.setdefault(option, []).append(value)
    kinds = {"--topic": TOPIC, "--group": GROUP, "--transactional-id": TXN}
    [(flag, [name])] = [(k, v) for k, v in options.items() if k in kinds]
    pattern = PatternType[options["--resource-pattern-type"][0].upper()]
    [principal] = options["--allow-principal"]
    return {
        Acl(principal, kinds[flag], pattern, name, Operation[_snake(op)])
        for op in options["--operation"]
    }


def _snake(camel: str) -> str:
    return "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(camel)).upper()


def test_acl_print_prints_the_set(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "acl",
            "print",
            "--topic-prefix",
            "acme.",
            "--app-id",
            "orch",
            "--consumer-group",
            "results-db",
            "--bootstrap-server",
            "b1:9096",
            "--command-config",
            "admin.properties",
        ]
    )
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert out[0].startswith("#")
    assert out[1:] == kafka_acls_commands(ACLS, "b1:9096", "admin.properties")


def test_acl_print_refuses_a_principal_that_is_no_user(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["acl", "print", "--principal-producer", "producer"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and "--principal-producer must be User:<name>" in err[0]
