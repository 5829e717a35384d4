"""The demo's timeline: trouble spread over the run, every kind of it, calm at both ends."""

from __future__ import annotations

import pytest

from otel_backpressure.demo.scenario import PHASES, phase_at


def test_phases_cover_the_run_in_order_and_end_calm() -> None:
    starts = [phase.start for phase in PHASES]
    assert starts == sorted(starts)
    assert starts[0] == 0.0
    assert starts[-1] < 1.0
    calm = PHASES[0]
    assert PHASES[-1].leaderboard == calm.leaderboard
    assert (PHASES[-1].storm, PHASES[-1].bug, PHASES[-1].hold) == (calm.storm, calm.bug, calm.hold)


def test_each_trouble_has_its_own_phase() -> None:
    calm = PHASES[0]
    by_name = {phase.name: phase for phase in PHASES}
    assert by_name["rush"].hold > calm.hold
    assert by_name["rush"].leaderboard > calm.leaderboard
    assert by_name["storm"].storm > calm.storm == 0
    assert by_name["bug"].bug > calm.bug == 0
    assert by_name["threads"].export > calm.export == 0
    assert by_name["threads"].stats > calm.stats == 0
    # the outage is made by whoever owns the limiter's Redis; the players stay under the limits
    outage = by_name["outage"]
    assert outage.storm == outage.bug == outage.export == outage.stats == 0
    assert outage.pause[0] >= 2 / 5  # player-proposed, the strictest, allows 5 in 2 s


def test_the_outage_comes_after_every_other_trouble_and_before_the_recovery() -> None:
    names = [phase.name for phase in PHASES]
    assert names[-2:] == ["outage", "recovery"]


@pytest.mark.parametrize(
    ("fraction", "name"),
    [
        (0.0, "calm"),
        (0.2, "rush"),
        (0.4, "storm"),
        (0.5, "bug"),
        (0.6, "threads"),
        (0.75, "outage"),
        (0.9, "recovery"),
        (1.0, "recovery"),
    ],
)
def test_phase_at(fraction: float, name: str) -> None:
    assert phase_at(fraction).name == name
