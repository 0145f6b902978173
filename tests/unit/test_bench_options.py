"""The half phase's pace: half of what `max` applied, or the rate asked for (`--half-rate`), and targets named by it."""

import pytest

from switchboard.bench.options import make_options
from switchboard.bench.report import targets
from switchboard.bench.run import half_phase_rate


def test_the_half_phase_runs_at_half_of_what_max_applied_over_its_whole_seconds():
    # Seconds 10..12 are inside the window [9.5, 13.2): 1000, 1200, 1400 applied; 9 and 13 are partial.
    applied = {9: 50, 10: 1000, 11: 1200, 12: 1400, 13: 30}

    assert half_phase_rate(0.0, applied, (9.5, 13.2)) == 600.0


def test_a_requested_rate_wins_over_what_max_applied():
    assert half_phase_rate(1010.0, {10: 3000, 11: 3000}, (10.0, 12.0)) == 1010.0


def test_a_max_phase_that_applied_nothing_still_paces_the_half_phase():
    assert half_phase_rate(0.0, {}, (10.0, 12.0)) == 1.0


def test_a_negative_half_rate_is_refused():
    with pytest.raises(ValueError, match="half_rate"):
        make_options(half_rate=-1)
    assert make_options(half_rate=850.0).half_rate == 850.0
    assert make_options().half_rate == 0.0


def _targets_with(half_rate: float) -> list[str]:
    report = {
        "headline": {"apply_p99_ms_half": 300.0, "push_p99_ms_half": 400.0},
        "options": {"scale_operators": 200, "half_rate": half_rate},
        "integrity": {"ok": True},
    }
    return [t["name"] for t in targets(report)]


def test_the_latency_targets_name_the_rate_they_were_read_at():
    assert "apply p99 at half max throughput" in _targets_with(0.0)
    assert "push p99 (reply accepted -> on the chat stream) at half load" in _targets_with(0.0)
    named = _targets_with(400.0)
    assert "apply p99 at --half-rate 400/s" in named
    assert "push p99 (reply accepted -> on the chat stream) at --half-rate 400/s" in named
    assert not any("half max" in n or "half load" in n for n in named)
