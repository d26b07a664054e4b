"""The least-privilege ACLs of one orchestrator, as data: who may do what on which resource.

Three principals use an orchestrator's topics:

- the **worker** runs the fold, the schedulers, the timers and the executors: it reads and
  writes every topic of its orchestrator, its changelogs and its signing keys, uses its own
  consumer groups and transactional ids (all named after the orchestrator id), and creates
  its topics at start-up;
- the **producer** is a client that submits and drives tasks (``TaskManager``): it writes
  ``task.events`` and reads ``orchestrator.config`` (the task policy defaults in force);
- the **consumer** reads ``task.completed`` with a consumer group of its own.

``orchestrator.keys`` (the key that signs the worker's internal events) is the worker's alone:
a client that could read it could forge a ``DependencyResolved`` or a ``TaskCompleted``.

:func:`acl_set` is pure (no Kafka, no clock): ``orchestrator kafka up --secure`` applies it to
the local broker and ``orchestrator acl print`` prints it as ``kafka-acls.sh`` commands for a
cluster of one's own, so the local secure test proves the very set a user applies.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from enum import IntEnum

from streams.topics import KEYS, TOPICS, TopicNames, scheduler_changelog, tasks_changelog

KEYS_TOPIC = KEYS
"""The compacted topic of the worker's signing key (the worker's alone; ``streams.signing``)."""

DEFAULT_CONSUMER_GROUP = "task-completed-consumer"
"""The consumer principal's group unless told another (LITERAL: that group only)."""


class ResourceType(IntEnum):
    """Kafka's resource types (the wire codes of the ACL requests)."""

    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5


class PatternType(IntEnum):
    """How a binding's resource name matches: the name itself, or every name it begins."""

    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    """The operations the set grants (Kafka's wire codes)."""

    READ = 3
    WRITE = 4
    CREATE = 5
    DESCRIBE = 8
    DESCRIBE_CONFIGS = 10


@dataclass(frozen=True)
class Principals:
    """The Kafka principal of each role, ``User:<name>`` as the SASL username gives it."""

    worker: str = "User:worker"
    producer: str = "User:producer"
    consumer: str = "User:consumer"


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW binding: ``principal`` may do ``operation`` on the resource from any host."""

    principal: str
    resource_type: ResourceType
    pattern_type: PatternType
    resource_name: str
    operation: Operation


@dataclass(frozen=True)
class Scope:
    """The orchestrator the set is for: its topic prefix and its id.

    Attributes:
        topic_prefix: the ``topic_prefix`` setting.
        orchestrator_id: ``Settings.orchestrator_id`` (``topic_prefix`` + ``app_id``): it
            begins the names of the worker's groups, transactional ids and changelogs.
        consumer_group: the consumer principal's group.
    """

    topic_prefix: str = ""
    orchestrator_id: str = "discovery-orchestrator"
    consumer_group: str = DEFAULT_CONSUMER_GROUP

    @property
    def topics(self) -> TopicNames:
        """The orchestrator's topic names."""
        return TopicNames(self.topic_prefix)


_WORKER_ONLY_WRITES = (
    "completed",  # results: the consumers' input
    "dispatch",  # go-aheads for the executors
    "scheduler_events",  # adaptive throttling changes, for the audit
)
"""Topics the worker writes and never reads back."""


def worker_acls(scope: Scope, principal: str) -> list[Acl]:
    """The worker's bindings (see the module docstring)."""
    topics = scope.topics
    names = [scope.topic_prefix + spec.name for spec in TOPICS]  # the keys topic among them
    write_only = {getattr(topics, attr) for attr in _WORKER_ONLY_WRITES}
    acls: list[Acl] = []
    for name in dict.fromkeys(names):
        operations = [Operation.WRITE, Operation.CREATE, Operation.DESCRIBE]
        if name not in write_only:
            operations.append(Operation.READ)
        acls += [_topic(principal, name, op) for op in operations]
    # changelogs ({id}-tasks-changelog, {id}-scheduler-changelog) and faust's own topic
    # ({id}-__assignor-__leader); groups {id}, {id}-fold, {id}-scheduler; transactional ids
    # {id}-{role}-{partition}
    own = scope.orchestrator_id
    acls += [
        _acl(principal, ResourceType.TOPIC, own, op, PatternType.PREFIXED)
        for op in (Operation.READ, Operation.WRITE, Operation.CREATE, Operation.DESCRIBE)
    ]
    acls += [
        _acl(principal, ResourceType.GROUP, own, op, PatternType.PREFIXED)
        for op in (Operation.READ, Operation.DESCRIBE)
    ]
    acls += [
        _acl(principal, ResourceType.TRANSACTIONAL_ID, own, op, PatternType.PREFIXED)
        for op in (Operation.WRITE, Operation.DESCRIBE)
    ]
    return acls


def producer_acls(scope: Scope, principal: str) -> list[Acl]:
    """The producer's bindings: write ``task.events``; read ``orchestrator.config``, whose
    policy defaults every ``TaskManager`` follows (it reads it without a consumer group)."""
    topics = scope.topics
    return [
        _topic(principal, topics.events, Operation.WRITE),
        _topic(principal, topics.events, Operation.DESCRIBE),
        _topic(principal, topics.config, Operation.READ),
        _topic(principal, topics.config, Operation.DESCRIBE),
    ]


def consumer_acls(scope: Scope, principal: str) -> list[Acl]:
    """The consumer's bindings: read ``task.completed`` with its own group."""
    return [
        _topic(principal, scope.topics.completed, Operation.READ),
        _topic(principal, scope.topics.completed, Operation.DESCRIBE),
        _acl(principal, ResourceType.GROUP, scope.consumer_group, Operation.READ),
        _acl(principal, ResourceType.GROUP, scope.consumer_group, Operation.DESCRIBE),
    ]


def acl_set(scope: Scope, principals: Principals | None = None) -> list[Acl]:
    """Every binding of the three principals for ``scope``, sorted, without repeats."""
    principals = principals or Principals()
    found = (
        worker_acls(scope, principals.worker)
        + producer_acls(scope, principals.producer)
        + consumer_acls(scope, principals.consumer)
    )
    return sorted(set(found))


def changelogs(scope: Scope) -> tuple[str, str]:
    """The worker's changelog topics (covered by its PREFIXED topic bindings)."""
    return tasks_changelog(scope.orchestrator_id), scheduler_changelog(scope.orchestrator_id)


def allows(
    acls: list[Acl], principal: str, resource_type: ResourceType, name: str, op: Operation
) -> bool:
    """Whether ``acls`` let ``principal`` do ``op`` on the resource ``name``, as Kafka's
    authorizer decides for ALLOW bindings (READ and WRITE also allow DESCRIBE)."""
    implied = {Operation.DESCRIBE: {Operation.DESCRIBE, Operation.READ, Operation.WRITE}}
    wanted = implied.get(op, {op})
    return any(
        acl.principal == principal
        and acl.resource_type == resource_type
        and acl.operation in wanted
        and (
            acl.resource_name == name
            if acl.pattern_type == PatternType.LITERAL
            else name.startswith(acl.resource_name)
        )
        for acl in acls
    )


_OPTION = {
    ResourceType.TOPIC: "--topic",
    ResourceType.GROUP: "--group",
    ResourceType.TRANSACTIONAL_ID: "--transactional-id",
}


def kafka_acls_commands(
    acls: list[Acl], bootstrap_server: str, command_config: str = "", script: str = "kafka-acls.sh"
) -> list[str]:
    """``acls`` as ``kafka-acls.sh --add`` commands, one per principal, resource and pattern
    type, with every operation of that resource in one command."""
    grouped: dict[tuple[str, ResourceType, PatternType, str], list[Operation]] = {}
    for acl in sorted(acls):
        key = (acl.principal, acl.resource_type, acl.pattern_type, acl.resource_name)
        grouped.setdefault(key, []).append(acl.operation)
    base = [script, "--bootstrap-server", bootstrap_server]
    if command_config:
        base += ["--command-config", command_config]
    commands = []
    for (principal, resource_type, pattern_type, name), operations in grouped.items():
        words = [*base, "--add", "--allow-principal", principal]
        for operation in operations:
            words += ["--operation", _camel(operation.name)]
        words += (
            ["--cluster"]
            if resource_type == ResourceType.CLUSTER
            else [
                _OPTION[resource_type],
                name,
            ]
        )
        words += ["--resource-pattern-type", pattern_type.name.lower()]
        commands.append(shlex.join(words))
    return commands


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _topic(principal: str, name: str, op: Operation) -> Acl:
    return _acl(principal, ResourceType.TOPIC, name, op)


def _acl(
    principal: str,
    resource_type: ResourceType,
    name: str,
    op: Operation,
    pattern: PatternType = PatternType.LITERAL,
) -> Acl:
    return Acl(principal, resource_type, pattern, name, op)
