"""The scheduler's lead lengthens to what its commits take, and comes back down."""

from __future__ import annotations

import pytest

from streams.domain.scheduling import StartLead


def test_with_fast_commits_the_lead_is_the_setting() -> None:
    lead = StartLead(150)
    assert lead.ms == 150
    lead.observe(20)
    assert lead.ms == 150


def test_a_slow_commit_lengthens_the_lead_past_it() -> None:
    lead = StartLead(150)
    lead.observe(400)
    assert lead.ms == 400 * 1.5 + StartLead.SPARE_MS


def test_the_lead_decays_back_to_the_setting_once_commits_are_fast_again() -> None:
    lead = StartLead(150)
    lead.observe(1_000)
    longest = lead.ms
    for _ in range(60):
        lead.observe(10)
    assert lead.ms == 150 < longest


def test_the_lead_is_capped() -> None:
    lead = StartLead(150, most_ms=5_000)
    lead.observe(60_000)
    assert lead.ms == 5_000


@pytest.mark.parametrize("odd", [float("nan"), -5.0])
def test_a_nan_or_negative_observation_changes_nothing(odd: float) -> None:
    lead = StartLead(150)
    lead.observe(300)
    before = lead.ms
    lead.observe(odd)
    assert lead.ms == before


def test_a_least_above_the_most_is_refused() -> None:
    with pytest.raises(ValueError):
        StartLead(6_000, most_ms=5_000)
