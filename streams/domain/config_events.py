"""Settings that change at run time, as events: rate limits and default task policies.

A change is a :class:`ConfigChange` on the compacted ``orchestrator.config`` topic, written by
``orchestrator config set`` (or by a worker from its ``--config`` file at start). Everyone who
needs the settings in force folds the same records into a :class:`ConfigTable`:

- the scheduler that owns a platform takes its ``rate_limits`` from it (so every worker agrees,
  and the change applies without a restart);
- a client takes a new task's default policy from it, and fixes the values into the task's
  ``TaskCreated`` (so a replay of the task never depends on the settings of another day).

A setting is scoped by platform and task type (``*``: every one); the most specific one set
wins: (platform, type), then (platform, ``*``), then (``*``, type), then (``*``, ``*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ANY = "*"
"""The scope of a setting that holds for every platform (or every task type)."""

RATE_LIMITS = "rate_limits"
"""A platform's limits: ``{"limits": [{"calls": N, "period": SECONDS}, ...], "max_concurrent": N}``
(scoped by platform only)."""

POLICY_KEYS = (
    "default_timeout",
    "max_retries",
    "retry_delay",
    "result_ttl",
    "dependency_wait",
    "max_rate_limited",
)
"""The defaults of a new task's policy, fixed into its ``TaskCreated`` when it is created."""

KEYS = (RATE_LIMITS, *POLICY_KEYS)


@dataclass(frozen=True)
class ConfigChange:
    """``name`` set to ``value`` (None: unset) for ``platform`` and ``task_type`` at ``at_ms``,
    by ``by`` (who wrote it: the command line, a worker's ``--config``)."""

    name: str
    platform: str
    task_type: str
    value: Any
    at_ms: int
    by: str

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the change (``orchestrator config history --json``, audits)."""
        return {
            "at_ms": self.at_ms,
            "name": self.name,
            "platform": self.platform,
            "task_type": self.task_type,
            "value": self.value,
            "by": self.by,
        }

    @property
    def key(self) -> str:
        """The record's key on the topic: placed, and compacted, by it (the platform first,
        so a platform's changes share the partition of its scheduler)."""
        return config_key(self.name, self.platform, self.task_type)


def config_key(name: str, platform: str = ANY, task_type: str = ANY) -> str:
    """The key of setting ``name`` in the scope (``platform``, ``task_type``)."""
    return f"{platform}/{task_type}/{name}"


def scope_problem(name: str, platform: str, task_type: str) -> str | None:
    """Why a setting cannot have this scope (None: it can)."""
    if name not in KEYS:
        return f"unknown setting {name!r}; settable: {', '.join(KEYS)}"
    if name == RATE_LIMITS and (platform == ANY or task_type != ANY):
        return "rate_limits belong to one platform and every task type of it"
    return None


class ConfigTable:
    """The settings in force after the changes applied so far (in log order)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str, str], Any] = {}
        self.changes = 0

    def apply(self, change: ConfigChange) -> bool:
        """Apply ``change``; True if it changed what is in force."""
        self.changes += 1
        scope = (change.name, change.platform, change.task_type)
        if change.value is None:
            return self.values.pop(scope, None) is not None
        if self.values.get(scope) == change.value:
            return False
        self.values[scope] = change.value
        return True

    def get(self, name: str, platform: str = ANY, task_type: str = ANY) -> Any:
        """The value set for exactly this scope (None: none)."""
        return self.values.get((name, platform, task_type))

    def rate_limits(self, platform: str) -> Any:
        """The limits set for ``platform`` (None: none; the worker's own configuration holds)."""
        return self.values.get((RATE_LIMITS, platform, ANY))

    def policy(self, platform: str, task_type: str) -> dict[str, Any]:
        """The policy defaults in force for a new task of ``task_type`` on ``platform``: for
        each key set in some matching scope, the value of the most specific one."""
        found: dict[str, Any] = {}
        for scope in ((platform, task_type), (platform, ANY), (ANY, task_type), (ANY, ANY)):
            for name in POLICY_KEYS:
                if name not in found:
                    value = self.values.get((name, *scope))
                    if value is not None:
                        found[name] = value
        return found
