"""The queue gauges' refresh pace: every 5 s, or slower when counting the waiting chats takes long."""

import pytest

from services.assigner.handlers import GAUGE_BUDGET, GAUGE_INTERVAL_S, gauge_pause


def test_a_quick_refresh_comes_back_after_the_interval():
    assert gauge_pause(0.004) == GAUGE_INTERVAL_S
    assert gauge_pause(0.0) == GAUGE_INTERVAL_S


@pytest.mark.parametrize("spent_s", [0.25, 0.4, 1.5, 3.0, 12.0])
def test_a_slow_refresh_takes_at_most_its_budget_of_the_time(spent_s):
    pause = gauge_pause(spent_s)
    assert pause >= GAUGE_INTERVAL_S
    assert spent_s / (spent_s + pause) == pytest.approx(min(GAUGE_BUDGET, spent_s / (spent_s + GAUGE_INTERVAL_S)))


def test_a_million_waiting_chats_refresh_about_every_half_minute():
    # 1.1 s for the per-queue counts and 0.4 s for the per-state ones at 1M waiting (docs/performance.md).
    assert gauge_pause(1.5) == pytest.approx(28.5)
