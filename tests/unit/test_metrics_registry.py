"""The worker's metrics registry: process metrics next to the orchestrator's own."""

from __future__ import annotations

import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import Metrics


def _samples(metrics: Metrics) -> dict[str, float]:
    text = metrics.exposition().decode("utf-8")
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="read from /proc")
def test_the_exposition_has_the_process_metrics() -> None:
    samples = _samples(Metrics())
    assert samples["process_resident_memory_bytes"] > 0
    assert samples["process_open_fds"] > 0
    assert samples["process_max_fds"] >= samples["process_open_fds"]
    assert "process_cpu_seconds_total" in samples
    assert samples["process_start_time_seconds"] > 0


def test_the_exposition_has_python_info_and_the_orchestrator_metrics() -> None:
    samples = _samples(Metrics())
    assert samples["python_info"] == 1
    assert samples["orchestrator_healthy"] == 1
    assert samples["orchestrator_fold_reopens_total"] == 0


def test_workers_in_one_process_each_have_a_registry_of_their_own() -> None:
    first, second = Metrics(), Metrics()  # no "duplicated timeseries" from the collectors
    first.fold_reopens.inc()
    assert _samples(first)["orchestrator_fold_reopens_total"] == 1
    assert _samples(second)["orchestrator_fold_reopens_total"] == 0
    assert "process_resident_memory_bytes" in _samples(second) or not sys.platform.startswith(
        "linux"
    )
