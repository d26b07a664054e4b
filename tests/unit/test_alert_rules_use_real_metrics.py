"""The alert rules and the Grafana dashboard of ``deploy/`` name only metrics a worker exports.

Every metric name with a prefix of ours (``orchestrator_``, and the ``process_`` / ``python_``
families of the collectors on the same registry) in an expression must be a sample name of
:class:`streams.metrics.Metrics`' registry (``_total``, ``_bucket``, ``_count`` ... included);
every label in a selector or a ``by (...)`` must be one of its labels (or ``job`` / ``instance``,
which Prometheus adds); label values the code fixes (hold reasons, fold outcomes) must be real.
``make alerts`` checks the rules' syntax and behaviour with promtool; this checks their names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.domain.scheduling import HoldReason
from streams.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "orchestrator.json"

OUR_PREFIXES = ("orchestrator_", "process_", "python_")
SCRAPE_LABELS = frozenset({"job", "instance"})
SEVERITIES = {"critical", "warning", "info"}
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NAME = re.compile(r"(?<![\w$:])[a-zA-Z_:][\w:]*")
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def _fold_outcomes() -> set[str]:
    """The ``outcome`` values the fold gives ``orchestrator_fold_transactions_total``."""
    source = (REPO / "streams" / "agents" / "fold.py").read_text()
    return set(re.findall(r'fold_commits\.labels\("(\w+)"\)', source))


KNOWN_VALUES: dict[tuple[str, str], set[str]] = {
    ("orchestrator_rate_limit_hits_total", "reason"): {str(r) for r in HoldReason},
    ("orchestrator_fold_transactions_total", "outcome"): _fold_outcomes(),
}


def exported_metrics(metrics: Metrics | None = None) -> dict[str, frozenset[str]]:
    """Every sample name the worker's registry can expose, with its label names."""
    registry = (metrics or Metrics()).registry
    by_name = registry._names_to_collectors  # the names each collector registered
    exported: dict[str, frozenset[str]] = {}
    for family in registry.collect():
        collector = by_name.get(family.name)
        labels = set(getattr(collector, "_labelnames", ()))
        labels.update(label for sample in family.samples for label in sample.labels)
        for suffix in _SUFFIXES.get(family.type, ("",)):
            name = family.name + suffix
            exported[name] = frozenset(labels | ({"le"} if suffix == "_bucket" else set()))
        for sample in family.samples:
            exported.setdefault(sample.name, frozenset(sample.labels))
    return exported


def problems(expr: str, exported: dict[str, frozenset[str]]) -> list[str]:
    """What in a PromQL expression names a metric, a label or a label value that is not real."""
    found: list[str] = []
    bare = _STRING.sub('""', expr)
    names = {n for n in _NAME.findall(bare) if n.startswith(OUR_PREFIXES)}
    found += [f"no metric {name}" for name in sorted(names - set(exported))]
    for name, matchers in _SELECTOR.findall(expr):
        if name not in exported:
            continue
        for label, op, value in _MATCHER.findall(matchers):
            if label not in exported[name] | SCRAPE_LABELS:
                found.append(f"{name} has no label {label}")
            known = KNOWN_VALUES.get((name, label))
            if known is None or op not in ("=", "=~") or not re.fullmatch(r"[\w|]+", value):
                continue
            found += [
                f"{name}{{{label}}} is never {v!r} (it is one of {sorted(known)})"
                for v in value.split("|")
                if v not in known
            ]
    ours = [exported[n] for n in names if n in exported]
    if ours:
        labels = frozenset().union(*ours) | SCRAPE_LABELS
        for group in _GROUPING.findall(bare):
            found += [
                f"no metric of the expression has a label {label}"
                for label in (part.strip() for part in group.split(","))
                if label and label not in labels
            ]
    return found


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


EXPORTED = exported_metrics()


def test_the_helper_knows_the_suffixed_names_of_every_kind_of_metric() -> None:
    assert EXPORTED["orchestrator_tasks_completed_total"] == {"platform", "task_type"}
    assert EXPORTED["orchestrator_task_queue_wait_seconds_bucket"] == {"platform", "le"}
    assert "orchestrator_task_duration_seconds_count" in EXPORTED
    assert EXPORTED["orchestrator_healthy"] == frozenset()
    assert EXPORTED["orchestrator_fold_consumer_lag"] == {"partition"}
    assert "process_resident_memory_bytes" in EXPORTED
    assert "orchestrator_tasks_completed" not in EXPORTED  # the family name is no sample
    assert KNOWN_VALUES[("orchestrator_fold_transactions_total", "outcome")] == {
        "committed",
        "failed",
    }


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(orchestrator_tasks_finished_total[5m])", "no metric orchestrator_tasks_finished"),
        ('orchestrator_dlq_records_total{platform="x"}', "has no label platform"),
        ('orchestrator_rate_limit_hits_total{reason="rate_limited"}', "is never 'rate_limited'"),
        ("sum by (platfrom) (orchestrator_pending_tasks)", "has a label platfrom"),
        ("process_resident_memory", "no metric process_resident_memory"),
    ],
)
def test_the_check_finds_invented_names(expr: str, problem: str) -> None:
    found = problems(expr, EXPORTED)
    assert any(problem in p for p in found), found


def test_the_check_passes_real_names() -> None:
    expr = (
        'sum by (platform, le) (rate(orchestrator_task_queue_wait_seconds_bucket{platform=~"$p",'
        ' job="orchestrator"}[5m])) and on (instance) up{job="orchestrator"} == 1'
        ' unless sum(orchestrator_rate_limit_hits_total{reason=~"paused|rate_limit"}) > 0'
    )
    assert problems(expr, EXPORTED) == []


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_every_alert_rule_uses_exported_metrics(rule: dict[str, Any]) -> None:
    assert problems(rule["expr"], EXPORTED) == []


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_every_alert_rule_has_a_severity_a_summary_and_a_one_line_runbook(
    rule: dict[str, Any],
) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"].strip()
    runbook = rule["annotations"]["runbook"]
    assert runbook.strip() and "\n" not in runbook.strip()


def test_every_alert_rule_has_a_case_that_fires_and_one_that_does_not() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in _rules()}
    assert names - fires == set(), "rules without a test where they fire"
    assert names - silent == set(), "rules without a test where they stay silent"
    assert (fires | silent) - names == set(), "tests of rules that do not exist"


def test_the_dashboard_is_json_with_unique_panel_ids() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert _dashboard_exprs()


@pytest.mark.parametrize(("title", "expr"), _dashboard_exprs())
def test_every_dashboard_query_uses_exported_metrics(title: str, expr: str) -> None:
    assert problems(expr, EXPORTED) == [], title


def test_the_readme_lists_every_alert_rule_and_every_metric() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Metrics") :]
    section = section[: section.index("\n## ", 1)]
    assert [rule["alert"] for rule in _rules() if f"`{rule['alert']}`" not in section] == []
    ours = {name for name in EXPORTED if name.startswith("orchestrator_")}
    documented = set(re.findall(r"`(orchestrator_\w+)`", section))
    families = {re.sub(r"_(bucket|count|sum|created)$", "", name) for name in ours}
    families = {name for name in families if name in ours or name + "_bucket" in ours}
    assert families - documented == set(), "metrics missing from the README's table"
